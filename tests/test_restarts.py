"""Crashes and hangs of every role, survived: restarts under a budget, trainer checkpoints, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hotprune.runs import artifacts, runlog
from hotprune.learning import checkpoints
from hotprune.roles.process import load_run_config
from tests.servicekit import HOTPRUNE, assert_clean, events, hotprune, logged, of, run_cli, settings, wait_for

pytestmark = pytest.mark.slow

# Short backoffs and hang timeout so a test sees several faults in seconds.
FAST = ["supervisor.hang_timeout_s=3", "supervisor.restart_backoff_s=0.2"]


def _start(tmp_path, run_id, *extra):
    proc = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, *FAST, *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, tmp_path / "runs" / run_id


def _pid(run_dir, name) -> int:
    """The newest process of that name."""
    return [e["child_pid"] for e in logged(run_dir, "supervisor", "process_started") if e["name"] == name][-1]


def _epochs(run_dir) -> int:
    return len(logged(run_dir, "trainer", "epoch"))


def test_a_killed_trainer_a_killed_compressor_and_a_frozen_worker_are_restarted_and_the_run_completes(tmp_path,
                                                                                                        capsys):
    epochs = 160
    proc, run_dir = _start(tmp_path, "faults", f"epochs={epochs}", "pruning.schedule=\"cubic\"",
                           "pruning.end_epoch=120", "normalize_obs=true", "normalize_reward=true")
    wait_for(lambda: _epochs(run_dir) >= 5, timeout=90, what="epoch 5")
    os.kill(_pid(run_dir, "trainer"), signal.SIGKILL)
    wait_for(lambda: logged(run_dir, "trainer", "trainer_resumed"), timeout=60, what="the trainer to resume")
    wait_for(lambda: logged(run_dir, "compressor", "trainer_restarted"), timeout=30, what="the compressor to notice")
    os.kill(_pid(run_dir, "compressor"), signal.SIGKILL)
    wait_for(lambda: logged(run_dir, "compressor", "compressor_resumed"), timeout=60, what="the compressor to resume")
    frozen = _pid(run_dir, "worker-0")
    os.kill(frozen, signal.SIGSTOP)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    assert_clean(run_dir)

    sup = events(run_dir, "supervisor")
    assert of(sup, "run_finished")[-1]["restarts"] == {"trainer": 1, "compressor": 1, "worker-0": 1}
    assert [e["name"] for e in of(sup, "process_hung")] == ["worker-0"]
    assert {(e["name"], e["reason"]) for e in of(sup, "process_restarting")} == \
        {("trainer", "exit -9"), ("compressor", "exit -9"), ("worker-0", "hung")}
    run = runlog.load(run_dir)
    # Every epoch exactly once in the run's record (the redone ones replace the lost ones), and the
    # summary of the resumed trainer covers them all.
    assert [e["epoch"] for e in run.epochs()] == list(range(1, epochs + 1))
    summary = run.summary
    assert summary["completed"] and summary["epochs"] == epochs and summary["trainer_starts"] == 2
    resumed = of(events(run_dir, "trainer"), "trainer_resumed")[0]
    published = of(events(run_dir, "trainer"), "snapshot_published")
    before = [e["version"] for e in published if e["ts"] < resumed["ts"]]
    after = [e["version"] for e in published if e["ts"] > resumed["ts"]]
    assert resumed["version"] > max(before) and after[0] == resumed["version"], "versions must keep increasing"
    # No worker process ever swapped backwards, across the trainer's restart.
    for name in run.workers():
        by_pid: dict[int, list[int]] = {}
        for e in run.events(name, "worker_swapped"):
            by_pid.setdefault(e["pid"], []).append(e["version"])
        assert all(v == sorted(set(v)) for v in by_pid.values()), name
    # The run still ends at its planned sparsity, with the trainer's pruned weights exactly zero.
    assert summary["final_training_sparsity"] == pytest.approx(0.8, abs=0.002)
    checked = [e["pruned_nonzero"] for e in of(events(run_dir, "compressor"), "snapshot_received")
               if e["pruned_nonzero"] is not None]
    assert checked and not any(checked)
    code, diagnosed, _ = run_cli(capsys, "diagnose", str(run_dir))
    assert code == 0, diagnosed
    # The normalisation statistics came through the resume: they hold every epoch's observations
    # exactly once (the resumed trainer took its checkpoint's and redid the epochs after it).
    tensors, _ = checkpoints.load(load_run_config(run_dir))
    assert tensors["obs_stats.count"] == pytest.approx(epochs * 512)
    # every chunk taken moves the return statistics, used or dropped as stale (the compressor's restart
    # can leave the workers on an old version long enough for some to be dropped)
    assert tensors["reward_stats.count"] == pytest.approx(summary["samples_received"])
    policy, _ = artifacts.load_policy(run_dir)
    assert policy.obs_norm.mean.numpy() == pytest.approx(tensors["obs_stats.mean"], rel=1e-6)


def test_a_restarted_compressor_checks_the_snapshots_that_apply_the_masks_it_took_up(tmp_path):
    """One compression (epoch 2, none after): once the trainer applies its masks, every later snapshot
    says it applies them. The compressor that replaces a killed one takes them up into the history it
    checks snapshots against, so their pruned weights are still checked to be zero (pruned_nonzero was
    null for every one of them)."""
    # no hang to catch here: a trainer ending on a loaded machine can take over FAST's 3 s to exit
    proc, run_dir = _start(tmp_path, "checked", "epochs=40", "pruning.every=1000", "supervisor.hang_timeout_s=30")
    wait_for(lambda: logged(run_dir, "trainer", "masks_applied") and _epochs(run_dir) >= 6, timeout=90,
             what="the masks applied, and epoch 6")
    os.kill(_pid(run_dir, "compressor"), signal.SIGKILL)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    assert_clean(run_dir)
    applied = logged(run_dir, "trainer", "masks_applied")
    taken_up = logged(run_dir, "compressor", "compressor_resumed")
    assert len(applied) == 1 and [e["version"] for e in taken_up] == [applied[0]["version"]]
    after = [e for e in logged(run_dir, "compressor", "snapshot_received") if e["pid"] == taken_up[0]["pid"]]
    assert len(after) >= 10 and {e["masks_version"] for e in after} == {applied[0]["version"]}
    assert [e["pruned_nonzero"] for e in after] == [0] * len(after)


def test_an_exhausted_restart_budget_stops_the_run_with_exit_1_and_names_the_process(tmp_path):
    proc, run_dir = _start(tmp_path, "budget", "epochs=500", "supervisor.max_restarts=1")
    wait_for(lambda: _epochs(run_dir) >= 2, timeout=90, what="epoch 2")
    def starts() -> int:
        return len([e for e in logged(run_dir, "supervisor", "process_started") if e["name"] == "compressor"])

    for start in (1, 2):
        wait_for(lambda n=start: starts() == n, timeout=60, what=f"compressor start {start}")
        wait_for(lambda: logged(run_dir, "compressor", "heartbeat") and
                 logged(run_dir, "compressor", "heartbeat")[-1]["pid"] == _pid(run_dir, "compressor"),
                 timeout=60, what="the compressor to run")
        os.kill(_pid(run_dir, "compressor"), signal.SIGKILL)
    assert proc.wait(timeout=60) == 1
    assert_clean(run_dir)
    sup = events(run_dir, "supervisor")
    exhausted = of(sup, "restart_budget_exhausted")
    assert [(e["name"], e["restarts"], e["max_restarts"]) for e in exhausted] == [("compressor", 1, 1)]
    assert of(sup, "run_finished")[-1]["failed"] == ["compressor"]


def test_a_process_that_refuses_with_exit_2_is_not_restarted_and_the_run_stops_with_its_one_line(tmp_path):
    proc, run_dir = _start(tmp_path, "refusal", "epochs=500", "checkpoint_every=1000")
    wait_for(lambda: _epochs(run_dir) >= 2, timeout=90, what="epoch 2")
    checkpoint = run_dir / artifacts.CHECKPOINT  # written at epoch 0, and not again before the end
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    os.kill(_pid(run_dir, "trainer"), signal.SIGKILL)  # restarted with --resume: its checkpoint is corrupt
    assert proc.wait(timeout=90) == 2
    stderr = proc.stderr.read()
    refusals = [line for line in stderr.splitlines() if line.startswith("hotprune trainer: error: ")]
    assert len(refusals) == 1 and "is corrupt" in refusals[0] and "Traceback" not in stderr, stderr
    assert_clean(run_dir)
    sup = events(run_dir, "supervisor")
    assert [(e["name"], e["reason"]) for e in of(sup, "process_restarting")] == [("trainer", "exit -9")]
    assert [(e["name"], e["exitcode"]) for e in of(sup, "process_refused")] == [("trainer", 2)]
    finished = of(sup, "run_finished")[-1]
    assert finished["outcome"] == "refused: trainer" and finished["exitcode"] == 2


def _kill_supervisor(proc, run_dir, stopped_runs: int) -> int:
    """SIGKILL the supervisor (its children get SIGTERM, parent-death signal, and stop); the epochs
    logged by then."""
    proc.kill()
    proc.wait()
    wait_for(lambda: len(logged(run_dir, "trainer", "summary")) == stopped_runs, timeout=30,
             what="the trainer to stop")
    assert_clean(run_dir)
    return _epochs(run_dir)


def test_a_run_whose_supervisor_was_killed_twice_resumes_from_its_checkpoint_each_time(tmp_path):
    epochs = 60
    proc, run_dir = _start(tmp_path, "resume", f"epochs={epochs}", "checkpoint_every=4")
    wait_for(lambda: _epochs(run_dir) >= 10, timeout=90, what="epoch 10")
    stopped_at = _kill_supervisor(proc, run_dir, 1)
    assert stopped_at < epochs

    # A trainer started again without --resume would start over: refused.
    again = hotprune("trainer", "--run-dir", str(run_dir))
    assert again.returncode == 2 and "--resume" in again.stderr

    first = subprocess.Popen([HOTPRUNE, "run", "--resume", str(run_dir)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: _epochs(run_dir) >= stopped_at + 8, timeout=90, what="the resumed run to go on")
    _kill_supervisor(first, run_dir, 2)
    # The second time through runs/latest (a link): the run's own directory is resumed.
    second = hotprune("run", "--resume", str(tmp_path / "runs" / "latest"))
    assert second.returncode == 0, second.stderr
    assert_clean(run_dir)
    assert (tmp_path / "runs" / "latest").resolve() == run_dir.resolve()
    trainer = events(run_dir, "trainer")
    starts = of(trainer, "trainer_resumed")
    assert [s["trainer_start"] for s in starts] == [1, 2]
    assert starts[0]["epoch"] % 4 == 0 and stopped_at - 4 <= starts[0]["epoch"] <= stopped_at
    # checkpoint_every=4: the lost epochs published at most 3 versions past the checkpoint's.
    assert all(s["version"] == s["checkpoint_version"] + 4 for s in starts)
    # The restarted compressor took up the third trainer's snapshots (trainer_start 2).
    assert not [e for e in logged(run_dir, "compressor", "message_rejected") if "trainer_start" in e["reason"]]
    run = runlog.load(run_dir)
    assert [e["epoch"] for e in run.epochs()] == list(range(1, epochs + 1))
    assert run.summary["completed"] and run.summary["trainer_starts"] == 3
    assert run.finished["outcome"] == "completed"
    assert run.summary["final_training_sparsity"] == pytest.approx(0.8, abs=0.002)
    rows = (run_dir / "progress.csv").read_text().splitlines()
    assert len(rows) == 1 + epochs  # the header, then each epoch once

    done = hotprune("run", "--resume", str(run_dir))
    assert done.returncode == 2 and "already completed" in done.stderr
    other = hotprune("run", "--resume", str(run_dir), "--set", "seed=2")
    assert other.returncode == 2 and "own config" in other.stderr


# A stand-in trainer: pings, says DONE, then takes its time to exit (a torch teardown on a loaded machine)
# with stop signals ignored, as a real trainer's exit has them; a stand-in worker stops at once (the stop).
SLOW_EXIT = """
import signal, sys, time
from hotprune.roles import liveness
pulse = liveness.Pulse.inherited()
pulse.ping()
if sys.argv[1] == "trainer":
    time.sleep(0.3)
    pulse.done()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    time.sleep(float(sys.argv[2]))
