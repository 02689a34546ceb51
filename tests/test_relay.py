"""A relay feeds its node's own weight store from the compressor's versions, over tcp with CURVE.

The unit tests run a real Relay in a thread of this process, against a real versions socket (the
compressor's VersionFeed, CURVE-bound as the compressor binds it), a real store and a real SUB where
the node's workers listen. The slow test runs the service with `relay.local` and kills its relay.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from hotprune.actor_spec import actor_spec
from hotprune.commands.diagnose import diagnose
from hotprune.comms.curve import SocketSecurity
from hotprune.comms.publisher import VERSIONS_QUEUE, VersionFeed
from hotprune.comms.weight_store import WeightStore
from hotprune.config import LOCAL_NODE, Config, ConfigError, load_config
from hotprune.envs import EnvSource, env_spec
from hotprune.protocol.codec import Encoder, decode
from hotprune.protocol.endpoints import node_weights
from hotprune.protocol.sparse import SparseCode
from hotprune.protocol.store_layout import MAX_NODE_CHARS, check_node, segment_name
from hotprune.roles.process import StopFlag, socket
from hotprune.roles.relay import Relay
from hotprune.runs import cleanup, rundir
from hotprune.runs.runlog import load
from tests.servicekit import assert_clean, events, free_base_port, hotprune, logged, of, settings, wait_for

NODE = "n1"
RELAYED = "workers on a relay's node run what it wrote"  # the diagnose check


class Lines:
    """The test's compressor side logs here: only the relay's own log is under test."""

    def __init__(self):
        self.lines = []

    def info(self, event, **fields):
        self.lines.append((event, fields))

    warning = error = info


def tcp_run(tmp_path: Path, run_id: str = "relayed") -> Config:
    cfg = load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path))}", f"run_id={run_id}", "transport.kind=tcp",
                                 f"transport.base_port={free_base_port()}"])
    rundir.prepare(cfg)  # keys, logs/, sock/
    return cfg


def dense(cfg: Config) -> dict[str, tuple[str, tuple[int, ...]]]:
    spec = env_spec(EnvSource.of(cfg))
    actor = cfg.network("actor", spec)
    return actor_spec(spec, actor.hidden_sizes, cfg.normalize_obs, cfg.algorithm, actor.conv)


def weights(cfg: Config, value: float) -> dict[str, np.ndarray]:
    return {n: np.full(shape, value, dtype) for n, (dtype, shape) in dense(cfg).items()}


class Harness:
    """The compressor's versions feed, the node's store (made as the supervisor makes it) and a
    worker's hint socket; relays started in threads."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = WeightStore.create(segment_name(cfg.run_dir, NODE), rundir.store_slot_size(cfg))
        self.ctx = zmq.Context()
        sock = socket(self.ctx, zmq.XPUB, hwm=VERSIONS_QUEUE)  # as the compressor's
        self.feed = VersionFeed(sock, Encoder(cfg.run_id, "compressor"))
        SocketSecurity(cfg, self.ctx, Lines()).bind(sock, cfg.endpoints().versions)
        self.hints = socket(self.ctx, zmq.SUB)
        self.hints.subscribe(b"")
        self.handshakes = self.hints.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.hints.connect(node_weights(cfg.run_dir, NODE))
        self.relay: tuple[Relay, threading.Thread, list[int]] | None = None

    def start_relay(self) -> None:
        relay, code = Relay(self.cfg, NODE, StopFlag()), []
        thread = threading.Thread(target=lambda: code.append(relay.run()))
        thread.start()
        self.relay = (relay, thread, code)

    def stop_relay(self) -> int:
        relay, thread, code = self.relay
        relay.stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        return code[0]

    def send(self, version: int, tensors: dict[str, np.ndarray]) -> None:
        self.feed.send(tensors, version, epoch=version)

    def stored(self, version: int) -> bool:
        self.feed.answer()  # what the compressor's loop does: a relay that subscribes gets the newest
        return self.store.version() == version and version in self.wrote()  # it logs after the write

    def wrote(self) -> list[int]:
        return [e["version"] for e in logged(self.cfg.run_dir, f"relay-{NODE}", "relay_wrote")]

    def listening(self) -> None:
        """The worker's hint socket is connected to the relay's: hints sent from now on reach it (a SUB
        that has not joined yet misses them, as a worker does: hints are hints, the store the truth)."""
        assert self.handshakes.poll(10_000), "the hint socket never connected to the relay's"
        self.handshakes.recv_multipart()

    def hint(self, kind: str, **fields) -> None:
        """The node's workers get a hint of `kind` with `fields` (others before it may be missed or not:
        hints are hints)."""
        while self.hints.poll(10_000):
            msg = decode(self.hints.recv_multipart(), run_id=self.cfg.run_id)
            if msg.kind == kind and fields.items() <= msg.fields.items():
                return
        raise AssertionError(f"no {kind} {fields} on the node's hint socket")

    def close(self) -> None:
        if self.relay and self.relay[1].is_alive():
            self.stop_relay()
        self.handshakes.close()
        self.ctx.destroy(linger=0)
        self.store.close()
        self.store.unlink()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tcp_run(tmp_path))
    yield h
    h.close()


