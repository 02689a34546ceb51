"""`hotprune run --ray ADDRESS`: one run's workers spread over the nodes of a Ray cluster.

The supervisor is the cluster's driver, on the head (the node it runs on): the trainer, the compressor and
the head's share of the workers run there as without Ray. Every other node that hosts workers gets one
`NodeHost` actor, pinned to it (node affinity), which makes a private run directory of that node (0700,
under its temp dir: the run's config.toml and CURVE keys), the node's own weight store, and starts the
node's relay (`--node` its short Ray id) and workers as real subprocesses, with the argv and liveness
pipes the supervisor gives its own children (hotprune.roles.supervisor.node_children, launch). The relay
receives each version once over tcp with CURVE from the compressor and writes it into the node's store,
from which the node's workers swap as local ones do; their trajectories go to the trainer over tcp.

The supervisor sees a node's processes as `RemoteChild`ren, with a local child's behaviour (reap, restart
with backoff and budget, hang detection, stop order: hotprune.roles.supervisor keeps one code path),
read from the node's `poll()`: one Ray call per node at most every POLL_S, which also carries the new bytes
of the node's log files, appended to the run directory's logs/ (the console and `diagnose` see remote
workers while the run goes on), and of what its processes print, written on the supervisor's stderr as a
local child's output is. At the end each host stops what is still running, ships the rest of its
logs, unlinks its store and removes its directory: nothing of the run stays on the node. What a host that
died could not remove (its node lost, its supervisor SIGKILLed) the next host on that node removes first
(`remove_dead_hosts`: only a dead host's own directory, marked by its pid file).

Placement (`spread`): relay.workers_per_node workers per node, the head's first; 0 spreads num_workers
evenly over the cluster's nodes. The cluster is joined through hotprune.raycluster; this module is imported
only with --ray.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hotprune import raycluster
from hotprune.comms import curve
from hotprune.comms.weight_store import WeightStore
from hotprune.config import Config, ConfigError
from hotprune.protocol.endpoints import socket_dir
from hotprune.protocol.store_layout import segment_name
from hotprune.roles.process import load_run_config
from hotprune.roles.supervisor import Child, launch, node_children
from hotprune.runs import cleanup, private, rundir

POLL_S = 1.0  # a node's state and logs, at most this often: never per env step
CALL_TIMEOUT_S = 30.0  # a node's host that does not answer a call this long counts as lost
LOG_CHUNK = 4 * 1024 * 1024  # bytes of one log file per poll (the rest comes with the next)
NODE_ID_CHARS = 12  # of a Ray node id (hex): the node's id in its relay's name, store and logs
LOGS = "logs"
OUTPUT = ".out"  # logs/<child>.out on a node: what a local child would print on the supervisor's terminal
HOST_DIR = "hotprune-node-"  # a host's directory in its node's temp dir: HOST_DIR<random>/<run_id>


def spread(num_workers: int, nodes: list[str], per_node: int) -> dict[str, list[int]]:
    """Worker indices by node (`nodes` head first; only nodes with workers): `per_node` on each node in
    turn, or with 0 as even as can be (the first nodes take one more). ConfigError if they do not fit."""
    if per_node:
        needed = math.ceil(num_workers / per_node)
        if needed > len(nodes):
            raise ConfigError(f"relay.workers_per_node = {per_node}: {num_workers} workers need {needed} nodes, "
                              f"the Ray cluster has {len(nodes)}")
        counts = [min(per_node, num_workers - i * per_node) for i in range(needed)]
    else:
        counts = [num_workers // len(nodes) + (i < num_workers % len(nodes)) for i in range(len(nodes))]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return {node: list(range(start, start + count)) for node, start, count in zip(nodes, starts, counts) if count}


def check_resumable(cfg: Config, host: str) -> None:
    """A stopped run resumes with --ray only where its config.toml already has it listen: over tcp (its
    CURVE keys made) on `host`, the head's Ray address. Rewriting a stopped run's config.toml to move it
    is not resuming it (`--resume` takes no --set): one line says how to resume it instead."""
    if cfg.transport.kind != "tcp":
        raise ConfigError(f"--resume --ray: {cfg.run_dir} ran over transport.kind = \"{cfg.transport.kind}\", which "
                          "cannot reach other nodes: resume it without --ray")
    if cfg.transport.host != host:
        raise ConfigError(f"--resume --ray: {cfg.run_dir} listens on transport.host = \"{cfg.transport.host}\", not "
                          f"this Ray node's address {host}: resume it on the node it ran on, or without --ray")


def short_id(node_id: str) -> str:
    """A Ray node id as hotprune names a node (hotprune.protocol.store_layout.check_node's rule)."""
    return node_id[:NODE_ID_CHARS].lower()


def node_name(node_id: str, taken: list[str]) -> str:
    """The name of a new host's node (its relay's, store's and logs'): its Ray node's short id, and -2, -3, ...
    for a second, third host on that node (the workers of two lost nodes moved onto the head), so that no
    two hosts of a run share a relay name or a store. `taken`: the names of the run's hosts so far, lost too."""
    name, n = short_id(node_id), 1
    while (named := name if n == 1 else f"{name}-{n}") in taken:
        n += 1
    return named


def run_files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """What a node's processes read of the run directory: config.toml and the CURVE keys, each with its mode."""
    paths = [run_dir / "config.toml", *sorted(curve.keys_dir(run_dir).iterdir())]
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mode & 0o777) for p in paths}


