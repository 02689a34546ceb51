"""What a dead run leaves behind, and removing it without touching a live run.

Besides its records (config, logs, policies), a run holds two things that only make sense while it
runs: the weight store's shared-memory segment (/dev/shm/hotprune-<run_id>-<hash of its directory>,
and one more per relay's node: the same name with @<node>) and the ipc socket files in run_dir/sock/.
A run stopped normally or by a signal unlinks its segments; if its supervisor is SIGKILLed, the
supervisor's multiprocessing resource tracker unlinks them; if the tracker dies too (a SIGKILL of every
process), the segments stay, and would refuse the next run in that directory.

Alive, from /proc, never from a pid alone (pids are reused):
- a run is alive while its supervisor lives (run_dir/supervisor.pid holds its pid and start time)
  or any process started with `--run-dir` naming its directory (every child, and processes run by
  hand) - a zombie counts as dead;
- a segment is in use while a live process has it open or mapped, or was started for its run
  (each process names its segment after its run directory: hotprune.protocol.store_layout.segment_name).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hotprune.protocol.endpoints import socket_dir
from hotprune.protocol.store_layout import NODE_SEPARATOR, SEGMENT_PREFIX, segment_name
from hotprune.runs import private

SHM_DIR = Path("/dev/shm")
PID_FILE = "supervisor.pid"


def segment_path(run_dir: Path) -> Path:
    return SHM_DIR / segment_name(run_dir)


def segment_paths(run_dir: Path) -> list[Path]:
    """The run's segment and its relays' (those that exist, but the run's always)."""
    base = segment_path(run_dir)
    return [base, *sorted(SHM_DIR.glob(f"{base.name}{NODE_SEPARATOR}*"))]


def record_supervisor(run_dir: Path) -> None:
    """Write run_dir/supervisor.pid: this process's pid and its start time, which tells it from a
    later process that got the same pid."""
    pid = os.getpid()
    private.write_text(run_dir / PID_FILE, f"{pid} {_start_time(pid)}\n")


def run_pids(run_dir: Path) -> list[int]:
    """The live processes of the run in `run_dir`: its supervisor, and every process whose
    `--run-dir` (relative to its own working directory) is this directory."""
    target = run_dir.resolve()
    pids = [pid for pid, arg in _run_dir_args() if _resolve(pid, arg) == target]
    supervisor = _recorded_supervisor(run_dir)
    return sorted({*pids, supervisor} - {None})


def segment_users(path: Path) -> list[int]:
    """The live processes that use a segment: they hold it open or mapped, or were started for the
    run it belongs to."""
    by_run = {pid for pid, arg in _run_dir_args() if (d := _resolve(pid, arg)) and path in segment_paths(d)}
    return sorted(by_run | {pid for pid in _pids() if _holds(pid, str(path))})


def remove_stale_segment(path: Path) -> bool:
    """Unlink a segment (/dev/shm/hotprune-...) if it exists and no live process uses it; True if it
    did. Raises SegmentKept if it exists and must stay."""
    if not path.is_file():  # none (a directory of that name is no segment: creating the store says so)
        return False
    users = segment_users(path)
    if users:
        raise SegmentKept(path, f"is in use by a live run (pid {_listed(users)})")
    try:
        path.unlink()
    except FileNotFoundError:  # its run, or another cleaner, removed it meanwhile
        return False
    except OSError as exc:  # another user's
        raise SegmentKept(path, f"cannot be removed: {exc.strerror}") from None
    return True


class SegmentKept(RuntimeError):
    """A segment that is not ours to remove: a live process uses it, or we may not."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"shared memory segment {path} {why}")


def clean_run(run_dir: Path) -> list[Path]:
    """Remove the socket files and the segment of the run in `run_dir` if none of its processes
    lives; returns what was removed (nothing for a live run)."""
    if run_pids(run_dir):
        return []
    removed = remove_sockets(run_dir)
    for path in segment_paths(run_dir):
        try:
            if remove_stale_segment(path):
                removed.append(path)
        except SegmentKept:  # held open by a process of no run (its own reasons)
            pass
    return removed


def clean(runs_dir: Path) -> tuple[list[Path], list[str]]:
    """`hotprune clean`: remove what dead runs left, in runs_dir and in /dev/shm. Returns (removed,
    kept), kept saying why a leftover stays: its run is alive, or its socket directory is a link."""
    removed, kept = [], []
    runs = sorted(d for d in runs_dir.iterdir() if not d.is_symlink() and (d / "config.toml").is_file()) \
        if runs_dir.is_dir() else []
    for run_dir in runs:
        removed += clean_run(run_dir)
        try:
            left = _sockets(run_dir)
        except private.NotOwn as exc:  # nothing was removed through it
            kept.append(str(exc))
            continue
        if left:
            kept.append(f"socket files in {socket_dir(run_dir)}: their run is alive "
                        f"(pid {_listed(run_pids(run_dir))})")
    for segment in sorted(SHM_DIR.glob(f"{SEGMENT_PREFIX}*")):
        try:
            if remove_stale_segment(segment):
                removed.append(segment)
        except SegmentKept as exc:
            kept.append(str(exc))
    return removed, kept


def remove_sockets(run_dir: Path) -> list[Path]:
    """Unlink the run's ipc socket files (ZeroMQ leaves them when a process exits). Only when none of
    its processes lives: a socket file removed under a live bind makes that endpoint unreachable.
    Only in the run's own socket directory: none if it is a link (`private.open_dir`), and each file
    unlinked relative to the directory opened, so a rename meanwhile cannot lead outside."""
    try:
        fd = private.open_dir(run_dir, socket_dir(run_dir).name)
    except (private.NotOwn, OSError):  # a link, or no socket directory
        return []
    removed = []
    try:
        for name in _socket_names(fd):
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(socket_dir(run_dir) / name)
    finally:
        os.close(fd)
    return removed


def _sockets(run_dir: Path) -> list[Path]:
    """The socket files in the run's socket directory; NotOwn if that is a link."""
    try:
        fd = private.open_dir(run_dir, socket_dir(run_dir).name)
    except FileNotFoundError:
        return []
    try:
        return [socket_dir(run_dir) / name for name in _socket_names(fd)]
    finally:
        os.close(fd)


def _socket_names(fd: int) -> list[str]:
    """Names of the socket files in the directory open as `fd` (an entry replaced by something else
    between this and an unlink is only ever an entry of that same directory)."""
    found = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    found.append(entry.name)
            except FileNotFoundError:  # removed meanwhile
                pass
    return sorted(found)


def _listed(pids: list[int]) -> str:
    return ", ".join(map(str, pids))


def _pids() -> list[int]:
    own = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != own]