def test_a_relay_writes_each_newer_version_into_its_nodes_store_and_tells_the_nodes_workers(harness):
    cfg = harness.cfg
    harness.send(3, weights(cfg, 0.5))  # before the relay starts: it is sent the newest when it subscribes
    harness.start_relay()
    wait_for(lambda: harness.stored(3), timeout=30, what="the relay to write the version it joined late for")
    header, tensors = harness.store.read()
    assert all((tensors[n] == 0.5).all() for n in dense(cfg))

    harness.listening()
    harness.send(5, weights(cfg, 1.5))
    harness.hint("weights_ready", version=5)
    harness.send(4, weights(cfg, 9.0))  # older than the store's: nothing changes
    harness.send(6, weights(cfg, 2.5))
    wait_for(lambda: harness.stored(6), timeout=10, what="version 6")
    assert harness.wrote() == [3, 5, 6]
    assert (harness.store.read()[1]["net.0.weight"] == 2.5).all()

    lines = events(cfg.run_dir, f"relay-{NODE}")
    wrote = of(lines, "relay_wrote")[-1]
    assert wrote["node_id"] == NODE and wrote["epoch"] == 6 and wrote["structure_changed"] is False
    assert wrote["nbytes"] == harness.store.header().payload_size
    assert {(o["socket"], o["side"], o["mechanism"]) for o in of(lines, "socket_opened")} == {
        ("versions", "connect", "CURVE"), ("node_weights", "bind", "NULL")}  # the node-local socket is ipc
    assert all(line["node_id"] == NODE for line in lines)

    harness.feed.stop()  # the run's stop: the relay passes it on to its workers and exits 0
    harness.hint("control", command="stop")
    relay, thread, code = harness.relay
    thread.join(timeout=10)
    assert code == [0]


