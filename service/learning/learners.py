"""The run's learner built from its config: the algorithm's own section (`cfg.algo`), the run's length, and
by name the actor's and the critic's networks (`cfg.network`: sizes and activation) and whether observations
are normalised. A learner (hotprune.learning.ppo.Learner, hotprune.learning.sac.Learner) never sees the
whole config, so it reads its own hyperparameters only."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hotprune.algorithms import ALGORITHMS

if TYPE_CHECKING:
    import torch

    from hotprune.config import Config
    from hotprune.envs import EnvSpec


@dataclass(frozen=True)
class RunLength:
    """How long the run is: PPO anneals its learning rate over its epochs, SAC sizes its replay buffer by its
    samples."""

    epochs: int  # updates
    epoch_samples: int  # env samples each update takes in

    @property
    def samples(self) -> int:
        return self.epochs * self.epoch_samples


def make_learner(cfg: Config, spec: EnvSpec, generator: torch.Generator, device: torch.device | None = None):
    """The `Learner` of the run's algorithm (its module imports torch), on `device` (None: the cpu; the
    trainer passes hotprune.learning.device.resolve(cfg.device)). `generator` stays a cpu generator on
    every device: the minibatch order and the replay draws are the same wherever the run learns."""
    module = importlib.import_module(f"hotprune.learning.{ALGORITHMS[cfg.algorithm].module}")
    return module.Learner(spec, cfg.algo, RunLength(cfg.total_epochs, cfg.epoch_samples), generator,
                          actor=cfg.network("actor", spec), critic=cfg.network("critic", spec),
                          normalize_obs=cfg.normalize_obs, device=device)