def _run_dir_args() -> list[tuple[int, str]]:
    """(pid, the `--run-dir` argument) of every live process started with one."""
    found = []
    for pid in _pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        for i, arg in enumerate(argv):
            if arg == "--run-dir" and i + 1 < len(argv):
                found.append((pid, argv[i + 1]))
            elif arg.startswith("--run-dir="):
                found.append((pid, arg.removeprefix("--run-dir=")))
    return found


def _resolve(pid: int, arg: str) -> Path | None:
    try:
        return (Path(os.readlink(f"/proc/{pid}/cwd")) / arg).resolve()
    except OSError:  # exited meanwhile, or another user's process
        return None


def _holds(pid: int, path: str) -> bool:
    """Does the process have `path` open or mapped? (An unlinked one shows as "path (deleted)".)"""
    try:
        if f" {path}\n" in Path(f"/proc/{pid}/maps").read_text():
            return True
        fds = f"/proc/{pid}/fd"
        return any(os.readlink(f"{fds}/{fd}") == path for fd in os.listdir(fds))
    except OSError:  # exited meanwhile, or another user's process
        return False


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot when the process started; None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return None if fields[0] == "Z" else int(fields[19])  # fields 3 (state) and 22 (starttime)


def _recorded_supervisor(run_dir: Path) -> int | None:
    try:
        pid, started = map(int, (run_dir / PID_FILE).read_text().split())
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == started else None