def remove_dead_hosts(temp: Path) -> list[Path]:
    """Remove what hosts of earlier runs left on this node when they died without cleaning up (their
    supervisor SIGKILLed, their node lost and back); the directories removed. Only a directory HOST_DIR* of
    `temp` that is this user's, private (nothing for group or others, as mkdtemp makes it), without links,
    holding one run directory with a host's pid file (written by the host first: cleanup.record_supervisor)
    and no live process of its run (the host, or a process started with `--run-dir` naming it:
    cleanup.run_pids); its store and sockets go with it (cleanup.clean_run). Anything else stays: a host
    starting (no pid file yet), a live run, a runs directory of that name (0755), what is not hotprune's."""
    removed = []
    for top in sorted(temp.glob(f"{HOST_DIR}*")):
        try:
            # A host's is mkdtemp's, private; a runs directory (0755: `hotprune run --set runs_dir=`) is not
            if top.is_symlink() or not top.is_dir() or top.stat().st_mode & 0o077:
                continue
            private.check(top)
            [run_dir] = list(top.iterdir())
        except (ConfigError, OSError, ValueError):  # not this user's, holds a link, or not one run directory
            continue
        if not (run_dir / cleanup.PID_FILE).is_file() or cleanup.run_pids(run_dir):
            continue
        cleanup.clean_run(run_dir)
        shutil.rmtree(top, ignore_errors=True)
        removed.append(top)
    return removed


