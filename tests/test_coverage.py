"""No mask blinds a network (hotprune.pruning.coverage): each first-layer input keeps `minimum` weights.

The engine applies the rule when choosing (the protected weights rank last); the oracle here is the
rule as the issue states it, written plainly: prune the k lowest, give each input column short of the
minimum back its best weights, then prune as many of the lowest-scoring kept weights that have slack
(a column above the minimum, or another layer), in the same scope. Both must give the same masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from hotprune.pruning.coverage import covered
from hotprune.pruning.engine import Masks, Pruner, cut_inputs

FIRST = "net.0.weight"


def mlp_spec(n_in: int, hidden: int, n_out: int = 1) -> dict:
    return {FIRST: ("float32", (hidden, n_in)), "net.0.bias": ("float32", (hidden,)),
            "net.2.weight": ("float32", (hidden, hidden)), "net.2.bias": ("float32", (hidden,)),
            "net.4.weight": ("float32", (n_out, hidden)), "net.4.bias": ("float32", (n_out,))}


def weights_of(spec: dict, seed: int, ties: bool = False) -> dict[str, np.ndarray]:
    """Random weights; with `ties`, few distinct magnitudes, so the order on ties (position) decides."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, (_, shape) in spec.items():
        w = rng.normal(size=shape)
        out[n] = np.round(w * 2) / 2 if ties else w
    return out


def plain(scores: dict[str, np.ndarray], k: int, minimum: int, previous: dict[str, np.ndarray] | None) -> dict:
    """The rule on one scope (its layers' 2-D score arrays; FIRST among them or not), a loop at a time."""
    items = [(n, idx) for n in scores for idx in np.ndindex(scores[n].shape)]
    was_pruned = {(n, idx): previous is not None and not previous[n][idx] for n, idx in items}
    # the engine's order: pruned before first, then the score, then the position (a stable sort)
    order = sorted(range(len(items)), key=lambda i: (not was_pruned[items[i]], scores[items[i][0]][items[i][1]], i))
    k = max(k, sum(was_pruned.values()))
    pruned = {items[i] for i in order[:k]}

    def kept_in(col: int) -> list:
        return [(FIRST, (r, col)) for r in range(scores[FIRST].shape[0]) if (FIRST, (r, col)) not in pruned]

    if FIRST in scores:
        for col in range(scores[FIRST].shape[1]):
            best_first = [items[i] for i in reversed(order) if items[i][0] == FIRST and items[i][1][1] == col
                          and not was_pruned[items[i]]]
            for item in best_first[len(kept_in(col)):minimum]:  # short: its best pruned weights come back
                pruned.discard(item)
    for i in order:  # re-prune the lowest-scoring kept weights with slack until k are pruned again
        n, idx = item = items[i]
        if len(pruned) >= k:
            break
        if item not in pruned and (n != FIRST or len(kept_in(idx[1])) > minimum):
            pruned.add(item)
    return {n: np.array([[(n, (r, c)) not in pruned for c in range(s.shape[1])] for r in range(s.shape[0])])
            for n, s in scores.items()}


