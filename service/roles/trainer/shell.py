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

import torch
import zmq

from hotprune.protocol.codec import Encoder
from hotprune.runs import artifacts, metrics
from hotprune.learning import checkpoints
from hotprune import eventlog
from hotprune.learning.learners import make_learner
from hotprune.learning.chunks import Batch
from hotprune.config import Config
from hotprune.envs import env_spec
from hotprune.learning.policy import actor_arrays
from hotprune.roles.process import StopFlag, run_dir_parser, start
from hotprune.pruning.schedule import Schedule, plan
from hotprune.comms.curve import SocketSecurity
from hotprune.roles.trainer.lottery import Keeper, load_initial
from hotprune.roles.trainer.collection import Collected, Collection, WorkerReports
from hotprune.roles.trainer.mask_intake import MaskIntake
from hotprune.roles.trainer.masks import TrainerMasks
from hotprune.roles.trainer.snapshots import REPUBLISH_S, DistillSample, Publisher
from hotprune.roles.trainer.state import Checkpoint, LearnerState, Normalisation, Position, load_counters

FINAL_REPORT_WAIT_S = 30.0  # after the last epoch, how long to wait for the last step's compression (+ delay_s)
SUMMARY_LAST_EPOCHS = 10


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
        self.schedule = Schedule(plan(cfg)[0])
        self.masks = TrainerMasks(cfg, self.learner, self.spec.obs_dim, self.schedule, self.log)
        self.params_total = self.masks.params_total

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        self.security = SocketSecurity(cfg, self.ctx, self.log)
        self.encoder = Encoder(cfg.run_id, "trainer")
        self.publisher = Publisher(self.ctx, self.security, ep.snapshots, self.encoder, self.log)
        self.reports = WorkerReports(self.params_total)
        self.collection = Collection(cfg, self.spec, self.params_total, self.position, self.reports,
                                     self.normalisation.rewards, self.ctx, self.security, ep, self.encoder, self.log)
        self.intake = MaskIntake(cfg, self.ctx, self.security, ep.masks, self.position, self.schedule, self.masks,
                                 self.reports, self.log)
        self.hooks = self.masks.hooks(take_up=self.intake.take_up)
        self.poller = zmq.Poller()  # what the trainer waits on while it collects
        for sock in (self.collection.socket, self.intake.socket, self.publisher.socket):
            self.poller.register(sock, zmq.POLLIN)

        self.max_lag = 0
        self.records: list[dict] = []
        self.samples_total = 0  # samples trained on
        self.samples_received = 0  # samples in the valid chunks taken: trained on, or dropped as stale
        self.samples_dropped_stale = 0
        self.distill = DistillSample(self.spec.obs_dim, cfg.pruning.distill_samples, cfg.seed) \
            if cfg.distills else None
        self.checkpoint = Checkpoint(cfg, [LearnerState(self.learner, self.generator), self.position, self.masks,
                                           self.intake, self, self.reports, self.normalisation], self.log)
        self.resumed = resume and self.restore()
        self.progress = artifacts.Progress(cfg.run_dir / artifacts.PROGRESS, self.records)
        self.tensorboard = metrics.TensorBoard(cfg.run_dir) if cfg.tensorboard else None
        self.keeper = Keeper(cfg, self.actor, self.critic, self.policy_meta(), lambda: {
            **self.learner.ticket_meta(), **self.normalisation.ticket_meta()})
        # The first liveness ping says the set-up is done: the supervisor's hang timeout runs from it,
        # and building the optimizer alone imports torch._dynamo (a second idle, several when busy).
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)

    # --- one epoch ------------------------------------------------------------------------

    def collect(self) -> Collected | None:
        """One epoch's chunks (hotprune.roles.trainer.collection) while the other sockets are served; None
        if asked to stop."""
        self.collection.begin()
        while self.collection.wants_more():
            if self.stop.is_set():
                return None
            self.heartbeat.beat(version=self.position.version, chunks=len(self.collection.collected.chunks),
                                masks_version=self.intake.masks_version)
            if self.collection.quiet_for(REPUBLISH_S):
                self.publisher.republish()
            self.collection.send_credits_when_due()
            ready = dict(self.poller.poll(100))
            if self.intake.socket in ready:
                self.intake.receive()
            if self.publisher.socket in ready or self.publisher.subscriber_waiting:
                self.publisher.answer_subscribers()
            if self.collection.socket in ready:
                self.collection.receive()
        return self.collection.collected

    def training_sparsity(self) -> float:
        return self.masks.sparsity()

    def publish(self, epoch: int, training_sparsity: float) -> None:
        """The snapshot of `epoch`: the actor's weights, with gradient statistics when a criterion ranks by
        them and the distillation sample when the compressor distils."""
        tensors = actor_arrays(self.actor) | self.masks.gradients()
        tensors |= self.distill.tensors() if self.distill else {}
        fields = {"version": self.position.version, "epoch": epoch, "training_sparsity": training_sparsity,
                  "masks_version": self.intake.applied_masks_version, "trainer_start": self.position.trainer_start}
        self.publisher.publish(fields, tensors, compression_scheduled=self.schedule.is_step(epoch),
                               after_masks=self.intake.newly_applied())

    # --- checkpoints ----------------------------------------------------------------------

    COUNTERS = ("samples_total", "samples_received", "samples_dropped_stale", "max_lag")

    def state_dict(self) -> tuple[dict, dict]:
        return {}, {"records": self.records,
                         **{k: getattr(self, k) for k in self.COUNTERS}}

    def load_state_dict(self, tensors: dict, meta: dict) -> None:
        load_counters(self, meta, self.COUNTERS)
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
                      training_sparsity=self.training_sparsity(), pruned=self.masks.training.count())
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
                self.intake.take_up()
            batch = Batch.stack(chunks)
            if self.distill:
                self.distill.draw(batch)
            losses = self.learner.update(batch, epoch, [self.hooks], self.masks.critic_hooks())
            critic_sparsity = self.masks.prune_critics(epoch)
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
                **({"critic_sparsity": critic_sparsity} if critic_sparsity is not None else {}),
                **losses,
            }
            self.records.append(record)
            self.keeper.after_epoch(epoch, batch)
            if epoch % c.checkpoint_every == 0 or epoch == epochs:
                self.checkpoint.save(epoch, self.position.version)
            self.publish(epoch, training_sparsity)
            self.progress.write(record)
            if self.tensorboard:
                layers = self.masks.stats()["layers"]
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
        training = self.masks.stats()
        pruned = self.intake.pruned_policy or {}
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
            "compression_failures": self.intake.compression_failures,
            "target_sparsity": self.masks.target_sparsity(),
            "structure": c.pruning.structure,
            "params_total": self.params_total,
            "swaps": len(lat),
            "swap_latency_ms_median": statistics.median(lat) if lat else None,
            "swap_latency_ms_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "policy_lag_mean": mean("policy_lag"),
            "policy_lag_max": self.max_lag,
            "trainer_starts": self.position.trainer_start + 1,
            "algorithm": c.algorithm,
            **({"final_critic_sparsity": self.masks.critics.sparsity()} if self.masks.critics else {}),
        }


def main(argv: list[str] | None = None) -> int:
    parser = run_dir_parser("trainer", "learner (PPO or SAC) that publishes weight snapshots")
    parser.add_argument("--resume", action="store_true", help="go on from the run's checkpoint")
    args = parser.parse_args(argv)
    cfg, stop = start(args.run_dir)
    role = Trainer(cfg, stop, args.resume)
    with eventlog.crashes_logged(role.log):
        return role.run()

