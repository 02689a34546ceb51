"""The experiments' statistics (hotprune.commands.stats) against oracles: Welch's p from the t distribution
directly, the IQM of known data, and the stratified bootstrap's interval (coverage, reproducibility)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hotprune.commands import stats


def test_welch_p_is_the_t_distributions_tail_at_welchs_t_and_degrees_of_freedom():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.5]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(b) - np.mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff, p = stats.welch(a, b)
    assert diff == 1.125 and p == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-12)
    assert p == pytest.approx(0.2986, abs=1e-4)
    diff, p = stats.welch([100, 102, 98], [200, 201, 199])
    assert diff == 100 and p < 1e-4
    assert stats.welch([500, 500, 500], [500, 500, 500]) == (0.0, 1.0)  # every seed at the maximum
    assert stats.welch([500, 500], [400, 400]) == (-100.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 values"):
        stats.welch([1.0], [1.0, 2.0])


def test_the_iqm_is_the_mean_of_the_middle_half_over_runs_and_tasks():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # (3 + 4 + 5 + 6) / 4
    assert stats.iqm([1, 2, 3, 4, 1000, 5, 6, 7]) == 4.5  # an outlying seed is cut
    assert stats.iqm([1, 2, 4]) == pytest.approx(7 / 3)  # 3 runs: nothing cut, the mean
    runs_by_tasks = np.array([[1, 10], [2, 20], [3, 30], [4, 40]])  # 8 scores: cut 2 at each end
    assert stats.iqm(runs_by_tasks) == pytest.approx(np.mean([3, 4, 10, 20]))
    curves = np.array([[0, 10], [1, 20], [2, 30], [100, 40]])[:, None, :]  # 4 runs, 1 task, 2 points
    np.testing.assert_allclose(stats.iqm(curves), [1.5, 25])


def test_the_bootstrap_interval_is_reproducible_with_its_seed_and_covers_the_true_value():
    rng = np.random.default_rng(1)
    scores = rng.normal(10, 2, 12)
    assert stats.iqm_interval(scores) == stats.iqm_interval(scores)  # seed 0 unless told
    assert stats.iqm_interval(scores, seed=1) != stats.iqm_interval(scores, seed=2)
    low, high = stats.iqm_interval(scores)
    assert low < stats.iqm(scores) < high
    covered = 0
    for _ in range(100):  # normal data: the IQM estimates the mean, 0
        low, high = stats.iqm_interval(rng.normal(0, 1, 20), reps=1000)
        covered += low <= 0 <= high
    assert 0.85 <= covered / 100 <= 0.99


def test_the_bootstrap_is_stratified_each_resample_keeps_every_tasks_share_of_runs():
    # Task A's runs all score 0, task B's all 10. Resampling within each task keeps the 50/50 mix, so every
    # resample's IQM is 5; resampling the pooled runs would move it.
    scores = np.array([[0.0, 10.0]] * 4)
    assert stats.iqm_interval(scores) == (5.0, 5.0)
    curves = np.stack([np.linspace(0, 1, 5) + s for s in range(6)])[:, None, :]  # 6 runs, 1 task, 5 points
    low, high = stats.iqm_interval(curves, reps=500)
    assert low.shape == high.shape == (5,) and np.all(low < stats.iqm(curves)) and np.all(stats.iqm(curves) < high)
    np.testing.assert_allclose(high - low, (high - low)[0])  # a run's points are resampled together
