"""The statistics of an experiments grid: how a variant's seeds are aggregated, and how two variants compare.

- **Aggregate**: the interquartile mean (IQM: the mean of the middle 50% of runs, `scipy.stats.trim_mean`
  cutting 25% at each end) with a 95% confidence interval from a stratified percentile bootstrap: runs
  resampled with replacement within each task, the IQM of each resample, its 2.5th and 97.5th
  percentiles. This is Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the
  Statistical Precipice", as their rliable library computes it (`get_interval_estimates`, percentile
  method); done here with numpy, since rliable brings in a heavy stack of its own. The IQM is robust to
  one outlying seed, unlike the mean, and less noisy than the median; with 3 seeds it cuts nothing
  and is the mean.
- **Compare**: Welch's t-test on the per-seed values (`scipy.stats.ttest_ind(equal_var=False)`):
  unequal variances, two-sided. With few seeds it has little power: "within noise" does not mean equal.

scipy is imported inside the functions: only the commands that compute statistics load it, never a
training process.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_REPS = 10_000  # rliable's default is 50,000; 10,000 puts the interval's ends within ~1% of it
BOOTSTRAP_SEED = 0  # the same scores always give the same interval
IQM_CUT = 0.25


def welch(a, b) -> tuple[float, float]:
    """Welch's t-test of b against a: (mean(b) - mean(a), two-sided p-value). Two samples that are both
    constant have no variance to test with: p = 1 if their means are equal, else 0."""
    from scipy import stats  # noqa: PLC0415 -- only the commands that compute statistics load scipy

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    if min(a_.size, b_.size) < 2:
        raise ValueError(f"Welch's t-test needs at least 2 values per sample, got {a_.size} and {b_.size}")
    diff = float(b_.mean() - a_.mean())
    if a_.var() == 0 and b_.var() == 0:  # e.g. every seed at the maximum return
        return diff, 1.0 if diff == 0 else 0.0
    return diff, float(stats.ttest_ind(b_, a_, equal_var=False).pvalue)


def _runs_by_tasks(scores) -> np.ndarray:
    """scores as (runs, tasks, ...): a 1-d array is the runs of one task."""
    a = np.asarray(scores, float)
    return a[:, None] if a.ndim == 1 else a


def iqm(scores) -> np.ndarray | float:
    """The interquartile mean over runs and tasks together (rliable's aggregate_iqm). `scores` is (runs,)
    or (runs, tasks), with any trailing axes (points of a curve) kept: one IQM per trailing position."""
    from scipy import stats  # noqa: PLC0415

    a = _runs_by_tasks(scores)
    out = stats.trim_mean(a.reshape(-1, *a.shape[2:]), IQM_CUT, axis=0)
    return float(out) if np.ndim(out) == 0 else out


def iqm_interval(scores, reps: int = BOOTSTRAP_REPS, confidence: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The stratified-bootstrap percentile interval of `iqm(scores)`: each resample draws, for every task,
    as many runs as it has, with replacement, from that task's runs alone; trailing axes are resampled
    together (a curve's points stay one run's). Returns (low, high)."""
    from scipy import stats  # noqa: PLC0415

    a = _runs_by_tasks(scores)
    runs, tasks = a.shape[:2]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, runs, size=(reps, runs, tasks))
    resampled = a[picks, np.arange(tasks)]  # (reps, runs, tasks, ...)
    values = stats.trim_mean(resampled.reshape(reps, runs * tasks, *a.shape[2:]), IQM_CUT, axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)
