"""The trainer: the learning algorithm's shell, a weight snapshot published every epoch.

An epoch is: collect `samples_per_epoch` samples -> one update of the run's algorithm -> publish the
snapshot -> log the `epoch` line. The algorithm (`algorithm`: hotprune.learning.ppo or
hotprune.learning.sac, a `Learner` each) is a plain module that knows nothing of sockets, snapshots or
masks; this shell owns those, and reaches into its update through the update hooks. SAC keeps its replay
buffer in the learner, here: the workers send the same trajectory chunks as for PPO.

In both-pruned mode, masks that have arrived are applied after collecting and before every minibatch
(never waited for during training; after the last epoch the trainer waits for the compressor's report
on the last scheduled step, so the run ends at its planned sparsity). In async mode a chunk at most
`max_policy_lag` versions old is used and older ones are dropped (`dropped_stale`): PPO's behaviour
log-probs correct for that staleness; SAC is off-policy and needs no correction, and keeps the bound
only for what it guards against, a stalled compressor whose workers run one old policy on and on. In
sync mode only chunks of the newest version, a share from every worker. Either way the workers'
chunks are flow-controlled: the trainer publishes on `credits` how many chunks it has taken from
each worker process, and a worker keeps at most its share of an epoch in flight, so the pipes never
buffer more than about one epoch.

It checkpoints (hotprune.learning.checkpoints) at epoch 0, every `checkpoint_every` epochs and at the end,
before publishing that epoch's snapshot. With `--resume` it goes on from its checkpoint: it redoes the
epochs after it, and its versions start above any its lost epochs could have published, so workers
never swap backwards; the snapshot's `trainer_start` tells the compressor a new trainer took over.

Run it: `hotprune trainer --run-dir runs/<run_id> [--resume]` or `python -m hotprune.roles.trainer ...`
(hotprune.roles.trainer.__main__).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import torch
import zmq

from hotprune.protocol.codec import GRAD_PREFIX, Encoder, Message, MessageRejected, check_tensors
from hotprune.runs import artifacts, metrics, tickets
from hotprune.learning import checkpoints
from hotprune import eventlog
from hotprune.learning.learners import make_learner
from hotprune.learning.chunks import Batch
from hotprune.config import Config
from hotprune.learning.critic_masks import CriticMasks
from hotprune.envs import env_spec
from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.policy import actor_arrays, expected_spec
from hotprune.roles.process import StopFlag, receive, run_dir_parser, socket, start
from hotprune.pruning.engine import CompressionFailed, Masks, masked_stats, prunable_names, pruner_for, sparsity
from hotprune.pruning.schedule import Schedule, plan
from hotprune.learning.training_masks import TrainingMasks
from hotprune.comms.curve import SocketSecurity
from hotprune.learning.hooks import UpdateHooks
from hotprune.roles.trainer.lottery import Keeper, load_initial
from hotprune.roles.trainer.collection import Collected, Collection, WorkerReports
from hotprune.roles.trainer.snapshots import REPUBLISH_S, DistillSample, Publisher
from hotprune.roles.trainer.state import Checkpoint, LearnerState, Normalisation, Position, load_counters

FINAL_REPORT_WAIT_S = 30.0  # after the last epoch, how long to wait for the last step's compression (+ delay_s)
SUMMARY_LAST_EPOCHS = 10


class MaskIntake(UpdateHooks):
    """Both-pruned mode: masks that have arrived are taken up before every minibatch."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def before_minibatch(self) -> None:
        self.trainer.take_up_masks()


