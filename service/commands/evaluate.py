"""`hotprune eval RUN_DIR|POLICY`: the kept policy, on its environment, alone.

With `video`, the first episode is rendered to an mp4 (the optional `video` extra: pygame, imageio).
Runs `episodes` full episodes in a fresh gymnasium env (seeded `seed`, `seed + 1`, ...), sampling
actions as the workers do, or with `deterministic` the most likely action (discrete), the mean
(PPO, continuous) or tanh of the mean in the action box (SAC). Reports the mean and standard
deviation of the return and the policy's non-zero and total parameters.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from hotprune.actor_spec import policy_spec
from hotprune.runs.artifacts import load_policy
from hotprune.envs import EnvSource, clip_actions

MAX_EPISODES = 10_000


def _video_writer():
    try:
        import imageio.v2 as imageio  # noqa: PLC0415 -- the optional video extra
        import pygame  # noqa: F401, PLC0415 -- gymnasium's classic-control renderer
    except ImportError:
        raise ValueError("--video needs the video extra: pip install -e '.[video]'") from None
    return imageio


def _frame(env) -> np.ndarray:
    """A rendered frame padded to a multiple of 16 pixels (what video codecs want)."""
    frame = env.render()
    pad = [(0, -frame.shape[0] % 16), (0, -frame.shape[1] % 16), (0, 0)]
    return np.pad(frame, pad)


@torch.no_grad()
def evaluate(path: str | Path, episodes: int = 10, deterministic: bool = False, seed: int = 0,
             video: Path | None = None, env_id: str | None = None) -> dict:
    """Returns over `episodes`; with `video`, the first episode is also written there as an mp4.
    With `env_id`, a policy trained on another environment is refused."""
    if not 1 <= episodes <= MAX_EPISODES:
        raise ValueError(f"--episodes must be in [1, {MAX_EPISODES}], got {episodes}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    actor, meta = load_policy(path, env_id)
    source = EnvSource.from_meta(meta)
    spec = policy_spec(meta)
    imageio = _video_writer() if video else None
    torch.manual_seed(seed)
    env = source.make(render_mode="rgb_array" if video else None)  # given only for a video: not every env takes it
    returns, frames = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            recording = video is not None and episode == 0
            if recording:
                frames.append(_frame(env))
            while not done:
                action = actor.act(torch.from_numpy(spec.flatten(obs, batched=False)), deterministic)
                obs, reward, terminated, truncated, _ = env.step(clip_actions(spec, action.numpy()[0]))
                total += float(reward)
                done = terminated or truncated
                if recording:
                    frames.append(_frame(env))
            returns.append(total)
    finally:
        env.close()
    if video:
        imageio.mimwrite(video, frames, fps=env.metadata.get("render_fps", 30))
    params = [p.detach().numpy() for p in actor.parameters()]
    return {
        "env_id": meta["env_id"], "episodes": episodes, "deterministic": deterministic,
        "return_mean": statistics.fmean(returns), "return_std": statistics.pstdev(returns), "returns": returns,
        "nonzero_params": int(sum(np.count_nonzero(p) for p in params)),
        # of the dense policy: a neuron-pruned one is smaller than its dense shape
        "params": int(meta.get("params_total", sum(p.size for p in params))),
        "version": meta.get("version"), "structure": meta.get("structure"),
        "video": str(video) if video else None, "video_frames": len(frames),
    }


def report(result: dict) -> str:
    return (f"{result['env_id']}: return {result['return_mean']:.2f} ± {result['return_std']:.2f} over "
            f"{result['episodes']} episode(s) ({'deterministic' if result['deterministic'] else 'sampled'} actions); "
            f"policy v{result['version']}, {result['nonzero_params']:,} non-zero of {result['params']:,} parameters"
            + (f"\nvideo of the first episode ({result['video_frames']} frames): {result['video']}"
               if result["video"] else ""))
