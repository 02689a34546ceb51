import numpy as np
import pytest

from service.config import load_config
from service.pruning import apply_masks, compute_masks, scheduled_sparsity, sparsity

SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.8, 0.95]


def random_weights(rng, shapes):
    return {f"w{i}": rng.standard_normal(shape).astype(np.float32) for i, shape in enumerate(shapes)}


def random_shapes(rng):
    return [tuple(int(d) for d in rng.integers(1, 12, size=rng.integers(1, 3))) for _ in range(rng.integers(1, 4))]


def pruned_count(masks):
    return sum(int(np.count_nonzero(~m)) for m in masks.values())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("s", SPARSITIES)
def test_global_scope_prunes_exactly_round_s_n(seed, s):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, random_shapes(rng))
    masks = compute_masks(weights, s, scope="global")
    n = sum(w.size for w in weights.values())
    assert pruned_count(masks) == round(s * n)
    for name, w in weights.items():
        assert masks[name].shape == w.shape and masks[name].dtype == bool


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("s", SPARSITIES)
def test_layer_scope_prunes_exactly_round_s_n_per_tensor(seed, s):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, random_shapes(rng))
    masks = compute_masks(weights, s, scope="layer")
    for name, w in weights.items():
        assert masks[name].shape == w.shape
        assert int(np.count_nonzero(~masks[name])) == round(s * w.size)


def test_global_scope_uses_one_threshold_across_tensors():
    """Global scope prunes the small tensor entirely; layer scope prunes each tensor to the target."""
    weights = {"small": np.full((4, 4), 0.01, np.float32), "big": np.linspace(1, 2, 16, dtype=np.float32).reshape(4, 4)}
    g = compute_masks(weights, 0.5, scope="global")
    assert not g["small"].any() and g["big"].all()
    per_layer = compute_masks(weights, 0.5, scope="layer")
    assert np.count_nonzero(~per_layer["small"]) == 8 and np.count_nonzero(~per_layer["big"]) == 8


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.3, 0.8])
def test_achieved_sparsity_close_to_target_on_realistic_sizes(scope, s):
    rng = np.random.default_rng(0)
    weights = {"net.0.weight": rng.standard_normal((64, 4)).astype(np.float32),
               "net.2.weight": rng.standard_normal((64, 64)).astype(np.float32)}
    pruned = apply_masks(weights, compute_masks(weights, s, scope=scope))
    assert abs(sparsity(pruned, list(weights)) - s) <= 1e-3


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("seed", range(3))
def test_lowest_magnitude_pruned_first(scope, seed):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, [(8, 4), (16, 8), (3,)])
    masks = compute_masks(weights, 0.6, scope=scope)
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    for names in groups:
        kept = np.concatenate([np.abs(weights[n][masks[n]]) for n in names])
        pruned = np.concatenate([np.abs(weights[n][~masks[n]]) for n in names])
        assert pruned.size and kept.size
        assert kept.min() >= pruned.max()


def test_sign_does_not_matter_only_magnitude():
    weights = {"w": np.array([-5.0, 0.1, -0.2, 3.0, -0.05], np.float32)}
    mask = compute_masks(weights, 0.6)["w"]
    np.testing.assert_array_equal(mask, [True, False, False, True, False])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_broken_by_position(scope):
    weights = {"a": np.full((30, 40), 0.5, np.float32), "b": np.full((500,), 0.5, np.float32)}
    first = compute_masks(weights, 0.4, scope=scope)
    second = compute_masks({k: v.copy() for k, v in weights.items()}, 0.4, scope=scope)
    for name in weights:
        np.testing.assert_array_equal(first[name], second[name])
    if scope == "global":
        flat = np.concatenate([first["a"].reshape(-1), first["b"].reshape(-1)])
        k = round(0.4 * 1700)
        assert not flat[:k].any() and flat[k:].all()
    else:
        for name, w in weights.items():
            flat, k = first[name].reshape(-1), round(0.4 * w.size)
            assert not flat[:k].any() and flat[k:].all()


@pytest.mark.parametrize("s", [0.3, 0.5, 0.8])
def test_ties_among_mixed_values_break_by_position(s):
    """Many repeated magnitudes: the cut falls inside a tie group, which is pruned in position order."""
    rng = np.random.default_rng(3)
    weights = {"a": (rng.choice([1.0, 2.0, 3.0], (20, 30)) * rng.choice([-1.0, 1.0], (20, 30))).astype(np.float32),
               "b": rng.choice([1.0, 2.0, 3.0], 400).astype(np.float32)}
    masks = compute_masks(weights, s)
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
    k = round(s * flat.size)
    expected = np.ones(flat.size, bool)
    expected[np.lexsort((np.arange(flat.size), flat))[:k]] = False  # by magnitude, then position
    got = np.concatenate([m.reshape(-1) for m in masks.values()])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("s", [0.3, 0.8])