def test_a_version_that_is_not_the_actor_is_refused_and_a_neuron_pruned_one_is_written(harness):
    cfg = harness.cfg
    harness.start_relay()
    harness.send(1, weights(cfg, 1.0))
    wait_for(lambda: harness.stored(1), timeout=30, what="version 1")
    poisoned = weights(cfg, 2.0)
    poisoned["net.2.weight"][0, 0] = np.nan
    harness.send(2, poisoned)
    too_big = weights(cfg, 2.0)
    too_big["net.0.bias"] = np.zeros(65, np.float32)
    harness.send(3, too_big)
    harness.send(4, {**weights(cfg, 2.0), "extra": np.zeros(1, np.float32)})
    wait_for(lambda: len(logged(cfg.run_dir, f"relay-{NODE}", "message_rejected")) == 3, timeout=10,
             what="three rejections")  # a relay more than the feed's queue behind would miss versions
    everything_kept = {n: SparseCode.of_mask(np.ones(t.shape, bool)).sparse(t)
                       for n, t in weights(cfg, 2.0).items()}
    harness.send(5, everything_kept)  # the dense actor's bytes plus its bitmaps: more than a slot holds
    wait_for(lambda: len(logged(cfg.run_dir, f"relay-{NODE}", "message_rejected")) == 4, timeout=10,
             what="the fourth rejection")
    # neuron pruning slices hidden units out: 16 of net.0's 64 rows and net.2's matching columns remain
    sliced = weights(cfg, 3.0)
    sliced["net.0.weight"], sliced["net.0.bias"] = sliced["net.0.weight"][:16], sliced["net.0.bias"][:16]
    sliced["net.2.weight"] = np.ascontiguousarray(sliced["net.2.weight"][:, :16])
    harness.send(6, sliced)
    wait_for(lambda: harness.stored(6), timeout=10, what="the sliced version 6")
    assert harness.wrote() == [1, 6]
    assert of(events(cfg.run_dir, f"relay-{NODE}"), "relay_wrote")[-1]["structure_changed"] is True
    assert harness.store.read()[1]["net.2.weight"].shape == (64, 16)
    reasons = [e["reason"] for e in logged(cfg.run_dir, f"relay-{NODE}", "message_rejected")]
    assert "non-finite" in reasons[0] and "within" in reasons[1] and "not the actor's" in reasons[2]
    assert "do not fit a store slot" in reasons[3]
    assert harness.relay[1].is_alive()  # (a version too big for its slot used to kill the relay)


def test_a_restarted_relay_takes_up_the_newest_version_and_the_stores_readers_stay_attached(harness):
    cfg = harness.cfg
    reader = WeightStore.attach(segment_name(cfg.run_dir, NODE))  # as a worker of the node attaches
    try:
        harness.start_relay()
        harness.send(1, weights(cfg, 1.0))
        wait_for(lambda: harness.stored(1), timeout=30, what="version 1")
        assert harness.stop_relay() == 0  # ended by a signal would be 128 + n; a StopFlag without one: 0
        harness.send(2, weights(cfg, 2.0))  # while no relay runs: nobody receives it
        harness.start_relay()
        wait_for(lambda: harness.stored(2), timeout=30, what="the new relay to take up version 2")
        assert reader.version() == 2 and (reader.read()[1]["net.0.weight"] == 2.0).all()
        assert harness.stop_relay() == 0
        harness.start_relay()  # is sent version 2 again, which its store already holds: not rewritten
        harness.send(3, weights(cfg, 3.0))
        wait_for(lambda: harness.stored(3), timeout=30, what="version 3")
        assert harness.wrote() == [1, 2, 3]
        assert reader.version() == 3
    finally:
        reader.close()


