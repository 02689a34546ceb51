"""The trainer: the learning algorithm's shell, a weight snapshot published every epoch.

An epoch is: collect `samples_per_epoch` samples -> one update of the run's algorithm -> publish the
snapshot -> log the `epoch` line (`Trainer.run`). The algorithm (`algorithm`: hotprune.learning.ppo or
hotprune.learning.sac, a `Learner` each) is a plain module that knows nothing of sockets, snapshots or
masks; SAC keeps its replay buffer in the learner: the workers send the same trajectory chunks as for PPO.

The shell only routes (Sample Factory's LearnerWorker): each concern is a part that owns its state and its
socket, in this package:
- collection: the trajectory pipe and the workers' credits, async/sync selection, what the chunks report;
- masks: the training model's masks, gradient statistics, the critics' own masks;
- mask_intake: the compressor's reports, and its masks taken up (before every minibatch, through the
  update hooks; never waited for during training: after the last epoch the trainer waits for the report
  on the last scheduled step, so the run ends at its planned sparsity);
- snapshots: publishing, republishing, answering late subscribers, the run's stop;
- state: the run position, learner and normalisation state, and the checkpoint as the sum of the parts;
- records: the epoch lines, progress.csv, TensorBoard, the summary; lottery: what tickets need.

The learner lives on the run's `device` (hotprune.learning.device: cuda when asked or, with auto, found;
the chosen one in the `trainer_started` event). What leaves it goes through the host: the snapshot is
copied off as soon as the update's weights are final, without waiting (pinned memory on a GPU), and
waited for only right before it is published; checkpoints are written from host copies, and loaded onto
whatever device this trainer learns on, so a run checkpointed on a GPU resumes on a CPU and back.

It checkpoints (hotprune.learning.checkpoints) at epoch 0, every `checkpoint_every` epochs and at the end,
before publishing that epoch's snapshot. With `--resume` it goes on from its checkpoint: it redoes the
epochs after it, and its versions start above any its lost epochs could have published, so workers
never swap backwards; the snapshot's `trainer_start` tells the compressor a new trainer took over.

Run it: `hotprune trainer --run-dir runs/<run_id> [--resume]` or `python -m hotprune.roles.trainer ...`
(hotprune.roles.trainer.__main__).
"""

from __future__ import annotations

import os
import time

import torch
import zmq

from hotprune import eventlog
from hotprune.actor_spec import policy_metadata
from hotprune.comms.curve import SocketSecurity
from hotprune.config import Config
from hotprune.envs import EnvSource, env_spec
from hotprune.learning import checkpoints
from hotprune.learning.chunks import Batch
from hotprune.learning.device import HostCopy, describe, resolve
from hotprune.learning.hooks import UpdateHooks
from hotprune.learning.learners import make_learner
from hotprune.learning.policy import actor_arrays
from hotprune.protocol.codec import Encoder
from hotprune.pruning.schedule import Schedule, plan
from hotprune.roles.liveness import Pulse
from hotprune.roles.process import StopFlag, compressor_awaited, keep_freed_memory, role_process
from hotprune.roles.trainer.collection import Collected, Collection, WorkerReports
from hotprune.roles.trainer.lottery import Keeper, load_initial
from hotprune.roles.trainer.mask_intake import MaskIntake
from hotprune.roles.trainer.masks import TrainerMasks
from hotprune.roles.trainer.records import EpochRecords
from hotprune.roles.trainer.snapshots import REPUBLISH_S, DistillSample, Publisher
from hotprune.roles.trainer.state import Checkpoint, LearnerState, Normalisation, Position
from hotprune.runs import artifacts

FINAL_REPORT_WAIT_S = 30.0  # after the last epoch, how long to wait for the last step's compression (+ delay_s)


class StillAlive(UpdateHooks):
    """The liveness ping before every minibatch (a clock read when none is due), so an update that outlasts
    `supervisor.hang_timeout_s` (SAC's hundreds of gradient steps on a starved machine: a trainer restarted
    as hung loses its replay buffer) is work, not a hang. A hang inside an update still goes silent."""

    def __init__(self, pulse: Pulse):
        self.pulse = pulse

    def before_minibatch(self) -> None:
        self.pulse.ping()


