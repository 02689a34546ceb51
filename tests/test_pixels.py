"""Image observations and CNN policies: the environments as the community preprocesses them, the numpy
worker's conv against the torch actor, the shapes table against torch, and a real MinAtar run."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from gymnasium import spaces as gs
from safetensors.numpy import load_file

from hotprune import load_policy
from hotprune.actor_spec import actor_shapes, critic_shapes
from hotprune.config import NATURE_CNN, SMALL_CNN, Config
from hotprune.envs import EnvSource, env_spec, spec_of
from hotprune.learning.policy import actor_from_tensors, make_actor, make_critic
from hotprune.workers.numpy_policy import NumpyActor
from tests.servicekit import assert_clean, events, hotprune, of, run_cli, settings

MINATAR = "MinAtar/Breakout-v1"
LAYOUTS = {"small": spec_of("Small-v0", gs.Box(0, 1, (4, 10, 10), np.uint8), gs.Discrete(3)),
           "nature": spec_of("Nature-v0", gs.Box(0, 255, (4, 84, 84), np.uint8), gs.Discrete(6))}


def test_minatar_frames_are_uint8_channels_first_and_travel_as_uint8_rows():
    spec = env_spec(MINATAR)
    assert spec.image == (4, 10, 10) and spec.obs_dtype == "uint8" and spec.obs_dim == 400
    env = EnvSource(MINATAR).make()
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped.game.state()  # MinAtar's own bool (10, 10, 4) planes
    assert obs.dtype == np.uint8 and np.array_equal(obs, raw.transpose(2, 0, 1))
    row = spec.flatten(obs, batched=False)
    assert row.dtype == np.uint8 and np.array_equal(row[0], obs.reshape(-1))  # channel-major, as torch flattens


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_shapes_table_is_the_one_torch_builds_for_both_layouts(layout):
    spec = LAYOUTS[layout]
    network = Config.from_dict({}).network("actor", spec)
    conv = network.conv
    assert (conv.channels, conv.kernels, conv.strides, network.hidden_sizes) == \
        (NATURE_CNN if layout == "nature" else SMALL_CNN)
    actor = make_actor(spec, network.hidden_sizes, False, "ppo", network.activation, network.conv)
    critic = make_critic(spec, network.hidden_sizes, None, network.activation, network.conv)
    assert {k: tuple(v.shape) for k, v in actor.state_dict().items()} == \
        actor_shapes(spec, network.hidden_sizes, conv=network.conv)
    assert {k: tuple(v.shape) for k, v in critic.state_dict().items()} == \
        critic_shapes(spec, network.hidden_sizes, conv=network.conv)
    if layout == "nature":
        assert sum(v.numel() for v in actor.parameters()) == 1_687_206  # CleanRL's ppo_atari actor, 6 actions


@functools.cache
def random_actor(layout: str, channels_kept: int | None = None):
    """A CNN actor with random weights of unit scale (not the init's 0.01 output gain), optionally with
    its first conv layer cut to `channels_kept` filters (a channel-pruned table). Built once per test run."""
    spec = LAYOUTS[layout]
    network = Config.from_dict({}).network("actor", spec)
    torch.manual_seed(0)
    actor = make_actor(spec, network.hidden_sizes, False, "ppo", network.activation, network.conv)
    tensors = {k: (np.random.default_rng(len(k)).standard_normal(v.shape) / np.sqrt(v[0].numel())).astype(np.float32)
               for k, v in actor.state_dict().items()}
    if channels_kept is not None:  # conv.0 loses filters; conv.2 (or the head) loses their inputs
        keep = np.arange(channels_kept)
        tensors["conv.0.weight"], tensors["conv.0.bias"] = tensors["conv.0.weight"][keep], tensors["conv.0.bias"][keep]
        if "conv.2.weight" in tensors:
            tensors["conv.2.weight"] = np.ascontiguousarray(tensors["conv.2.weight"][:, keep])
        else:
            hw = tensors["net.0.weight"].shape[1] // network.conv.channels[0]
            cols = (keep[:, None] * hw + np.arange(hw)).reshape(-1)
            tensors["net.0.weight"] = np.ascontiguousarray(tensors["net.0.weight"][:, cols])
    return actor_from_tensors(tensors, True, "ppo", None, "relu", network.conv), tensors, network.conv


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layout, kept", [("small", None), ("small", 5), ("nature", None), ("nature", 9)])
def test_the_numpy_conv_actor_is_the_torch_actor_within_1e_5(layout, kept, batch):
    spec = LAYOUTS[layout]
    actor, tensors, conv = random_actor(layout, kept)
    numpy_actor = NumpyActor(tensors, spec, np.random.default_rng(0), "ppo", "relu", conv)
    obs = np.random.default_rng(batch).integers(0, int(conv.scale) + 1, (batch, spec.obs_dim)).astype(np.uint8)
    with torch.no_grad():
        logits = actor(torch.from_numpy(obs)).numpy()
        dist = actor.distribution(torch.from_numpy(obs))
    assert np.abs(logits).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(numpy_actor.forward(obs), logits, atol=1e-5, rtol=1e-5)
    actions = np.arange(batch) % spec.act_dim
    np.testing.assert_allclose(numpy_actor.log_prob(obs, actions),
                               dist.log_prob(torch.from_numpy(actions)).numpy(), atol=1e-5)


def test_a_conv_table_that_does_not_chain_is_refused_with_one_line():
    spec = LAYOUTS["small"]
    _, tensors, conv = random_actor("small")
    tensors = {**tensors, "conv.0.weight": tensors["conv.0.weight"][:, :3]}  # 3 input channels, the frames have 4
    with pytest.raises(ValueError, match=r"^conv.0.weight \(16, 3, 3, 3\) with bias \(16,\) does not take 4 channels"):
        NumpyActor(tensors, spec, np.random.default_rng(0), "ppo", "relu", conv)


@pytest.mark.parametrize("extra, message", [
    (["normalize_obs=true"], "normalize_obs must be false for image observations"),
    (["cnn.channels=[16]", "cnn.kernels=[9]", "cnn.strides=[1]"], "cnn.kernels: a 9x9 kernel does not fit"),
])
def test_what_a_cnn_run_cannot_do_is_refused_before_anything_starts(capsys, tmp_path, extra, message):
    code, out, err = run_cli(capsys, "run", "--env", "tests.spaces_envs:Pixels-v0",
                             *[a for item in [f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", *extra]
                               for a in ("--set", item)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_minatar_run_trains_a_cnn_both_pruned_and_its_policy_evaluates_and_exports(tmp_path):
    run_id = "minatar"
    result = hotprune("run", "--env", MINATAR, *settings(tmp_path, run_id, "epochs=5", "num_workers=1"))
    run_dir = tmp_path / "runs" / run_id
    assert result.returncode == 0, result.stderr
    swaps = of(events(run_dir, "worker-0"), "worker_swapped")
    assert swaps and swaps[-1]["version"] >= 4
    first = of(events(run_dir, "compressor"), "compression_finished")[0]
    policy = load_file(run_dir / "policy.safetensors")
    assert policy["conv.0.weight"].shape == (16, 4, 3, 3)  # the CNN reached the store and the file
    assert first["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    zeros = (policy["net.0.weight"] == 0).mean()
    assert zeros >= 0.8 - 1e-3  # pruned weights exactly zero in what the workers last ran
    trainer = of(events(run_dir, "trainer"), "summary")[0]
    assert trainer["final_training_sparsity"] == pytest.approx(first["weight_sparsity"])
    pol = load_policy(run_dir)
    frame = EnvSource(MINATAR).make().reset(seed=0)[0]
    assert int(pol.predict(frame)) in range(3)
    exported = hotprune("export", str(run_dir), "--format", "onnx")
    assert exported.returncode == 0, exported.stderr
    assert_clean(run_dir)
