"""The policy lag is bounded in versions, not bytes, and every sample is accounted for.

A worker keeps at most its share of an epoch in flight (the trainer's `credits` say how many of its
chunks it has taken), so small chunks and small epochs no longer let the pipes hold dozens of epochs
of stale data. (In sync mode the workers pause after their share of a version, so no env step is
thrown away: tests/test_reproducible.py holds it on its sync runs.)
"""

from __future__ import annotations

import pytest

from tests.servicekit import accounting_adds_up, assert_clean, hotprune, settings

pytestmark = pytest.mark.slow

# The case: 256-sample epochs of 128-sample chunks; the pipes held ~25 epochs of chunks.
SMALL_EPOCHS = ["samples_per_epoch=256", "chunk_steps=32", "epochs=40"]


def _run(tmp_path, run_id, *extra):
    result = hotprune("run", "--quiet", *settings(tmp_path, run_id, *SMALL_EPOCHS, *extra))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / run_id
    assert_clean(run_dir)
    return run_dir


def test_async_lag_stays_within_a_version_or_two_with_small_chunks_and_epochs(tmp_path):
    run_dir = _run(tmp_path, "small")
    epochs, summary = accounting_adds_up(run_dir)
    assert len(epochs) == 40
    # Data collected during an update is one version old when it is used; a chunk begun just before
    # a swap, two; one more while a compression holds the store back. Without flow control this run
    # trained on data ~24 versions old on average.
    assert summary["policy_lag_max"] <= summary["max_policy_lag"] == 4
    assert summary["policy_lag_mean"] <= 2.0, summary["policy_lag_mean"]  # 1.0-1.5 measured, under load too
    assert summary["samples_dropped_stale"] <= 0.1 * summary["samples_received"]
