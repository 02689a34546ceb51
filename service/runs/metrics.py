"""Per-epoch metrics for experiment trackers: TensorBoard (`tensorboard = true`; the `tensorboard` extra) and
Weights & Biases (`wandb.track = true` or `hotprune run --track`, as CleanRL's `--track`; the `wandb` extra).

Both get the same scalars (`scalars`), against env steps (`global_step`): CleanRL's tags
`charts/episodic_return`, `charts/SPS`, `losses/*` (PPO's or SAC's: LOSSES, the one list of them, which
`hotprune report` plots too); and hotprune's: `sparsity/training`, `sparsity/inference`, `sparsity/critic`
(SAC's critics, when pruned), `sparsity/<layer>` (the training model's), `async/policy_lag`,
`time/rollout_s`, `time/train_s`. Each tracker's files stay in the run directory: TensorBoard's in
tensorboard/ (`tensorboard --logdir runs`), W&B's in wandb/ (its cache, config and logs too, which would
otherwise go to the home directory). A tracker's library is imported only when asked for, by the trainer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Mapping, Protocol

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",  # PPO's
          "qf_loss", "qf1_values", "qf2_values", "actor_loss", "alpha", "alpha_loss")  # SAC's (CleanRL's tags)
DIRECTORY = "tensorboard"
WANDB_DIRECTORY = "wandb"
# where W&B keeps what is not the run's own files: inside its directory too
WANDB_PLACES = ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")


def available(library: str = "tensorboard") -> bool:
    return importlib.util.find_spec(library) is not None


def scalars(record: Mapping, layers: Mapping[str, float]) -> dict[str, float]:
    """An epoch record (and each layer's sparsity) as the trackers' tags; fields the record lacks are left out."""
    values = {
        "charts/episodic_return": record["reward_mean"],
        "charts/SPS": record["samples_per_s"],
        **{f"losses/{k}": record.get(k) for k in LOSSES},
        "sparsity/training": record["training_sparsity"],
        "sparsity/inference": record["inference_sparsity"],
        "sparsity/critic": record.get("critic_sparsity"),  # SAC with pruning.targets critic
        **{f"sparsity/{name}": value for name, value in layers.items()},
        "async/policy_lag": record["policy_lag"],
        "time/rollout_s": record["rollout_s"],
        "time/train_s": record["train_s"],
    }
    return {tag: value for tag, value in values.items() if value is not None}


class Tracker(Protocol):
    def log(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    def __init__(self, cfg):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 -- optional, only when asked for

        self.writer = SummaryWriter(str(Path(cfg.run_dir) / DIRECTORY))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run named by the run id, with the run's settings as its config and `wandb.*` as project,
    entity, group and tags. Its id is the run's uid, so a resumed trainer logs into the same W&B run
    (epochs it redoes repeat steps W&B has, and W&B keeps the first). WANDB_MODE=offline writes it to
    wandb/ only, for `wandb sync` later."""

    def __init__(self, cfg):
        import wandb  # noqa: PLC0415 -- optional, only when asked for

        directory = Path(cfg.run_dir) / WANDB_DIRECTORY
        directory.mkdir(exist_ok=True)
        os.environ.update({place: str(directory) for place in WANDB_PLACES})  # the trainer's own environment
        settings = cfg.wandb
        self.run = wandb.init(
            project=settings.project, entity=settings.entity or None, group=settings.group or None,
            tags=settings.tags or None, name=Path(cfg.run_dir).name, id=cfg.run_uid or None, resume="allow",
            dir=str(cfg.run_dir), config=dataclasses.asdict(cfg),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def trackers(cfg) -> list[Tracker]:
    """The trackers `cfg` asks for, opened."""
    return [kind(cfg) for kind, wanted in ((TensorBoard, cfg.tensorboard), (WandB, cfg.wandb.track)) if wanted]
