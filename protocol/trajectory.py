"""The tensors of a `trajectory` message: one fixed-length chunk of T vector steps over N envs.

Observations travel flattened, rows of `obs_dim` whatever the environment's space (the worker
flattens them: hotprune.spaces), so the trainer, its critic and the replay buffer take one format:
float32, or for image observations uint8 (C*H*W channel-major; the CNN scales them itself)."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from hotprune.protocol.codec import MessageRejected, check_tensors


def trajectory_spec(steps: int, envs: int, obs_dim: int, act_dim: int, discrete: bool, truncations: int,
                    obs_dtype: str = "float32"):
    """name -> (dtype, shape). `final_obs` holds the final observation of each truncated step."""
    action = ("int64", (steps, envs)) if discrete else ("float32", (steps, envs, act_dim))
    return {
        "obs": (obs_dtype, (steps + 1, envs, obs_dim)),  # the last row bootstraps the chunk's end
        "actions": action,
        "logprobs": ("float32", (steps, envs)),  # behaviour policy's log-probabilities
        "rewards": ("float32", (steps, envs)),
        "terminated": ("bool", (steps, envs)),
        "truncated": ("bool", (steps, envs)),
        "final_obs": (obs_dtype, (truncations, obs_dim)),  # in (t, n) order of the truncated steps
    }


def check_trajectory(tensors: Mapping[str, np.ndarray], steps: int, envs: int, obs_dim: int, act_dim: int,
                     discrete: bool, bound: float = math.inf, obs_dtype: str = "float32") -> None:
    """Names, shapes, dtypes, finite values; actions in the action space; observations, rewards and
    log-probabilities within +-`bound` (finite but huge values, e.g. a forged 3e38 reward, would
    still turn the update's logits into NaN); discrete log-probabilities <= 0."""
    truncated = tensors.get("truncated")
    if truncated is None or truncated.dtype != np.bool_ or truncated.shape != (steps, envs):
        raise MessageRejected(f"trajectory: truncated must be bool[{steps}, {envs}]")
    check_tensors(tensors, trajectory_spec(steps, envs, obs_dim, act_dim, discrete, int(truncated.sum()), obs_dtype))
    if discrete and not ((tensors["actions"] >= 0) & (tensors["actions"] < act_dim)).all():
        raise MessageRejected(f"trajectory: discrete actions outside [0, {act_dim})")
    for name in ("obs", "final_obs", "rewards", "logprobs"):
        if tensors[name].size and np.abs(tensors[name]).max() > bound:
            raise MessageRejected(f"trajectory: {name} outside +-{bound:g}")
    if discrete and tensors["logprobs"].size and tensors["logprobs"].max() > 0:
        raise MessageRejected("trajectory: a discrete log-probability above 0")


def check_trajectory_fields(fields: Mapping, steps: int, envs: int, max_params: int) -> None:
    """The per-chunk statistics: bounded lists of finite numbers, a sparsity in [0, 1], a parameter
    count no larger than the dense policy's."""
    if not 0.0 <= fields["policy_sparsity"] <= 1.0:
        raise MessageRejected("trajectory: policy_sparsity outside [0, 1]")
    if not 0 <= fields["policy_nonzero_params"] <= max_params:
        raise MessageRejected(f"trajectory: policy_nonzero_params outside [0, {max_params}]")
    limits = {"episode_returns": steps * envs, "episode_lengths": steps * envs, "swap_latencies_ms": steps}
    for name, limit in limits.items():
        values = fields[name]
        if len(values) > limit:
            raise MessageRejected(f"trajectory: {name} has {len(values)} entries, at most {limit} possible")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise MessageRejected(f"trajectory: {name} must hold finite numbers")
