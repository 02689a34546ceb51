"""The compressor: prunes the trainer's newest snapshot and publishes it to the workers.

For each snapshot (older queued ones are dropped, each logged; in both-pruned mode its masked weights
come as kept values + bitmaps, rebuilt here): when a compression step is due
(hotprune.pruning.schedule: due from its epoch on, never skipped), compute new masks, nested in the current
ones (hotprune.pruning.engine); otherwise keep the current ones. Apply them, write the result into the weight
store (masked weights as kept values + bitmap where that halves their bytes: `stored`), announce
`weights_ready`, and report each compression to the trainer on the masks channel (with the masks
themselves in both-pruned mode; `failed` when the criterion could not rank). Before the first
compression, weights pass through unchanged: every policy update reaches the workers.

A restarted compressor (`--resume`) takes up the masks of the run's last compression from
masks.safetensors (written after every compression), counts the steps up to its due epoch as done, and
sends that report again: the trainer may have lost it. It also sends its newest report again when a
resumed trainer takes over (a snapshot with a higher `trainer_start`), whose epochs then restart from
its checkpoint: steps already served stay served, and masks stay nested.

Each version also goes, whole, to the relays that subscribe to `versions` (hotprune.roles.relay: a
node's own store, fed over the network); a relay that subscribes (it has just started) is sent the
newest version at once.

Run it: `hotprune compressor --run-dir runs/<run_id> [--resume]` or `python -m hotprune.roles.compressor ...`.
Run by hand, it creates the weight store if the supervisor has not, and then owns and unlinks it.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from hotprune.protocol.codec import DISTILL_OBS, GRAD_PREFIX, Encoder, Message, MessageRejected, check_tensors
from hotprune.runs import artifacts, tickets
from hotprune import eventlog
from hotprune.actor_spec import OBS_NORM, actor_spec, policy_metadata
from hotprune.config import Config
from hotprune.envs import EnvSource, env_spec
from hotprune.roles.process import StopFlag, keep_freed_memory, receive, role_process, send_when_ready, socket
from hotprune.pruning.dynamic import pruner_for
from hotprune.pruning.engine import CompressionFailed, Masks, apply_masks, churn, masked, masked_stats, \
    masks_sparsity, prunable_names, sparsity
from hotprune.pruning.schedule import Schedule, Step, plan
from hotprune.comms.curve import SocketSecurity
from hotprune.comms.publisher import VERSIONS_QUEUE, StorePublisher, VersionFeed
from hotprune.protocol.sparse import Codes, SparseCode, SparseTensor, Version, densified, worth_sparse
from hotprune.protocol.store_layout import dense_payload_size, segment_name
from hotprune.runs.rundir import store_slot_size
from hotprune.comms.weight_store import WeightStore

MASKS_KEPT = 8  # recent masks by version, to check that a snapshot's pruned weights are still zero


class Compressor:
    def __init__(self, cfg: Config, stop: StopFlag, resume: bool = False):
        self.cfg, self.stop = cfg, stop
        keep_freed_memory()  # each snapshot's frames in the pages of the last one's
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "compressor")
        spec = self.spec = env_spec(EnvSource.of(cfg))
        network = cfg.network("actor", spec)
        self.weight_spec = actor_spec(spec, network.hidden_sizes, cfg.normalize_obs, cfg.algorithm, network.conv)
        p = cfg.pruning
        self.pruner = pruner_for(self.weight_spec, p, seed=cfg.seed)
        self.sparsity_names = prunable_names(self.weight_spec, p.prune_output_layer)
        # what a snapshot may carry as kept values + bitmap: the network's parameters, never the
        # normalisation statistics (checked as numbers below, and no mask ever covers them)
        self.maskable = [n for n in self.weight_spec if n not in OBS_NORM]
        grads = self.pruner.grad_names if self.pruner else []
        self.snapshot_spec = {**self.weight_spec, **{GRAD_PREFIX + n: self.weight_spec[n] for n in grads}}
        self.obs_dim = spec.obs_dim
        self.distiller = None
        if cfg.distills:  # teacher-student: the one use of torch in the compressor, imported only then
            from hotprune.learning.distill import Distiller

            self.distiller = Distiller(spec.discrete, p.distill_steps, p.distill_lr, cfg.algorithm,
                                       (spec.action_low, spec.action_high), network.activation, network.conv,
                                       cfg.device)
        # The first liveness ping (the hang timeout runs from it) once the slow set-up is done:
        # the distiller's optimizer warm-up imports torch._dynamo.
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)
        steps, warnings = plan(cfg)
        self.schedule = Schedule(steps)
        self.log.info("pruning_planned", method=p.method, structure=p.structure, scope=p.scope,
                      distribution=p.distribution, regrow=p.regrows, schedule=p.schedule,
                      steps=[[s.epoch, s.sparsity] for s in steps], drop_fractions=[s.fraction for s in steps],
                      warnings=warnings, distill_device=self.distiller.device.type if self.distiller else None)
        for warning in warnings:
            self.log.warning("schedule_degenerate", reason=warning)
        self.store = WeightStore.attach_or_create(segment_name(cfg.run_dir), store_slot_size(cfg))

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        self.security = SocketSecurity(cfg, self.ctx, self.log)
        self.snapshots = socket(self.ctx, zmq.SUB, hwm=16, max_frame=cfg.transport.max_frame_bytes)
        self.snapshots.subscribe(b"")
        self.security.connect(self.snapshots, ep.snapshots)
        self.masks_out = socket(self.ctx, zmq.PUSH, hwm=4)
        self.security.connect(self.masks_out, ep.masks)
        notify = socket(self.ctx, zmq.PUB, hwm=16)
        self.security.bind(notify, ep.weights)
        self.encoder = Encoder(cfg.run_id, "compressor")
        self.publisher = StorePublisher(self.store, notify, self.encoder)
        # XPUB, not PUB: each relay's subscription reaches us and is answered with the newest version;
        # a relay that (re)starts never waits for the next epoch.
        relays = socket(self.ctx, zmq.XPUB, hwm=VERSIONS_QUEUE)
        self.relays = VersionFeed(relays, self.encoder)  # verbose before it binds
        self.security.bind(relays, ep.versions)

        fixed = tickets.fixed_masks(cfg)  # method fixed: the file's masks, on every snapshot from the first
        self.masks: Masks | None = fixed.masks if fixed else None
        if fixed:
            self.log.info("masks_loaded", mask_file=p.mask_file, weight_sparsity=fixed.stats["weight_sparsity"],
                          params_kept=fixed.stats["params_kept"], params_total=fixed.stats["params_total"])
        self.masks_source: tuple[int, int, Step] | None = None  # (version, epoch, step) the masks were computed for
        self.history: dict[int, Masks] = {}  # masks by the version they were computed on
        self.last_version = self.last_epoch = -1
        self.last_written: tuple[Version, dict] | None = None  # the store's newest version, as stored
        self.codes: tuple[Masks | None, dict[str, SparseCode]] = (None, {})  # masks -> the sparse ones' codes
        self.figures: tuple[Masks | None, float, dict] | None = None  # masks -> what they prune (`mask_figures`)
        self.snapshot_codes = Codes()  # the masks of the trainer's sparse snapshot weights
        self.last_report: tuple[dict, dict[str, np.ndarray]] | None = None  # (fields, tensors) last sent
        # The newest trainer_start seen in a snapshot; a resumed compressor takes the first it sees.
        self.trainer_start: int | None = None if resume else 0
        self.dropped = 0  # snapshots skipped for a newer one
        self.stopping = False
        if resume:
            self.recover()

    def recover(self) -> None:
        """A restarted compressor: the masks in force are those of the run's last compression."""
        path = self.cfg.run_dir / artifacts.MASKS
        if self.cfg.pruning.method == "fixed":
            self.log.info("compressor_resumed", masks=True, reason="the fixed masks of pruning.mask_file")
            return
        if not path.exists():
            self.log.info("compressor_resumed", masks=False, reason="no compression yet")
            return
        tensors, meta = artifacts.load_kept(path, self.cfg)  # this run's, and not corrupt
        steps = {s.epoch: s for s in self.schedule.steps}
        try:
            if meta.get("masks_due_epoch") not in steps:
                raise MessageRejected("written under another schedule")
            masks = Masks.from_elements(tensors, self.cfg.pruning.structure)
            check_tensors(masks.elements, {n: ("bool", self.weight_spec[n][1]) for n in self.pruner.mask_names()})
        except MessageRejected as exc:
            raise artifacts.ArtifactError(f"{path} cannot be resumed from: {exc.reason}") from None
        step = steps[meta["masks_due_epoch"]]
        self.masks, self.masks_source = masks, (meta["masks_version"], meta["masks_epoch"], step)
        self.history[meta["masks_version"]] = masks  # the trainer's snapshots say they apply these: checked too
        self.schedule.done(step)
        stats = masked_stats(masks, self.weight_spec, self.sparsity_names)
        fields = {"version": meta["masks_version"], "epoch": meta["masks_epoch"], "due_epoch": step.epoch,
                  "target_sparsity": step.sparsity, "failed": False,
                  "weight_sparsity": masks_sparsity(masks, self.weight_spec, self.sparsity_names),
                  "params_kept": stats["params_kept"]}
        self.last_report = (fields, masks.elements if self.cfg.prune_training_model else {})
        self.log.info("compressor_resumed", masks=True, version=fields["version"], due_epoch=step.epoch,
                      pruned=masks.pruned())
        self.send_report(*self.last_report, again=True)

    def _newest(self) -> Message | None:
        """Drain the socket: the newest valid snapshot (older ones are dropped), acting on control."""
        newest, dropped = None, []
        while self.snapshots.poll(0 if newest else 100):
            msg = receive(self.snapshots, "snapshot", self.cfg, self.log, check=self._check_snapshot, control=True)
            if msg is None:
                continue
            if msg.kind == "control":
                self.stopping = self.stopping or msg.fields["command"] == "stop"
                continue
            if msg.fields["version"] <= max(self.last_version, newest.fields["version"] if newest else -1):
                continue  # a republished snapshot already handled or already queued
            if newest is not None:
                dropped.append(newest.fields["version"])
            newest = msg
        for version in dropped:
            self.log.info("snapshot_dropped", version=version, newer=newest.fields["version"])
        self.dropped += len(dropped)
        return newest

    def _check_snapshot(self, msg: Message) -> None:
        """MessageRejected unless the snapshot is the run's actor (and what its settings add) with sane
        statistics and fields."""
        check_tensors(msg.tensors, self._expected_tensors(msg.tensors), sparse=self.maskable)
        if OBS_NORM[1] in msg.tensors and (msg.tensors[OBS_NORM[1]] < 0).any():
            raise MessageRejected(f"snapshot {OBS_NORM[1]} has negative variances")
        self._check_fields(msg.fields)

    def _expected_tensors(self, tensors: dict[str, np.ndarray]) -> dict:
        """The snapshot's tensor table; in teacher-student mode with observations of up to
        `distill_samples` rows (none before the trainer's first epoch), each within +-input_bound."""
        if self.distiller is None:
            return self.snapshot_spec
        obs, most = tensors.get(DISTILL_OBS), self.cfg.pruning.distill_samples
        rows = obs.shape[0] if obs is not None and obs.ndim == 2 and obs.shape[0] <= most else most
        if obs is not None and obs.size and obs.dtype == np.float32 and np.abs(obs).max() > self.cfg.input_bound:
            raise MessageRejected(f"snapshot {DISTILL_OBS} outside +-{self.cfg.input_bound:g}")
        return {**self.snapshot_spec, DISTILL_OBS: ("float32", (rows, self.obs_dim))}

    def _check_fields(self, f: dict) -> None:
        """A snapshot's fields drive the schedule: an epoch past the run's end or going backwards
        would serve (and so skip) steps that are not due yet. Epochs go back only when a resumed
        trainer (a higher `trainer_start`) takes over from its checkpoint."""
        known = self.trainer_start
        if f["trainer_start"] < (known or 0):
            raise MessageRejected(f"snapshot trainer_start {f['trainer_start']} is older than this run's {known}")
        new_trainer = known is not None and f["trainer_start"] > known
        floor = -1 if new_trainer or known is None else self.last_epoch
        if not floor <= f["epoch"] <= self.cfg.total_epochs:
            raise MessageRejected(f"snapshot epoch {f['epoch']} outside [{floor}, {self.cfg.total_epochs}]")
        if not -1 <= f["masks_version"] < f["version"]:
            raise MessageRejected(f"snapshot masks_version {f['masks_version']} is not older than its version")
        if not 0 <= f["training_sparsity"] <= 1:
            raise MessageRejected("snapshot training_sparsity outside [0, 1]")
        self.trainer_start = f["trainer_start"]
        if new_trainer:  # only once the snapshot is valid
            self.last_epoch = -1
            self.log.info("trainer_restarted", trainer_start=f["trainer_start"], version=f["version"],
                          epoch=f["epoch"])
            if self.last_report:
                self.send_report(*self.last_report, again=True)

    def _pruned_nonzero(self, sent: Version, masks_version: int) -> int | None:
        """Weights the trainer's applied masks prune but that are non-zero in its snapshot (0 when
        both-pruned mode works); None when those masks are not known here. A weight sent as kept values
        is checked at its kept positions alone (no dense rebuild), and not at all when its bitmap is that
        mask's own."""
        masks = self.history.get(masks_version)
        if masks is None:
            return None
        codes = self.mask_codes() if masks is self.masks else {}
        count = 0
        for n, keep in masks.elements.items():
            t = sent[n]
            if isinstance(t, SparseTensor):
                if n in codes and codes[n].describes(t):
                    continue  # under that very mask (as a both-pruned trainer sends them): none is pruned
                pruned = ~keep.reshape(-1)[self.snapshot_codes.of(n, t).indices]
                count += int(np.count_nonzero(t.values * pruned))
            else:
                count += int(np.count_nonzero(t * ~keep))  # a multiply, no fancy index over the dense tensor
        return count

    def handle(self, msg: Message) -> None:
        f, p = msg.fields, self.cfg.pruning
        version, epoch = f["version"], f["epoch"]
        sent = {n: msg.tensors[n] for n in self.weight_spec}  # in both-pruned mode, masked weights as kept values
        masks_version = f["masks_version"]
        self.log.info("snapshot_received", version=version, epoch=epoch, training_sparsity=f["training_sparsity"],
                      masks_version=masks_version, pruned_nonzero=self._pruned_nonzero(sent, masks_version),
                      sender=msg.sender, transit_ms=(time.time_ns() - msg.ts_ns) / 1e6)
        if p.delay_s:
            time.sleep(p.delay_s)
        due = self.schedule.due(epoch) if self.pruner else None
        distils = self.distiller is not None and self.masks is not None
        # Rebuilt dense only to compute masks or distil: a version under the masks in force is written
        # from the kept values it came as (`stored`)
        weights = self.snapshot_codes.dense(sent) if due is not None or distils else sent
        outcome = self._compress(msg, weights, *due) if due is not None else None
        policy = weights
        if self.distiller is not None and self.masks is not None:
            policy, record = self.distiller.distil(weights, self.masks, msg.tensors[DISTILL_OBS])
            self.log.info("distill_finished", version=version, epoch=epoch, **record)
            if record["diverged"]:
                self.log.warning("distill_diverged", version=version, reason="the student's weights or KL went "
                                 "non-finite: it stays as it was before this version's steps")
        stored = self.stored(policy)
        structure_changed = self.store.changes_structure(stored)  # before the write: for compression_finished
        achieved = sparsity(stored, self.weight_spec, self.sparsity_names)
        # What the masks prune: the zeros written may be more (a weight regrown at zero in both-pruned mode)
        held, stats = self.mask_figures()
        if outcome is not None:
            step = due[0]
            self.log.info("compression_finished", version=version, epoch=epoch, due_epoch=step.epoch,
                          method=p.method, structure=p.structure, target_sparsity=step.sparsity,
                          achieved_sparsity=stats["unit_sparsity"] if self.masks.units else held,
                          weight_sparsity=held, drop_fraction=step.fraction, **stats, **outcome,
                          structure_changed=structure_changed)
        slot, nbytes, _ = self.publisher.publish(stored, version)
        self.log.info("weights_written", version=version, slot=slot, nbytes=nbytes,
                      dense_nbytes=dense_payload_size(stored), sparsity=achieved,
                      masked=self.masks is not None, structure_changed=structure_changed)
        self.last_written = (stored, {"version": version, "epoch": epoch, "weight_sparsity": achieved,
                                   "params_kept": stats["params_kept"], "params_total": stats["params_total"]})
        self.relays.send(stored, version, epoch)  # as the store holds it: kept values + bitmaps
        if outcome is not None:
            self.keep_policy(due_epoch=due[0].epoch)
        if due is not None:  # the workers first, then the trainer
            failed = outcome is None
            fields = {"version": version, "epoch": epoch, "due_epoch": due[0].epoch, "target_sparsity": due[0].sparsity,
                      "failed": failed, "weight_sparsity": held, "params_kept": stats["params_kept"]}
            tensors = self.masks.elements if self.cfg.prune_training_model and not failed else {}
            self.send_report(fields, tensors)
            if not failed:
                self.last_report = (fields, tensors)
        self.last_version, self.last_epoch = version, epoch

    def stored(self, policy: Version) -> Version:
        """The version as the store holds it: the masks in force applied (pruned entries +0.0, as
        engine.masked), each masked weight as its kept values and its mask's bitmap where that takes at
        most half its dense bytes (hotprune.protocol.sparse's rule), the rest dense. A weight that came
        as kept values under the very mask in force is stored as it came, never rebuilt. Neuron and
        channel structure publish sliced dense tensors, in which every entry left is kept."""
        masks = self.masks
        if masks is None or masks.units is not None:
            return apply_masks(self.snapshot_codes.dense(policy), masks)
        codes, out = self.mask_codes(), {}
        for n, t in policy.items():
            code = codes.get(n)
            if code is not None and isinstance(t, SparseTensor) and code.describes(t):
                out[n] = SparseTensor(t.values + 0, code.bitmap, code.shape)  # +0: a kept -0.0 as masked() has it
                continue
            w = self.snapshot_codes.dense({n: t})[n]
            if code is not None:
                out[n] = code.sparse(w)
                np.add(out[n].values, 0, out=out[n].values)  # its own array (a take); +0 as above
            else:
                out[n] = masked(w, masks.elements[n]) if n in masks.elements else w
        return out

    def mask_codes(self) -> dict[str, SparseCode]:
        """The bitmap and kept indices of each weight the masks in force store as kept values (by
        hotprune.protocol.sparse's rule), made once per masks."""
        masks = self.masks
        if self.codes[0] is not masks:
            self.codes = (masks, {n: SparseCode.of_mask(m) for n, m in masks.elements.items()
                                  if worth_sparse(m.size, int(np.count_nonzero(m)),
                                                  np.dtype(self.weight_spec[n][0]).itemsize)})
        return self.codes[1]

    def mask_figures(self) -> tuple[float, dict]:
        """The sparsity the masks in force hold the weights at, and their layer by layer stats, made once
        per masks (counting every mask again took 4 ms a version at 10M parameters)."""
        if self.figures is None or self.figures[0] is not self.masks:
            self.figures = (self.masks, masks_sparsity(self.masks, self.weight_spec, self.sparsity_names),
                            masked_stats(self.masks, self.weight_spec, self.sparsity_names))
        return self.figures[1], self.figures[2]

    def send_report(self, fields: dict, tensors: dict[str, np.ndarray], again: bool = False) -> None:
        self.log.info("masks_sent", **fields, tensors=bool(tensors), again=again)
        if not send_when_ready(self.masks_out, self.encoder.encode("masks", fields, tensors), self.running):
            self.log.warning("masks_not_sent", version=fields["version"],
                             reason="stopped while the trainer's queue was full")

    def _compress(self, msg: Message, weights: dict[str, np.ndarray], step: Step, folded: list[int]) -> dict | None:
        """Compute the masks of a due step on this snapshot; returns what it changed, or None (the
        previous masks stay in force and the step stays due) if the criterion could not rank."""
        version, epoch, p = msg.fields["version"], msg.fields["epoch"], self.cfg.pruning
        self.log.info("compression_started", version=version, epoch=epoch, due_epoch=step.epoch,
                      folded_due_epochs=folded, method=p.method, structure=p.structure, target_sparsity=step.sparsity)
        t0 = time.perf_counter()
        grads = {n: msg.tensors[GRAD_PREFIX + n] for n in self.pruner.grad_names}
        try:
            masks = self.pruner.at_step(step, weights, grads, previous=self.masks)
        except CompressionFailed as exc:
            self.log.warning("compression_failed", version=version, epoch=epoch, due_epoch=step.epoch,
                             method=p.method, reason=str(exc), masks_in_force=self.masks is not None)
            return None
        changed, regrown = churn(self.masks, masks)
        self.masks, self.masks_source = masks, (version, epoch, step)
        self.history[version] = masks
        for old in sorted(self.history)[:-MASKS_KEPT]:
            del self.history[old]
        self.schedule.done(step)
        return {"mask_churn": changed, "dropped": changed - regrown, "regrown": regrown,
                "duration_ms": (time.perf_counter() - t0) * 1e3}

    def keep_policy(self, **extra) -> None:
        """Write the policy last published (and the masks in force) into the run directory."""
        if self.last_written is None:
            return
        stored, fields = self.last_written
        c = self.cfg
        meta = {**artifacts.run_meta(c), **policy_metadata(self.spec, c), "method": c.pruning.method,
                "structure": c.pruning.structure, **fields, **extra}
        artifacts.save(c.run_dir / artifacts.POLICY, densified(stored), **meta)
        # The masks file states what the masks prune, not the zeros of the policy written with them
        meta_masks = {**meta, "weight_sparsity": self.mask_figures()[0]}
        if self.masks_source is not None:
            version, epoch, step = self.masks_source
            artifacts.save(c.run_dir / artifacts.MASKS, self.masks.elements, **meta_masks, masks_version=version,
                           masks_epoch=epoch, masks_due_epoch=step.epoch)
        elif self.masks is not None:  # method fixed
            artifacts.save(c.run_dir / artifacts.MASKS, self.masks.elements, **meta_masks,
                           mask_file=c.pruning.mask_file)
        self.log.info("policy_saved", path=str(c.run_dir / artifacts.POLICY), **fields, **extra)

    def running(self) -> bool:
        return not (self.stop.is_set() or self.stopping)

    def run(self) -> int:
        try:
            while self.running():
                self.heartbeat.beat(version=self.last_version, dropped=self.dropped)
                self.relays.answer()
                msg = self._newest()
                if msg is not None:
                    self.handle(msg)
        finally:
            try:
                self.keep_policy(final=True)
            except OSError as exc:  # e.g. a full disk: the stop must still reach the workers
                self.log.error("policy_not_saved", reason=str(exc)[:200])
            # Pass the stop on to the workers (a run started by hand has no supervisor to do it).
            if self.stopping:
                self.publisher.stop()
                self.relays.stop()
            # A SUB sends nothing but its subscription, which waits to reconnect to a trainer that
            # has ended: under the linger below it kept the compressor, the run's last process, a second.
            self.snapshots.close(linger=0)
            self.ctx.destroy(linger=1000)  # let the stop go out
            self.publisher.close()
        return 0 if self.stopping else self.stop.exit_code()  # ended by the run's `stop`, or by a signal


main = role_process("compressor", "prunes snapshots into the shared weight store",
                    lambda cfg, stop, args: Compressor(cfg, stop, args.resume),
                    (("--resume",), {"action": "store_true",
                                     "help": "take up the masks of the run's last compression"}))


if __name__ == "__main__":
    from hotprune.roles.entry import role_main

    role_main(main, "compressor")
