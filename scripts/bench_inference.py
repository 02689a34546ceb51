"""A worker's inference, dense vs pruned: its numpy policy step and its rollout, with the torch actor it
replaced as the reference.

  step     what a worker does at every vector step (forward, sample, log-prob: `NumpyActor.act`) on a
           batch of 1 and of `envs_per_worker` CartPole observations, for hidden [64, 64], [256, 256]
           and [1024, 1024]: dense, unstructured masks (`weight`: the same shapes, zeros) and neuron-
           pruned (`neuron`: physically smaller matrices, as the store publishes them) at 50/80/90/95%
           (hotprune.pruning.engine.Pruner, magnitude, every hidden layer to the target), and the torch Actor,
           dense, stepped as the worker stepped it before (distribution, sample, log_prob, no_grad).
  cnn      the same step for a CNN actor on uint8 frames (issue 20): MinAtar's (4x10x10, one 3x3 layer of
           16, head [128]) and the Nature CNN (4x84x84, 32-64-64 filters 8/4/3 strides 4/2/1, head [512],
           about 1.7M parameters), dense and channel-pruned (`channel`: every conv layer's filters and
           the head's hidden units, each layer to the target, sliced as the compressor publishes them) at
           50/75/90% and "one each" (every layer cut to one channel or unit: the floor of the step, which
           no pruning goes below), batch 1, `envs_per_worker` and 8, the numpy step the worker runs against the torch
           actor of the same (smaller) shapes; wall clock and CPU time (time.thread_time) per call.
  rollout  samples/s of `InferenceWorker.rollout` itself (one chunk: the safe-point store check, the
           heartbeat, the policy step, a CartPole vector env of `envs_per_worker`, the episode log
           lines) of a real worker on a real weight store, dense vs neuron 90% at [64, 64] and
           [1024, 1024], and the same worker with the torch step put in as its actor. Encoding and
           sending the chunk are not in it.

Systems alternate within each round (A B C A B C), one thread per runtime (torch, numpy's BLAS), the
first round discarded; every step / chunk is timed on its own, for the median and p99.

    .venv/bin/python scripts/bench_inference.py [--quick] [--parts step,cnn,rollout] [--out inference]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.protocol.store_layout import segment_name  # noqa: E402
from hotprune import eventlog
from hotprune.runs import rundir  # noqa: E402
from hotprune.config import ConvNet, load_config  # noqa: E402
from hotprune.envs import EnvSpec, env_spec  # noqa: E402
from hotprune.learning.policy import actor_arrays, actor_from_tensors, expected_spec, make_actor  # noqa: E402
from hotprune.roles.process import StopFlag  # noqa: E402
from hotprune.pruning.engine import Pruner, apply_masks  # noqa: E402
from hotprune.comms.weight_store import WeightStore  # noqa: E402
from hotprune.workers.inference_worker import InferenceWorker  # noqa: E402
from hotprune.workers.numpy_policy import NumpyActor  # noqa: E402

CARTPOLE = env_spec("CartPole-v1")
DEFAULTS = load_config()
WIDTHS = (64, 256, 1024)
SPARSITIES = (0.5, 0.8, 0.9, 0.95)
ROLLOUT_WIDTHS = (64, 1024)
# name -> (conv layers, head, actions): MinAtar Breakout's planes and an Atari game's stacked frames
CNNS = {"minatar": (ConvNet((16,), (3,), (1,), (4, 10, 10), 1.0), [128], 3),
        "nature": (ConvNet((32, 64, 64), (8, 4, 3), (4, 2, 1), (4, 84, 84), 255.0), [512], 6)}
# 1.0: every layer down to the one channel or unit the engine keeps, the step's floor (no pruning goes below it)
CNN_SPARSITIES = (0.5, 0.75, 0.9, 1.0)
CNN_BATCHES = sorted({1, DEFAULTS.envs_per_worker, 8})  # the 1 and 8, and a default worker's vector


class TorchStep:
    """The worker's policy step before workers/numpy_policy.py: the torch Actor, the reference."""

    def __init__(self, tensors: dict[str, np.ndarray], spec: EnvSpec = CARTPOLE, conv: ConvNet | None = None):
        self.actor = actor_from_tensors(tensors, spec.discrete, activation="relu" if conv else None, conv=conv)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist = self.actor.distribution(torch.from_numpy(obs))
        action = dist.sample()
        return action.numpy(), self.actor.log_prob(dist, action).numpy()


