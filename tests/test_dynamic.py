"""Dynamic sparse training (hotprune.pruning.dynamic): SET and RigL mask updates against a direct oracle.

The oracle is RigL's `_get_update_op` written plainly, a Python sort at a time: drop the floor(f * kept)
kept weights of smallest |w| (ties: the earlier position first; a first-layer input's `minimum` best kept
weights never), then grow as many of the positions not kept after the drop, highest score first (ties:
the earlier position). Both must give the same masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hotprune.config import ConfigError, load_config
from hotprune.envs import env_spec
from hotprune.learning.critic_masks import CriticMasks
from hotprune.learning.learners import make_learner
from hotprune.pruning.dynamic import DynamicPruner, drop_grow, pruner_for
from hotprune.pruning.engine import CompressionFailed, Masks, Pruner, churn, cut_inputs
from hotprune.pruning.schedule import Step, plan

torch.set_num_threads(1)

FIRST = "net.0.weight"
SPEC = {FIRST: ("float32", (12, 5)), "net.0.bias": ("float32", (12,)),
        "net.2.weight": ("float32", (12, 12)), "net.2.bias": ("float32", (12,)),
        "net.4.weight": ("float32", (2, 12)), "net.4.bias": ("float32", (2,))}
LAYERS = [FIRST, "net.2.weight"]  # the prunable weights (not the output layer)


def config(*overrides):
    return load_config(None, list(overrides))


def fixed_tensors(seed: int, ties: bool = True):
    """Weights (with `ties`: few distinct magnitudes, so position decides), keep-masks at 60% sparsity, scores."""
    rng = np.random.default_rng(seed)
    weights = {n: rng.normal(size=s).astype(np.float32) for n, (_, s) in SPEC.items()}
    if ties:
        weights = {n: np.round(w * 2) / 2 for n, w in weights.items()}
    keep = {n: rng.random(SPEC[n][1]) < 0.4 for n in LAYERS}
    scores = {n: np.round(rng.random(SPEC[n][1]) * 4) / 4 for n in LAYERS}  # ties here too
    return weights, keep, scores


def oracle(w: np.ndarray, keep: np.ndarray, score: np.ndarray, fraction: float, minimum: int = 0,
           first: bool = False) -> np.ndarray:
    """One layer's update, directly."""
    size = w.size
    flat_w, flat_keep, flat_score = np.abs(w).reshape(-1), keep.reshape(-1), score.reshape(-1)
    protected = set()
    if first and minimum:
        rows, cols = w.shape
        for j in range(cols):
            column = [i * cols + j for i in range(rows) if flat_keep[i * cols + j]]
            best = sorted(column, key=lambda p: (flat_w[p], p))  # ascending; the best are last
            protected |= set(best[-minimum:])
    kept = [p for p in range(size) if flat_keep[p]]
    n = math.floor(fraction * len(kept))
    droppable = sorted((p for p in kept if p not in protected), key=lambda p: (flat_w[p], p))
    n = min(n, len(droppable))
    dropped = set(droppable[:n])
    after = [bool(flat_keep[p]) and p not in dropped for p in range(size)]
    candidates = sorted((p for p in range(size) if not after[p]), key=lambda p: (-flat_score[p], p))
    for p in candidates[:n]:
        after[p] = True
    return np.array(after).reshape(w.shape)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("minimum", [0, 1, 2])
def test_drop_grow_gives_the_masks_of_a_direct_rigl_update(seed, fraction, minimum):
    weights, keep, scores = fixed_tensors(seed)
    new = drop_grow(weights, keep, scores, fraction, SPEC, minimum)
    for n in LAYERS:
        want = oracle(weights[n], keep[n], scores[n], fraction, minimum, first=n == FIRST)
        assert np.array_equal(new[n], want), n
        assert new[n].sum() == keep[n].sum(), f"{n}: the layer's kept count changed"


def test_an_update_drops_the_smallest_kept_weights_and_grows_the_best_scored_positions():
    w = np.array([[0.1, -2.0, 0.3, 0.0], [5.0, 0.2, -0.05, 1.0]])
    keep = np.array([[True, True, True, False], [True, True, True, False]])
    score = np.array([[0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 0.7, 0.8]])  # -0.05 (dropped) scores 0.7: grown again
    spec = {"net.0.weight": ("float32", (2, 4)), "net.2.weight": ("float32", (1, 2))}
    new = drop_grow({"x": w}, {"x": keep}, {"x": score}, 0.5, spec)["x"]  # not the first layer: no coverage
    # 6 kept -> 3 dropped: -0.05, 0.1, 0.2; grown: 0.9, 0.8, 0.7 (position 6, just dropped, comes back)
    assert new.tolist() == [[False, True, True, True], [True, False, True, True]]


