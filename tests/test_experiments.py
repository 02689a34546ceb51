"""`hotprune experiments` (a real grid of short runs from a grid file: resumable, a results table, refusing
another --set on its finished runs) and `hotprune report` (bands over seeds, a figure per environment)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hotprune as hotprune_api
from hotprune.commands import experiments, grids, report, stats
from hotprune.runs.runlog import load
from tests.servicekit import SMALL, hotprune, run_cli

pytestmark = pytest.mark.slow
ROOT_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_pruning_experiments.py"
TINY = [x for item in [*SMALL, "epochs=3"] for x in ("--set", item)]


GRID = """# the tests' grid: pruned against dense, two seeds each
seeds = [1, 2]

[[variant]]
name = "both_pruned"
settings = {}

[[variant]]
name = "dense"
settings = {pruning.method = "none"}
"""
NAMES = ["both_pruned", "dense"]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    (root / "two.toml").write_text(GRID)
    result = subprocess.run([sys.executable, str(ROOT_SCRIPT), "--grid", str(root / "two.toml"), "--root", str(root),
                             *TINY], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "pruning_two", result


def test_a_grid_file_runs_every_variant_and_seed_in_the_seeds_layout_and_ends_with_a_table(grid):
    base, result = grid
    for name in NAMES:
        for seed in SEEDS:  # the file's seeds: no --seeds given
            assert load(base / name / f"s{seed}").summary["completed"], (name, seed)
    rows = list(csv.DictReader(open(base / "results.csv")))
    assert [r["variant"] for r in rows] == NAMES and all(r["seeds"] == "2" for r in rows)
    table = (base / "results.md").read_text()
    assert table in result.stdout and table.count("\n| ") == len(NAMES) + 2  # header, rule, a row per variant
    assert "2 seed(s) per variant (1, 2); ppo on CartPole-v1" in table
    assert "interquartile mean (IQM)" in table and "Welch's t-test (scipy.stats.ttest_ind" in table
    both, dense = rows
    assert float(both["training_sparsity"]) == pytest.approx(0.8, abs=1e-3) and float(both["params_kept"]) == 1128
    for row in rows:  # the IQM of two seeds is their mean, inside its bootstrap interval
        returns = [float(x) for x in row["returns"].split(";")]
        assert float(row["return_iqm"]) == pytest.approx(np.mean(returns))
        assert float(row["return_ci_low"]) <= float(row["return_iqm"]) <= float(row["return_ci_high"])
        assert (float(row["return_ci_low"]), float(row["return_ci_high"])) == pytest.approx(stats.iqm_interval(returns))
    diff, p = stats.welch(*([float(x) for x in row["returns"].split(";")] for row in (both, dense)))
    assert dense["vs_first"] == f"{'differs' if p < 0.05 else 'within noise'} ({diff:+.1f}, p={p:.3g})"
    assert both["vs_first"] == "reference"


def test_hotprune_experiments_returns_the_tables_rows_and_reruns_nothing_completed(grid):
    base, _ = grid
    lines = []
    result = hotprune_api.experiments(grid=base.parent / "two.toml", settings=[*SMALL, "epochs=3"], root=base.parent,
                                      log=lines.append)
    assert result.failed == 0 and result.results == base / "results.md"
    assert [line for line in lines if "done already" in line] == [
        f"{n} seed {s}: done already ({base / n / f's{s}'})" for s in SEEDS for n in NAMES]
    assert [r["variant"] for r in result.rows] == NAMES
    for row, csv_row in zip(result.rows, csv.DictReader(open(base / "results.csv"))):
        assert row["seeds"] == 2 and row["returns"] == [pytest.approx(float(x)) for x in csv_row["returns"].split(";")]
        assert row["training_sparsity"] == pytest.approx(float(csv_row["training_sparsity"]))


def test_a_set_change_on_a_finished_grid_is_refused_and_relabels_nothing(grid, capsys):
    base, _ = grid
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    code, out, err = run_cli(capsys, "experiments", "--grid", str(base.parent / "two.toml"), "--root",
                             str(base.parent), *TINY, "--set", "samples_per_epoch=1024")
    assert code == 2 and err.count("\n") == 1 and not out, err
    assert "has finished runs made with other settings (both_pruned/s1: samples_per_epoch 512 -> 1024)" in err
    assert "start a new grid for these settings with another --root" in err
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before  # nothing moved, nothing made


def test_a_grid_finished_before_a_setting_existed_resumes_unless_that_setting_is_asked_otherwise(grid, tmp_path,
                                                                                                capsys):
    """An upgrade adds settings: runs made before it, whose config.toml lacks them, did what their defaults
    do; a grid asking for another value of one is refused as any other change."""
    base, _ = grid
    old = tmp_path / base.name
    shutil.copytree(base, old)
    for config in old.glob("*/s*/config.toml"):  # as written before `device` existed
        config.write_text(config.read_text().replace('device = "auto"\n', ""))
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    code, out, err = run_cli(capsys, "experiments", "--grid", str(base.parent / "two.toml"), "--root", str(tmp_path),
                             *TINY)
    assert code == 0 and out.count("done already") == len(NAMES) * len(SEEDS), err
    code, out, err = run_cli(capsys, "experiments", "--grid", str(base.parent / "two.toml"), "--root", str(tmp_path),
                             *TINY, "--set", "device=cpu")
    assert code == 2 and "made with other settings" in err and "device None -> 'cpu'" in err, err
    assert sorted(p.relative_to(old) for p in old.rglob("*") if "report" not in p.parts
                  and p.name not in ("results.md", "results.csv")) == \
        [p for p in before if "report" not in p.parts and p.name not in ("results.md", "results.csv")]


def test_an_interrupted_grid_resumes_and_runs_only_what_is_missing(grid):
    base, _ = grid
    unfinished = base / "dense" / "s2" / "logs" / "trainer.jsonl"
    lines = [line for line in unfinished.read_text().splitlines() if json.loads(line)["event"] != "summary"]
    unfinished.write_text("\n".join(lines) + "\n")  # as if the run had been killed before its end
    result = hotprune("experiments", "--grid", str(base.parent / "two.toml"), "--seeds", "2", "1", "2", "--root",
                      str(base.parent), "--eval-episodes", "2", *TINY)
    assert result.returncode == 0, result.stderr
    done = [line for line in result.stdout.splitlines() if "done already" in line]
    assert len(done) == len(NAMES) * len(SEEDS) - 1
    assert "dense seed 2: an unfinished run moved to" in result.stdout
    assert result.stdout.count("dense seed 2: exit 0") == 1  # seed 2 given twice: run once
    assert load(base / "dense" / "s2").summary["completed"] and list((base / "dense").glob("s2.failed-*"))
    # --eval-episodes: every kept policy evaluated with deterministic actions, kept, and tabled
    table = (base / "results.md").read_text()
    assert "deterministic actions, 2 episodes each" in table
    for name in NAMES:
        kept = [json.loads((base / name / f"s{s}" / experiments.EVAL_FILE).read_text()) for s in (2, 1)]
        assert all(k["episodes"] == 2 and k["deterministic"] and k["env_id"] == "CartPole-v1" for k in kept)
        per_seed = ", ".join(f"{k['return_mean']:.1f}" for k in kept)  # in the order of --seeds
        assert f" | {per_seed} |" in table


def test_the_grid_plots_each_variant_as_its_seeds_iqm_with_a_band_and_thin_seed_lines(grid):
    base, _ = grid
    for name in report.PLOTS:
        png = (base / "report" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    groups = {n: [load(base / n / f"s{s}") for s in SEEDS] for n in NAMES}
    fig = report.figure("return", groups)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "env steps" and "IQM over seeds" in fig.get_suptitle()
    for name, runs in groups.items():
        seeds = [[(e["global_step"], e["reward_mean"]) for e in r.epochs() if e["reward_mean"] is not None]
                 for r in runs]
        thin = [line for line in ax.get_lines() if line.get_linewidth() < 1 and
                any(list(line.get_ydata()) == [y for _, y in s] for s in seeds)]
        assert len(thin) >= len(seeds)  # each seed's own curve
        (iqm,) = [line for line in ax.get_lines() if line.get_label() == f"{name} (2 seeds)"]
        x = iqm.get_xdata()
        expected = np.mean([np.interp(x, [p[0] for p in s], [p[1] for p in s]) for s in seeds], axis=0)
        np.testing.assert_allclose(iqm.get_ydata(), expected)  # two seeds: the IQM is the mean
    assert len(ax.collections) == len(NAMES)  # a shaded band per variant
    sparsity = report.figure("sparsity", groups).axes[0]
    assert max(max(line.get_ydata()) for line in sparsity.get_lines()) == pytest.approx(80, abs=0.1)  # in %
    losses = report.figure("losses", groups)
    assert [a.get_title() for a in losses.axes if a.get_visible()] == ["policy_loss", "value_loss", "entropy",
                                                                       "approx_kl", "clip_frac", "explained_variance"]


def test_report_groups_a_variants_seeds_and_draws_two_environments_in_a_figure_each_with_a_note(grid, tmp_path):
    base, _ = grid
    groups = report.groups_of([load(base / n / f"s{s}") for s in SEEDS for n in NAMES])  # seeds interleaved
    assert {k: [r.path.name for r in v] for k, v in groups.items()} == {"both_pruned": ["s1", "s2"],
                                                                         "dense": ["s1", "s2"]}
    runs = [load(base / "both_pruned" / "s1"), load(base / "dense" / "s1")]
    runs[1].config = dataclasses.replace(runs[1].config, env_id="Acrobot-v1", algorithm="sac")
    lines = []
    paths = report.report(runs, tmp_path / "two", log=lines.append)
    assert lines == ["note: 2 environments (Acrobot-v1, CartPole-v1): one figure each; runs of 2 algorithms "
                     "(PPO, SAC): returns and losses on different scales"]
    assert {p.name for p in paths} >= {"return-CartPole-v1.png", "return-Acrobot-v1.png"}
    fig = report.figure("return", {"dense": runs[1:]}, note="2 environments")
    assert fig.get_suptitle().startswith("Return: Acrobot-v1, SAC") and "Note: 2 environments" in fig.get_suptitle()


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


def test_variants_run_only_those_of_the_grid_seed_by_seed_and_an_unknown_one_is_refused(tmp_path, capsys):
    grid = experiments.plan(grids.builtin("lth"), [2, 1], tmp_path, [], ["ticket_magnitude_80", "dense"])
    assert [(v.name, s) for v, s, _ in grid] == [("dense", 2), ("ticket_magnitude_80", 2), ("dense", 1),
                                                 ("ticket_magnitude_80", 1)]
    code, _, err = run_cli(capsys, "experiments", "--experiment", "lth", "--root", str(tmp_path),
                           "--variants", "dense", "ticket_magnitude_85")
    assert code == 2 and "--variants must be among lth's dense, gradual_80" in err and "got ticket_magnitude_85" in err
    assert not any(tmp_path.iterdir())
