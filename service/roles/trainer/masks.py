"""The trainer's own masks: what it keeps at zero in the model it trains, and the critics' masks it makes.

- The actor's keep-masks in training (both-pruned mode): the compressor's, taken up as they arrive
  (hotprune.roles.trainer.mask_intake), and with method fixed the mask file's from the start (PPO's critic's
  too: one optimizer, the same hooks); kept exactly zero by hotprune.learning.training_masks.TrainingMasks.
- The gradient statistics a criterion ranks by (taylor, gradient), shipped with every snapshot.
- The snapshot's masked weights as kept values + bitmaps (`kept`), in both-pruned mode.
- With `pruning.targets` "critic" (SAC, both pruned) or a ticket's critic masks, the critics' own masks
  (hotprune.learning.critic_masks), pruned at a schedule step's sparsity once trained through its epoch;
  never sent anywhere.

The update hooks are hotprune.learning.training_masks.MaskedUpdate, which fixes their order. Checkpointed as
`mask.<name>` and `critic_mask.<critic>.<name>` (True = kept), and the critics' newest step.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from hotprune.config import Config
from hotprune.learning.critic_masks import CriticMasks
from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.policy import actor_arrays, expected_spec
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks
from hotprune.protocol.codec import GRAD_PREFIX
from hotprune.protocol.sparse import SparseCode, SparseTensor, worth_sparse
from hotprune.pruning.dynamic import pruner_for
from hotprune.pruning.engine import CompressionFailed, Masks, masked_stats, masks_sparsity, prunable_names, sparsity
from hotprune.pruning.schedule import Schedule
from hotprune.roles.trainer.state import Tensors, load_counters
from hotprune.runs import tickets


class TrainerMasks:
    def __init__(self, cfg: Config, learner, obs_dim: int, schedule: Schedule, log):
        p = cfg.pruning
        self.cfg, self.actor, self.obs_dim, self.schedule, self.log = cfg, learner.actor, obs_dim, schedule, log
        self.weight_spec = expected_spec(self.actor)
        self.params_total = sum(int(np.prod(shape)) for _, shape in self.weight_spec.values())
        self.sparsity_names = prunable_names(self.weight_spec, p.prune_output_layer)
        pruner = pruner_for(self.weight_spec, p, seed=cfg.seed)
        critic = learner.ticket_critic
        params = dict(self.actor.named_parameters()) | {f"critic.{n}": q for n, q in critic.named_parameters()}
        masked = pruner.mask_names() if pruner and cfg.prune_training_model else []
        self.fixed = tickets.fixed_masks(cfg)  # method fixed: pruning.mask_file's, in force from the start
        # The actor's fixed masks, and PPO's critic's (one optimizer, the same update hooks); SAC's critics
        # step on their own optimizer, with their own hooks: CriticMasks below keeps theirs.
        fixed = {} if not self.fixed or not cfg.prune_training_model else \
            {**self.fixed.actor, **({} if learner.critics else
                                    {f"critic.{n}": keep for n, keep in self.fixed.critic.items()})}
        self.training = TrainingMasks({n: params[n] for n in [*masked, *fixed]}, learner.optimizer, regrow=p.regrows)
        grad_names = pruner.grad_names if pruner else []
        self.grad_stats = GradientStats({n: params[n] for n in grad_names}, p.num_gradient_batches) \
            if grad_names else None
        fixed_critics = self.fixed.critic if self.fixed and learner.critics and cfg.prune_training_model else {}
        self.critics = CriticMasks(learner.critics, learner.critic_targets, learner.critic_optimizer, p, cfg.seed) \
            if ("critic" in p.targets and pruner) or fixed_critics else None
        self.critic_masks_epoch = -1  # the newest schedule step the critics were pruned for
        self.codes: tuple[int | None, dict[str, SparseCode]] = (None, {})  # masks version -> its sparse weights' codes
        self.value_networks = learner.value_networks
        if self.fixed:
            self.training.apply(fixed)
            critic_pruned = self.critics.fix(fixed_critics) if fixed_critics else 0
            log.info("masks_loaded", mask_file=p.mask_file, pruned=self.training.count() + critic_pruned,
                     weight_sparsity=self.fixed.stats["weight_sparsity"], training_sparsity_verified=self.sparsity(),
                     **({"critic_sparsity": self.critics.sparsity()} if fixed_critics else {}))

    def hooks(self, take_up: Callable[[], None]) -> MaskedUpdate:
        """The actor's update hooks: in both-pruned mode masks are taken up (`take_up`) and kept; gradient
        statistics whenever a criterion ranks by them."""
        both = self.cfg.prune_training_model
        return MaskedUpdate(keeping=self.training if both else None, stats=self.grad_stats,
                            take_up=take_up if both else None)

    def critic_hooks(self) -> tuple[MaskedUpdate, ...]:
        return (self.critics.hooks,) if self.critics else ()

    def sparsity(self) -> float:
        """The actor's measured sparsity: exact zeros among its prunable weights."""
        return sparsity(actor_arrays(self.actor), self.weight_spec, self.sparsity_names)

    def masks_sparsity(self) -> float:
        """What the actor's masks in training prune of its prunable weights: its measured sparsity is at least
        this, more while weights regrown at zero (regrow, dynamic sparse training) have not moved yet."""
        return masks_sparsity(Masks(self.training.keep_masks()), self.weight_spec, self.sparsity_names)

    def critics_sparsity(self) -> dict[str, float]:
        """Each critic's measured sparsity (exact zeros among its prunable weights), pruned or not: SAC's
        twins, PPO's one (masked only by a lottery ticket's mask file)."""
        out = {}
        for name, critic in self.value_networks.items():
            spec = expected_spec(critic)
            out[name] = sparsity(actor_arrays(critic), spec, prunable_names(spec, self.cfg.pruning.prune_output_layer))
        return out

    def stats(self) -> dict:
        """The masks in force, layer by layer (hotprune.pruning.engine.masked_stats)."""
        return masked_stats(Masks(self.training.keep_masks()), self.weight_spec, self.sparsity_names)

    def kept(self, tensors: dict[str, np.ndarray], masks_version: int) -> dict[str, SparseTensor]:
        """Both-pruned mode: the snapshot's weights these masks prune, as kept values + bitmap where that
        halves their bytes (hotprune.protocol.sparse's rule). Each snapshot carries its bitmaps (1/32 of
        the dense bytes), so the compressor reads any one whole: one after dropped ones, a restarted
        compressor, one resuming a restarted trainer. The codes are made once per masks version."""
        if self.codes[0] != masks_version:
            keep = {n: m for n, m in self.training.keep_masks().items() if n in self.weight_spec}
            self.codes = (masks_version, {n: SparseCode.of_mask(m) for n, m in keep.items()
                                          if worth_sparse(m.size, int(np.count_nonzero(m)), tensors[n].dtype.itemsize)})
        return {n: code.sparse(tensors[n]) for n, code in self.codes[1].items()}

    def gradients(self) -> dict[str, torch.Tensor]:
        """The gradient statistics a snapshot carries (`grad:<name>`), on the learner's device; none without a
        criterion that needs them."""
        return {GRAD_PREFIX + n: g for n, g in self.grad_stats.tensors().items()} if self.grad_stats else {}

    def fixed_policy(self) -> dict | None:
        """Method fixed: what the compressor makes of every snapshot (the pruned policy from the start)."""
        if not self.fixed:
            return None
        return {"weight_sparsity": self.fixed.stats["weight_sparsity"], "due_epoch": 0,
                "params_kept": self.fixed.stats["params_kept"]}

    def target_sparsity(self) -> float:
        p = self.cfg.pruning
        return self.fixed.stats["weight_sparsity"] if self.fixed else p.target_sparsity if p.method != "none" else 0.0

    def prune_critics(self, epoch: int) -> float | None:
        """pruning.targets with "critic": once trained through a schedule step's epoch, the critics are
        pruned to its sparsity (the newest step's, if several are due: masks nest). A criterion that
        cannot rank yet (no gradients before learning_starts) leaves the step due for the next epoch.
        Returns the critics' measured sparsity (None when they are not pruned)."""
        if self.critics is None:
            return None
        due = [step for step in self.schedule.steps if self.critic_masks_epoch < step.epoch <= epoch]
        if due:
            try:
                report = self.critics.prune(due[-1])
            except CompressionFailed as exc:
                self.log.warning("critic_compression_failed", epoch=epoch, due_epoch=due[-1].epoch, reason=str(exc))
            else:
                self.critic_masks_epoch = due[-1].epoch
                self.log.info("critic_masks_applied", epoch=epoch, due_epoch=due[-1].epoch, **report)
                obs_dim = self.obs_dim  # a critic's inputs: the observation, then the action
                actions_cut = {name: [i - obs_dim for i in cut if i >= obs_dim]
                               for name, cut in report["inputs_cut"].items()}
                if any(actions_cut.values()):  # Q ignores those actions: the actor learns nothing through them
                    self.log.warning("critic_action_inputs_cut", epoch=epoch, due_epoch=due[-1].epoch,
                                     actions=actions_cut)
        return self.critics.sparsity()

    def state_dict(self) -> tuple[Tensors, dict]:
        tensors = {f"mask.{n}": keep for n, keep in self.training.keep_masks().items()}
        if self.critics:
            tensors |= {f"critic_mask.{n}": keep for n, keep in self.critics.keep_masks().items()}
        return tensors, {"critic_masks_epoch": self.critic_masks_epoch}

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        load_counters(self, meta, ("critic_masks_epoch",))
        self.training.apply({n[len("mask."):]: a for n, a in tensors.items() if n.startswith("mask.")})
        if self.critics:
            self.critics.restore({n[len("critic_mask."):]: a for n, a in tensors.items()
                                  if n.startswith("critic_mask.")}, self.cfg.pruning.structure)
