"""The console: one owner of the terminal, lines within 100 columns, the first lines at once, --quiet,
the live view on a terminal, and `hotprune watch` of a finished and of a running run."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
from pathlib import Path

import pytest

from hotprune.runs import console, runlog, view
from hotprune import eventlog
from tests.servicekit import HOTPRUNE, as_from_a_terminal, assert_clean, hotprune, logged, settings, wait_for

WIDEST_EPOCH = {  # every field at the widest a run can make it
    "epoch": 9999, "epochs": 9999, "global_step": 10**9, "reward_mean": -12345.6, "samples": 10**6,
    "epoch_s": 99.99, "rollout_s": 9.99, "train_s": 90.0, "samples_per_s": 999999.0, "training_sparsity": 0.999,
    "inference_sparsity": 0.999, "inference_version": 99999, "policy_lag": 99.99}


# The update's statistics at their widest (value loss and approx KL are never negative, the clip fraction
# at most 1), and SAC's before its first gradient step.
PPO_UPDATE = {"policy_loss": -1.2345e-5, "value_loss": 123456.7, "entropy": -12345.6, "approx_kl": 1.2345e-5,
              "clip_frac": 1.0, "explained_variance": -12345.6}
SAC_UPDATE = {"qf_loss": -123456.7, "actor_loss": -1.2345e-5, "alpha": 1.2345e-5, "critic_sparsity": 0.999,
              "replay_size": 10**7}


@pytest.mark.parametrize("update, second", [
    (PPO_UPDATE, "  loss policy -1.23e-5 value 1.23e5 | entropy -1.23e4 | KL 1.23e-5 | clip 100.0% | expl var -1.23e4"),
    (SAC_UPDATE, "  loss critic -1.23e5 actor -1.23e-5 | alpha 1.23e-5 | critic sparsity 99.9%"),
    ({**SAC_UPDATE, "critic_sparsity": None},
     "  loss critic -1.23e5 actor -1.23e-5 | alpha 1.23e-5 | critics not pruned"),
    ({**SAC_UPDATE, "qf_loss": None}, "  no gradient step yet: 10,000,000 samples in the replay buffer"),
    ({}, None),  # a log from before the update's statistics
], ids=["ppo", "sac", "sac, critics dense", "sac, before learning starts", "no statistics"])
@pytest.mark.parametrize("reward", [-12345.6, None], ids=["reward", "no episode ended"])
def test_the_epoch_lines_fit_100_columns_at_their_widest(update, second, reward):
    lines = console.human_line({"event": "epoch", **WIDEST_EPOCH, **update, "reward_mean": reward}).splitlines()
    first = "epoch 9999/9999 | reward -12345.6 |" if reward else "epoch 9999/9999 | no episode ended |"
    assert lines[0].startswith(first) and lines[1:] == ([second] if second else [])
    assert max(map(len, lines)) <= view.WIDTH, lines
    live = console.live_stats({**WIDEST_EPOCH, **update, "reward_mean": reward}, 1.23).splitlines()
    assert live[0].startswith("reward -12345.6 |" if reward else "no episode has ended yet |")
    assert live[2:] == ([second.strip()] if second else []) and max(map(len, live)) <= view.WIDTH


def test_neuron_pruning_says_which_sparsity_counts_hidden_units_and_which_weights():
    applied = console.human_line({"event": "masks_applied", "version": 3, "target_sparsity": 0.9, "newly_pruned": 10,
                                  "structure": "neuron", "inference_version": 2, "inference_sparsity": 0.5,
                                  "training_sparsity_verified": 0.987})
    assert "training pruned to 90.0% of hidden units (masks v3)" in applied
    assert "Training model sparsity verified: 98.7% of weights" in applied
    finished = console.human_line({"event": "compression_finished", "version": 3, "due_epoch": 2, "structure": "neuron",
                                   "weight_sparsity": 0.987, "unit_sparsity": 0.9, "params_kept": 100,
                                   "params_total": 4610, "duration_ms": 1.0})
    assert finished.startswith("[compressor] Pruned v3 to 90.0% of hidden units (98.7% of weights), due epoch 2")


def test_a_dynamic_sparse_training_update_says_how_many_weights_it_dropped_and_regrew():
    e = {"event": "compression_finished", "version": 7, "due_epoch": 6, "structure": "weight", "weight_sparsity": 0.8,
         "unit_sparsity": None, "params_kept": 1128, "params_total": 4610, "duration_ms": 1.0}
    update = console.human_line({**e, "drop_fraction": 0.2571, "dropped": 223, "regrown": 223})
    assert update == ("[compressor] Pruned v7 to 80.0% of weights, due epoch 6: 1,128/4,610 kept, 1 ms, "
                      "223 dropped and 223 regrown (f=0.257)")
    assert console.human_line({**e, "drop_fraction": 0.0, "dropped": 3482, "regrown": 0}).endswith("1 ms")


@pytest.mark.parametrize("outcome, resumable", [("stopped by SIGINT", True), ("failed: trainer", True),
                                                 ("completed", False), ("refused: trainer", False)])
def test_a_stopped_or_failed_run_ends_with_the_command_that_resumes_it(outcome, resumable):
    lines = console.human_line({"event": "run_finished", "run_id": "r", "outcome": outcome,
                                "logs": "runs/r/logs"}).splitlines()
    assert lines[0] == f"[supervisor] run r finished: {outcome}, logs in runs/r/logs"
    assert lines[1:] == (["[supervisor] resume it: hotprune run --resume runs/r"] if resumable else [])


def test_a_dense_run_is_named_dense_not_both_pruned():
    from hotprune.commands.lth import TRAIN_DENSE
    from hotprune.config import load_config

    for settings_, named in [(TRAIN_DENSE, "dense run for lottery tickets (weights kept every 10 epochs)"),
                             (["pruning.method=none"], "dense baseline")]:
        cfg = load_config(None, ["env_id=CartPole-v1", "mode=async", *settings_])
        assert view.header(cfg, Path("runs/d"))[1] == f"  CartPole-v1, async, {named}"
    summary = {"mode": "sync", "prune_training_model": True, "method": "none"}
    assert console.kind_of_run(**summary) == "sync, dense"


def test_the_diagnostic_lines_of_a_usual_run_fit_100_columns():
    events = [
        {"event": "pruning_planned", "method": "magnitude", "structure": "weight", "scope": "layer",
         "distribution": "erk", "schedule": "cubic", "regrow": True,
         "steps": [[1000 + 10 * i, 0.987] for i in range(9)]},
        {"event": "snapshot_published", "version": 99999, "epoch": 9999, "training_sparsity": 0.987,
         "compression_scheduled": True},
        {"event": "masks_applied", "version": 99999, "target_sparsity": 0.987, "inference_version": 99998,
         "inference_sparsity": 0.987, "training_sparsity_verified": 0.987, "newly_pruned": 10},
        {"event": "compression_finished", "version": 9999, "due_epoch": 9999, "structure": "neuron",
         "weight_sparsity": 0.987, "unit_sparsity": 0.9, "params_kept": 123_456, "params_total": 1_234_567,
         "duration_ms": 1234.0},
        {"event": "masks_applied", "version": 99999, "target_sparsity": 0.987, "inference_version": 99998,
         "inference_sparsity": 0.987, "training_sparsity_verified": 0.987, "newly_pruned": 10, "structure": "neuron"},
        {"event": "store_waiting", "worker_id": 15, "run_id": "cartpole-async-bp-mag80-s1-20261122-203000-ab12",
         "waited_s": 115.0, "timeout_s": 120.0},
    ]
    for event in events:
        for line in console.human_line(event).splitlines():
            assert len(line) <= view.WIDTH, (len(line), line)


def test_a_plain_line_too_long_is_wrapped_at_a_space_and_a_long_path_left_whole():
    path = "/tmp/" + "x" * 120
    layers = ", ".join(f"net.{i}.weight 80.0% (820/4,096 kept)" for i in range(6))
    text = f"Training layers: {layers}\nlogs in {path}"
    lines = view.fit(text).splitlines()
    assert max(len(line) for line in lines if path not in line) <= view.WIDTH
    assert "    " + path in lines and " ".join(line.strip() for line in lines) == text.replace("\n", " ")


def test_a_supervised_process_echoes_nothing_but_logs_everything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(eventlog.SUPERVISED, "1")
    log = eventlog.setup(tmp_path, "run-s", "trainer")
    log.info("run_finished", run_id="run-s", outcome="completed", logs="x")  # an event with a human line
    log.warning("message_rejected", reason="forged")
    assert capsys.readouterr() == ("", "")
    logged = [json.loads(x)["event"] for x in (tmp_path / "logs" / "trainer.jsonl").read_text().splitlines()]
    assert logged == ["run_finished", "message_rejected"]


def test_the_tail_gives_whole_lines_once_and_finds_new_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    who = '"event": "heartbeat", "role": "trainer", "pid": 1, "run_id": "r"'  # what every line carries
    (logs / "trainer.jsonl").write_text(f'{{"ts": "2026-01-01T00:00:02Z", {who}}}\n{{"ts": "2026-01-01T00:00:0')
    resumed = runlog.Tail(logs, from_end=True)
    tail = runlog.Tail(logs)
    assert [e["ts"][-3:] for e in tail.events()] == ["02Z"]
    with open(logs / "trainer.jsonl", "a") as f:
        f.write(f'3Z", {who}}}\n')
    (logs / "worker-0.jsonl").write_text(f'{{"ts": "2026-01-01T00:00:01Z", {who}}}\n')
    assert [e["ts"][-3:] for e in tail.events()] == ["01Z", "03Z"]  # in time order across files
    assert tail.events() == []
    assert [e["ts"][-3:] for e in resumed.events()] == ["01Z"]  # the line cut at its start is not parsed


def _event(kind: str, role: str = "supervisor", **fields) -> dict:
    return {"ts": "2026-01-01T00:00:00+00:00", "event": kind, "role": role, **fields}


@pytest.mark.parametrize("kinds, finished", [
    (["run_started", "run_finished"], True),
    (["run_started", "run_finished", "run_started"], False),  # resumed: going again
    (["run_started", "summary"], False),  # the supervisor has not finished yet
])
def test_a_run_has_finished_when_its_supervisor_says_so(kinds, finished):
    progress = view.Progress()
    for kind in kinds:
        progress.update(_event(kind, role="trainer" if kind == "summary" else "supervisor"))
    assert progress.finished is finished


def test_a_run_started_by_hand_has_finished_with_its_summary():
    progress = view.Progress()
    progress.update(_event("summary", role="trainer"))
    assert progress.finished


# The service, through its CLI. Runs are tiny: SMALL settings and a few epochs.

def _plain_run(tmp_path: Path, run_id: str, *args: str) -> tuple[subprocess.Popen, Path, list[str]]:
    """`hotprune run` with stdout to a pipe, read up to "starting 4 processes..."."""
    proc = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, "epochs=3"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = []
    while not first or not first[-1].startswith("starting"):
        first.append(proc.stdout.readline().rstrip("\n"))
        assert first[-1] or proc.poll() is None, first
    return proc, tmp_path / "runs" / run_id, first


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One run whose stdout is a pipe; and whether an epoch was logged when its first lines came."""
    tmp = tmp_path_factory.mktemp("plain")
    proc, run_dir, first = _plain_run(tmp, "plain")
    epochs_then = logged(run_dir, "trainer", "epoch")
    out, err = proc.communicate(timeout=180)
    return proc.returncode, run_dir, first, epochs_then, first + out.splitlines(), err


