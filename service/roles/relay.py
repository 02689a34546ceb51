"""A relay: one node's own weight store, fed with each version the compressor publishes.

Shared memory stays inside a host, so a node other than the compressor's runs one relay. It receives
each weight version once, whole, on the compressor's `versions` socket (tcp with CURVE when the run's
transport is tcp), checks it as a worker would (the actor's tensor names and dtypes, shapes no larger
than the dense ones, finite values), writes it into its node's store and announces it to its node's
workers with the compressor's own code (hotprune.comms.publisher), so those workers swap exactly as
local ones do. Only versions newer than its store's are written: a restarted relay, sent the newest
version as soon as it subscribes, takes up where the store is; a late or repeated version changes
nothing. The run's `stop` is passed on to the node's workers.

The node's store is named after the run and the node (store_layout.segment_name); whoever starts the
node's processes makes it (the supervisor, for `relay.local`), so that workers stay attached to it
while the relay restarts. A relay run by hand makes it if nobody has, and then owns and unlinks it.

Run it: `hotprune relay --run-dir runs/<run_id> --node NODE` or `python -m hotprune.roles.relay ...`.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from hotprune import eventlog
from hotprune.actor_spec import actor_spec
from hotprune.comms.curve import SocketSecurity
from hotprune.comms.publisher import StorePublisher
from hotprune.comms.weight_store import WeightStore
from hotprune.config import Config, ConfigError
from hotprune.envs import EnvSource, env_spec
from hotprune.protocol.codec import Encoder, Message, MessageRejected
from hotprune.protocol.endpoints import node_weights
from hotprune.protocol.store_layout import check_node, payload_size, segment_name
from hotprune.roles.process import StopFlag, keep_freed_memory, receive, role_process, socket
from hotprune.runs.rundir import store_slot_size

POLL_MS = 100  # the receive loop's wait: how soon a stop or a due heartbeat is seen


def check_version(tensors: dict[str, np.ndarray], dense: dict[str, tuple[str, tuple[int, ...]]],
                  slot_size: int) -> None:
    """A version's tensors are the actor's (names, dtypes), each no larger than its dense shape (neuron
    pruning slices units out), with finite values, and all of it fits a store slot (sized for the dense
    actor: kept values + bitmaps of a tensor that keeps nearly everything are larger than it);
    MessageRejected says what is not. A tensor may be kept values and a mask's bitmap (anything with the
    dense tensor's `dtype` and `shape`, its kept entries in `values`): it is checked the same, and written
    on as it came."""
    if set(tensors) != set(dense):
        raise MessageRejected(f"tensors {sorted(set(tensors) ^ set(dense))[:3]} are not the actor's")
    for name, (dtype, shape) in dense.items():
        tensor = tensors[name]
        got = tuple(tensor.shape)
        if tensor.dtype.name != dtype or len(got) != len(shape) or any(n > d for n, d in zip(got, shape)):
            raise MessageRejected(f"tensor {name!r} is {tensor.dtype.name}{list(got)}, "
                                  f"not {dtype} within {list(shape)}")
        if not np.isfinite(getattr(tensor, "values", tensor)).all():
            raise MessageRejected(f"tensor {name!r} has non-finite values")
    if (size := payload_size(tensors)) > slot_size:
        raise MessageRejected(f"the version's {size} bytes do not fit a store slot of {slot_size}")


class Relay:
    def __init__(self, cfg: Config, node: str, stop: StopFlag):
        try:
            self.node = check_node(node)
            endpoint = node_weights(cfg.run_dir, node)
        except ValueError as exc:
            raise ConfigError(f"--node: {exc}") from None
        self.cfg, self.stop = cfg, stop
        keep_freed_memory()  # each version's frames in the pages of the last one's
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "relay", node=node)
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)
        spec = env_spec(EnvSource.of(cfg))
        actor = cfg.network("actor", spec)
        self.dense = actor_spec(spec, actor.hidden_sizes, cfg.normalize_obs, cfg.algorithm, actor.conv)
        self.slot_size = store_slot_size(cfg)
        store = WeightStore.attach_or_create(segment_name(cfg.run_dir, node), self.slot_size)

        self.ctx = zmq.Context()
        self.security = SocketSecurity(cfg, self.ctx, self.log)
        self.versions = socket(self.ctx, zmq.SUB, hwm=2, max_frame=cfg.transport.max_frame_bytes)
        self.versions.subscribe(b"")
        self.security.connect(self.versions, cfg.endpoints().versions)
        notify = socket(self.ctx, zmq.PUB, hwm=16)
        self.security.bind(notify, endpoint, "node_weights")
        self.publisher = StorePublisher(store, notify, Encoder(cfg.run_id, f"relay-{node}"))
        self.version = store.version()  # a restarted relay's store already holds what it wrote
        self.written = 0
        self.stopping = False

    def receive(self) -> Message | None:
        """The newest valid version waiting (older ones are skipped: the store wants the newest), acting
        on control; None when none came."""
        newest = None
        while self.versions.poll(0 if newest else POLL_MS):
            msg = receive(self.versions, "version", self.cfg, self.log, control=True,
                          check=lambda m: check_version(m.tensors, self.dense, self.slot_size))
            if msg is None:
                continue
            if msg.kind == "control":
                self.stopping = self.stopping or msg.fields["command"] == "stop"
                continue
            if msg.fields["version"] > max(self.version, newest.fields["version"] if newest else -1):
                newest = msg
        return newest

    def write(self, msg: Message) -> None:
        version = msg.fields["version"]
        slot, nbytes, structure_changed = self.publisher.publish(msg.tensors, version)
        self.version = version
        self.written += 1
        self.log.info("relay_wrote", version=version, epoch=msg.fields["epoch"], node_id=self.node, slot=slot,
                      nbytes=nbytes, structure_changed=structure_changed,
                      transit_ms=(time.time_ns() - msg.ts_ns) / 1e6)

    def running(self) -> bool:
        return not (self.stop.is_set() or self.stopping)

    def run(self) -> int:
        try:
            while self.running():
                self.heartbeat.beat(version=self.version, written=self.written)
                msg = self.receive()
                if msg is not None:
                    self.write(msg)
        finally:
            if self.stopping:
                self.publisher.stop()
            self.ctx.destroy(linger=1000)  # let the stop go out
            self.publisher.close()
        return 0 if self.stopping else self.stop.exit_code()  # ended by the run's `stop`, or by a signal


main = role_process("relay", "writes the compressor's weight versions into this node's own weight store",
                    lambda cfg, stop, args: Relay(cfg, args.node, stop),
                    (("--node",), {"required": True, "help": "this node's id: names its store, log and socket "
                                                             "(its workers take the same --node)"}))


if __name__ == "__main__":
    from hotprune.roles.entry import role_main

    role_main(main, "relay")
