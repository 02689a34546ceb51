"""Helpers for the integration tests: start the real service through its CLI and read its logs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

from hotprune.protocol.endpoints import SOCKETS
from hotprune.protocol.store_layout import segment_name
from hotprune.cli import _main

HOTPRUNE = str(Path(sys.executable).with_name("hotprune"))

# Small enough for a few seconds per run on two cores, big enough to exercise every path.
SMALL = [
    "preset=none",  # the built-in defaults, whatever the env's preset says
    "samples_per_epoch=512",
    "chunk_steps=32",
    "envs_per_worker=4",
    "ppo.minibatches=4",
    "pruning.start_epoch=2",
    "pruning.every=3",
    "supervisor.stop_grace_s=5.0",
    "supervisor.heartbeat_s=0.2",
]


def settings(tmp_path: Path, run_id: str, *extra: str) -> list[str]:
    args = []
    for item in [f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", f"run_id={run_id}", *SMALL, *extra]:
        args += ["--set", item]
    return args


def hotprune(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([HOTPRUNE, *args], capture_output=True, text=True, timeout=timeout)


def as_from_a_terminal() -> None:
    """A child's preexec_fn: SIGINT neither ignored (a shell's background job starts with it ignored)
    nor blocked (a mask is inherited across exec), as a run started from a terminal has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`hotprune argv` in this process: (exit code, stdout, stderr). For what the command does, not for
    how its process starts: it saves the second or two of start-up (torch's import) of `hotprune`.
    `_main`, not `main`, which would leave this process ignoring Ctrl-C."""
    try:
        code = _main(list(argv))
    except SystemExit as exc:  # argparse: usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def events(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / "logs" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def of(lines: list[dict], event: str) -> list[dict]:
    return [e for e in lines if e["event"] == event]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def logged(run_dir: Path, name: str, event: str) -> list[dict]:
    """Events so far (tolerates a file not yet created or a line being written)."""
    try:
        return of([json.loads(l) for l in (run_dir / "logs" / f"{name}.jsonl").read_text().splitlines()
                   if l.endswith("}")], event)
    except FileNotFoundError:
        return []


def accounting_adds_up(run_dir: Path) -> tuple[list[dict], dict]:
    """Every received sample is used or dropped as stale, epoch by epoch and in the summary: (epochs, summary)."""
    epochs = logged(run_dir, "trainer", "epoch")
    summary = logged(run_dir, "trainer", "summary")[-1]
    assert all(e["samples_received"] == e["samples"] + e["samples_dropped_stale"] for e in epochs)
    assert summary["samples_used"] == sum(e["samples"] for e in epochs)
    assert summary["samples_dropped_stale"] == sum(e["samples_dropped_stale"] for e in epochs)
    assert summary["samples_received"] == summary["samples_used"] + summary["samples_dropped_stale"]
    return epochs, summary


def processes_mentioning(text: str, within: Path | None = None) -> list[int]:
    """Other processes whose command line contains `text`; with `within`, only those working in that
    directory or below it (a run started with a relative runs_dir, or through the API, names its run by
    a relative path or its id alone, which another test's run, in parallel, may share)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if within is not None and not Path(os.readlink(entry / "cwd")).is_relative_to(within):
                    continue
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def resource_tracker(pid: int) -> int:
    """The multiprocessing resource tracker started by process `pid` (the supervisor's unlinks the
    weight store if the supervisor dies)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat, cmdline = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid and b"resource_tracker" in cmdline:
                return int(entry.name)
    raise AssertionError(f"process {pid} has no resource tracker")


def socket_files(path: Path) -> list[Path]:
    """Socket files anywhere under `path` (the runs' sock/ directories)."""
    return [p for p in path.rglob("*") if p.is_socket()]


def assert_clean(run_dir: Path) -> None:
    """No shared memory segment and no process of the run left behind. After a SIGKILLed supervisor
    its resource tracker unlinks the segment, a moment later: waited for, as the processes are."""
    segment = Path("/dev/shm") / segment_name(run_dir)
    wait_for(lambda: not segment.exists(), timeout=10, what="the weight store segment to be removed")
    wait_for(lambda: not processes_mentioning(str(run_dir)), timeout=10, what="the run's processes to exit")


def _ephemeral_start() -> int:
    """The first port the kernel hands out to an outgoing connection or a bind to port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_base_port(count: int = len(SOCKETS)) -> int:
    """A base port with `count` consecutive free loopback ports (for tcp runs beside other tests): above
    Ray's worker ports (10002-19999) and below the kernel's ephemeral range, which every outgoing connection
    and every port-0 bind of a test beside (a Ray cluster's, ZeroMQ's) takes from: a port free when chosen
    here stays free until the run binds it."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, _ephemeral_start() - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports found")