class Trainer:
    def __init__(self, cfg: Config, stop: StopFlag, resume: bool = False):
        self.cfg, self.stop = cfg, stop
        if not resume and checkpoints.path(cfg.run_dir).exists():
            raise checkpoints.CheckpointError(f"{cfg.run_dir} already has a trainer checkpoint: pass --resume "
                                              "to go on from it")
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "trainer")
        self.spec = env_spec(cfg.env_id)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.learner = make_learner(cfg, self.spec, self.generator)
        self.actor = self.learner.actor
        self.critic = self.learner.ticket_critic  # PPO's critic, SAC's twins and targets: what ticket files hold
        init_meta = load_initial(cfg, self.actor, self.critic)  # init_file's weights, if it names one
        self.normalisation = Normalisation(cfg, self.spec.obs_dim, self.actor, init_meta)
        self.position = Position()
        p = cfg.pruning
        self.weight_spec = expected_spec(self.actor)
        self.params_total = sum(int(np.prod(shape)) for _, shape in self.weight_spec.values())
        self.sparsity_names = prunable_names(self.weight_spec, p.prune_output_layer)
        pruner = pruner_for(self.weight_spec, p)
        params = dict(self.actor.named_parameters()) | {f"critic.{n}": q for n, q in self.critic.named_parameters()}
        masked = pruner.mask_names() if pruner and cfg.prune_training_model else []
        self.fixed = tickets.fixed_masks(cfg)  # method fixed: pruning.mask_file's, in force from the start
        # The actor's fixed masks, and PPO's critic's (one optimizer, the same update hooks); SAC's critics
        # step on their own optimizer, with their own hooks: CriticMasks below keeps theirs.
        fixed = {} if not self.fixed or not cfg.prune_training_model else \
            {**self.fixed.actor, **({} if self.learner.critics else
                                    {f"critic.{n}": keep for n, keep in self.fixed.critic.items()})}
        self.masks = TrainingMasks({n: params[n] for n in [*masked, *fixed]}, self.learner.optimizer,
                                   regrow=p.regrow)
        grad_names = pruner.grad_names if pruner else []
        self.grad_stats = GradientStats({n: params[n] for n in grad_names}, p.num_gradient_batches) \
            if grad_names else None
        # Update hooks, in this order: take up masks, gradient statistics (unmasked), mask keeping.
        intake, keeping = ([MaskIntake(self)], [self.masks]) if cfg.prune_training_model else ([], [])
        stats = [self.grad_stats] if self.grad_stats else []
        self.hooks: list[UpdateHooks] = [*intake, *stats, *keeping]
        # pruning.targets with "critic" (SAC, both pruned): the critics' own masks, kept here alone.
        fixed_critics = self.fixed.critic if self.fixed and self.learner.critics and cfg.prune_training_model else {}
        self.critic_masks = CriticMasks(self.learner.critics, self.learner.critic_targets,
                                        self.learner.critic_optimizer, p) \
            if ("critic" in p.targets and pruner) or fixed_critics else None
        if self.fixed:
            self.masks.apply(fixed)
            critic_pruned = self.critic_masks.fix(fixed_critics) if fixed_critics else 0
            self.log.info("masks_loaded", mask_file=p.mask_file, pruned=self.masks.count() + critic_pruned,
                          weight_sparsity=self.fixed.stats["weight_sparsity"],
                          training_sparsity_verified=self.training_sparsity(),
                          **({"critic_sparsity": self.critic_masks.sparsity()} if fixed_critics else {}))
        self.critic_masks_epoch = -1  # the newest schedule step the critics were pruned for
        self.schedule = Schedule(plan(cfg)[0])
        self.steps = {s.epoch: s for s in self.schedule.steps}
        # The run ends once the compressor has reported on the last scheduled step (and, in both-pruned
        # mode, its masks are applied), so it ends at the sparsity it planned even if the compressor is slow.
        self.final_due_epoch = self.schedule.steps[-1].epoch if self.schedule.steps else -1
        self.reported_due_epoch = -1  # newest step the compressor reported on
        self.pruned_policy: dict | None = None  # the newest compression's weight_sparsity, params_kept, due_epoch
        if self.fixed:  # what the compressor makes of every snapshot
            self.pruned_policy = {"weight_sparsity": self.fixed.stats["weight_sparsity"], "due_epoch": 0,
                                  "params_kept": self.fixed.stats["params_kept"]}
        self.compression_failures = 0

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        self.security = SocketSecurity(cfg, self.ctx, self.log)
        self.encoder = Encoder(cfg.run_id, "trainer")
        self.publisher = Publisher(self.ctx, self.security, ep.snapshots, self.encoder, self.log)
        self.reports = WorkerReports(self.params_total)
        self.collection = Collection(cfg, self.spec, self.params_total, self.position, self.reports,
                                     self.normalisation.rewards, self.ctx, self.security, ep, self.encoder, self.log)
        max_frame = cfg.transport.max_frame_bytes
        self.mask_inbox = socket(self.ctx, zmq.PULL, hwm=4, max_frame=max_frame)
        self.security.bind(self.mask_inbox, ep.masks)
        self.poller = zmq.Poller()  # what the trainer waits on while it collects
        for sock in (self.collection.socket, self.mask_inbox, self.publisher.socket):
            self.poller.register(sock, zmq.POLLIN)

        self.pending_masks: Message | None = None
        self.masks_version = -1  # newest masks accepted, pending or applied
        self.applied_masks_version = -1  # newest masks applied (what a snapshot's masks_version says)
        self.after_masks = False
        self.max_lag = 0
        self.records: list[dict] = []
        self.samples_total = 0  # samples trained on
        self.samples_received = 0  # samples in the valid chunks taken: trained on, or dropped as stale
        self.samples_dropped_stale = 0
        self.distill = DistillSample(self.spec.obs_dim, cfg.pruning.distill_samples, cfg.seed) \
            if cfg.distills else None
        self.checkpoint = Checkpoint(cfg, [LearnerState(self.learner, self.generator), self.position, self,
                                           self.reports, self.normalisation], self.log)
        self.resumed = resume and self.restore()
        self.progress = artifacts.Progress(cfg.run_dir / artifacts.PROGRESS, self.records)
        self.tensorboard = metrics.TensorBoard(cfg.run_dir) if cfg.tensorboard else None
        self.keeper = Keeper(cfg, self.actor, self.critic, self.policy_meta(), lambda: {
            **self.learner.ticket_meta(), **self.normalisation.ticket_meta()})
        # The first liveness ping says the set-up is done: the supervisor's hang timeout runs from it,
        # and building the optimizer alone imports torch._dynamo (a second idle, several when busy).
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)

    # --- messages -------------------------------------------------------------------------

    def _receive_masks(self) -> None:
        """A compressor's report on one schedule step; in both-pruned mode it carries the masks."""
        msg = receive(self.mask_inbox, "masks", self.cfg, self.log)
        if msg is None:
            return
        f = msg.fields
        try:
            self._check_report(msg)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="masks", sender=msg.sender)
            return
        self.reported_due_epoch = max(self.reported_due_epoch, f["due_epoch"])
        if f["failed"]:
            self.compression_failures += 1
            return
        if self.pruned_policy is None or f["due_epoch"] >= self.pruned_policy["due_epoch"]:
            self.pruned_policy = {k: f[k] for k in ("weight_sparsity", "params_kept", "due_epoch")}
        if self.cfg.prune_training_model and f["version"] > self.masks_version:  # newest wins
            self.pending_masks, self.masks_version = msg, f["version"]

    def _check_report(self, msg: Message) -> None:
        f = msg.fields
        step = self.steps.get(f["due_epoch"])
        if step is None:
            raise MessageRejected(f"masks due_epoch {f['due_epoch']} is not a step of this run's schedule")
        newest = max(self.position.epoch, self.position.epoch_ceiling)
        if not (0 <= f["version"] <= self.position.version and step.epoch <= f["epoch"] <= newest):
            raise MessageRejected(f"masks version {f['version']} (epoch {f['epoch']}) is not one of this trainer's "
                                  f"snapshots at or after epoch {step.epoch}")
        if abs(f["target_sparsity"] - step.sparsity) > 1e-9:
            raise MessageRejected(f"masks target_sparsity {f['target_sparsity']} is not the planned {step.sparsity}")
        if not (0 <= f["weight_sparsity"] <= 1 and 0 <= f["params_kept"] <= self.params_total):
            raise MessageRejected("masks weight_sparsity or params_kept out of range")
        if f["failed"] or not self.cfg.prune_training_model:
            if msg.tensors:
                raise MessageRejected("masks tensors in a failed report or in teacher-student mode")
        else:
            check_tensors(msg.tensors, {n: ("bool", tuple(p.shape)) for n, p in self.masks.params.items()})
            self._check_mask_sparsity(msg.tensors, step.sparsity)

    def _check_mask_sparsity(self, masks: dict[str, np.ndarray], planned: float) -> None:
        """Masks may prune what the schedule step plans and no more (forged all-False masks would
        empty the policy): every tensor keeps something, and the pruned share of the items the run
        prunes (weights, or for `neuron` the hidden units, one bias entry each) is within 1% of it."""
        for name, keep in masks.items():
            if not keep.any():
                raise MessageRejected(f"masks prune all of {name}")
        ndim = 1 if self.cfg.pruning.structure == "neuron" else 2
        items = [keep for keep in masks.values() if keep.ndim == ndim]
        pruned = sum(int(np.count_nonzero(~keep)) for keep in items) / sum(keep.size for keep in items)
        if pruned > planned + 0.01:
            raise MessageRejected(f"masks prune {pruned:.4f} of the {'units' if ndim == 1 else 'weights'}, "
                                  f"more than the planned {planned}")

    # --- one epoch ------------------------------------------------------------------------

    def collect(self) -> Collected | None:
        """One epoch's chunks (hotprune.roles.trainer.collection) while the other sockets are served; None
        if asked to stop."""
        self.collection.begin()
        while self.collection.wants_more():
            if self.stop.is_set():
                return None
            self.heartbeat.beat(version=self.position.version, chunks=len(self.collection.collected.chunks),
                                masks_version=self.masks_version)
            if self.collection.quiet_for(REPUBLISH_S):
                self.publisher.republish()
            self.collection.send_credits_when_due()
            ready = dict(self.poller.poll(100))
            if self.mask_inbox in ready:
                self._receive_masks()
            if self.publisher.socket in ready or self.publisher.subscriber_waiting:
                self.publisher.answer_subscribers()
            if self.collection.socket in ready:
                self.collection.receive()
        return self.collection.collected

    def take_up_masks(self) -> None:
        """Both-pruned mode: apply the newest masks that have arrived, without waiting for any.

        Called after collecting and before every minibatch of the update, so masks take effect at
        the first optimizer step after they arrive: the compression of snapshot e runs while epoch
        e+1 trains, and epoch e+1 ends pruned.
        """
        while self.mask_inbox.poll(0):
            self._receive_masks()
        msg, self.pending_masks = self.pending_masks, None
        if msg is None:
            return
        counts = self.masks.apply(msg.tensors)
        self.after_masks = True
        self.applied_masks_version = msg.fields["version"]
        f = msg.fields
        self.log.info("masks_applied", version=f["version"], due_epoch=f["due_epoch"], epoch=self.position.epoch,
                      target_sparsity=f["target_sparsity"],
                      training_sparsity_verified=sparsity(actor_arrays(self.actor), self.weight_spec,
                                                          self.sparsity_names),
                      pruned=self.masks.count(), **counts,
                      inference_version=self.reports.inference[0], inference_sparsity=self.reports.inference[1])
        if counts["refused_revivals"]:
            self.log.warning("masks_not_nested", version=f["version"], refused_revivals=counts["refused_revivals"],
                             reason="these masks would revive pruned weights; they stay pruned (pruning.regrow=false)")

    def prune_critics(self, epoch: int) -> float | None:
        """pruning.targets with "critic": once trained through a schedule step's epoch, the critics are
        pruned to its sparsity (the newest step's, if several are due: masks nest). A criterion that
        cannot rank yet (no gradients before learning_starts) leaves the step due for the next epoch.
        Returns the critics' measured sparsity (None when they are not pruned)."""
        if self.critic_masks is None:
            return None
        due = [step for step in self.schedule.steps if self.critic_masks_epoch < step.epoch <= epoch]
        if due:
            try:
                report = self.critic_masks.prune(due[-1].sparsity)
            except CompressionFailed as exc:
                self.log.warning("critic_compression_failed", epoch=epoch, due_epoch=due[-1].epoch, reason=str(exc))
            else:
                self.critic_masks_epoch = due[-1].epoch
                self.log.info("critic_masks_applied", epoch=epoch, due_epoch=due[-1].epoch, **report)
                actions_cut = {name: [i - self.spec.obs_dim for i in cut if i >= self.spec.obs_dim]
                               for name, cut in report["inputs_cut"].items()}
                if any(actions_cut.values()):  # Q ignores those actions: the actor learns nothing through them
                    self.log.warning("critic_action_inputs_cut", epoch=epoch, due_epoch=due[-1].epoch,
                                     actions=actions_cut)
        return self.critic_masks.sparsity()

    def training_sparsity(self) -> float:
        return sparsity(actor_arrays(self.actor), self.weight_spec, self.sparsity_names)

    def publish(self, epoch: int, training_sparsity: float) -> None:
        """The snapshot of `epoch`: the actor's weights, with gradient statistics when a criterion ranks by
        them and the distillation sample when the compressor distils."""
        grads = self.grad_stats.mean() if self.grad_stats else {}
        tensors = actor_arrays(self.actor) | {GRAD_PREFIX + n: g for n, g in grads.items()}
        tensors |= self.distill.tensors() if self.distill else {}
        fields = {"version": self.position.version, "epoch": epoch, "training_sparsity": training_sparsity,
                  "masks_version": self.applied_masks_version, "trainer_start": self.position.trainer_start}
        self.publisher.publish(fields, tensors, compression_scheduled=self.schedule.is_step(epoch),
                               after_masks=self.after_masks)
        self.after_masks = False

    # --- checkpoints ----------------------------------------------------------------------

    COUNTERS = ("applied_masks_version", "masks_version", "reported_due_epoch", "pruned_policy", "compression_failures",
                "samples_total", "samples_received", "samples_dropped_stale", "max_lag", "critic_masks_epoch")

    def state_dict(self) -> tuple[dict, dict]:
        tensors = {f"mask.{n}": keep for n, keep in self.masks.keep_masks().items()}
        if self.critic_masks:
            tensors |= {f"critic_mask.{n}": keep for n, keep in self.critic_masks.keep_masks().items()}
        return tensors, {"records": self.records,
                         **{k: getattr(self, k) for k in self.COUNTERS}}

    def load_state_dict(self, tensors: dict, meta: dict) -> None:
        load_counters(self, meta, self.COUNTERS)
        self.masks.apply({n[len("mask."):]: a for n, a in tensors.items() if n.startswith("mask.")})
        if self.critic_masks:
            self.critic_masks.restore({n[len("critic_mask."):]: a for n, a in tensors.items()
                                       if n.startswith("critic_mask.")}, self.cfg.pruning.structure)
        self.records = meta["records"]

    def restore(self) -> bool:
        """Go on from the run's checkpoint; False when there is none (the trainer died before its first)."""
        if not self.checkpoint.load():
            return False
        if self.cfg.algorithm == "sac":  # the replay buffer is not checkpointed: refilled from the next epochs
            self.log.warning("replay_buffer_lost", epoch=self.position.epoch, samples_seen=self.learner.samples_seen,
                             reason="the replay buffer is not checkpointed; it refills from the next epochs")
        self.log_lost_epochs()
        checkpoint_version = self.position.version
        self.position.take_over(self.cfg.checkpoint_every)
        self.log.info("trainer_resumed", epoch=self.position.epoch, checkpoint_version=checkpoint_version,
                      version=self.position.version, trainer_start=self.position.trainer_start,
                      training_sparsity=self.training_sparsity(), pruned=self.masks.count())
        return True

    def log_lost_epochs(self) -> None:
        """The checkpoint of epoch e is written before epoch e's line is logged: a trainer killed in
        between left a checkpoint with an epoch its log lacks. Log those epochs now (`replayed`), so
        the run's history has every epoch exactly once."""
        logged = set()
        path = self.cfg.run_dir / "logs" / "trainer.jsonl"
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(event, dict) and event.get("event") == "epoch":
                logged.add(event.get("epoch"))
        for record in self.records:
            if record["epoch"] not in logged:
                self.log.info("epoch", **record, replayed=True)

    def policy_meta(self, **extra) -> dict:
        """What a policy file says about itself (hotprune.runs.artifacts)."""
        c = self.cfg
        return {"run_id": c.run_id, "env_id": c.env_id, "discrete": self.spec.discrete, "algorithm": c.algorithm,
                "hidden_sizes": c.algo.hidden_sizes, **extra}

    def run(self) -> int:
        c = self.cfg
        epochs = c.total_epochs
        if not self.resumed:
            artifacts.save(c.run_dir / artifacts.INITIAL, actor_arrays(self.actor),
                           **self.policy_meta(version=0, epoch=0))
            self.keeper.after_epoch(0, None)
        self.checkpoint.save(self.position.epoch, self.position.version)  # epoch 0, or resumed under its new version
        self.publish(self.position.epoch, self.training_sparsity())
        for epoch in range(self.position.epoch + 1, epochs + 1):
            self.position.epoch = epoch
            t0 = time.perf_counter()
            collected = self.collect()
            if collected is None:
                break
            chunks, versions, episodes = collected.chunks, collected.versions, collected.episodes
            t1 = time.perf_counter()
            if c.prune_training_model:
                self.take_up_masks()
            batch = Batch.stack(chunks)
            if self.distill:
                self.distill.draw(batch)
            losses = self.learner.update(batch, epoch, self.hooks, self.critic_masks.hooks if self.critic_masks else ())
            critic_sparsity = self.prune_critics(epoch)
            if losses["skipped_steps"]:
                self.log.warning("optimizer_steps_skipped", epoch=epoch, skipped_steps=losses["skipped_steps"],
                                 reason="non-finite gradients")
            self.normalisation.after_update(batch.obs)
            lags = [self.position.version - v for v in versions]
            self.max_lag = max(self.max_lag, *lags)
            self.position.version += 1
            t2 = time.perf_counter()
            training_sparsity = self.training_sparsity()
            self.samples_total += batch.size
            self.samples_received += collected.received
            self.samples_dropped_stale += collected.dropped_stale
            record = {
                "epoch": epoch,
                "global_step": self.samples_total,  # env samples trained on so far (CleanRL's x axis)
                "epochs": epochs,
                "reward_mean": self.reports.reward_mean(),
                "episodes": episodes,
                "samples": batch.size,
                "samples_received": collected.received,  # = samples + samples_dropped_stale
                "samples_dropped_stale": collected.dropped_stale,
                "rollout_s": t1 - t0,
                "train_s": t2 - t1,
                "epoch_s": t2 - t0,
                "samples_per_s": batch.size / (t2 - t0),
                "training_sparsity": training_sparsity,
                "inference_sparsity": self.reports.inference[1],
                "inference_version": self.reports.inference[0],
                "inference_nonzero_params": self.reports.inference[2],
                "policy_lag": statistics.fmean(lags),
                **({"critic_sparsity": critic_sparsity} if self.critic_masks else {}),
                **losses,
            }
            self.records.append(record)
            self.keeper.after_epoch(epoch, batch)
            if epoch % c.checkpoint_every == 0 or epoch == epochs:
                self.checkpoint.save(epoch, self.position.version)
            self.publish(epoch, training_sparsity)
            self.progress.write(record)
            if self.tensorboard:
                layers = masked_stats(Masks(self.masks.keep_masks()), self.weight_spec, self.sparsity_names)["layers"]
                self.tensorboard.epoch(record, {n: v["sparsity"] for n, v in layers.items()})
            self.log.info("epoch", **record)
        self.finish()
        return 0 if len(self.records) == epochs else self.stop.exit_code()

    def await_final_report(self) -> None:
        """After the last epoch: wait for the compressor's report on the last scheduled step if it is
        still on its way (a slow compressor), and in both-pruned mode take up its masks, so the run
        ends at the sparsity it planned. The only wait in training, and only once it is over."""
        wait_s = FINAL_REPORT_WAIT_S + 2 * self.cfg.pruning.delay_s
        deadline = time.monotonic() + wait_s
        if self.reported_due_epoch < self.final_due_epoch:
            self.log.info("awaiting_final_masks", due_epoch=self.final_due_epoch)
        while self.reported_due_epoch < self.final_due_epoch and not self.stop.is_set():
            if time.monotonic() > deadline:
                self.log.warning("final_masks_missing", due_epoch=self.final_due_epoch, waited_s=wait_s,
                                 reason="the compressor did not report on the last scheduled step")
                break
            self.heartbeat.beat(version=self.position.version, awaiting_due_epoch=self.final_due_epoch)
            if not self.mask_inbox.poll(int(REPUBLISH_S * 1000)):
                self.publisher.republish()  # the last snapshot may have been dropped
            self.publisher.answer_subscribers()
            while self.mask_inbox.poll(0):
                self._receive_masks()
        if self.cfg.prune_training_model:
            self.take_up_masks()

    def finish(self) -> None:
        completed = len(self.records) == self.cfg.total_epochs
        if completed:
            self.await_final_report()
        # The run's `stop` goes out when training is done, or from a trainer run by hand. A supervised
        # trainer stopped early (a signal) does not stop the others: the supervisor restarts it, or
        # stops them all itself.
        if completed or not os.environ.get(eventlog.SUPERVISED):
            self.publisher.stop_run()
        self.progress.close()
        self.keeper.finish()
        if self.tensorboard:
            self.tensorboard.close()
        if self.records:
            self.log.info("summary", **self.summary())
        self.ctx.destroy(linger=1000)  # let the stop go out

    def summary(self) -> dict:
        r, c = self.records, self.cfg

        def mean(key, rows=r):
            values = [row[key] for row in rows if row[key] is not None]
            return statistics.fmean(values) if values else None

        lat = sorted(self.reports.swap_latencies)
        training = masked_stats(Masks(self.masks.keep_masks()), self.weight_spec, self.sparsity_names)
        pruned = self.pruned_policy or {}
        return {
            "mode": c.mode,
            "prune_training_model": c.prune_training_model,
            "method": c.pruning.method,
            "epochs": len(r),
            "completed": len(r) == c.total_epochs,
            "reward_mean": mean("reward_mean"),
            "last_n": SUMMARY_LAST_EPOCHS,
            "reward_mean_last": mean("reward_mean", r[-SUMMARY_LAST_EPOCHS:]),
            "epoch_s_mean": mean("epoch_s"),
            "rollout_s_mean": mean("rollout_s"),
            "train_s_mean": mean("train_s"),
            "samples_per_s_mean": mean("samples_per_s"),
            "samples_received": self.samples_received,  # = samples_used + samples_dropped_stale
            "samples_used": self.samples_total,
            "samples_dropped_stale": self.samples_dropped_stale,
            "max_policy_lag": c.max_policy_lag if c.mode == "async" else 0,
            "final_training_sparsity": self.training_sparsity(),
            "training_layers": training["layers"],
            "training_params_kept": training["params_kept"],
            "final_inference_sparsity": r[-1]["inference_sparsity"],  # what the workers last reported running
            "inference_nonzero_params": r[-1]["inference_nonzero_params"],
            # the pruned policy the compressor last produced (what the workers run from then on)
            "pruned_sparsity": pruned.get("weight_sparsity"),
            "pruned_params_kept": pruned.get("params_kept"),
            "compression_failures": self.compression_failures,
            "target_sparsity": self.pruned_policy["weight_sparsity"] if self.fixed else
            c.pruning.target_sparsity if c.pruning.method != "none" else 0.0,
            "structure": c.pruning.structure,
            "params_total": self.params_total,
            "swaps": len(lat),
            "swap_latency_ms_median": statistics.median(lat) if lat else None,
            "swap_latency_ms_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "policy_lag_mean": mean("policy_lag"),
            "policy_lag_max": self.max_lag,
            "trainer_starts": self.position.trainer_start + 1,
            "algorithm": c.algorithm,
            **({"final_critic_sparsity": self.critic_masks.sparsity()} if self.critic_masks else {}),
        }


def main(argv: list[str] | None = None) -> int:
    parser = run_dir_parser("trainer", "learner (PPO or SAC) that publishes weight snapshots")
    parser.add_argument("--resume", action="store_true", help="go on from the run's checkpoint")
    args = parser.parse_args(argv)
    cfg, stop = start(args.run_dir)
    role = Trainer(cfg, stop, args.resume)
    with eventlog.crashes_logged(role.log):
        return role.run()

