"""An Atari smoke run, end to end (not in the test suite): `hotprune run --env ALE/Breakout-v5` at a
small step count, both pruned, once per pruning structure (weight; channel where this build has it),
from the first snapshot on. It checks that the run completes, prunes (compression_finished), and
swaps what it pruned into the workers (weights_written.nbytes, worker_swapped shapes), and records the
numbers per step: the trainer's update time and samples/s per epoch, and, timed here on the same
machine, one worker's env step (gymnasium's vector env of the preset's envs_per_worker ALE envs under
AtariPreprocessing + frame stacking) and its policy step on the run's final policy (numpy).
Writes benchmarks/atari_smoke.md and .json; needs the atari extra.

    python scripts/smoke_atari.py [--steps 2048] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchkit import machine, one_thread, write
from hotprune import load_policy
from hotprune.config import Config, ConfigError
from hotprune.envs import make_vector_env

ENV = "ALE/Breakout-v5"
HOTPRUNE = [sys.executable, "-m", "hotprune.cli"]


def events(run_dir: Path, role: str, name: str) -> list[dict]:
    lines = (run_dir / "logs" / f"{role}.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == name]


def run(structure: str, steps: int, runs_dir: Path, sets: list[str]) -> dict:
    """One smoke run and what its logs say of pruning, swapping and per-epoch speed."""
    run_id = f"breakout-{structure}"
    argv = [*HOTPRUNE, "run", "--env", ENV, "--quiet"]
    for item in [f"total_steps={steps}", "samples_per_epoch=512", "pruning.start_epoch=1", "pruning.every=1",
                 f"pruning.structure={structure}", f"runs_dir={json.dumps(str(runs_dir))}", f"run_id={run_id}",
                 *sets]:
        argv += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{structure}: hotprune run failed ({done.returncode}): {done.stderr[-2000:]}")
    run_dir = runs_dir / run_id
    written = events(run_dir, "compressor", "weights_written")
    swaps = events(run_dir, "worker-0", "worker_swapped")
    epochs = events(run_dir, "trainer", "epoch")
    compressed = events(run_dir, "compressor", "compression_finished")
    if not compressed or not swaps:
        raise SystemExit(f"{structure}: the run did not prune ({len(compressed)}) or swap ({len(swaps)})")
    return {"structure": structure, "wall_s": wall, "run_dir": str(run_dir),
            "achieved_sparsity": compressed[-1].get("achieved_sparsity"),
            "nbytes_first": written[0]["nbytes"], "nbytes_last": written[-1]["nbytes"],
            "swaps": len(swaps), "last_swap_ms": swaps[-1]["latency_ms"],
            "worker_shapes": [s["shapes"] for s in swaps if s["shapes"]][-1],  # logged when they change
            "epochs": [{k: e[k] for k in ("epoch", "rollout_s", "train_s", "epoch_s", "samples_per_s")}
                       for e in epochs]}


def worker_step(run_dir: Path, envs: int, steps: int = 100) -> dict:
    """µs per vector env step (random actions) and per policy step on its frames, one after the other."""
    env = make_vector_env(ENV, envs)
    policy = load_policy(run_dir, seed=0)
    obs, _ = env.reset(seed=0)
    env_us, policy_us = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        policy.predict(obs, deterministic=False)
        t1 = time.perf_counter()
        obs, *_ = env.step(env.action_space.sample())
        policy_us.append((t1 - t0) * 1e6)
        env_us.append((time.perf_counter() - t1) * 1e6)
    env.close()
    return {"envs": envs, "env_step_us": float(np.median(env_us)), "policy_step_us": float(np.median(policy_us))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2048)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    one_thread()  # the worker-step timing, as a worker runs: one BLAS thread
    structures = ["weight"]
    try:
        Config.from_dict({"pruning": {"structure": "channel"}})
        structures.append("channel")
    except ConfigError:
        print("pruning.structure=channel is not in this build: the weight run only", file=sys.stderr)
    envs = Config.from_dict({"env_id": ENV}).envs_per_worker
    with tempfile.TemporaryDirectory(prefix="hotprune-atari-") as tmp:
        rows = []
        for structure in structures:
            row = run(structure, args.steps, Path(tmp), args.sets)
            rows.append(row | {"worker": worker_step(Path(row["run_dir"]), envs)})
    info = machine()
    lines = ["# Atari smoke run (scripts/smoke_atari.py)", "",
             f"`hotprune run --env {ENV}` (the preset: Nature CNN, 2 workers x {envs} envs, PPO), "
             f"{args.steps} steps, samples_per_epoch=512, both pruned to the default 80% from the first snapshot "
             f"(pruning.start_epoch=1, every=1){', ' + ' '.join(args.sets) if args.sets else ''}.", "",
             *([] if "channel" in structures else
               ["pruning.structure=channel is not in this build (convprune): the weight run only.", ""]),
             f"Machine: {info}", "",
             "| structure | run wall s | sparsity | weights_written nbytes first -> last | worker's net.0 / conv.0 "
             "| swaps | env step µs (vector of {n}) | policy step µs | update s / epoch | samples/s |".replace(
                 "{n}", str(envs)), "|---" * 10 + "|"]
    for r in rows:
        shapes = r["worker_shapes"]
        trained = r["epochs"][1:] or r["epochs"]  # the first epoch includes start-up
        lines.append(f"| {r['structure']} | {r['wall_s']:.0f} | {r['achieved_sparsity']:.1%} | "
                     f"{r['nbytes_first']:,} -> {r['nbytes_last']:,} | {shapes['net.0.weight']} / "
                     f"{shapes['conv.0.weight']} | {r['swaps']} | {r['worker']['env_step_us']:,.0f} | "
                     f"{r['worker']['policy_step_us']:,.0f} | "
                     f"{np.median([e['train_s'] for e in trained]):.1f} | "
                     f"{np.median([e['samples_per_s'] for e in trained]):.0f} |")
    lines += ["", "Per epoch (trainer's epoch events):", "", "| structure | epoch | rollout s | update s | epoch s | "
              "samples/s |", "|---" * 6 + "|"]
    lines += [f"| {r['structure']} | {e['epoch']} | {e['rollout_s']:.1f} | {e['train_s']:.1f} | {e['epoch_s']:.1f} | "
              f"{e['samples_per_s']:.0f} |" for r in rows for e in r["epochs"]]
    write("atari_smoke", {"machine": info, "steps": args.steps, "sets": args.sets,
                          "rows": [{k: v for k, v in r.items() if k != "run_dir"} for r in rows]}, lines)


if __name__ == "__main__":
    main()
