"""A worker's policy step, dense vs pruned: what neuron pruning buys at inference, measured.

For each hidden size, three actors do what a worker does at every vector step (forward, build the
action distribution, sample, log-prob) on a batch of `envs_per_worker` observations:
  dense   - the trained shape;
  weight  - the same shapes with 90% of hidden weights zeroed (unstructured: same work on a CPU);
  neuron  - 90% of hidden units removed: physically smaller matrices, as the store publishes them.
The three are timed in alternating rounds (the machine is noisy; ratios within a round hold), one
torch thread, and the median per-step time and the ratio to dense are written to
benchmarks/forward.json and benchmarks/forward.md.

    .venv/bin/python scripts/bench_forward.py [--batch 4] [--sparsity 0.9] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from service.envs import EnvSpec
from service.policy import actor_arrays, actor_from_tensors, expected_spec, make_actor
from service.pruning import Pruner, apply_masks

CARTPOLE = EnvSpec("CartPole-v1", 4, 2, True)
OUT = Path(__file__).resolve().parent.parent / "benchmarks"


def actors(hidden: list[int], sparsity: float) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dense = make_actor(CARTPOLE, hidden)
    spec, weights = expected_spec(dense), actor_arrays(dense)
    out = {"dense": dense}
    for structure in ("weight", "neuron"):  # neuron: every hidden layer to the target (64 -> 6 units at 90%)
        masks = Pruner(spec, method="magnitude", structure=structure, scope="layer").compute(weights, sparsity)
        out[structure] = actor_from_tensors(apply_masks(weights, masks), CARTPOLE.discrete)
    return out


@torch.no_grad()
def step_time(actor: torch.nn.Module, obs: torch.Tensor, steps: int) -> float:
    """Seconds per policy step, as the worker takes one."""
    t0 = time.perf_counter()
    for _ in range(steps):
        dist = actor.distribution(obs)
        actor.log_prob(dist, dist.sample())
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def forward_time(actor: torch.nn.Module, obs: torch.Tensor, steps: int) -> float:
    """Seconds per forward pass of the network alone (no distribution)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        actor.net(obs)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="observations per step (envs_per_worker)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", default="64,256,1024", help="hidden widths (two layers each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for width in (int(w) for w in args.sizes.split(",")):
        models = actors([width, width], args.sparsity)
        obs = torch.randn(args.batch, CARTPOLE.obs_dim)
        steps = max(50, 200_000 // (width * width // 16 + 1))
        for m in models.values():  # warm up
            step_time(m, obs, steps // 5)
        times = {name: [] for name in models}
        forward = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, m in models.items():
                times[name].append(step_time(m, obs, steps))
                forward[name].append(forward_time(m, obs, steps))
        med = {name: statistics.median(t) for name, t in times.items()}
        fwd = {name: statistics.median(t) for name, t in forward.items()}
        shapes = {name: [list(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
                  for name, m in models.items()}
        results.append({
            "hidden": [width, width], "batch": args.batch, "sparsity": args.sparsity,
            "median_us": {k: v * 1e6 for k, v in med.items()},
            "ratio_to_dense": {k: med[k] / med["dense"] for k in med},
            "forward_median_us": {k: v * 1e6 for k, v in fwd.items()},
            "forward_ratio_to_dense": {k: fwd[k] / fwd["dense"] for k in fwd},
            "weight_shapes": shapes, "steps_per_round": steps, "rounds": args.rounds,
        })
        print(f"hidden {width}x{width} batch {args.batch}: " + ", ".join(
            f"{k} {v * 1e6:.1f} us ({med[k] / med['dense']:.2f}x; forward {fwd[k] * 1e6:.1f} us, "
            f"{fwd[k] / fwd['dense']:.2f}x)" for k, v in med.items()), flush=True)
    OUT.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}
    (OUT / "forward.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# Worker policy step: dense vs pruned", "",
             f"`scripts/bench_forward.py`, batch {args.batch}, sparsity {args.sparsity}, median of {args.rounds} "
             f"alternating rounds, 1 torch thread ({meta['machine']}, torch {meta['torch']}).", "",
             "Policy step = forward + Categorical + sample + log-prob, as the worker runs it; forward = the MLP alone.",
             "", "| hidden | what | dense µs | weight (unstructured) µs | ratio | neuron µs | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for what, m, q in (("policy step", r["median_us"], r["ratio_to_dense"]),
                           ("forward", r["forward_median_us"], r["forward_ratio_to_dense"])):
            lines.append(f"| {r['hidden']} | {what} | {m['dense']:.1f} | {m['weight']:.1f} | {q['weight']:.2f} | "
                         f"{m['neuron']:.1f} | {q['neuron']:.2f} |")
    lines += ["", "Neuron-pruned weight shapes: " + "; ".join(
        f"{r['hidden']}: {r['weight_shapes']['neuron']}" for r in results)]
    (OUT / "forward.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