"""
SUPERVISE = """
import sys
from hotprune.config import load_config
from hotprune.roles.supervisor import Child, Supervisor
sup = Supervisor(load_config(None, sys.argv[2:]))
sup.children = [Child("trainer", [sys.executable, "-c", sys.argv[1], "trainer", "2.5"]),
                Child("worker-0", [sys.executable, "-c", sys.argv[1], "worker"])]
sys.exit(sup.run())
"""


def test_a_trainer_that_said_done_may_take_longer_than_the_grace_and_the_hang_timeout_to_exit(tmp_path):
    """Its workers' clean exits are the normal end, and its silence while it exits is not a hang: the run
    completes (before liveness.DONE: `failed: worker-0`, or the trainer killed as hung and restarted)."""
    result = subprocess.run([sys.executable, "-c", SUPERVISE, SLOW_EXIT,
                             *settings(tmp_path, "slow-exit", "supervisor.stop_grace_s=1.5",
                                       "supervisor.hang_timeout_s=1")[1::2]],
                            capture_output=True, text=True, timeout=60)
    finished = logged(tmp_path / "runs" / "slow-exit", "supervisor", "run_finished")[-1]
    assert (result.returncode, finished["outcome"]) == (0, "completed"), result.stderr
    assert not logged(tmp_path / "runs" / "slow-exit", "supervisor", "process_hung")
