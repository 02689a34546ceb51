"""Compression cost: the pruning engine per criterion, scope and structure, a real compressor with a new
mask at every version, and what the compressor spends on a version that brings no new mask, against a
memcpy of the weights into shared memory.

  cubic         a real Compressor at 1M (1024-1024 CartPole actor) with a compression at every version:
                cubic schedule from 0% at epoch 1 to 80% at epoch E, every=1, the config's defaults
                otherwise (min_weights_per_input 1). Per version: the logged
                compression_finished.duration_ms (scores, masks, churn) and the thread CPU time of that
                span, and the whole handling of the
                snapshot (decode, check, compress, apply, stats, the policy and masks files, store write),
                wall and thread CPU time; epoch 1 (the first mask) is left out;
  compute       Pruner.compute (scores, exact-k nested selection, masks) on an actor of 10K-10M
                parameters, per criterion, scope / distribution and structure, nested in a previous 50%
                mask (what every compression after the first does): wall and thread CPU time, and the
                peak of memory allocated during one call (tracemalloc, numpy's arrays included);
  pass-through  a real Compressor's whole handling of a snapshot with no step due: decode and check
                the message, apply the masks in force (`masked`) or none (`dense`: before the first
                compression), count what the logs report, write the store, announce it;
  floor         one memcpy of the weights into a shared-memory slot.

With --base REV (e.g. main) the cubic and compute cases also run hotprune.pruning.engine as it is at git
revision REV (with its criteria and coverage, from `git show`), alternating with this tree's: old and new
in one run. Configurations alternate within each round (A B C A B C), one torch thread, first round
discarded.

    .venv/bin/python scripts/bench_compress.py [--quick] [--base main]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune import eventlog  # noqa: E402
from hotprune.protocol.codec import GRAD_PREFIX, Encoder, check_tensors, decode  # noqa: E402
from hotprune.runs import rundir  # noqa: E402
from hotprune.runs.runlog import read_log  # noqa: E402
from hotprune.roles.compressor import Compressor  # noqa: E402
from hotprune.config import load_config  # noqa: E402
from hotprune.envs import env_spec  # noqa: E402
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor  # noqa: E402
from hotprune.roles.process import StopFlag  # noqa: E402
from hotprune.pruning import engine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"10K": [96, 96], "1M": [1024, 1024], "10M": [3162, 3162]}
CUBIC_SIZE = "1M"
METHODS = ("magnitude", "taylor", "gradient")
# (scope, distribution, structure) of the compute cases, per method
SHAPES = (("global", "uniform", "weight"), ("layer", "uniform", "weight"), ("layer", "erk", "weight"),
          ("global", "uniform", "neuron"), ("layer", "uniform", "neuron"))
# (method, scope, distribution, structure) of the cubic cases
CUBIC = (("magnitude", "global", "uniform", "weight"), ("taylor", "global", "uniform", "weight"),
         ("gradient", "global", "uniform", "weight"), ("magnitude", "layer", "uniform", "weight"),
         ("magnitude", "layer", "erk", "weight"), ("magnitude", "global", "uniform", "neuron"))
FLOOR = "floor: memcpy into shared memory"


def engine_at(rev: str) -> tuple[types.ModuleType, str]:
    """hotprune.pruning.engine as it is at git revision `rev`, with its criteria and coverage, imported
    under other names; and the revision's short hash."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    commit = git("rev-parse", "--short", rev).strip()
    renamed: dict[str, str] = {}
    for part in ("criteria", "coverage", "engine"):
        source = git("show", f"{commit}:service/pruning/{part}.py")
        for old, new in renamed.items():
            source = source.replace(old, new)
        name = f"bench_base_{part}"
        module = sys.modules[name] = types.ModuleType(name)  # dataclasses look their module up there
        exec(compile(source, f"{commit}:service/pruning/{part}.py", "exec"), module.__dict__)
        renamed[f"hotprune.pruning.{part}"] = name
    return module, commit


def clocked(fn) -> tuple[float, float]:
    """(wall ms, this thread's CPU ms) of fn(): on 2 shared cores the wall time is mostly waiting."""
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3


