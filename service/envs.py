"""Gymnasium environments: what a policy for `env_id` looks like, and the vector env workers step."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hotprune.config import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int
    act_dim: int  # number of actions (discrete) or action vector size (continuous)
    discrete: bool
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()


def env_spec(env_id: str) -> EnvSpec:
    """Inspect an environment's spaces; unknown ids and unsupported spaces raise ConfigError."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"env_id {env_id!r}: {exc}") from None
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
        raise ConfigError(f"env_id {env_id!r}: observations must be a flat Box, got {obs}")
    if isinstance(act, gym.spaces.Discrete):
        return EnvSpec(env_id, obs.shape[0], int(act.n), True)
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        low, high = tuple(map(float, act.low)), tuple(map(float, act.high))
        return EnvSpec(env_id, obs.shape[0], act.shape[0], False, low, high)
    raise ConfigError(f"env_id {env_id!r}: actions must be Discrete or a flat Box, got {act}")


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    # SAME_STEP autoreset: the observation after a done is already the next episode's first one, and
    # the final observation is in info["final_obs"] (needed to bootstrap truncated episodes).
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )


def clip_actions(spec: EnvSpec, actions: np.ndarray) -> np.ndarray:
    """What the env receives: continuous actions clipped to the box (the policy's sample is logged)."""
    if spec.discrete:
        return actions
    return np.clip(actions, spec.action_low, spec.action_high)
