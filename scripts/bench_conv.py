"""The workers' numpy CNN step against the torch actor's, one thread each: the whole actor forward
(conv layers and head, uint8 frames in, logits out) for the MinAtar and the Nature CNN at batch 1 and 8.

The two are timed alternately, rep by rep, so that a busy machine slows both alike; each rep times
enough calls for a few milliseconds, and a row is the median over every rep of every round.
Writes benchmarks/conv.md and .json.

    python scripts/bench_conv.py [--rounds 5] [--reps 20] [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from gymnasium import spaces as gs

from benchkit import machine, one_thread, write
from hotprune.config import Config
from hotprune.envs import spec_of
from hotprune.learning.policy import actor_from_tensors, make_actor
from hotprune.workers.numpy_policy import NumpyActor

LAYOUTS = {"MinAtar (16 3x3, head 128)": spec_of("Small-v0", gs.Box(0, 1, (4, 10, 10), np.uint8), gs.Discrete(3)),
           "Nature (84x84x4, head 512)": spec_of("Nature-v0", gs.Box(0, 255, (4, 84, 84), np.uint8), gs.Discrete(6))}


def actors(spec):
    """The numpy and the torch actor over the same random weights (unit scale)."""
    network = Config.from_dict({}).network("actor", spec)
    shapes = make_actor(spec, network.hidden_sizes, False, "ppo", network.activation, network.conv).state_dict()
    rng = np.random.default_rng(0)
    tensors = {k: (rng.standard_normal(v.shape) / np.sqrt(v[0].numel())).astype(np.float32) for k, v in shapes.items()}
    torch_actor = actor_from_tensors(tensors, True, "ppo", None, "relu", network.conv)
    return NumpyActor(tensors, spec, rng, "ppo", "relu", network.conv), torch_actor, network.conv


def per_call_us(step, inner: int) -> tuple[float, float]:
    """µs per call, wall clock and this thread's CPU time: on a shared, oversubscribed machine the
    CPU time leaves out the waits for a core (not the cache misses others cause)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(inner):
        step()
    return (time.perf_counter() - wall) / inner * 1e6, (time.thread_time() - cpu) / inner * 1e6


def measure(spec, batch: int, rounds: int, reps: int) -> dict:
    numpy_actor, torch_actor, conv = actors(spec)
    obs = np.random.default_rng(batch).integers(0, int(conv.scale) + 1, (batch, spec.obs_dim)).astype(np.uint8)
    with torch.inference_mode():
        np.testing.assert_allclose(numpy_actor.forward(obs), torch_actor(torch.from_numpy(obs)).numpy(),
                                   atol=1e-4, rtol=1e-4)  # the same function (tests/test_pixels.py: 1e-5)
        steps = {"numpy": lambda: numpy_actor.forward(obs), "torch": lambda: torch_actor(torch.from_numpy(obs))}
        inner = max(1, int(3e3 / per_call_us(steps["torch"], 3)[0]))  # a rep of about 3 ms
        times = {name: [] for name in steps}
        for _ in range(rounds):
            for _ in range(reps):
                for name, step in steps.items():
                    times[name].append(per_call_us(step, inner))
    return {f"{name}_{clock}": float(np.median([t[i] for t in runs])) for name, runs in times.items()
            for i, clock in enumerate(("wall", "cpu"))} | {"reps": rounds * reps, "inner": inner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 round of 5 reps: that it runs")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.reps = 1, 5
    one_thread()
    rows = {f"{name} b{batch}": measure(spec, batch, args.rounds, args.reps)
            for name, spec in LAYOUTS.items() for batch in (1, 8)}
    info = machine()
    lines = ["# The workers' numpy CNN step vs torch (scripts/bench_conv.py)", "",
             f"One thread each (torch and numpy's BLAS), alternating rep by rep; median of {args.rounds} "
             f"rounds x {args.reps} reps, µs per actor forward (uint8 frames -> logits), random weights.", "",
             "CPU: this thread's CPU time (time.thread_time), which leaves out the waits for a core on a "
             "busy machine; wall: perf_counter.", "", f"Machine: {info}", "",
             "| net | batch | numpy µs CPU | torch µs CPU | numpy / torch CPU | numpy µs wall | torch µs wall "
             "| numpy / torch wall |", "|---" * 8 + "|"]
    for key, row in rows.items():
        name, batch = key.rsplit(" b", 1)
        cells = [f"{row[f'{lib}_{clock}']:,.0f}" for clock in ("cpu", "wall") for lib in ("numpy", "torch")]
        ratios = [f"{row[f'numpy_{clock}'] / row[f'torch_{clock}']:.2f}" for clock in ("cpu", "wall")]
        lines.append(f"| {name} | {batch} | {cells[0]} | {cells[1]} | {ratios[0]} | {cells[2]} | {cells[3]} | "
                     f"{ratios[1]} |")
    write("conv", {"machine": info, "rows": rows}, lines)


if __name__ == "__main__":
    main()
