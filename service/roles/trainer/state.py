"""What a trainer goes on from after a crash: its place in the run, the learner's state, the normalisation
statistics, and the checkpoint that is the sum of the trainer's parts.

A part the trainer checkpoints has `state_dict() -> (tensors, meta)` and `load_state_dict(tensors, meta)`
(TorchRL's TrainerHookBase): `Checkpoint` writes the union of its parts' tensors and metadata into one
safetensors file (hotprune.learning.checkpoints: when, and why before the epoch's snapshot) and hands the
whole file back to every part, in the same order, to take what it wrote. The names are the ones the trainer's
checkpoints always had, so a checkpoint written before the trainer was split into parts still resumes. A
counter missing from a checkpoint (one written before the counter existed) keeps its initial value.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np
import torch

from hotprune.config import Config
from hotprune.learning import checkpoints
from hotprune.learning.normalize import RewardScaler, RunningMeanStd

Tensors = dict[str, np.ndarray]


class Part(Protocol):
    def state_dict(self) -> tuple[Tensors, dict]: ...

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None: ...


def load_counters(owner: object, meta: dict, names: tuple[str, ...]) -> None:
    """The counters `names` of `owner` from a checkpoint's metadata; one it lacks keeps its value."""
    for name in names:
        setattr(owner, name, meta.get(name, getattr(owner, name)))


@dataclass
class Position:
    """Where this trainer is in the run: snapshot `version` is the policy after that many updates."""

    epoch: int = 0
    version: int = 0
    trainer_start: int = 0  # how many trainers ran this run before this one (resumes)
    epoch_ceiling: int = 0  # the newest epoch any trainer of this run may have published

    def take_over(self, checkpoint_every: int) -> None:
        """A resumed trainer after its checkpoint: the lost epochs published at most checkpoint_every - 1
        snapshots after it (the next checkpoint comes before the next publish), so versions start above
        theirs (workers never swap backwards) and reports on their snapshots are still accepted."""
        self.version += checkpoint_every
        self.epoch_ceiling = max(self.epoch_ceiling, self.epoch + checkpoint_every - 1)
        self.trainer_start += 1

    def state_dict(self) -> tuple[Tensors, dict]:
        return {}, asdict(self)

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        load_counters(self, meta, tuple(f.name for f in fields(self)))


class LearnerState:
    """The learner's modules, optimizers and what else it keeps (SAC: the temperature, its step clocks),
    and the RNGs: `actor.<name>`, `adam.<index>.<key>`, `rng.torch`, ...; metadata `param_groups`, `learner`."""

    def __init__(self, learner, generator: torch.Generator):
        self.learner, self.generator = learner, generator

    def state_dict(self) -> tuple[Tensors, dict]:
        own, meta = self.learner.state()
        tensors = checkpoints.state_tensors(self.learner.modules(), self.learner.optimizers(), self.generator)
        return tensors | own, {"param_groups": checkpoints.param_groups(self.learner.optimizers()), "learner": meta}

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        checkpoints.restore(tensors, self.learner.modules(), self.learner.optimizers(), self.generator,
                            meta["param_groups"])
        self.learner.restore(tensors, meta.get("learner", {}))


class Normalisation:
    """The run's normalisation statistics (hotprune.learning.normalize): of observations (`obs_stats.*`),
    which reach the actor's buffers after each update, so an epoch trains on the statistics its data was
    collected with; and of returns (`reward_stats.*`), which scale the chunks' rewards as they come in."""

    def __init__(self, cfg: Config, obs_dim: int, actor: torch.nn.Module, init_meta: dict):
        self.actor, self.obs_dim = actor, obs_dim
        self.obs = RunningMeanStd((obs_dim,)) if cfg.normalize_obs else None
        if self.obs and "obs_count" in init_meta:  # rewound weights go on with their own statistics
            self.obs.load({"mean": actor.obs_norm.mean.cpu().numpy().astype(np.float64),
                           "var": actor.obs_norm.var.cpu().numpy().astype(np.float64),
                           "count": np.array([init_meta["obs_count"]], np.float64)})
        self.rewards = RewardScaler(cfg.num_workers, cfg.envs_per_worker, cfg.algo.gamma) \
            if cfg.normalize_reward else None

    def after_update(self, obs: np.ndarray) -> None:
        """The epoch's observations ([T + 1, N, D], the last row bootstrapping) into the statistics, and
        those into the actor: from the next epoch on, the workers normalise with them."""
        if self.obs:
            self.obs.update(obs[:-1].reshape(-1, self.obs_dim))
            self.actor.obs_norm.set(self.obs.mean.astype(np.float32), self.obs.var.astype(np.float32))

    def ticket_meta(self) -> dict:
        """What a kept weights file says of the statistics in it: how many observations they were taken over."""
        return {"obs_count": self.obs.count} if self.obs else {}

    def kept(self) -> dict[str, RunningMeanStd | RewardScaler]:
        """The statistics this run keeps, by checkpoint prefix."""
        kept = {"obs_stats": self.obs, "reward_stats": self.rewards}
        return {prefix: stats for prefix, stats in kept.items() if stats is not None}

    def state_dict(self) -> tuple[Tensors, dict]:
        return {f"{prefix}.{k}": v for prefix, stats in self.kept().items() for k, v in stats.state().items()}, {}

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        try:
            for prefix, stats in self.kept().items():
                stats.load({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        except (KeyError, ValueError) as exc:
            raise checkpoints.CheckpointError(f"checkpoint's normalisation statistics do not fit this run: {exc}") \
                from None


class Checkpoint:
    """The run's trainer checkpoint: the sum of `parts`, for this run's model."""

    def __init__(self, cfg: Config, parts: list[Part], log):
        self.cfg, self.parts, self.log = cfg, parts, log

    def save(self, epoch: int, version: int) -> None:
        c = self.cfg
        tensors, meta = {}, {}
        for part in self.parts:
            own_tensors, own_meta = part.state_dict()
            tensors |= own_tensors
            meta |= own_meta
        t0 = time.perf_counter()
        checkpoints.save(c, tensors, **meta)
        self.log.info("checkpoint_saved", epoch=epoch, version=version, duration_ms=(time.perf_counter() - t0) * 1e3)

    def load(self) -> bool:
        """Every part from the run's checkpoint; False when there is none (the trainer died before its first)."""
        c = self.cfg
        if not checkpoints.path(c.run_dir).exists():
            self.log.warning("checkpoint_missing", reason="no checkpoint to resume from: starting at epoch 0")
            return False
        tensors, meta = checkpoints.load(c)  # verified: corrupt, foreign or reinterpreted files are refused
        for part in self.parts:
            part.load_state_dict(tensors, meta)
        return True
