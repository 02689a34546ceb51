"""`hotprune list` and `show` on run directories written here: columns as wide as their content, and a
run whose processes died without a word says how to resume it."""

from __future__ import annotations

import json
from pathlib import Path

from hotprune.commands.show import list_runs, show
from hotprune.config import load_config, to_toml
from hotprune.runs.runlog import load

LONG_ID = "cartpole-async-bp-mag80-s1-20261122-203000-ab12-seed-sweep"  # longer than the old fixed 32 columns


def a_run(runs: Path, run_id: str, *events: dict) -> Path:
    """A run directory with its config.toml and, as its supervisor's log, `events`."""
    run_dir = runs / run_id
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.toml").write_text(to_toml(load_config(None, [f"run_id={run_id}", "env_id=CartPole-v1"])))
    who = {"ts": "2026-01-01T00:00:00+00:00", "role": "supervisor", "pid": 1, "run_id": run_id}
    (run_dir / "logs" / "supervisor.jsonl").write_text("".join(json.dumps({**who, **e}) + "\n" for e in events))
    return run_dir


def test_list_sizes_each_column_to_its_widest_cell(tmp_path):
    for run_id in ("a", LONG_ID):
        a_run(tmp_path, run_id, {"event": "run_finished", "outcome": "completed", "logs": "logs"})
    header, *rows = list_runs(tmp_path).splitlines()
    assert [row.split()[0] for row in rows] == ["a", LONG_ID]
    for column, cell in [("env", "CartPole-v1"), ("mode", "async"), ("outcome", "completed")]:
        assert [row.index(f" {cell} ") + 1 for row in rows] == [header.index(f" {column}") + 1] * 2, (column, rows)
    assert header.index(" env") == len(LONG_ID)


def test_show_of_a_run_killed_without_a_word_says_how_to_resume_it(tmp_path):
    run_dir = a_run(tmp_path, "killed", {"event": "run_started", "resumed": False})
    assert show(load(run_dir)).splitlines()[-1] == (
        f"no process of the run is alive and none said it finished (killed?): resume it: "
        f"hotprune run --resume {run_dir}")
