"""`hotprune run --ray`: one run's workers over the nodes of a Ray cluster, a relay per other node.

The slow test runs a real run on a 2-node loopback cluster (tests/raykit.py), started through the Python
API, stopped and resumed with --ray: the second node's worker and relay are real processes under that
node's raylet, the worker swaps from its node's own store, which only its relay writes, and its frozen
(SIGSTOP) worker and SIGKILLed relay are restarted through its node's host; another removes that node
mid-run. The fast ones run a node's host in this process (a real relay under it), and check the
placement, the naming of hosts, a run's outcome when a node goes as it ends, and what is refused before
anything starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import raykit  # noqa: I001 -- before anything imports ray: it keeps the cluster on loopback
import hotprune
from hotprune.commands.diagnose import diagnose
from hotprune.comms import curve
from hotprune.config import ConfigError, load_config
from hotprune.protocol.store_layout import check_node, segment_name
from hotprune.roles import ray_nodes
from hotprune.roles.ray_nodes import NodeHost, check_resumable, node_name, run_files, short_id, spread
from hotprune.runs import cleanup, private, rundir
from hotprune.roles.supervisor import Child, Supervisor, failures
from hotprune.runs.runlog import load
from tests.servicekit import HOTPRUNE, events, free_base_port, logged, of, processes_mentioning, run_cli, settings, \
    wait_for
from tests.test_relay import tcp_run

RELAYED = "workers on a relay's node run what it wrote"  # the diagnose check


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")  # the only reason these tests skip: the ray extra is not installed
    with raykit.loopback_cluster(nodes=2, cpus=2) as started:
        yield started


def test_workers_spread_evenly_by_default_or_fill_nodes_in_turn():
    nodes = ["head", "b", "c"]
    assert spread(5, nodes, 0) == {"head": [0, 1], "b": [2, 3], "c": [4]}
    assert spread(2, nodes, 0) == {"head": [0], "b": [1]}  # a node with none gets no host
    assert spread(5, nodes, 2) == {"head": [0, 1], "b": [2, 3], "c": [4]}
    assert spread(3, nodes, 3) == {"head": [0, 1, 2]}
    with pytest.raises(ConfigError, match="relay.workers_per_node = 1: 4 workers need 4 nodes, the Ray cluster has 3"):
        spread(4, nodes, 1)


def test_a_ray_node_id_names_a_relay_as_node_ids_must():
    assert short_id("7D309C0F267E234E2343DAD14AF43834B896664344D574C31AECF7ED") == "7d309c0f267e"


def test_a_second_host_on_one_node_gets_a_relay_and_store_name_of_its_own():
    """The workers of two lost nodes both move onto the head: each host there names its relay and store apart."""
    head = "7D309C0F267E234E2343DAD14AF43834B896664344D574C31AECF7ED"
    assert node_name(head, []) == "7d309c0f267e"
    assert node_name(head, ["aaaaaaaaaaaa", "7d309c0f267e"]) == "7d309c0f267e-2"
    assert node_name(head, ["7d309c0f267e", "7d309c0f267e-2"]) == check_node("7d309c0f267e-3")
    assert node_name("B" * 56, ["7d309c0f267e"]) == "bbbbbbbbbbbb"


def ended(name: str, exitcode: int, lost: bool = False) -> Child:
    return Child(name, [], exitcode=exitcode, starts=1, lost=lost)


def test_a_remote_process_lost_with_its_node_after_training_completed_is_no_failure_before_it_is_one():
    killed = -signal.SIGKILL
    after = [ended("trainer", 0), ended("compressor", 0), ended("relay-n1", killed, lost=True),
             ended("worker-1", killed, lost=True)]
    assert failures(after, []) == failures(after, ["worker-1"]) == (set(), ["relay-n1", "worker-1"])  # lost as killed
    before = [ended("trainer", 128 + signal.SIGTERM), ended("relay-n1", killed, lost=True)]  # the run stopped early
    assert failures(before, []) == ({"relay-n1"}, [])
    crashed = [ended("trainer", 0), ended("worker-1", killed), ended("worker-2", 1, lost=True)]  # killed here: a crash
    assert failures(crashed, ["compressor"]) == ({"worker-1", "compressor"}, ["worker-2"])


def test_a_stopped_run_resumes_with_ray_only_where_its_config_already_listens():
    cfg = load_config(None, ["transport.kind=tcp", "transport.host=10.0.0.5"])
    check_resumable(cfg, "10.0.0.5")
    with pytest.raises(ConfigError, match=r'^--resume --ray: \S+ listens on transport.host = "10.0.0.5", not this '
                                          r"Ray node's address 10.0.0.6: resume it on the node it ran on, or without "
                                          r"--ray$"):
        check_resumable(cfg, "10.0.0.6")
    cfg.transport.kind = "ipc"
    with pytest.raises(ConfigError, match=r'^--resume --ray: \S+ ran over transport.kind = "ipc", which cannot reach '
                                          r"other nodes: resume it without --ray$"):
        check_resumable(cfg, "10.0.0.5")


def test_the_apis_run_with_a_ray_address_where_no_cluster_answers_raises_the_commands_line_and_makes_no_run(tmp_path):
    pytest.importorskip("ray")
    config = load_config(None, settings(tmp_path, "apinocluster")[1::2])
    with pytest.raises(ConfigError, match=r"^--ray 127.0.0.1:1: no Ray cluster answers there \(Connection refused\)$"):
        hotprune.run(config, ray="127.0.0.1:1")
    assert not (tmp_path / "runs" / "apinocluster").exists()


def test_resume_with_ray_refused_is_one_line_and_leaves_what_the_stopped_run_left(tmp_path, capsys):
    """A run killed without a word leaves a socket file; `--resume --ray` refused (no cluster answers there)
    removes nothing and says only why: the stopped run is as it was for a resume that is not refused."""
    cfg = tcp_run(tmp_path, "leftover")
    left = cfg.run_dir / "sock" / "left.sock"
    with socket.socket(socket.AF_UNIX) as sock:  # closed unremoved, as a killed process leaves it
        sock.bind(str(left))
    code, out, err = run_cli(capsys, "run", "--resume", str(cfg.run_dir), "--ray", "127.0.0.1:1")
    assert code == 2 and not out and err.count("\n") == 1 and "no Ray cluster answers there" in err, err
    assert left.is_socket()
    Supervisor.resume(cfg.run_dir)  # one that goes on (here without --ray) removes it, and says so
    assert not left.exists() and capsys.readouterr().err == f"hotprune: removed {left}, left by the stopped run\n"


def test_ray_with_an_explicit_ipc_transport_is_one_line_before_anything_starts(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", "--ray", "127.0.0.1:1", *settings(tmp_path, "ipc", "transport.kind=ipc"))
    assert code == 2 and not out and err.count("\n") == 1, err
    assert '--ray runs over tcp: transport.kind = "ipc" (--set) cannot reach the other nodes' in err
    assert not (tmp_path / "runs").exists()


def test_a_ray_address_where_no_cluster_answers_is_one_line_and_makes_no_run(tmp_path, capsys):
    pytest.importorskip("ray")
    code, out, err = run_cli(capsys, "run", "--ray", "127.0.0.1:1", *settings(tmp_path, "nocluster"))
    assert code == 2 and not out and err.count("\n") == 1, err
    assert "--ray 127.0.0.1:1: no Ray cluster answers there (Connection refused)" in err
    assert not (tmp_path / "runs" / "nocluster").exists()


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed: `import ray` fails
    code, out, err = run_cli(capsys, "run", "--ray", "auto", *settings(tmp_path, "noray"))
    assert code == 2 and not out and err.count("\n") == 1, err
    assert "--ray needs Ray, an optional extra: pip install 'hotprune[ray]'" in err


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_over_two_nodes_swaps_from_each_nodes_relay_resumes_restarts_a_hung_or_killed_remote_one_leaves_nothing(
        cluster, tmp_path):
    """In sync mode a worker takes its share of each version and then waits for the next in its store: the
    run cannot end unless the second node's worker keeps swapping versions its node's relay wrote. The run
    starts through the Python API (`hotprune.run(config, ray=...)`), is stopped, and goes on with `hotprune run
    --resume RUN_DIR --ray`, whose remote processes are then frozen and killed."""
    run_id = f"spread{os.getpid()}"  # the node directories are found by it under the nodes' temp dir
    run_dir = tmp_path / "runs" / run_id
    remote = short_id(cluster.node_ids()[1])
    # 20 epochs (of about 0.3 s on a quiet machine): the resumed run still trains when its processes are frozen
    config = load_config(None, settings(tmp_path, run_id, "num_workers=2", "epochs=20", "mode=sync",
                                        f"transport.base_port={free_base_port()}", "supervisor.restart_backoff_s=0.2",
                                        "supervisor.hang_timeout_s=3")[1::2])
    with hotprune.run(config, background=True, ray=cluster.address) as handle:
        wait_for(lambda: len(logged(run_dir, "worker-1", "worker_swapped")) >= 2 or not handle.running, timeout=180,
                 what="two swaps of the remote worker")
        stopped = handle.stop()
    assert stopped.exit_code == 128 + signal.SIGINT, stopped.outcome
    before = {e["pid"] for name in ("worker-1", f"relay-{remote}") for e in events(run_dir, name)}

    with running([HOTPRUNE, "run", "--quiet", "--resume", str(run_dir), "--ray", cluster.address]) as proc:
        # While the run goes on, the remote processes' logs arrive here, from processes under the second node.
        swaps = wait_for(lambda: len(s := [e for e in logged(run_dir, "worker-1", "worker_swapped")
                                            if e["pid"] not in before]) >= 2 and s,
                         timeout=180, what="two swaps of the resumed run's remote worker")
        relay = [e for e in logged(run_dir, f"relay-{remote}", "relay_wrote") if e["pid"] not in before][0]
        assert cluster.node_of(swaps[0]["pid"]) is cluster.nodes[1]
        assert cluster.node_of(relay["pid"]) is cluster.nodes[1]
        os.kill(swaps[0]["pid"], signal.SIGSTOP)  # frozen: its pings stop, the supervisor kills it through its host
        os.kill(relay["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]

    supervisor = events(run_dir, "supervisor")
    assert {e["name"]: e["reason"] for e in of(supervisor, "process_restarting")} == {
        f"relay-{remote}": "exit -9", "worker-1": "hung"}
    assert [e["name"] for e in of(supervisor, "process_hung")] == ["worker-1"]
    started, resumed = of(supervisor, "run_started")
    [node_store] = started["node_stores"]
    assert node_store.endswith(f"@{remote}") and node_store.split("@")[0] != started["store"]  # its own segment
    assert resumed["resumed"] and resumed["node_stores"][0].endswith(f"@{remote}")  # the node's new host's

    relay_lines = events(run_dir, f"relay-{remote}")
    wrote = {e["version"] for e in of(relay_lines, "relay_wrote")}
    assert len({e["pid"] for e in of(relay_lines, "relay_wrote")}) == 3  # the relay, the resumed run's, its replacement
    assert wrote <= {e["version"] for e in of(events(run_dir, "compressor"), "weights_written")}
    assert all(line["node_id"] == remote for line in relay_lines)
    worker = events(run_dir, "worker-1")
    assert all(line["node_id"] == remote for line in worker)
    pids = list(dict.fromkeys(e["pid"] for e in worker))
    swapped = of(worker, "worker_swapped")
    assert len(pids) == 3 and {e["version"] for e in swapped} <= wrote
    assert any(e["pid"] == pids[2] for e in swapped)  # the restarted worker swapped too
    head_worker = events(run_dir, "worker-0")
    assert of(head_worker, "worker_swapped") and not any("node_id" in line for line in head_worker)

    checks = {c.name: c for c in diagnose(load(run_dir))}
    assert all(c.status != "FAIL" for c in checks.values()), [c for c in checks.values() if c.status == "FAIL"]
    assert f"worker-1 on {remote}" in checks[RELAYED].evidence

    # Nothing of the run is left on either node: no process, no segment, no node directory.
    wait_for(lambda: not processes_mentioning(run_id), timeout=10, what="the run's processes to exit")
    assert not list(Path("/dev/shm").glob(f"hotprune-{run_id}-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"hotprune-node-*/{run_id}"))


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_busy_past_supervisor_start_timeout_is_refused_at_once_and_leaves_nothing(
        cluster, tmp_path, capsys, monkeypatch):
    """The second node's host needs both its CPUs (its relay and 2 workers), one of which an actor holds:
    that host never starts. The refusal comes after supervisor.start_timeout_s, not after a further wait on
    that host when the run is undone (the wait for an answer from a running host is made 10 minutes long
    here: the refusal must not depend on it)."""
    import ray

    monkeypatch.setattr(ray_nodes, "CALL_TIMEOUT_S", 600.0)
    run_id = f"busy{os.getpid()}"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # the supervisor sets its own
    cluster.connect()  # the run joins this process's connection: `hotprune run --ray` through the Python API
    try:
        busy = ray.remote(Busy).options(num_cpus=1, resources={"node1": 1}).remote()
        ray.get(busy.ping.remote(), timeout=60)
        capsys.readouterr()  # what connecting printed (Ray's logger may hold an earlier test's closed stderr)
        began = time.monotonic()
        code, out, err = run_cli(capsys, "run", "--quiet", "--ray", cluster.address,
                                 *settings(tmp_path, run_id, "num_workers=4", "supervisor.start_timeout_s=2",
                                           f"transport.base_port={free_base_port()}"))
        took = time.monotonic() - began
        ray.kill(busy)
    finally:
        cluster.disconnect()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 2 and err.count("\n") == 1, err
    assert f"Ray node {cluster.node_ids()[1]}: its host did not start within 2 s" in err
    assert took < 120, f"the refusal took {took:.0f} s"
    assert not (tmp_path / "runs" / run_id).exists()
    assert not list(Path("/dev/shm").glob(f"hotprune-{run_id}-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"hotprune-node-*/{run_id}"))


class Busy:
    def ping(self) -> int:
        return 1


@pytest.mark.slow
@pytest.mark.ray
def test_the_workers_of_a_lost_node_start_again_on_a_host_elsewhere_and_the_run_completes(cluster, tmp_path):
    """The second node dies mid-run (its raylet and everything on it killed): its relay and worker count as
    crashed and start again under a new host, on the head (the only node left), with a relay and store of
    the head's node id; the run still completes. It removes a node: the tests after it add one."""
    run_id = f"lost{os.getpid()}"  # 30 epochs: on a quiet machine 8 ended before the node was gone
    run_dir = tmp_path / "runs" / run_id
    lost, head = short_id(cluster.node_ids()[1]), short_id(cluster.node_ids()[0])
    argv = [HOTPRUNE, "run", "--quiet", "--ray", cluster.address,
            *settings(tmp_path, run_id, "num_workers=2", "epochs=30", "mode=sync",
                      f"transport.base_port={free_base_port()}", "supervisor.restart_backoff_s=0.2")]
    try:
        with running(argv) as proc:
            wait_for(lambda: len(logged(run_dir, "worker-1", "worker_swapped")) >= 2, timeout=180,
                     what="two swaps of the remote worker")
            cluster.remove_node(cluster.nodes[1])
            out, err = proc.communicate(timeout=240)
    finally:
        remove_what_a_lost_node_left(run_dir, lost)
    assert proc.returncode == 0, err[-3000:]

    supervisor = events(run_dir, "supervisor")
    assert sorted(e["name"] for e in of(supervisor, "process_restarting")) == [f"relay-{lost}", "worker-1"]
    assert of(supervisor, "run_finished")[0]["lost"] == []  # lost while training: restarted, not forgiven
    assert f"relay-{head}" in [e["name"] for e in of(supervisor, "process_started")]
    moved = [e for e in of(events(run_dir, "worker-1"), "worker_swapped") if e["node_id"] == head]
    assert moved and {e["version"] for e in moved} <= {e["version"] for e in logged(run_dir, f"relay-{head}",
                                                                                   "relay_wrote")}
    checks = {c.name: c for c in diagnose(load(run_dir))}
    assert all(c.status != "FAIL" for c in checks.values()), [c for c in checks.values() if c.status == "FAIL"]
    assert not list(Path("/dev/shm").glob(f"hotprune-{run_id}-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"hotprune-node-*/{run_id}"))  # the head's host's is gone


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_lost_while_a_completed_run_stops_is_logged_as_lost_and_the_run_exits_0(cluster, tmp_path):
    """The remote worker is frozen (SIGSTOP, hang detection off: it is not restarted) while the head's worker
    trains the run to its end (async); as the supervisor waits for the frozen worker to stop, its node is
    removed, and the worker goes with it. Training had completed: that is no failure. A second node is added
    first where the lost-node test took it."""
    if len(cluster.nodes) == 1:
        cluster.add_node(cpus=2)
        cluster.cluster.wait_for_nodes()
    run_id = f"late{os.getpid()}"
    run_dir = tmp_path / "runs" / run_id
    remote = short_id(cluster.node_ids()[1])
    argv = [HOTPRUNE, "run", "--quiet", "--ray", cluster.address,
            *settings(tmp_path, run_id, "num_workers=2", "epochs=20", "mode=async",
                      f"transport.base_port={free_base_port()}", "supervisor.hang_timeout_s=0")]
    frozen = None
    try:
        with running(argv) as proc:
            frozen = wait_for(lambda: logged(run_dir, "worker-1", "worker_swapped"), timeout=180,
                              what="a swap of the remote worker")[0]["pid"]
            assert cluster.node_of(frozen) is cluster.nodes[1]
            os.kill(frozen, signal.SIGSTOP)
            wait_for(lambda: [e for e in logged(run_dir, "supervisor", "process_exited") if e["name"] == "trainer"],
                     timeout=180, what="the trainer to complete")
            cluster.remove_node(cluster.nodes[1])
            out, err = proc.communicate(timeout=240)
    finally:
        if frozen:  # a stopped process does not act on its parent-death SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGKILL)
        remove_what_a_lost_node_left(run_dir, remote)
    assert proc.returncode == 0, err[-3000:]
    finished = logged(run_dir, "supervisor", "run_finished")[0]
    assert finished["outcome"] == "completed" and "worker-1" in finished["lost"], finished
    assert not of(events(run_dir, "supervisor"), "process_restarting")


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen]:
    """`argv` running, its output piped; killed at the end if it still runs (a test that failed midway)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # its children stop on their parent-death signal; one that does not stop keeps the
            proc.wait()  # pipes open: they are not read to their end
        proc.stdout.close()
        proc.stderr.close()


def remove_what_a_lost_node_left(run_dir: Path, node: str) -> None:
    """What a lost node's host could not remove, killed with it (on a real cluster, gone with that machine):
    its directory and store; once the run's processes have exited."""
    wait_for(lambda: not processes_mentioning(run_dir.name), timeout=30, what="the run's processes to exit")
    for started in logged(run_dir, "supervisor", "process_started"):
        if started["name"] == f"relay-{node}":
            shutil.rmtree(Path(started["argv"][started["argv"].index("--run-dir") + 1]).parent, ignore_errors=True)
    for segment in Path("/dev/shm").glob(f"hotprune-{run_dir.name}-*@{node}"):
        segment.unlink()


def test_a_node_host_runs_its_processes_in_a_private_directory_ships_each_log_byte_once_and_leaves_nothing(
        tmp_path):
    """NodeHost is a plain class (Ray only places it): here in this process, with a real relay process."""
    cfg = tcp_run(tmp_path)
    host = NodeHost(cfg.run_id, run_files(cfg.run_dir), "n1", [0])
    top, run_dir = host.top, host.run_dir
    shipped: dict[str, bytes] = {}  # by file, all that each poll sent
    try:
        assert run_dir.name == cfg.run_id and stat.S_IMODE(top.stat().st_mode) == 0o700
        private.check(run_dir)
        for key in curve.keys_dir(cfg.run_dir).iterdir():  # the same keys, as private as on the head
            copy = curve.keys_dir(run_dir) / key.name
            assert copy.read_bytes() == key.read_bytes() and copy.stat().st_mode == key.stat().st_mode
        argvs, store = host.table()
        assert store == segment_name(run_dir, "n1") and (Path("/dev/shm") / store).exists()
        assert set(argvs) == {"relay-n1", "worker-0"}
        assert all(argv[argv.index("--run-dir") + 1] == str(run_dir) for argv in argvs.values())

        def ship(states: dict, logs: dict[str, bytes]) -> dict:
            for name, data in logs.items():
                shipped[name] = shipped.get(name, b"") + data
            return states

        def relay() -> dict:
            return ship(*host.poll())["relay-n1"]

        first = host.start("relay-n1")
        wait_for(lambda: relay()["pinged"] and b"socket_opened" in shipped.get("relay-n1.jsonl", b""), timeout=60,
                 what="the relay's first ping and lines")
        host.signal("relay-n1", signal.SIGTERM)
        assert wait_for(lambda: relay()["exitcode"], timeout=30, what="the relay to stop") == 128 + signal.SIGTERM
        second = host.start("relay-n1")
        wait_for(lambda: (state := relay())["pid"] == second and state["pinged"], timeout=60,
                 what="the restarted relay's first ping")
        (run_dir / "config.toml").write_text("epochs = [\n")  # a worker started now refuses, in one line
        host.start("worker-0")
        refused = wait_for(lambda: ship(*host.poll())["worker-0"]["exitcode"], timeout=60, what="the worker's refusal")
        assert refused == 2
        states = ship(*host.stop())  # the relay still runs: killed
        assert states["relay-n1"]["exitcode"] == -signal.SIGKILL
        output = shipped["worker-0.out"].decode()  # what it printed, for the supervisor's terminal
        assert output.startswith("hotprune worker: error: ") and output.count("\n") == 1, output
    finally:
        if top.exists():
            host.stop()
    lines = [json.loads(line) for line in shipped["relay-n1.jsonl"].decode().splitlines()]  # each byte once, in order
    assert {line["pid"] for line in lines} == {first, second} and all(line["node_id"] == "n1" for line in lines)
    assert not top.exists() and not (Path("/dev/shm") / store).exists()
    assert not processes_mentioning(str(run_dir))


def test_a_node_host_removes_what_dead_hosts_left_on_its_node_and_nothing_else(tmp_path, monkeypatch):
    """A host SIGKILLed with every process of its own (its resource tracker too: a lost node) leaves its
    directory and store; the next host on that node removes them, and keeps a live run's host directory and
    one without a host's pid file (a host starting, or not hotprune's)."""
    cfg = tcp_run(tmp_path)
    temp = tmp_path / "tmp"
    temp.mkdir()
    host = (f"from pathlib import Path; import time; from hotprune.roles.ray_nodes import NodeHost, run_files; "
            f"h = NodeHost({cfg.run_id!r}, run_files(Path({str(cfg.run_dir)!r})), 'n1', [0]); "
            "print(h.top, h.store.name, flush=True); time.sleep(600)")
    dead = subprocess.Popen([sys.executable, "-c", host], env={**os.environ, "TMPDIR": str(temp)},
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        top, store = dead.stdout.readline().split()
    finally:
        os.killpg(dead.pid, signal.SIGKILL)
        dead.wait()
        dead.stdout.close()
    assert Path(top).is_dir() and (Path("/dev/shm") / store).exists()
    live, starting = temp / "hotprune-node-live" / cfg.run_id, temp / "hotprune-node-starting" / cfg.run_id
    for kept in (live, starting):
        private.make_dirs(kept, private.PRIVATE_DIR)
    cleanup.record_supervisor(live)  # this process's pid: alive
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    host = NodeHost(cfg.run_id, run_files(cfg.run_dir), "n2", [1])
    try:
        assert not Path(top).exists() and not (Path("/dev/shm") / store).exists()
        assert live.is_dir() and starting.is_dir() and host.top.parent == temp
        said = host.poll()[1]["host.out"].decode()
        assert said == f"hotprune: removed {top} on node n2, left by a dead run's host\n"
    finally:
        host.stop()
    assert sorted(p.name for p in temp.iterdir()) == ["hotprune-node-live", "hotprune-node-starting"]


def test_a_runs_directory_named_like_a_host_s_with_one_dead_run_in_it_is_not_removed(tmp_path):
    """A host's directory is made private (mkdtemp: 0700), a runs directory open to read (0755): one named
    hotprune-node-* holding a single run whose supervisor is dead (not yet pointed to by runs/latest) is the
    user's records, not a dead host's, and stays."""
    temp = tmp_path / "tmp"
    cfg = load_config(None, [f"runs_dir={json.dumps(str(temp / 'hotprune-node-mine'))}", "run_id=stopped"])
    run_dir = rundir.prepare(cfg, check_ports=False)
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from hotprune.runs import cleanup; "
                    "cleanup.record_supervisor(Path(sys.argv[1]))", str(run_dir)], check=True, timeout=60)
    assert stat.S_IMODE(run_dir.parent.stat().st_mode) == private.SHARED_DIR and not cleanup.run_pids(run_dir)
    assert ray_nodes.remove_dead_hosts(temp) == [] and (run_dir / "config.toml").is_file()
    run_dir.parent.chmod(private.PRIVATE_DIR)  # as a host makes its directory: then it is one
    assert ray_nodes.remove_dead_hosts(temp) == [run_dir.parent] and not run_dir.parent.exists()
