"""Gymnasium environments: how every process of a run makes its environment (`EnvSource`), what a
policy for it looks like (`EnvSpec`), and the vector env workers step.

An environment is a gymnasium id, the constructor's keyword arguments (`env_kwargs`) and wrappers
applied in order (`env_wrappers`, each `module:callable`, as RL Zoo's `env_wrapper`). An id
`module:EnvName-vN` (and a wrapper's module) is imported from the run's `env_dir`, the directory the run
was started in, which its config.toml records as an absolute path: every process of the run, restarts
included, and eval, lth and experiments import it from there without PYTHONPATH. `env_spec` makes the
environment once: an import error, an unknown id or a constructor that refuses a keyword is a
ConfigError of one line, which the supervisor's start-up checks (hotprune.runs.rundir) turn into exit 2
before anything starts.

Pixel environments are made as the community makes them: an `ALE/...-v5` id (ale-py, the `atari`
extra) with frameskip=1 under gymnasium's `AtariPreprocessing` (noop reset, 4 skipped frames with a
max over the last two, 84x84 grayscale) and `FrameStackObservation(4)`: uint8 (4, 84, 84), CleanRL's
and SB3's recipe; a `MinAtar/...` id (the `minatar` extra, registered on first use: gymnasium 1.x no
longer loads its plugin) with its bool (10, 10, C) planes as uint8 (C, 10, 10). Any other image
(a 3-D uint8 or bool Box) is made channels-first the same way when its last axis looks like channels
(1, 3 or 4 of them, after a larger first axis). The user's env_wrappers come before these.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from hotprune import spaces
from hotprune.config import ConfigError


@dataclass(frozen=True)
class EnvSource:
    """What makes a run's environment, the same in every process (`of` a config, `from_meta` a policy file)."""

    env_id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    wrappers: tuple[str, ...] = ()
    directory: str = ""  # where a `module:` id's module and the wrappers' modules are imported from

    @classmethod
    def of(cls, cfg: Any) -> EnvSource:
        """A run's environment, from its Config."""
        return cls(cfg.env_id, dict(cfg.env_kwargs), tuple(cfg.env_wrappers), cfg.env_dir)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> EnvSource:
        """The environment a policy file was trained on (files without these fields: the plain id)."""
        return cls(meta["env_id"], dict(meta.get("env_kwargs", {})), tuple(meta.get("env_wrappers", ())),
                   meta.get("env_dir", ""))

    def meta(self) -> dict[str, Any]:
        """What a policy file records beyond env_id to make its environment again; nothing for a plain id."""
        fields = {"env_kwargs": dict(self.kwargs), "env_wrappers": list(self.wrappers), "env_dir": self.directory}
        return {k: v for k, v in fields.items() if v}

    def make(self, render_mode: str | None = None) -> gym.Env:
        """One environment. `render_mode` reaches the constructor only when given: an environment whose
        constructor has no such argument is made without it."""
        self.registered()
        wrappers = self._wrappers()
        kwargs = {**self.kwargs, **({"render_mode": render_mode} if render_mode else {})}
        if self.env_id.startswith(ATARI):
            kwargs.setdefault("frameskip", 1)  # AtariPreprocessing skips the frames itself
        env = gym.make(self.env_id, **kwargs)
        for wrap in wrappers:
            env = wrap(env)
        return pixels(env, self.env_id)

    def registered(self) -> gym.envs.registration.EnvSpec:
        """gymnasium's registration of the id (reward_threshold, max_episode_steps, ...), after
        importing the module of a `module:` id; gymnasium's error for an unknown id."""
        module, sep, name = self.env_id.partition(":")
        if sep:
            self._import(module, f"env_id {self.env_id!r}")
        elif self.env_id.startswith(ATARI):
            self._import("ale_py", f"env_id {self.env_id!r} (pip install -e \".[atari]\")")  # registers ALE/*
        elif self.env_id.startswith(MINATAR) and self.env_id not in gym.registry:
            with _quiet_root_logger():  # minatar logs a warning on import when seaborn (its renderer) is missing
                self._import("minatar.gym", f"env_id {self.env_id!r} (pip install -e \".[minatar]\")").register_envs()
        return gym.spec(name if sep else self.env_id)

    def _wrappers(self) -> list[Callable[[gym.Env], gym.Env]]:
        out = []
        for name in self.wrappers:
            module, _, attribute = name.partition(":")
            wrapper = getattr(self._import(module, f"env_wrappers {name!r}"), attribute, None)
            if not callable(wrapper):
                raise ConfigError(f"env_wrappers {name!r}: {module} has no callable {attribute}")
            out.append(wrapper)
        return out

    def _import(self, module: str, what: str) -> Any:
        # Appended, not put first: a user's module named like one hotprune imports (json, gymnasium)
        # must not replace it in hotprune's own processes.
        if self.directory and self.directory not in sys.path:
            sys.path.append(self.directory)
        try:
            return importlib.import_module(module)
        except Exception as exc:  # the user's code: any error it raises on import is theirs to read
            where = f" from {self.directory}" if self.directory else ""
            raise ConfigError(f"{what}: cannot import {module}{where}: {type(exc).__name__}: {_line(exc)}") from None