def test_no_update_cuts_an_input_off_and_the_count_stays_exact():
    weights, keep, scores = fixed_tensors(3, ties=False)
    weights[FIRST][:, 2] *= 1e-3  # input 2's weights are the smallest: a plain drop would take them all
    keep[FIRST][:, 2] = False
    keep[FIRST][4, 2] = True
    scores[FIRST][:, 2] = 0.0  # and nothing grows them back
    for minimum in (0, 1):
        new = drop_grow(weights, keep, scores, 1.0, SPEC, minimum)
        assert cut_inputs(Masks(new)) == ([] if minimum else [2])
        assert all(new[n].sum() == keep[n].sum() for n in LAYERS)


def test_the_update_fraction_decays_by_rigls_cosine_and_the_masks_freeze_at_the_end():
    cfg = config("pruning.method=rigl", "pruning.start_epoch=3", "pruning.every=4", "epochs=40",
                 "pruning.drop_fraction=0.3")
    steps, warnings = plan(cfg)
    assert warnings == [] and cfg.update_end_epoch == 30  # 75% of the run
    assert steps[0] == Step(3, 0.8, 0.0)  # the first compression: magnitude to the target
    assert [s.epoch for s in steps[1:]] == [7, 11, 15, 19, 23, 27]  # none at or after T_end
    for s in steps[1:]:
        assert s.sparsity == 0.8 and s.fraction == pytest.approx(0.3 / 2 * (1 + math.cos(math.pi * s.epoch / 30)))
    assert steps[1].fraction > steps[-1].fraction > 0
    explicit = plan(config("pruning.method=set", "pruning.start_epoch=3", "pruning.every=4", "epochs=40",
                           "pruning.update_end_epoch=12"))[0]
    assert [s.epoch for s in explicit] == [3, 7, 11]
    assert config("pruning.method=set", "epochs=10").update_end_epoch == 7  # int(0.75 * 10), as RigL's end step
    frozen, warnings = plan(config("pruning.method=set", "pruning.start_epoch=3", "pruning.every=4", "epochs=40",
                                   "pruning.update_end_epoch=6"))
    assert frozen == [Step(3, 0.8)] and warnings == ["no mask update between the first compression (epoch 3) and "
                                                     "update_end_epoch 6: the masks never change (every=4)"]


@pytest.mark.parametrize("setting, rule", [
    ("pruning.structure=neuron", "pruning.structure must be weight with pruning.method=rigl"),
    ("pruning.schedule=cubic", "pruning.schedule must be constant with pruning.method=rigl"),
    ("pruning.update_end_epoch=2", "pruning.update_end_epoch must be 0 or > start_epoch"),
])
def test_what_dynamic_sparse_training_cannot_do_is_refused_in_one_line(setting, rule):
    with pytest.raises(ConfigError) as info:
        config("pruning.method=rigl", "pruning.start_epoch=3", setting)
    assert str(info.value).startswith(rule) and "\n" not in str(info.value)


def test_the_first_step_prunes_by_magnitude_and_later_steps_update_at_the_same_exact_sparsity():
    rng = np.random.default_rng(0)
    pruner = DynamicPruner(SPEC, method="rigl", seed=1, scope="layer", distribution="erk")
    weights = {n: rng.normal(size=s) for n, (_, s) in SPEC.items()}
    masks = pruner.at_step(Step(3, 0.8), weights)
    magnitude = Pruner(SPEC, method="magnitude", scope="layer", distribution="erk").compute(weights, 0.8)
    assert all(np.array_equal(masks.elements[n], magnitude.elements[n]) for n in LAYERS)
    counts = {n: int(masks.elements[n].sum()) for n in LAYERS}
    for epoch in (6, 9, 12):
        weights = {n: w + rng.normal(size=w.shape) * masks.elements.get(n, 1) for n, w in weights.items()}
        new = pruner.at_step(Step(epoch, 0.8, 0.2), weights, {n: rng.random(SPEC[n][1]) for n in LAYERS}, masks)
        changed, grown = churn(masks, new)
        assert grown > 0 and changed == 2 * grown  # as many dropped as grown
        assert {n: int(new.elements[n].sum()) for n in LAYERS} == counts
        masks = new


def test_set_grows_at_random_the_same_draw_for_the_same_seed_and_step_and_another_for_another():
    weights, keep, _ = fixed_tensors(1)
    previous = Masks(keep)

    def update(seed, epoch, stream=""):
        return DynamicPruner(SPEC, method="set", seed=seed, stream=stream).at_step(Step(epoch, 0.6, 0.3), weights,
                                                                                   None, previous).elements

    first = update(7, 10)
    assert all(np.array_equal(first[n], update(7, 10)[n]) for n in LAYERS)
    for other in (update(8, 10), update(7, 13), update(7, 10, "qf2")):
        assert any(not np.array_equal(first[n], other[n]) for n in LAYERS)
    assert all(first[n].sum() == keep[n].sum() for n in LAYERS)


