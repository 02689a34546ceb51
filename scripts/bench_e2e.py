"""End to end on CartPole-v1: wall clock and env steps until the mean return of the last 20 episodes
reaches 475, and samples/s, for SB3 PPO with RL Zoo's CartPole settings, hotprune dense and hotprune
both-pruned at 90%, both with hotprune's CartPole-v1 preset (RL Zoo's settings too). Each is its own
process, timed from its start (imports included); start-up (to the first PPO update for hotprune, to
the first env step for SB3) is reported separately. Systems alternate per seed (A B C A B C); one
torch thread per process.

    .venv/bin/python scripts/bench_e2e.py [--quick]     (needs the bench extra: stable-baselines3)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.runs import runlog  # noqa: E402

TARGET, WINDOW = 475.0, 20
HOTPRUNE = str(Path(sys.executable).with_name("hotprune"))
HOTPRUNE_VARIANTS = {"hotprune dense": ["pruning.method=none"],
                     "hotprune both-pruned 90%": ["pruning.target_sparsity=0.9"]}

# RL Zoo's hyperparams/ppo.yml for CartPole-v1, run in a child process that prints one JSON line.
SB3 = """
import json, sys, time
t_start = float(sys.argv[1])
import torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

def linear(start):
    return lambda progress: progress * start

class Until(BaseCallback):
    def _on_training_start(self):
        self.first = time.time() - t_start
        self.returns, self.reached = [], None
    def _on_step(self):
        for info in self.locals["infos"]:
            if "episode" in info:
                self.returns.append(info["episode"]["r"])
        recent = self.returns[-%(window)d:]
        if len(recent) == %(window)d and sum(recent) / %(window)d >= %(target)f:
            self.reached = (time.time() - t_start, self.num_timesteps)
            return False
        return True

env = make_vec_env("CartPole-v1", n_envs=8, seed=int(sys.argv[2]))
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
            ent_coef=0.0, learning_rate=linear(1e-3), clip_range=linear(0.2), seed=int(sys.argv[2]), device="cpu")
until = Until()
model.learn(total_timesteps=int(sys.argv[3]), callback=until)
wall = time.time() - t_start
reached = until.reached
print(json.dumps({"startup_s": until.first, "wall_s": wall, "steps": model.num_timesteps,
                  "reached_s": reached and reached[0], "reached_steps": reached and reached[1]}))
""" % {"window": WINDOW, "target": TARGET}


def sb3(seed: int, max_steps: int, tmp: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SB3, str(time.time()), str(seed), str(max_steps)],
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "SB3_LOGDIR": tmp})  # SB3 makes its log folder there, not in /tmp
    if done.returncode != 0:
        raise RuntimeError(f"sb3 exited {done.returncode}: {done.stderr[-500:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["samples_per_s"] = out["steps"] / (out["wall_s"] - out["startup_s"])
    return out


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def hotprune(variant: str, seed: int, total_steps: int, runs_dir: str) -> dict:
    run_id = f"e2e-{variant.split()[-1].rstrip('%')}-{seed}-{time.time_ns() % 10**6}"
    sets = [f'runs_dir="{runs_dir}"', f"run_id={run_id}", f"seed={seed}", f"total_steps={total_steps}",
            *HOTPRUNE_VARIANTS[variant]]
    t0 = time.time()
    done = subprocess.run([HOTPRUNE, "run", *[a for s in sets for a in ("--set", s)]], capture_output=True,
                          text=True, timeout=3600)
    wall = time.time() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{variant} exited {done.returncode}: {done.stderr[-500:]}")
    run = runlog.load(Path(runs_dir) / run_id)
    episodes = sorted(run.all("episode"), key=stamp)
    reached, steps = None, 0
    for i, e in enumerate(episodes):
        steps += e["length"]
        recent = episodes[max(0, i - WINDOW + 1): i + 1]
        if len(recent) == WINDOW and statistics.fmean(x["episode_return"] for x in recent) >= TARGET:
            reached = (stamp(e) - t0, steps)
            break
    epochs_logged = run.epochs()
    first = stamp(epochs_logged[0]) - t0 - epochs_logged[0]["epoch_s"]  # the first update's start
    samples = sum(e["samples"] for e in epochs_logged)
    return {"startup_s": first, "wall_s": wall, "steps": samples, "reached_s": reached and reached[0],
            "reached_steps": reached and reached[1],
            "samples_per_s": samples / (stamp(epochs_logged[-1]) - t0 - first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--total-steps", type=int, default=100_000, help="each run's length in env steps (RL Zoo's "
                        "n_timesteps for CartPole-v1)")
    args = parser.parse_args()
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    benchkit.one_thread()
    start = benchkit.machine()
    rows: dict[str, list[dict]] = {"sb3 ppo (rl zoo)": [], **{v: [] for v in HOTPRUNE_VARIANTS}}
    with tempfile.TemporaryDirectory(prefix="hb-e2e-", dir="/tmp") as tmp:
        for i, seed in enumerate(seeds):
            order = list(rows)[i % 3:] + list(rows)[: i % 3]
            for name in order:
                got = sb3(seed, args.total_steps, tmp) if name.startswith("sb3") else \
                    hotprune(name, seed, args.total_steps, tmp)
                rows[name].append({"seed": seed, **got})
                print(f"seed {seed} {name}: {got}", flush=True)
    meta = {"start": start, "end": benchkit.machine(), "seeds": seeds, "command": " ".join(sys.argv)}

    def cell(runs, key, fmt):
        values = [r[key] for r in runs if r[key] is not None]
        return (fmt.format(statistics.median(values)) if values else "never") + \
            (f" ({len(values)}/{len(runs)} reached)" if len(values) < len(runs) else "")
    lines = ["# End to end: CartPole-v1 to a mean return of 475 over the last 20 episodes", "",
             f"`{meta['command']}`; seeds {seeds}, medians; load average {start['loadavg']} at the start, "
             f"{meta['end']['loadavg']} at the end ({start['cpus']} cores). Wall clock from the process start "
             "(imports and start-up included).", "",
             "| system | wall s to 475 | env steps to 475 | start-up s | samples/s after start-up |", "|---" * 5 + "|"]
    for name, runs in rows.items():
        lines.append(f"| {name} | {cell(runs, 'reached_s', '{:.1f}')} | {cell(runs, 'reached_steps', '{:,.0f}')} | "
                     f"{cell(runs, 'startup_s', '{:.1f}')} | {cell(runs, 'samples_per_s', '{:.0f}')} |")
    benchkit.write("e2e", {"meta": meta, "runs": rows}, lines)


if __name__ == "__main__":
    main()