def test_node_ids_name_a_relays_store_apart_from_the_runs_and_bad_ones_are_refused(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    assert segment_name(run_dir, "n1") == segment_name(run_dir) + "@n1"
    assert len(segment_name(Path("/") / ("x" * 255), "a" * MAX_NODE_CHARS)) > 255 >= len(
        segment_name(tmp_path / ("x" * (255 - 9 - 9 - 17)), "a" * MAX_NODE_CHARS))  # MAX_RUN_ID leaves room
    for bad in ("", "N1", "n/1", "n@1", "a" * (MAX_NODE_CHARS + 1)):
        with pytest.raises(ValueError, match="node id"):
            check_node(bad)
    cfg = tcp_run(tmp_path)
    with pytest.raises(ConfigError, match="--node: node id '../x'"):
        Relay(cfg, "../x", StopFlag())
    assert not os.path.exists(Path("/dev/shm") / (segment_name(cfg.run_dir) + "@..")), "refused before any store"


def test_a_dead_runs_relay_segment_is_cleaned_up_with_its_own(tmp_path):
    cfg = tcp_run(tmp_path)
    left = [WeightStore.create(segment_name(cfg.run_dir, node), 4096) for node in (None, "n1", "n2")]
    for store in left:
        store.close()  # as after a SIGKILL of every process: nobody unlinked them
    paths = [Path("/dev/shm") / store.name for store in left]
    assert cleanup.segment_paths(cfg.run_dir) == paths
    assert sorted(cleanup.clean_run(cfg.run_dir)) == sorted(paths)
    assert not any(p.exists() for p in paths)


@pytest.mark.slow
def test_workers_swap_from_the_local_relays_store_and_a_killed_relay_is_restarted(tmp_path):
    """One run, tcp with CURVE, every worker fed by the relay: they swap only versions the relay
    wrote, and go on swapping those of its replacement after a SIGKILL. In sync mode, so that the run
    cannot end unless they do: after its share of a version a worker waits for the next in its store,
    which only a relay writes (its replacement, first, the version it is sent when it subscribes)."""
    run = ["run", *settings(tmp_path, "relay", "epochs=8", "mode=sync", "relay.local=true", "transport.kind=tcp",
                            f"transport.base_port={free_base_port()}", "supervisor.restart_backoff_s=0.2")]
    run_dir = tmp_path / "runs" / "relay"
    relay_log = f"relay-{LOCAL_NODE}"

    def kill_relay_after_its_third_version():
        first = wait_for(lambda: (w := logged(run_dir, relay_log, "relay_wrote")) and len(w) >= 3 and w[0],
                         timeout=150, what="three versions written by the relay")
        os.kill(first["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_relay_after_its_third_version, daemon=True)
    killer.start()
    result = hotprune(*run, timeout=240)
    killer.join(timeout=1)
    assert result.returncode == 0, result.stderr[-2000:]

    wrote = of(events(run_dir, relay_log), "relay_wrote")
    pids = list(dict.fromkeys(e["pid"] for e in wrote))
    assert len(pids) == 2, "one relay, then the one the supervisor started after the kill"
    supervisor = events(run_dir, "supervisor")
    assert [e["name"] for e in of(supervisor, "process_restarting")] == [relay_log]
    assert of(supervisor, "run_started")[0]["node_stores"] == [segment_name(run_dir, LOCAL_NODE)]
    by_relay = {e["version"] for e in wrote}
    written = {e["version"]: e["nbytes"] for e in of(events(run_dir, "compressor"), "weights_written")}
    assert all(e["nbytes"] == written[e["version"]] for e in wrote)  # the node's store holds what the run's does
    after_kill = {e["version"] for e in wrote if e["pid"] == pids[1]}
    for worker in ("worker-0", "worker-1"):
        lines = events(run_dir, worker)
        swapped = {e["version"] for e in of(lines, "worker_swapped")}
        assert swapped <= by_relay, worker  # every version it ran came through the relay's store
        assert swapped & after_kill, worker  # and it kept swapping after the relay was replaced
        assert all(line["node_id"] == LOCAL_NODE for line in lines)
        assert {(o["socket"], o["mechanism"]) for o in of(lines, "socket_opened")} == {
            ("credits", "CURVE"), ("trajectories", "CURVE"), ("node_weights", "NULL")}
    assert not (Path("/dev/shm") / segment_name(run_dir, LOCAL_NODE)).exists()
    assert_clean(run_dir)

    checks = {c.name: c for c in diagnose(load(run_dir))}
    assert all(c.status != "FAIL" for c in checks.values()), [c for c in checks.values() if c.status == "FAIL"]
    assert "worker-0 on local" in checks[RELAYED].evidence
    # the same logs, but a worker that ran a version its relay never wrote, and the relay one of nobody's
    for name, event, version, said in (("worker-1", "worker_swapped", 99, "worker-1 ran v99, which relay-local "
                                        "never wrote"),
                                       (relay_log, "relay_wrote", 98, "relay-local wrote v98, which the compressor")):
        copy = tmp_path / f"forged-{name}"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("sock"))
        log = copy / "logs" / f"{name}.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        next(e for e in reversed(lines) if e["event"] == event)["version"] = version
        log.write_text("".join(json.dumps(e) + "\n" for e in lines))
        [check] = [c for c in diagnose(load(copy)) if c.name == RELAYED]
        assert check.status == "FAIL" and said in check.evidence, check
