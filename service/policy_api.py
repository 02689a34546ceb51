"""`hotprune.load_policy(path)`: a kept policy as a function from observations to actions (docs/api.md).

`Policy.predict(obs, deterministic=True)` takes numpy arrays, one observation (obs_dim,) or a batch
(n, obs_dim), as Stable-Baselines3's `predict` does, and returns one action or a batch of them: what the
environment is stepped with (continuous actions clipped to the action box). It runs the actor as the
inference workers run it, in numpy (hotprune.workers.numpy_policy: no torch import); `to_torch()` is the
same function as a torch `nn.Module` (hotprune.learning.policy.Acting), equal to it within float32
rounding (tests/test_api.py). A file that is not a policy, or whose tensors are no actor, is refused
with one line (ArtifactError); so is an observation of the wrong shape or type (ValueError).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from hotprune.envs import EnvSource, EnvSpec, clip_actions, env_spec
from hotprune.runs import artifacts
from hotprune.workers.numpy_policy import NumpyActor


class Policy:
    """A policy file (policy.safetensors of a run, or any file `hotprune export` or a run wrote)."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any], seed: int | None = None):
        self.path, self.metadata = path, meta
        self.algorithm: str = meta.get("algorithm", "ppo")  # files from before SAC are PPO's
        self.source = EnvSource.from_meta(meta)
        self.spec: EnvSpec = env_spec(self.source)
        self._tensors = tensors
        try:
            self._actor = NumpyActor(tensors, self.spec, np.random.default_rng(seed), self.algorithm)
        except (KeyError, ValueError) as exc:
            raise artifacts.no_actor(path, exc) from None

    @property
    def env_id(self) -> str:
        return self.spec.env_id

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero (or removed, with neuron pruning)."""
        return float(self.metadata.get("weight_sparsity", 0.0))

    @functools.cached_property
    def observation_space(self):
        return self._spaces()[0]

    @functools.cached_property
    def action_space(self):
        return self._spaces()[1]

    def _spaces(self):
        env = self.source.make()
        env.close()
        return env.observation_space, env.action_space

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The action for one observation, or a row of actions for a batch: deterministic, the most
        likely (argmax, the Gaussian's mean, tanh of SAC's mean); else sampled as the workers sample."""
        batch = self._checked(obs)
        actions = self._actor.most_likely(batch) if deterministic else self._actor.act(batch)[0]
        actions = clip_actions(self.spec, actions)
        return actions if np.ndim(obs) == 2 else actions[0]

    def _checked(self, obs: Any) -> np.ndarray:
        """`obs` as a float32 batch; ValueError with one line unless it is numbers of the policy's shape."""
        array = np.asarray(obs)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"observations must be numbers (float32), got dtype {array.dtype}")
        dim = self.spec.obs_dim
        if not (array.shape == (dim,) or (array.ndim == 2 and array.shape[1] == dim)):
            raise ValueError(f"observation shape {array.shape} does not fit {self.env_id}: ({dim},) for one "
                             f"observation, (n, {dim}) for a batch")
        return np.atleast_2d(array.astype(np.float32, copy=False))

    def to_torch(self, deterministic: bool = True):
        """An `nn.Module` (float32, CPU) from observations to the actions `predict` gives."""
        from hotprune.learning.policy import Acting

        actor = artifacts.policy_actor(self._tensors, self.metadata)
        return Acting(actor, deterministic, (self.spec.action_low, self.spec.action_high)).eval()

    def __repr__(self) -> str:
        return (f"Policy({self.env_id}, {self.algorithm}, sparsity {self.sparsity:.1%}, "
                f"version {self.metadata.get('version')}, {self.path})")


def load_policy(path: str | os.PathLike, seed: int | None = None) -> Policy:
    """The policy of a run directory (its policy.safetensors) or of a policy file; `seed` seeds the
    samples of `predict(obs, deterministic=False)`."""
    path, tensors, meta = artifacts.read_policy(path)
    return Policy(path, tensors, meta, seed)
