"""Pruning convolutional networks (hotprune.pruning.engine over hotprune.actor_spec.layer_chain): conv weights
under every criterion, scope and ERK; whole output channels (`channel`) against torch's ln_structured, nested
and exact; the sliced network against the masked dense one; the smaller shapes through the weight store's
layout and the trainer's masks. The CNN is built here with issue 20's names (conv.K, net.K) and torch's NCHW
flatten(1)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from hotprune.actor_spec import Layer, layer_chain
from hotprune.config import ConvNet
from hotprune.envs import EnvSpec
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor
from hotprune.learning.training_masks import TrainingMasks
from hotprune.protocol.store_layout import payload_size, read_payload, write_payload
from hotprune.pruning.engine import Masks, Pruner, apply_masks, cut_inputs, erk_densities, masked_stats, \
    prunable_names, sparsity
from hotprune.workers.numpy_policy import NumpyActor

torch.set_num_threads(1)

FRAME = (4, 10, 10)  # C, H, W: MinAtar-sized
CHANNELS = (8, 16)  # conv.0, conv.2 (3x3, stride 1, no padding: 10 -> 8 -> 6)
HIDDEN, ACTIONS = 32, 3


class CNN(nn.Module):
    """conv.0, ReLU, conv.2, ReLU, flatten(1) (channel-major), net.0, ReLU, net.2: issue 20's tensor table."""

    def __init__(self, frame=FRAME, channels=CHANNELS, hidden=HIDDEN, actions=ACTIONS):
        super().__init__()
        c, h, w = frame
        self.conv = nn.Sequential(nn.Conv2d(c, channels[0], 3), nn.ReLU(), nn.Conv2d(channels[0], channels[1], 3),
                                  nn.ReLU())
        self.net = nn.Sequential(nn.Linear(channels[1] * (h - 4) * (w - 4), hidden), nn.ReLU(),
                                 nn.Linear(hidden, actions))

    def forward(self, x):
        return self.net(self.conv(x).flatten(1))


def spec_of(model):
    return {n: ("float32", tuple(t.shape)) for n, t in model.state_dict().items()}


def arrays(model):
    return {n: t.detach().numpy().copy() for n, t in model.state_dict().items()}


def cnn(seed=0, **sizes):
    torch.manual_seed(seed)
    return CNN(**sizes)


def conv_and_linear(model):
    """(name, module) of every weighted layer, input first, as layer_chain orders them."""
    return [(f"{part}.{i}.weight", m) for part in ("conv", "net") for i, m in enumerate(getattr(model, part))
            if isinstance(m, (nn.Conv2d, nn.Linear))]


# ---------------------------------------------------------------------------------------------- the chain


def test_layer_chain_reads_convs_then_the_head_with_the_flatten_factor_of_the_last_conv():
    model = cnn()
    chain = layer_chain({n: s for n, (_, s) in spec_of(model).items()})
    assert chain == [Layer("conv.0.weight", "conv.0.bias", "conv"), Layer("conv.2.weight", "conv.2.bias", "conv"),
                     Layer("net.0.weight", "net.0.bias", "linear", 36), Layer("net.2.weight", "net.2.bias", "linear")]
    assert prunable_names(spec_of(model), False) == ["conv.0.weight", "conv.2.weight", "net.0.weight"]


def test_layer_chain_reads_a_channel_pruned_table_and_refuses_layers_that_do_not_chain():
    shapes = {"conv.0.weight": (5, 4, 3, 3), "conv.2.weight": (7, 5, 3, 3), "net.0.weight": (32, 7 * 36),
              "net.2.weight": (3, 32)}
    assert [layer.flatten for layer in layer_chain(shapes)] == [1, 1, 36, 1]
    with pytest.raises(ValueError, match="conv.2.weight has 6 inputs"):
        layer_chain({**shapes, "conv.2.weight": (7, 6, 3, 3)})
    with pytest.raises(ValueError, match="net.0.weight has 250 inputs, not a multiple of the 7"):
        layer_chain({**shapes, "net.0.weight": (32, 250)})
    with pytest.raises(ValueError, match="a conv weight is 4-D"):
        layer_chain({**shapes, "conv.0.weight": (5, 36)})


# ---------------------------------------------------------------------------------------------- single weights


