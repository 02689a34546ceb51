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

Run it: `hotprune trainer --run-dir runs/<run_id> [--resume]` or `python -m hotprune.roles.trainer ...`.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from hotprune.protocol.codec import DISTILL_OBS, GRAD_PREFIX, Encoder, Message, MessageRejected, check_tensors, decode
from hotprune.protocol.trajectory import check_trajectory, check_trajectory_fields
from hotprune.runs import artifacts, metrics, tickets
from hotprune.learning import checkpoints
from hotprune import eventlog
from hotprune.commands import lth
from hotprune.algorithms import ALGORITHMS
from hotprune.learning.chunks import Batch
from hotprune.config import Config
from hotprune.learning.critic_masks import CriticMasks
from hotprune.learning.normalize import RewardScaler, RunningMeanStd
from hotprune.envs import EnvSource, env_spec
from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.policy import actor_arrays, expected_spec
from hotprune.roles.process import TRAJECTORY_BUFFER, StopFlag, run_dir_parser, socket, start
from hotprune.pruning.engine import CompressionFailed, Masks, masked_stats, prunable_names, pruner_for, sparsity
from hotprune.pruning.schedule import Schedule, plan
from hotprune.learning.training_masks import TrainingMasks
from hotprune.comms.curve import SocketSecurity
from hotprune.learning.hooks import UpdateHooks

REPUBLISH_S = 0.5  # with no usable chunk for this long, publish the newest snapshot again (PUB may drop)
ANSWER_EVERY_S = 0.1  # a new subscriber gets the newest snapshot at once, but not more often than this
SUBSCRIPTION_MAX_BYTES = 1024  # a subscription is a byte and a topic (ours is empty): a larger frame drops the peer
SUBSCRIPTIONS_PER_CALL = 16
CREDITS_EVERY_S = 0.2  # while collecting, the credits go out at least this often (PUB may drop one)
FINAL_REPORT_WAIT_S = 30.0  # after the last epoch, how long to wait for the last step's compression (+ delay_s)
REWARD_WINDOW = 10  # reward_mean: mean return of the last 10 finished episodes
SUMMARY_LAST_EPOCHS = 10


