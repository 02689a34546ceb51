"""Fault injection: SIGKILL and SIGSTOP of every role of a live run, and what the run lost.

For each fault, a real run (CartPole, both pruned, cubic schedule to 80%) is started through the CLI;
at epoch 10 the fault is injected. Recovery time is from the injection until the replacement does
its work again (the trainer: its next `epoch`; the compressor: its next `weights_written`; a worker:
its first swap; the supervisor: the resumed run's first epoch, `hotprune run --resume` being issued
as soon as the old run's processes are gone). What was lost is read from the logs: exit code, every
epoch present once, the final sparsity, the trainer's pruned weights still zero, `hotprune diagnose`.

    python scripts/bench_faults.py [--quick] [--repeats N]

Results: benchmarks/faults.json and benchmarks/faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchkit  # noqa: E402
from hotprune.runs import cleanup, runlog  # noqa: E402

HOTPRUNE = str(Path(sys.executable).with_name("hotprune"))
EPOCHS = 120
SETTINGS = [f"epochs={EPOCHS}", "samples_per_epoch=512", "chunk_steps=32", "pruning.start_epoch=2",
            "pruning.every=3", "pruning.schedule=\"cubic\"", "pruning.end_epoch=90", "supervisor.heartbeat_s=0.5",
            "supervisor.hang_timeout_s=5", "supervisor.restart_backoff_s=0.5"]
FAULTS = [(role, sig) for role in ("trainer", "compressor", "worker-0") for sig in ("SIGKILL", "SIGSTOP")] + \
    [("supervisor", "SIGKILL"), ("supervisor", "SIGSTOP")]
DONE_BY = {"trainer": ("trainer", "epoch"), "compressor": ("compressor", "weights_written"),
           "worker-0": ("worker-0", "worker_swapped"), "supervisor": ("trainer", "epoch")}


def lines(run_dir: Path, name: str) -> list[dict]:
    try:
        text = (run_dir / "logs" / f"{name}.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in text.splitlines() if x.endswith("}")]


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError


def one(role: str, sig: str, runs: Path, index: int) -> dict:
    run_id = f"{role}-{sig.lower()}-{index}"
    args = [a for s in [f"runs_dir={json.dumps(str(runs))}", f"run_id={run_id}", *SETTINGS] for a in ("--set", s)]
    proc = subprocess.Popen([HOTPRUNE, "run", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run_dir = runs / run_id
    wait(lambda: len([e for e in lines(run_dir, "trainer") if e["event"] == "epoch"]) >= 10, 120)
    if role == "supervisor":
        pid = proc.pid
    else:
        pid = [e["child_pid"] for e in lines(run_dir, "supervisor")
               if e["event"] == "process_started" and e["name"] == role][-1]
    injected = time.time()
    os.kill(pid, getattr(signal, sig))
    resumed = None
    if role == "supervisor" and sig == "SIGSTOP":
        time.sleep(3)
        os.kill(pid, signal.SIGCONT)
    if role == "supervisor" and sig == "SIGKILL":
        proc.wait()
        wait(lambda: not cleanup.run_pids(run_dir), 60)
        resumed = subprocess.run([HOTPRUNE, "run", "--resume", str(run_dir)], capture_output=True, timeout=600)
        code = resumed.returncode
    else:
        code = proc.wait(timeout=600)
    name, event = DONE_BY[role]
    pids_before = {e["pid"] for e in lines(run_dir, name) if ts(e) < injected}
    after = [e for e in lines(run_dir, name) if e["event"] == event and ts(e) > injected
             and (e["pid"] not in pids_before or role == "supervisor" and sig == "SIGSTOP")]
    recovery = ts(after[0]) - injected if after else None
    run = runlog.load(run_dir)
    epochs = [e["epoch"] for e in run.epochs()]
    starts = [e for e in run.events("trainer", "trainer_resumed")]
    # The newest epoch a trainer logged before another resumed from its checkpoint.
    resumed_at = ts(starts[0]) if starts else injected
    dead_last = max((e["epoch"] for e in lines(run_dir, "trainer") if e["event"] == "epoch" and ts(e) < resumed_at),
                    default=0)
    compressor = lines(run_dir, "compressor")
    nonzero = [e["pruned_nonzero"] for e in compressor if e["event"] == "snapshot_received"
               and e["pruned_nonzero"] is not None]
    diagnosed = subprocess.run([HOTPRUNE, "diagnose", str(run_dir)], capture_output=True, text=True)
    summary = run.summary or {}
    finished = run.finished or {}
    return {
        "role": role, "signal": sig, "run_id": run_id, "exitcode": code,
        "restarts": finished.get("restarts"),
        "recovery_s": recovery,
        "epochs_once": epochs == list(range(1, EPOCHS + 1)),
        "epochs_redone": dead_last - starts[0]["epoch"] if starts else 0,
        "final_training_sparsity": summary.get("final_training_sparsity"),
        "pruned_nonzero_max": max(nonzero) if nonzero else None,
        "diagnose_ok": diagnosed.returncode == 0,
    }


def table(rows: list[dict]) -> str:
    out = ["| fault | runs | exit 0 | recovery s (median, max) | epochs redone | every epoch once | final sparsity |"
           " pruned weights non-zero | diagnose |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for role, sig in FAULTS:
        rs = [r for r in rows if r["role"] == role and r["signal"] == sig]
        if not rs:
            continue
        rec = [r["recovery_s"] for r in rs if r["recovery_s"] is not None]
        n = len(rs)
        cells = [
            f"{sig} {role}", str(n), f"{sum(r['exitcode'] == 0 for r in rs)}/{n}",
            f"{statistics.median(rec):.1f}, {max(rec):.1f}" if rec else "n/a",
            ", ".join(str(r["epochs_redone"]) for r in rs), f"{sum(r['epochs_once'] for r in rs)}/{n}",
            ", ".join(f"{r['final_training_sparsity']:.3f}" for r in rs if r["final_training_sparsity"] is not None),
            str(max((r["pruned_nonzero_max"] or 0) for r in rs)), f"{sum(r['diagnose_ok'] for r in rs)}/{n}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per fault")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory(prefix="hp-faults-") as tmp:
        for index in range(repeats):
            for role, sig in FAULTS:
                row = one(role, sig, Path(tmp), index)
                print(json.dumps(row), flush=True)
                rows.append(row)
    machine = benchkit.machine()
    md = (f"# Fault injection ({datetime.now():%Y-%m-%d}, {machine['cpus']} cores, `scripts/bench_faults.py"
          f"{' --quick' if args.quick else f' --repeats {repeats}'}`)\n\n"
          f"{EPOCHS} epochs of 512 samples, CartPole-v1, both pruned, cubic to 80%; fault at epoch 10; "
          "hang_timeout_s=5, restart_backoff_s=0.5. SIGSTOP of the supervisor: continued after 3 s.\n\n"
          + table(rows))
    benchkit.write("faults", {"machine": machine, "settings": SETTINGS, "rows": rows}, md.splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
