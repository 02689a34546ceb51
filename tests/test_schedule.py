"""The compression schedule (hotprune.pruning.schedule): the planned steps and which one a snapshot serves."""

from itertools import pairwise

import pytest

from hotprune.config import load_config
from hotprune.pruning.schedule import Schedule, Step, plan, scheduled_sparsity


def config(*overrides):
    return load_config(None, list(overrides))


def grid(*overrides):
    """A config whose plan keeps every grid step: with regrowth a step at an unchanged sparsity re-selects."""
    return config("pruning.regrow=true", *overrides)


def cubic(t, t0, t1, s_i, s_f):
    """Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0) / (t1 - t0))^3, held at s_f after t1."""
    progress = min(1.0, (t - t0) / (t1 - t0))
    return s_f + (s_i - s_f) * (1 - progress) ** 3


# ---------------------------------------------------------------------------------------------- plan


def test_constant_plan_steps_from_start_epoch_every_k_epochs_up_to_the_last_epoch():
    cfg = grid("pruning.start_epoch=3", "pruning.every=10", "pruning.target_sparsity=0.7", "epochs=45")
    steps, warnings = plan(cfg)
    assert steps == [Step(3, 0.7), Step(13, 0.7), Step(23, 0.7), Step(33, 0.7), Step(43, 0.7)]
    assert warnings == []


def test_the_last_epoch_is_a_step_when_it_falls_on_the_grid():
    steps, _ = plan(grid("pruning.start_epoch=2", "pruning.every=5", "epochs=22"))
    assert [s.epoch for s in steps] == [2, 7, 12, 17, 22]
    assert all(s.sparsity == 0.8 for s in steps)  # the default target


def test_plan_follows_total_steps_when_set():
    cfg = grid("pruning.start_epoch=1", "pruning.every=2", "total_steps=20000", "samples_per_epoch=2048")
    assert cfg.total_epochs == 10
    assert [s.epoch for s in plan(cfg)[0]] == [1, 3, 5, 7, 9]


def test_cubic_plan_follows_the_zhu_gupta_formula_and_holds_the_target_after_the_end():
    cfg = grid("pruning.schedule=cubic", "pruning.start_epoch=2", "pruning.every=1", "pruning.end_epoch=12",
                 "pruning.initial_sparsity=0.1", "pruning.target_sparsity=0.9", "epochs=30")
    steps, warnings = plan(cfg)
    assert warnings == []
    assert [s.epoch for s in steps] == list(range(2, 31))
    for step in steps:
        assert step.sparsity == pytest.approx(cubic(step.epoch, 2, 12, 0.1, 0.9), abs=1e-12), step
    by_epoch = {s.epoch: s.sparsity for s in steps}
    assert by_epoch[2] == pytest.approx(0.1)
    assert by_epoch[7] == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    assert by_epoch[5] > 0.5  # the curve prunes fast early
    assert all(by_epoch[e] == pytest.approx(0.9) for e in range(12, 31))
    values = [s.sparsity for s in steps]
    assert all(b >= a for a, b in pairwise(values))


def test_cubic_plan_with_the_config_derived_end_epoch():
    cfg = grid("pruning.schedule=cubic", "pruning.start_epoch=4", "pruning.every=4", "pruning.initial_sparsity=0.2",
                 "epochs=40")
    assert cfg.pruning_end_epoch == 20
    steps, _ = plan(cfg)
    assert [s.epoch for s in steps] == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    for step in steps:
        assert step.sparsity == pytest.approx(cubic(step.epoch, 4, 20, 0.2, 0.8), abs=1e-12)


def test_cubic_on_a_short_run_does_not_divide_by_zero():
    """6 epochs and start_epoch 3: the derived end epoch is start + 1, never start itself."""
    cfg = grid("pruning.schedule=cubic", "epochs=6", "pruning.initial_sparsity=0.1", "pruning.every=1")
    assert cfg.pruning_end_epoch > cfg.pruning.start_epoch
    steps, _ = plan(cfg)
    assert [s.epoch for s in steps] == [3, 4, 5, 6]
    assert all(0.1 - 1e-12 <= s.sparsity <= 0.8 + 1e-12 for s in steps)
    assert [s.sparsity for s in steps] == pytest.approx([0.1, 0.8, 0.8, 0.8])


def test_a_zero_percent_first_step_is_left_out_and_warned_about():
    cfg = grid("pruning.schedule=cubic", "pruning.start_epoch=3", "pruning.every=2", "pruning.end_epoch=11",
                 "epochs=20")  # initial_sparsity defaults to 0
    steps, warnings = plan(cfg)
    assert [s.epoch for s in steps] == [5, 7, 9, 11, 13, 15, 17, 19]
    assert all(s.sparsity > 0 for s in steps)
    assert steps[0].sparsity == pytest.approx(cubic(5, 3, 11, 0.0, 0.8))
    assert len(warnings) == 1
    assert "epoch 3" in warnings[0] and "0%" in warnings[0] and "left out" in warnings[0]
    assert "epoch 5" in warnings[0]


@pytest.mark.parametrize("every, ramp", [(10, 1), (5, 2)])
def test_a_cubic_with_one_or_two_ramp_steps_warns(every, ramp):
    cfg = config("pruning.schedule=cubic", "pruning.start_epoch=3", f"pruning.every={every}",
                 "pruning.initial_sparsity=0.1", "epochs=20")
    assert cfg.pruning_end_epoch == 10
    steps, warnings = plan(cfg)
    assert len([s for s in steps if s.epoch <= 10]) == ramp
    assert len(warnings) == 1
    assert f"{ramp} step(s)" in warnings[0] and "not gradual" in warnings[0]