@pytest.mark.slow
def test_the_first_lines_come_before_the_first_epoch_and_say_what_the_run_is(plain):
    code, run_dir, first, epochs_then, _, err = plain
    assert code == 0, err
    assert epochs_then == []
    assert first == [f"run {run_dir}", "  CartPole-v1, async, both pruned, magnitude weights to 80.0%",
                     "  3 epochs = 1,536 env steps, 2 workers x 4 envs, trainer on cuda if found (device auto)",
                     "starting 4 processes..."]


@pytest.mark.slow
def test_a_plain_console_is_one_process_lines_within_100_columns(plain):
    code, run_dir, _, _, out, err = plain
    assert code == 0, err
    assert max(len(line) for line in out if str(run_dir) not in line) <= view.WIDTH
    assert [line.split("|")[0].split() for line in out if line.startswith("epoch")] == [
        ["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    for shown in ("[compressor] Pruning plan", "[compressor] Pruned v2 to 80.0% of weights, due epoch 2",
                  "Masks applied to training model", "=== Summary (async, both pruned) ===",
                  "[supervisor] run plain finished: completed"):
        assert sum(shown in line for line in out) == 1, shown  # once: only the supervisor prints it
    assert_clean(run_dir)


@pytest.mark.slow
def test_quiet_shows_the_first_lines_and_the_summary_only(tmp_path):
    result = hotprune("run", *settings(tmp_path, "quiet", "epochs=3"), "--quiet")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"run {tmp_path / 'runs' / 'quiet'}" and out[3] == "=== Summary (async, both pruned) ==="
    # the last line, or the one before when the path of its logs was too long to fit
    assert any(line.startswith("[supervisor] run quiet finished: completed") for line in out[-2:])
    assert not any(line.startswith(("epoch", "[trainer]", "[compressor]", "starting")) for line in out)


@pytest.mark.slow
def test_watch_of_a_finished_run_prints_its_summary_and_exits_0(plain):
    _, run_dir, first, *_ = plain
    result = hotprune("watch", str(run_dir), timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:3] == first[:3] and out[3] == "=== Summary (async, both pruned) ==="
    assert any(line.startswith("[supervisor] run plain finished: completed") for line in out[-2:])
    assert not any("epoch " in line for line in out)


@pytest.mark.slow
def test_watch_follows_a_running_run_to_its_end_and_ctrl_c_leaves_it_running(tmp_path):
    # Long enough to be still running when the watchers have started, on a busy machine too.
    run = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, "live", "epochs=120")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "live"
    try:
        wait_for(lambda: (run_dir / "config.toml").is_file(), timeout=60, what="the run directory")
        # As from a terminal: Ctrl-C not ignored (a shell's background job, e.g. `./scripts/test.sh &`,
        # starts with SIGINT ignored, which the watcher would inherit and rightly keep).
        watchers = [subprocess.Popen([HOTPRUNE, "watch", str(run_dir)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=as_from_a_terminal)
                    for _ in range(2)]
        while not watchers[1].stdout.readline().startswith("starting"):  # following the logs from here
            assert watchers[1].poll() is None
        watchers[1].send_signal(signal.SIGINT)
        out, err = watchers[1].communicate(timeout=30)
        assert watchers[1].returncode == 130 and err.splitlines() == [
            f"hotprune watch: stopped watching {run_dir}; the run goes on"], err
        out, err = watchers[0].communicate(timeout=180)
        assert run.wait(timeout=60) == 0, run.stderr.read()
    finally:
        run.kill()
    assert watchers[0].returncode == 0, err
    lines = out.splitlines()
    assert len([line for line in lines if re.match(r"epoch +\d+/120 \|", line)]) == 120
    assert "=== Summary (async, both pruned) ===" in lines
    assert any(line.startswith("[supervisor] run live finished: completed") for line in lines[-2:])


@pytest.mark.slow
def test_on_a_terminal_the_live_view_draws_a_progress_bar_instead_of_epoch_lines(tmp_path):
    terminal, child_end = pty.openpty()
    run = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, "tty", "epochs=4")], stdin=child_end,
                           stdout=child_end, stderr=child_end, env={**os.environ, "COLUMNS": "100", "LINES": "30"})
    os.close(child_end)
    screen = b""
    while select.select([terminal], [], [], 180)[0]:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the run ended and the terminal closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(terminal)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert run.wait(timeout=60) == 0, text[-2000:]
    assert "4/4 epochs" in text and "2,048 steps" in text and "ETA" in text and "samples/s" in text
    assert not re.search(r"^epoch +\d/4 \|", text, re.M)  # the bar, not a line per epoch
    assert text.index("4/4 epochs") < text.index("=== Summary (async, both pruned) ===")


