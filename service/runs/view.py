"""The console of a run, drawn from its JSON logs: what `hotprune run` and `hotprune watch` show.

One process owns the terminal: the supervisor's children only log (eventlog.SUPERVISED), and this
view follows every log file of the run, so a run watched from elsewhere looks like one started here.
On a terminal it is a live view (rich): a progress bar over epochs with env steps, elapsed time and
ETA, and the newest return, sparsity (train / infer), samples/s, swap latency and policy lag, with
the diagnostic lines of hotprune.runs.console scrolling above it. Anywhere else (CI, a file, a pipe) it
prints plain lines of at most WIDTH columns. Warnings and errors of every process go to stderr, a
repeating one throttled as in eventlog. Only this module imports rich: no training process needs it.
"""

from __future__ import annotations

import statistics
import sys
import textwrap
import threading
import time
from collections import deque
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from hotprune.runs import console
from hotprune.runs.runlog import Tail
from hotprune import eventlog
from hotprune.config import Config
from hotprune.roles.entry import stdout_to_devnull
from hotprune.roles.process import load_run_config

QUIET, NORMAL, VERBOSE = -1, 0, 1
WIDTH = 100  # columns of a plain line (a longer one is wrapped at a space)
POLL_S = 0.2  # how often the logs are read
REFRESH_PER_S = 4  # redraws of the live view (its clock moves between events)
END_EVENTS = ("summary", "run_finished")  # shown even with --quiet, and after the live view's last frame
VERBOSE_EVENTS = ("process_started", "process_exited")
SWAPS_SHOWN = 20  # the live view's swap latency: median of the newest swaps of any worker


def header(cfg: Config, run_dir: Path) -> list[str]:
    """The first lines, before any process starts: where the run is (its last part is the run id),
    and what it will do."""
    p = cfg.pruning
    kind = console.kind_of_run(cfg.mode, cfg.prune_training_model, p.method)
    if p.method == "none":  # `hotprune lth train-dense` keeps weights for tickets
        what = f"{kind} run for lottery tickets (weights kept every {cfg.keep_weights_every} epochs)" \
            if cfg.keep_weights_every else f"{kind} baseline"
    else:
        pruning = f"fixed masks of {p.mask_file}" if p.method == "fixed" else \
            f"{p.method} {p.structure}s to {p.target_sparsity:.1%}"
        what = f"{kind}, {pruning}"
    return [f"run {run_dir}", f"  {cfg.env_id}, {what}",
            f"  {cfg.total_epochs} epochs = {cfg.total_epochs * cfg.epoch_samples:,} env steps, "
            f"{cfg.num_workers} workers x {cfg.envs_per_worker} envs, trainer on {_device(cfg.device)}"]


def _device(setting: str) -> str:
    """The device setting as the header says it before the trainer starts (its `trainer_started` line
    says what auto found: the supervisor never imports torch to look)."""
    return "cuda if found (device auto)" if setting == "auto" else setting


def fit(text: str) -> str:
    """Plain lines of at most WIDTH columns: a longer line goes on, indented, on the next (a single
    word longer than that, a path, is left whole)."""
    return "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False) for line in text.splitlines())


def _seconds(event: dict) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


class Progress:
    """Where a run stands, from its events so far: what the live view draws, and whether it is over."""

    def __init__(self):
        self.started = time.time()  # the run's start (its run_started event, once read)
        self.first_epoch: dict | None = None  # the first epoch seen and the newest: the ETA's pace
        self.epoch: dict | None = None
        self.swaps: deque[float] = deque(maxlen=SWAPS_SHOWN)
        self.supervised = False  # a supervisor logs: the run ends at run_finished, else at the summary
        self.finished = False

    def update(self, e: dict) -> None:
        kind = e["event"]
        if e.get("role") == "supervisor":
            self.supervised = True
        if kind == "run_started":  # a resumed run starts again after its first run_finished
            self.started, self.finished = _seconds(e), False
        elif kind == "epoch":
            self.epoch = e
            self.first_epoch = self.first_epoch or e
        elif kind == "worker_swapped" and e.get("latency_ms") is not None:
            self.swaps.append(e["latency_ms"])
        self.finished = self.finished or kind == "run_finished" or (kind == "summary" and not self.supervised)

    def eta(self) -> str:
        first, last = self.first_epoch, self.epoch
        if last["epoch"] == last["epochs"]:
            return "0:00:00"
        if last["epoch"] == first["epoch"]:
            return "--"
        per_epoch = (_seconds(last) - _seconds(first)) / (last["epoch"] - first["epoch"])
        return _clock(max(0.0, per_epoch * (last["epochs"] - last["epoch"]) - (time.time() - _seconds(last))))


