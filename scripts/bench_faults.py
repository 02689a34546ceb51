"""Fault injection: SIGKILL and SIGSTOP of every role of a live run, and what the run lost.

For each fault, a real run (CartPole, both pruned, cubic schedule to 80%) is started through the CLI;
at epoch 10 the fault is injected. Recovery time is from the injection until the replacement does
its work again (the trainer: its next `epoch`; the compressor: its next `weights_written`; a worker:
its first swap; the supervisor: the resumed run's first epoch, `hotprune run --resume` being issued
as soon as the old run's processes are gone). What was lost is read from the logs: exit code, every
epoch present once, the final sparsity, the trainer's pruned weights still zero, `hotprune diagnose`.

Then hostile files and edits (issue 24), each on a run stopped at epoch 10 (its supervisor SIGKILLed):
a NaN or a flipped bit in the checkpoint, another run's checkpoint (same run id, another runs
directory), a flipped mask entry, an all-kept masks file, config.toml edited to teacher-student, to
other hidden sizes, to fewer epochs than the checkpoint's; `hotprune run --resume` must refuse in one
line, exit 2, starting nothing and changing no file. And two live ones: a corrupt checkpoint under a
running run whose trainer is then killed (its restart refuses: not restarted again, the run stops
with exit 2), and a trainer started by hand whose compressor never comes (start_timeout_s=7: it gives
up, exit 2). A killed compressor's replacement must check every snapshot that applies the masks it
took up (`unchecked` counts snapshot_received with a masks version and pruned_nonzero null).

Hostile files (`FILES`): one finished run is copied and a copy is made hostile per case (a link out
of the run directory, crafted log lines, logs or kept files that disagree, umask 000); each row says
what hotprune did with it and whether that is what it must do (nothing outside the run touched,
nothing corrupt trusted, never a traceback).

    python scripts/bench_faults.py [--quick] [--repeats N] [--only faults|resumes|files]

Results: benchmarks/faults.json and benchmarks/faults.md (with --only: faults_<set>.json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchkit  # noqa: E402
from hotprune.runs import artifacts, cleanup, runlog  # noqa: E402

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
    proc, run_dir = start(runs, f"{role}-{sig.lower()}-{index}")
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
    unchecked = [e for e in compressor if e["event"] == "snapshot_received" and e["masks_version"] >= 0
                 and e["pruned_nonzero"] is None]
    diagnosed = subprocess.run([HOTPRUNE, "diagnose", str(run_dir)], capture_output=True, text=True)
    summary = run.summary or {}
    finished = run.finished or {}
    return {
        "role": role, "signal": sig, "run_id": run_dir.name, "exitcode": code,
        "restarts": finished.get("restarts"),
        "recovery_s": recovery,
        "epochs_once": epochs == list(range(1, EPOCHS + 1)),
        "epochs_redone": dead_last - starts[0]["epoch"] if starts else 0,
        "final_training_sparsity": summary.get("final_training_sparsity"),
        "pruned_nonzero_max": max(nonzero) if nonzero else None,
        "unchecked": len(unchecked),
        "diagnose_ok": diagnosed.returncode == 0,
    }


def table(rows: list[dict]) -> str:
    out = ["| fault | runs | exit 0 | recovery s (median, max) | epochs redone | every epoch once | final sparsity |"
           " pruned weights non-zero | unchecked | diagnose |", "| --- " * 10 + "|"]
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
            str(max((r["pruned_nonzero_max"] or 0) for r in rs)), str(sum(r["unchecked"] for r in rs)),
            f"{sum(r['diagnose_ok'] for r in rs)}/{n}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def start(runs: Path, run_id: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A run through the CLI (its stderr into runs/<run_id>.stderr), once it has logged epoch 10."""
    args = [a for s in [f"runs_dir={json.dumps(str(runs))}", f"run_id={run_id}", *SETTINGS, *extra]
            for a in ("--set", s)]
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{run_id}.stderr", "w") as stderr:
        proc = subprocess.Popen([HOTPRUNE, "run", *args], stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    run_dir = runs / run_id
    wait(lambda: len([e for e in lines(run_dir, "trainer") if e["event"] == "epoch"]) >= 10, 120)
    return proc, run_dir


def stopped(runs: Path, run_id: str) -> Path:
    """A run whose supervisor was SIGKILLed at epoch 10, its processes gone: ready for `run --resume`."""
    proc, run_dir = start(runs, run_id)
    proc.kill()
    proc.wait()
    wait(lambda: not cleanup.run_pids(run_dir), 60)
    return run_dir


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def nan_in(path: Path) -> None:
    tensors, meta = artifacts.load(path)
    tensors[next(n for n, a in tensors.items() if a.dtype.kind == "f" and a.size)].flat[0] = float("nan")
    artifacts.save(path, tensors, **meta)


def all_kept(path: Path) -> None:
    tensors, meta = artifacts.load(path)
    artifacts.save(path, {n: a | True for n, a in tensors.items()}, **{**meta, "run_uid": "0" * 32})


def edit(run_dir: Path, line: str, replacement: str) -> None:
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace(line + "\n", replacement + "\n", 1))