def plain_masks(pruner: Pruner, weights: dict, sparsity: float, minimum: int, previous: Masks | None = None) -> dict:
    """The oracle's masks of a magnitude pruner's scope: global, or each layer at its own count."""
    scores = {n: np.abs(weights[n]) for n in pruner.scored}
    before = previous.elements if previous is not None else None
    if pruner.scope == "global":
        return plain(scores, round(sparsity * sum(s.size for s in scores.values())), minimum, before)
    return {n: plain({n: s}, round(sparsity * s.size), minimum, before)[n] for n, s in scores.items()}


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("minimum", [1, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_masks_equal_the_plain_rule_exactly_k_and_nested_for_every_scope(scope, minimum, ties):
    spec = mlp_spec(n_in=5, hidden=32)  # a first layer that can hold 3 weights per input at 90%
    weights = weights_of(spec, seed=minimum, ties=ties)
    weights[FIRST][:, 4] *= 1e-3  # an input the network weighs lightly: magnitude would cut it
    pruner = Pruner(spec, method="magnitude", scope=scope, min_weights_per_input=minimum)
    previous = None
    for sparsity in (0.5, 0.8, 0.9):  # a schedule: each mask nested in the one before
        masks = pruner.compute(weights, sparsity, previous=previous)
        expected = plain_masks(pruner, weights, sparsity, minimum, previous)
        assert all(np.array_equal(masks.elements[n], expected[n]) for n in expected), (sparsity, scope)
        sizes = {n: int(np.prod(spec[n][1])) for n in pruner.scored}
        if scope == "global":
            assert masks.pruned() == round(sparsity * sum(sizes.values()))
        else:
            assert all(np.count_nonzero(~masks.elements[n]) == round(sparsity * s) for n, s in sizes.items())
        assert (masks.elements[FIRST].sum(axis=0) >= minimum).all()
        if previous is not None:
            assert not any((masks.elements[n] & ~previous.elements[n]).any() for n in sizes)  # nothing revived
        previous = masks
    assert np.array_equal(pruner.compute(weights, 0.9).elements[FIRST], pruner.compute(weights, 0.9).elements[FIRST])


def test_the_pendulum_critic_keeps_its_action_input_and_the_budget_moves_to_the_lightest_kept_weights():
    """SAC's critic on Pendulum: 3 observations and 1 action in, 256 hidden units; the action's column
    the lightest. Magnitude at 90% cuts it off; with the rule it keeps its one best weight, and the one
    weight more pruned elsewhere is the lightest weight magnitude had kept."""
    spec = mlp_spec(n_in=4, hidden=256)
    weights = weights_of(spec, seed=7)
    weights[FIRST][:, 3] *= 1e-3
    blind = Pruner(spec, method="magnitude").compute(weights, 0.9)
    assert cut_inputs(blind) == [3]
    masks = Pruner(spec, method="magnitude", min_weights_per_input=1).compute(weights, 0.9)
    assert cut_inputs(masks) == [] and masks.pruned() == blind.pruned()
    action = masks.elements[FIRST][:, 3]
    assert np.flatnonzero(action).tolist() == [int(np.argmax(np.abs(weights[FIRST][:, 3])))]
    lost = [(n, np.argwhere(blind.elements[n] & ~masks.elements[n]).tolist()) for n in masks.elements]
    lost = [(n, i) for n, idx in lost for i in idx]
    assert len(lost) == 1
    kept_by_both = np.concatenate([np.abs(weights[n])[blind.elements[n] & masks.elements[n]] for n in masks.elements])
    n, (r, c) = lost[0]
    assert abs(weights[n][r, c]) <= kept_by_both.min()


def test_a_column_an_earlier_mask_cut_is_not_revived_and_a_layer_too_small_keeps_the_protected_weights():
    spec = mlp_spec(n_in=4, hidden=4)
    weights = weights_of(spec, seed=3)
    weights[FIRST][:, 0] *= 1e-3
    cut = Pruner(spec, method="magnitude", scope="layer").compute(weights, 0.5)
    assert 0 in cut_inputs(cut)
    later = Pruner(spec, method="magnitude", scope="layer", min_weights_per_input=1).compute(weights, 0.6, previous=cut)
    assert 0 in cut_inputs(later)  # nested: only this rule could revive it, and it does not
    assert np.count_nonzero(~later.elements[FIRST]) == round(0.6 * 16)
    # 4 inputs x 3 weights = 12 of the 16 protected: a 90% layer (14 pruned) prunes the other 4 and no more
    tight = Pruner(spec, method="magnitude", scope="layer", min_weights_per_input=3).compute(weights, 0.9)
    assert tight.elements[FIRST].sum(axis=0).tolist() == [3, 3, 3, 3]


def test_neuron_structure_keeps_at_least_minimum_first_layer_units_so_each_input_that_many_weights():
    """Neuron pruning never cuts a first-layer column alone: input j keeps one weight per first-layer
    unit kept. So the rule is "the first hidden layer keeps `minimum` units"; with 1 it is the engine's
    own "every hidden layer keeps a unit" and changes nothing."""
    spec = mlp_spec(n_in=3, hidden=10)
    weights = weights_of(spec, seed=5)
    for scope in ("global", "layer"):
        base = Pruner(spec, method="magnitude", structure="neuron", scope=scope).compute(weights, 0.95)
        one = Pruner(spec, method="magnitude", structure="neuron", scope=scope,
                     min_weights_per_input=1).compute(weights, 0.95)
        assert all(np.array_equal(base.units[n], one.units[n]) for n in base.units)
        three = Pruner(spec, method="magnitude", structure="neuron", scope=scope,
                       min_weights_per_input=3).compute(weights, 0.95)
        assert three.units[FIRST].sum() == 3 and (three.elements[FIRST].sum(axis=0) == 3).all()
        unit_scores = np.abs(weights[FIRST]).mean(axis=1)
        assert set(np.flatnonzero(three.units[FIRST])) == set(np.argsort(unit_scores)[-3:])


def test_a_convolution_keeps_minimum_weights_in_each_input_channel():
    """A 4-D first layer [out, in, kh, kw]: an input unit is an input channel, weight[:, j, :, :]."""
    spec = {FIRST: ("float32", (4, 2, 3, 3)), "net.2.weight": ("float32", (1, 4))}
    rng = np.random.default_rng(1)
    scores = {FIRST: rng.random(72), "net.2.weight": rng.random(4)}
    out = covered(scores, spec, "weight", 2)
    protected = np.isinf(out[FIRST]).reshape(4, 2, 3, 3)
    assert [int(protected[:, j].sum()) for j in range(2)] == [2, 2]
    for j in range(2):
        channel = scores[FIRST].reshape(4, 2, 3, 3)[:, j]
        assert set(channel[protected[:, j]]) == set(np.sort(channel.reshape(-1))[-2:])
    assert np.array_equal(out["net.2.weight"], scores["net.2.weight"]) and not np.isinf(scores[FIRST]).any()