def test_recompute_at_same_sparsity_keeps_zeroed_weights_pruned(scope, s):
    rng = np.random.default_rng(7)
    weights = random_weights(rng, [(16, 4), (16, 16)])
    masks = compute_masks(weights, s, scope=scope)
    pruned = apply_masks(weights, masks)
    again = compute_masks(pruned, s, scope=scope)
    for name in weights:
        np.testing.assert_array_equal(again[name], masks[name])
        assert not again[name][pruned[name] == 0].any()


def test_apply_masks_zeroes_exactly_masked_entries_and_keeps_dtype():
    rng = np.random.default_rng(1)
    weights = {
        "f32": rng.standard_normal((6, 5)).astype(np.float32) + 10.0,  # no entry is zero to begin with
        "f64": rng.standard_normal((7,)) + 10.0,
        "bias": rng.standard_normal((5,)).astype(np.float32),
    }
    masks = {"f32": rng.random((6, 5)) < 0.5, "f64": rng.random(7) < 0.5}
    out = apply_masks(weights, masks)
    for name, mask in masks.items():
        assert out[name].dtype == weights[name].dtype and out[name].shape == weights[name].shape
        assert (out[name][~mask] == 0).all()
        np.testing.assert_array_equal(out[name][mask], weights[name][mask])
    np.testing.assert_array_equal(out["bias"], weights["bias"])
    assert out["bias"].dtype == np.float32
    # the input is not modified
    assert (weights["f32"] != 0).all()


def test_sparsity_counts_exact_zeros_over_named_tensors_only():
    tensors = {
        "a": np.array([0.0, 1e-30, -0.0, 2.0], np.float32),  # 2 exact zeros (-0.0 is zero), tiny is not
        "b": np.zeros((2, 3), np.float32),
        "c": np.array([0.0, 0.0], np.float32),  # not named: ignored
    }
    assert sparsity(tensors, ["a"]) == 0.5
    assert sparsity(tensors, ["a", "b"]) == 8 / 10
    assert sparsity(tensors, ["c"]) == 1.0
    assert sparsity(tensors, []) == 0.0


def test_schedule_none_before_start_and_between_compression_points():
    kw = dict(target=0.8, start_epoch=3, every=10)
    for schedule in ("constant", "cubic"):
        extra = {"schedule": schedule, "end_epoch": 40}
        assert all(scheduled_sparsity(e, **kw, **extra) is None for e in range(0, 3))
        for e in range(3, 60):
            value = scheduled_sparsity(e, **kw, **extra)
            assert (value is None) == ((e - 3) % 10 != 0), (schedule, e)


def test_constant_schedule_returns_target():
    for e in (3, 13, 23, 1003):
        assert scheduled_sparsity(e, target=0.7, start_epoch=3, every=10) == 0.7


def test_cubic_schedule():
    kw = dict(target=0.9, start_epoch=2, every=1, schedule="cubic", initial=0.1, end_epoch=12)
    assert scheduled_sparsity(2, **kw) == pytest.approx(0.1)
    assert scheduled_sparsity(12, **kw) == pytest.approx(0.9)
    assert all(scheduled_sparsity(e, **kw) == pytest.approx(0.9) for e in range(12, 30))
    values = [scheduled_sparsity(e, **kw) for e in range(2, 30)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(0.1 - 1e-12 <= v <= 0.9 + 1e-12 for v in values)
    # midpoint against the formula: s_f + (s_i - s_f) * (1 - 5/10)^3
    assert scheduled_sparsity(7, **kw) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    # the curve prunes fast early: past half of the range after the first third
    assert scheduled_sparsity(5, **kw) > 0.5


def test_cubic_schedule_with_config_derived_end_epoch_on_a_short_run():
    """A valid config (cubic, 6 epochs, default start_epoch 3) gives pruning_end_epoch == start_epoch;
    the compressor passes that straight to scheduled_sparsity, which must not divide by zero."""
    cfg = load_config(overrides=["pruning.schedule=cubic", "epochs=6"])
    p = cfg.pruning
    for epoch in range(1, cfg.total_epochs + 1):
        value = scheduled_sparsity(epoch, target=p.target_sparsity, start_epoch=p.start_epoch, every=p.every,
                                   schedule=p.schedule, initial=p.initial_sparsity, end_epoch=cfg.pruning_end_epoch)
        if value is not None:
            assert p.initial_sparsity <= value <= p.target_sparsity
