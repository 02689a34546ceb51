"""Compression cost: the pruning engine per criterion, scope and structure, and what the compressor
spends on a version that brings no new mask, against a memcpy of the weights into shared memory.

  compute       Pruner.compute (scores, exact-k nested selection, masks) on an actor of 10K-10M
                parameters, for magnitude / taylor / gradient, global / layer, weight / neuron, nested
                in a previous 50% mask (what every compression after the first does);
  pass-through  a real Compressor's whole handling of a snapshot with no step due: decode and check
                the message, apply the masks in force (`masked`) or none (`dense`: before the first
                compression), count what the logs report, write the store, announce it;
  floor         one memcpy of the weights into a shared-memory slot.

Configurations alternate within each round (A B C A B C), one torch thread, first round discarded.

    .venv/bin/python scripts/bench_compress.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from itertools import product
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.protocol.codec import Encoder, check_tensors, decode  # noqa: E402
from hotprune.runs import rundir  # noqa: E402
from hotprune.roles.compressor import Compressor  # noqa: E402
from hotprune.config import load_config  # noqa: E402
from hotprune.envs import env_spec  # noqa: E402
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor  # noqa: E402
from hotprune.roles.process import StopFlag  # noqa: E402
from hotprune.pruning.engine import Pruner  # noqa: E402

SIZES = {"10K": [96, 96], "1M": [1024, 1024], "10M": [3162, 3162]}
METHODS = ("magnitude", "taylor", "gradient")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def compute_cases(hidden: list[int]) -> dict[str, callable]:
    """One closure per (criterion, scope, structure): a nested compression to 80% on fixed weights."""
    actor = make_actor(env_spec("CartPole-v1"), hidden)
    spec, weights = expected_spec(actor), actor_arrays(actor)
    rng = np.random.default_rng(0)
    grads = {n: np.abs(rng.standard_normal(w.shape)).astype(np.float32) for n, w in weights.items()}
    cases = {}
    for method, scope, structure in product(METHODS, ("global", "layer"), ("weight", "neuron")):
        pruner = Pruner(spec, method=method, scope=scope, structure=structure)
        previous = pruner.compute(weights, 0.5, grads)
        cases[f"{method} {scope} {structure}"] = (lambda p=pruner, m=previous: p.compute(weights, 0.8, grads, m))
    return cases


class PassThrough:
    """A real Compressor handling snapshots when no compression is due."""

    def __init__(self, hidden: list[int], masked: bool, tmp: str):
        self.cfg = load_config(overrides=[
            f'runs_dir="{tmp}"', f"run_id=compress-{random.getrandbits(32):x}", "epochs=100000",
            f"ppo.hidden_sizes=[{hidden[0]}, {hidden[1]}]", "supervisor.heartbeat_s=3600",
            *(["pruning.method=magnitude", "pruning.start_epoch=1", "pruning.every=100000"] if masked
              else ["pruning.method=none"])])
        rundir.prepare(self.cfg, check_ports=False)
        self.compressor = Compressor(self.cfg, StopFlag())
        self.encoder = Encoder(self.cfg.run_id, "trainer")
        self.weights = actor_arrays(make_actor(env_spec("CartPole-v1"), hidden))
        self.version = 0
        self.step()  # epoch 1: the one compression (masked), so every later version is a pass-through

    def step(self) -> None:
        self.version += 1
        fields = {"version": self.version, "epoch": self.version, "training_sparsity": 0.0, "masks_version": -1,
                  "trainer_start": 0}
        frames = [bytes(f) if not isinstance(f, bytes) else f
                  for f in self.encoder.encode("snapshot", fields, self.weights)]
        t0 = time.perf_counter()
        msg = decode(frames, run_id=self.cfg.run_id, kinds={"snapshot"})
        check_tensors(msg.tensors, self.compressor.snapshot_spec)
        self.compressor.handle(msg)
        self.last_ms = (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        c = self.compressor
        c.ctx.destroy(linger=0)
        c.store.close()
        c.store.unlink()


def measure(size: str, hidden: list[int], rounds: int, tmp: str) -> dict:
    cases = compute_cases(hidden)
    weights = actor_arrays(make_actor(env_spec("CartPole-v1"), hidden))
    nbytes = sum(w.nbytes for w in weights.values())
    shm = shared_memory.SharedMemory(create=True, size=nbytes)
    slot = np.ndarray(nbytes, np.uint8, buffer=shm.buf)
    flat = np.concatenate([w.reshape(-1).view(np.uint8) for w in weights.values()])
    passes = {"pass-through masked": PassThrough(hidden, True, tmp),
              "pass-through dense": PassThrough(hidden, False, tmp)}
    runs = {**{k: (lambda f=f: timed(f)) for k, f in cases.items()},
            **{k: (lambda p=p: (p.step(), p.last_ms)[1]) for k, p in passes.items()},
            "floor: memcpy into shared memory": lambda: timed(lambda: np.copyto(slot, flat))}
    samples = {k: [] for k in runs}
    try:
        for r in range(rounds + 1):
            for name, run in runs.items():
                ms = run()
                if r:  # round 0 warms up
                    samples[name].append(ms)
    finally:
        for p in passes.values():
            p.close()
        slot = None  # no view may outlive the mapping
        shm.close()
        shm.unlink()
    params = sum(w.size for w in weights.values())
    print(f"{size}: " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in samples.items()), flush=True)
    return {"size": size, "params": params, "bytes": nbytes,
            "cases": {k: benchkit.summary(v) for k, v in samples.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10K and 1M, 5 rounds")
    parser.add_argument("--sizes", default=None, help="comma-separated of " + ",".join(SIZES))
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    sizes = (args.sizes or ("10K,1M" if args.quick else "10K,1M,10M")).split(",")
    rounds = args.rounds or (5 if args.quick else 15)
    benchkit.one_thread()
    start = benchkit.machine()
    with tempfile.TemporaryDirectory(prefix="hb-compress-", dir="/tmp") as tmp:
        results = [measure(size, SIZES[size], rounds, tmp) for size in sizes]
    meta = {"start": start, "end": benchkit.machine(), "rounds": rounds, "command": " ".join(sys.argv)}
    names = list(results[0]["cases"])
    lines = ["# Compression cost", "",
             f"`{meta['command']}`; median (p99) ms over {rounds} alternating rounds after one warm-up, 1 torch "
             f"thread; load average {start['loadavg']} at the start, {meta['end']['loadavg']} at the end "
             f"({start['cpus']} cores).", "",
             "compute: a nested compression to 80% (previous masks at 50%). pass-through: a real Compressor's "
             "handling of a snapshot with no step due (decode, check, apply the masks in force, count, write the "
             "store, announce). floor: one memcpy of the weights into shared memory.", "",
             "| what | " + " | ".join(f"{r['size']} ({r['params']:,})" for r in results) + " |",
             "|---" * (len(results) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{r['cases'][name]['median_ms']:.2f} ({r['cases'][name]['p99_ms']:.2f})" for r in results) + " |")
    def ratio(r, name):
        return r["cases"][name]["median_ms"] / r["cases"]["floor: memcpy into shared memory"]["median_ms"]
    lines += ["", "pass-through / floor (medians): " + "; ".join(
        f"{r['size']}: masked {ratio(r, 'pass-through masked'):.1f}x, dense {ratio(r, 'pass-through dense'):.1f}x"
        for r in results)]
    benchkit.write("compress", {"meta": meta, "results": results}, lines)


if __name__ == "__main__":
    main()
