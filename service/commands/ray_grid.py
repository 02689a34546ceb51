"""`hotprune experiments ... --ray ADDRESS|auto`: a grid's cells as tasks on a Ray cluster, their run directories
back on the machine that started the grid, so that its table, plots, resume and `--jobs` are as without Ray.

- Each cell is one Ray task that reserves what its run needs (`resources`) and runs `hotprune run` as a
  subprocess on whichever node has them, as `hotprune experiments` does here (experiments.run_here), in a
  fresh directory of that node; the task returns the run directory as a gzip'd tar, which is unpacked here
  (`unpack`: all or nothing, nothing but directories and regular files under the run's own name, then
  runs/private.check). With `--ray-shared PATH` (a directory every node mounts at that path) the task
  writes there instead and nothing travels: the run is moved into the grid here, or is already in place
  when the grid's root is under PATH.
- A node lost mid-run: Ray runs the task again (`CELL_RETRIES`) elsewhere, from the start, in a fresh
  directory; the run on the lost node dies with its Ray worker (its parent-death signal). A run that
  ended, whatever its exit code, is not retried by Ray: the grid's own resume decides, as here (a
  completed run is never run again; an unfinished one is set aside and run again on the next invocation).
- `--jobs` is the cells in flight (each thread of the grid's pool waits on one task), at most the
  cluster's CPUs over CORES_PER_RUN. Ctrl-C cancels the tasks in flight (their runs get SIGTERM).
- The nodes need hotprune installed as here, and any file a setting names (init_file, mask_file) at the
  same absolute path: a grid whose variants read its own directory (`{base}`: lth's tickets) needs its
  root under `--ray-shared`.

Ray is imported only with `--ray` (hotprune.raycluster joins the cluster; a cell's task imports it on its node).
"""

from __future__ import annotations

import io
import math
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

from hotprune.commands.experiments import CORES_PER_RUN, location, run_here, set_aside
from hotprune.commands.grids import Grid
from hotprune.config import Config, ConfigError, load_config
from hotprune.protocol.endpoints import socket_dir
from hotprune import raycluster
from hotprune.raycluster import PROCESSES_PER_CPU
from hotprune.runs import private

CELL_RETRIES = 3  # runs of a cell whose node (or Ray worker) was lost before it ended
NOT_BACK = -1  # the exit code of a cell whose run did not come back (no result from Ray, an unsafe archive)


def resources(cfg: Config) -> dict:
    """What a cell's task reserves on its node: a CPU per PROCESSES_PER_CPU of its run's processes (trainer,
    compressor and num_workers workers: the default run's four keep about CORES_PER_RUN cores busy), rounded
    up; a GPU when its run says device = "cuda" (Ray then shows it that GPU alone). "auto" reserves none: such
    a run uses its node's GPU if it has one, unreserved (Ray leaves CUDA_VISIBLE_DEVICES alone for a task of
    no GPU)."""
    processes = 2 + cfg.num_workers
    return {"num_cpus": math.ceil(processes / PROCESSES_PER_CPU), "num_gpus": 1 if cfg.device == "cuda" else 0}


