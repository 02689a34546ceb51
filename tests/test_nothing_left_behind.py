"""Killed runs, failed starts and `hotprune clean`, on the real service: whatever is killed, the same
run id starts again, and in the end no segment, socket file or process of the runs is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from hotprune.protocol.endpoints import SOCKETS
from hotprune.protocol.store_layout import segment_name
from tests.servicekit import (HOTPRUNE, alive, assert_clean, hotprune, logged, processes_mentioning,
                              resource_tracker, settings, socket_files, wait_for)

pytestmark = pytest.mark.slow

CHILDREN = ("compressor", "trainer", "worker-0")
# What each cycle SIGKILLs; "tracker" is the supervisor's multiprocessing resource tracker.
TARGETS = (("supervisor",), ("supervisor", "tracker", *CHILDREN), ("trainer",), ("compressor",), ("worker-0",),
           ("supervisor", "tracker"))


def segment(run_dir: Path) -> Path:
    return Path("/dev/shm") / segment_name(run_dir)


def start(tmp_path, run_id, *extra) -> subprocess.Popen:
    # No restarts: a killed child ends the run at once (what is left behind is the question here).
    return subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, "epochs=500", "num_workers=1",
                                                        "supervisor.max_restarts=0", *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def started(proc: subprocess.Popen, run_dir, wait_for_event: str = "process_started") -> dict[str, int]:
    """Once every child is started (or has logged `wait_for_event`): name -> pid, the supervisor's
    and its resource tracker's included."""
    def up():
        assert proc.poll() is None, proc.communicate()[1]
        pids = {e["name"]: e["child_pid"] for e in logged(run_dir, "supervisor", "process_started")}
        ready = wait_for_event == "process_started" or all(logged(run_dir, n, wait_for_event) for n in CHILDREN)
        return len(pids) == len(CHILDREN) and ready and pids

    pids = wait_for(up, timeout=90, what=f"every process of {run_dir.name} to be up")
    return {**pids, "supervisor": proc.pid, "tracker": resource_tracker(proc.pid)}


def sigkill(pids: list[int]) -> None:
    """SIGKILL them as one: stopped first, so none reacts to another's death (the supervisor
    unlinking the store, the tracker cleaning up after the supervisor)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


# Each target killed twice. The start after each of the two kills that leak the segment (the tracker's
# with it) finds it itself (cycles 2 and 6); `hotprune clean` every fourth cycle comes after a kill that
# leaked nothing (the compressor's) and after each of those two (cycles 7 and 11). The final clean
# then takes what all twelve left. Twenty cycles, cleaning every fifth, repeated the same kills a
# third time but cleaned up after a leak only once.
CYCLES, CLEAN_EVERY = 2 * len(TARGETS), 4


def test_twelve_start_kill_cycles_leave_nothing_behind(tmp_path):
    run_id = f"cycle-{os.getpid()}"  # the segment's name is machine-wide: no other test's
    runs = tmp_path / "runs"
    run_dir = runs / run_id
    leaked = False
    for cycle in range(CYCLES):
        target = TARGETS[cycle % len(TARGETS)]
        proc = start(tmp_path, run_id)
        pids = started(proc, run_dir)
        sigkill([pids[name] for name in target])
        _, stderr = proc.communicate(timeout=60)
        # The next start with this id found the last cycle's segment, nobody using it, and removed it.
        assert (f"removed {segment(run_dir)}" in stderr) == leaked, stderr
        wait_for(lambda tracker=pids["tracker"]: not processes_mentioning(str(run_dir)) and not alive(tracker),
                 timeout=30,
                 what="the run's processes and its resource tracker to exit")
        # Only a run whose resource tracker was killed too leaks its segment.
        leaked = "tracker" in target
        assert segment(run_dir).exists() == leaked, target
        if cycle % CLEAN_EVERY == CLEAN_EVERY - 1:
            cleaned = hotprune("clean", str(runs))
            assert cleaned.returncode == 0, cleaned.stderr
            assert (f"removed {segment(run_dir)}" in cleaned.stdout) == leaked, cleaned.stdout
            assert not segment(run_dir).exists() and not socket_files(run_dir)
            leaked = False
        run_dir.rename(runs / f"killed-{cycle}")  # a killed run's directory is its record: set it aside
    cleaned = hotprune("clean", str(runs))
    assert cleaned.returncode == 0, cleaned.stderr
    assert not socket_files(runs), cleaned.stdout
    assert_clean(run_dir)
    assert not processes_mentioning(str(runs))


def test_clean_leaves_a_live_run_alone_and_cleans_after_it(tmp_path):
    run_id = f"live-{os.getpid()}"
    proc = start(tmp_path, run_id)
    run_dir = tmp_path / "runs" / run_id
    pids = started(proc, run_dir, wait_for_event="heartbeat")  # every socket bound, the segment mapped
    sockets = socket_files(run_dir)
    assert len(sockets) == len(SOCKETS)

    cleaned = hotprune("clean", str(tmp_path / "runs"))
    assert cleaned.returncode == 0 and "removed" not in cleaned.stdout, cleaned.stdout
    assert f"kept shared memory segment {segment(run_dir)} is in use by a live run" in cleaned.stdout
    assert f"kept socket files in {run_dir / 'sock'}: their run is alive" in cleaned.stdout
    assert all(alive(pid) for pid in pids.values()) and segment(run_dir).exists()

    sigkill(list(pids.values()))
    proc.communicate(timeout=60)
    assert segment(run_dir).exists() and socket_files(run_dir) == sockets  # what a killed run leaves
    cleaned = hotprune("clean", str(tmp_path / "runs"))
    assert cleaned.returncode == 0
    assert set(cleaned.stdout.splitlines()) >= {f"removed {p}" for p in [*sockets, segment(run_dir)]}
    assert not socket_files(run_dir)
    assert_clean(run_dir)


def test_a_busy_tcp_port_fails_the_start_before_anything_is_made(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the port is the third of the run's four: trainer and compressor would bind the others first
        result = hotprune("run", *settings(tmp_path, "tcp", "transport.kind=tcp", f"transport.base_port={port - 2}"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1" in lines[0] and "transport.base_port" in lines[0]
    assert not (tmp_path / "runs" / "tcp").exists()
    assert not segment(tmp_path / "runs" / "tcp").exists()


def test_a_start_that_cannot_create_the_store_removes_what_it_made(tmp_path):
    run_id = f"nostore-{os.getpid()}"
    segment(tmp_path / "runs" / run_id).mkdir()  # a directory under the segment's name: shm_open cannot create it
    try:
        for _ in range(2):  # the second try is refused for the same reason, not for a run dir left behind
            result = hotprune("run", *settings(tmp_path, run_id))
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr
            assert f"shared memory segment {segment(tmp_path / 'runs' / run_id).name} already exists" in lines[0]
            assert not (tmp_path / "runs" / run_id).exists() and not (tmp_path / "runs" / "latest").exists()
        made_before = tmp_path / "runs" / run_id  # as `hotprune experiments` makes it, with the console's file
        made_before.mkdir()
        (made_before / "console.txt").write_text("kept")
        result = hotprune("run", *settings(tmp_path, run_id))
        assert result.returncode == 2
        assert sorted(p.name for p in made_before.iterdir()) == ["console.txt"]
    finally:
        segment(tmp_path / "runs" / run_id).rmdir()