@dataclass
class Collected:
    """An epoch's chunks (their tensors, policy versions and finished episodes), and the samples of
    the valid chunks taken: `received` = the chunks' samples + `dropped_stale`."""

    chunks: list[dict]
    versions: list[int]
    episodes: int
    received: int
    dropped_stale: int


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
        self.spec = env_spec(EnvSource.of(cfg))
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        algorithm = importlib.import_module(f"hotprune.learning.{ALGORITHMS[cfg.algorithm].module}")
        self.learner = algorithm.Learner(self.spec, cfg, self.generator)
        self.actor = self.learner.actor
        self.critic = self.learner.ticket_critic  # PPO's critic, SAC's twins and targets: what ticket files hold
        init_meta = lth.load_initial(cfg, self.actor, self.critic)  # init_file's weights, if it names one
        # Normalisation (hotprune.learning.normalize): the observation statistics reach the actor's buffers
        # after each update, so an epoch trains on the statistics its data was collected with.
        self.obs_stats = RunningMeanStd((self.spec.obs_dim,)) if cfg.normalize_obs else None
        if self.obs_stats and "obs_count" in init_meta:  # rewound weights go on with their own statistics
            self.obs_stats.load({"mean": self.actor.obs_norm.mean.numpy().astype(np.float64),
                                 "var": self.actor.obs_norm.var.numpy().astype(np.float64),
                                 "count": np.array([init_meta["obs_count"]], np.float64)})
        self.reward_scaler = RewardScaler(cfg.num_workers, cfg.envs_per_worker, cfg.gamma) \
            if cfg.normalize_reward else None
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
        # XPUB: a compressor's subscription reaches the trainer, which answers it with its newest
        # snapshot at once (a PUB drops what it sends before a subscriber has joined; every process
        # of a run starts at once, and a restarted compressor joins late).
        self.snapshots = socket(self.ctx, zmq.XPUB, hwm=16, max_frame=SUBSCRIPTION_MAX_BYTES)
        self.snapshots.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only a topic's first
        # Small queues: workers block instead of running ahead, which bounds the policy lag.
        max_frame = cfg.transport.max_frame_bytes
        self.trajectories = socket(self.ctx, zmq.PULL, hwm=1, kernel_buffer=TRAJECTORY_BUFFER, max_frame=max_frame)
        self.mask_inbox = socket(self.ctx, zmq.PULL, hwm=4, max_frame=max_frame)
        self.credits = socket(self.ctx, zmq.PUB, hwm=16)
        self.security.bind(self.snapshots, ep.snapshots)
        self.security.bind(self.credits, ep.credits)
        self.security.bind(self.trajectories, ep.trajectories)
        self.security.bind(self.mask_inbox, ep.masks)
        self.encoder = Encoder(cfg.run_id, "trainer")

        self.version = 0  # number of updates so far; snapshot v is the policy after update v
        self.last_snapshot: list = []
        self.answered_at = -ANSWER_EVERY_S  # when a subscriber last got the newest snapshot
        self.subscriber_waiting = False  # one joined and is still to be answered
        self.pending_masks: Message | None = None
        self.masks_version = -1  # newest masks accepted, pending or applied
        self.applied_masks_version = -1  # newest masks applied (what a snapshot's masks_version says)
        self.epoch = 0
        self.after_masks = False
        self.episodes: deque[float] = deque(maxlen=REWARD_WINDOW)
        self.inference = (-1, 0.0, self.params_total)  # newest (version, sparsity, non-zero params) a worker ran
        self.swap_latencies: list[float] = []
        self.max_lag = 0
        self.records: list[dict] = []
        self.samples_total = 0  # samples trained on
        self.samples_received = 0  # samples in the valid chunks taken: trained on, or dropped as stale
        self.samples_dropped_stale = 0
        self.trainer_id = time.time_ns()  # this trainer process, for the workers' credits
        self.taken = [[0, 0] for _ in range(cfg.num_workers)]  # per worker: [its process's start, chunks taken]
        self.credits_sent_at = 0.0
        # teacher-student: observations of the last epoch, shipped for the compressor to distil on
        self.distill_obs = np.zeros((0, self.spec.obs_dim), np.float32) if cfg.distills else None
        self.obs_rng = np.random.default_rng(cfg.seed)
        self.trainer_start = 0  # how many trainers ran this run before this one (resumes)
        self.epoch_ceiling = 0  # the newest epoch any trainer of this run may have published
        self.resumed = resume and self.restore()
        self.progress = artifacts.Progress(cfg.run_dir / artifacts.PROGRESS, self.records)
        self.tensorboard = metrics.TensorBoard(cfg.run_dir) if cfg.tensorboard else None
        self.keeper = lth.Keeper(cfg, self.actor, self.critic, self.policy_meta(), lambda: {
            **self.learner.ticket_meta(), **({"obs_count": self.obs_stats.count} if self.obs_stats else {})})
        # The first liveness ping says the set-up is done: the supervisor's hang timeout runs from it,
        # and building the optimizer alone imports torch._dynamo (a second idle, several when busy).
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)

    # --- messages -------------------------------------------------------------------------

    def _receive(self, sock: zmq.Socket, kind: str) -> Message | None:
        frames = sock.recv_multipart(copy=False)
        try:
            return decode([f.buffer for f in frames], run_id=self.cfg.run_id, kinds={kind},
                          max_frame_bytes=self.cfg.transport.max_frame_bytes)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected=kind)
            return None

    def _receive_trajectory(self) -> tuple[Message | None, dict | None]:
        """(the chunk, its fields); (None, fields) for a chunk from a known worker process whose data
        was rejected: it is still credited (its worker goes on) and in sync mode serves its share;
        (None, None) when nothing about it can be trusted."""
        msg = self._receive(self.trajectories, "trajectory")
        if msg is None:
            return None, None
        f, c = msg.fields, self.cfg
        try:
            if not 0 <= f["worker_id"] < c.num_workers:
                raise MessageRejected(f"worker_id {f['worker_id']} outside [0, {c.num_workers})")
            if not 0 <= f["policy_version"] <= self.version:
                raise MessageRejected(f"policy_version {f['policy_version']} is not one this trainer published")
            check_trajectory_fields(f, c.chunk_steps, c.envs_per_worker, self.params_total)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="trajectory", sender=msg.sender)
            return None, None
        try:
            check_trajectory(msg.tensors, c.chunk_steps, c.envs_per_worker, self.spec.obs_dim,
                             self.spec.act_dim, self.spec.discrete, c.ppo.input_bound)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="trajectory", sender=msg.sender)
            known = self.count_taken(f["worker_id"], f["worker_start"], valid=False)
            return None, (f if known else None)
        self.count_taken(f["worker_id"], f["worker_start"], valid=True)
        return msg, f

    def count_taken(self, worker_id: int, worker_start: int, valid: bool) -> bool:
        """One more chunk taken from worker process `worker_start`, and the credits go out at once.
        A valid chunk from a newer process (a replacement) starts its count; a chunk a dead process
        left in the pipe credits nobody; an invalid chunk counts only for the process already known
        (a forged one cannot take a worker's credits over). True if it was credited."""
        start, count = self.taken[worker_id]
        credited = worker_start == start or (valid and worker_start > start)
        if credited:
            self.taken[worker_id] = [worker_start, count + 1 if worker_start == start else 1]
            self.send_credits()
        return credited

    def send_credits(self) -> None:
        fields = {"trainer_id": self.trainer_id, "taken": self.taken}
        self.credits.send_multipart(self.encoder.encode("credits", fields))
        self.credits_sent_at = time.monotonic()

    def _receive_masks(self) -> None:
        """A compressor's report on one schedule step; in both-pruned mode it carries the masks."""
        msg = self._receive(self.mask_inbox, "masks")
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
        if not (0 <= f["version"] <= self.version and step.epoch <= f["epoch"] <= max(self.epoch, self.epoch_ceiling)):
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
        """One epoch's trajectory chunks; None if asked to stop. Async: `samples_per_epoch` of chunks
        at most `max_policy_lag` versions old. Sync: `chunks_per_worker` chunks of the newest version
        from every worker (the workers pause after sending them, so none are thrown away)."""
        c = self.cfg
        sync = c.mode == "sync"
        got = Collected([], [], 0, 0, 0)
        current = [0] * c.num_workers  # sync: chunks of the newest version from each worker
        poller = zmq.Poller()
        poller.register(self.trajectories, zmq.POLLIN)
        poller.register(self.mask_inbox, zmq.POLLIN)
        poller.register(self.snapshots, zmq.POLLIN)
        last_usable = time.monotonic()
        def more() -> bool:
            if sync:
                return min(current) < c.chunks_per_worker
            return len(got.chunks) * c.chunk_samples < c.samples_per_epoch

        while more():
            if self.stop.is_set():
                return None
            self.heartbeat.beat(version=self.version, chunks=len(got.chunks), masks_version=self.masks_version)
            if time.monotonic() - last_usable > REPUBLISH_S:
                self.republish()
                last_usable = time.monotonic()
            if time.monotonic() - self.credits_sent_at > CREDITS_EVERY_S:
                self.send_credits()
            ready = dict(poller.poll(100))
            if self.mask_inbox in ready:
                self._receive_masks()
            if self.snapshots in ready or self.subscriber_waiting:
                self.answer_subscribers()
            if self.trajectories not in ready:
                continue
            msg, f = self._receive_trajectory()
            if msg is None:
                if sync and f is not None and f["policy_version"] == self.version:
                    current[f["worker_id"]] += 1  # its worker sent its share and paused: it counts, without data
                continue
            if self.reward_scaler:  # every chunk of the env's stream, used or not, moves the return
                msg.tensors["rewards"] = self.reward_scaler.scale(
                    f["worker_id"], f["worker_start"], msg.tensors["rewards"],
                    msg.tensors["terminated"] | msg.tensors["truncated"])
            self.episodes.extend(f["episode_returns"])
            self.swap_latencies.extend(f["swap_latencies_ms"])
            if f["policy_version"] >= self.inference[0]:
                self.inference = (f["policy_version"], f["policy_sparsity"], f["policy_nonzero_params"])
            got.received += c.chunk_samples
            lag = self.version - f["policy_version"]
            beyond_share = sync and current[f["worker_id"]] >= c.chunks_per_worker  # a restarted worker's repeat
            if lag > (0 if sync else c.max_policy_lag) or beyond_share:
                got.dropped_stale += c.chunk_samples
                continue
            last_usable = time.monotonic()
            got.episodes += len(f["episode_returns"])
            current[f["worker_id"]] += 1
            got.chunks.append(msg.tensors)
            got.versions.append(f["policy_version"])
        return got

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
        self.log.info("masks_applied", version=f["version"], due_epoch=f["due_epoch"], epoch=self.epoch,
                      target_sparsity=f["target_sparsity"],
                      training_sparsity_verified=sparsity(actor_arrays(self.actor), self.weight_spec,
                                                          self.sparsity_names),
                      pruned=self.masks.count(), **counts,
                      inference_version=self.inference[0], inference_sparsity=self.inference[1])
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
        """Publish the snapshot of `epoch` (with gradient statistics when a criterion needs them)."""
        weights = actor_arrays(self.actor)
        grads = self.grad_stats.mean() if self.grad_stats else {}
        tensors = {**weights, **{GRAD_PREFIX + n: g for n, g in grads.items()}}
        if self.distill_obs is not None:
            tensors[DISTILL_OBS] = self.distill_obs
        fields = {"version": self.version, "epoch": epoch, "training_sparsity": training_sparsity,
                  "masks_version": self.applied_masks_version, "trainer_start": self.trainer_start}
        scheduled = self.schedule.is_step(epoch)
        # Logged before sending, so the log never shows the compressor receiving it first.
        self.log.info("snapshot_published", **fields, compression_scheduled=scheduled, after_masks=self.after_masks)
        self.after_masks = False
        self.last_snapshot = self.encoder.encode("snapshot", fields, tensors)
        self.snapshots.send_multipart(self.last_snapshot, copy=False)

    # --- checkpoints ----------------------------------------------------------------------

    COUNTERS = ("epoch", "version", "trainer_start", "epoch_ceiling", "applied_masks_version", "masks_version",
                "reported_due_epoch", "pruned_policy", "compression_failures", "samples_total", "samples_received",
                "samples_dropped_stale", "max_lag", "critic_masks_epoch")

    def checkpoint(self) -> None:
        """Write the state to go on from (before this epoch's snapshot is published)."""
        c = self.cfg
        learner_tensors, learner_meta = self.learner.state()
        tensors = checkpoints.state_tensors(self.learner.modules(), self.learner.optimizers(), self.generator)
        tensors |= learner_tensors
        tensors |= {f"mask.{n}": keep for n, keep in self.masks.keep_masks().items()}
        if self.critic_masks:
            tensors |= {f"critic_mask.{n}": keep for n, keep in self.critic_masks.keep_masks().items()}
        tensors["swap_latencies_ms"] = np.asarray(self.swap_latencies, np.float64)
        for prefix, stats in self.normalisation().items():
            tensors |= {f"{prefix}.{k}": v for k, v in stats.state().items()}
        t0 = time.perf_counter()
        checkpoints.save(c.run_dir, tensors, run_id=c.run_id, env_id=c.env_id, hidden_sizes=c.hidden_sizes,
                         algorithm=c.algorithm, param_groups=checkpoints.param_groups(self.learner.optimizers()),
                         learner=learner_meta,
                         episodes=list(self.episodes), inference=list(self.inference), records=self.records,
                         **{k: getattr(self, k) for k in self.COUNTERS})
        self.log.info("checkpoint_saved", epoch=self.epoch, version=self.version,
                      duration_ms=(time.perf_counter() - t0) * 1e3)

    def restore(self) -> bool:
        """Go on from the run's checkpoint; False when there is none (the trainer died before its first)."""
        c = self.cfg
        if not checkpoints.path(c.run_dir).exists():
            self.log.warning("checkpoint_missing", reason="no checkpoint to resume from: starting at epoch 0")
            return False
        tensors, meta = checkpoints.load(c.run_dir, c.run_id, c.env_id, c.hidden_sizes)
        if meta.get("algorithm", "ppo") != c.algorithm:
            raise checkpoints.CheckpointError(f"the checkpoint is of algorithm {meta.get('algorithm', 'ppo')}, "
                                              f"not {c.algorithm}")
        checkpoints.restore(tensors, self.learner.modules(), self.learner.optimizers(), self.generator,
                            meta["param_groups"])
        self.learner.restore(tensors, meta.get("learner", {}))
        for key in self.COUNTERS:  # a counter newer than the checkpoint keeps its initial value
            setattr(self, key, meta.get(key, getattr(self, key)))
        self.masks.apply({n[len("mask."):]: a for n, a in tensors.items() if n.startswith("mask.")})
        if self.critic_masks:
            self.critic_masks.restore({n[len("critic_mask."):]: a for n, a in tensors.items()
                                       if n.startswith("critic_mask.")}, c.pruning.structure)
        if c.algorithm == "sac":  # the replay buffer is not checkpointed: refilled from the next epochs
            self.log.warning("replay_buffer_lost", epoch=self.epoch, samples_seen=self.learner.samples_seen,
                             reason="the replay buffer is not checkpointed; it refills from the next epochs")
        self.episodes.extend(meta["episodes"])
        self.inference = tuple(meta["inference"])
        self.records = meta["records"]
        self.log_lost_epochs()
        self.swap_latencies = tensors["swap_latencies_ms"].tolist()
        try:
            for prefix, stats in self.normalisation().items():
                stats.load({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        except (KeyError, ValueError) as exc:
            raise checkpoints.CheckpointError(f"checkpoint's normalisation statistics do not fit this run: {exc}") \
                from None
        # The lost epochs published at most checkpoint_every - 1 snapshots after this one (the next
        # checkpoint comes before the next publish): start above them, and accept their reports.
        k = c.checkpoint_every
        checkpoint_version = self.version
        self.version += k
        self.epoch_ceiling = max(self.epoch_ceiling, self.epoch + k - 1)
        self.trainer_start += 1
        self.log.info("trainer_resumed", epoch=self.epoch, checkpoint_version=checkpoint_version,
                      version=self.version, trainer_start=self.trainer_start,
                      training_sparsity=self.training_sparsity(), pruned=self.masks.count())
        return True

    def normalisation(self) -> dict[str, RunningMeanStd | RewardScaler]:
        """The normalisation statistics this run keeps, by checkpoint prefix."""
        kept = {"obs_stats": self.obs_stats, "reward_stats": self.reward_scaler}
        return {prefix: stats for prefix, stats in kept.items() if stats is not None}

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
                "hidden_sizes": c.hidden_sizes, **EnvSource.of(c).meta(), **extra}

    def run(self) -> int:
        c = self.cfg
        epochs = c.total_epochs
        if not self.resumed:
            artifacts.save(c.run_dir / artifacts.INITIAL, actor_arrays(self.actor),
                           **self.policy_meta(version=0, epoch=0))
            self.keeper.after_epoch(0, None)
        self.checkpoint()  # epoch 0, or the resumed state under its new version
        self.publish(self.epoch, self.training_sparsity())
        for epoch in range(self.epoch + 1, epochs + 1):
            self.epoch = epoch
            t0 = time.perf_counter()
            collected = self.collect()
            if collected is None:
                break
            chunks, versions, episodes = collected.chunks, collected.versions, collected.episodes
            t1 = time.perf_counter()
            if c.prune_training_model:
                self.take_up_masks()
            batch = Batch.stack(chunks)
            if self.distill_obs is not None:
                seen = batch.obs[:-1].reshape(-1, self.spec.obs_dim)
                rows = self.obs_rng.choice(len(seen), min(len(seen), c.pruning.distill_samples), replace=False)
                self.distill_obs = np.ascontiguousarray(seen[np.sort(rows)])
            losses = self.learner.update(batch, epoch, self.hooks, self.critic_masks.hooks if self.critic_masks else ())
            critic_sparsity = self.prune_critics(epoch)
            if losses["skipped_steps"]:
                self.log.warning("optimizer_steps_skipped", epoch=epoch, skipped_steps=losses["skipped_steps"],
                                 reason="non-finite gradients")
            if self.obs_stats:
                self.obs_stats.update(batch.obs[:-1].reshape(-1, self.spec.obs_dim))
                self.actor.obs_norm.set(self.obs_stats.mean.astype(np.float32), self.obs_stats.var.astype(np.float32))
            lags = [self.version - v for v in versions]
            self.max_lag = max(self.max_lag, *lags)
            self.version += 1
            t2 = time.perf_counter()
            training_sparsity = self.training_sparsity()
            self.samples_total += batch.size
            self.samples_received += collected.received
            self.samples_dropped_stale += collected.dropped_stale
            record = {
                "epoch": epoch,
                "global_step": self.samples_total,  # env samples trained on so far (CleanRL's x axis)
                "epochs": epochs,
                "reward_mean": statistics.fmean(self.episodes) if self.episodes else None,
                "episodes": episodes,
                "samples": batch.size,
                "samples_received": collected.received,  # = samples + samples_dropped_stale
                "samples_dropped_stale": collected.dropped_stale,
                "rollout_s": t1 - t0,
                "train_s": t2 - t1,
                "epoch_s": t2 - t0,
                "samples_per_s": batch.size / (t2 - t0),
                "training_sparsity": training_sparsity,
                "inference_sparsity": self.inference[1],
                "inference_version": self.inference[0],
                "inference_nonzero_params": self.inference[2],
                "policy_lag": statistics.fmean(lags),
                **({"critic_sparsity": critic_sparsity} if self.critic_masks else {}),
                **losses,
            }
            self.records.append(record)
            self.keeper.after_epoch(epoch, batch)
            if epoch % c.checkpoint_every == 0 or epoch == epochs:
                self.checkpoint()
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
            self.heartbeat.beat(version=self.version, awaiting_due_epoch=self.final_due_epoch)
            if not self.mask_inbox.poll(int(REPUBLISH_S * 1000)):
                self.republish()  # the last snapshot may have been dropped
            self.answer_subscribers()
            while self.mask_inbox.poll(0):
                self._receive_masks()
        if self.cfg.prune_training_model:
            self.take_up_masks()

    def republish(self) -> None:
        self.snapshots.send_multipart(self.last_snapshot, copy=False)

    def answer_subscribers(self) -> None:
        """A subscriber joined (the compressor, started or restarted): it gets the newest snapshot
        now rather than at the next epoch or REPUBLISH_S. One snapshot for however many
        subscriptions are waiting, and at most one every ANSWER_EVERY_S (a peer that subscribes in a
        loop gets no snapshot storm); unsubscriptions and anything else a peer sends are ignored."""
        for _ in range(SUBSCRIPTIONS_PER_CALL):  # bounded: a flood cannot keep the trainer here
            if not self.snapshots.poll(0):
                break
            self.subscriber_waiting |= self.snapshots.recv()[:1] == b"\x01"
        if self.subscriber_waiting and self.last_snapshot and time.monotonic() - self.answered_at >= ANSWER_EVERY_S:
            self.answered_at, self.subscriber_waiting = time.monotonic(), False
            self.republish()

    def finish(self) -> None:
        completed = len(self.records) == self.cfg.total_epochs
        if completed:
            self.await_final_report()
        # The run's `stop` goes out when training is done, or from a trainer run by hand. A supervised
        # trainer stopped early (a signal) does not stop the others: the supervisor restarts it, or
        # stops them all itself.
        if completed or not os.environ.get(eventlog.SUPERVISED):
            self.snapshots.send_multipart(self.encoder.encode("control", {"command": "stop"}))
        if completed:
            self.heartbeat.done()  # the others stop now: their clean exits are the run's normal end
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

        lat = sorted(self.swap_latencies)
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
            "trainer_starts": self.trainer_start + 1,
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


if __name__ == "__main__":
    from hotprune.roles.entry import role_main

    role_main(main, uses_torch=True)
