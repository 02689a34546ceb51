"""`hotprune.load_policy(path)`: a kept policy as a function from observations to actions (docs/api.md).

`Policy.predict(obs, deterministic=True)` takes one observation of the environment's space or a batch
of them (each array with a leading batch axis; a dict or tuple of such for Dict and Tuple spaces), as
Stable-Baselines3's `predict` does, and returns one action or a batch of them: what the environment is
stepped with (continuous actions clipped to the action box). It flattens them as the workers do
(hotprune.spaces) and runs the actor as they run it, in numpy (hotprune.workers.numpy_policy: no torch
import); `to_torch()` is the same function as a torch `nn.Module` (hotprune.learning.policy.Acting) on
flattened observations, equal to it within float32 rounding (tests/test_api.py). Everything it needs
is in the file's metadata (hotprune.actor_spec.policy_metadata): no environment is made, but for files
of earlier versions. A file that is not a policy, or whose tensors are no actor, is refused with one
line (ArtifactError); so is an observation of the wrong shape or type (ValueError).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.spaces import Box

from hotprune import spaces
from hotprune.actor_spec import policy_conv, policy_spec
from hotprune.envs import EnvSpec, action_space, clip_actions
from hotprune.runs import artifacts
from hotprune.workers.numpy_policy import NumpyActor


class Policy:
    """A policy file (policy.safetensors of a run, or any file `hotprune export` or a run wrote)."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any], seed: int | None = None):
        self.path, self.metadata = path, meta
        self.algorithm: str = meta.get("algorithm", "ppo")  # files from before SAC are PPO's
        self._tensors = tensors
        try:
            self.spec: EnvSpec = policy_spec(meta)
        except spaces.SpaceError as exc:
            raise artifacts.no_actor(path, exc) from None
        try:
            self._actor = NumpyActor(tensors, self.spec, np.random.default_rng(seed), self.algorithm,
                                     meta.get("activation"),  # None: the algorithm's, as files before it
                                     policy_conv(meta))
        except (KeyError, ValueError) as exc:
            raise artifacts.no_actor(path, exc) from None

    @property
    def env_id(self) -> str:
        return self.spec.env_id

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are zero (or removed, with neuron pruning)."""
        return float(self.metadata.get("weight_sparsity", 0.0))

    @property
    def observation_space(self):
        """The environment's observation space (predict takes its observations)."""
        return self.spec.observation_space

    @functools.cached_property
    def action_space(self):
        return action_space(self.spec)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The action for one observation, or a row of actions for a batch: deterministic, the most
        likely (argmax, the Gaussian's mean, tanh of SAC's mean); else sampled as the workers sample."""
        batch, batched = self._flat(obs)
        actions = self._actor.most_likely(batch) if deterministic else self._actor.act(batch)[0]
        actions = clip_actions(self.spec, actions)
        return actions if batched else actions[0]

    def _flat(self, obs: Any) -> tuple[np.ndarray, bool]:
        """`obs` flattened (a float32 batch) and whether it was a batch; ValueError with one line
        unless it is one or many observations of the policy's space."""
        space = self.spec.observation_space
        if not isinstance(space, Box):
            return self.spec.flatten(obs, batched := spaces.is_batch(space, obs)), batched
        array = np.asarray(obs)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"observations must be numbers (float32), got dtype {array.dtype}")
        shape = space.shape
        if array.shape not in (shape, (array.shape[:1] + shape)):
            raise ValueError(f"observation shape {array.shape} does not fit {self.env_id}: {shape} for one "
                             f"observation, (n, {', '.join(map(str, shape))}) for a batch")
        batched = array.shape != shape
        return self.spec.flatten(array, batched), batched

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
