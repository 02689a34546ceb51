"""Async never waits for the compressor while its data is at most `max_policy_lag` versions old;
sync waits until every worker runs the newest version.

Freezing the compressor (SIGSTOP) shows the difference on the real service: async training goes on
with the weights the workers already have until their chunks grow too old (then it drops them and
says so), sync training stops until the compressor is back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.servicekit import HOTPRUNE, assert_clean, logged, settings, wait_for

pytestmark = pytest.mark.slow

FROZEN_S = 3.0


def _freeze_compressor(tmp_path, run_id, mode, *extra, enough: int | None = None):
    """Epochs trained in FROZEN_S with the compressor stopped, or `enough` epochs once that many went by
    sooner (what a run that goes on has to show; one that stops has to be watched the whole time)."""
    run = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, f"mode={mode}", "epochs=40", *extra)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / run_id
    try:
        wait_for(lambda: len(logged(run_dir, "trainer", "epoch")) >= 2, timeout=90, what="two epochs")
        compressor = next(e["child_pid"] for e in logged(run_dir, "supervisor", "process_started")
                          if e["name"] == "compressor")
        os.kill(compressor, signal.SIGSTOP)
        frozen_at = len(logged(run_dir, "trainer", "epoch"))

        def since() -> int:
            return len(logged(run_dir, "trainer", "epoch")) - frozen_at

        thaw = time.monotonic() + FROZEN_S
        while time.monotonic() < thaw and not (enough and since() >= enough):
            time.sleep(0.1)
        progressed = since()
        os.kill(compressor, signal.SIGCONT)
        assert run.wait(timeout=120) == 0, run.stderr.read()
    finally:
        run.kill()
    assert_clean(run_dir)
    return progressed, logged(run_dir, "trainer", "epoch")


def test_async_training_goes_on_while_the_compressor_is_frozen(tmp_path):
    progressed, epochs = _freeze_compressor(tmp_path, "afrz", "async", "max_policy_lag=1000", enough=5)
    assert progressed >= 5, f"only {progressed} epochs in {FROZEN_S} s with the compressor frozen"
    assert len(epochs) == 40 and max(e["policy_lag"] for e in epochs) > 2  # the workers fell behind meanwhile
    assert sum(e["samples_dropped_stale"] for e in epochs) == 0


def test_async_drops_chunks_older_than_max_policy_lag_and_counts_them(tmp_path):
    progressed, epochs = _freeze_compressor(tmp_path, "alag", "async", "max_policy_lag=2")
    # The workers keep the weights of the freeze: their chunks are 1, then 2 versions old, then too old.
    assert 1 <= progressed <= 3, \
        f"{progressed} epochs in {FROZEN_S} s with the compressor frozen and max_policy_lag=2"
    assert len(epochs) == 40
    assert sum(e["samples_dropped_stale"] for e in epochs) > 0
    assert all(e["policy_lag"] <= 2 for e in epochs)
    assert all(e["samples_received"] == e["samples"] + e["samples_dropped_stale"] for e in epochs)


def test_sync_training_waits_for_the_newest_weights(tmp_path):
    progressed, epochs = _freeze_compressor(tmp_path, "sfrz", "sync")
    assert progressed <= 1, f"{progressed} epochs went on without the compressor in sync mode"
    assert len(epochs) == 40 and all(e["policy_lag"] == pytest.approx(0) for e in epochs)
    assert sum(e["samples_dropped_stale"] for e in epochs) == 0  # the workers paused instead
