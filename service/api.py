"""hotprune's Python API (docs/api.md): run the service, and read what a run keeps, as data.

The commands print what these functions return (hotprune.cli); the work is the command modules'
(hotprune.commands). `run` starts `hotprune run` itself, as a child process, also when it blocks:

- the supervisor sets SIGINT/SIGTERM handlers, records its pid as the run's owner, configures
  structlog for the whole process and outlives nothing: all of that is right for a process of its own
  and wrong inside a user's program (a notebook, a thread, a program with its own handlers);
- the child runs in its own session and dies with its parent (a SIGTERM if the caller dies, even by
  SIGKILL, which the supervisor answers like Ctrl-C); a Ctrl-C in the caller (KeyboardInterrupt while
  `run` blocks) is passed on as SIGINT, `run` waits until the supervisor stopped every process and
  removed the weight store, then raises the KeyboardInterrupt on: nothing is left behind;
- it is one code path: the library's run is the command line's, down to the console it prints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from hotprune.config import Config, ConfigError, as_overrides, load_config, to_toml
from hotprune.roles.entry import die_with_parent
from hotprune.runs import runlog

if TYPE_CHECKING:
    from hotprune.commands.diagnose import Check

POLL_S = 0.05  # how often a starting run's logs, and a followed run's, are read
ERROR_PREFIX = "hotprune run: error: "  # the command line's one-line errors (cli._error)
KEPT_LINES = 200  # the child's last console lines kept for its error message


@dataclass(frozen=True)
class RunResult:
    """A run that ended. `summary` is the trainer's summary event (None if it never finished: see
    `outcome`, the supervisor's word); `exit_code` is `hotprune run`'s."""

    run_dir: Path
    exit_code: int
    summary: dict | None
    outcome: str | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def __fspath__(self) -> str:  # hotprune.diagnose(result), load_policy(result)
        return str(self.run_dir)

    @classmethod
    def of(cls, run_dir: Path, exit_code: int) -> RunResult:
        try:
            run = runlog.load(run_dir)
        except runlog.RunError:  # stopped before anything was logged
            return cls(run_dir, exit_code, None, None)
        return cls(run_dir, exit_code, run.summary, (run.finished or {}).get("outcome"))


class RunHandle:
    """A run going on in the background (`run(config, background=True)`): wait for it, stop it, or
    follow its events. As a context manager it stops the run at the end of the block, if still running."""

    def __init__(self, config: Config, echo: bool, quiet: bool, ray: str | None = None):
        """Made by `run(config, background=True)`."""
        self._kept: deque[str] = deque(maxlen=KEPT_LINES)
        if ray is not None:  # --ray implies tcp; a Config keeps no record of whether its "ipc" was set or the default
            config = replace(config, transport=replace(config.transport, kind="tcp"))
        with tempfile.TemporaryDirectory(prefix="hotprune-") as tmp:
            path = Path(tmp) / "config.toml"
            try:
                path.write_text(to_toml(config))  # the settings, without run_id (a fresh one unless named)
            except TypeError as exc:  # a value set to something TOML has no form for (None)
                raise ConfigError(str(exc)) from None
            named = [f"run_id={json.dumps(config.run_id)}"] if config.run_id else []
            resolved = load_config(path, named)  # what the child will load: its errors, here and now
            self.run_dir = resolved.run_dir.absolute()
            argv = [sys.executable, "-m", "hotprune.cli", "run", "--config", str(path),
                    "--set", f"run_id={json.dumps(resolved.run_id)}", *(["--quiet"] if quiet else []),
                    *(["--ray", ray] if ray is not None else [])]
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          errors="replace", start_new_session=True, preexec_fn=die_with_parent)
            self._relays = [_relay(self._proc.stdout, (lambda: sys.stdout) if echo else None, self._kept),
                            _relay(self._proc.stderr, (lambda: sys.stderr) if echo else None, self._kept)]
            try:
                self._until_started()  # the child has read its config file before the file goes
            except BaseException:  # a KeyboardInterrupt while it starts stops it too
                if self.running:
                    self.stop()
                raise

    def _until_started(self) -> None:
        tail = runlog.Tail(self.run_dir / "logs")
        while self.running and not any(e["event"] == "run_started" for e in tail.events()):
            time.sleep(POLL_S)
        if not self.running:
            self.wait()  # a start that failed raises here

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> RunResult:
        """The result once the run ended; TimeoutError after `timeout` seconds. ConfigError with the
        command's one line if it refused to start (exit 2)."""
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"run {self.run_dir} still running after {timeout} s") from None
        for relay in self._relays:
            relay.join()
        if code == 2:
            errors = [line for line in self._kept if line.startswith(ERROR_PREFIX)]
            raise ConfigError(errors[-1].removeprefix(ERROR_PREFIX).strip() if errors else
                              f"hotprune run exited with 2: {''.join(self._kept).strip()}")
        return RunResult.of(self.run_dir, code)

    def stop(self, timeout: float | None = None) -> RunResult:
        """Stop the run as Ctrl-C stops `hotprune run` (every process stopped, the weight store removed;
        exit code 130) and return its result."""
        if self.running:
            self._proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def events(self) -> Iterator[dict]:
        """Every event the run's processes log, from its start, as they log them, until it ends:
        dicts with `event`, `role`, `ts` and the event's fields (docs/architecture.md)."""
        tail = runlog.Tail(self.run_dir / "logs")
        while True:
            ended = not self.running  # asked before the read: what was logged until the end is still read
            yield from tail.events()
            if ended:
                return
            time.sleep(POLL_S)

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, *exc) -> None:
        if self.running:
            self.stop()

    def __repr__(self) -> str:
        return f"RunHandle({self.run_dir}, {'running' if self.running else f'exit {self._proc.returncode}'})"