def peak_mb(fn) -> float:
    """The most memory allocated at once while fn() runs, over what was allocated before (MB)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def label(method: str, scope: str, distribution: str, structure: str) -> str:
    return f"{method} {scope}{' erk' if distribution == 'erk' else ''} {structure}"


def compute_cases(hidden: list[int], engines: dict[str, types.ModuleType]) -> dict[str, callable]:
    """One closure per (criterion, scope, structure) and engine: a nested compression to 80% on fixed weights."""
    actor = make_actor(env_spec("CartPole-v1"), hidden)
    spec, weights = expected_spec(actor), actor_arrays(actor)
    rng = np.random.default_rng(0)
    grads = {n: np.abs(rng.standard_normal(w.shape)).astype(np.float32) for n, w in weights.items()}
    cases = {}
    for method in METHODS:
        for scope, distribution, structure in SHAPES:
            for suffix, module in engines.items():
                pruner = module.Pruner(spec, method=method, scope=scope, distribution=distribution,
                                       structure=structure)
                previous = pruner.compute(weights, 0.5, grads)
                cases[label(method, scope, distribution, structure) + suffix] = (
                    lambda p=pruner, m=previous: p.compute(weights, 0.8, grads, m))
    return cases


class Served:
    """A real Compressor, fed snapshots as its socket would (decoded and checked), timed per version."""

    def __init__(self, hidden: list[int], overrides: list[str], tmp: str, pruner_engine=None):
        self.cfg = load_config(overrides=[
            f'runs_dir="{tmp}"', f"run_id=compress-{random.getrandbits(32):x}", "supervisor.heartbeat_s=3600",
            f"ppo.hidden_sizes=[{hidden[0]}, {hidden[1]}]", *overrides])
        rundir.prepare(self.cfg, check_ports=False)
        self.compressor = c = Compressor(self.cfg, StopFlag())
        if pruner_engine is not None:  # the same run with another engine's Pruner
            c.pruner = pruner_engine.pruner_for(c.weight_spec, self.cfg.pruning)
        self.compress_cpu: list[float] = []  # thread CPU ms of the span duration_ms times (Compressor._compress)
        compress = c._compress

        def timed_compress(*args):
            c0 = time.thread_time()
            try:
                return compress(*args)
            finally:
                self.compress_cpu.append((time.thread_time() - c0) * 1e3)
        c._compress = timed_compress
        self.encoder = Encoder(self.cfg.run_id, "trainer")
        # The trainer's end of the masks channel: a compression's report waits for a free place in it.
        self.reports = c.ctx.socket(zmq.PULL)
        self.reports.bind(self.cfg.endpoints().masks)
        weights = actor_arrays(make_actor(env_spec("CartPole-v1"), hidden))
        rng = np.random.default_rng(1)
        grads = {GRAD_PREFIX + n: np.abs(rng.standard_normal(weights[n].shape)).astype(np.float32) * 1e-3
                 for n in (c.pruner.grad_names if c.pruner else [])}
        self.tensors = {**weights, **grads}
        self.version = 0

    def step(self) -> tuple[float, float]:
        """Version (and epoch) + 1 through decode, check and handle: (wall ms, CPU ms)."""
        self.version += 1
        fields = {"version": self.version, "epoch": self.version, "training_sparsity": 0.0, "masks_version": -1,
                  "trainer_start": 0}
        frames = [bytes(f) if not isinstance(f, bytes) else f
                  for f in self.encoder.encode("snapshot", fields, self.tensors)]

        def handle():
            msg = decode(frames, run_id=self.cfg.run_id, kinds={"snapshot"})
            check_tensors(msg.tensors, self.compressor.snapshot_spec)
            self.compressor.handle(msg)
        timed = clocked(handle)
        while self.reports.poll(0):
            self.reports.recv_multipart()
        return timed

    def durations(self) -> dict[int, float]:
        """compression_finished.duration_ms by version, from the compressor's own log."""
        events, _, _ = read_log(eventlog.log_path(self.cfg.run_dir, "compressor"))
        return {e["version"]: e["duration_ms"] for e in events if e["event"] == "compression_finished"}

    def close(self) -> None:
        c = self.compressor
        self.reports.close(linger=0)
        c.ctx.destroy(linger=0)
        c.store.close()
        c.store.unlink()


