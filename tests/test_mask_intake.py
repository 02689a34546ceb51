"""The trainer's mask intake, in-process on its real sockets: masks that reach it while an update runs take
effect at the update's next minibatch, through the update hooks and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zmq

from hotprune.learning.chunks import Batch
from hotprune.learning.hooks import UpdateHooks
from hotprune.protocol.codec import Encoder
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer import Trainer
from tests.servicekit import hotprune, logged, settings


def cartpole_batch(t: int, n: int, rng: np.random.Generator) -> Batch:
    return Batch(obs=rng.normal(size=(t + 1, n, 4)).astype(np.float32), actions=rng.integers(0, 2, (t, n)),
                 logprobs=np.full((t, n), -0.69, np.float32), rewards=np.ones((t, n), np.float32),
                 terminated=rng.random((t, n)) < 0.05, truncated=np.zeros((t, n), bool),
                 final_obs=np.zeros((t, n, 4), np.float32))


class Probe(UpdateHooks):
    """After the trainer's hooks: sends the masks once the first step is done (they arrive mid-update), and
    notes at every minibatch whether they were in force for its forward pass."""

    def __init__(self, trainer: Trainer, send):
        self.trainer, self.send = trainer, send
        self.masked_at_forward: list[bool] = []

    def before_minibatch(self) -> None:
        self.masked_at_forward.append(self.trainer.masks.training.count() > 0)

    def after_step(self) -> None:
        if len(self.masked_at_forward) == 1:
            self.send()
            assert self.trainer.intake.socket.poll(10_000), "the masks never reached the trainer's socket"


def test_masks_arriving_during_an_update_are_taken_up_at_its_next_minibatch_and_ranked_unmasked(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "intake", "pruning.method=taylor", "pruning.start_epoch=1",
                                              "ppo.update_epochs=2")).stdout.strip())
    cfg = load_run_config(run_dir)
    trainer = Trainer(cfg, StopFlag())
    ctx = zmq.Context()
    try:
        trainer.position.epoch = trainer.position.version = 1  # the snapshot of epoch 1 went out as version 1
        step = trainer.schedule.steps[0]
        rng = np.random.default_rng(0)
        keep = {}
        for name, param in trainer.masks.training.params.items():
            mask = np.ones(param.numel(), bool)
            mask[rng.permutation(param.numel())[:int(step.sparsity * param.numel())]] = False
            keep[name] = mask.reshape(param.shape)
        report = {"version": 1, "epoch": 1, "due_epoch": step.epoch, "target_sparsity": step.sparsity,
                  "failed": False, "weight_sparsity": step.sparsity, "params_kept": 1000}
        push = ctx.socket(zmq.PUSH)
        push.connect(cfg.endpoints().masks)
        probe = Probe(trainer, lambda: push.send_multipart(Encoder(cfg.run_id, "compressor").encode(
            "masks", report, keep)))

        trainer.learner.update(cartpole_batch(32, 16, rng), 1, [trainer.hooks, probe])

        assert probe.masked_at_forward[:2] == [False, True] and all(probe.masked_at_forward[1:])
        applied = logged(run_dir, "trainer", "masks_applied")
        assert [(e["version"], e["epoch"], e["due_epoch"]) for e in applied] == [(1, 1, step.epoch)]
        params = dict(trainer.actor.named_parameters())
        grads = trainer.masks.grad_stats.mean()  # a taylor criterion ranks by them
        for name, kept in keep.items():
            assert (params[name][torch.from_numpy(~kept)] == 0).all()  # exactly zero after every step since
            assert (grads[name][~kept] > 0).any()  # the statistics saw the pruned weights' own gradients
        assert trainer.intake.applied_masks_version == 1 and trainer.intake.newly_applied()
    finally:
        ctx.destroy(linger=0)
        trainer.ctx.destroy(linger=0)
