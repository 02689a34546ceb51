"""`hotprune experiments --ray`: a grid's cells as Ray tasks on a 2-node cluster on loopback (tests/raykit.py),
their run directories back through the tasks' results; and, without a cluster, how a cell's archive is
unpacked (nothing outside its run directory, no link) and what is refused before anything connects."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import tomllib
from pathlib import Path

import pytest

from tests import raykit  # noqa: I001 -- before anything imports ray: it keeps the cluster on loopback
import hotprune as hotprune_api
from hotprune.commands import experiments, ray_grid
from hotprune.config import ConfigError, load_config
from hotprune.runs import private
from hotprune.runs.runlog import load
from tests.servicekit import SMALL, alive, logged, processes_mentioning, run_cli, wait_for
from tests.test_experiments import GRID, NAMES

SEEDS = [1]  # of the grid of test_experiments (two variants): a cell per node
TINY = [*SMALL, "epochs=3"]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")  # the only reason these tests skip: the ray extra is not installed
    with raykit.loopback_cluster(nodes=2, cpus=2) as started:  # a cell reserves 2 CPUs: one per node at once
        yield started


@pytest.fixture(scope="module")
def grid(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("raygrid")
    (root / "two.toml").write_text(GRID)
    lines = []
    result = hotprune_api.experiments(grid=root / "two.toml", seeds=SEEDS, settings=TINY, root=root, jobs=2,
                                      log=lines.append, ray=cluster.address)
    return root, result, lines


@pytest.mark.slow
@pytest.mark.ray
def test_a_grid_on_two_nodes_comes_back_whole_and_tables_as_here(cluster, grid):
    root, result, lines = grid
    base = root / "pruning_two"
    assert result.failed == 0 and result.results == base / "results.md", lines
    nodes = {line.split("ran on Ray node ")[1].split()[0] for line in lines if "ran on Ray node" in line}
    assert nodes == set(cluster.node_ids())  # a cell on each node, the head's and the other's
    for name in NAMES:
        run_dir = base / name / "s1"
        assert load(run_dir).summary["completed"]
        private.check(run_dir)  # this user's, 0700, no link
        # it ran in a temporary directory of its node, gone since: it came here as the task's result
        node_dir = Path(tomllib.loads((run_dir / "config.toml").read_text())["runs_dir"])
        assert node_dir.name.startswith("hotprune-cell-") and not node_dir.exists(), node_dir
        assert "console.txt" in {p.name for p in run_dir.iterdir()} and (run_dir / "logs" / "trainer.jsonl").is_file()
    assert sum("MB back)" in line for line in lines) == len(NAMES)
    rows = list(csv.DictReader(open(base / "results.csv")))
    assert [r["variant"] for r in rows] == NAMES and all(r["seeds"] == "1" for r in rows)
    assert [r["variant"] for r in result.rows] == NAMES and result.rows[0]["vs_first"] == "reference"
    assert float(rows[0]["training_sparsity"]) == pytest.approx(0.8, abs=1e-3) and float(rows[1]["params_total"]) > 0
    assert "1 seed(s) per variant (1); ppo on CartPole-v1" in result.results.read_text()


@pytest.mark.slow
@pytest.mark.ray
def test_a_finished_grid_run_again_on_the_cluster_runs_nothing(cluster, grid):
    root, _, _ = grid
    before = {p: p.stat().st_mtime_ns for p in (root / "pruning_two").rglob("*.jsonl")}
    lines = []
    result = hotprune_api.experiments(grid=root / "two.toml", seeds=SEEDS, settings=TINY, root=root,
                                      log=lines.append, ray=cluster.address)
    assert result.failed == 0 and [r["seeds"] for r in result.rows] == [1, 1]
    assert [line for line in lines if "done already" in line] == [
        f"{n} seed 1: done already ({root / 'pruning_two' / n / 's1'})" for n in NAMES]
    assert not [line for line in lines if "ran on Ray node" in line or "exit" in line]
    assert {p: p.stat().st_mtime_ns for p in (root / "pruning_two").rglob("*.jsonl")} == before


@pytest.mark.slow
@pytest.mark.ray
def test_a_cell_whose_node_is_lost_runs_again_on_another_and_its_first_run_stops(cluster, tmp_path_factory):
    """--ray-shared too: the cells write on a path every node sees and the run is moved into the grid. The
    head is kept busy, so that the cell starts on a node this test can take away."""
    import ray

    cluster.add_node(2)
    cluster.connect()  # this process as the driver: the grid uses its connection
    try:
        hold = ray.remote(num_cpus=2, resources={"node0": 1})(Hold).remote()
        ray.get(hold.ping.remote())
        with pytest.raises(ConfigError, match=f"--ray 127.0.0.1:1: this process is connected to the Ray cluster at "
                                              f"{cluster.address}"):  # a driver joins one cluster
            hotprune_api.experiments("basic", root=tmp_path_factory.mktemp("other"), ray="127.0.0.1:1")
        _lose_a_node(cluster, tmp_path_factory.mktemp("lost"))  # short: ipc socket paths are within 107 bytes
    finally:
        cluster.disconnect()


def _lose_a_node(cluster, tmp_path: Path) -> None:
    (tmp_path / "two.toml").write_text(GRID)
    shared, root, lines, outcome = tmp_path / "shared", tmp_path / "root", [], []
    staging = shared / "pruning_two" / "both_pruned" / "s1"
    grid = threading.Thread(target=lambda: outcome.append(hotprune_api.experiments(
        grid=tmp_path / "two.toml", seeds=SEEDS, settings=[*SMALL, "epochs=5"], root=root, log=lines.append,
        ray=cluster.address, ray_shared=shared, variants=["both_pruned"])))
    grid.start()
    wait_for(lambda: logged(staging, "trainer", "epoch") or not grid.is_alive(), timeout=120, what="the first epoch")
    assert grid.is_alive(), (lines, outcome)  # the cell has not failed
    first = processes_mentioning(str(staging.parent))  # the run and its processes
    lost = cluster.node_of(first[0])
    assert lost is not None and lost is not cluster.nodes[0]
    ray_workers = {raykit.parent_of(pid) for pid in first} - {*first, None}  # the cell's Ray worker
    # The run's roles held (SIGSTOP), so that it cannot end, and its result reach the grid, before its node
    # goes; each is in a session of its own. Not its supervisor: a stopped process in the Ray worker's
    # process group, orphaned when the raylet dies, gets SIGHUP, and the run would end with the worker alive.
    held = [pid for pid in first if os.getpgid(pid) == pid]
    signal_all(held, signal.SIGSTOP)
    cluster.remove_node(lost)  # its raylet and Ray workers SIGKILLed, as when a machine goes
    wait_for(lambda: not any(alive(pid) for pid in ray_workers), timeout=30, what="the lost node's Ray worker to go")
    signal_all(held, signal.SIGCONT)  # the supervisor's stop, pending, now acts
    wait_for(lambda: not any(alive(pid) for pid in first), timeout=30, what="the lost node's run to stop")
    grid.join(timeout=300)
    assert not grid.is_alive() and outcome[0].failed == 0, "\n".join(lines)
    run_dir = root / "pruning_two" / "both_pruned" / "s1"
    assert load(run_dir).summary["completed"] and not staging.exists()
    assert list(staging.parent.glob("s1.failed-*")), "the lost run's directory, set aside"
    ran = [line for line in lines if "ran on Ray node" in line]  # once, on a node still there
    assert len(ran) == 1 and ran[0].endswith(f"(moved here from {staging})") and lost.node_id not in ran[0], lines


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class Hold:
    def ping(self) -> int:
        return 1


# --- without a cluster ------------------------------------------------------------------------------


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed: `import ray` fails
    code, out, err = run_cli(capsys, "experiments", "--experiment", "basic", "--root", str(tmp_path), "--ray", "auto")
    assert code == 2 and not out and err.count("\n") == 1, err
    assert "--ray needs Ray, an optional extra: pip install 'hotprune[ray]'" in err


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "--ray 127.0.0.1:1: no Ray cluster answers there (Connection refused)"),
    ("head", "--ray takes a cluster head's HOST:PORT (or ray://HOST:PORT, or auto), got 'head'"),
])
def test_an_address_where_no_cluster_answers_is_one_line_at_once(tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    code, out, err = run_cli(capsys, "experiments", "--experiment", "basic", "--root", str(tmp_path), "--ray", address)
    assert code == 2 and not out and err.count("\n") == 1 and message in err, err


def test_a_grid_reading_its_own_directory_needs_its_root_under_the_shared_path(tmp_path):
    with pytest.raises(ConfigError, match=r"grid lth has runs that read files of its own directory \(\{base\}\)"):
        hotprune_api.experiments("lth", root=tmp_path, ray="127.0.0.1:1")  # refused before connecting
    with pytest.raises(ConfigError, match="--ray-shared names a path every node of a Ray cluster sees: it needs"):
        hotprune_api.experiments("basic", root=tmp_path, ray_shared=tmp_path)
    assert not any(tmp_path.iterdir())


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "node" / "s1"
    (run_dir / "logs").mkdir(parents=True)
    run_dir.chmod(0o700)
    (run_dir / "logs" / "trainer.jsonl").write_text('{"event": "epoch"}\n')
    (run_dir / "config.toml").write_text("epochs = 3\n")
    return run_dir


def test_a_packed_run_directory_unpacks_as_it_was_and_only_where_it_is_told(tmp_path):
    run_dir = _run_dir(tmp_path)
    target = tmp_path / "grid" / "dense" / "s1"
    ray_grid.unpack(ray_grid.pack(run_dir), target)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == \
        sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert (target / "logs" / "trainer.jsonl").read_text() == '{"event": "epoch"}\n'
    private.check(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["s1"]  # its incoming directory is gone


def _archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o700 if kind == tarfile.DIRTYPE else 0o644
    return info, b"" if kind != tarfile.REGTYPE else b"x"


@pytest.mark.parametrize("member, fault", [
    (_member("s1/../../escaped"), "is not inside s1/"),
    (_member("/tmp/escaped"), "is not inside s1/"),
    (_member("other/file"), "is not inside s1/"),
    (_member("s1/logs", tarfile.SYMTYPE, "/etc"), "is a link or a special file"),
    (_member("s1/config.toml", tarfile.LNKTYPE, "/etc/passwd"), "is a link or a special file"),
    (_member("s1/fifo", tarfile.FIFOTYPE), "is a link or a special file"),
])
def test_an_archive_with_anything_outside_its_run_directory_or_a_link_is_refused_whole(tmp_path, member, fault):
    archive = _archive(_member("s1", tarfile.DIRTYPE), _member("s1/kept.txt"), member)
    target = tmp_path / "grid" / "s1"
    with pytest.raises(ray_grid.UnsafeArchive, match=fault):
        ray_grid.unpack(archive, target)
    assert list((tmp_path / "grid").iterdir()) == []  # nothing kept, not even the safe members
    assert not Path(tempfile.gettempdir(), "escaped").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("elsewhere", [False, True])
def test_a_run_on_the_shared_path_moves_into_the_grid_with_the_sockets_a_killed_run_left(tmp_path, elsewhere):
    """Into a grid directory not made yet, from the same filesystem (a rename) or another (/dev/shm: a
    copy, which a socket file would break)."""
    import socket

    shm = Path("/dev/shm")
    if elsewhere and not shm.is_dir():
        pytest.skip("no /dev/shm: no second filesystem to copy from")
    base = Path(tempfile.mkdtemp(dir=shm)) if elsewhere else tmp_path
    try:
        staging = _run_dir(base)
        (staging / "sock").mkdir()
        left = socket.socket(socket.AF_UNIX)
        left.bind(str(staging / "sock" / "weights"))  # as a run killed with its node leaves it
        left.close()
        run_dir = tmp_path / "grid" / "pruning_two" / "dense" / "s1"
        ray_grid.moved_here(staging, run_dir)
        assert not staging.exists() and not (run_dir / "sock").exists()
        assert (run_dir / "logs" / "trainer.jsonl").read_text() == '{"event": "epoch"}\n'
    finally:
        if elsewhere:
            shutil.rmtree(base)


def test_a_cell_reserves_a_cpu_for_every_two_of_its_processes():
    assert ray_grid.resources(load_config(None, []))["num_cpus"] == experiments.CORES_PER_RUN  # 4 processes
    assert ray_grid.resources(load_config(None, ["num_workers=1"]))["num_cpus"] == 2  # 3: rounded up
    assert ray_grid.resources(load_config(None, ["num_workers=6"]))["num_cpus"] == 4


def test_a_cell_on_cuda_reserves_a_gpu_and_one_on_auto_or_cpu_none():
    assert [ray_grid.resources(load_config(None, [f"device={d}"]))["num_gpus"] for d in ("cuda", "auto", "cpu")] \
        == [1, 0, 0]
