"""SAC through the whole service (real processes, sockets, store): a short both-pruned Pendulum run
with actor and critics pruned, read back from its logs and its checkpoint; and a SAC config the
machine cannot run, refused before anything starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.numpy

from hotprune.learning import checkpoints
from hotprune.runs import runlog
from hotprune.config import load_config
from hotprune.envs import env_spec
from hotprune.commands.evaluate import evaluate
from hotprune.learning.policy import actor_arrays, make_actor
from hotprune.workers.inference_worker import InferenceWorker
from hotprune.workers.numpy_policy import NumpyActor
from tests.servicekit import HOTPRUNE, assert_clean, events, hotprune, logged, of, settings, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 6
SAC = ["algorithm=sac", "env_id=Pendulum-v1", f"epochs={EPOCHS}", "sac.hidden_sizes=32,32", "sac.batch_size=64",
       "sac.learning_starts=1024", "sac.utd=0.25", "pruning.targets=actor,critic", "pruning.method=taylor"]
# SMALL's epochs are 512 samples: versions 0 and 1 act at random, the updates from epoch 2 on (1,024
# samples) take 128 critic and 128 actor steps each; pruned from epoch 2 on.


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sac")
    result = hotprune("run", *settings(tmp, "sac", *SAC), timeout=300)
    return result, tmp / "runs" / "sac"


def test_a_both_pruned_sac_run_logs_every_epoch_field(sac_run):
    result, run_dir = sac_run
    assert result.returncode == 0, result.stderr
    assert "Final sparsity: training 80.0% | inference 80.0%" in result.stdout
    epochs = of(events(run_dir, "trainer"), "epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    for e in epochs[1:]:  # learning from the second epoch on (1,024 samples)
        for key in ("training_sparsity", "inference_sparsity", "policy_lag", "critic_sparsity",
                    "qf_loss", "qf1_values", "qf2_values", "actor_loss", "alpha", "alpha_loss", "replay_size"):
            assert e[key] is not None, (e["epoch"], key)
        assert e["gradient_steps"] == 128 + 128 and e["skipped_steps"] == 0  # 128 critic steps, as many actor's
    assert epochs[0]["gradient_steps"] == 0 and epochs[0]["qf_loss"] is None
    # 8 envs take 64 steps an epoch: Pendulum's 200-step episodes end from epoch 4 on
    assert all(e["reward_mean"] is not None for e in epochs[3:])
    assert epochs[-1]["replay_size"] == EPOCHS * 512
    assert epochs[-1]["training_sparsity"] == pytest.approx(0.8, abs=0.005)
    assert epochs[-1]["critic_sparsity"] == pytest.approx(0.8, abs=0.005)
    assert epochs[-1]["inference_sparsity"] == pytest.approx(0.8, abs=0.005)
    critics = of(events(run_dir, "trainer"), "summary")[0]["critics_sparsity"]
    assert critics.keys() == {"qf1", "qf2"} and all(v == pytest.approx(0.8, abs=0.005) for v in critics.values())
    assert re.search(r"^  loss critic \S+ actor \S+ \| alpha \S+ \| critic sparsity 80\.0%$", result.stdout, re.M)
    assert "Critic sparsity: qf1 80.0%, qf2 80.0%" in result.stdout
    assert_clean(run_dir)


def test_the_workers_act_uniformly_at_random_on_the_versions_before_learning_starts(sac_run):
    """Versions 0 and 1 come before the first gradient step (learning_starts 1,024 = two epochs): a
    worker's actions then are uniform over the box, whatever its policy; from version 2 on, the policy's."""
    _, run_dir = sac_run
    cfg = load_config(run_dir / "config.toml", with_preset=False)
    assert cfg.random_versions == 2
    swapped = [e["version"] for e in of(events(run_dir, "worker-0"), "worker_swapped")]
    assert swapped[0] == 0 and max(swapped) >= 2
    spec = env_spec("Pendulum-v1")
    tensors = actor_arrays(make_actor(spec, [32, 32], algorithm="sac"))
    policy = NumpyActor(tensors, spec, np.random.default_rng(0), "sac")
    worker = SimpleNamespace(cfg=cfg, spec=spec, rng=np.random.default_rng(1), actor=policy, version=1)
    obs = np.zeros((20_000, 3), np.float32)
    actions, logp = InferenceWorker.act(worker, obs)
    assert -2 <= actions.min() < -1.95 and 1.95 < actions.max() <= 2 and abs(actions.mean()) < 0.03
    assert np.allclose(logp, -np.log(4.0))  # the uniform density on [-2, 2]
    worker.version = 2
    actions, logp = InferenceWorker.act(worker, obs)
    same = NumpyActor(tensors, spec, np.random.default_rng(0), "sac").act(obs)  # the policy's own sample
    assert np.array_equal(actions, same[0]) and np.array_equal(logp, same[1])


def test_masks_reach_actor_and_critics_and_pruned_weights_are_exactly_zero(sac_run):
    _, run_dir = sac_run
    trainer = events(run_dir, "trainer")
    [applied, *_] = of(trainer, "masks_applied")
    assert applied["training_sparsity_verified"] == pytest.approx(0.8, abs=0.005)
    critic = of(trainer, "critic_masks_applied")
    assert critic and critic[0]["critic_sparsity"] == pytest.approx(0.8, abs=0.005) and critic[0]["newly_pruned"] > 0
    assert all(e["pruned_nonzero"] == 0 for e in of(events(run_dir, "compressor"), "snapshot_received")
               if e.get("pruned_nonzero") is not None)
    state = safetensors.numpy.load_file(str(checkpoints.path(run_dir)))
    masks = {n.removeprefix("mask."): m for n, m in state.items() if n.startswith("mask.")}
    masks |= {n.removeprefix("critic_mask."): m for n, m in state.items() if n.startswith("critic_mask.")}
    assert {n.split(".")[0] for n in masks} == {"net", "qf1", "qf2", "qf1_target", "qf2_target"}
    for name, keep in masks.items():
        weight = state[name if name.startswith("qf") else "actor." + name]
        pruned = weight[~keep]
        assert pruned.size and (pruned == 0).all() and not np.signbit(pruned).any(), name
    assert "log_alpha" in state and "adam_q.0.exp_avg" in state


def test_the_kept_sac_policy_evaluates_with_its_squashed_head(sac_run):
    _, run_dir = sac_run
    result = evaluate(run_dir, episodes=1, deterministic=True)
    assert result["env_id"] == "Pendulum-v1" and -2000 < result["return_mean"] < 0
    assert result["nonzero_params"] < result["params"]


def test_sac_on_discrete_actions_is_refused_in_one_line_before_anything_starts(tmp_path):
    result = hotprune("run", *settings(tmp_path, "bad", "algorithm=sac", "env_id=CartPole-v1"))
    assert result.returncode != 0
    assert "algorithm sac needs Box actions; env_id CartPole-v1 has Discrete actions" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_killed_sac_trainer_resumes_with_its_nets_and_critic_masks_and_refills_its_replay_buffer(tmp_path):
    epochs = 10
    proc = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, "resume", *SAC, f"epochs={epochs}",
                                                        "supervisor.restart_backoff_s=0.2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_dir = tmp_path / "runs" / "resume"
    wait_for(lambda: len(logged(run_dir, "trainer", "critic_masks_applied")) and
             len(logged(run_dir, "trainer", "epoch")) >= 4, timeout=120, what="epoch 4, pruned")
    trainer = [e["child_pid"] for e in logged(run_dir, "supervisor", "process_started") if e["name"] == "trainer"][-1]
    os.kill(trainer, signal.SIGKILL)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    assert_clean(run_dir)
    log = events(run_dir, "trainer")
    [resumed] = of(log, "trainer_resumed")
    [lost] = of(log, "replay_buffer_lost")
    assert lost["samples_seen"] == resumed["epoch"] * 512
    assert resumed["training_sparsity"] == pytest.approx(0.8, abs=0.005)  # the actor's masks came back
    run = runlog.load(run_dir)
    assert [e["epoch"] for e in run.epochs()] == list(range(1, epochs + 1))
    after = [e for e in of(log, "epoch") if e["ts"] > resumed["ts"] and not e.get("replayed")]
    assert after and all(e["critic_sparsity"] == pytest.approx(0.8, abs=0.005) for e in after)
    assert after[0]["replay_size"] == 512 and after[0]["gradient_steps"] > 0  # learning goes on, from the new data
    assert run.summary["trainer_starts"] == 2
    assert run.summary["final_training_sparsity"] == pytest.approx(0.8, abs=0.005)