def test_a_cubic_with_three_ramp_steps_does_not_warn():
    cfg = grid("pruning.schedule=cubic", "pruning.start_epoch=3", "pruning.every=3", "pruning.initial_sparsity=0.1",
                 "epochs=20")
    steps, warnings = plan(cfg)
    assert [s.epoch for s in steps] == [3, 6, 9, 12, 15, 18]
    assert warnings == []


def test_a_single_zero_percent_cubic_step_leaves_an_empty_plan_with_warnings():
    cfg = config("pruning.schedule=cubic", "pruning.start_epoch=3", "pruning.every=10", "epochs=12")
    steps, warnings = plan(cfg)
    assert steps == []
    assert any("left out" in w for w in warnings)
    assert any("nothing will be pruned" in w for w in warnings)
    assert any("not gradual" in w for w in warnings)


def test_with_nested_masks_steps_that_do_not_raise_the_sparsity_are_left_out():
    """Nested masks select nothing new at an unchanged sparsity: constant prunes once, cubic stops at its end."""
    steps, _ = plan(config("pruning.start_epoch=3", "pruning.every=10", "epochs=150"))
    assert steps == [Step(3, 0.8)]
    steps, _ = plan(config("pruning.schedule=cubic", "pruning.start_epoch=2", "pruning.every=2",
                           "pruning.end_epoch=10", "pruning.initial_sparsity=0.1", "epochs=30"))
    assert [s.epoch for s in steps] == [2, 4, 6, 8, 10]
    assert steps[-1].sparsity == pytest.approx(0.8)
    assert all(b.sparsity > a.sparsity for a, b in pairwise(steps))


def test_method_none_gives_no_steps():
    assert plan(config("pruning.method=none")) == ([], [])
    assert plan(config("pruning.method=none", "pruning.schedule=cubic")) == ([], [])


def test_a_start_epoch_after_the_last_epoch_gives_no_steps_and_warns():
    steps, warnings = plan(config("pruning.start_epoch=20", "epochs=12"))
    assert steps == []
    assert len(warnings) == 1 and "start_epoch 20" in warnings[0]


def test_scheduled_sparsity_constant_and_cubic_edges():
    for e in (3, 13, 23, 1003):
        assert scheduled_sparsity(e, target=0.7, start_epoch=3) == 0.7
    kw = dict(target=0.9, start_epoch=2, schedule="cubic", initial=0.1, end_epoch=12)
    assert scheduled_sparsity(2, **kw) == pytest.approx(0.1)
    assert scheduled_sparsity(12, **kw) == pytest.approx(0.9)
    assert scheduled_sparsity(500, **kw) == pytest.approx(0.9)
    assert scheduled_sparsity(2, target=0.8, start_epoch=2, schedule="cubic", initial=0.0, end_epoch=5) == 0
    for end in (None, 2, 1):
        with pytest.raises(ValueError, match="end_epoch"):
            scheduled_sparsity(3, target=0.9, start_epoch=2, schedule="cubic", end_epoch=end)


# ---------------------------------------------------------------------------------------------- Schedule.due


STEPS = [Step(3, 0.5), Step(13, 0.6), Step(23, 0.7)]


def test_no_step_is_due_before_the_first_steps_epoch():
    schedule = Schedule(STEPS)
    assert schedule.due(1) is None and schedule.due(2) is None
    assert Schedule([]).due(100) is None


def test_a_step_is_due_from_its_epoch_on():
    for epoch in (3, 4, 12):
        schedule = Schedule(STEPS)
        assert schedule.due(epoch) == (Step(3, 0.5), [])
    assert Schedule(STEPS).is_step(3) and not Schedule(STEPS).is_step(4)


def test_the_newest_snapshot_past_several_due_steps_serves_the_latest_and_folds_the_others():
    schedule = Schedule(STEPS)
    assert schedule.due(24) == (Step(23, 0.7), [3, 13])
    schedule.done(Step(23, 0.7))
    assert schedule.due(10**6) is None
    assert schedule.due(24) is None and schedule.due(1000) is None
    partial = Schedule(STEPS)
    assert partial.due(15) == (Step(13, 0.6), [3])
    partial.done(Step(13, 0.6))
    assert partial.due(10**6) == (Step(23, 0.7), [])


def test_a_served_step_is_not_due_again():
    schedule = Schedule(STEPS)
    step, folded = schedule.due(3)
    schedule.done(step)
    assert schedule.due(10**6) == (STEPS[-1], [s.epoch for s in STEPS[1:-1]])
    for epoch in (3, 4, 12):
        assert schedule.due(epoch) is None
    assert schedule.due(13) == (Step(13, 0.6), [])


def test_a_step_that_was_not_done_stays_due_for_the_next_snapshot():
    schedule = Schedule(STEPS)
    assert schedule.due(3) == (Step(3, 0.5), [])
    # the compression failed: done() is not called
    assert schedule.due(4) == (Step(3, 0.5), [])
    assert schedule.due(14) == (Step(13, 0.6), [3])
    schedule.done(Step(13, 0.6))
    assert schedule.due(15) is None


def test_issue_scenario_a_dropped_snapshot_does_not_skip_the_only_step():
    """12 epochs, start 3, every 10: one step, at epoch 3; epoch 3's snapshot was dropped, and the
    snapshot of epoch 4 must still carry it out."""
    cfg = config("epochs=12", "pruning.start_epoch=3", "pruning.every=10")
    steps, warnings = plan(cfg)
    assert [s.epoch for s in steps] == [3] and warnings == []
    schedule = Schedule(steps)
    assert schedule.due(2) is None
    step, folded = schedule.due(4)
    assert step == Step(3, 0.8) and folded == []
    schedule.done(step)
    assert all(schedule.due(e) is None for e in range(4, 13))
