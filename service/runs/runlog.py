"""Reading a run back from its directory: config and JSON-line events, without the service running.

One reader for everything that looks at finished (or running) runs: `hotprune diagnose`, `show`,
`list`, `report`, the console (`Tail`: the events logged since the last read), hotprune.api and
the tests. The trainer's events are read as the run's history: after a trainer resumed from a
checkpoint, the lines of the epochs it redid replace those of the trainer before it. A missing
directory, a directory that is not a run, or a run with no logs yet raise RunError with one line that
says which.

The reader is total: whatever a log file holds, reading it returns events or counts what it could
not read, and never raises. A line is read only if it is UTF-8, one JSON object (nested at most as
deep as Python's parser goes, integers of at most 4,300 digits) and its fields have the types
EVENTS declares for its event (every line: COMMON). So a consumer may index a declared field of
an event it gets (`e["samples"]` of an `epoch` is an int; a field declared `maybe` can be None, and
one declared `optional` can be absent: read those with `.get`). Every other line is counted per
file as `Unreadable` (how many, the first one's line number and why), which the commands report;
a last line with no newline is one still being written (or cut off by a kill) and is not counted.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, NamedTuple

from hotprune.config import Config, ConfigError, load_config


class RunError(ValueError):
    """The directory is not a readable hotprune run."""


# --- what a readable line is ------------------------------------------------------------------


class Kind(NamedTuple):
    """A field's type: `name` for the message, `test` on the decoded JSON value."""

    name: str
    test: Callable[[Any], bool]
    optional: bool = False  # may be absent


INT_LIMIT = 2**63  # an integer a log writes fits in 64 bits; a larger one would not even convert to float


def _is_int(v: Any) -> bool:
    return type(v) is int and -INT_LIMIT < v < INT_LIMIT  # bool is no int here


def _is_time(v: Any) -> bool:
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        return False
    return True


INT = Kind("an integer", _is_int)
NUM = Kind("a number", lambda v: type(v) is float or _is_int(v))
STR = Kind("a string", lambda v: type(v) is str)
BOOL = Kind("true or false", lambda v: type(v) is bool)
TIME = Kind("an ISO 8601 time", _is_time)


def maybe(kind: Kind) -> Kind:
    return Kind(f"{kind.name} or null", lambda v: v is None or kind.test(v), kind.optional)


def optional(kind: Kind) -> Kind:
    return kind._replace(optional=True)


def list_of(kind: Kind) -> Kind:
    return Kind(f"a list, each {kind.name}", lambda v: type(v) is list and all(map(kind.test, v)))


def pair(first: Kind, second: Kind) -> Kind:
    return Kind(f"[{first.name}, {second.name}]",
                lambda v: type(v) is list and len(v) == 2 and first.test(v[0]) and second.test(v[1]))


def record(**fields: Kind) -> Kind:
    return Kind("{" + ", ".join(fields) + "}", lambda v: type(v) is dict and _bad_field(v, fields) is None)


def dict_of(kind: Kind) -> Kind:
    return Kind(f"an object of {kind.name}", lambda v: type(v) is dict and all(map(kind.test, v.values())))


