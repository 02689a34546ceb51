"""`hotprune eval RUN_DIR|POLICY`: the kept policy, on its environment, alone.

Runs `episodes` full episodes in a fresh gymnasium env (seeded `seed`, `seed + 1`, ...), sampling
actions as the workers do, or with `deterministic` the most likely action (discrete) or the mean
(continuous). Reports the mean and standard deviation of the return and the policy's non-zero and
total parameters.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from service.artifacts import load_policy
from service.envs import clip_actions, env_spec

MAX_EPISODES = 10_000


@torch.no_grad()
def evaluate(path: str | Path, episodes: int = 10, deterministic: bool = False, seed: int = 0) -> dict:
    if not 1 <= episodes <= MAX_EPISODES:
        raise ValueError(f"--episodes must be in [1, {MAX_EPISODES}], got {episodes}")
    actor, meta = load_policy(path)
    spec = env_spec(meta["env_id"])
    torch.manual_seed(seed)
    env = gym.make(meta["env_id"])
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                dist = actor.distribution(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
                if deterministic:
                    action = dist.probs.argmax(-1) if spec.discrete else dist.mean
                else:
                    action = dist.sample()
                obs, reward, terminated, truncated, _ = env.step(clip_actions(spec, action.numpy()[0]))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    params = [p.detach().numpy() for p in actor.parameters()]
    return {
        "env_id": meta["env_id"], "episodes": episodes, "deterministic": deterministic,
        "return_mean": statistics.fmean(returns), "return_std": statistics.pstdev(returns),
        "nonzero_params": int(sum(np.count_nonzero(p) for p in params)), "params": int(sum(p.size for p in params)),
        "version": meta.get("version"), "structure": meta.get("structure"),
    }


def report(result: dict) -> str:
    return (f"{result['env_id']}: return {result['return_mean']:.2f} ± {result['return_std']:.2f} over "
            f"{result['episodes']} episode(s) ({'deterministic' if result['deterministic'] else 'sampled'} actions); "
            f"policy v{result['version']}, {result['nonzero_params']:,} non-zero of {result['params']:,} parameters")