def test_rigl_needs_gradient_statistics_that_rank_and_set_needs_none():
    rigl, set_ = (DynamicPruner(SPEC, method=m, seed=1) for m in ("rigl", "set"))
    assert rigl.grad_names == LAYERS and set_.grad_names == []
    weights, keep, _ = fixed_tensors(2)
    step, previous = Step(5, 0.6, 0.3), Masks(keep)
    with pytest.raises(CompressionFailed, match="needs gradient statistics"):
        rigl.at_step(step, weights, None, previous)
    with pytest.raises(CompressionFailed, match="all gradient statistics of net.0.weight are equal"):
        rigl.at_step(step, weights, {n: np.zeros(SPEC[n][1]) for n in LAYERS}, previous)
    with pytest.raises(CompressionFailed, match="non-finite"):
        rigl.at_step(step, weights, {n: np.full(SPEC[n][1], np.nan) for n in LAYERS}, previous)
    cfg = config("pruning.method=set")
    assert isinstance(pruner_for(SPEC, cfg.pruning), DynamicPruner) and cfg.pruning.regrows


def test_sac_critics_follow_a_rigl_update_with_grown_weights_at_zero_and_their_adam_state_cleared():
    cfg = config("algorithm=sac", "env_id=Pendulum-v1", "preset=none", "sac.hidden_sizes=32,32",
                 "pruning.method=rigl", "pruning.targets=actor,critic")
    learner = make_learner(cfg, env_spec("Pendulum-v1"), torch.Generator().manual_seed(1))
    critic = CriticMasks(learner.critics, learner.critic_targets, learner.critic_optimizer, cfg.pruning, cfg.seed)
    rng = np.random.default_rng(0)
    for p in learner.critic_optimizer.param_groups[0]["params"]:  # a gradient and Adam state everywhere
        p.grad = torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32))
    critic.grad_stats.after_backward()
    learner.critic_optimizer.step()
    first = critic.prune(Step(3, 0.8))
    before = critic.keep_masks()
    with torch.no_grad():  # weights move as training would; the pruned stay zero
        for p in learner.critic_optimizer.param_groups[0]["params"]:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    critic.masks.after_step()
    report = critic.prune(Step(6, 0.8, 0.3))
    after = critic.keep_masks()
    assert report["revived"] > 0 and report["newly_pruned"] == report["revived"]  # as many grown as dropped
    assert report["critic_sparsity"] >= first["critic_sparsity"] == pytest.approx(0.8, abs=1e-3)
    params = {f"{name}.{n}": p for name, c in learner.critics.items() for n, p in c.named_parameters()}
    for key, keep in after.items():
        assert keep.sum() == before[key].sum(), key
        if key.startswith(("qf1.", "qf2.")):
            grown = torch.from_numpy(keep & ~before[key])
            assert (params[key].detach()[grown] == 0).all(), key
            state = learner.critic_optimizer.state[params[key]]
            assert (state["exp_avg"][grown] == 0).all() and (state["exp_avg_sq"][grown] == 0).all(), key


def test_a_rigl_update_that_fails_for_one_critic_changes_neither_and_stays_due():
    """qf2's gradient statistics are all equal (nothing to grow by): the step fails for it, and qf1, whose
    update could be made, is left as it was too, so the step's retry updates each critic once."""
    cfg = config("algorithm=sac", "env_id=Pendulum-v1", "preset=none", "sac.hidden_sizes=32,32",
                 "pruning.method=rigl", "pruning.targets=actor,critic")
    learner = make_learner(cfg, env_spec("Pendulum-v1"), torch.Generator().manual_seed(1))
    critic = CriticMasks(learner.critics, learner.critic_targets, learner.critic_optimizer, cfg.pruning, cfg.seed)
    rng = np.random.default_rng(0)
    for p in learner.critic_optimizer.param_groups[0]["params"]:
        p.grad = torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32))
    critic.grad_stats.after_backward()
    critic.prune(Step(3, 0.8))
    before = critic.keep_masks()
    for p in learner.critics["qf2"].parameters():
        p.grad = torch.ones_like(p)  # every |g| equal
    critic.grad_stats.window.clear()
    critic.grad_stats.after_backward()
    with pytest.raises(CompressionFailed):
        critic.prune(Step(6, 0.8, 0.3))
    after = critic.keep_masks()
    assert all(np.array_equal(after[k], before[k]) for k in before)