LAYERS = dict_of(record(sparsity=NUM, kept=INT, total=INT))
COMMON = {"ts": TIME, "role": STR, "pid": INT, "run_id": STR}
# The fields the readers use, by event (or by (role, event) where roles log an event differently).
EVENTS: dict[str | tuple[str, str], dict[str, Kind]] = {
    "epoch": {"epoch": INT, "epochs": INT, "samples": INT, "global_step": optional(INT), "reward_mean": maybe(NUM),
              "samples_per_s": NUM, "rollout_s": NUM, "train_s": NUM, "epoch_s": NUM, "training_sparsity": NUM,
              "inference_sparsity": maybe(NUM), "inference_version": maybe(INT), "policy_lag": NUM,
              **dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
                               "qf_loss", "actor_loss", "alpha", "critic_sparsity"), optional(maybe(NUM))),
              "replay_size": optional(INT)},
    "snapshot_published": {"version": INT, "epoch": INT, "training_sparsity": NUM,
                           "compression_scheduled": optional(BOOL), "after_masks": optional(BOOL)},
    "masks_applied": {"version": INT, "epoch": INT, "training_sparsity_verified": NUM,
                      "masks_sparsity": optional(NUM), "target_sparsity": maybe(NUM), "newly_pruned": INT,
                      "revived": INT, "inference_version": maybe(INT), "structure": optional(STR),
                      "inference_sparsity": maybe(NUM)},
    ("trainer", "masks_loaded"): {"mask_file": STR, "training_sparsity_verified": NUM},
    ("compressor", "masks_loaded"): {"mask_file": STR, "weight_sparsity": NUM, "params_kept": INT,
                                     "params_total": INT},
    "trainer_resumed": {"epoch": INT},
    "summary": {"mode": STR, "prune_training_model": BOOL, "epochs": INT, "completed": BOOL,
                "reward_mean": maybe(NUM), "last_n": INT, "reward_mean_last": maybe(NUM), "epoch_s_mean": NUM,
                "rollout_s_mean": NUM, "train_s_mean": NUM, "samples_per_s_mean": NUM,
                "final_training_sparsity": maybe(NUM), "final_inference_sparsity": maybe(NUM),
                "pruned_sparsity": optional(maybe(NUM)), "target_sparsity": maybe(NUM), "structure": optional(STR),
                "pruned_params_kept": optional(maybe(INT)), "training_params_kept": optional(INT),
                "inference_nonzero_params": optional(INT), "training_layers": optional(LAYERS),
                "compression_failures": optional(INT), "params_total": INT, "swaps": INT,
                "swap_latency_ms_median": maybe(NUM), "swap_latency_ms_p99": maybe(NUM), "policy_lag_mean": NUM,
                "policy_lag_max": INT, "max_policy_lag": INT, "samples_received": INT, "samples_used": INT,
                "samples_dropped_stale": INT, "method": optional(STR), "critics_sparsity": optional(dict_of(NUM))},
    "pruning_planned": {"method": STR, "structure": STR, "scope": STR, "distribution": STR, "regrow": BOOL,
                        "schedule": STR, "steps": list_of(pair(INT, NUM))},
    "snapshot_received": {"version": INT, "pruned_nonzero": maybe(INT), "masks_version": maybe(INT)},
    "compression_started": {"due_epoch": INT, "folded_due_epochs": list_of(INT)},
    "compression_finished": {"version": INT, "epoch": INT, "due_epoch": INT, "structure": STR,
                             "target_sparsity": NUM, "achieved_sparsity": NUM, "weight_sparsity": NUM,
                             "unit_sparsity": maybe(NUM), "params_kept": INT, "params_total": INT, "mask_churn": INT,
                             "dropped": optional(INT), "regrown": optional(INT), "drop_fraction": optional(NUM),
                             "duration_ms": NUM},
    "compression_failed": {"version": INT, "epoch": INT, "due_epoch": INT, "reason": STR},
    "masks_sent": {"version": INT, "weight_sparsity": optional(NUM), "tensors": optional(BOOL),
                   "again": optional(BOOL), "failed": optional(BOOL)},
    "policy_saved": {"version": INT, "weight_sparsity": NUM},
    "relay_wrote": {"version": INT, "nbytes": INT, "node_id": STR},
    "worker_swapped": {"version": INT, "sparsity": NUM, "latency_ms": optional(NUM), "node_id": optional(STR)},
    "store_waiting": {"worker_id": INT, "waited_s": NUM, "timeout_s": NUM},
    "message_rejected": {"reason": STR},
    "store_read_failed": {"reason": STR},
    "process_started": {"name": STR, "child_pid": INT},
    "process_exited": {"name": STR, "child_pid": INT, "exitcode": optional(maybe(INT))},
    "run_finished": {"outcome": STR, "logs": STR},
}
SHOWN_CHARS = 40  # of a bad value, in the reason a line is unreadable


class BadLine(ValueError):
    """Why a log line cannot be read."""


