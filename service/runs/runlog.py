"""Reading a run back from its directory: config and JSON-line events, without the service running.

One reader for everything that looks at finished (or running) runs: `hotprune diagnose`, `show`,
`list`, the console (`Tail`: the events logged since the last read), hotprune.api and the tests. The trainer's events are read as the run's history: after a trainer resumed
from a checkpoint, the lines of the epochs it redid replace those of the trainer before it. A missing
directory, a directory that is not a run, or a run with no logs yet
raise RunError with one line that says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hotprune.config import Config, ConfigError, load_config


class RunError(ValueError):
    """The directory is not a readable hotprune run."""


@dataclass
class Run:
    path: Path
    config: Config
    logs: dict[str, list[dict]] = field(default_factory=dict)  # file stem (trainer, worker-0, ...) -> events

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
    logs = {}
    for file in sorted((run_dir / "logs").glob("*.jsonl")):
        lines = []
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            event = _event(line)
            if event is not None:
                lines.append(event)
        logs[file.stem] = _rewound(lines) if file.stem == "trainer" else lines
    if not any(logs.values()):
        raise RunError(f"{run_dir} has no log events yet")
    return Run(run_dir, config, logs)


def _rewound(lines: list[dict]) -> list[dict]:
    """The trainer's log as the run's history. A resumed trainer goes on from its checkpoint's epoch
    and redoes the epochs after it: what earlier trainers logged for those epochs is superseded."""
    out: list[dict] = []
    for e in lines:
        if e["event"] == "trainer_resumed" and isinstance(e.get("epoch"), int):
            out = [x for x in out if not isinstance(x.get("epoch"), int) or x["epoch"] <= e["epoch"]]
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
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            done = data.rfind(b"\n") + 1
            self.offsets[path] = self.offsets.get(path, 0) + done
            new += [e for e in map(_event, data[:done].splitlines()) if e is not None]
        return sorted(new, key=lambda e: str(e.get("ts", "")))


def _event(line: str | bytes) -> dict | None:
    """One log line's event; None for a line being written or cut off by a kill."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None
