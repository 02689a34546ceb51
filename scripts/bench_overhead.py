"""Async overhead: what compressing in another process costs the trainer.

Three real `hotprune run`s per round, alternating (A B C A B C), same seed and settings:
  off    pruning.method = none (the trainer still publishes every epoch; nothing is compressed);
  async  magnitude, a compression due every epoch (pruning.every = 1), mode = async;
  sync   the same in mode = sync (each epoch waits for every worker to swap to the newest version).
The trainer's epoch time is the wall time between consecutive `epoch` events (so it includes the
checkpoint and the snapshot publish, which the event's own epoch_s leaves out); the first epochs
(start-up, the first compression) are left out. Also measured in this process: the trainer's cost to
publish one snapshot (the actor's arrays copied, encoded, sent), as a share of the epoch.

    .venv/bin/python scripts/bench_overhead.py [--quick] [--hidden 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.protocol.codec import Encoder  # noqa: E402
from hotprune.runs import runlog  # noqa: E402
from hotprune.envs import env_spec  # noqa: E402
from hotprune.learning.policy import actor_arrays, make_actor  # noqa: E402

HOTPRUNE = str(Path(sys.executable).with_name("hotprune"))
VARIANTS = {
    "off": ["pruning.method=none"],
    "async": ["pruning.method=magnitude", "pruning.start_epoch=1", "pruning.every=1"],
    "sync": ["mode=sync", "pruning.method=magnitude", "pruning.start_epoch=1", "pruning.every=1"],
}
SKIP = 3  # first epochs left out: start-up and the first compression


def run(variant: str, runs_dir: str, run_id: str, epochs: int, hidden: int) -> dict:
    sets = [f'runs_dir="{runs_dir}"', f"run_id={run_id}", f"epochs={epochs}", "seed=1",
            f"ppo.hidden_sizes=[{hidden}, {hidden}]", *VARIANTS[variant]]
    args = [HOTPRUNE, "run", *[a for s in sets for a in ("--set", s)]]
    t0 = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: hotprune run exited {done.returncode}: {done.stderr[-500:]}")
    wall = time.monotonic() - t0
    epochs_logged = runlog.load(Path(runs_dir) / run_id).epochs()
    stamps = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() for e in epochs_logged]
    gaps = np.diff(stamps)[SKIP:]
    samples = [e["samples"] for e in epochs_logged][SKIP + 1:]
    return {"epoch_s": float(np.median(gaps)), "samples_per_s": float(np.sum(samples) / np.sum(gaps)),
            "wall_s": wall, "epochs": len(epochs_logged)}


def publish_cost_ms(hidden: int, repeats: int = 50) -> float:
    """The trainer's publish: the actor's arrays copied out, encoded, sent on a PUB with a subscriber."""
    actor = make_actor(env_spec("CartPole-v1"), [hidden, hidden])
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.2)
    encoder, times = Encoder("bench", "trainer"), []
    fields = {"version": 0, "epoch": 0, "training_sparsity": 0.0, "masks_version": -1, "trainer_start": 0}
    for _ in range(repeats):
        t0 = time.perf_counter()
        pub.send_multipart(encoder.encode("snapshot", fields, actor_arrays(actor)), copy=False)
        times.append((time.perf_counter() - t0) * 1e3)
        while sub.poll(0):
            sub.recv_multipart()
    ctx.destroy(linger=0)
    return statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 12 epochs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=64, help="hidden width (two layers)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    epochs = args.epochs or (12 if args.quick else 30)
    benchkit.one_thread()
    start = benchkit.machine()
    per_round = []
    with tempfile.TemporaryDirectory(prefix="hb-overhead-", dir="/tmp") as tmp:
        for r in range(rounds):
            order = list(VARIANTS)[r % 3:] + list(VARIANTS)[: r % 3]
            got = {v: run(v, tmp, f"overhead-{v}-{r}", epochs, args.hidden) for v in order}
            per_round.append(got)
            print(f"round {r}: " + ", ".join(f"{v} {g['epoch_s'] * 1e3:.0f} ms/epoch" for v, g in got.items()),
                  flush=True)
    publish_ms = publish_cost_ms(args.hidden)
    med = {v: statistics.median(r[v]["epoch_s"] for r in per_round) for v in VARIANTS}
    sps = {v: statistics.median(r[v]["samples_per_s"] for r in per_round) for v in VARIANTS}
    ratios = {v: statistics.median(r[v]["epoch_s"] / r["off"]["epoch_s"] for r in per_round) for v in VARIANTS}
    meta = {"start": start, "end": benchkit.machine(), "rounds": rounds, "epochs": epochs, "hidden": args.hidden,
            "skipped_epochs": SKIP, "command": " ".join(sys.argv)}
    results = {"meta": meta, "rounds": per_round, "median_epoch_s": med, "median_samples_per_s": sps,
               "ratio_to_off": ratios, "publish_ms": publish_ms,
               "publish_share_of_off_epoch": publish_ms / 1e3 / med["off"]}
    lines = ["# Async overhead: the trainer's epoch with compression in another process", "",
             f"`{meta['command']}`; {rounds} rounds of 3 alternating `hotprune run`s, {epochs} epochs each "
             f"(first {SKIP} left out), CartPole-v1, hidden {args.hidden}x{args.hidden}, 2 workers; load average "
             f"{start['loadavg']} at the start, {meta['end']['loadavg']} at the end ({start['cpus']} cores).", "",
             "| variant | epoch ms (median of rounds) | samples/s | epoch time / off (median of per-round ratios) |",
             "|---|---|---|---|"]
    for v in VARIANTS:
        lines.append(f"| {v} | {med[v] * 1e3:.1f} | {sps[v]:.0f} | {ratios[v]:.3f} |")
    lines += ["", f"The trainer's publish of one snapshot (arrays copied, encoded, sent): {publish_ms:.3f} ms, "
              f"{100 * results['publish_share_of_off_epoch']:.2f}% of the `off` epoch."]
    benchkit.write(f"overhead_{args.hidden}", results, lines)


if __name__ == "__main__":
    main()
