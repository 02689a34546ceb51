"""A run directory's own files: nothing done in a run directory is done through a symbolic link out of it.

A run directory holds what its processes write, bind and remove: logs/, sock/ (ipc socket files,
which ZeroMQ unlinks and binds again by path), keys/, tensor files, supervisor.pid. One of them
replaced by a symbolic link (sock -> /elsewhere) would make a bind, `hotprune clean` or `run
--resume` remove and create files in the directory it names. So:

- `check` refuses (NotOwn, one line) a run directory that is not this user's or is writable by
  others, or holds a symbolic link at any depth: every process of a run and the
  supervisor call it before they write anything there (a new run, a resumed one, one by hand);
- `open_dir` opens an entry directory with O_NOFOLLOW at every step, so what is done through its
  descriptor (cleanup's dir_fd-relative unlinks) stays inside whatever is renamed meanwhile.

Files and directories a run makes get their modes set explicitly, whatever the umask (under umask
000 they would be open to every user): `make_dirs` (the runs directory 0755: no one else may re-point
runs/latest there), `create` and `write_text` (records 0644: logs, config.toml, public keys).

The remaining race: between `check` and a later open by path (a log file, a socket's bind), an
entry can still be replaced by a link, but only by someone who may write the run directory, which
`check` found to be this user alone (mode 0700 as made, owner checked): no other user can win it.
The directories above the run directory are the user's choice and are followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hotprune.config import ConfigError

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


RECORD = 0o644  # logs, config.toml, public keys: the user's to write, readable by who may enter the directory
SHARED_DIR = 0o755  # the runs directory, logs/
PRIVATE_DIR = 0o700  # a run directory, its sockets and keys


class NotOwn(ConfigError):
    """A run directory, or an entry of it, that is not the run's own (a link, another user's, open to others)."""


def open_dir(run_dir: Path, *names: str) -> int:
    """A descriptor of run_dir/names[0]/names[1]/..., no step of it (run_dir's own last component
    included) a symbolic link; NotOwn if one is (or is no directory), OSError if it is missing.
    The caller closes it."""
    fd = _open(run_dir, None)
    try:
        for i, name in enumerate(names):
            inner = _open(run_dir.joinpath(*names[: i + 1]), fd, name)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(path: Path, dir_fd: int | None, name: str | None = None) -> int:
    try:
        return os.open(name if name is not None else path, OPEN_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW | O_DIRECTORY on a link: either
            raise (_link(path) if path.is_symlink() else NotOwn(f"{path} is not a directory")) from None
        raise


def check(run_dir: Path) -> None:
    """Refuse, with one line, a run directory that is not this user's, writable by group or others,
    or that holds a symbolic link at any depth. A link to a run directory (runs/latest) names that run."""
    run_dir = run_dir.resolve()
    try:
        fd = open_dir(run_dir)
    except FileNotFoundError:
        raise NotOwn(f"{run_dir} does not exist") from None
    except OSError as exc:
        raise NotOwn(f"{run_dir} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise NotOwn(f"run directory {run_dir} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o022:
            raise NotOwn(f"run directory {run_dir} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                         "chmod 700 it")
        link = _first_link(fd, run_dir)
    finally:
        os.close(fd)
    if link is not None:
        raise _link(link)


def _first_link(fd: int, path: Path) -> Path | None:
    """The first symbolic link in the directory open as `fd`, at any depth (descended by descriptor)."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_symlink():
                return path / entry.name
            if entry.is_dir(follow_symlinks=False):
                try:
                    inner = os.open(entry.name, OPEN_DIR, dir_fd=fd)
                except OSError as exc:  # replaced by a link meanwhile, or gone
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        return path / entry.name
                    continue
                try:
                    found = _first_link(inner, path / entry.name)
                finally:
                    os.close(inner)
                if found is not None:
                    return found
    return None


def _link(path: Path) -> NotOwn:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:  # replaced again meanwhile
        target = ""
    return NotOwn(f"{path} is a symbolic link{target}: a run keeps its own files, and nothing is done "
                  "through a link out of its directory; replace the link with what it points to")


def make_dirs(path: Path, mode: int) -> None:
    """`path` and its missing parents, each made with exactly `mode` (not cut, nor widened, by the
    umask); a directory that exists already is left as it is (it is the user's)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode)
        except FileExistsError:  # made meanwhile by another process: not ours to change
            continue
        directory.chmod(mode)


def create(path: Path, mode: int = RECORD, append: bool = False) -> int:
    """A descriptor of `path` opened for writing (truncated, or `append`), created with exactly `mode`
    and set to it if it existed; never through a link (O_NOFOLLOW). The caller closes it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_text(path: Path, text: str, mode: int = RECORD) -> None:
    with os.fdopen(create(path, mode), "w", encoding="utf-8") as f:
        f.write(text)
