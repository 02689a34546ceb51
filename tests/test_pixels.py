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
from hotprune.actor_spec import actor_shapes, critic_shapes, policy_metadata
from hotprune.config import NATURE_CNN, SMALL_CNN, Config
from hotprune.envs import EnvSource, env_spec, spec_of
from hotprune.learning.policy import actor_from_tensors, make_actor, make_critic
from hotprune.pruning.engine import prunable_names
from hotprune.runs.artifacts import save
from hotprune.runs.runlog import run_config
from hotprune.runs.tickets import model_shapes
from hotprune.workers.numpy_policy import NumpyActor
from tests.test_artifacts import exported_actions
from tests.servicekit import assert_clean, events, hotprune, of, run_cli, settings

MINATAR = "MinAtar/Breakout-v1"
LAYOUTS = {"small": spec_of("Small-v0", gs.Box(0, 1, (4, 10, 10), np.uint8), gs.Discrete(3)),
           "nature": spec_of("Nature-v0", gs.Box(0, 255, (4, 84, 84), np.uint8), gs.Discrete(6)),
           "mixed": spec_of("Mixed-v0", gs.Box(0, 255, (3, 12, 12), np.uint8), gs.Discrete(4))}
# The numpy worker keeps an activation channel-major before a stride-1 layer, NHWC before a strided one:
# strides 1, 2, 1 take every pair of the two layouts in and out (MinAtar's one layer and the Nature CNN's
# 4, 2, 1 do not: neither goes from channel-major to NHWC).
SETTINGS = {"mixed": {"cnn": {"channels": [6, 8, 5], "kernels": [3, 3, 2], "strides": [1, 2, 1], "hidden_sizes": [32]}}}


def test_minatar_frames_are_uint8_channels_first_and_travel_as_uint8_rows():
    spec = env_spec(MINATAR)
    assert spec.image == (4, 10, 10) and spec.obs_dtype == "uint8" and spec.obs_dim == 400
    env = EnvSource(MINATAR).make()
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped.game.state()  # MinAtar's own bool (10, 10, 4) planes
    assert obs.dtype == np.uint8 and np.array_equal(obs, raw.transpose(2, 0, 1))
    row = spec.flatten(obs, batched=False)
    assert row.dtype == np.uint8 and np.array_equal(row[0], obs.reshape(-1))  # channel-major, as torch flattens


@pytest.mark.parametrize("layout", ["small", "nature"])
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
    network = Config.from_dict(SETTINGS.get(layout, {})).network("actor", spec)
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
@pytest.mark.parametrize("layout, kept", [("small", None), ("small", 5), ("nature", None), ("nature", 9),
                                          ("mixed", None), ("mixed", 2)])
def test_the_numpy_conv_actor_is_the_torch_actor_within_1e_5(layout, kept, batch):
    spec = LAYOUTS[layout]
    actor, tensors, conv = random_actor(layout, kept)
    numpy_actor = NumpyActor(tensors, spec, np.random.default_rng(0), "ppo", "relu", conv)
    numpy_actor.forward(np.zeros((3, spec.obs_dim), np.uint8))  # buffers for another batch size first: remade
    obs = np.random.default_rng(batch).integers(0, int(conv.scale) + 1, (batch, spec.obs_dim)).astype(np.uint8)
    with torch.no_grad():
        logits = actor(torch.from_numpy(obs)).numpy()
        dist = actor.distribution(torch.from_numpy(obs))
    assert np.abs(logits).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(numpy_actor.forward(obs), logits, atol=1e-5, rtol=1e-5)
    actions = np.arange(batch) % spec.act_dim
    np.testing.assert_allclose(numpy_actor.log_prob(obs, actions),
                               dist.log_prob(torch.from_numpy(actions)).numpy(), atol=1e-5)


def test_onnx_and_torchscript_exports_of_a_channel_pruned_cnn_take_uint8_frames_and_act_as_the_policy(tmp_path):
    spec = LAYOUTS["small"]
    _, tensors, conv = random_actor("small", 5)
    save(tmp_path / "policy.safetensors", tensors, **policy_metadata(spec, Config.from_dict({})), version=1)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, int(conv.scale) + 1, (64, *spec.image)).astype(np.uint8)
    obs[np.arange(64), rng.integers(0, spec.image[0], 64)] = 0  # a plane off in each: not all one action
    by_onnx, by_torchscript, shapes = exported_actions(tmp_path, obs)  # (n, C, H, W) uint8, as the env gives
    expected = load_policy(tmp_path).predict(obs)
    assert len(set(expected)) > 1 and (by_onnx == expected).all() and (by_torchscript == expected).all()
    assert shapes["1.actor.conv.0.weight"][0] == 5, shapes  # the pruned shapes, not the dense ones


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
def test_a_minatar_run_trains_a_cnn_both_pruned_and_its_policy_evaluates(tmp_path):
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
    assert int(pol.predict(frame)) in range(3)  # the ONNX export of a CNN: test_onnx_and_torchscript_exports_...
    assert_clean(run_dir)


@pytest.mark.slow
def test_the_lottery_ticket_workflow_on_a_cnn_keeps_the_masks_zeros_in_the_tickets_actor_and_critic(
        tmp_path, capsys):
    """train-dense -> create-mask (actor and critic) -> train-ticket on MinAtar: the ticket trains with
    the mask's zeros held in every pruned layer of both networks, and its workers ran them."""
    dense = tmp_path / "runs" / "dense"
    trained = hotprune("lth", "train-dense", *settings(tmp_path, "dense", f"env_id={json.dumps(MINATAR)}",
                                                       "epochs=2", "num_workers=1", "samples_per_epoch=256"))
    assert trained.returncode == 0, trained.stderr
    code, _, err = run_cli(capsys, "lth", "create-mask", str(dense), "--method", "magnitude", "--sparsity", "0.8",
                           "--targets", "actor,critic")
    assert code == 0, err
    mask_file = dense / "masks" / "magnitude-weight-80.safetensors"
    ticket = hotprune("lth", "train-ticket", str(dense), "--mask", str(mask_file), "--set", "run_id=ticket")
    assert ticket.returncode == 0, ticket.stderr
    masks = load_file(mask_file)
    actor = {n: ("float32", s) for n, s in model_shapes(run_config(dense))["actor"].items()}
    pruned = {f"actor.{n}" for n in prunable_names(actor, False)} | {"critic.net.0.weight"}
    assert pruned <= set(masks)  # every layer the engine prunes (conv.* too where it prunes them), both parts
    final = load_file(tmp_path / "runs" / "ticket" / "checkpoint.safetensors")  # actor.* and critic.*
    for name, keep in masks.items():
        assert (final[name][~keep] == 0).all() and (final[name][keep] != 0).mean() > 0.99, name
    actor_masks = [keep for name, keep in masks.items() if name.startswith("actor.")]  # one global threshold:
    assert sum((~k).sum() for k in actor_masks) / sum(k.size for k in actor_masks) == pytest.approx(0.8, abs=1e-3)
    policy = load_file(tmp_path / "runs" / "ticket" / "policy.safetensors")  # what the workers last ran
    assert all((policy[n.removeprefix("actor.")][~k] == 0).all() for n, k in masks.items() if n.startswith("actor."))