@pytest.mark.parametrize("s", [0.3, 0.9])
def test_global_magnitude_on_a_cnn_equals_torch_global_unstructured_l1_over_conv_and_linear(s):
    model = cnn(1)
    spec, weights = spec_of(model), arrays(model)
    masks = Pruner(spec, method="magnitude").compute(weights, s)
    params = [(m, "weight") for name, m in conv_and_linear(model)[:-1]]
    total = sum(m.weight.numel() for m, _ in params)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=round(s * total))
    for name, m in conv_and_linear(model)[:-1]:
        assert masks.elements[name].shape == m.weight.shape
        np.testing.assert_array_equal(masks.elements[name], m.weight_mask.numpy().astype(bool), err_msg=name)


def test_layer_scope_on_a_cnn_equals_torch_l1_unstructured_per_layer():
    model = cnn(2)
    masks = Pruner(spec_of(model), method="magnitude", scope="layer").compute(arrays(model), 0.6)
    for name, m in conv_and_linear(model)[:-1]:
        prune.l1_unstructured(m, "weight", amount=round(0.6 * m.weight.numel()))
        np.testing.assert_array_equal(masks.elements[name], m.weight_mask.numpy().astype(bool), err_msg=name)


@pytest.mark.parametrize("method", ["taylor", "gradient"])
def test_taylor_and_gradient_prune_exactly_the_lowest_scored_conv_weights(method):
    model = cnn(3)
    spec, weights = spec_of(model), arrays(model)
    rng = np.random.default_rng(3)
    grads = {n: np.abs(rng.standard_normal(w.shape)).astype(np.float32) for n, w in weights.items()}
    masks = Pruner(spec, method=method, scope="global").compute(weights, 0.7, grads)
    names = prunable_names(spec, False)
    scores = np.concatenate([(np.abs(weights[n] * grads[n]) if method == "taylor" else grads[n]).reshape(-1)
                             for n in names])
    kept = np.concatenate([masks.elements[n].reshape(-1) for n in names])
    assert np.count_nonzero(~kept) == round(0.7 * scores.size)
    assert scores[~kept].max() <= scores[kept].min()


def test_erk_scales_a_conv_layer_by_rigls_n_in_plus_n_out_plus_kh_plus_kw_over_their_product():
    # RigL's sparse_utils.get_sparsities_erdos_renyi: raw density np.sum(shape) / np.prod(shape), any rank
    shapes = {"conv.0.weight": (16, 4, 3, 3), "conv.2.weight": (32, 16, 3, 3), "net.0.weight": (64, 32 * 36)}
    d = erk_densities(shapes, 0.9)
    raw = {n: (s[0] + s[1] + sum(s[2:])) / np.prod(s) for n, s in shapes.items()}
    eps = 0.1 * sum(np.prod(s) for s in shapes.values()) / sum(raw[n] * np.prod(s) for n, s in shapes.items())
    assert d == pytest.approx({n: eps * raw[n] for n in shapes})
    model = cnn(4, channels=(16, 32), hidden=64)
    masks = Pruner(spec_of(model), method="magnitude", scope="layer", distribution="erk").compute(arrays(model), 0.9)
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    assert masks.pruned() == round(0.9 * sum(sizes.values()))
    for n in shapes:  # each layer within one weight of its ERK share
        assert abs(int(np.count_nonzero(~masks.elements[n])) - sizes[n] * (1 - d[n])) < 1 + 1e-9, n


# ---------------------------------------------------------------------------------------------- channels


@pytest.mark.parametrize("s", [0.25, 0.5, 0.75])
def test_channel_masks_with_layer_scope_equal_torch_ln_structured_on_conv_filters_and_head_rows(s):
    model = cnn(5)
    masks = Pruner(spec_of(model), method="magnitude", structure="channel", scope="layer").compute(arrays(model), s)
    hidden = conv_and_linear(model)[:-1]
    assert sorted(masks.units) == sorted(name for name, _ in hidden)
    for name, m in hidden:
        prune.ln_structured(m, "weight", amount=round(s * m.weight.shape[0]), n=1, dim=0)
        torch_mask = m.weight_mask.numpy().astype(bool)
        kept = torch_mask.reshape(len(torch_mask), -1).all(axis=1)
        np.testing.assert_array_equal(masks.units[name], kept, err_msg=name)
        np.testing.assert_array_equal(masks.elements[name][~kept], False, err_msg=name)  # the whole filter goes


