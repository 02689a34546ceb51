"""Telling a dead run's leftovers from a live run's, and the start-time checks that use it: real
processes, real shared memory, real socket files."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import _posixshmem
import pytest

from hotprune.runs import cleanup, rundir
from hotprune.config import ConfigError, load_config
from tests.servicekit import run_cli

ROOT = Path(__file__).resolve().parent.parent


def sleeper(*argv: str, code: str = "", cwd: Path | None = None) -> subprocess.Popen:
    """A python process that runs `code`, says ready and sleeps; `argv` ends up in its command line."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nprint('ready', flush=True)\nimport time; time.sleep(60)",
                             *argv], stdout=subprocess.PIPE, text=True, cwd=cwd or ROOT)
    assert proc.stdout.readline() == "ready\n"
    return proc


def stopped(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def make_segment(path: Path) -> Path:
    """A segment as a killed run leaves it: created, and no process holds it."""
    fd = _posixshmem.shm_open(f"/{path.name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    return path


@pytest.fixture
def run_id(tmp_path):
    """A run id whose segment (in tmp_path/runs) is gone afterwards."""
    name = f"t{os.getpid()}-{secrets.token_hex(3)}"
    yield name
    cleanup.segment_path(tmp_path / "runs" / name).unlink(missing_ok=True)


@pytest.fixture
def seg(tmp_path, run_id) -> Path:
    """The segment of the run `run_id` in tmp_path/runs."""
    return cleanup.segment_path(tmp_path / "runs" / run_id)


def config(tmp_path: Path, run_id: str, *overrides: str):
    return load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", f"run_id={run_id}", *overrides])


@pytest.mark.parametrize("holds", ["mapped", "open"])
def test_a_segment_is_in_use_while_a_process_holds_it_and_stale_once_it_is_gone(seg, holds):
    path = make_segment(seg)
    code = (f"import _posixshmem, mmap, os\nfd = _posixshmem.shm_open('/{path.name}', os.O_RDWR, mode=0o600)\n"
            + ("m = mmap.mmap(fd, 4096)\nos.close(fd)" if holds == "mapped" else ""))
    holder = sleeper(code=code)
    assert cleanup.segment_users(path) == [holder.pid]
    with pytest.raises(cleanup.SegmentKept, match=f"in use by a live run \\(pid {holder.pid}\\)"):
        cleanup.remove_stale_segment(path)
    assert path.exists()
    stopped(holder)
    assert cleanup.segment_users(path) == []
    assert cleanup.remove_stale_segment(path) and not path.exists()
    assert not cleanup.remove_stale_segment(path)  # nothing left to remove


def test_a_process_started_with_run_dir_belongs_to_that_run_wherever_it_was_started(tmp_path, run_id, seg):
    (tmp_path / "runs" / run_id).mkdir(parents=True)
    worker = sleeper("--run-dir", f"runs/{run_id}", cwd=tmp_path)  # relative to its own working directory
    by_hand = sleeper(f"--run-dir={tmp_path / 'runs' / run_id}")
    try:
        assert cleanup.run_pids(tmp_path / "runs" / run_id) == sorted([worker.pid, by_hand.pid])
        assert cleanup.run_pids(tmp_path / "runs" / "other") == []
        assert cleanup.segment_users(seg) == sorted([worker.pid, by_hand.pid])  # it would attach by name
        # The same run id in another runs_dir is another run, with a segment of its own.
        other = cleanup.segment_path(tmp_path / "elsewhere" / run_id)
        assert other != seg and cleanup.segment_users(other) == []
    finally:
        stopped(worker)
        stopped(by_hand)
    assert cleanup.run_pids(tmp_path / "runs" / run_id) == []


def test_the_recorded_supervisor_counts_only_while_that_very_process_lives(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    supervisor = sleeper(code=f"from pathlib import Path\nfrom hotprune.runs import cleanup\n"
                              f"cleanup.record_supervisor(Path({str(run_dir)!r}))")
    pid_file = run_dir / cleanup.PID_FILE
    recorded = pid_file.read_text()
    assert cleanup.run_pids(run_dir) == [supervisor.pid]
    pid, started = map(int, recorded.split())
    pid_file.write_text(f"{pid} {started + 1}\n")  # the same pid, another process: reused
    assert cleanup.run_pids(run_dir) == []
    pid_file.write_text(recorded)
    supervisor.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, supervisor.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert cleanup.run_pids(run_dir) == []
    supervisor.wait()


def bound_socket_files(run_dir: Path) -> list[Path]:
    """Socket files as ZeroMQ leaves them when its process dies: bound, never unlinked."""
    paths = [run_dir / "sock" / name for name in ("snapshots", "weights")]
    for path in paths:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    return paths


def test_clean_run_removes_the_socket_files_and_segment_of_a_dead_run_and_nothing_of_a_live_one(tmp_path, run_id,
                                                                                                 seg):
    run_dir = rundir.prepare(config(tmp_path, run_id))
    sockets = bound_socket_files(run_dir)
    (run_dir / "sock" / "notes.txt").write_text("not a socket")
    segment = make_segment(seg)
    trainer = sleeper("--run-dir", str(run_dir))
    assert cleanup.clean_run(run_dir) == []
    assert all(p.exists() for p in [*sockets, segment])
    stopped(trainer)
    assert cleanup.clean_run(run_dir) == [*sockets, segment]
    assert not any(p.exists() for p in [*sockets, segment])
    assert (run_dir / "sock" / "notes.txt").exists() and (run_dir / "config.toml").exists()
    assert cleanup.clean_run(run_dir) == []


def test_a_start_removes_a_stale_segment_of_its_run_id_and_refuses_one_in_use(tmp_path, run_id, seg, capsys):
    segment = make_segment(seg)
    holder = sleeper(code=f"import _posixshmem, os\nfd = _posixshmem.shm_open('/{segment.name}', os.O_RDWR)")
    try:
        with pytest.raises(ConfigError, match=f"^shared memory segment {segment} is in use by a live run "
                                              f"\\(pid {holder.pid}\\); choose another run_id$"):
            rundir.prepare(config(tmp_path, run_id))
        assert segment.exists() and not (tmp_path / "runs" / run_id).exists()
    finally:
        stopped(holder)
    assert rundir.prepare(config(tmp_path, run_id)).is_dir()
    assert not segment.exists()
    assert f"removed {segment}, left by a run with no live process" in capsys.readouterr().err


def test_a_start_refuses_a_busy_tcp_port_before_making_anything(tmp_path, run_id):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"^transport.base_port: port {port} on 127.0.0.1 \\(the masks socket\\) "
                                              "cannot be bound: Address already in use"):
            rundir.prepare(config(tmp_path, run_id, "transport.kind=tcp", f"transport.base_port={port - 1}"))
    assert not (tmp_path / "runs").exists()
    assert rundir.prepare(config(tmp_path, run_id, "transport.kind=tcp", f"transport.base_port={port - 1}")).is_dir()


def test_a_failed_start_leaves_the_run_id_free_and_a_directory_made_before_it_as_it_was(tmp_path, run_id):
    cfg = config(tmp_path, run_id)
    rundir.discard(rundir.prepare(cfg), made=True)
    assert not cfg.run_dir.exists()
    cfg.run_dir.mkdir()
    (cfg.run_dir / "console.txt").write_text("what the run printed")
    run_dir = rundir.prepare(cfg)
    (run_dir / "logs" / "supervisor.jsonl").write_text("{}\n")
    cleanup.record_supervisor(run_dir)
    rundir.discard(run_dir, made=False)
    assert [p.name for p in run_dir.iterdir()] == ["console.txt"]
    assert rundir.prepare(cfg) == run_dir  # tried again


def outside_with_a_live_socket(tmp_path: Path) -> tuple[Path, socket.socket]:
    """Another program's directory and its listening socket: what a link out of a run would reach."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(outside / "app.sock"))
    server.listen()
    return outside, server


def test_clean_never_removes_through_a_socket_directory_that_links_out_of_the_run(tmp_path, run_id, capsys):
    run_dir = rundir.prepare(config(tmp_path, run_id))
    outside, server = outside_with_a_live_socket(tmp_path)
    with server:
        (run_dir / "sock").rmdir()
        (run_dir / "sock").symlink_to(outside)
        removed, kept = cleanup.clean(tmp_path / "runs")
        assert [p for p in removed if tmp_path in p.parents] == [] and (outside / "app.sock").exists()
        assert [k for k in kept if str(run_dir) in k] == [
            f"{run_dir / 'sock'} is a symbolic link (to {outside}): a run keeps its own files, and nothing is done "
            "through a link out of its directory; replace the link with what it points to"]
        assert cleanup.remove_sockets(run_dir) == [] and (outside / "app.sock").exists()


@pytest.mark.parametrize("link", ["sock", "logs", "keys", "logs/trainer.jsonl", "supervisor.pid"])
def test_a_run_with_a_link_out_of_it_is_refused_before_anything_is_removed_written_or_bound(
        tmp_path, run_id, capsys, link):
    run_dir = rundir.prepare(config(tmp_path, run_id))
    outside, server = outside_with_a_live_socket(tmp_path)
    with server:
        target = run_dir / link
        if target.is_dir():
            target.rmdir()
        target.symlink_to(outside / "app.sock" if "." in link else outside)
        before = sorted(os.listdir(outside))
        expected = f"{target} is a symbolic link (to {outside}"
        code, out, err = run_cli(capsys, "run", "--resume", str(run_dir))
        assert code == 2 and err.startswith(f"hotprune run: error: {expected}") and err.count("\n") == 1, err
        # A process started by hand binds (or logs) nothing either: the worker, which loads no torch.
        worker = subprocess.run([sys.executable, "-m", "hotprune.workers.inference_worker", "--run-dir",
                                 str(run_dir)], capture_output=True, text=True, timeout=60)
        assert worker.returncode != 0 and expected in worker.stderr
        code, _, err = run_cli(capsys, "worker", "--run-dir", str(run_dir))
        assert code == 2 and expected in err and err.count("\n") == 1
        assert sorted(os.listdir(outside)) == before and (outside / "app.sock").exists()


def test_a_run_directory_others_may_write_is_refused(tmp_path, run_id, capsys):
    run_dir = rundir.prepare(config(tmp_path, run_id))
    run_dir.chmod(0o777)
    code, _, err = run_cli(capsys, "run", "--resume", str(run_dir))
    assert code == 2 and f"run directory {run_dir} is writable by others (mode 0777); chmod 700 it" in err


UMASK_000 = """
import os, sys
from pathlib import Path
os.umask(0)
from hotprune import eventlog
from hotprune.config import load_config
from hotprune.runs import artifacts, cleanup, rundir
cfg = load_config(overrides=[f"runs_dir={sys.argv[1]!r}", "run_id=r", "transport.kind=tcp", "preset=none"])
run_dir = rundir.prepare(cfg, check_ports=False)
eventlog.setup(run_dir, "r", "trainer", echo=False).info("heartbeat")
cleanup.record_supervisor(run_dir)
artifacts.Progress(run_dir / artifacts.PROGRESS).write({"epoch": 1})
"""


def test_what_a_run_makes_under_umask_000_is_writable_by_its_user_alone(tmp_path):
    runs = tmp_path / "new" / "runs"
    subprocess.run([sys.executable, "-c", UMASK_000, str(runs)], check=True, timeout=60)
    made = [runs.parent, runs, *runs.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in made}
    assert modes == {
        "new": 0o755, "new/runs": 0o755, "new/runs/r": 0o700, "new/runs/r/sock": 0o700,
        "new/runs/r/keys": 0o700, "new/runs/r/keys/server.key": 0o644, "new/runs/r/keys/client.key": 0o644,
        "new/runs/r/keys/server.key_secret": 0o600, "new/runs/r/keys/client.key_secret": 0o600,
        "new/runs/r/logs": 0o755, "new/runs/r/logs/trainer.jsonl": 0o644, "new/runs/r/config.toml": 0o644,
        "new/runs/r/supervisor.pid": 0o644, "new/runs/r/progress.csv": 0o644,
    }
