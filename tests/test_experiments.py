"""`hotprune experiments` (a real grid of short runs: resumable, a results table) and `hotprune report`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hotprune as hotprune_api
from hotprune.commands import experiments, report
from hotprune.config import ConfigError
from hotprune.runs.runlog import load
from tests.servicekit import SMALL, hotprune, run_cli

pytestmark = pytest.mark.slow
ROOT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_pruning_experiments.py"
TINY = [x for item in [*SMALL, "epochs=3"] for x in ("--set", item)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    result = subprocess.run([sys.executable, str(ROOT_SCRIPT), "--experiment", "basic", "--seeds", "1",
                             "--root", str(root), *TINY], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "pruning_basic", result


def test_the_grid_runs_every_variant_in_the_seeds_layout_and_ends_with_a_table(grid):
    base, result = grid
    names = [v.name for v in experiments.EXPERIMENTS["basic"]]
    for name in names:
        assert load(base / name / "s1").summary["completed"], name
    rows = list(csv.DictReader(open(base / "results.csv")))
    assert [r["variant"] for r in rows] == names
    assert all(r["seeds"] == "1" for r in rows)
    table = (base / "results.md").read_text()
    assert table in result.stdout and table.count("\n| ") == len(names) + 2  # header, rule, a row per variant
    both = next(r for r in rows if r["variant"] == "async_both_pruned")
    assert float(both["training_sparsity"]) == pytest.approx(0.8, abs=1e-3) and float(both["params_kept"]) == 1128
    assert "too few seeds to tell" in table  # one seed: no noise estimate, no verdict


def test_hotprune_experiments_returns_the_tables_rows_and_reruns_nothing_completed(grid):
    base, _ = grid
    lines = []
    result = hotprune_api.experiments("basic", [1], settings=[*SMALL, "epochs=3"], root=base.parent, log=lines.append)
    names = [v.name for v in experiments.EXPERIMENTS["basic"]]
    assert result.failed == 0 and result.results == base / "results.md"
    assert [line for line in lines if "done already" in line] == [f"{n} seed 1: done already ({base / n / 's1'})"
                                                                   for n in names]
    assert [r["variant"] for r in result.rows] == names
    for row, csv_row in zip(result.rows, csv.DictReader(open(base / "results.csv"))):
        assert row["seeds"] == 1 and row["returns"] == [pytest.approx(float(csv_row["return_mean"]))]
        assert row["training_sparsity"] == pytest.approx(float(csv_row["training_sparsity"]))


def test_an_interrupted_grid_resumes_and_runs_only_what_is_missing(grid, tmp_path):
    base, _ = grid
    unfinished = base / "sync_teacher_student" / "s1" / "logs" / "trainer.jsonl"
    lines = [line for line in unfinished.read_text().splitlines() if json.loads(line)["event"] != "summary"]
    unfinished.write_text("\n".join(lines) + "\n")  # as if the run had been killed before its end
    # A kept run made with other settings than the grid's is not reused.
    changed = base / "async_dense" / "s1" / "config.toml"
    changed.write_text(changed.read_text().replace("samples_per_epoch = 512", "samples_per_epoch = 1024"))
    result = hotprune("experiments", "--experiment", "basic", "--seeds", "1", "1", "--root", str(base.parent),
                      "--eval-episodes", "2", *TINY)
    assert result.returncode == 0, result.stderr
    done = [line for line in result.stdout.splitlines() if "done already" in line]
    assert len(done) == len(experiments.EXPERIMENTS["basic"]) - 2
    assert "sync_teacher_student seed 1: an unfinished run moved to" in result.stdout
    assert "async_dense seed 1: a run with other settings moved to" in result.stdout
    for name in ("sync_teacher_student", "async_dense"):
        assert result.stdout.count(f"{name} seed 1: exit 0") == 1  # seed 1 given twice: run once
        assert load(base / name / "s1").summary["completed"]
        assert list((base / name).glob("s1.failed-*"))
    # --eval-episodes: every kept policy evaluated with deterministic actions, kept, and tabled
    table = (base / "results.md").read_text()
    assert "deterministic actions, 2 episodes each" in table
    for variant in experiments.EXPERIMENTS["basic"]:
        kept = json.loads((base / variant.name / "s1" / experiments.EVAL_FILE).read_text())
        assert kept["episodes"] == 2 and kept["deterministic"] and kept["env_id"] == "CartPole-v1"
        assert f"| {variant.name} | {kept['return_mean']:.1f} ± 0.0 | {kept['return_mean']:.1f} |" in table


def test_the_grid_plots_every_variant_and_the_plots_are_drawn_from_the_data(grid):
    base, _ = grid
    for name in report.PLOTS:
        png = (base / "report" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    runs = [load(base / v.name / "s1") for v in experiments.EXPERIMENTS["basic"]]
    fig = report.figure("return", runs)
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["s1"] * len(runs) or len(lines) == len(runs)
    for line, run in zip(lines, runs):
        epochs = run.events("trainer", "epoch")
        expected = [e["reward_mean"] for e in epochs if e["reward_mean"] is not None]
        np.testing.assert_allclose(line.get_ydata(), expected)
        assert list(line.get_xdata()) == list(np.cumsum([e["samples"] for e in epochs]))[-len(expected):]


@pytest.mark.parametrize("args, message", [
    (["--experiment", "everything"], "--experiment must be one of"),
    (["--experiment", "basic", "--jobs", "999"], "--jobs must be in"),
    (["--experiment", "basic", "--eval-episodes", "-1"], "--eval-episodes must be in"),
    (["--experiment", "basic", "--set", "pruning.target_sparsity=2"], "pruning.target_sparsity must be in"),
])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, capsys, args, message):
    code, _, err = run_cli(capsys, "experiments", "--root", str(tmp_path), *args)
    assert code == 2 and message in err
    assert not any(tmp_path.iterdir())


def test_welch_tells_noise_from_a_difference_and_keeps_false_alarms_near_five_percent():
    diff, p = experiments.welch([100, 102, 98], [200, 201, 199])
    assert diff == 100 and p < 1e-4
    diff, p = experiments.welch([1, 2, 3, 4], [2, 3, 4, 5.5])  # scipy.stats.ttest_ind(equal_var=False): 0.2986
    assert diff == 1.125 and p == pytest.approx(0.2986, abs=1e-3)
    assert experiments.welch([500, 500, 500], [500, 500, 500]) == (0.0, 1.0)  # every seed at the maximum
    rng = np.random.default_rng(0)  # 3 seeds against 3 from the same distribution
    alarms = sum(experiments.welch(list(rng.normal(0, 1, 3)), list(rng.normal(0, 1, 3)))[1] < 0.05
                 for _ in range(2000))
    assert alarms / 2000 < 0.07
    with pytest.raises(ConfigError):
        experiments.plan("basic", [], Path("/tmp"), [])


def test_variants_run_only_those_of_the_grid_seed_by_seed_and_an_unknown_one_is_refused(tmp_path, capsys):
    grid = experiments.plan("lth", [2, 1], tmp_path, [], ["ticket_magnitude_80", "dense"])
    assert [(v.name, s) for v, s, _ in grid] == [("dense", 2), ("ticket_magnitude_80", 2), ("dense", 1),
                                                 ("ticket_magnitude_80", 1)]
    code, _, err = run_cli(capsys, "experiments", "--experiment", "lth", "--root", str(tmp_path),
                           "--variants", "dense", "ticket_magnitude_85")
    assert code == 2 and "--variants must be among lth's dense, gradual_80" in err and "got ticket_magnitude_85" in err
    assert not any(tmp_path.iterdir())