def test_neuron_structure_on_a_cnn_prunes_the_head_only_and_channel_the_filters_too():
    model = cnn(6)
    spec, weights = spec_of(model), arrays(model)
    neuron = Pruner(spec, method="magnitude", structure="neuron").compute(weights, 0.5)
    channel = Pruner(spec, method="magnitude", structure="channel").compute(weights, 0.5)
    assert list(neuron.units) == ["net.0.weight"]
    assert list(channel.units) == ["conv.0.weight", "conv.2.weight", "net.0.weight"]
    assert neuron.elements["conv.0.weight"].all() and neuron.elements["conv.2.weight"].all()


def test_removing_a_channel_removes_its_filter_bias_the_next_convs_input_and_the_heads_hw_columns():
    model = cnn(7)
    masks = Pruner(spec_of(model), method="magnitude", structure="channel", scope="layer").compute(arrays(model), 0.5)
    e, u = masks.elements, masks.units
    np.testing.assert_array_equal(e["conv.0.bias"], u["conv.0.weight"])
    np.testing.assert_array_equal(e["conv.2.weight"].any(axis=(0, 2, 3)), u["conv.0.weight"])
    columns = e["net.0.weight"].any(axis=0).reshape(CHANNELS[1], 36)  # channel-major: channel c, then h*w
    np.testing.assert_array_equal(columns.all(axis=1), u["conv.2.weight"])
    np.testing.assert_array_equal(columns.any(axis=1), u["conv.2.weight"])
    np.testing.assert_array_equal(e["net.2.weight"].any(axis=0), u["net.0.weight"])


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.3, 0.75, 0.95])
def test_channel_pruning_removes_exactly_round_s_n_and_keeps_a_channel_in_every_layer(scope, s):
    model = cnn(8)
    masks = Pruner(spec_of(model), method="magnitude", structure="channel", scope=scope).compute(arrays(model), s)
    sizes = {n: u.size for n, u in masks.units.items()}
    removed = {n: int(np.count_nonzero(~u)) for n, u in masks.units.items()}
    if scope == "global":
        assert sum(removed.values()) == min(round(s * sum(sizes.values())), sum(sizes.values()) - len(sizes))
    else:
        assert removed == {n: min(round(s * size), size - 1) for n, size in sizes.items()}
    assert all(u.any() for u in masks.units.values())


def test_global_channel_scores_are_normalised_by_their_layers_mean():
    """A conv layer whose weights are 100x larger than the head's still loses channels under one threshold."""
    model = cnn(9)
    weights = arrays(model)
    weights["conv.0.weight"] *= 100
    masks = Pruner(spec_of(model), method="magnitude", structure="channel").compute(weights, 0.5)
    assert all(0 < np.count_nonzero(~u) < u.size for u in masks.units.values())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_channel_masks_are_nested_even_when_the_second_weights_are_different(scope):
    spec = spec_of(cnn())
    pruner = Pruner(spec, method="magnitude", structure="channel", scope=scope)
    first = pruner.compute(arrays(cnn(10)), 0.4)
    second = pruner.compute(arrays(cnn(11)), 0.7, previous=first)
    for name, kept in first.units.items():
        assert not (second.units[name] & ~kept).any(), name
    for name, keep in first.elements.items():
        assert not (second.elements[name] & ~keep).any(), name


def test_channel_masks_rebuilt_from_their_elements_have_the_same_units():
    model = cnn(12)
    masks = Pruner(spec_of(model), method="magnitude", structure="channel").compute(arrays(model), 0.6)
    again = Masks.from_elements(masks.elements, "channel")
    assert list(again.units) == list(masks.units)
    for name, kept in masks.units.items():
        np.testing.assert_array_equal(again.units[name], kept)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.5, 0.75, 0.9])