@pytest.mark.slow
def test_a_worker_started_by_hand_without_its_store_says_it_is_waiting(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "alone", "supervisor.start_timeout_s=7")).stdout.strip())
    result = hotprune("worker", "--run-dir", str(run_dir), "--index", "0", timeout=120)
    assert result.returncode == 2 and "error" in result.stderr
    assert result.stdout.splitlines() == ["[worker-0] waiting for the weight store of run alone",
                                          "[worker-0]   5 s of 7 s: start the run's compressor (or hotprune run)"]
    assert [e["waited_s"] for e in logged(run_dir, "worker-0", "store_waiting")] == [5.0]


@pytest.mark.slow
def test_a_trainer_started_by_hand_without_its_compressor_says_so_and_gives_up_as_the_workers_do(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "alone", "supervisor.start_timeout_s=7")).stdout.strip())
    result = hotprune("trainer", "--run-dir", str(run_dir), timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("hotprune trainer: error: waited 7 s (supervisor.start_timeout_s): no "
                                    "compressor of run alone subscribed")
    assert f"hotprune compressor --run-dir {run_dir}" in result.stderr
    assert [line for line in result.stdout.splitlines() if "waiting" in line or " s of " in line] == [
        "[trainer] waiting for the compressor of run alone",
        "[trainer]   5 s of 7 s: start the run's compressor (or hotprune run)"]
    assert [e["waited_s"] for e in logged(run_dir, "trainer", "compressor_waiting")] == [5.0]
