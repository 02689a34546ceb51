"""A Ray cluster of several nodes on this one machine, every byte of it on loopback, for the tests that need one.

Import this module before anything imports ray, then skip on ray alone:

    from tests import raykit
    ray = pytest.importorskip("ray")  # the tests skip only where the ray extra is not installed

    with raykit.loopback_cluster(nodes=2, cpus=4) as cluster:
        ... cluster.address ...       # "127.0.0.1:PORT": hotprune's --ray, or ray.init(address=...)
        cluster.connect()             # this process as the cluster's driver (disconnected on exit)
        ... resources={"node1": 1}   # a task or actor pinned to the second node (node0 is the head)

Ray advertises and dials the machine's own non-loopback address unless told otherwise: ray reads
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported (hence: import this first), and every node and
`ray.init` get node_ip_address 127.0.0.1. RAY_USAGE_STATS_ENABLED=0: a test reports to no one. Each
cluster keeps its sessions, sockets and its "current cluster" address file in its own short temporary
directory (RAY_TMPDIR, short: Unix socket paths are limited to 107 bytes), not in the /tmp/ray other
users' clusters share, and on exit stops its own nodes (`Cluster.shutdown`) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

LOOPBACK = "127.0.0.1"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
NODE_MEMORY = 100 * 1024 * 1024  # each node's object store: a test's objects are small


@dataclass
class LoopbackCluster:
    """A started cluster: `address` is its head's (GCS) address; `nodes` the Ray nodes, head first, node i
    carrying the custom resource `node<i>` (a large count, so it never limits)."""

    address: str
    cluster: Any  # ray.cluster_utils.Cluster
    nodes: list = field(default_factory=list)
    temp_dir: Path | None = None
    connected: bool = False

    def connect(self) -> None:
        """This process as the cluster's driver, until the cluster stops."""
        import ray

        ray.init(address=self.address, _node_ip_address=LOOPBACK, log_to_driver=False)
        self.connected = True

    def disconnect(self) -> None:
        """This process no longer the cluster's driver (the cluster goes on)."""
        import ray

        ray.shutdown()
        self.connected = False

    def node_ids(self) -> list[str]:
        """The nodes' Ray node ids (hex), head first."""
        return [node.node_id for node in self.nodes]

    def node_of(self, pid: int) -> Any:
        """The node whose raylet started process `pid` (a Ray worker, or anything a worker started), or None."""
        raylets = {node.all_processes["raylet"][0].process.pid: node for node in self.nodes}
        while pid is not None and pid > 1:
            if pid in raylets:
                return raylets[pid]
            pid = parent_of(pid)
        return None

    def add_node(self, cpus: int, **node_args) -> Any:
        """One more node (the custom resource `node<i>`, i its index), started and registered."""
        node = self.cluster.add_node(node_ip_address=LOOPBACK, num_cpus=cpus, object_store_memory=NODE_MEMORY,
                                     resources={f"node{len(self.nodes)}": 1000, **node_args.pop("resources", {})},
                                     **node_args)
        self.nodes.append(node)
        return node

    def remove_node(self, node: Any) -> None:
        """Kill one of this cluster's non-head nodes (its raylet and the workers on it): a lost machine."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)


def parent_of(pid: int) -> int | None:
    """Process `pid`'s parent (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


@contextlib.contextmanager
def loopback_cluster(nodes: int = 2, cpus: int = 2, connect: bool = False,
                     timeout_s: float = 60.0) -> Iterator[LoopbackCluster]:
    """`nodes` Ray nodes of `cpus` logical CPUs each on 127.0.0.1 (the first is the head, without a
    dashboard), all registered before it yields; `connect`: this process is its driver. Stopped on exit,
    with its temporary directory."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    if ray_constants.ENABLE_RAY_CLUSTER:  # imported before this module set the variable: it would dial out
        raise RuntimeError("ray was imported before tests.raykit: import tests.raykit first, so that the "
                           "cluster stays on loopback")
    saved = os.environ.get("RAY_TMPDIR")
    temp_dir = Path(tempfile.mkdtemp(prefix="hpray", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(temp_dir)
    started = None
    try:
        t0 = time.monotonic()
        cluster = Cluster(shutdown_at_exit=True)
        started = LoopbackCluster(address="", cluster=cluster, temp_dir=temp_dir)
        started.add_node(cpus, include_dashboard=False)
        for _ in range(nodes - 1):
            started.add_node(cpus)
        cluster.wait_for_nodes(timeout=timeout_s)
        started.address = cluster.address
        print(f"raykit: {nodes} nodes at {started.address} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if connect:
            started.connect()
        yield started
    finally:
        if started is not None:
            if started.connected or ray.is_initialized():  # this process's driver: the cluster goes next
                ray.shutdown()
            started.cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)