def parse_line(raw: bytes) -> dict:
    """One log line as an event whose declared fields have their types; BadLine says why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"not UTF-8 (byte {exc.start})") from None
    try:
        event = json.loads(text)
    except RecursionError:
        raise BadLine("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and since Python 3.11 an integer of over 4,300 digits
        raise BadLine(f"not JSON ({str(exc)[:SHOWN_CHARS]})") from None
    if type(event) is not dict or type(event.get("event")) is not str:
        raise BadLine("not a JSON object with an event name")
    bad = _bad_field(event, COMMON)  # role first: a str, before it names the event's fields
    if bad is None:
        bad = _bad_field(event, EVENTS.get((event["role"], event["event"])) or EVENTS.get(event["event"], {}))
    if bad is not None:
        raise BadLine(f"{event['event'][:SHOWN_CHARS]}: {bad}")
    return event


def _bad_field(value: dict, kinds: dict[str, Kind]) -> str | None:
    for name, kind in kinds.items():
        if name not in value:
            if not kind.optional:
                return f"no {name}"
        elif not kind.test(value[name]):
            return f"{name} is {_shown(value[name])}, not {kind.name}"
    return None


def _shown(value: Any) -> str:
    try:
        shown = json.dumps(value)  # decoded from JSON: it encodes again, unless nested to the parser's limit
    except RecursionError:
        return "a value nested too deeply"
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "..."


# --- a run's log files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Unreadable:
    """What of one log file could not be read."""

    file: str  # as shown: logs/trainer.jsonl
    lines: int  # how many lines (0: the file as a whole)
    first_line: int
    reason: str

    def __str__(self) -> str:
        if not self.lines:
            return f"{self.file} could not be read: {self.reason}"
        return (f"{self.lines} unreadable line{'s' * (self.lines != 1)} in {self.file}, first at line "
                f"{self.first_line}: {self.reason}")


MAX_LOG_BYTES = 1 << 30  # a log is read whole into memory: a larger file is refused rather than loaded


def read_log(path: Path, offset: int = 0) -> tuple[list[dict], Unreadable | None, int]:
    """The events of one log file from byte `offset` on, what of it could not be read, and the
    offset after its last complete line (where the next read goes on). Never raises: a file that is
    not a regular file (a link to a device or a pipe would never end), or that cannot be opened, is
    one Unreadable."""
    shown = f"{path.parent.name}/{path.name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link (a run's logs are its own files)" if exc.errno == errno.ELOOP else exc.strerror
        return [], Unreadable(shown, 0, 0, why or type(exc).__name__), offset
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return [], Unreadable(shown, 0, 0, "not a regular file"), offset
        if info.st_size > MAX_LOG_BYTES:
            return [], Unreadable(shown, 0, 0, f"{info.st_size:,} bytes, more than a log holds"), offset
        f.seek(offset)
        data = f.read()
    done = data.rfind(b"\n") + 1  # a line still being written waits for its newline
    events, bad, first, why = [], 0, 0, ""
    for number, raw in enumerate(data[:done].split(b"\n")[:-1], start=1):  # counted from `offset`
        if not raw.strip():
            continue
        try:
            events.append(parse_line(raw))
        except BadLine as exc:
            bad += 1
            if bad == 1:
                first, why = number, str(exc)
    return events, (Unreadable(shown, bad, first, why) if bad else None), offset + done


# --- a run --------------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    config: Config
    logs: dict[str, list[dict]] = field(default_factory=dict)  # file stem (trainer, worker-0, ...) -> events
    unreadable: list[Unreadable] = field(default_factory=list)  # per log file, what could not be read

    def events(self, name: str, event: str | None = None) -> list[dict]:
        """Events of one log file (by stem), optionally only those named `event`."""
        lines = self.logs.get(name, [])
        return lines if event is None else [e for e in lines if e["event"] == event]

    def epochs(self) -> list[dict]:
        """The trainer's `epoch` events, each with `global_step` (env samples so far; summed here for
        logs written before the field existed)."""
        out, total = [], 0
        for e in self.events("trainer", "epoch"):
            total += e["samples"]
            out.append({"global_step": total, **e})
        return out

    def workers(self) -> list[str]:
        return sorted(n for n in self.logs if n.startswith("worker-"))

    def relays(self) -> list[str]:
        """The relays' log files by stem (relay-<node>), one per node fed by a relay."""
        return sorted(n for n in self.logs if n.startswith("relay-"))

    def all(self, event: str) -> list[dict]:
        """Every process's events of one name, in file order per process."""
        return [e for lines in self.logs.values() for e in lines if e["event"] == event]

    @property
    def summary(self) -> dict | None:
        found = self.events("trainer", "summary")
        return found[-1] if found else None

    @property
    def finished(self) -> dict | None:
        found = self.events("supervisor", "run_finished")
        return found[-1] if found else None


def run_config(run_dir: Path) -> Config:
    """A run's own config (its config.toml; the run id is its directory's name); RunError if it has none."""
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory")
    if not (run_dir / "config.toml").is_file():
        raise RunError(f"{run_dir} is not a hotprune run (no config.toml)")
    try:
        config = load_config(run_dir / "config.toml")
    except ConfigError as exc:
        raise RunError(f"{run_dir}: {exc}") from None
    resolved = run_dir.resolve()  # runs/latest is a link: the run's own name
    config.runs_dir, config.run_id = str(resolved.parent), resolved.name
    return config


def load(path: str | Path) -> Run:
    run_dir = Path(path)
    config = run_config(run_dir)
    logs, unreadable = {}, []
    for file in sorted((run_dir / "logs").glob("*.jsonl")):
        lines, bad, _ = read_log(file)
        if bad:
            unreadable.append(bad)
        logs[file.stem] = _rewound(lines) if file.stem == "trainer" else lines
    if not any(logs.values()) and not unreadable:
        raise RunError(f"{run_dir} has no log events yet")
    return Run(run_dir, config, logs, unreadable)


def _rewound(lines: list[dict]) -> list[dict]:
    """The trainer's log as the run's history. A resumed trainer goes on from its checkpoint's epoch
    and redoes the epochs after it: what earlier trainers logged for those epochs is superseded."""
    out: list[dict] = []
    for e in lines:
        if e["event"] == "trainer_resumed":
            out = [x for x in out if not _is_int(x.get("epoch")) or x["epoch"] <= e["epoch"]]
        out.append(e)
    return out


class Tail:
    """The events a run's log files gained since the last call, in time order. A line still being
    written waits for its newline; files that appear later (a worker's) are picked up."""

    def __init__(self, logs: Path, from_end: bool = False):
        self.logs = logs
        # from_end: a resumed run's earlier history is not shown again
        self.offsets = {path: path.stat().st_size for path in logs.glob("*.jsonl")} if from_end else {}

    def events(self) -> list[dict]:
        new = []
        for path in sorted(self.logs.glob("*.jsonl")):
            # What cannot be read is left out here; `hotprune diagnose` and `show` report it.
            events, _, self.offsets[path] = read_log(path, self.offsets.get(path, 0))
            new += events
        return sorted(new, key=lambda e: e["ts"])