ATARI, MINATAR = "ALE/", "MinAtar/"
FRAME_STACK = 4  # Atari frames a policy sees at once (Mnih et al. 2015)


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class ChannelsFirst(gym.ObservationWrapper):
    """An image observation as hotprune's CNNs take it: uint8 (C, H, W) from (H, W, C) or bool planes."""

    def __init__(self, env: gym.Env, transpose: bool):
        super().__init__(env)
        space = env.observation_space
        self.transpose = transpose
        shape = (space.shape[2], *space.shape[:2]) if transpose else space.shape
        high = 1 if space.dtype == np.bool_ else 255
        self.observation_space = gym.spaces.Box(0, high, shape, np.uint8)

    def observation(self, obs):
        obs = np.asarray(obs, np.uint8)
        return np.ascontiguousarray(obs.transpose(2, 0, 1)) if self.transpose else obs


def pixels(env: gym.Env, env_id: str) -> gym.Env:
    """The preprocessing of image observations (module docstring); other environments as they are."""
    if env_id.startswith(ATARI):
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
        return FrameStackObservation(AtariPreprocessing(env, frame_skip=4), FRAME_STACK)
    space = env.observation_space
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype in (np.uint8, np.bool_)):
        return env
    channels_last = env_id.startswith(MINATAR) or (space.shape[2] in (1, 3, 4) and space.shape[0] > space.shape[2])
    return ChannelsFirst(env, channels_last) if channels_last or space.dtype == np.bool_ else env


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


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

    @property
    def image(self) -> tuple[int, int, int] | None:
        """(C, H, W) of image observations (a CNN policy), None for flat ones (an MLP)."""
        return spaces.image_shape(self.observation_space)

    @property
    def obs_dtype(self) -> str:
        """What observations travel as: uint8 for images (scaled in the network), float32 otherwise."""
        return "float32" if self.image is None else "uint8"

    def flatten(self, obs, batched: bool = True) -> np.ndarray:
        """[n, obs_dim] of obs_dtype: observations of the env as the policy takes them."""
        return spaces.flatten(self.observation_space, obs, batched)


def env_spec(env: str | EnvSource) -> EnvSpec:
    """Inspect an environment's spaces (made once, then closed); an import error, an unknown id, a
    constructor that refuses its arguments and unsupported spaces raise ConfigError."""
    source = EnvSource(env) if isinstance(env, str) else env
    env_id = source.env_id
    try:
        made = source.make()
    except ConfigError:
        raise
    except Exception as exc:  # gymnasium's errors, and whatever the user's constructor or wrapper raises
        given = f" with env_kwargs {dict(source.kwargs)}" if source.kwargs else ""
        raise ConfigError(f"env_id {env_id!r}{given}: {type(exc).__name__}: {_line(exc)}") from None
    try:
        obs, act = made.observation_space, made.action_space
    finally:
        made.close()
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


def make_vector_env(env: str | EnvSource, num_envs: int) -> gym.vector.VectorEnv:
    source = EnvSource(env) if isinstance(env, str) else env
    # SAME_STEP autoreset: the observation after a done is already the next episode's first one, and
    # the final observation is in info["final_obs"] (needed to bootstrap truncated episodes).
    return gym.vector.SyncVectorEnv([source.make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def clip_actions(spec: EnvSpec, actions: np.ndarray) -> np.ndarray:
    """What the env receives: continuous actions clipped to the box (the policy's sample is logged)."""
    if spec.discrete:
        return actions
    return np.clip(actions, spec.action_low, spec.action_high)
