"""The whole service, started through its CLI with small settings: event chain, sparsity, shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import datetime

import pytest

from hotprune.learning.device import resolve
from tests.servicekit import (HOTPRUNE, as_from_a_terminal, assert_clean, events, hotprune, logged, of, run_cli,
                              settings, wait_for)

pytestmark = pytest.mark.slow

TARGET = 0.8
FIRST_COMPRESSION = 2  # pruning.start_epoch in servicekit.SMALL
ROLES = ("supervisor", "trainer", "compressor", "worker-0", "worker-1")


def when(event: dict) -> datetime:
    return datetime.fromisoformat(event["ts"])


@pytest.fixture(scope="module")
def both_pruned(tmp_path_factory):
    """One default-mode run (async, both pruned, magnitude 80%), shared by the checks below."""
    tmp = tmp_path_factory.mktemp("both")
    result = hotprune("run", *settings(tmp, "both", "epochs=9"))
    return result, tmp / "runs" / "both"


def test_run_completes_and_console_shows_the_diagnostics(both_pruned):
    result, run_dir = both_pruned
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert len(re.findall(r"^epoch\s+\d+/9 \|", out, re.M)) == 9
    assert "Snapshot taken (v2, epoch 2) - Training model is FULL (not pruned)" in out
    assert "Both Pruned mode" in out and "Masks applied to training model" in out
    assert "Training model sparsity verified: 80.0%" in out
    assert re.search(r"Snapshot taken \(v\d+, epoch \d+\) - Training model sparsity: 80\.0%", out)
    for line in ("=== Summary (async, both pruned) ===", "Throughput (avg samples/s)", "Rollout time avg",
                 "Final sparsity: training 80.0% | inference 80.0%", "Swap latency: median", "Policy lag",
                 "Critic sparsity: critic 0.0%"):
        assert line in out
    # under each epoch's line its update's losses and health, which its record holds
    assert len(re.findall(r"^epoch .*\n  loss policy \S+ value \S+ \| entropy \S+ \| KL \S+ \| clip \S+% \| "
                          r"expl var \S+$", out, re.M)) == 9
    epochs = of(events(run_dir, "trainer"), "epoch")
    for e in epochs:
        stats = [e[k] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance")]
        assert all(isinstance(v, float) for v in stats), e
        assert e["value_loss"] > 0 and e["approx_kl"] >= 0 and 0 <= e["clip_frac"] <= 1 and e["explained_variance"] <= 1
    assert of(events(run_dir, "trainer"), "summary")[0]["critics_sparsity"] == {"critic": 0.0}  # PPO's is never pruned
    started = of(events(run_dir, "trainer"), "trainer_started")[0]  # device auto: what this machine has
    assert (started["device"].split()[0], started["device_setting"]) == (resolve("auto").type, "auto")
    assert f"[trainer] PPO learner on {started['device']} (device auto)" in out
    assert_clean(run_dir)


def test_every_log_line_carries_the_common_fields(both_pruned):
    _, run_dir = both_pruned
    for role in ROLES:
        lines = events(run_dir, role)
        assert lines, role
        for e in lines:
            assert {"ts", "event", "role", "pid", "run_id"} <= set(e), e
            assert e["run_id"] == "both" and e["role"] == role.split("-")[0]
            assert datetime.fromisoformat(e["ts"]).utcoffset().total_seconds() == 0
            if role.startswith("worker"):
                assert e["worker_id"] == int(role[-1])


def test_every_process_logs_heartbeats(both_pruned):
    _, run_dir = both_pruned
    for role in ROLES:
        beats = of(events(run_dir, role), "heartbeat")
        assert beats, f"{role} logged no heartbeat"
    worker_beats = of(events(run_dir, "worker-0"), "heartbeat")
    assert [b["steps"] for b in worker_beats] == sorted(b["steps"] for b in worker_beats)


def test_event_chain_of_the_first_compression(both_pruned):
    _, run_dir = both_pruned
    v = FIRST_COMPRESSION  # the snapshot of epoch 2 is version 2

    def one(name, event):
        found = [e for e in of(events(run_dir, name), event) if e.get("version") == v]
        assert found, f"{name}: no {event} for version {v}"
        return found[0]

    chain = [
        one("trainer", "snapshot_published"),
        one("compressor", "snapshot_received"),
        one("compressor", "compression_finished"),
        one("compressor", "weights_written"),
        one("compressor", "masks_sent"),
        one("trainer", "masks_applied"),
    ]
    stamps = [when(e) for e in chain]
    assert stamps == sorted(stamps), chain
    for worker in ("worker-0", "worker-1"):  # each worker takes up version 2 or, if it skipped it, a newer one
        assert any(e["version"] >= v for e in of(events(run_dir, worker), "worker_swapped")), worker
    assert chain[-1]["training_sparsity_verified"] == pytest.approx(TARGET, abs=0.005)
    finished = chain[2]
    assert finished["method"] == "magnitude" and finished["structure_changed"] is False
    assert finished["achieved_sparsity"] == pytest.approx(TARGET, abs=0.001)


def test_workers_never_go_backwards_and_run_pruned_weights(both_pruned):
    _, run_dir = both_pruned
    for worker in ("worker-0", "worker-1"):
        swaps = of(events(run_dir, worker), "worker_swapped")
        versions = [e["version"] for e in swaps]
        assert versions == sorted(set(versions)) and versions[0] == 0
        pruned = [e["sparsity"] for e in swaps if e["version"] >= FIRST_COMPRESSION]
        assert pruned and all(s == pytest.approx(TARGET, abs=0.005) for s in pruned)


def test_once_masks_are_in_force_a_version_costs_the_store_bytes_in_proportion_to_what_is_kept(both_pruned):
    """Masked weights are written as kept values + bitmaps: 4 bytes per kept parameter, plus 1/8 byte per
    parameter at most for the bitmaps and a table; the workers above still run exact zeros."""
    _, run_dir = both_pruned
    compressor = events(run_dir, "compressor")
    [first] = [e for e in of(compressor, "compression_finished") if e["version"] == FIRST_COMPRESSION]
    kept, total = first["params_kept"], first["params_total"]
    for e in of(compressor, "weights_written"):
        if e["version"] < FIRST_COMPRESSION:
            assert e["nbytes"] == e["dense_nbytes"] >= 4 * total and not e["masked"]
        else:
            assert 4 * kept <= e["nbytes"] <= 4 * kept + total / 8 + 1024, (e, kept, total)
            assert e["nbytes"] < 0.35 * e["dense_nbytes"]
    # and so does a snapshot once the trainer's masks are applied (it sends their kept values), which the
    # compressor rebuilds: the weights its masks prune are still exactly 0
    snapshots = of(events(run_dir, "trainer"), "snapshot_published")
    dense = snapshots[0]["nbytes"]
    assert dense > 4 * total and all(s["nbytes"] == dense for s in snapshots if s["masks_version"] < 0)
    assert all(s["nbytes"] < 0.35 * dense for s in snapshots if s["masks_version"] >= 0)
    received = [e for e in of(compressor, "snapshot_received") if e["masks_version"] >= 0]
    assert received and all(e["pruned_nonzero"] == 0 for e in received)


def test_training_sparsity_persists_from_the_epoch_after_the_first_compression(both_pruned):
    _, run_dir = both_pruned
    trainer = events(run_dir, "trainer")
    epochs = of(trainer, "epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, 10))
    # The compressor prunes snapshot 2 while epoch 3 trains; the trainer takes the masks up at its
    # next minibatch, so epoch 3 already ends pruned, and Adam never revives a masked weight after.
    assert of(trainer, "masks_applied")[0]["epoch"] == FIRST_COMPRESSION + 1
    for e in epochs:
        assert e["training_sparsity"] is not None and e["inference_sparsity"] is not None
        if e["epoch"] <= FIRST_COMPRESSION:
            assert e["training_sparsity"] == 0.0
        else:
            assert e["training_sparsity"] == pytest.approx(TARGET, abs=0.005), e
    snapshots = of(trainer, "snapshot_published")
    assert all(s["training_sparsity"] == pytest.approx(TARGET, abs=0.005) for s in snapshots
               if s["epoch"] > FIRST_COMPRESSION)
    summary = of(trainer, "summary")[0]
    assert summary["final_training_sparsity"] == pytest.approx(TARGET, abs=0.005)
    assert summary["swaps"] > 0 and summary["swap_latency_ms_p99"] >= summary["swap_latency_ms_median"] > 0


def test_supervisor_logs_every_process_and_a_clean_finish(both_pruned):
    _, run_dir = both_pruned
    sup = events(run_dir, "supervisor")
    assert {e["name"] for e in of(sup, "process_started")} == {"compressor", "trainer", "worker-0", "worker-1"}
    assert sorted((e["name"], e["exitcode"]) for e in of(sup, "process_exited")) == [
        ("compressor", 0), ("trainer", 0), ("worker-0", 0), ("worker-1", 0)]
    assert of(sup, "run_finished")[0]["outcome"] == "completed"


def test_teacher_student_sync_keeps_the_trainer_dense(tmp_path):
    result = hotprune("run", *settings(tmp_path, "ts", "epochs=6", "mode=sync", "prune_training_model=false"))
    run_dir = tmp_path / "runs" / "ts"
    assert result.returncode == 0, result.stderr
    trainer = events(run_dir, "trainer")
    epochs = of(trainer, "epoch")
    assert all(e["training_sparsity"] == 0.0 for e in epochs)
    # sync: every sample of an epoch comes from the version the trainer last published
    assert all(e["policy_lag"] == 0 and e["inference_version"] == e["epoch"] - 1 for e in epochs)
    after = [e["inference_sparsity"] for e in epochs if e["epoch"] > FIRST_COMPRESSION + 1]
    assert after == [pytest.approx(TARGET, abs=0.005)] * 3
    assert not of(trainer, "masks_applied")
    # the compressor reports each compression to the trainer, without mask tensors in this mode
    assert [m["tensors"] for m in of(events(run_dir, "compressor"), "masks_sent")] == [False]
    assert of(trainer, "summary")[0]["pruned_sparsity"] == pytest.approx(TARGET, abs=1e-3)
    assert "teacher-student" in result.stdout
    assert_clean(run_dir)


def test_continuous_actions_on_pendulum(tmp_path):
    result = hotprune("run", *settings(tmp_path, "pend", "env_id=Pendulum-v1", "epochs=3", "envs_per_worker=2",
                                       "chunk_steps=64"))
    run_dir = tmp_path / "runs" / "pend"
    assert result.returncode == 0, result.stderr
    epochs = of(events(run_dir, "trainer"), "epoch")
    assert len(epochs) == 3 and epochs[-1]["training_sparsity"] == pytest.approx(TARGET, abs=0.005)
    assert of(events(run_dir, "worker-0"), "episode")  # Pendulum truncates at 200 steps
    assert not any(of(events(run_dir, name), "message_rejected") for name in ROLES)
    assert_clean(run_dir)


def test_dense_baseline_passes_every_update_through_unpruned(tmp_path):
    result = hotprune("run", *settings(tmp_path, "dense", "epochs=4", "pruning.method=none", "total_steps=1536"))
    run_dir = tmp_path / "runs" / "dense"
    assert result.returncode == 0, result.stderr
    epochs = of(events(run_dir, "trainer"), "epoch")
    assert len(epochs) == 3  # total_steps wins over epochs: ceil(1536 / 512)
    assert all(e["training_sparsity"] == 0.0 and e["inference_sparsity"] == 0.0 for e in epochs)
    compressor = events(run_dir, "compressor")
    assert not of(compressor, "compression_started")
    written = [e["version"] for e in of(compressor, "weights_written")]
    assert written[0] == 0 and written[-1] == 3 and all(e["sparsity"] == 0.0 for e in of(compressor, "weights_written"))
    assert_clean(run_dir)


@pytest.mark.parametrize(
    "override, named",
    [
        ("pruning.target_sparsity=1.5", "pruning.target_sparsity"),
        ("mode=fast", "mode"),
        ("num_workers=0", "num_workers"),
        ("env_id=NoSuchEnv-v0", "NoSuchEnv-v0"),
        ("prune_training_model=maybe", "prune_training_model"),
        ("no_such_key=1", "no_such_key"),
        ("transport.max_frame_bytes=1024", "transport.max_frame_bytes must be >= 16384"),  # 64x64 float32
        ("seed=99999999999999999999", "seed"),
        ("num_workers=10000", "num_workers"),
    ],
)
def test_bad_config_fails_at_start_with_one_line(tmp_path, capsys, override, named):
    # In this process: the refusal is the config's (the process's own one line: the unusable paths below)
    code, _, err = run_cli(capsys, "run", *settings(tmp_path, "bad", override))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "error" in lines[0], err
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize("make, named", [
    (lambda tmp: ["--config", str(tmp)], "is a directory"),
    (lambda tmp: ["--config", str((tmp / "latin1.toml").write_bytes(b"\xff\xfe = 1") and tmp / "latin1.toml")],
     "is not UTF-8 text"),
    (lambda tmp: ["--set", "run_id=x", "--set", f"runs_dir={(tmp / 'a-file').write_text('x') and tmp / 'a-file'}"],
     "cannot create"),
])
def test_unusable_paths_fail_at_start_with_one_line(tmp_path, make, named):
    result = hotprune("run", *make(tmp_path), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def _start(tmp_path, run_id, *extra):
    # A session of its own, like a shell job: a signal to its process group reaches only the run.
    proc = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, "epochs=500", *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_dir = tmp_path / "runs" / run_id
    wait_for(lambda: logged(run_dir, "trainer", "epoch"), timeout=90, what="the first epoch")
    return proc, run_dir


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the supervisor", "Ctrl-C to the whole process group"])
def test_a_stop_signal_stops_everything(tmp_path, capsys, sig, to_group):
    proc, run_dir = _start(tmp_path, "stop")
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    assert_clean(run_dir)
    sup = events(run_dir, "supervisor")
    assert of(sup, "run_finished")[0]["outcome"] == f"stopped by {sig.name}"
    exits = {e["name"]: e["exitcode"] for e in of(sup, "process_exited")}
    # Children run in their own sessions: the signal reached the supervisor alone, which stopped them
    # with SIGTERM; each stopped gracefully (0 for those the trainer's `stop` reached first).
    term = 128 + signal.SIGTERM
    assert exits["trainer"] == term and set(exits.values()) <= {0, term}, exits
    assert of(events(run_dir, "trainer"), "summary")[0]["completed"] is False
    code, shown, _ = run_cli(capsys, "show", str(run_dir))  # what its console ended with, too
    assert code == 0 and shown.splitlines()[-1] == f"[supervisor] resume it: hotprune run --resume {run_dir}"


@pytest.mark.parametrize("victim, sig", [("worker-1", signal.SIGKILL), ("trainer", signal.SIGTERM)],
                         ids=["a worker killed", "the trainer stopped from outside"])
def test_without_restarts_a_process_ending_early_fails_the_run_and_nothing_is_left(tmp_path, capsys, victim, sig):
    proc, run_dir = _start(tmp_path, "crash", "supervisor.max_restarts=0")
    pid = next(e["child_pid"] for e in logged(run_dir, "supervisor", "process_started") if e["name"] == victim)
    os.kill(pid, sig)
    assert proc.wait(timeout=60) == 1
    assert_clean(run_dir)
    finished = of(events(run_dir, "supervisor"), "run_finished")[0]
    assert finished["failed"] == [victim]
    exits = {e["name"]: e["exitcode"] for e in of(events(run_dir, "supervisor"), "process_exited")}
    expected = -sig if sig == signal.SIGKILL else 128 + sig  # SIGTERM is handled: a graceful stop
    assert exits.pop(victim) == expected and set(exits.values()) <= {0, 128 + signal.SIGTERM}, exits
    code, diagnosed, _ = run_cli(capsys, "diagnose", str(run_dir))
    assert code == 1 and "FAIL  run completed:" in diagnosed


@pytest.mark.parametrize("after_s", [0.3, 1.5, 4.0])
def test_ctrl_c_at_any_moment_of_start_up_is_one_clean_stop(tmp_path, after_s):
    # Ctrl-C from a terminal signals the whole foreground process group. As from a terminal: SIGINT not
    # ignored (a shell's background job, e.g. `./scripts/test.sh &`, starts with it ignored, and a run
    # that inherits that loses a Ctrl-C come before the supervisor's own handler).
    run_id = f"ctrlc{int(after_s * 10)}"
    proc = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, run_id, "epochs=500")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    time.sleep(after_s)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, (out, err)
    assert "Traceback" not in out + err and len(err.splitlines()) <= 2, err
    assert_clean(tmp_path / "runs" / run_id)
