"""Grid files (hotprune.commands.grids): the built-in grids are files read by the same code, and a bad grid
file is refused with one line that names the file, before any run directory is made."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import hotprune as hotprune_api
from hotprune.commands import experiments, grids
from hotprune.config import ConfigError
from tests.servicekit import run_cli

GOOD_VARIANT = '[[variant]]\nname = "dense"\nsettings = {pruning.method = "none"}\n'


def test_every_built_in_grid_is_a_shipped_file_whose_every_run_has_a_valid_config(tmp_path):
    names = grids.builtin_names()
    assert {"basic", "modes", "methods", "sparsity", "teacher_student", "presets", "sac", "lth", "lth_sac",
            "schedules"} <= set(names)
    for name in names:
        grid = grids.builtin(name)
        extra = ["env_id=Pendulum-v1"] if "sac" in name else []
        assert len(experiments.plan(grid, [1], tmp_path, extra)) == len(grid.variants)
    basic = grids.builtin("basic")
    assert [v.name for v in basic.variants][0] == "async_both_pruned" and basic.seeds == (1, 2, 3)
    assert {v.name: v.overrides for v in basic.variants}["sync_teacher_student"] == (
        'mode="sync"', "prune_training_model=false")
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "grids/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["hotprune"]  # in the wheel too
    lth = grids.builtin("lth")
    assert lth.prepare == {"step": "lth_masks", "methods": ["magnitude", "taylor", "gradient"],
                           "sparsities": [0.8, 0.9]}
    masks = [o for v in lth.variants for o in v.overrides if o.startswith("pruning.mask_file")]
    assert masks and all(o.split("=", 1)[1].strip('"') in {grids.lth_mask(m, s) for m in lth.prepare["methods"]
                                                             for s in lth.prepare["sparsities"]} for o in masks)
    assert not list(tmp_path.iterdir())  # planning makes nothing


def test_a_grid_file_declares_variants_settings_stages_and_seeds(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('seeds = [4, 5]\n' + GOOD_VARIANT + '[[variant]]\nname = "sync_90"\nseed_offset = 7\n'
                    '[variant.settings]\nmode = "sync"\npruning.target_sparsity = 0.9\n')
    grid = grids.load(path)
    assert grid.name == "mine" and grid.seeds == (4, 5) and grid.prepare is None
    assert [(v.name, v.overrides, v.seed_offset) for v in grid.variants] == [
        ("dense", ('pruning.method="none"',), 0), ("sync_90", ('mode="sync"', "pruning.target_sparsity=0.9"), 7)]
    (_, seed, run_dir), = [c for c in experiments.plan(grid, [4], tmp_path, []) if c[0].name == "sync_90"]
    assert seed == 4 and run_dir == tmp_path / "pruning_mine" / "sync_90" / "s4"
    assert "seed = 11" in experiments.planned_config(grid.variants[1], 4, run_dir, [])


@pytest.mark.parametrize("text, message", [
    ("seeds = []\n" + GOOD_VARIANT, "seeds must be a non-empty list of non-negative integers, got []"),
    ("seeds = [1, -2]\n" + GOOD_VARIANT, "seeds must be a non-empty list"),
    ("seeds = [1]\n", "no [[variant]]: a grid needs at least one"),
    ('[[variant]]\nname = "dense"\nsetings = {epochs = 3}\n', "variant 1 (dense): unknown key 'setings'"),
    ("variants = 3\n" + GOOD_VARIANT, "unknown key 'variants'"),
    (GOOD_VARIANT + '[[variant]]\nname = "x"\nsettings = {pruning.target_sparsity = 2}\n',
     "variant x: pruning.target_sparsity must be in"),
    (GOOD_VARIANT + '[[variant]]\nname = "x"\nsettings = {no_such_setting = 1}\n', "variant x: "),
    (GOOD_VARIANT * 2, "two variants are named 'dense'"),
    ('[[variant]]\nname = "../out"\n', "name must be letters, digits"),
    ('[[variant]]\nname = "report"\n', "name must be letters, digits"),
    ('[[variant]]\nname = "x"\nstage = 2\n', "stage must be 0 or 1, got 2"),
    ('[[variant]]\nname = "x"\nsettings = "epochs=3"\n', "settings must be a table"),
    (GOOD_VARIANT + '[prepare]\nstep = "bake"\n', "[prepare] step must be one of lth_masks, got 'bake'"),
    (GOOD_VARIANT + '[prepare]\nstep = "lth_masks"\nmethods = ["psychic"]\nsparsities = [0.8]\n',
     "[prepare] methods must be a non-empty list of"),
    ("[[variant]\n", "not a TOML file"),
])
def test_a_bad_grid_file_is_refused_in_one_line_before_anything_is_made(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    root = tmp_path / "root"
    code, out, err = run_cli(capsys, "experiments", "--grid", str(path), "--root", str(root))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert f"hotprune experiments: error: {path}: " in err
    assert not root.exists() and not out


def test_the_api_takes_a_grid_file_or_a_built_in_name_and_refuses_both_or_neither(tmp_path):
    with pytest.raises(ConfigError, match="one of the two"):
        hotprune_api.experiments("basic", grid=tmp_path / "x.toml", root=tmp_path)
    with pytest.raises(ConfigError, match="one of the two"):
        hotprune_api.experiments(root=tmp_path)
    with pytest.raises(ConfigError, match="cannot read grid file"):
        hotprune_api.experiments(grid=tmp_path / "missing.toml", root=tmp_path)
    with pytest.raises(ConfigError, match="--experiment must be one of basic"):
        hotprune_api.experiments("everything", root=tmp_path)
    assert not list(tmp_path.iterdir())