def run_cell(settings: list[str], name: str, staging: str | None) -> tuple[int, bytes | None, str]:
    """On a node (the Ray task's body): `hotprune run` of one cell with these settings in a fresh directory
    `name` of this node, or in `staging` (under --ray-shared; an earlier attempt's directory there, from a
    lost node, set aside); returns its exit code, its run directory as a gzip'd tar (None with
    `staging`), and this node's Ray id."""
    import ray  # noqa: PLC0415 -- in the Ray worker, which has it

    node = ray.get_runtime_context().get_node_id()
    if staging is not None:
        run_dir = Path(staging)
        if run_dir.exists():
            set_aside(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        return run_here(settings, run_dir), None, node
    with tempfile.TemporaryDirectory(prefix="hotprune-cell-") as tmp:
        run_dir = Path(tmp) / name
        code = run_here(settings, run_dir)
        return code, pack(run_dir), node


def pack(run_dir: Path) -> bytes:
    """The run directory as a gzip'd tar, its members under the directory's own name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:  # logs shrink 10x at level 1 already
        tar.add(run_dir, arcname=run_dir.name)  # socket files (a run's sock/) are not archived
    return buffer.getvalue()


def moved_here(staging: Path, run_dir: Path) -> None:
    """A cell's run directory on the shared path moved into the grid: renamed, or copied where the shared
    path is another filesystem. Its socket directory goes first: a run killed with its node leaves its
    sockets there, which a copy cannot take."""
    shutil.rmtree(socket_dir(staging), ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), run_dir)


class UnsafeArchive(ConfigError):
    """A cell's archive with a member that would land outside its run directory, or is not a plain file
    or directory."""


def _unsafe(member: tarfile.TarInfo, name: str) -> str | None:
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts or not parts or parts[0] != name:
        return f"{member.name!r} is not inside {name}/"
    if not (member.isfile() or member.isdir()):
        return f"{member.name!r} is a link or a special file"
    return None


def unpack(archive: bytes, run_dir: Path) -> None:
    """A cell's archive (`pack`) as `run_dir`, which must not exist: all or nothing. Refused (UnsafeArchive,
    nothing kept) if a member is absolute, has a `..`, lies outside the run's name or is anything but a
    directory or a regular file; tarfile's "data" filter drops set-id bits and group/other write, and
    runs/private.check holds the result (no link at any depth, this user's, not writable by others)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.incoming-", dir=run_dir.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if fault := _unsafe(member, run_dir.name):
                    raise UnsafeArchive(f"the archive of {run_dir} is refused: {fault}")
            tar.extractall(incoming, members=members, filter="data")
        private.check(incoming / run_dir.name)
        (incoming / run_dir.name).rename(run_dir)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


class RayCells:
    """A grid's cells as Ray tasks (experiments.Here's three members: most_jobs, run, cancel); a context
    that connects to the cluster at `address` ("auto": the one this machine is part of), or uses this
    process's connection to it (or, with "auto", to any cluster), and disconnects what it connected."""

    def __init__(self, address: str, shared: Path | None, grid: Grid, root: Path, log):
        self.address, self.root, self.log = address, root, log
        self.shared = None if shared is None else shared.absolute()
        in_place = self.shared is not None and root.is_relative_to(self.shared)
        if not in_place and any("{base}" in o for v in grid.variants for o in v.overrides):
            raise ConfigError(f"grid {grid.name} has runs that read files of its own directory ({{base}}): on a Ray "
                              "cluster its --root must be under --ray-shared, a path every node sees")
        self._in_flight: set = set()
        self._lock = threading.Lock()
        self._connected = False

    def __enter__(self) -> RayCells:
        self._ray, self._connected = raycluster.join(self.address)
        self._task = self._ray.remote(run_cell)
        return self

    def __exit__(self, *exc) -> None:
        raycluster.leave(self._ray, self._connected)

    def most_jobs(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 0)) // CORES_PER_RUN)

    def _staging(self, run_dir: Path) -> Path | None:
        if self.shared is None:
            return None
        return run_dir if run_dir.is_relative_to(self.shared) else self.shared / run_dir.relative_to(self.root)

    def run(self, settings: list[str], run_dir: Path) -> int:
        """The cell as a Ray task; its run directory back as `run_dir`; its exit code (NOT_BACK if it did
        not come back: why is in the log and in run_dir/console.txt)."""
        staging = self._staging(run_dir)
        need = resources(load_config(None, [*settings, *location(run_dir)]))
        ref = self._task.options(**need, max_retries=CELL_RETRIES, retry_exceptions=False).remote(
            settings, run_dir.name, None if staging is None else str(staging))
        with self._lock:
            self._in_flight.add(ref)
        try:
            code, archive, node = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:  # retries spent, cancelled, or the task itself failed
            return self._not_back(run_dir, f"no result from Ray: {exc}")
        finally:
            with self._lock:
                self._in_flight.discard(ref)
        try:
            if archive is not None:
                unpack(archive, run_dir)
            elif staging != run_dir:
                moved_here(staging, run_dir)
        except (tarfile.TarError, OSError, ConfigError) as exc:
            return self._not_back(run_dir, f"its run directory did not come back: {exc}")
        how = f"{len(archive) / 1e6:.1f} MB back" if archive is not None else \
            "in place" if staging == run_dir else f"moved here from {staging}"
        self.log(f"{run_dir}: ran on Ray node {node} ({how})")
        return code

    def _not_back(self, run_dir: Path, why: str) -> int:
        self.log(f"{run_dir}: {why.splitlines()[0]}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "console.txt").write_text(why + "\n")
        return NOT_BACK

    def cancel(self) -> None:
        """The tasks in flight stopped (their Ray workers killed: each run gets SIGTERM, its parent-death
        signal)."""
        with self._lock:
            for ref in self._in_flight:
                self._ray.cancel(ref, force=True)