def _relay(stream: IO[str], out: Callable[[], IO[str]] | None, kept: deque[str]) -> threading.Thread:
    """A thread that keeps a child's output lines and, with `out`, prints them there as they come (the
    caller's sys.stdout when it prints: a notebook's cell, pytest's capture)."""
    def copy() -> None:
        for line in stream:
            kept.append(line)
            if out:
                print(line, end="", file=out(), flush=True)

    thread = threading.Thread(target=copy, name="hotprune-relay", daemon=True)
    thread.start()
    return thread


def run(config: Config, *, background: bool = False, quiet: bool = False,
        ray: str | None = None) -> RunResult | RunHandle:
    """Run the service for `config` to its end and return the result, printing the console of
    `hotprune run` (`quiet`: its first lines and the summary only). With `background`, return once the
    run has started, with a handle on it; its console is not printed (follow `handle.events()`). `ray`: a
    Ray cluster's address ("auto": the one this machine is in), as `hotprune run --ray` (docs/distributed.md):
    the workers spread over its nodes, over tcp."""
    handle = RunHandle(config, echo=not background, quiet=quiet or background, ray=ray)
    if background:
        return handle
    try:
        return handle.wait()
    except KeyboardInterrupt:
        handle.stop()
        raise


def load_run(run_dir: str | os.PathLike) -> runlog.Run:
    """A run's config and every process's events, read back from its directory (finished or running)."""
    return runlog.load(os.fspath(run_dir))


@dataclass(frozen=True)
class Diagnosis:
    """`hotprune diagnose`'s checks: each PASS, FAIL or INFO, with its evidence. `str()` is the report."""

    run_dir: Path
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not any(c.status == "FAIL" for c in self.checks)

    @property
    def exit_code(self) -> int:
        """The command's: 0 all PASS, 1 a FAIL, 3 lines of the logs could not be read."""
        from hotprune.commands.diagnose import exit_code

        return exit_code(self.checks)

    def __str__(self) -> str:
        from hotprune.commands.diagnose import report

        return report(self.checks)


def diagnose(run_dir: str | os.PathLike) -> Diagnosis:
    """The pruning checklist of a run, from its logs (hotprune.commands.diagnose)."""
    from hotprune.commands.diagnose import diagnose as checks

    run = load_run(run_dir)
    return Diagnosis(run.path, checks(run))


def evaluate(policy: Any, episodes: int = 10, deterministic: bool = False, seed: int = 0,
             video: str | os.PathLike | None = None, env_id: str | None = None) -> dict:
    """`hotprune eval`: a kept policy (a run directory, a policy file, or a loaded Policy) on its
    environment for `episodes` episodes seeded seed, seed + 1, ...: a dict with return_mean,
    return_std, returns (each episode's), nonzero_params, params and the policy's version."""
    from hotprune.commands.evaluate import evaluate as episodes_of
    from hotprune.policy_api import Policy

    path = policy.path if isinstance(policy, Policy) else Path(os.fspath(policy))
    return episodes_of(path, episodes, deterministic, seed, Path(video) if video else None, env_id)


@dataclass(frozen=True)
class Experiments:
    """A grid's outcome: `rows`, one per variant, are the table's (results.md, results.csv at `results`'s
    side); `failed` counts the runs that failed."""

    results: Path
    rows: list[dict]
    failed: int


def experiments(name: str | None = None, seeds: Sequence[int] | None = None, *,
                grid: str | os.PathLike | None = None, settings: Mapping[str, Any] | Sequence[str] = (),
                root: str | os.PathLike = "logs", jobs: int = 1, eval_episodes: int = 0,
                log: Callable[[str], Any] = print, variants: Sequence[str] = (), ray: str | None = None,
                ray_shared: str | os.PathLike | None = None) -> Experiments:
    """`hotprune experiments --experiment NAME` (a built-in grid) or `--grid FILE.toml` (`grid`, a grid
    file: docs/experiments.md): its runs under root/pruning_<name>/ (completed runs are kept, not run
    again), then its table and plots. `seeds`: the grid's own (its file's `seeds`) when None. `settings`
    apply to every run: a dict as Config.from_dict takes, or `--set` KEY=VALUE strings; `log` gets each
    progress line; `variants`: only these of the grid's (a part of a grid too long to run whole; its table
    has the others' rows empty). `ray`: a Ray cluster's address ("auto": this machine's) whose nodes run the
    cells (docs/experiments.md, "On a Ray cluster"; the ray extra); `ray_shared`: a path every node sees,
    where the cells write instead of sending their run directories back."""
    from hotprune.commands import grids
    from hotprune.commands.experiments import run_grid

    if (name is None) == (grid is None):
        raise ConfigError("experiments takes a built-in grid's name or a grid file, one of the two")
    chosen = grids.builtin(name) if grid is None else grids.load(Path(os.fspath(grid)))
    extra = as_overrides(settings) if isinstance(settings, Mapping) else list(settings)
    results, rows, failed = run_grid(chosen, None if seeds is None else list(seeds), Path(root), jobs, extra, log,
                                     eval_episodes, variants, ray, None if ray_shared is None else Path(ray_shared))
    return Experiments(results, rows, failed)
