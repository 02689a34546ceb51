"""The pruning engine (hotprune.pruning.engine): oracles against torch.nn.utils.prune, criteria, exact counts,
nesting, ERK, whole-neuron removal, failures, and the statistics the compressor logs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import prune

from hotprune.pruning.criteria import CRITERIA
from hotprune.envs import EnvSpec
from hotprune.learning.policy import actor_arrays, actor_from_tensors, expected_spec, linear_weight_names, make_actor
from hotprune.pruning.engine import (
    CompressionFailed,
    Masks,
    Pruner,
    allocate,
    apply_masks,
    churn,
    erk_densities,
    lowest,
    masked_stats,
    prunable_names,
    select,
    sparsity,
)

torch.set_num_threads(1)

CARTPOLE = EnvSpec("CartPole-v1", 4, 2, True)
PENDULUM = EnvSpec("Pendulum-v1", 3, 1, False)
SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.8, 0.95]
PROPERTY = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------------------------------------- helpers


def actor_spec(env=CARTPOLE, hidden=(64, 64)):
    return expected_spec(make_actor(env, list(hidden)))


def random_weights(spec, seed, scale=1.0):
    """Continuous float32 random values for every tensor of `spec` (no ties, no exact zeros)."""
    rng = np.random.default_rng(seed)
    return {n: (scale * rng.standard_normal(shape)).astype(np.float32) for n, (_, shape) in spec.items()}


def pruned_count(mask):
    return int(np.count_nonzero(~mask))


def load(actor, weights):
    actor.load_state_dict({n: torch.from_numpy(w.copy()) for n, w in weights.items()})
    return actor


def linear_modules(actor):
    return [m for m in actor.net if isinstance(m, torch.nn.Linear)]


architectures = st.tuples(
    st.integers(1, 6),  # obs_dim
    st.lists(st.integers(1, 24), min_size=1, max_size=3),  # hidden sizes
    st.integers(1, 3),  # act_dim
)
seeds = st.integers(0, 2**32 - 1)
fractions = st.floats(0.0, 0.99, allow_nan=False)


def spec_of(arch):
    obs, hidden, act = arch
    return actor_spec(EnvSpec("Custom-v0", obs, act, True), hidden)


# ---------------------------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("prune_output_layer", [False, True])
@pytest.mark.parametrize("s", [0.1, 0.5, 0.8, 0.95])
def test_global_magnitude_masks_equal_torch_global_unstructured_l1(s, prune_output_layer):
    spec = actor_spec()
    weights = random_weights(spec, seed=11)
    pruner = Pruner(spec, method="magnitude", scope="global", prune_output_layer=prune_output_layer)
    masks = pruner.compute(weights, s)

    actor = load(make_actor(CARTPOLE, [64, 64]), weights)
    modules = linear_modules(actor) if prune_output_layer else linear_modules(actor)[:-1]
    names = prunable_names(spec, prune_output_layer)
    n = sum(weights[name].size for name in names)
    prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
                              amount=round(s * n))
    assert sorted(masks.elements) == sorted(names)
    for name, module in zip(names, modules, strict=True):
        np.testing.assert_array_equal(masks.elements[name], module.weight_mask.numpy().astype(bool), err_msg=name)


@pytest.mark.parametrize("s", [0.1, 0.5, 0.8, 0.95])
def test_layer_scope_uniform_masks_equal_torch_l1_unstructured_per_layer(s):
    spec = actor_spec()
    weights = random_weights(spec, seed=12)
    masks = Pruner(spec, method="magnitude", scope="layer", distribution="uniform",
                   prune_output_layer=True).compute(weights, s)
    actor = load(make_actor(CARTPOLE, [64, 64]), weights)
    for name, module in zip(linear_weight_names(spec), linear_modules(actor), strict=True):
        prune.l1_unstructured(module, "weight", amount=round(s * module.weight.numel()))
        np.testing.assert_array_equal(masks.elements[name], module.weight_mask.numpy().astype(bool), err_msg=name)


@pytest.mark.parametrize("hidden", [(64, 64), (32, 48, 16)])
@pytest.mark.parametrize("s", [0.2, 0.5, 0.8])
def test_neuron_structure_with_layer_scope_equals_torch_ln_structured_on_rows(s, hidden):
    spec = actor_spec(CARTPOLE, hidden)
    weights = random_weights(spec, seed=13)
    masks = Pruner(spec, method="magnitude", structure="neuron", scope="layer").compute(weights, s)
    actor = load(make_actor(CARTPOLE, list(hidden)), weights)
    hidden_names = linear_weight_names(spec)[:-1]
    assert sorted(masks.units) == sorted(hidden_names)
    for name, module in zip(hidden_names, linear_modules(actor)[:-1], strict=True):
        rows = module.weight.shape[0]
        prune.ln_structured(module, "weight", amount=round(s * rows), n=1, dim=0)
        torch_rows = module.weight_mask.numpy().astype(bool)[:, 0]
        np.testing.assert_array_equal(masks.units[name], torch_rows, err_msg=name)
        # a removed unit loses its whole row of incoming weights
        np.testing.assert_array_equal(masks.elements[name].any(axis=1), torch_rows, err_msg=name)


# ---------------------------------------------------------------------------------------------- taylor / gradient


def autograd_grads(seed=5):
    """An actor with its |dL/dw| on a fixed batch: (weights, {name: |grad|}, {name: torch grad})."""
    torch.manual_seed(seed)
    actor = make_actor(CARTPOLE, [64, 64])
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(256, 4, generator=gen)
    actions = torch.randint(0, 2, (256,), generator=gen)
    advantages = torch.randn(256, generator=gen)
    dist = actor.distribution(obs)
    loss = -(actor.log_prob(dist, actions) * advantages).mean() - 0.01 * actor.entropy(dist).mean()
    loss.backward()
    hidden = linear_weight_names(actor.state_dict())[:-1]
    params = dict(actor.named_parameters())
    torch_grads = {n: params[n].grad.detach().clone() for n in hidden}
    grads = {n: g.abs().numpy().astype(np.float32) for n, g in torch_grads.items()}
    return actor_arrays(actor), grads, torch_grads


def test_taylor_score_equals_abs_w_times_g_from_autograd():
    weights, grads, torch_grads = autograd_grads()
    taylor = CRITERIA["taylor"]
    assert taylor.needs_grads and not CRITERIA["magnitude"].needs_grads
    for name, g in grads.items():
        got = taylor.score(weights[name].astype(np.float64), g.astype(np.float64))
        want = (torch.from_numpy(weights[name]).double() * torch_grads[name].double()).abs().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=name)
        assert (got > 0).mean() > 0.9  # a real gradient, not an all-zero one


@pytest.mark.parametrize("method", ["taylor", "gradient"])
@pytest.mark.parametrize("s", [0.3, 0.7])
def test_taylor_and_gradient_masks_prune_exactly_the_lowest_scores(method, s):
    weights, grads, torch_grads = autograd_grads()
    spec = {n: (str(w.dtype), w.shape) for n, w in weights.items()}
    pruner = Pruner(spec, method=method, scope="global")
    assert pruner.grad_names == list(grads)
    masks = pruner.compute(weights, s, grads)
    names = list(grads)
    if method == "taylor":
        scores = [(torch.from_numpy(weights[n]).double() * torch_grads[n].double()).abs().numpy() for n in names]
    else:
        scores = [torch_grads[n].double().abs().numpy() for n in names]
    flat = np.concatenate([sc.reshape(-1) for sc in scores])
    k = round(s * flat.size)
    expected = np.ones(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:k]] = False
    got = np.concatenate([masks.elements[n].reshape(-1) for n in names])
    np.testing.assert_array_equal(got, expected)
    assert flat[~got].max() <= flat[got].min()


def test_gradient_criterion_needs_grads_and_magnitude_does_not():
    spec = actor_spec()
    weights = random_weights(spec, seed=1)
    assert Pruner(spec, method="magnitude").grad_names == []
    with pytest.raises(CompressionFailed, match="needs gradient statistics"):
        Pruner(spec, method="taylor").compute(weights, 0.5)
    with pytest.raises(ValueError, match="unknown criterion"):
        Pruner(spec, method="random")


# ------------------------------------------------------------------------------------- exact counts (properties)


@PROPERTY
@given(arch=architectures, seed=seeds, s=fractions, prune_output_layer=st.booleans())
def test_global_weight_pruning_prunes_exactly_round_s_n(arch, seed, s, prune_output_layer):
    spec = spec_of(arch)
    weights = random_weights(spec, seed)
    masks = Pruner(spec, method="magnitude", scope="global", prune_output_layer=prune_output_layer).compute(weights, s)
    names = prunable_names(spec, prune_output_layer)
    assert list(masks.elements) == names and masks.units is None
    n = sum(weights[name].size for name in names)
    assert masks.pruned() == round(s * n)
    for name in names:
        assert masks.elements[name].shape == weights[name].shape and masks.elements[name].dtype == bool


@PROPERTY
@given(arch=architectures, seed=seeds, s=fractions, prune_output_layer=st.booleans())
def test_uniform_layer_weight_pruning_prunes_exactly_round_s_n_per_layer(arch, seed, s, prune_output_layer):
    spec = spec_of(arch)
    weights = random_weights(spec, seed)
    masks = Pruner(spec, method="magnitude", scope="layer", prune_output_layer=prune_output_layer).compute(weights, s)
    for name in prunable_names(spec, prune_output_layer):
        assert pruned_count(masks.elements[name]) == round(s * weights[name].size), name


@PROPERTY
@given(arch=architectures, seed=seeds, s=fractions, prune_output_layer=st.booleans())
def test_erk_layer_counts_sum_exactly_to_round_s_n_and_stay_within_layer_sizes(arch, seed, s, prune_output_layer):
    spec = spec_of(arch)
    weights = random_weights(spec, seed)
    names = prunable_names(spec, prune_output_layer)
    sizes = {name: weights[name].size for name in names}
    total = round(s * sum(sizes.values()))
    counts = allocate(sizes, erk_densities({name: spec[name][1] for name in names}, s), total)
    assert sum(counts.values()) == total
    assert all(0 <= counts[name] <= sizes[name] for name in names)
    masks = Pruner(spec, method="magnitude", scope="layer", distribution="erk",
                   prune_output_layer=prune_output_layer).compute(weights, s)
    assert {name: pruned_count(masks.elements[name]) for name in names} == counts


def tie_weights(spec, seed, groups):
    """Weights drawn from {-1, 0, 1, 2}: magnitudes {0, 1, 2}, many ties. Each group of layers ranked
    together (all scored layers for global scope, each layer for layer scope) holding two or more
    weights has at least two distinct magnitudes (else the criterion rightly cannot rank it)."""
    rng = np.random.default_rng(seed)
    weights = {n: rng.choice([-1.0, 0.0, 1.0, 2.0], shape).astype(np.float32) for n, (_, shape) in spec.items()}
    for names in groups:
        if sum(weights[n].size for n in names) >= 2:
            weights[names[0]].reshape(-1)[0] = 0.0
            weights[names[-1]].reshape(-1)[-1] = 2.0
    return weights


@PROPERTY
@given(arch=architectures, seed=seeds, s=fractions, scope=st.sampled_from(["global", "layer"]))
def test_ties_give_the_same_masks_twice_and_exact_counts(arch, seed, s, scope):
    spec = spec_of(arch)
    pruner = Pruner(spec, method="magnitude", scope=scope)
    groups = [pruner.scored] if scope == "global" else [[n] for n in pruner.scored]
    weights = tie_weights(spec, seed, groups)
    first = pruner.compute(weights, s)
    second = pruner.compute({n: w.copy() for n, w in weights.items()}, s)
    for name in pruner.scored:
        np.testing.assert_array_equal(first.elements[name], second.elements[name])
    if scope == "global":
        flat = np.concatenate([np.abs(weights[n]).reshape(-1) for n in pruner.scored])
        k = round(s * flat.size)
        assert first.pruned() == k
        expected = np.ones(flat.size, bool)
        expected[np.lexsort((np.arange(flat.size), flat))[:k]] = False  # by magnitude, then position
        got = np.concatenate([first.elements[n].reshape(-1) for n in pruner.scored])
        np.testing.assert_array_equal(got, expected)
    else:
        for name in pruner.scored:
            assert pruned_count(first.elements[name]) == round(s * weights[name].size)


# ---------------------------------------------------------------------------------------------- nesting


def expected_unit_count(pruner, spec, s):
    """Units pruned at sparsity s: round(s * n) per scope, but every hidden layer keeps one unit."""
    rows = {n: spec[n][1][0] for n in pruner.scored}
    if pruner.scope == "global":
        return {"all": min(round(s * sum(rows.values())), sum(rows.values()) - len(rows))}
    return {n: min(round(s * r), r - 1) for n, r in rows.items()}


def unit_counts(masks, scope):
    counts = {n: pruned_count(u) for n, u in masks.units.items()}
    return {"all": sum(counts.values())} if scope == "global" else counts


@PROPERTY
@given(arch=architectures, seeds_=st.tuples(seeds, seeds), pair=st.tuples(fractions, fractions),
       structure=st.sampled_from(["weight", "neuron"]), scope=st.sampled_from(["global", "layer"]))
def test_masks_are_nested_even_when_the_second_weights_are_different(arch, seeds_, pair, structure, scope):
    s1, s2 = sorted(pair)
    spec = spec_of(arch)
    pruner = Pruner(spec, method="magnitude", structure=structure, scope=scope)
    first = pruner.compute(random_weights(spec, seeds_[0]), s1)
    second = pruner.compute(random_weights(spec, seeds_[1] ^ 0x5EED), s2, previous=first)
    for name, m in first.elements.items():
        assert not (second.elements[name] & ~m).any(), f"{name}: a position pruned at {s1} revived at {s2}"
    _, revived = churn(first, second)
    assert revived == 0
    if structure == "weight":
        if scope == "global":
            assert second.pruned() == round(s2 * sum(int(np.prod(spec[n][1])) for n in pruner.scored))
        else:
            for name in pruner.scored:
                assert pruned_count(second.elements[name]) == round(s2 * int(np.prod(spec[name][1])))
    else:
        for name, u in first.units.items():
            assert not (second.units[name] & ~u).any()
        assert unit_counts(second, scope) == expected_unit_count(pruner, spec, s2)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_previous_masks_from_other_weights_stay_pruned_even_where_the_new_weights_are_large(scope):
    spec = actor_spec()
    first_weights = random_weights(spec, seed=21)
    pruner = Pruner(spec, method="magnitude", scope=scope)
    first = pruner.compute(first_weights, 0.5)
    # the second weights are largest exactly where the first masks pruned
    second_weights = {n: w.copy() for n, w in first_weights.items()}
    for name, m in first.elements.items():
        second_weights[name][~m] = 100.0
    second = pruner.compute(second_weights, 0.6, previous=first)
    for name, m in first.elements.items():
        assert not (second.elements[name] & ~m).any()
    assert churn(first, second)[1] == 0


def test_with_regrow_the_second_mask_need_not_contain_the_first_but_counts_stay_exact():
    spec = actor_spec()
    first_weights = random_weights(spec, seed=22)
    pruner = Pruner(spec, method="magnitude", scope="global", regrow=True)
    first = pruner.compute(first_weights, 0.5)
    # the weights the first masks pruned grew large, and the ones they kept shrank
    second_weights = {n: w.copy() for n, w in first_weights.items()}
    for name, m in first.elements.items():
        second_weights[name] = np.where(m, 0.01 * first_weights[name], 100.0 + first_weights[name]).astype(np.float32)
    second = pruner.compute(second_weights, 0.6, previous=first)
    n = sum(int(np.prod(spec[name][1])) for name in pruner.scored)
    assert first.pruned() == round(0.5 * n) and second.pruned() == round(0.6 * n)
    # the second masks prune every weight the first kept, and the rest among the first's pruned ones
    for name, m in first.elements.items():
        assert not (second.elements[name] & m).any()
    changed, revived = churn(first, second)
    assert revived == first.pruned() - (second.pruned() - (n - first.pruned())) > 0
    assert changed == revived + (n - first.pruned())
    # the same inputs without regrow stay nested
    nested = Pruner(spec, method="magnitude", scope="global").compute(second_weights, 0.6, previous=first)
    assert churn(first, nested)[1] == 0 and nested.pruned() == round(0.6 * n)


def test_recomputing_on_masked_weights_at_the_same_sparsity_gives_the_same_masks():
    spec = actor_spec(CARTPOLE, (16, 16))
    weights = random_weights(spec, seed=7)
    for scope in ("global", "layer"):
        pruner = Pruner(spec, method="magnitude", scope=scope)
        for s in (0.3, 0.8):
            masks = pruner.compute(weights, s)
            pruned = apply_masks(weights, masks)
            again = pruner.compute(pruned, s)
            for name, m in masks.elements.items():
                np.testing.assert_array_equal(again.elements[name], m)
                assert not again.elements[name][pruned[name] == 0].any()


def test_nested_erk_masks_still_prune_exactly_round_s_n():
    """ERK layer scope with previous masks: the total stays round(s2 * n).

    Layers (6, 14), (7, 6), (33, 7) with the output layer pruned, s1 = 0.8484, s2 = 0.8497: the ERK
    allocation gives layer net.2 33 pruned weights at s1 but 32 at s2 (largest-remainder rounding is
    not monotone in s), so the nested layer keeps its 33 and the total is one over round(s2 * n)."""
    spec = actor_spec(EnvSpec("Custom-v0", 14, 33, True), (6, 7))
    weights = random_weights(spec, seed=1)
    pruner = Pruner(spec, method="magnitude", scope="layer", distribution="erk", prune_output_layer=True)
    n = sum(int(np.prod(spec[name][1])) for name in pruner.scored)
    first = pruner.compute(weights, 0.8484)
    assert first.pruned() == round(0.8484 * n) == 303
    second = pruner.compute(weights, 0.8497, previous=first)
    assert churn(first, second)[1] == 0
    per_layer = {name: pruned_count(m) for name, m in second.elements.items()}
    assert second.pruned() == round(0.8497 * n) == 303, (
        f"nested ERK pruned {second.pruned()} weights ({per_layer}), expected round(s2 * n) = 303")


# ---------------------------------------------------------------------------------------------- ERK


def test_erk_gives_the_small_input_and_output_layers_more_density_than_the_big_middle_layer():
    shapes = {"net.0.weight": (64, 4), "net.2.weight": (64, 64), "net.4.weight": (2, 64)}
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    n = sum(sizes.values())
    for s in (0.5, 0.8, 0.9):
        d = erk_densities(shapes, s)
        assert d["net.0.weight"] > d["net.2.weight"] and d["net.4.weight"] > d["net.2.weight"]
        assert all(0 <= v <= 1 for v in d.values())
        kept = sum(d[name] * sizes[name] for name in shapes)
        assert kept == pytest.approx((1 - s) * n, rel=1e-9)
        counts = allocate(sizes, d, round(s * n))
        assert sum(sizes[name] - counts[name] for name in shapes) == n - round(s * n)
        assert all(abs(counts[name] - sizes[name] * (1 - d[name])) < 1 for name in shapes)


def test_erk_caps_a_layer_whose_density_would_exceed_one_and_rescales_the_rest():
    shapes = {"net.0.weight": (2, 2), "net.2.weight": (100, 100)}
    d = erk_densities(shapes, 0.5)
    # uncapped, the tiny layer would get density 0.5 * 10004 / (4 + 200) * 1 = 24.5
    assert d["net.0.weight"] == 1.0
    assert d["net.2.weight"] == pytest.approx((0.5 * 10004 - 4) / 10000)
    assert 4 * d["net.0.weight"] + 10000 * d["net.2.weight"] == pytest.approx(0.5 * 10004)
    # through the pruner: the tiny layer stays dense (the pruner reads only the linear weights' shapes)
    spec = {n: ("float32", shape) for n, shape in shapes.items()}
    masks = Pruner(spec, method="magnitude", scope="layer", distribution="erk",
                   prune_output_layer=True).compute(random_weights(spec, seed=3), 0.5)
    assert masks.elements["net.0.weight"].all()
    assert masks.pruned() == round(0.5 * 10004)


def test_erk_layer_scope_keeps_the_right_total_on_the_cartpole_actor():
    spec = actor_spec()
    weights = random_weights(spec, seed=4)
    pruner = Pruner(spec, method="magnitude", scope="layer", distribution="erk", prune_output_layer=True)
    for s in SPARSITIES:
        masks = pruner.compute(weights, s)
        assert masks.pruned() == round(s * 4480)
        if s >= 0.5:
            density = {n: 1 - pruned_count(m) / m.size for n, m in masks.elements.items()}
            assert density["net.0.weight"] > density["net.2.weight"] < density["net.4.weight"]


# ---------------------------------------------------------------------------------------------- neuron structure


def test_neuron_global_keeps_at_least_one_unit_per_hidden_layer_at_95_percent():
    spec = actor_spec()
    weights = random_weights(spec, seed=8)
    rng = np.random.default_rng(8)
    # net.0: 64 units of about the same score; net.2: 32 near-dead units and 32 strong ones. Ranked
    # raw or over each layer's mean, every net.0 unit falls between net.2's weak and strong units, so
    # 122 of 128 would remove the whole of net.0 but for the one unit each layer keeps.
    signs = rng.choice([-1.0, 1.0], (64, 4))
    weights["net.0.weight"] = (signs * (1 + 1e-3 * rng.random((64, 4)))).astype(np.float32)
    scale = np.r_[np.full(32, 1e-3), np.full(32, 10.0)][:, None]
    weights["net.2.weight"] = (scale * rng.standard_normal((64, 64))).astype(np.float32)
    masks = Pruner(spec, method="magnitude", structure="neuron", scope="global").compute(weights, 0.95)
    assert masks.units["net.0.weight"].sum() == 1
    assert not masks.units["net.2.weight"][:32].any()
    assert masks.units["net.2.weight"].sum() == 64 - (122 - 63)
    assert sum(pruned_count(u) for u in masks.units.values()) == round(0.95 * 128) == 122
    # too few units for round(s * n): each layer still keeps one
    small = actor_spec(CARTPOLE, (4, 4))
    masks = Pruner(small, method="magnitude", structure="neuron", scope="global").compute(
        random_weights(small, seed=9), 0.95)
    assert [int(u.sum()) for u in masks.units.values()] == [1, 1]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_neuron_masks_remove_rows_bias_and_next_layer_columns(scope):
    spec = actor_spec(CARTPOLE, (16, 12))
    weights = random_weights(spec, seed=10)
    masks = Pruner(spec, method="magnitude", structure="neuron", scope=scope).compute(weights, 0.5)
    u0, u1 = masks.units["net.0.weight"], masks.units["net.2.weight"]
    assert sorted(masks.elements) == sorted(["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias",
                                             "net.4.weight"])
    np.testing.assert_array_equal(masks.elements["net.0.weight"], np.outer(u0, np.ones(4, bool)))
    np.testing.assert_array_equal(masks.elements["net.0.bias"], u0)
    np.testing.assert_array_equal(masks.elements["net.2.weight"], np.outer(u1, u0))
    np.testing.assert_array_equal(masks.elements["net.2.bias"], u1)
    np.testing.assert_array_equal(masks.elements["net.4.weight"], np.outer(np.ones(2, bool), u1))


@pytest.mark.parametrize("env", [CARTPOLE, PENDULUM], ids=["discrete", "continuous"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_shrunk_actor_computes_the_same_outputs_as_the_masked_full_actor(env, scope):
    hidden = [64, 64]
    spec = actor_spec(env, hidden)
    weights = random_weights(spec, seed=14, scale=0.5)  # biases and log std nonzero too
    masks = Pruner(spec, method="magnitude", structure="neuron", scope=scope).compute(weights, 0.6)
    small = apply_masks(weights, masks)
    full = apply_masks(weights, Masks(masks.elements))
    u0, u1 = masks.units["net.0.weight"], masks.units["net.2.weight"]
    a0, a1 = int(u0.sum()), int(u1.sum())
    assert a0 < 64 and a1 < 64
    assert small["net.0.weight"].shape == (a0, env.obs_dim) and small["net.0.bias"].shape == (a0,)
    assert small["net.2.weight"].shape == (a1, a0) and small["net.2.bias"].shape == (a1,)
    assert small["net.4.weight"].shape == (env.act_dim, a1) and small["net.4.bias"].shape == (env.act_dim,)
    np.testing.assert_array_equal(small["net.2.weight"], weights["net.2.weight"][u1][:, u0])
    np.testing.assert_array_equal(small["net.4.bias"], weights["net.4.bias"])
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in small.values())
    if not env.discrete:
        np.testing.assert_array_equal(small["log_std"], weights["log_std"])
    assert all(full[n].shape == w.shape for n, w in weights.items())

    small_actor = actor_from_tensors(small, env.discrete)
    full_actor = actor_from_tensors(full, env.discrete)
    obs = torch.from_numpy(np.random.default_rng(15).standard_normal((100, env.obs_dim)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(small_actor.net(obs), full_actor.net(obs), atol=1e-6, rtol=0)
        ds, df = small_actor.distribution(obs), full_actor.distribution(obs)
        if env.discrete:
            torch.testing.assert_close(ds.probs, df.probs, atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(ds.mean, df.mean, atol=1e-6, rtol=0)
            torch.testing.assert_close(ds.stddev, df.stddev, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- CompressionFailed


def test_nan_scores_raise_compression_failed():
    spec = actor_spec()
    weights = random_weights(spec, seed=16)
    grads = {n: np.abs(random_weights(spec, seed=17)[n]) for n in ("net.0.weight", "net.2.weight")}
    grads["net.2.weight"][3, 5] = np.nan
    with pytest.raises(CompressionFailed, match="non-finite.*net.2.weight"):
        Pruner(spec, method="taylor").compute(weights, 0.5, grads)
    weights["net.0.weight"][0, 0] = np.inf
    with pytest.raises(CompressionFailed, match="non-finite"):
        Pruner(spec, method="magnitude").compute(weights, 0.5)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("structure", ["weight", "neuron"])
def test_all_equal_candidate_scores_raise_compression_failed(scope, structure):
    spec = actor_spec()
    weights = random_weights(spec, seed=18)
    zeros = {n: np.zeros(spec[n][1], np.float32) for n in ("net.0.weight", "net.2.weight")}
    with pytest.raises(CompressionFailed, match="equal"):
        Pruner(spec, method="gradient", structure=structure, scope=scope).compute(weights, 0.5, zeros)


@pytest.mark.parametrize("structure", ["weight", "neuron"])
def test_equal_scores_do_not_raise_when_no_new_item_must_be_pruned(structure):
    spec = actor_spec()
    weights = random_weights(spec, seed=19)
    grads = {n: np.abs(random_weights(spec, seed=20)[n]) for n in ("net.0.weight", "net.2.weight")}
    pruner = Pruner(spec, method="gradient", structure=structure)
    first = pruner.compute(weights, 0.5, grads)
    zeros = {n: np.zeros_like(g) for n, g in grads.items()}
    again = pruner.compute(weights, 0.5, zeros, previous=first)  # k == already pruned
    for name, m in first.elements.items():
        np.testing.assert_array_equal(again.elements[name], m)
    lower = pruner.compute(weights, 0.3, zeros, previous=first)  # fewer than already pruned: nothing new
    assert churn(first, lower) == (0, 0)
    assert pruner.compute(weights, 0.0, zeros) is not None  # nothing to prune at all
    with pytest.raises(CompressionFailed, match="equal"):
        pruner.compute(weights, 0.6, zeros, previous=first)  # one more needed: nothing to rank by


# ---------------------------------------------------------------------------------------------- stats, churn, sparsity


def test_masked_stats_for_the_cartpole_actor_at_80_percent_global_weight_sparsity():
    spec = actor_spec()
    weights = random_weights(spec, seed=23)
    names = prunable_names(spec, False)
    masks = Pruner(spec, method="magnitude").compute(weights, 0.8)
    stats = masked_stats(masks, spec, names)
    assert stats["params_total"] == 4610
    assert stats["params_kept"] == 1128  # 4610 - round(0.8 * 4352)
    assert stats["unit_sparsity"] is None
    layers = stats["layers"]
    assert sorted(layers) == sorted(names)
    assert sum(v["total"] for v in layers.values()) == 4352
    assert sum(v["total"] - v["kept"] for v in layers.values()) == round(0.8 * 4352)
    for name, v in layers.items():
        assert v["kept"] == int(masks.elements[name].sum())
        assert v["sparsity"] == pytest.approx(1 - v["kept"] / v["total"])
    not_pruned = 4610 - 4352  # biases and the output layer
    assert stats["params_kept"] == sum(v["kept"] for v in layers.values()) + not_pruned
    dense = masked_stats(None, spec, names)
    assert dense["params_kept"] == dense["params_total"] == 4610
    assert all(v["sparsity"] == 0 for v in dense["layers"].values())


def test_masked_stats_of_neuron_masks_report_unit_sparsity_and_removed_parameters():
    spec = actor_spec()
    masks = Pruner(spec, method="magnitude", structure="neuron", scope="layer").compute(random_weights(spec, 24), 0.5)
    stats = masked_stats(masks, spec, prunable_names(spec, False))
    assert stats["unit_sparsity"] == 0.5
    # 32 + 32 units left: 32*4+32 + 32*32+32 + 2*32+2
    assert stats["params_kept"] == 160 + 1056 + 66


def test_churn_counts_changed_and_revived_positions():
    a = Masks({"x": np.array([[True, False], [False, True]]), "y": np.array([True, True, False])})
    b = Masks({"x": np.array([[True, True], [False, False]]), "y": np.array([False, True, True])})
    # x: (0,1) revived, (1,1) newly pruned; y: 0 newly pruned, 2 revived
    assert churn(a, b) == (4, 2)
    assert churn(b, a) == (4, 2)
    assert churn(a, a) == (0, 0)
    assert churn(None, b) == (b.pruned(), 0) == (3, 0)


def test_sparsity_counts_exact_zeros_over_the_named_tensors_dense_positions():
    tensors = {
        "a": np.array([0.0, 1e-30, -0.0, 2.0], np.float32),  # 2 exact zeros (-0.0 is zero), tiny is not
        "b": np.zeros((2, 3), np.float32),
        "c": np.array([0.0, 0.0], np.float32),  # not named: ignored
    }
    dense = {n: ("float32", t.shape) for n, t in tensors.items()}
    assert sparsity(tensors, dense, ["a"]) == 0.5
    assert sparsity(tensors, dense, ["a", "b"]) == 8 / 10
    assert sparsity(tensors, dense, ["c"]) == 1.0
    assert sparsity(tensors, dense, []) == 0.0


@pytest.mark.parametrize("s", [0.25, 0.6, 0.95])
def test_a_shrunk_actors_sparsity_equals_the_masked_full_shape_actors(s):
    spec = actor_spec()
    weights = random_weights(spec, seed=25)
    masks = Pruner(spec, method="magnitude", structure="neuron", scope="global").compute(weights, s)
    small = apply_masks(weights, masks)
    full = apply_masks(weights, Masks(masks.elements))
    for names in (prunable_names(spec, False), linear_weight_names(spec), list(spec)):
        got = sparsity(small, spec, names)
        assert got == pytest.approx(sparsity(full, spec, names), abs=1e-12)
        assert got > 0
    kept = int(masks.elements["net.0.weight"].sum() + masks.elements["net.2.weight"].sum())
    assert sparsity(small, spec, ["net.0.weight", "net.2.weight"]) == pytest.approx(1 - kept / 4352)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.3, 0.8])
def test_achieved_weight_sparsity_is_close_to_the_target_on_realistic_sizes(scope, s):
    spec = actor_spec()
    weights = random_weights(spec, seed=0)
    out = apply_masks(weights, Pruner(spec, method="magnitude", scope=scope).compute(weights, s))
    assert abs(sparsity(out, spec, prunable_names(spec, False)) - s) <= 1e-3


# ---------------------------------------------------------------------------------------------- magnitude ranking


def test_global_scope_uses_one_threshold_across_layers_and_layer_scope_does_not():
    """Global scope prunes the small layer entirely; layer scope prunes each layer to the target."""
    spec = actor_spec(EnvSpec("Custom-v0", 4, 2, True), (4, 4))  # net.0 (4, 4), net.2 (4, 4)
    weights = random_weights(spec, seed=26)
    weights["net.0.weight"] = np.linspace(0.01, 0.02, 16, dtype=np.float32).reshape(4, 4)
    weights["net.2.weight"] = np.linspace(1, 2, 16, dtype=np.float32).reshape(4, 4)
    g = Pruner(spec, method="magnitude", scope="global").compute(weights, 0.5)
    assert not g.elements["net.0.weight"].any() and g.elements["net.2.weight"].all()
    per_layer = Pruner(spec, method="magnitude", scope="layer").compute(weights, 0.5)
    assert pruned_count(per_layer.elements["net.0.weight"]) == pruned_count(per_layer.elements["net.2.weight"]) == 8


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("seed", range(3))
def test_lowest_magnitude_pruned_first(scope, seed):
    spec = actor_spec(CARTPOLE, (8, 16))
    weights = random_weights(spec, seed)
    pruner = Pruner(spec, method="magnitude", scope=scope, prune_output_layer=True)
    masks = pruner.compute(weights, 0.6)
    groups = [pruner.scored] if scope == "global" else [[n] for n in pruner.scored]
    for names in groups:
        kept = np.concatenate([np.abs(weights[n][masks.elements[n]]) for n in names])
        pruned = np.concatenate([np.abs(weights[n][~masks.elements[n]]) for n in names])
        assert pruned.size and kept.size
        assert kept.min() >= pruned.max()


def test_sign_does_not_matter_only_magnitude():
    spec = actor_spec(EnvSpec("Custom-v0", 5, 1, True), (1,))  # net.0.weight is (1, 5)
    weights = random_weights(spec, seed=27)
    weights["net.0.weight"] = np.array([[-5.0, 0.1, -0.2, 3.0, -0.05]], np.float32)
    mask = Pruner(spec, method="magnitude").compute(weights, 0.6).elements["net.0.weight"]
    np.testing.assert_array_equal(mask, [[True, False, False, True, False]])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_among_mixed_values_break_by_position(scope):
    spec = actor_spec(CARTPOLE, (20, 30))
    rng = np.random.default_rng(3)
    weights = {n: (rng.choice([1.0, 2.0, 3.0], shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
               for n, (_, shape) in spec.items()}
    pruner = Pruner(spec, method="magnitude", scope=scope)
    groups = [pruner.scored] if scope == "global" else [[n] for n in pruner.scored]
    for s in (0.3, 0.5, 0.8):
        masks = pruner.compute(weights, s)
        for names in groups:
            flat = np.concatenate([np.abs(weights[n]).reshape(-1) for n in names])
            k = round(s * flat.size)
            expected = np.ones(flat.size, bool)
            expected[np.lexsort((np.arange(flat.size), flat))[:k]] = False
            np.testing.assert_array_equal(np.concatenate([masks.elements[n].reshape(-1) for n in names]), expected)


def test_apply_masks_zeroes_exactly_masked_entries_keeps_dtype_and_leaves_the_input_alone():
    spec = actor_spec(PENDULUM, (6, 5))
    weights = {n: w + np.float32(10.0) for n, w in random_weights(spec, seed=1).items()}  # no zero entries
    rng = np.random.default_rng(2)
    masks = Masks({"net.0.weight": rng.random((6, 3)) < 0.5, "net.2.weight": rng.random((5, 6)) < 0.5})
    out = apply_masks(weights, masks)
    assert list(out) == list(weights)
    for name, mask in masks.elements.items():
        assert out[name].dtype == weights[name].dtype and out[name].shape == weights[name].shape
        assert (out[name][~mask] == 0).all()
        np.testing.assert_array_equal(out[name][mask], weights[name][mask])
    for name in ("net.0.bias", "net.4.weight", "log_std"):
        np.testing.assert_array_equal(out[name], weights[name])
        assert out[name].dtype == np.float32
    assert all((w != 0).all() for w in weights.values())  # the input is not modified
    unmasked = apply_masks(weights, None)
    assert list(unmasked) == list(weights) and all(unmasked[n] is w for n, w in weights.items())


def stable_sort_select(scores, k, previous, min_keep):
    """The selection as the engine first did it, by a stable argsort: the oracle for the O(n) one."""
    flat = np.concatenate([np.asarray(scores[n], np.float64) for n in scores])
    was_pruned = np.concatenate([~previous[n] for n in scores]) if previous else np.zeros(flat.size, bool)
    flat[was_pruned] = -np.inf
    cand, start = np.ones(flat.size, bool), 0
    for n in scores:
        size = scores[n].size
        if min_keep:
            cand[start + np.argsort(-flat[start : start + size], kind="stable")[:min_keep]] = False
        start += size
    cand |= was_pruned
    k = min(max(k, int(np.count_nonzero(was_pruned))), int(np.count_nonzero(cand)))
    order = np.argsort(np.where(cand, flat, np.inf), kind="stable")
    keep = np.ones(flat.size, bool)
    keep[order[:k]] = False
    return keep


@PROPERTY
@given(seeds, st.lists(st.integers(1, 300), min_size=1, max_size=4), fractions, st.sampled_from([0, 1, 3]),
       st.booleans(), st.booleans())
def test_select_equals_a_stable_argsort_on_random_and_tied_scores(seed, sizes, s, min_keep, nested, tied):
    rng = np.random.default_rng(seed)
    scores = {f"l{i}": rng.integers(0, 3, n).astype(np.float64) if tied else rng.standard_normal(n)
              for i, n in enumerate(sizes)}  # tied: 3 values, so the tie-break by position decides most items
    previous = {n: rng.random(v.size) > 0.3 for n, v in scores.items()} if nested else None
    layer_counts = {n: int(round(s * v.size)) for n, v in scores.items()}
    for scope, counts, groups in (("global", int(round(s * sum(sizes))), [list(scores)]),
                                  ("layer", layer_counts, [[n] for n in scores])):
        try:
            fast = select(scores, counts, scope, previous=previous, min_keep=min_keep)
        except CompressionFailed:
            continue  # all candidates equal: the oracle does not check that
        for names in groups:
            k = counts if scope == "global" else counts[names[0]]
            expected = stable_sort_select({n: scores[n] for n in names}, k,
                                          previous and {n: previous[n] for n in names}, min_keep)
            np.testing.assert_array_equal(np.concatenate([fast[n] for n in names]), expected)


@PROPERTY
@given(seeds, st.lists(st.integers(1, 300), min_size=1, max_size=4), fractions, st.sampled_from([0, 1, 3]),
       st.booleans(), st.booleans())
def test_select_and_lowest_on_float32_scores_equal_a_stable_argsort_with_signs_zeros_and_big_ties(
        seed, sizes, s, min_keep, nested, tied):
    # float32 takes the engine's unique-key path (value bits, then position); float64 the other
    rng = np.random.default_rng(seed)
    scores = {f"l{i}": (rng.integers(-2, 3, n) if tied else rng.standard_normal(n)).astype(np.float32)
              for i, n in enumerate(sizes)}
    for v in scores.values():
        v[rng.random(v.size) < 0.3] = -0.0  # equal to +0.0: a tie, broken by position
    previous = {n: rng.random(v.size) > 0.3 for n, v in scores.items()} if nested else None
    k = int(round(s * sum(sizes)))
    try:
        fast = select(scores, k, "global", previous=previous, min_keep=min_keep)
    except CompressionFailed:
        fast = None  # all candidates equal: the oracle does not check that
    if fast is not None:
        expected = stable_sort_select(scores, k, previous, min_keep)
        np.testing.assert_array_equal(np.concatenate([fast[n] for n in scores]), expected)
    flat = np.concatenate(list(scores.values()))
    expected = np.zeros(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:k]] = True
    np.testing.assert_array_equal(lowest(flat, k), expected)
