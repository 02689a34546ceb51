"""Structured event logs: one JSON line per event, one file per process, under <run_dir>/logs/.

Every line carries ts (ISO 8601 UTC), event, role, pid and run_id. A process started by hand also
echoes: the human lines of hotprune.runs.console to stdout, warnings and errors to stderr (a warning that
repeats only its first few times, then once per interval). Under a supervisor nothing is echoed:
the supervisor's view (hotprune.runs.view) draws the console of the whole run from these files, so one
process owns the terminal. Arrays never reach a log line whole: they are written as a summary.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import structlog.tracebacks

from hotprune.runs import console, private
from hotprune.roles import liveness


def log_path(run_dir: Path, role: str, index: int | str | None = None) -> Path:
    name = role if index is None else f"{role}-{index}"
    return run_dir / "logs" / f"{name}.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "shape"):
        return f"<{type(value).__name__} shape={list(value.shape)} dtype={value.dtype}>"
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not loggable")


_NOT_ECHOED = ("event", "level", "ts", "pid", "run_id", "exception")
# A crash's traceback goes into the JSON line as structured frames, without local variables (they
# could hold whole tensors, or a message's bytes).
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False, max_frames=20))


ECHO_FIRST = 5  # a repeating warning is echoed its first ECHO_FIRST times,
ECHO_EVERY_S = 10.0  # then at most once per ECHO_EVERY_S seconds


class _Repeats:
    """Throttles the console echo of a warning that repeats, e.g. `message_rejected` under a flood of
    forged messages: the first few, then one line per interval saying how many were held back. Only
    the echo: the JSON log keeps every event (diagnose counts them, and each one is evidence)."""

    def __init__(self, first: int, every_s: float):
        self.first, self.every_s = first, every_s
        self.echoed: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.due: dict[str, float] = {}

    def admit(self, event: str) -> str | None:
        """None to hold this one back; else a note to append to its line ("" for none)."""
        now = time.monotonic()
        echoed = self.echoed.get(event, 0)
        if echoed >= self.first and now < self.due[event]:
            self.held[event] = self.held.get(event, 0) + 1
            return None
        self.echoed[event] = echoed + 1
        if echoed + 1 < self.first:
            return ""
        self.due[event] = now + self.every_s
        held = self.held.pop(event, 0)
        if echoed + 1 == self.first:
            return f" (from now on at most one line per {self.every_s:g} s; the JSON log has every one)"
        return f" ({held} more since the last shown; the JSON log has every one)" if held else ""


class Problems:
    """The stderr lines of warnings and errors, `[role] level: event key=value ...`, a repeating warning
    throttled. A process started by hand prints its own; the supervisor's view those of a whole run."""

    def __init__(self):
        self.repeats = _Repeats(ECHO_FIRST, ECHO_EVERY_S)

    def line(self, event_dict: dict, key: str | None = None) -> str | None:
        """The line for a warning or error (None for other events, and for a repeat held back); `key`
        names what counts as a repeat (default: the event's name)."""
        level = event_dict.get("level", "info")
        if level not in ("warning", "error", "critical"):
            return None
        note = self.repeats.admit(key or event_dict["event"]) if level == "warning" else ""
        if note is None:
            return None
        fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if k not in _NOT_ECHOED)
        return f"[{event_dict.get('role')}] {level}: {event_dict['event']} {fields}{note}"


def _echo():
    problems = Problems()

    def processor(logger, method_name, event_dict):
        problem = problems.line(event_dict)
        if problem:
            print(problem, file=sys.stderr, flush=True)
        elif event_dict.get("level") == "info":
            line = console.human_line(event_dict)
            if line:
                print(line, flush=True)
        return event_dict

    return processor


SUPERVISED = "HOTPRUNE_SUPERVISED"  # set by the supervisor in its children's environment: they do not echo


def _leading_fields(logger, method_name, event_dict):
    # ts and event first: the lines read well with grep and head.
    return {"ts": event_dict.pop("ts"), "event": event_dict.pop("event"), **event_dict}


def setup(run_dir: Path, run_id: str, role: str, index: int | None = None, echo: bool = True,
          node: str | None = None):
    """Configure structlog for this process and return its logger, bound to role, pid and run_id (and
    worker_id for an `index`, node_id for a `node`: a relay, or a worker fed by one).

    It echoes to the terminal (see the module's doc) if `echo` and no supervisor started it. Its file is
    logs/<role>[-<index>].jsonl; a relay's, logs/relay-<node>.jsonl."""
    path = log_path(run_dir, role, node if index is None else index)
    private.make_dirs(path.parent, private.SHARED_DIR)
    stream = os.fdopen(private.create(path, append=True), "a", buffering=1, encoding="utf-8")  # 0644 under any umask
    echoing = [_echo()] if echo and not os.environ.get(SUPERVISED) else []
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _TRACEBACKS,
            _cut_exception_values,
            *echoing,
            _leading_fields,
            structlog.processors.JSONRenderer(serializer=functools.partial(json.dumps, default=_jsonable)),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    context = {"role": role, "pid": os.getpid(), "run_id": run_id}
    if index is not None:
        context["worker_id"] = index
    if node is not None:
        context["node_id"] = node
    return structlog.get_logger().bind(**context)


EXCEPTION_VALUE_CHARS = 200  # an exception's message may hold anything (a message's bytes): cut


def _cut_exception_values(logger, method_name, event_dict):
    stack = list(event_dict.get("exception", []))
    while stack:
        exc = stack.pop()
        if isinstance(exc, dict):
            exc["exc_value"] = str(exc.get("exc_value", ""))[:EXCEPTION_VALUE_CHARS]
            stack.extend(exc.get("exceptions", []))
    return event_dict


@contextmanager
def crashes_logged(log):
    """An exception escaping the block is logged as `process_crashed` (type, message, frames) in the
    process's own file, then raised on: a process that dies leaves its reason in its log. A refusal
    (hotprune.roles.entry.refusals: exit 2, its one error line on stderr) is no crash: logged as
    `refused`, which the console does not echo a second time."""
    try:
        yield
    except Exception as exc:
        from hotprune.roles.entry import refusals  # when it happens: they live in modules that load numpy and zmq

        if isinstance(exc, refusals()):
            log.info("refused", error=str(exc)[:EXCEPTION_VALUE_CHARS])
        else:
            log.error("process_crashed", error=f"{type(exc).__name__}: {str(exc)[:EXCEPTION_VALUE_CHARS]}",
                      exc_info=True)
        raise


class Heartbeat:
    """A `heartbeat` event at most every `every_s` seconds: proof of life, with the caller's counters;
    and, more often, the liveness ping the supervisor watches for hangs (hotprune.roles.liveness).

    Call `beat` from the process's busiest loop; it costs a clock read when nothing is due.
    """

    def __init__(self, log, every_s: float):
        self.log, self.every_s = log, every_s
        self.due = time.monotonic() + every_s
        self.pulse = liveness.Pulse.inherited()
        self.pulse.ping()

    def done(self) -> None:
        """Tell the supervisor this process's work is done and its exit follows (hotprune.roles.liveness.DONE)."""
        self.pulse.done()

    def beat(self, **counters) -> None:
        self.pulse.ping()
        now = time.monotonic()
        if now >= self.due:
            self.due = now + self.every_s
            self.log.info("heartbeat", **counters)