def test_the_sliced_cnn_computes_what_the_masked_dense_cnn_computes(scope, s):
    model = cnn(13)
    spec, weights = spec_of(model), arrays(model)
    masks = Pruner(spec, method="magnitude", structure="channel", scope=scope).compute(weights, s)
    sliced = apply_masks(weights, masks)
    masked = {n: w * masks.elements.get(n, True) for n, w in weights.items()}
    kept = [int(masks.units[f"conv.{i}.weight"].sum()) for i in (0, 2)]
    small = CNN(channels=tuple(kept), hidden=int(masks.units["net.0.weight"].sum()))
    small.load_state_dict({n: torch.from_numpy(w) for n, w in sliced.items()})  # strict: every shape fits
    model.load_state_dict({n: torch.from_numpy(w.astype(np.float32)) for n, w in masked.items()})
    frames = torch.rand(8, *FRAME, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(frames), model(frames), rtol=0, atol=1e-6)
    assert sparsity(sliced, spec, prunable_names(spec, False)) == pytest.approx(
        sparsity(masked, spec, prunable_names(spec, False)))
    stats = masked_stats(masks, spec, prunable_names(spec, False))
    assert stats["params_kept"] == sum(w.size for w in sliced.values())


def test_a_channel_pruned_table_is_smaller_in_the_store_and_reads_back_in_its_own_shapes():
    model = cnn(14)
    weights = arrays(model)
    masks = Pruner(spec_of(model), method="magnitude", structure="channel").compute(weights, 0.75)
    sliced = apply_masks(weights, masks)
    buf = memoryview(bytearray(payload_size(weights)))
    size, _ = write_payload(buf, sliced)
    assert size < payload_size(weights) / 3
    back = read_payload(buf[:size])
    assert {n: t.shape for n, t in back.items()} == {n: t.shape for n, t in sliced.items()}
    assert back["conv.0.weight"].ndim == 4


def test_an_input_channel_whose_every_first_layer_weight_is_pruned_is_reported_cut():
    keep = np.ones((8, 4, 3, 3), bool)
    keep[:, 2] = False
    keep[:, 1, 0, 0] = False
    assert cut_inputs(Masks({"conv.0.weight": keep, "net.0.weight": np.ones((3, 5), bool)})) == [2]


def test_trainer_masks_keep_pruned_filters_and_conv_weights_zero_through_adam_steps():
    model = cnn(15)
    spec = spec_of(model)
    pruner = Pruner(spec, method="magnitude", structure="channel")
    masks = pruner.compute(arrays(model), 0.5)
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    keeping = TrainingMasks({n: params[n] for n in pruner.mask_names()}, optimizer)
    keeping.apply(masks.elements)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.rand(4, *FRAME, generator=gen)).pow(2).mean().backward()
        keeping.after_backward()
        optimizer.step()
        keeping.after_step()
    for name, keep in masks.elements.items():
        assert not params[name].detach().numpy()[~keep].any(), name


def test_a_worker_runs_the_channel_pruned_cnn_as_the_masked_dense_torch_actor_does():
    """The numpy policy a worker builds from the compressor's sliced table, against the torch actor it was cut
    from with the masks applied: the same log-probabilities on uint8 frames (1e-5, as the dense policy's)."""
    conv = ConvNet((16, 32), (3, 3), (1, 2), FRAME, 1.0)
    spec = EnvSpec("Frames-v0", int(np.prod(FRAME)), ACTIONS, True,
                   observation_space=gym.spaces.Box(0, 1, FRAME, np.uint8))
    torch.manual_seed(16)
    actor = make_actor(spec, [HIDDEN], activation="relu", conv=conv)
    weights = actor_arrays(actor)
    masks = Pruner(expected_spec(actor), method="magnitude", structure="channel").compute(weights, 0.75)
    sliced = apply_masks(weights, masks)
    assert sliced["conv.2.weight"].shape[0] < 32
    numpy_actor = NumpyActor(sliced, spec, np.random.default_rng(0), "ppo", "relu", conv)
    actor.load_state_dict({n: torch.from_numpy(w * masks.elements.get(n, True)).float() for n, w in weights.items()})
    frames = np.random.default_rng(1).integers(0, 2, (8, spec.obs_dim), dtype=np.uint8)
    actions = np.arange(8) % ACTIONS
    with torch.no_grad():
        expected = actor.log_prob(actor.distribution(torch.from_numpy(frames)), torch.from_numpy(actions)).numpy()
    np.testing.assert_allclose(numpy_actor.log_prob(frames, actions), expected, rtol=0, atol=1e-5)