class View:
    """The console of one run. `feed` it the run's events; as a context manager it prints the header
    and, on a terminal, draws the live view until the block ends."""

    def __init__(self, cfg: Config, run_dir: Path, verbosity: int = NORMAL, live: bool | None = None):
        self.cfg, self.run_dir, self.verbosity = cfg, run_dir, verbosity
        self.live_wanted = sys.stdout.isatty() and verbosity > QUIET if live is None else live
        self.live = None  # rich.live.Live while drawing
        self.problems = eventlog.Problems()
        self.progress = Progress()
        self.deferred: list[str] = []  # END_EVENTS lines while live: shown under its last frame

    def __enter__(self) -> "View":
        for line in header(self.cfg, self.run_dir):
            self._print(line)
        if self.live_wanted:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(highlight=True), get_renderable=self._render,
                             refresh_per_second=REFRESH_PER_S, redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        elif self.verbosity > QUIET:
            self._print(f"starting {self.cfg.num_workers + 2} processes...")
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()
            self.live = None
        for line in self.deferred:
            self._print(line)

    def feed(self, events: list[dict]) -> None:
        for event in events:
            self._take(event)

    def follow(self, tail: Tail, last: Callable[[], bool] = lambda: False) -> None:
        """Read the logs every POLL_S until the run finishes or `last()` (asked before a read: the
        events logged until then are still shown)."""
        while True:
            final = last()
            self.feed(tail.events())
            if final or self.progress.finished:
                return
            time.sleep(POLL_S)

    def _take(self, e: dict) -> None:
        kind = e["event"]
        problem = self.problems.line(e, key=f"{e.get('role')}{e.get('worker_id', '')}:{kind}")
        if problem:
            self._problem(problem, e.get("level"))
        self.progress.update(e)
        line = console.human_line(e) if self._shown(kind) else None
        if line and self.live and kind in END_EVENTS:
            self.deferred.append(line)
        elif line:
            self._print(line)

    def _shown(self, kind: str) -> bool:
        if kind in END_EVENTS:
            return True
        if self.verbosity == QUIET:
            return False
        if kind in VERBOSE_EVENTS or (kind == "epoch" and self.live_wanted):
            return self.verbosity == VERBOSE
        return True

    def _print(self, text: str) -> None:
        if self.live:
            self.live.console.print(text, markup=False)
            return
        try:
            print(fit(text), flush=True)
        except BrokenPipeError:  # `hotprune run | head`: the reader has gone, the run goes on (its logs keep all)
            stdout_to_devnull()

    def _problem(self, line: str, level: str | None) -> None:
        if self.live and sys.stderr.isatty():  # the same terminal: above the live view, not through it
            self.live.console.print(line, markup=False, style="yellow" if level == "warning" else "bold red")
        else:
            print(line, file=sys.stderr, flush=True)

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        elapsed, e = time.time() - p.started, p.epoch
        if e is None:
            return Text(f"starting {self.cfg.num_workers + 2} processes... {_clock(elapsed)}", style="dim")
        bar = Table.grid(expand=True, padding=(0, 1))
        bar.add_column(ratio=1)
        bar.add_column(no_wrap=True)
        bar.add_row(ProgressBar(total=e["epochs"], completed=e["epoch"]),
                    f"{e['epoch']}/{e['epochs']} epochs  {e['global_step']:,} steps  {_clock(elapsed)} "
                    f"elapsed  ETA {p.eta()}")
        swap = statistics.median(p.swaps) if p.swaps else None
        return Group(bar, Text(console.live_stats(e, swap)))


@contextmanager
def showing(cfg: Config, run_dir: Path, verbosity: int = NORMAL) -> Iterator[View]:
    """The console of a run this process supervises: the header at once (its directory is made: a run
    refused before that prints its one error line alone), then the run's logs followed in a thread
    until the block ends (and what they hold by then)."""
    tail = Tail(run_dir / "logs", from_end=True)
    done = threading.Event()
    with View(cfg, run_dir, verbosity) as view:
        thread = threading.Thread(target=view.follow, args=(tail, done.is_set), name="view", daemon=True)
        thread.start()
        try:
            yield view
        finally:
            done.set()
            thread.join()


def watch(run_dir: Path, verbosity: int = NORMAL) -> int:
    """`hotprune watch`: the console of a run started elsewhere, from its logs so far, until it finishes
    (then exit 0); of a finished run, its summary. Ctrl-C stops watching, not the run (exit 130)."""
    cfg = load_run_config(run_dir)
    tail = Tail(run_dir / "logs")
    history = tail.events()
    so_far = Progress()
    for event in history:
        so_far.update(event)
    if so_far.finished:
        with View(cfg, run_dir, QUIET, live=False) as view:
            view.feed([e for e in history if e["event"] in END_EVENTS])
        return 0
    try:
        with View(cfg, run_dir, verbosity) as view:
            view.feed(history)
            view.follow(tail)
    except KeyboardInterrupt:
        print(f"hotprune watch: stopped watching {run_dir}; the run goes on", file=sys.stderr)
        return 130
    return 0