def measure_cubic(epochs: int, engines: dict[str, types.ModuleType], tmp: str) -> dict:
    """Every CUBIC configuration with every engine, a compression at each of `epochs` versions, in turn."""
    hidden = SIZES[CUBIC_SIZE]
    served = {}
    for method, scope, distribution, structure in CUBIC:
        overrides = [f"epochs={epochs}", f"pruning.method={method}", f"pruning.scope={scope}",
                     f"pruning.distribution={distribution}", f"pruning.structure={structure}",
                     "pruning.schedule=cubic", "pruning.start_epoch=1", "pruning.every=1",
                     f"pruning.end_epoch={epochs}"]
        for suffix, module in engines.items():
            served[label(method, scope, distribution, structure) + suffix] = Served(
                hidden, overrides, tmp, None if module is engine else module)
    walls, cpus = {k: [] for k in served}, {k: [] for k in served}
    try:
        for epoch in range(1, epochs + 1):
            for name, s in served.items():
                wall, cpu = s.step()
                if epoch > 1:  # the first mask (nothing to nest in) and first-touch of every buffer
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        durations = {k: [ms for v, ms in s.durations().items() if v > 1] for k, s in served.items()}
        compress_cpu = {k: s.compress_cpu[1:] for k, s in served.items()}  # the first compression left out
    finally:
        for s in served.values():
            s.close()
    cases = {k: {"duration": benchkit.summary(durations[k]), "duration_cpu": benchkit.summary(compress_cpu[k]),
                 "handle": benchkit.summary(walls[k]),
                 "handle_cpu": benchkit.summary(cpus[k]), "compressions": len(durations[k])} for k in served}
    print("cubic: " + ", ".join(f"{k} {np.median(durations[k]):.2f}" for k in served), flush=True)
    return {"size": CUBIC_SIZE, "epochs": epochs, "cases": cases}


def measure(size: str, hidden: list[int], rounds: int, engines: dict[str, types.ModuleType], tmp: str) -> dict:
    cases = compute_cases(hidden, engines)
    peaks = {k: peak_mb(f) for k, f in cases.items()}
    weights = actor_arrays(make_actor(env_spec("CartPole-v1"), hidden))
    nbytes = sum(w.nbytes for w in weights.values())
    shm = shared_memory.SharedMemory(create=True, size=nbytes)
    slot = np.ndarray(nbytes, np.uint8, buffer=shm.buf)
    flat = np.concatenate([w.reshape(-1).view(np.uint8) for w in weights.values()])
    passes = {"pass-through masked": Served(hidden, ["epochs=100000", "pruning.method=magnitude",
                                                     "pruning.start_epoch=1", "pruning.every=100000"], tmp),
              "pass-through dense": Served(hidden, ["epochs=100000", "pruning.method=none"], tmp)}
    for p in passes.values():
        p.step()  # epoch 1: the one compression (masked), so every later version is a pass-through
    runs = {**{k: (lambda f=f: clocked(f)) for k, f in cases.items()},
            **{k: p.step for k, p in passes.items()},
            FLOOR: lambda: clocked(lambda: np.copyto(slot, flat))}
    walls, cpus = {k: [] for k in runs}, {k: [] for k in runs}
    try:
        for r in range(rounds + 1):
            for name, run in runs.items():
                wall, cpu = run()
                if r:  # round 0 warms up
                    walls[name].append(wall)
                    cpus[name].append(cpu)
    finally:
        for p in passes.values():
            p.close()
        slot = None  # no view may outlive the mapping
        shm.close()
        shm.unlink()
    params = sum(w.size for w in weights.values())
    print(f"{size}: " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in walls.items()), flush=True)
    return {"size": size, "params": params, "bytes": nbytes,
            "cases": {k: {**benchkit.summary(walls[k]), "cpu": benchkit.summary(cpus[k]), "peak_mb": peaks.get(k)}
                      for k in runs}}


