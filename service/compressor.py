"""The compressor: prunes the trainer's newest snapshot and publishes it to the workers.

For each snapshot (older queued ones are dropped, each logged): on a scheduled epoch, compute new
masks; otherwise keep the current ones. Apply them, write the result into the weight store,
announce `weights_ready`, and in both-pruned mode send the masks back to the trainer. Before the
first compression, weights pass through unchanged: every policy update reaches the workers.

Run it: `hotprune compressor --run-dir runs/<run_id>` or `python -m service.compressor --run-dir ...`.
Run by hand, it creates the weight store if the supervisor has not, and then owns and unlinks it.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from protocol.codec import Encoder, Message, MessageRejected, check_tensors, decode
from protocol.store_layout import payload_size
from service import eventlog
from service.config import Config
from service.envs import env_spec
from service.policy import actor_arrays, expected_spec, make_actor, prunable_names
from service.process import StopFlag, run_dir_parser, send_when_ready, socket, start
from service.pruning import apply_masks, compression_target, compute_masks, sparsity
from service.weight_store import StoreError, WeightStore, segment_name


def store_slot_size(cfg: Config) -> int:
    """A slot holds the dense actor: every later (pruned or smaller) version fits too."""
    return payload_size(actor_arrays(make_actor(env_spec(cfg.env_id), cfg.ppo.hidden_sizes)))


def open_store(cfg: Config) -> WeightStore:
    """Attach to the run's store, or create it (and own it) when no supervisor made one."""
    try:
        return WeightStore.attach(segment_name(cfg.run_id))
    except StoreError:
        return WeightStore.create(segment_name(cfg.run_id), store_slot_size(cfg))


class Compressor:
    def __init__(self, cfg: Config, stop: StopFlag):
        self.cfg, self.stop = cfg, stop
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "compressor")
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)
        actor = make_actor(env_spec(cfg.env_id), cfg.ppo.hidden_sizes)
        self.weight_spec = expected_spec(actor)
        self.prunable = prunable_names(self.weight_spec, cfg.pruning.prune_output_layer)
        self.snapshot_spec = {**self.weight_spec, **{f"grad:{n}": self.weight_spec[n] for n in self.prunable}}
        self.store = open_store(cfg)

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        self.snapshots = socket(self.ctx, zmq.SUB, hwm=16, max_frame=cfg.transport.max_frame_bytes)
        self.snapshots.subscribe(b"")
        self.snapshots.connect(ep.snapshots)
        self.masks_out = socket(self.ctx, zmq.PUSH, hwm=4)
        self.masks_out.connect(ep.masks)
        self.notify = socket(self.ctx, zmq.PUB, hwm=16)
        self.notify.bind(ep.weights)
        self.encoder = Encoder(cfg.run_id, "compressor")

        self.masks: dict[str, np.ndarray] = {}
        self.last_version = -1
        self.dropped = 0  # snapshots skipped for a newer one
        self.stopping = False

    def _newest(self) -> Message | None:
        """Drain the socket: the newest valid snapshot (older ones are dropped), acting on control."""
        newest, dropped = None, []
        while self.snapshots.poll(0 if newest else 100):
            frames = self.snapshots.recv_multipart(copy=False)
            try:
                msg = decode([f.buffer for f in frames], run_id=self.cfg.run_id, kinds={"snapshot", "control"},
                             max_frame_bytes=self.cfg.transport.max_frame_bytes)
                if msg.kind == "control":
                    self.stopping = self.stopping or msg.fields["command"] == "stop"
                    continue
                check_tensors(msg.tensors, self.snapshot_spec)
            except MessageRejected as exc:
                self.log.warning("message_rejected", reason=exc.reason, expected="snapshot")
                continue
            if msg.fields["version"] <= self.last_version:
                continue  # a republished snapshot already handled
            if newest is not None:
                dropped.append(newest.fields["version"])
            newest = msg
        for version in dropped:
            self.log.info("snapshot_dropped", version=version, newer=newest.fields["version"])
        self.dropped += len(dropped)
        return newest

    def handle(self, msg: Message) -> None:
        f, p = msg.fields, self.cfg.pruning
        version, epoch = f["version"], f["epoch"]
        self.log.info("snapshot_received", version=version, epoch=epoch, training_sparsity=f["training_sparsity"],
                      sender=msg.sender, transit_ms=(time.time_ns() - msg.ts_ns) / 1e6)
        weights = {n: msg.tensors[n] for n in self.weight_spec}
        target = compression_target(self.cfg, epoch)
        compressed = target is not None
        if compressed:
            self.log.info("compression_started", version=version, epoch=epoch, method=p.method, target_sparsity=target)
            t0 = time.perf_counter()
            grads = {n: msg.tensors[f"grad:{n}"] for n in self.prunable}
            self.masks = compute_masks({n: weights[n] for n in self.prunable}, target, criterion=p.method,
                                       scope=p.scope, grads=grads)
        out = apply_masks(weights, self.masks)
        achieved = sparsity(out, self.prunable)
        if compressed:
            self.log.info("compression_finished", version=version, epoch=epoch, method=p.method,
                          target_sparsity=target, achieved_sparsity=achieved,
                          duration_ms=(time.perf_counter() - t0) * 1e3, structure_changed=False)
        slot, nbytes, structure_changed = self.store.publish(out, version)
        self.log.info("weights_written", version=version, slot=slot, nbytes=nbytes, sparsity=achieved,
                      masked=bool(self.masks), structure_changed=structure_changed)
        ready = {"version": version, "slot": slot, "structure_changed": structure_changed}
        self.notify.send_multipart(self.encoder.encode("weights_ready", ready))
        if compressed and self.cfg.prune_training_model:  # the workers first, then the trainer
            fields = {"version": version, "epoch": epoch, "target_sparsity": target}
            self.log.info("masks_sent", **fields)
            frames = self.encoder.encode("masks", fields, self.masks)
            if not send_when_ready(self.masks_out, frames, self.running):
                self.log.warning("masks_not_sent", version=version, reason="stopped while the trainer's queue was full")
        self.last_version = version

    def running(self) -> bool:
        return not (self.stop.is_set() or self.stopping)

    def run(self) -> int:
        try:
            while self.running():
                self.heartbeat.beat(version=self.last_version, dropped=self.dropped)
                msg = self._newest()
                if msg is not None:
                    self.handle(msg)
        finally:
            # Pass the stop on to the workers (a run started by hand has no supervisor to do it).
            if self.stopping:
                self.notify.send_multipart(self.encoder.encode("control", {"command": "stop"}))
            self.ctx.destroy(linger=1000)  # let the stop go out
            self.store.close()
            if self.store.owner:
                self.store.unlink()
        return 0 if self.stopping else self.stop.exit_code()  # ended by the run's `stop`, or by a signal


def main(argv: list[str] | None = None) -> int:
    args = run_dir_parser("compressor", "prunes snapshots into the shared weight store").parse_args(argv)
    cfg, stop = start(args.run_dir)
    return Compressor(cfg, stop).run()


if __name__ == "__main__":
    from service.cli import main as cli_main

    sys.exit(cli_main(["compressor", *sys.argv[1:]]))