class Trainer:
    def __init__(self, cfg: Config, stop: StopFlag, resume: bool = False):
        self.cfg, self.stop = cfg, stop
        keep_freed_memory()  # each snapshot's host copy in the pages of the last one's
        if not resume and checkpoints.path(cfg.run_dir).exists():
            raise checkpoints.CheckpointError(f"{cfg.run_dir} already has a trainer checkpoint: pass --resume "
                                              "to go on from it")
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "trainer")
        self.spec = env_spec(EnvSource.of(cfg))
        self.device = resolve(cfg.device)  # a refusal (one line) before anything is built
        torch.manual_seed(cfg.seed)  # every device's generator
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.learner = make_learner(cfg, self.spec, self.generator, self.device)
        self.log.info("trainer_started", algorithm=cfg.algorithm, device=describe(self.device),
                      device_setting=cfg.device)
        self.actor = self.learner.actor
        critic = self.learner.ticket_critic  # PPO's critic, SAC's twins and targets: what ticket files hold
        init_meta = load_initial(cfg, self.actor, critic)  # init_file's weights, if it names one
        self.normalisation = Normalisation(cfg, self.spec.obs_dim, self.actor, init_meta)
        self.position = Position()
        self.schedule = Schedule(plan(cfg)[0])
        self.masks = TrainerMasks(cfg, self.learner, self.spec.obs_dim, self.schedule, self.log)
        self.reports = WorkerReports(self.masks.params_total)

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        security = SocketSecurity(cfg, self.ctx, self.log)
        encoder = Encoder(cfg.run_id, "trainer")
        self.publisher = Publisher(self.ctx, security, ep.snapshots, encoder, self.log)
        self.collection = Collection(cfg, self.spec, self.masks.params_total, self.position, self.reports,
                                     self.normalisation.rewards, self.ctx, security, ep, encoder, self.log)
        self.intake = MaskIntake(cfg, self.ctx, security, ep.masks, self.position, self.schedule, self.masks,
                                 self.reports, self.log)
        self.hooks = self.masks.hooks(take_up=self.intake.take_up)
        self.poller = zmq.Poller()  # what the trainer waits on while it collects
        for sock in (self.collection.socket, self.intake.socket, self.publisher.socket):
            self.poller.register(sock, zmq.POLLIN)
        self.distill = DistillSample(self.spec.obs_dim, cfg.pruning.distill_samples, cfg.seed) \
            if cfg.distills else None

        self.records = EpochRecords(cfg, self.reports, self.log)
        self.checkpoint = Checkpoint(cfg, [LearnerState(self.learner, self.generator), self.position, self.masks,
                                           self.intake, self.records, self.reports, self.normalisation], self.log)
        self.resumed = resume and self.restore()
        self.records.open()
        self.keeper = Keeper(cfg, self.actor, critic, self.policy_meta(), lambda: {
            **self.learner.ticket_meta(), **self.normalisation.ticket_meta()})
        # The first liveness ping says the set-up is done: the supervisor's hang timeout runs from it,
        # and building the optimizer alone imports torch._dynamo (a second idle, several when busy).
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)
        self.alive = StillAlive(self.heartbeat.pulse)
        self.compressor = compressor_awaited(self.log, cfg)  # until its first subscription

    def run(self) -> int:
        c, epochs = self.cfg, self.cfg.total_epochs
        if not self.resumed:
            artifacts.save(c.run_dir / artifacts.INITIAL, actor_arrays(self.actor),
                           **self.policy_meta(version=0, epoch=0))
            self.keeper.after_epoch(0, None)
        self.checkpoint.save(self.position.epoch, self.position.version)  # epoch 0, or resumed under its new version
        self.publish(self.position.epoch, self.masks.sparsity())
        for epoch in range(self.position.epoch + 1, epochs + 1):
            self.position.epoch = epoch
            t0 = time.perf_counter()
            collected = self.collect()
            if collected is None:
                break
            t1 = time.perf_counter()
            if c.prune_training_model:
                self.intake.take_up()
            batch = Batch.stack(collected.chunks)
            if self.distill:
                self.distill.draw(batch)
            losses = self.learner.update(batch, epoch, [self.hooks, self.alive], self.masks.critic_hooks())
            critic_sparsity = self.masks.prune_critics(epoch)
            if losses["skipped_steps"]:
                self.log.warning("optimizer_steps_skipped", epoch=epoch, skipped_steps=losses["skipped_steps"],
                                 reason="non-finite gradients")
            self.normalisation.after_update(batch.obs)
            snapshot = self.snapshot()  # the update's weights are final: their copy to the host starts
            lags = [self.position.version - v for v in collected.versions]
            self.position.version += 1
            t2 = time.perf_counter()
            training_sparsity = self.masks.sparsity()
            record = self.records.add(epoch, collected, batch.size, lags, (t0, t1, t2), training_sparsity,
                                      critic_sparsity, losses)
            self.keeper.after_epoch(epoch, batch)
            if epoch % c.checkpoint_every == 0 or epoch == epochs:
                self.checkpoint.save(epoch, self.position.version)
            self.publish(epoch, training_sparsity, snapshot)
            self.records.write(record, self.masks.stats()["layers"] if self.records.trackers else {})
        self.finish()
        return 0 if self.records.completed else self.stop.exit_code()

    def collect(self) -> Collected | None:
        """One epoch's chunks (hotprune.roles.trainer.collection) while the other sockets are served (in
        sync mode, both pruned, and the compressor's report on the snapshot the workers ran); None if
        asked to stop."""
        self.collection.begin()
        while self.collection.wants_more() or self.intake.report_awaited():
            if self.stop.is_set():
                return None
            self.heartbeat.beat(version=self.position.version, chunks=len(self.collection.collected.chunks),
                                masks_version=self.intake.masks_version)
            self.compressor.check()
            if self.collection.quiet_for(REPUBLISH_S):
                self.publisher.republish()
            self.collection.send_credits_when_due()
            ready = dict(self.poller.poll(100))
            if self.intake.socket in ready:
                self.intake.receive()
            if (self.publisher.socket in ready or self.publisher.subscriber_waiting) \
                    and self.publisher.answer_subscribers():
                self.compressor.arrived()
            if self.collection.socket in ready:
                self.collection.receive()
        return self.collection.finish()

    def snapshot(self) -> HostCopy:
        """The snapshot's tensors on their way to the host (`publish` waits for them): the actor's weights,
        with gradient statistics when a criterion ranks by them."""
        return HostCopy(self.actor.state_dict() | self.masks.gradients())

    def publish(self, epoch: int, training_sparsity: float, snapshot: HostCopy | None = None) -> None:
        """The snapshot of `epoch`: `snapshot`'s tensors (None: copied now), and the distillation sample when
        the compressor distils."""
        tensors = (snapshot or self.snapshot()).arrays() | (self.distill.tensors() if self.distill else {})
        tensors |= self.masks.kept(tensors, self.intake.applied_masks_version)  # masked weights: kept values + bitmaps
        fields = {"version": self.position.version, "epoch": epoch, "training_sparsity": training_sparsity,
                  "masks_version": self.intake.applied_masks_version, "trainer_start": self.position.trainer_start}
        self.publisher.publish(fields, tensors, compression_scheduled=self.schedule.is_step(epoch),
                               after_masks=self.intake.newly_applied())

    def restore(self) -> bool:
        """Go on from the run's checkpoint; False when there is none (the trainer died before its first)."""
        if not self.checkpoint.load():
            return False
        if self.cfg.algorithm == "sac":  # the replay buffer is not checkpointed: refilled from the next epochs
            self.log.warning("replay_buffer_lost", epoch=self.position.epoch, samples_seen=self.learner.samples_seen,
                             reason="the replay buffer is not checkpointed; it refills from the next epochs")
        self.records.log_lost_epochs()
        checkpoint_version = self.position.version
        self.position.take_over(self.cfg.checkpoint_every)
        self.log.info("trainer_resumed", epoch=self.position.epoch, checkpoint_version=checkpoint_version,
                      version=self.position.version, trainer_start=self.position.trainer_start,
                      training_sparsity=self.masks.sparsity(), pruned=self.masks.training.count())
        return True

    def await_final_report(self) -> None:
        """After the last epoch: wait for the compressor's report on the last scheduled step if it is
        still on its way (a slow compressor), and in both-pruned mode take up its masks, so the run
        ends at the sparsity it planned. The only wait in training, and only once it is over."""
        wait_s = FINAL_REPORT_WAIT_S + 2 * self.cfg.pruning.delay_s
        deadline = time.monotonic() + wait_s
        due_epoch = self.intake.final_due_epoch
        if not self.intake.all_reported():
            self.log.info("awaiting_final_masks", due_epoch=due_epoch)
        while not self.intake.all_reported() and not self.stop.is_set():
            if time.monotonic() > deadline:
                self.log.warning("final_masks_missing", due_epoch=due_epoch, waited_s=wait_s,
                                 reason="the compressor did not report on the last scheduled step")
                break
            self.heartbeat.beat(version=self.position.version, awaiting_due_epoch=due_epoch)
            if not self.intake.socket.poll(int(REPUBLISH_S * 1000)):
                self.publisher.republish()  # the last snapshot may have been dropped
            self.publisher.answer_subscribers()
            self.intake.drain()
        if self.cfg.prune_training_model:
            self.intake.take_up()

    def finish(self) -> None:
        if self.records.completed:
            self.await_final_report()
        # The run's `stop` goes out when training is done, or from a trainer run by hand. A supervised
        # trainer stopped early (a signal) does not stop the others: the supervisor restarts it, or
        # stops them all itself.
        if self.records.completed or not os.environ.get(eventlog.SUPERVISED):
            self.publisher.stop_run()
        if self.records.completed:
            self.heartbeat.done()  # the others stop now: their clean exits are the run's normal end
        self.records.close()
        self.keeper.finish()
        if self.records.rows:
            self.log.info("summary", **self.records.summary(
                training_sparsity=self.masks.sparsity(), training=self.masks.stats(),
                pruned_policy=self.intake.pruned_policy, compression_failures=self.intake.compression_failures,
                target_sparsity=self.masks.target_sparsity(), params_total=self.masks.params_total,
                trainer_starts=self.position.trainer_start + 1,
                critic_sparsity=self.masks.critics.sparsity() if self.masks.critics else None,
                critics_sparsity=self.masks.critics_sparsity()))
        self.ctx.destroy(linger=1000)  # let the stop go out

    def policy_meta(self, **extra) -> dict:
        """What a policy file says about itself (hotprune.runs.artifacts)."""
        return {**artifacts.run_meta(self.cfg), **policy_metadata(self.spec, self.cfg), **extra}


main = role_process("trainer", "learner (PPO or SAC) that publishes weight snapshots",
                    lambda cfg, stop, args: Trainer(cfg, stop, args.resume),
                    (("--resume",), {"action": "store_true", "help": "go on from the run's checkpoint"}))