def report(meta: dict, cubic: dict | None, results: list[dict], base: str | None) -> list[str]:
    rounds = meta["rounds"]
    lines = ["# Compression cost", "",
             f"`{meta['command']}`; median (p99) ms, 1 torch thread; load average {meta['start']['loadavg']} at "
             f"the start, {meta['end']['loadavg']} at the end ({meta['start']['cpus']} cores). On these shared "
             "cores the wall time is mostly waiting for a core: the thread CPU time is the work.", ""]
    if base:
        lines += [f"`[{base}]`: hotprune.pruning.engine (and its criteria and coverage) as at commit {base}, "
                  "run alternately with this tree's in the same process.", ""]
    if cubic:
        lines += [f"## A new mask at every version ({cubic['size']}, cubic 0 -> 80% over {cubic['epochs']} epochs)",
                  "", "A real Compressor (defaults: min_weights_per_input 1), one snapshot per epoch, each a "
                  "compression; epoch 1 left out. `duration_ms`: the logged compression_finished.duration_ms "
                  "(scores, masks, churn), wall; `its CPU`: the thread CPU time of the same span. `handle`: the "
                  "whole version (decode, check, compress, apply, stats, the policy and masks files, store write, "
                  "announce).", "",
                  "| config | duration_ms | its CPU | handle wall | handle CPU |", "|---|---|---|---|---|"]
        for name, c in cubic["cases"].items():
            lines.append(f"| {name} | " + " | ".join(f"{c[k]['median_ms']:.2f} ({c[k]['p99_ms']:.2f})" for k in
                                                     ("duration", "duration_cpu", "handle", "handle_cpu")) + " |")
        lines.append("")
    lines += ["## Pruner.compute, pass-through and floor", "",
              f"Over {rounds} alternating rounds after one warm-up. compute: a nested compression to 80% (previous "
              "masks at 50%). pass-through: a real Compressor's handling of a snapshot with no step due (decode, "
              "check, apply the masks in force, count, write the store, announce). floor: one memcpy of the "
              "weights into shared memory. Cells: wall median (p99) / thread CPU median; peak: the most memory "
              "one compute call allocated at once (tracemalloc), MB.", "",
              "| what | " + " | ".join(f"{r['size']} ({r['params']:,})" for r in results)
              + " | " + " | ".join(f"peak {r['size']}" for r in results) + " |",
              "|---" * (2 * len(results) + 1) + "|"]
    for name in results[0]["cases"]:
        cells = [r["cases"][name] for r in results]
        times = [f"{c['median_ms']:.2f} ({c['p99_ms']:.2f}) / {c['cpu']['median_ms']:.2f}" for c in cells]
        peaks = ["" if c["peak_mb"] is None else f"{c['peak_mb']:.1f}" for c in cells]
        lines.append(f"| {name} | " + " | ".join(times + peaks) + " |")

    def ratio(r, name):
        return r["cases"][name]["median_ms"] / r["cases"][FLOOR]["median_ms"]
    lines += ["", "pass-through / floor (wall medians): " + "; ".join(
        f"{r['size']}: masked {ratio(r, 'pass-through masked'):.1f}x, dense {ratio(r, 'pass-through dense'):.1f}x"
        for r in results)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10K and 1M, 5 rounds, 12 cubic epochs")
    parser.add_argument("--sizes", default=None, help="comma-separated of " + ",".join(SIZES))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--cubic-epochs", type=int, default=None,
                        help=f"versions of the {CUBIC_SIZE} cubic case, each a compression (0: leave it out)")
    parser.add_argument("--base", default=None, help="also run the engine of this git revision (e.g. main)")
    parser.add_argument("--out", default="compress", help="benchmarks/<out>.json and .md")
    args = parser.parse_args()
    sizes = (args.sizes or ("10K,1M" if args.quick else "10K,1M,10M")).split(",")
    rounds = args.rounds or (5 if args.quick else 15)
    epochs = args.cubic_epochs if args.cubic_epochs is not None else (12 if args.quick else 40)
    benchkit.one_thread()
    engines, base = {"": engine}, None
    if args.base:
        old, base = engine_at(args.base)
        engines[f" [{base}]"] = old
    start = benchkit.machine()
    with tempfile.TemporaryDirectory(prefix="hb-compress-", dir="/tmp") as tmp:
        cubic = measure_cubic(epochs, engines, tmp) if epochs else None
        results = [measure(size, SIZES[size], rounds, engines, tmp) for size in sizes]
    meta = {"start": start, "end": benchkit.machine(), "rounds": rounds, "command": " ".join(sys.argv), "base": base}
    benchkit.write(args.out, {"meta": meta, "cubic": cubic, "results": results}, report(meta, cubic, results, base))


if __name__ == "__main__":
    main()