class NodeHost:
    """On a node (a Ray actor's body): the node's run directory, store, relay and workers."""

    def __init__(self, run_id: str, files: dict[str, tuple[bytes, int]], node: str, indices: list[int]):
        removed = remove_dead_hosts(Path(tempfile.gettempdir()))
        self.top = Path(tempfile.mkdtemp(prefix=HOST_DIR))  # 0700
        self.run_dir = self.top / run_id  # the run's id: every message carries it
        self.store = None
        try:
            private.make_dirs(self.run_dir, private.PRIVATE_DIR)
            cleanup.record_supervisor(self.run_dir)  # this host's: a later host removes the directory once it died
            private.make_dirs(curve.keys_dir(self.run_dir), private.PRIVATE_DIR)
            for name, (data, mode) in files.items():
                with os.fdopen(private.create(self.run_dir / name, mode), "wb") as f:
                    f.write(data)
            private.make_dirs(socket_dir(self.run_dir), private.PRIVATE_DIR)
            private.make_dirs(self.run_dir / LOGS, private.SHARED_DIR)
            if removed:  # said on the supervisor's terminal, as a local child's output
                private.write_text(self.run_dir / LOGS / f"host{OUTPUT}", "".join(
                    f"hotprune: removed {top} on node {node}, left by a dead run's host\n" for top in removed))
            cfg = load_run_config(self.run_dir)
            self.store = WeightStore.create(segment_name(self.run_dir, node), rundir.store_slot_size(cfg))
        except BaseException:
            self._remove()
            raise
        self.children = {c.name: c for c in node_children(self.run_dir, node, indices)}
        self.shipped: dict[str, int] = {}  # bytes of each log file sent so far

    def table(self) -> tuple[dict[str, list[str]], str]:
        """(each child's argv, by name; the node's store)."""
        return {name: c.argv for name, c in self.children.items()}, self.store.name

    def start(self, name: str) -> int:
        """(Re)start one child; its pid."""
        child = self.children[name]
        output = private.create(self.run_dir / LOGS / f"{name}{OUTPUT}", append=True)
        try:
            proc, listener = launch(child.argv, output)
        finally:
            os.close(output)  # the child has its own
        if child.listener:
            child.listener.close()
        child.proc, child.listener = proc, listener
        return proc.pid

    def signal(self, name: str, sig: int) -> None:
        proc = self.children[name].proc
        if proc and proc.poll() is None:
            proc.send_signal(sig)

    def poll(self) -> tuple[dict[str, dict], dict[str, bytes]]:
        """Each started child's pid, exit code (None: running), seconds since its last ping, whether it
        has pinged and said it is done; and the log bytes written since the last poll, by file name."""
        states = {}
        for name, c in self.children.items():
            if c.proc:
                states[name] = {"pid": c.proc.pid, "exitcode": c.proc.poll(), "silent_s": c.listener.silent_s(),
                                "pinged": c.listener.pinged, "done": c.listener.done}
        return states, self._new_logs()

    def stop(self) -> tuple[dict[str, dict], dict[str, bytes]]:
        """Kill what still runs (the supervisor has asked them to stop already), then the last poll; nothing of
        the run stays on the node: its store is unlinked, its directory removed."""
        for c in self.children.values():
            if c.proc and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        last = self.poll()
        while (more := self._new_logs()):  # a log larger than one chunk
            for name, data in more.items():
                last[1][name] = last[1].get(name, b"") + data
        for c in self.children.values():
            if c.listener:
                c.listener.close()
                c.listener = None
        self._remove()
        return last

    def _new_logs(self) -> dict[str, bytes]:
        new = {}
        for path in sorted(p for p in (self.run_dir / LOGS).iterdir() if p.suffix in (".jsonl", OUTPUT)):
            with open(path, "rb") as f:
                f.seek(self.shipped.get(path.name, 0))
                data = f.read(LOG_CHUNK)
            if data:
                new[path.name] = data
                self.shipped[path.name] = self.shipped.get(path.name, 0) + len(data)
        return new

    def _remove(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store.unlink()
            self.store = None
        shutil.rmtree(self.top, ignore_errors=True)


@dataclass
class RemoteChild(Child):
    """A child on another node: started, signalled and read through its node's host. A child of a lost
    node starts again on the host that replaces it (RayNodes.replace): a relay under that node's name."""

    host: Node | None = None

    def launch(self, argv: list[str]):
        if self.host.lost:
            self.host = self.host.owner.replace(self.host)
            if self.name.startswith("relay-"):
                self.name = f"relay-{self.host.node}"
        pid = self.host.call("start", self.name)
        self.argv = self.host.argvs[self.name]  # on its node, in that node's run directory
        return RemoteProcess(self, pid), RemoteListener(self.host, self.name, pid)


class RemoteProcess:
    """A remote child's process as the supervisor uses a Popen: its state is the node's last poll."""

    def __init__(self, child: RemoteChild, pid: int):
        self.child, self.host, self.name, self.pid, self.args = child, child.host, child.name, pid, child.argv
        self.returncode = None

    def poll(self) -> int | None:
        if self.returncode is None:
            state = self.host.states.get(self.name, {})
            if state.get("pid") == self.pid:
                self.returncode = state["exitcode"]
            if self.returncode is None and self.host.lost:  # its node is gone, and it with it
                self.returncode, self.child.lost = -signal.SIGKILL, True
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            self.host.call("signal", self.name, sig)
        except ConfigError:  # its node is lost: so is the process
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(POLL_S / 10)
            self.host.poll()
        return self.returncode


class RemoteListener:
    """A remote child's liveness as the node's last poll saw it, aged by the time since."""

    def __init__(self, host: Node, name: str, pid: int):
        self.host, self.name, self.pid = host, name, pid

    def _state(self) -> dict:
        state = self.host.states.get(self.name, {})
        return state if state.get("pid") == self.pid else {}  # not yet polled since it started

    @property
    def pinged(self) -> bool:
        return self._state().get("pinged", False)

    @property
    def done(self) -> bool:
        return self._state().get("done", False)

    def silent_s(self) -> float:
        return self._state().get("silent_s", 0.0) + time.monotonic() - self.host.polled_at

    def close(self) -> None:
        """The host closes its end when the child restarts or stops."""


class Node:
    """The driver's end of one node's host: its actor, its children's last states, its logs shipped here. A
    host that dies, or does not answer within CALL_TIMEOUT_S, counts as lost with its node."""

    def __init__(self, owner: RayNodes, actor, node_id: str, node: str, indices: list[int]):
        self.owner, self.actor, self.node_id, self.node, self.indices = owner, actor, node_id, node, indices
        self.ray = owner.ray
        self.states: dict[str, dict] = {}
        self.polled_at = time.monotonic()
        self.lost = False
        self.successor: Node | None = None  # the host its children moved to
        self.argvs: dict[str, list[str]] = {}  # its children's, by name

    def call(self, method: str, *args):
        """A method of the host, waited for; ConfigError if the node is lost."""
        try:
            return self._get(getattr(self.actor, method).remote(*args))
        except NodeLost as exc:
            raise ConfigError(f"Ray node {self.node_id} was lost ({exc})") from None

    def poll(self, ref=None) -> None:
        try:
            self.take(*self._get(ref or self.actor.poll.remote()))
        except NodeLost:
            pass

    def _get(self, ref):
        if self.lost:
            raise NodeLost("earlier")
        try:
            return self.ray.get(ref, timeout=CALL_TIMEOUT_S)
        except self.ray.exceptions.RayError as exc:  # it died, hung (GetTimeoutError) or failed
            self.lost = True
            self.ray.kill(self.actor)  # one that only hangs is gone too: its children die with it
            raise NodeLost(str(exc).strip().splitlines()[0]) from None

    def take(self, states: dict[str, dict], logs: dict[str, bytes]) -> None:
        """A poll's answer: the states kept, the log lines appended to the run's logs/, and a child's output
        (a refusal's one line) written where a local child's goes, on the supervisor's stderr."""
        self.states, self.polled_at = states, time.monotonic()
        for name, data in logs.items():
            if Path(name).name != name:  # only files of logs/, as the host sends
                continue
            if name.endswith(OUTPUT):
                sys.stderr.buffer.write(data)
                sys.stderr.flush()
            elif name.endswith(".jsonl"):
                fd = private.create(self.owner.run_dir / LOGS / name, append=True)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)


