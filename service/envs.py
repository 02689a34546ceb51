"""Gymnasium environments: what a policy for `env_id` looks like, and the vector env workers step."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from hotprune import spaces
from hotprune.config import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    obs_dim: int  # of the flattened observation (hotprune.spaces): what the policy takes
    act_dim: int  # number of actions (discrete) or action vector size (continuous)
    discrete: bool
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    # the env's own observation space, which hotprune.spaces.flatten flattens; None: a flat float Box
    observation_space: gym.Space | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.observation_space is None:
            box = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
            object.__setattr__(self, "observation_space", box)  # frozen: set once, here

    def flatten(self, obs, batched: bool = True) -> np.ndarray:
        """float32 [n, obs_dim]: observations of the env as the policy takes them."""
        return spaces.flatten(self.observation_space, obs, batched)


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
    return spec_of(env_id, obs, act)


def spec_of(env_id: str, obs: gym.Space, act: gym.Space) -> EnvSpec:
    """The spec of an env with these spaces; ConfigError for spaces hotprune cannot run."""
    try:
        obs_dim = spaces.check(obs)
    except spaces.SpaceError as exc:
        raise ConfigError(f"env_id {env_id!r}: {exc}") from None
    if isinstance(act, gym.spaces.Discrete):
        return EnvSpec(env_id, obs_dim, int(act.n), True, observation_space=obs)
    if isinstance(act, gym.spaces.Box) and len(act.shape) == 1:
        low, high = tuple(map(float, act.low)), tuple(map(float, act.high))
        return EnvSpec(env_id, obs_dim, act.shape[0], False, low, high, obs)
    raise ConfigError(f"env_id {env_id!r}: actions must be Discrete or a flat Box, got {act}")


def action_space(spec: EnvSpec) -> gym.Space:
    """The env's action space, from the spec: Discrete(act_dim) or the Box of its bounds."""
    if spec.discrete:
        return gym.spaces.Discrete(spec.act_dim)
    return gym.spaces.Box(np.array(spec.action_low, np.float32), np.array(spec.action_high, np.float32))


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
