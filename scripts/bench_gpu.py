"""The trainer's update on each device: env steps trained per second, PPO and SAC, cpu against cuda.

Both learners as a both-pruned trainer runs them (hotprune.learning.ppo / sac.Learner through make_learner,
80% of the actor's hidden weights masked by TrainingMasks, the update hooks of hotprune.learning.training_masks),
with HalfCheetah-v5's dimensions (17 observations, 6 continuous actions) and random data in place of the
environment (nothing here steps one):

  ppo   one update on an epoch of `--ppo-samples` env steps (4 passes of 8 minibatches, 256-256 tanh nets);
  sac   one update of `--sac-steps` env steps at utd 1 (batch 256, 256-256 ReLU nets, a replay buffer of
        20,000 random rows);
  snapshot  the actor copied to the host as the trainer publishes it (hotprune.learning.device.HostCopy).

One torch thread (as every hotprune process). The devices alternate within each round (the order rotating),
the first round is discarded; per device the median of its rounds. Writes benchmarks/gpu_speed.json and .md
(scripts/gpu_check.sh runs it; benchmarks/gpu.md says what a run of it printed). Without a CUDA device,
`--devices cuda` (the default asks for both) exits 2 with one line.

    .venv/bin/python scripts/bench_gpu.py [--devices cpu,cuda] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.config import ConfigError, load_config  # noqa: E402
from hotprune.envs import EnvSpec  # noqa: E402
from hotprune.learning.chunks import Batch  # noqa: E402
from hotprune.learning.device import HostCopy, describe, resolve  # noqa: E402
from hotprune.learning.learners import make_learner  # noqa: E402
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks  # noqa: E402

OBS, ACT, HIDDEN, ROWS = 17, 6, 256, 20_000  # HalfCheetah-v5's dimensions
SPEC = EnvSpec("HalfCheetah-v5", OBS, ACT, False, (-1.0,) * ACT, (1.0,) * ACT)
SPARSITY = 0.8


def epoch(rng: np.random.Generator, steps: int, envs: int) -> Batch:
    t = steps // envs
    return Batch(obs=rng.standard_normal((t + 1, envs, OBS)).astype(np.float32),
                 actions=rng.uniform(-1, 1, (t, envs, ACT)).astype(np.float32),
                 logprobs=np.full((t, envs), -8.0, np.float32),
                 rewards=rng.standard_normal((t, envs)).astype(np.float32),
                 terminated=rng.random((t, envs)) < 0.01, truncated=np.zeros((t, envs), bool),
                 final_obs=np.zeros((t, envs, OBS), np.float32))


def learner_on(algorithm: str, device: torch.device, samples: int):
    """The algorithm's learner on `device`, both pruned at SPARSITY, and its hooks."""
    cfg = load_config(overrides=[f"algorithm={algorithm}", "env_id=Pendulum-v1", "preset=none",
                                 f"{algorithm}.hidden_sizes={HIDDEN},{HIDDEN}", f"samples_per_epoch={samples}",
                                 "chunk_steps=8", "envs_per_worker=4", "epochs=1000", "sac.learning_starts=0"])
    learner = make_learner(cfg, SPEC, torch.Generator().manual_seed(0), device)
    params = dict(learner.actor.named_parameters())
    hidden = [n for n in params if n.endswith("weight")][:-1]
    rng = np.random.default_rng(0)
    masks = TrainingMasks({n: params[n] for n in hidden}, learner.optimizer)
    masks.apply({n: rng.random(tuple(params[n].shape)) >= SPARSITY for n in hidden})
    if algorithm == "sac":
        learner.buffer.add(epoch(rng, ROWS, 4).transitions())  # what the steps sample from
    return learner, MaskedUpdate(keeping=masks)


def timed(fn) -> float:
    """Seconds of `fn()`, with the device's queued work finished."""
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ppo-samples", type=int, default=2048)
    parser.add_argument("--sac-steps", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="2 rounds of small epochs: does it run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.ppo_samples, args.sac_steps = 2, 256, 32
    benchkit.one_thread()
    try:
        devices = [resolve(name) for name in args.devices.split(",")]
    except ConfigError as exc:
        print(f"bench_gpu: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(1)
    systems = {}
    for device in devices:
        ppo, ppo_hooks = learner_on("ppo", device, args.ppo_samples)
        sac, sac_hooks = learner_on("sac", device, args.sac_steps)
        systems[device.type] = {
            "ppo": lambda learner=ppo, hooks=ppo_hooks: learner.update(epoch(rng, args.ppo_samples, 8), 1, [hooks]),
            "sac": lambda learner=sac, hooks=sac_hooks: learner.update(epoch(rng, args.sac_steps, 4), 1, [hooks]),
            "snapshot": lambda learner=ppo: HostCopy(learner.actor.state_dict()).arrays(),
        }
    seconds = {d: {part: [] for part in parts} for d, parts in systems.items()}
    names = list(systems)
    for r in range(args.rounds + 1):
        for d in names[r % len(names):] + names[:r % len(names)]:
            for part, fn in systems[d].items():
                took = timed(fn)
                if r:  # the first round warms up (allocators, kernels, torch._dynamo's import)
                    seconds[d][part].append(took)
    steps = {"ppo": args.ppo_samples, "sac": args.sac_steps}
    results = {"machine": benchkit.machine(), "devices": {d.type: describe(d) for d in devices},
               "ppo_samples": args.ppo_samples, "sac_steps": args.sac_steps, "rounds": args.rounds,
               "hidden": [HIDDEN, HIDDEN], "sparsity": SPARSITY, "seconds": seconds}
    lines = ["# The trainer's update on each device (scripts/bench_gpu.py)", "",
             f"Load average {results['machine']['loadavg']}; devices: "
             + ", ".join(f"{d}: {name}" for d, name in results["devices"].items()) + f"; {args.rounds} rounds, "
             f"medians. Env steps trained per second (PPO: an epoch of {args.ppo_samples}, 4 x 8 minibatches; "
             f"SAC: {args.sac_steps} steps at utd 1, batch 256), 256-256 nets, {SPARSITY:.0%} of the actor masked.",
             "", "| device | PPO env steps/s | SAC env steps/s | snapshot to host ms |", "| --- | --- | --- | --- |"]
    for d in names:
        med = {part: statistics.median(s) for part, s in seconds[d].items()}
        lines.append(f"| {results['devices'][d]} | {steps['ppo'] / med['ppo']:,.0f} | {steps['sac'] / med['sac']:,.0f} "
                     f"| {med['snapshot'] * 1e3:.2f} |")
    benchkit.write("gpu_speed", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
