"""Per-epoch metrics for TensorBoard (`tensorboard = true`; the optional `tensorboard` extra).

CleanRL's tags, against env steps (`global_step`): `charts/episodic_return`, `charts/SPS`,
`losses/*` (PPO's or SAC's); and hotprune's: `sparsity/training`, `sparsity/inference`,
`sparsity/critic` (SAC's critics, when pruned), `sparsity/<layer>` (the training model's),
`async/policy_lag`, `time/rollout_s`, `time/train_s`. The event files go to runs/<id>/tensorboard/:
`tensorboard --logdir runs`. TensorBoard is imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac",  # PPO's
          "qf_loss", "qf1_values", "qf2_values", "actor_loss", "alpha", "alpha_loss")  # SAC's (CleanRL's tags)
DIRECTORY = "tensorboard"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoard:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 -- optional, only when asked for

        self.writer = SummaryWriter(str(run_dir / DIRECTORY))

    def epoch(self, record: Mapping, layers: Mapping[str, float]) -> None:
        scalars = {
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
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, record["global_step"])

    def close(self) -> None:
        self.writer.close()
