"""The compressor's reports, taken in by the trainer: one per schedule step, with the masks in both-pruned mode.

A report is checked against the run's schedule and this trainer's snapshots (and a resumed trainer's lost
ones: `Position.epoch_ceiling`), and its masks against the model and the step's planned sparsity (forged
all-False masks would empty the policy); anything else is `message_rejected` and changes nothing. Accepted
reports are counted (the newest step reported on, failures, the newest pruned policy); their masks wait,
newest wins, until `take_up` applies them to the training model's masks.

`take_up` never waits: it takes what has arrived. The trainer calls it after collecting and, through the
update hooks (hotprune.learning.training_masks.MaskedUpdate), before every minibatch, so masks take effect
at the first optimizer step after they arrive: the compression of snapshot e runs while epoch e+1 trains,
and epoch e+1 ends pruned. The only wait is after the last epoch, for the report on the last scheduled step
(`all_reported`), so the run ends at the sparsity it planned even with a slow compressor.
"""

from __future__ import annotations

import numpy as np
import zmq

from hotprune.comms.curve import SocketSecurity
from hotprune.config import Config
from hotprune.protocol.codec import Message, MessageRejected, check_tensors
from hotprune.pruning.schedule import Schedule
from hotprune.roles.process import receive, socket
from hotprune.roles.trainer.collection import WorkerReports
from hotprune.roles.trainer.masks import TrainerMasks
from hotprune.roles.trainer.state import Position, Tensors, load_counters