def another_runs(name: str):
    def tamper(run_dir: Path) -> None:
        twin = stopped(run_dir.parent.with_name(f"twin-{run_dir.parent.name}"), run_dir.name)  # same run id
        shutil.copy(twin / name, run_dir / name)
    return tamper


HOSTILE = {
    "NaN in the checkpoint": lambda d: nan_in(d / artifacts.CHECKPOINT),
    "flipped bit in the checkpoint": lambda d: flip_last_byte(d / artifacts.CHECKPOINT),
    "another run's checkpoint (same run id)": another_runs(artifacts.CHECKPOINT),
    "flipped mask entry": lambda d: flip_last_byte(d / artifacts.MASKS),
    "all-kept masks.safetensors swapped in": lambda d: all_kept(d / artifacts.MASKS),
    "config.toml: teacher-student": lambda d: edit(d, "prune_training_model = true", "prune_training_model = false"),
    "config.toml: hidden sizes": lambda d: edit(d, "hidden_sizes = [64, 64]", "hidden_sizes = [32, 32]"),
    "config.toml: epochs below the checkpoint's": lambda d: edit(d, f"epochs = {EPOCHS}", "epochs = 5"),
}


def hostile(case: str, runs: Path, index: int) -> dict:
    """`run --resume` of a stopped run after one hostile change: refused in one line, exit 2, nothing
    started or changed."""
    run_dir = stopped(runs / f"hostile-{index}-{list(HOSTILE).index(case)}", "hostile")  # each its own runs dir
    HOSTILE[case](run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    t0 = time.monotonic()
    result = subprocess.run([HOTPRUNE, "run", "--resume", str(run_dir)], capture_output=True, text=True, timeout=600)
    return {"case": case, "exitcode": result.returncode, "seconds": time.monotonic() - t0,
            "one_line": result.stderr.count("\n") == 1, "line": result.stderr.strip()[:300],
            "untouched": {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before}


def refused_restart(runs: Path, index: int) -> dict:
    """A corrupt checkpoint under a live run, then its trainer SIGKILLed: the restart refuses, and is
    not restarted again; the run stops with exit 2."""
    proc, run_dir = start(runs, f"refused-{index}", "checkpoint_every=1000")  # checkpointed at epoch 0 only
    flip_last_byte(run_dir / artifacts.CHECKPOINT)
    trainer = [e["child_pid"] for e in lines(run_dir, "supervisor")
               if e["event"] == "process_started" and e["name"] == "trainer"][-1]
    t0 = time.monotonic()
    os.kill(trainer, signal.SIGKILL)
    code = proc.wait(timeout=600)
    errors = [x for x in (runs / f"refused-{index}.stderr").read_text().splitlines()
              if x.startswith("hotprune trainer: error: ")]
    starts = [e for e in lines(run_dir, "supervisor") if e["event"] == "process_started" and e["name"] == "trainer"]
    return {"case": "corrupt checkpoint, trainer SIGKILLed (restart refuses)", "exitcode": code,
            "seconds": time.monotonic() - t0, "one_line": len(errors) == 1, "line": errors[0][:300] if errors else "",
            "untouched": len(starts) == 2}  # its first start and the one restart that refused


def lonely_trainer(runs: Path, index: int) -> dict:
    """A trainer started by hand whose compressor never comes (supervisor.start_timeout_s=7)."""
    init = subprocess.run([HOTPRUNE, "init", "--set", f"runs_dir={json.dumps(str(runs))}", "--set",
                           f"run_id=lonely-{index}", "--set", "supervisor.start_timeout_s=7"],
                          capture_output=True, text=True, check=True)
    t0 = time.monotonic()
    result = subprocess.run([HOTPRUNE, "trainer", "--run-dir", init.stdout.strip()], capture_output=True, text=True,
                            timeout=600)
    return {"case": "trainer by hand, no compressor (start_timeout_s=7)", "exitcode": result.returncode,
            "seconds": time.monotonic() - t0, "one_line": result.stderr.count("\n") == 1,
            "line": result.stderr.strip()[:300], "untouched": True}


def hostile_table(rows: list[dict]) -> str:
    out = ["| case | runs | exit 2 | one line | nothing started or changed | seconds (median) | the line |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        n = len(rs)
        line = re.sub(r"/\S*/", "", rs[0]["line"].split(": error: ", 1)[-1]).replace("|", "\\|")  # file names only
        out.append(f"| {case} | {n} | {sum(r['exitcode'] == 2 for r in rs)}/{n} | {sum(r['one_line'] for r in rs)}/{n} "
                   f"| {sum(r['untouched'] for r in rs)}/{n} | {statistics.median(r['seconds'] for r in rs):.1f} "
                   f"| {line} |")
    return "\n".join(out)


FILES_SETTINGS = ["epochs=8", "samples_per_epoch=512", "chunk_steps=32", "pruning.start_epoch=2",
                    "pruning.every=3"]
CRAFTED_LINES = [b"[" * 100_000 + b"]" * 100_000, b'{"event": "epoch", "samples": ' + b"9" * 5000 + b"}",
                 b"[1, 2]", b'{"event": "\xff"}']


def cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HOTPRUNE, *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=None if umask is None else lambda: os.umask(umask))


def copy_of(finished: Path, name: str) -> Path:
    copy = finished.parent / name
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("sock"), symlinks=True)
    (copy / "sock").mkdir(mode=0o700)
    return copy


def said(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return f"exit {result.returncode}: " + (text[0].split(": error: ")[-1][:160] if text else "")


def linked_sock(finished: Path) -> tuple[bool, str]:
    """sock/ -> a directory holding another program's live socket: clean and --resume."""
    run = copy_of(finished, "linked-sock")
    outside = finished.parent.parent / "elsewhere"
    outside.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(outside / "app.sock"))
        server.listen()
        (run / "sock").rmdir()
        (run / "sock").symlink_to(outside)
        cleaned, resumed = cli("clean", str(run.parent)), cli("run", "--resume", str(run))
        intact = (outside / "app.sock").exists() and os.listdir(outside) == ["app.sock"]
    ok = intact and cleaned.returncode == 0 and "is a symbolic link" in cleaned.stdout \
        and resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    return ok, f"clean: kept; resume {said(resumed)}; outside socket {'intact' if intact else 'REMOVED'}"


def linked_log(finished: Path) -> tuple[bool, str]:
    """logs/trainer.jsonl -> a file of another program: --resume would append to it."""
    run = copy_of(finished, "linked-log")
    outside = finished.parent.parent / "notes.txt"
    outside.write_text("theirs\n")
    (run / "logs" / "trainer.jsonl").unlink()
    (run / "logs" / "trainer.jsonl").symlink_to(outside)
    resumed = cli("run", "--resume", str(run))
    ok = resumed.returncode == 2 and outside.read_text() == "theirs\n"
    return ok, f"resume {said(resumed)}"


def crafted_lines(finished: Path) -> tuple[bool, str]:
    """Deep nesting, a 5,000-digit integer, a wrong type, a non-object, invalid UTF-8 in trainer.jsonl."""
    run = copy_of(finished, "crafted")
    log = run / "logs" / "trainer.jsonl"
    lines = log.read_bytes().splitlines()
    wrong_type = json.dumps({**json.loads(lines[-1]), "event": "epoch", "samples": "lots"}).encode()
    log.write_bytes(b"\n".join([*lines[:10], *CRAFTED_LINES, wrong_type, *lines[10:]]) + b"\n")
    results = {name: cli(name, str(target)) for name, target in
               (("diagnose", run), ("show", run), ("list", run.parent), ("report", run))}
    traceback = [name for name, r in results.items() if "Traceback" in r.stderr]
    ok = not traceback and results["diagnose"].returncode == 3 and all(
        r.returncode == 0 for name, r in results.items() if name != "diagnose")
    named = next((line for line in results["diagnose"].stdout.splitlines() if "logs readable" in line), "")
    return ok, f"diagnose exit {results['diagnose'].returncode} ({named[6:][:90]}); show, list, report: exit " \
               + ", ".join(str(r.returncode) for n, r in results.items() if n != "diagnose") \
               + (f"; TRACEBACK in {traceback}" if traceback else "")


def forged_logs(finished: Path) -> tuple[bool, str]:
    """Every sparsity the logs state (80%) rewritten to 95%."""
    run = copy_of(finished, "forged")

    def forged(value):
        if isinstance(value, dict):
            return {k: 0.95 if "sparsity" in k and type(v) is float and v > 0.5 else forged(v)
                    for k, v in value.items()}
        return [forged(v) for v in value] if isinstance(value, list) else value

    for log in (run / "logs").glob("*.jsonl"):
        log.write_text("".join(json.dumps(forged(json.loads(x))) + "\n" for x in log.read_text().splitlines()))
    return _one_fail(cli("diagnose", str(run)))


def all_kept_masks(finished: Path) -> tuple[bool, str]:
    """masks.safetensors swapped for one that keeps every weight (its metadata kept)."""
    from hotprune.runs import artifacts

    run = copy_of(finished, "all-kept")
    masks, meta = artifacts.load(run / artifacts.MASKS)
    artifacts.save(run / artifacts.MASKS, {n: m | True for n, m in masks.items()}, **meta)
    return _one_fail(cli("diagnose", str(run)))


def _one_fail(result: subprocess.CompletedProcess) -> tuple[bool, str]:
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    ok = result.returncode == 1 and any("logs agree with the kept files" in line for line in failed)
    return ok, f"diagnose exit {result.returncode}: " + "; ".join(line[6:][:160] for line in failed[:1])


def umask_000(finished: Path) -> tuple[bool, str]:
    """`hotprune init` (tcp: with keys) under umask 000: nothing writable by group or others."""
    runs = finished.parent.parent / "umask" / "runs"
    made = cli("init", "--set", f"runs_dir={json.dumps(str(runs))}", "--set", "run_id=u",
               "--set", "transport.kind=tcp", umask=0)
    open_to_others = [str(p.relative_to(runs.parent)) for p in [runs, *runs.rglob("*")]
                      if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o022]
    return made.returncode == 0 and not open_to_others, \
        f"init exit {made.returncode}; writable by others: {', '.join(open_to_others) or 'nothing'}"


FILES: dict[str, Callable[[Path], tuple[bool, str]]] = {
    "sock/ links to another program's directory": linked_sock,
    "a log file links to another program's file": linked_log,
    "crafted log lines": crafted_lines,
    "logs forged to 95% on an 80% run": forged_logs,
    "an all-kept masks.safetensors": all_kept_masks,
    "umask 000": umask_000,
}


def hostile_files() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hp-hostile-") as tmp:
        runs = Path(tmp) / "runs"
        args = [a for s in [f"runs_dir={json.dumps(str(runs))}", "run_id=finished", *FILES_SETTINGS]
                for a in ("--set", s)]
        subprocess.run([HOTPRUNE, "run", *args], capture_output=True, check=True, timeout=600)
        for case, check in FILES.items():
            t0 = time.perf_counter()
            ok, observed = check(runs / "finished")
            rows.append({"case": case, "ok": ok, "observed": observed.replace(f"{tmp}/", ""),
                         "s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per fault")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("faults", "resumes", "files"), help="one of the three sets of cases")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    rows, refusals = [], []
    with tempfile.TemporaryDirectory(prefix="hp-faults-") as tmp:
        for index in range(repeats):
            for role, sig in FAULTS if args.only in (None, "faults") else []:
                row = one(role, sig, Path(tmp), index)
                print(json.dumps(row), flush=True)
                rows.append(row)
            if args.only in (None, "resumes"):
                for row in [*(hostile(case, Path(tmp), index) for case in HOSTILE), refused_restart(Path(tmp), index),
                            lonely_trainer(Path(tmp), index)]:
                    print(json.dumps(row), flush=True)
                    refusals.append(row)
        files = hostile_files() if args.only in (None, "files") else []
    machine = benchkit.machine()
    md = (f"# Fault injection ({datetime.now():%Y-%m-%d}, {machine['cpus']} cores, `scripts/bench_faults.py"
          f"{' --quick' if args.quick else f' --repeats {repeats}'}`)\n\n"
          f"{EPOCHS} epochs of 512 samples, CartPole-v1, both pruned, cubic to 80%; fault at epoch 10; "
          "hang_timeout_s=5, restart_backoff_s=0.5. SIGSTOP of the supervisor: continued after 3 s.\n\n"
          + (table(rows) if rows else "")
          + ("\n\nHostile files and edits, each on a run stopped at epoch 10 (`hotprune run --resume`), and two "
             "live refusals:\n\n" + hostile_table(refusals) if refusals else "")
          + ("\n\nHostile files on a finished run (CartPole, both pruned to 80%, " + ", ".join(FILES_SETTINGS)
             + "), one copy per case:\n\n| case | what hotprune did | as it must |\n| --- | --- | --- |\n"
             + "\n".join(f"| {r['case']} | {r['observed']} | {'yes' if r['ok'] else 'NO'} |" for r in files)
             if files else ""))
    # one set alone goes to its own file: the full results stay in faults.md
    results = {"machine": machine, "settings": SETTINGS, "rows": rows, "refusals": refusals, "files": files}
    benchkit.write(f"faults_{args.only}" if args.only else "faults", results, md.splitlines())
    return 0 if all(r["ok"] for r in files) else 1


if __name__ == "__main__":
    sys.exit(main())
