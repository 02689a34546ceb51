"""Observation and reward normalisation: the statistics (hotprune.learning.normalize), the actor that carries
them (torch and numpy alike), and a real run that trains with them, ships them to the workers and
keeps them in its policy file and checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hotprune.runs import artifacts
from hotprune.learning import checkpoints
from hotprune.actor_spec import NORM_CLIP, OBS_NORM, actor_spec
from hotprune.envs import env_spec
from hotprune.commands.export import export, load_torch_prune
from hotprune.learning.normalize import RewardScaler, RunningMeanStd
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor, make_critic
from hotprune.roles.process import load_run_config
from tests.servicekit import events, hotprune, of, settings
from hotprune.workers.numpy_policy import NumpyActor

PENDULUM = env_spec("Pendulum-v1")


def test_running_statistics_over_batches_are_those_of_all_the_data(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 3)) for n in (1, 7, 100, 2)]
    stats = RunningMeanStd((3,))
    for batch in batches:
        stats.update(batch)
    stats.update(np.zeros((0, 3)))  # nothing seen changes nothing
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, everything.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.var, everything.var(axis=0), rtol=1e-6)
    artifacts.save(tmp_path / "stats.safetensors", stats.state())  # as the trainer's checkpoint keeps them
    again = RunningMeanStd((3,))
    again.load(artifacts.load(tmp_path / "stats.safetensors")[0])
    np.testing.assert_array_equal(again.mean, stats.mean)
    assert (again.var, again.count) == (pytest.approx(stats.var), stats.count)
    with pytest.raises(ValueError, match="shape"):
        RunningMeanStd((4,)).load(stats.state())


def test_rewards_are_scaled_by_the_std_of_the_discounted_return_which_restarts_at_episode_ends(tmp_path):
    scaler = RewardScaler(num_workers=2, envs_per_worker=1, gamma=0.5)
    rewards = np.ones((4, 1), np.float32)
    done = np.array([[False], [True], [False], [False]])
    scaled = scaler.scale(0, 7, rewards, done)
    # returns 1, 1.5 | 1, 1.5: the episode end restarts the sum
    np.testing.assert_allclose(scaler.returns[0], [1.5])
    assert scaler.stats.var == pytest.approx(np.var([1, 1.5, 1, 1.5]), rel=1e-6)
    np.testing.assert_allclose(scaled, rewards / np.sqrt(np.var([1, 1.5, 1, 1.5])), rtol=1e-5)
    assert scaled.dtype == np.float32
    scaler.scale(1, 9, rewards, np.zeros((4, 1), bool))  # another worker's envs run on apart
    np.testing.assert_allclose(scaler.returns[0], [1.5])
    scaler.scale(0, 8, np.zeros((1, 1), np.float32), np.zeros((1, 1), bool))  # worker 0 restarted
    np.testing.assert_allclose(scaler.returns[0], [0.0])
    artifacts.save(tmp_path / "rewards.safetensors", scaler.state())
    again = RewardScaler(num_workers=2, envs_per_worker=1, gamma=0.5)
    again.load(artifacts.load(tmp_path / "rewards.safetensors")[0])
    assert (again.stats.var, again.starts.tolist(), again.returns.tolist()) == \
        (scaler.stats.var, [8, 9], scaler.returns.tolist())


def test_scaled_rewards_are_clipped():
    scaler = RewardScaler(num_workers=1, envs_per_worker=2, gamma=0.0)
    scaler.scale(0, 1, np.full((5000, 2), 1e-3, np.float32), np.zeros((5000, 2), bool))  # tiny variance
    out = scaler.scale(0, 1, np.array([[1e3, -1e3]], np.float32), np.zeros((1, 2), bool))
    assert out.tolist() == [[NORM_CLIP, -NORM_CLIP]]


def normalised_actor(seed: int = 0):
    torch.manual_seed(seed)
    actor = make_actor(PENDULUM, [16, 16], normalize_obs=True)
    actor.obs_norm.set(np.array([1.0, -2.0, 5.0], np.float32), np.array([4.0, 0.25, 100.0], np.float32))
    with torch.no_grad():
        actor.net[-1].weight.normal_(0, 0.5)
    return actor


def test_the_actor_carries_its_statistics_and_normalises_its_input_with_them():
    actor = normalised_actor()
    assert set(expected_spec(actor)) == set(actor_spec(PENDULUM, [16, 16], normalize_obs=True))
    assert set(OBS_NORM) <= set(actor_arrays(actor)) and not set(OBS_NORM) & set(dict(actor.named_parameters()))
    obs = torch.tensor([[3.0, -2.5, 5.0], [1.0, 1e6, -1e6]])
    expected_input = torch.tensor([[1.0, -1.0, 0.0], [0.0, NORM_CLIP, -NORM_CLIP]])
    with torch.no_grad():
        np.testing.assert_allclose(actor.distribution(obs).mean, actor.net(expected_input), rtol=1e-5, atol=1e-6)
    critic = make_critic(PENDULUM, [16, 16], actor.obs_norm)
    assert critic[0] is actor.obs_norm  # one set of statistics for both


def test_the_numpy_actor_normalises_exactly_as_the_torch_actor():
    actor = normalised_actor()
    tensors = actor_arrays(actor)
    obs = np.random.default_rng(1).normal(0, 20, (64, 3)).astype(np.float32)
    actions = np.random.default_rng(2).normal(0, 1, (64, 1)).astype(np.float32)
    with torch.no_grad():
        want = actor.log_prob(actor.distribution(torch.from_numpy(obs)), torch.from_numpy(actions)).numpy()
    np.testing.assert_allclose(NumpyActor(tensors, PENDULUM, np.random.default_rng(0)).log_prob(obs, actions),
                               want, atol=1e-5)


@pytest.mark.parametrize("case,tensors,reason", [
    ("only the mean", lambda t: {k: v for k, v in t.items() if k != OBS_NORM[1]}, "missing"),
    ("a negative variance", lambda t: {**t, OBS_NORM[1]: np.array([1, -1, 1], np.float32)}, "negative"),
    ("a NaN mean", lambda t: {**t, OBS_NORM[0]: np.array([0, np.nan, 0], np.float32)}, "not finite"),
    ("statistics of another width", lambda t: {**t, OBS_NORM[0]: np.zeros(4, np.float32)}, "should be"),
])
def test_malformed_statistics_are_refused_by_the_numpy_actor(case, tensors, reason):
    with pytest.raises(ValueError, match=reason):
        NumpyActor(tensors(actor_arrays(normalised_actor())), PENDULUM, np.random.default_rng(0))


@pytest.mark.slow
def test_a_run_trains_with_normalisation_and_its_workers_and_files_keep_the_statistics(tmp_path):
    run_id = "norm"
    args = settings(tmp_path, run_id, "env_id=Pendulum-v1", "epochs=8", "normalize_obs=true",
                    "normalize_reward=true", "pruning.method=magnitude", "pruning.target_sparsity=0.5")
    done = hotprune("run", "--quiet", *args)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / run_id
    # The policy file holds the trainer's statistics of Pendulum's observations (cos, sin, angular
    # velocity): a variance far from the initial 1 for the velocity, not the defaults.
    actor, meta = artifacts.load_policy(run_dir, "Pendulum-v1")
    mean, var = actor.obs_norm.mean.numpy(), actor.obs_norm.var.numpy()
    assert np.all(np.abs(mean) < [1, 1, 8]) and var[2] > 1.5 and np.all(var > 0)
    # ... the checkpoint the same, with the count and the reward statistics
    tensors, _ = checkpoints.load(load_run_config(run_dir))
    np.testing.assert_allclose(tensors["obs_stats.mean"], mean, rtol=1e-6)
    assert tensors["obs_stats.count"] == pytest.approx(8 * 512, abs=1)
    assert tensors["reward_stats.var"] > 0 and tensors["reward_stats.returns"].shape == (2, 4)
    # ... and the workers ran policies that carry them (the store's spec has them, or nothing would run)
    epochs = of(events(run_dir, "trainer"), "epoch")
    assert len(epochs) == 8 and epochs[-1]["inference_version"] >= 5
    assert epochs[-1]["reward_mean"] < -100  # returns are Pendulum's own, not scaled rewards
    # the torch-prune export rebuilds the normalising actor
    pruned = load_torch_prune(export(run_dir, "torch-prune"))
    obs = torch.tensor([[0.5, 0.5, 3.0]])
    with torch.no_grad():
        np.testing.assert_allclose(pruned.distribution(obs).mean, actor.distribution(obs).mean, atol=1e-6)