class MaskIntake:
    COUNTERS = ("applied_masks_version", "masks_version", "reported_due_epoch", "pruned_policy", "compression_failures")

    def __init__(self, cfg: Config, ctx: zmq.Context, security: SocketSecurity, endpoint: str, position: Position,
                 schedule: Schedule, masks: TrainerMasks, reports: WorkerReports, log):
        self.cfg, self.position, self.masks, self.reports, self.log = cfg, position, masks, reports, log
        self.socket = socket(ctx, zmq.PULL, hwm=4, max_frame=cfg.transport.max_frame_bytes)
        security.bind(self.socket, endpoint)
        self.steps = {s.epoch: s for s in schedule.steps}
        self.final_due_epoch = schedule.steps[-1].epoch if schedule.steps else -1
        self.reported_due_epoch = -1  # newest step the compressor reported on
        self.reported_version = -1  # newest snapshot it reported on (not checkpointed: a resumed compressor
        # reports again, on its newest step or on the resumed trainer's first snapshot)
        self.pruned_policy = masks.fixed_policy()  # the newest compression's weight_sparsity, params_kept, due_epoch
        self.compression_failures = 0
        self.pending: Message | None = None
        self.masks_version = -1  # newest masks accepted, pending or applied
        self.applied_masks_version = -1  # newest masks applied (what a snapshot's masks_version says)
        self.applied_since_published = False

    def all_reported(self) -> bool:
        """The compressor reported on the last scheduled step (there is none without a schedule)."""
        return self.reported_due_epoch >= self.final_due_epoch

    def report_awaited(self) -> bool:
        """Sync mode, both pruned: the compressor's report on the snapshot the workers just ran has not come,
        though a step was due at its epoch (a failed step stays due, and the compressor tries it again on
        every snapshot until it succeeds). The compressor sent the report right after writing the store the
        workers swapped from, so waiting costs nothing, and the update starts from the same masks in every
        run instead of from whatever had arrived (docs/reproducibility.md)."""
        if self.cfg.mode != "sync" or not self.cfg.prune_training_model:
            return False
        ran = self.position.epoch - 1  # the epoch of the snapshot whose version the workers ran
        succeeded = self.pruned_policy["due_epoch"] if self.pruned_policy else -1
        due = any(succeeded < epoch <= ran for epoch in self.steps)
        return due and self.reported_version < self.position.version

    def newly_applied(self) -> bool:
        """Whether masks were applied since the last time this was asked (each snapshot asks once)."""
        applied, self.applied_since_published = self.applied_since_published, False
        return applied

    def receive(self) -> None:
        """The next report on the socket."""
        msg = receive(self.socket, "masks", self.cfg, self.log)
        if msg is None:
            return
        f = msg.fields
        try:
            self._check(msg)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="masks", sender=msg.sender)
            return
        self.reported_due_epoch = max(self.reported_due_epoch, f["due_epoch"])
        self.reported_version = max(self.reported_version, f["version"])
        if f["failed"]:
            self.compression_failures += 1
            return
        if self.pruned_policy is None or f["due_epoch"] >= self.pruned_policy["due_epoch"]:
            self.pruned_policy = {k: f[k] for k in ("weight_sparsity", "params_kept", "due_epoch")}
        if self.cfg.prune_training_model and f["version"] > self.masks_version:  # newest wins
            self.pending, self.masks_version = msg, f["version"]

    def drain(self) -> None:
        """Every report waiting on the socket, without waiting for any."""
        while self.socket.poll(0):
            self.receive()

    def take_up(self) -> None:
        """Both-pruned mode: apply the newest masks that have arrived, without waiting for any."""
        self.drain()
        msg, self.pending = self.pending, None
        if msg is None:
            return
        f = msg.fields
        training = self.masks.training
        counts = training.apply(msg.tensors)
        self.applied_since_published = True
        self.applied_masks_version = f["version"]
        self.log.info("masks_applied", version=f["version"], due_epoch=f["due_epoch"], epoch=self.position.epoch,
                      target_sparsity=f["target_sparsity"], structure=self.cfg.pruning.structure,
                      training_sparsity_verified=self.masks.sparsity(), masks_sparsity=self.masks.masks_sparsity(),
                      pruned=training.count(), **counts, inference_version=self.reports.inference[0],
                      inference_sparsity=self.reports.inference[1])
        if counts["refused_revivals"]:
            self.log.warning("masks_not_nested", version=f["version"], refused_revivals=counts["refused_revivals"],
                             reason="these masks would revive pruned weights; they stay pruned (pruning.regrow=false)")

    def _check(self, msg: Message) -> None:
        f, position = msg.fields, self.position
        step = self.steps.get(f["due_epoch"])
        if step is None:
            raise MessageRejected(f"masks due_epoch {f['due_epoch']} is not a step of this run's schedule")
        newest = max(position.epoch, position.epoch_ceiling)
        if not (0 <= f["version"] <= position.version and step.epoch <= f["epoch"] <= newest):
            raise MessageRejected(f"masks version {f['version']} (epoch {f['epoch']}) is not one of this trainer's "
                                  f"snapshots at or after epoch {step.epoch}")
        if abs(f["target_sparsity"] - step.sparsity) > 1e-9:
            raise MessageRejected(f"masks target_sparsity {f['target_sparsity']} is not the planned {step.sparsity}")
        if not (0 <= f["weight_sparsity"] <= 1 and 0 <= f["params_kept"] <= self.masks.params_total):
            raise MessageRejected("masks weight_sparsity or params_kept out of range")
        if f["failed"] or not self.cfg.prune_training_model:
            if msg.tensors:
                raise MessageRejected("masks tensors in a failed report or in teacher-student mode")
        else:
            check_tensors(msg.tensors, {n: ("bool", tuple(p.shape)) for n, p in self.masks.training.params.items()})
            self._check_sparsity(msg.tensors, step.sparsity)

    def _check_sparsity(self, masks: dict[str, np.ndarray], planned: float) -> None:
        """Masks may prune what the schedule step plans and no more: every tensor keeps something, and the
        pruned share of the items the run prunes (weights, or for `neuron` and `channel` the hidden
        units and channels, one bias entry each) is within 1% of it."""
        for name, keep in masks.items():
            if not keep.any():
                raise MessageRejected(f"masks prune all of {name}")
        by_unit = self.cfg.pruning.structure != "weight"
        items = [keep for keep in masks.values() if (keep.ndim == 1) == by_unit]
        pruned = sum(int(np.count_nonzero(~keep)) for keep in items) / sum(keep.size for keep in items)
        if pruned > planned + 0.01:
            raise MessageRejected(f"masks prune {pruned:.4f} of the {'units' if by_unit else 'weights'}, "
                                  f"more than the planned {planned}")

    def state_dict(self) -> tuple[Tensors, dict]:
        return {}, {k: getattr(self, k) for k in self.COUNTERS}

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        load_counters(self, meta, self.COUNTERS)