def policies(width: int, sparsities=SPARSITIES) -> dict[str, dict[str, np.ndarray]]:
    """name -> the actor's tensors: dense, and each structure at each sparsity."""
    torch.manual_seed(0)
    actor = make_actor(CARTPOLE, [width, width])
    weights = actor_arrays(actor)
    out = {"dense": weights}
    for structure in ("weight", "neuron"):
        pruner = Pruner(expected_spec(actor), method="magnitude", structure=structure, scope="layer")
        for s in sparsities:
            out[f"{structure} {s:.0%}"] = apply_masks(weights, pruner.compute(weights, s))
    return out


def alternate(runs: dict, rounds: int, per_block: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each run `per_block` times per round, runs alternating; seconds per call, round 0 discarded: wall
    clock (perf_counter), and this thread's CPU time (thread_time: it leaves out the waits for a core on
    a busy machine, not the cache misses others cause; its own clock reads are in it, alike for every run)."""
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, run in runs.items():
            for _ in range(per_block):
                c0 = time.thread_time()
                t0 = time.perf_counter()
                run()
                t1 = time.perf_counter()
                c1 = time.thread_time()
                if r:
                    wall[name].append(t1 - t0)
                    cpu[name].append(c1 - c0)
    return wall, cpu


def measure_steps(width: int, batch: int, rounds: int, steps: int) -> dict:
    tensors = policies(width)
    obs = np.random.default_rng(0).standard_normal((batch, CARTPOLE.obs_dim)).astype(np.float32)
    actors = {"torch dense": TorchStep(tensors["dense"]),
              **{f"numpy {name}": NumpyActor(t, CARTPOLE, np.random.default_rng(0)) for name, t in tensors.items()}}
    samples, _ = alternate({name: (lambda a=a: a.act(obs)) for name, a in actors.items()}, rounds, steps)
    cases = {name: benchkit.summary([s * 1e3 for s in v]) for name, v in samples.items()}
    dense = cases["numpy dense"]["median_ms"]
    print(f"step [{width}, {width}] batch {batch}: " + ", ".join(
        f"{name} {c['median_ms'] * 1e3:.1f} us ({c['median_ms'] / dense:.2f}x)" for name, c in cases.items()),
        flush=True)
    return {"hidden": [width, width], "batch": batch, "steps_per_block": steps, "cases": cases,
            "weight_shapes": {name: [list(t.shape) for n, t in ts.items() if n.endswith("weight")]
                              for name, ts in tensors.items()}}


class Rollouts:
    """A real InferenceWorker per system, each on its own weight store holding its policy."""

    def __init__(self, tmp: str):
        os.environ[eventlog.SUPERVISED] = "1"  # as under the supervisor: the log file only, no echo
        self.workers, self.stores, self.state = {}, [], {}
        n = DEFAULTS.envs_per_worker
        for width in ROLLOUT_WIDTHS:
            tensors = policies(width, sparsities=(0.9,))
            for policy in ("dense", "neuron 90%", "torch dense"):
                worker = self.worker(width, tensors["dense" if policy == "torch dense" else policy], tmp)
                if policy == "torch dense":  # the old step in the worker's own loop (no newer version replaces it)
                    worker.actor = TorchStep(tensors["dense"])
                key = f"[{width}, {width}] {policy}"
                self.workers[key] = worker
                obs, _ = worker.envs.reset(seed=len(self.workers))
                self.state[key] = [obs, {"return": np.zeros(n), "length": np.zeros(n, int)}]

    def worker(self, width: int, tensors: dict[str, np.ndarray], tmp: str) -> InferenceWorker:
        cfg = load_config(overrides=[f'runs_dir="{tmp}"', f"run_id=inference-{random.getrandbits(32):x}",
                                     f"ppo.hidden_sizes=[{width}, {width}]", "num_workers=1",
                                     "supervisor.heartbeat_s=3600"])
        rundir.prepare(cfg, check_ports=False)
        store = WeightStore.create(segment_name(cfg.run_dir), rundir.store_slot_size(cfg))
        self.stores.append(store)
        store.publish(tensors, 0)
        worker = InferenceWorker(cfg, 0, StopFlag())
        worker.maybe_swap()  # the worker's own path: read the store, build its actor
        assert worker.version == 0
        return worker

    def chunk(self, key: str) -> None:
        obs, episode = self.state[key]
        _, _, self.state[key][0] = self.workers[key].rollout(obs, episode)

    def close(self) -> None:
        for w in self.workers.values():
            w.ctx.destroy(linger=0)
            w.store.close()
            w.envs.close()
        for s in self.stores:
            s.close()
            s.unlink()


def measure_rollouts(rounds: int, chunks: int, tmp: str) -> list[dict]:
    rollouts = Rollouts(tmp)
    try:
        samples, _ = alternate({key: (lambda k=key: rollouts.chunk(k)) for key in rollouts.workers}, rounds, chunks)
    finally:
        rollouts.close()
    per_chunk = DEFAULTS.chunk_steps * DEFAULTS.envs_per_worker
    cases = []
    for width in ROLLOUT_WIDTHS:
        for policy in ("dense", "neuron 90%", "torch dense"):
            c = benchkit.summary([t * 1e3 for t in samples[f"[{width}, {width}] {policy}"]])
            cases.append({"hidden": [width, width], "policy": policy, "samples_per_chunk": per_chunk,
                          "chunks_per_block": chunks, **c, "samples_per_s": per_chunk / (c["median_ms"] / 1e3)})
    print("rollout: " + ", ".join(f"{c['hidden']} {c['policy']} {c['samples_per_s']:,.0f}/s" for c in cases),
          flush=True)
    return cases


def image_spec(name: str) -> EnvSpec:
    conv, _, actions = CNNS[name]
    space = gym.spaces.Box(0, int(conv.scale), conv.in_shape, np.uint8)
    return EnvSpec(f"{name}-frames", int(np.prod(conv.in_shape)), actions, True, observation_space=space)


def cnn_policies(name: str) -> dict[str, dict[str, np.ndarray]]:
    """name -> the CNN actor's tensors: dense, and channel-pruned at each sparsity (the store's shapes)."""
    conv, head, _ = CNNS[name]
    torch.manual_seed(0)
    actor = make_actor(image_spec(name), head, activation="relu", conv=conv)
    weights = actor_arrays(actor)
    pruner = Pruner(expected_spec(actor), method="magnitude", structure="channel", scope="layer")
    return {"dense": weights,
            **{cnn_policy(s): apply_masks(weights, pruner.compute(weights, s)) for s in CNN_SPARSITIES}}


def cnn_policy(sparsity: float) -> str:
    return f"channel {sparsity:.0%}" if sparsity < 1 else "one each"


def measure_cnn_steps(name: str, batch: int, rounds: int, steps: int) -> dict:
    conv, _, _ = CNNS[name]
    spec, tensors = image_spec(name), cnn_policies(name)
    obs = np.random.default_rng(0).integers(0, int(conv.scale) + 1, (batch, spec.obs_dim), dtype=np.uint8)
    actors = {}
    for policy, t in tensors.items():
        actors[f"numpy {policy}"] = NumpyActor(t, spec, np.random.default_rng(0), "ppo", "relu", conv)
        actors[f"torch {policy}"] = TorchStep(t, spec, conv)
    wall, cpu = alternate({key: (lambda a=a: a.act(obs)) for key, a in actors.items()}, rounds, steps)
    cases = {key: benchkit.summary([s * 1e3 for s in v]) | {"cpu_median_ms": float(np.median(cpu[key])) * 1e3}
             for key, v in wall.items()}
    dense, dense_cpu = cases["numpy dense"]["median_ms"], cases["numpy dense"]["cpu_median_ms"]
    print(f"cnn {name} batch {batch}: " + ", ".join(
        f"{key} {c['median_ms'] * 1e3:.0f} us ({dense / c['median_ms']:.2f}x; CPU {c['cpu_median_ms'] * 1e3:.0f} us, "
        f"{dense_cpu / c['cpu_median_ms']:.2f}x)" for key, c in cases.items()), flush=True)
    return {"cnn": name, "batch": batch, "steps_per_block": steps, "cases": cases,
            "params": {policy: int(sum(a.size for a in t.values())) for policy, t in tensors.items()},
            "weight_shapes": {policy: [list(a.shape) for n, a in t.items() if n.endswith("weight")]
                              for policy, t in tensors.items()}}


def cnn_lines(rows: list[dict]) -> list[str]:
    policies = ["dense", *map(cnn_policy, CNN_SPARSITIES)]
    lines = ["| cnn | batch | runtime | " + " | ".join(policies) + " |", "|---" * (3 + len(policies)) + "|"]
    for r in rows:
        dense = r["cases"]["numpy dense"]
        for runtime in ("numpy", "torch"):
            cells = [r["cases"][f"{runtime} {p}"] for p in policies]
            lines.append(f"| {r['cnn']} | {r['batch']} | {runtime} | " + " | ".join(
                f"{c['median_ms'] * 1e3:.0f} ({c['p99_ms'] * 1e3:.0f}) {dense['median_ms'] / c['median_ms']:.2f}x; "
                f"CPU {c['cpu_median_ms'] * 1e3:.0f} {dense['cpu_median_ms'] / c['cpu_median_ms']:.2f}x" for c in cells)
                + " |")
    lines += ["", "Parameters and weight shapes (batch 1's tables; the same at every batch):", ""]
    for r in (r for r in rows if r["batch"] == 1):
        lines.append(f"- {r['cnn']}: " + "; ".join(f"{p} {r['params'][p]:,} {r['weight_shapes'][p]}" for p in policies))
    return lines


def step_lines(steps: list[dict]) -> list[str]:
    lines = ["| batch | hidden | torch dense | numpy dense | torch / numpy |", "| --- | --- | --- | --- | --- |"]
    for r in steps:
        t, n = r["cases"]["torch dense"], r["cases"]["numpy dense"]
        lines.append(f"| {r['batch']} | {r['hidden']} | {t['median_ms'] * 1e3:.1f} ({t['p99_ms'] * 1e3:.1f}) | "
                     f"{n['median_ms'] * 1e3:.1f} ({n['p99_ms'] * 1e3:.1f}) | {t['median_ms'] / n['median_ms']:.1f}x |")
    lines += ["", "Pruned, numpy: median µs (p99), and the median / numpy dense's:", "",
              "| batch | hidden | structure | " + " | ".join(f"{s:.0%}" for s in SPARSITIES) + " |",
              "|---" * (3 + len(SPARSITIES)) + "|"]
    for r in steps:
        dense = r["cases"]["numpy dense"]["median_ms"]
        for structure in ("weight", "neuron"):
            cells = [r["cases"][f"numpy {structure} {s:.0%}"] for s in SPARSITIES]
            lines.append(f"| {r['batch']} | {r['hidden']} | {structure} | " + " | ".join(
                f"{c['median_ms'] * 1e3:.1f} ({c['p99_ms'] * 1e3:.1f}) {c['median_ms'] / dense:.2f}x"
                for c in cells) + " |")
    return lines


def step_section(steps: list[dict]) -> list[str]:
    return ["## Policy step", "",
            "Forward + sample + log-prob on a batch of CartPole observations: `NumpyActor.act`, what the worker "
            "runs, and the torch Actor it replaced (distribution, sample, log_prob under no_grad). Median µs (p99):",
            "", *step_lines(steps), "",
            "weight: unstructured masks, the dense shapes with zeros. neuron: hidden units removed, as the store "
            "publishes them; weight shapes at 90%: " + "; ".join(
                f"{r['hidden']}: {r['weight_shapes']['neuron 90%']}" for r in steps if r["batch"] == 1), ""]


def rollout_section(rollout: list[dict]) -> list[str]:
    lines = ["## Rollout", "",
            f"`InferenceWorker.rollout` of a real worker on a real weight store: one chunk = "
            f"{DEFAULTS.chunk_steps} vector steps of a CartPole-v1 vector env of {DEFAULTS.envs_per_worker} "
            f"({rollout[0]['samples_per_chunk']} samples), the store check, heartbeat and episode log lines included, "
            "encoding and sending the chunk not. `torch dense`: the same worker with the torch step as its actor.",
            "", "| hidden | policy | chunk median ms (p99) | samples/s (at the median) | / numpy dense |",
            "| --- | --- | --- | --- | --- |"]
    for c in rollout:
        dense = next(d for d in rollout if d["hidden"] == c["hidden"] and d["policy"] == "dense")
        lines.append(f"| {c['hidden']} | {c['policy']} | {c['median_ms']:.2f} ({c['p99_ms']:.2f}) | "
                     f"{c['samples_per_s']:,.0f} | {c['samples_per_s'] / dense['samples_per_s']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, shorter blocks")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--parts", default="step,cnn,rollout", help="which of step, cnn, rollout to measure")
    parser.add_argument("--out", default="inference", help="benchmarks/<out>.json and .md")
    args = parser.parse_args()
    parts = args.parts.split(",")
    rounds = args.rounds or (5 if args.quick else 15)
    scale = 4 if args.quick else 1
    benchkit.one_thread()
    start = benchkit.machine()
    batches = (1, DEFAULTS.envs_per_worker)
    steps = [measure_steps(w, b, rounds, 200 // scale) for b in batches for w in WIDTHS] if "step" in parts else []
    cnn = [measure_cnn_steps(name, b, rounds, {"minatar": 200, "nature": 20}[name] // scale)
           for name in CNNS for b in CNN_BATCHES] if "cnn" in parts else []
    rollout = []
    if "rollout" in parts:
        with tempfile.TemporaryDirectory(prefix="hb-inference-", dir="/tmp") as tmp:
            rollout = measure_rollouts(4 * rounds, 2, tmp)  # short blocks: a burst of load spreads over the systems
    meta = {"start": start, "end": benchkit.machine(), "rounds": rounds, "rollout_rounds": 4 * rounds,
            "command": " ".join(sys.argv)}
    lines = ["# Worker inference: numpy vs torch, dense vs pruned", "",
             f"`{meta['command']}`; {rounds} alternating rounds after one warm-up"
             + (f" (rollout: {4 * rounds} of 2 chunks each)" if rollout else "") + ", every call timed on its own; "
             f"1 thread per runtime; load average {start['loadavg']} at the start, {meta['end']['loadavg']} at the "
             f"end ({start['cpus']} cores, numpy {start['numpy']}, torch {start['torch']}).", ""]
    if steps:
        lines += step_section(steps)
    if cnn:
        lines += ["## CNN policy step, dense vs channel-pruned", "",
                  "`act` (forward, sample, log-prob) on a batch of uint8 frames, numpy (`NumpyActor`, what the worker "
                  "runs) and torch (the Actor of the same shapes, no_grad). Wall-clock median µs (p99) and the "
                  "speed-up over numpy dense (its median / this one's); then the median of this thread's CPU time "
                  "(time.thread_time, which leaves out the waits for a core on a busy machine) and the same ratio:",
                  "", *cnn_lines(cnn), ""]
    if rollout:
        lines += rollout_section(rollout)
    benchkit.write(args.out, {"meta": meta, "steps": steps, "cnn": cnn, "rollout": rollout}, lines)


if __name__ == "__main__":
    main()