class NodeLost(Exception):
    """A node's host died or stopped answering."""


class RayNodes:
    """The driver's side: the cluster joined, the workers placed, the hosts started, polled, replaced and
    stopped."""

    def __init__(self, address: str, cfg: Config, resumed: bool = False):
        """Join the cluster and place the workers (`local`: the head's); --ray runs over tcp on the head's
        address, so that the other nodes reach its trainer and compressor. A `resumed` run's config.toml is
        what its processes read: it must say so already (ConfigError, one line, if not)."""
        self.ray, self.connected = raycluster.join(address)
        try:
            self.head = self.ray.get_runtime_context().get_node_id()
            alive = {n["NodeID"]: n for n in self.ray.nodes() if n["Alive"]}
            if self.head not in alive:
                raise ConfigError(f"--ray {address}: run hotprune run --ray on a node of the cluster (the head)")
            host = alive[self.head]["NodeManagerAddress"]
            if resumed:
                check_resumable(cfg, host)
            order = [self.head, *sorted(set(alive) - {self.head})]
            self.placed = spread(cfg.num_workers, order, cfg.relay.workers_per_node)
        except BaseException:
            self.leave()
            raise
        self.local = self.placed.pop(self.head, [])
        cfg.transport.kind, cfg.transport.host = "tcp", host
        self.nodes: list[Node] = []
        self.last_poll = 0.0

    def start(self, cfg: Config, run_dir: Path) -> tuple[list[RemoteChild], list[str]]:
        """A host on each other node with workers: (their children, their stores)."""
        self.run_id, self.run_dir, self.timeout_s = cfg.run_id, run_dir, cfg.supervisor.start_timeout_s
        self.files = run_files(run_dir)
        starting = [self._host(node_id, indices) for node_id, indices in self.placed.items()]
        children, stores = [], []
        for node, ref in starting:
            argvs, store = self._ready(node, ref)
            children += [RemoteChild(name, argv, host=node) for name, argv in argvs.items()]
            stores.append(store)
        return children, stores

    def _host(self, node_id: str, indices: list[int]):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: PLC0415 -- only with --ray

        pinned = NodeAffinitySchedulingStrategy(node_id, soft=False)
        name = node_name(node_id, [node.node for node in self.nodes])
        actor = self.ray.remote(NodeHost).options(num_cpus=self._cpus(indices), max_restarts=0,
                                                  scheduling_strategy=pinned).remote(
            self.run_id, self.files, name, indices)
        node = Node(self, actor, node_id, name, indices)
        self.nodes.append(node)
        return node, actor.table.remote()

    @staticmethod
    def _cpus(indices: list[int]) -> int:
        return math.ceil((len(indices) + 1) / raycluster.PROCESSES_PER_CPU)  # the relay and the workers

    def _ready(self, node: Node, ref) -> tuple[dict[str, list[str]], str]:
        """The host's table once it has started; else ConfigError, its node lost and its actor killed: a host
        still waiting for its node's CPUs would otherwise start later, and a call to it (stop's) wait on it."""
        try:
            argvs, store = self.ray.get(ref, timeout=self.timeout_s)
        except self.ray.exceptions.RayError as exc:
            node.lost = True
            self.ray.kill(node.actor)
            if isinstance(exc, self.ray.exceptions.GetTimeoutError):
                raise ConfigError(f"Ray node {node.node_id}: its host did not start within {self.timeout_s:g} s "
                                  f"(supervisor.start_timeout_s; it needs {self._cpus(node.indices)} free CPUs)"
                                  ) from None
            raise ConfigError(f"Ray node {node.node_id}: its host failed to start: "
                              f"{str(exc).strip().splitlines()[-1]}") from None
        node.argvs = argvs
        return argvs, store

    def replace(self, lost: Node) -> Node:
        """The host that takes over a lost node's workers (and a relay of its own): on a live node that
        hosts none, or else on the head; made once, when the first of them restarts."""
        node = lost
        while node.successor is not None:
            node = node.successor
        if not node.lost:
            return node
        taken = {n.node_id for n in self.nodes}  # hosting, or lost (Ray may not know yet: it still lists it)
        alive = sorted(n["NodeID"] for n in self.ray.nodes() if n["Alive"])
        for candidate in [n for n in alive if n not in taken and n != self.head] + [self.head]:
            successor, ref = self._host(candidate, node.indices)
            try:
                self._ready(successor, ref)
            except ConfigError:  # that node is going too (_ready counts it lost)
                continue
            node.successor = successor
            return successor
        raise ConfigError(f"Ray node {node.node_id} was lost and no other node could host its workers")

    def poll(self) -> None:
        """Every node's state and new logs, at most every POLL_S (one Ray call per node, all at once)."""
        if time.monotonic() - self.last_poll < POLL_S:
            return
        self.last_poll = time.monotonic()
        refs = [(node, node.actor.poll.remote()) for node in self.nodes if not node.lost]
        for node, ref in refs:
            node.poll(ref)

    def stop(self) -> None:
        """Each host stops what still runs, ships the rest of its logs and removes the run from its node;
        then the hosts go, and the connection this process made."""
        try:
            for node in self.nodes:
                if not node.lost:
                    try:
                        node.take(*node.call("stop"))
                    except ConfigError:
                        pass
                    self.ray.kill(node.actor)
        finally:
            self.leave()

    def leave(self) -> None:
        raycluster.leave(self.ray, self.connected)
        self.connected = False
