import numpy as np
import pytest
import torch

from hotprune.config import PPOConfig
from hotprune.envs import EnvSpec
from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.policy import actor_arrays, actor_from_tensors, expected_spec, make_actor, make_critic
from hotprune.learning.ppo import Batch, update
from hotprune.pruning.engine import Pruner, apply_masks, prunable_names
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks
from hotprune.learning.hooks import UpdateHooks, all_finite_grads, hooked_step

torch.set_num_threads(1)

SPEC = EnvSpec("CartPole-v1", 4, 2, True)
HIDDEN = [32, 32]


def setup(seed=0):
    torch.manual_seed(seed)
    actor, critic = make_actor(SPEC, HIDDEN), make_critic(SPEC, HIDDEN)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=1e-2, eps=1e-5)
    names = prunable_names(dict(actor.named_parameters()), prune_output_layer=False)
    return actor, critic, optimizer, names


def loss_on_random_batch(actor, critic, gen):
    obs = torch.randn(64, SPEC.obs_dim, generator=gen)
    target = torch.randn(64, generator=gen)
    dist = actor.distribution(obs)
    actions = torch.randint(0, SPEC.act_dim, (64,), generator=gen)
    return -(dist.log_prob(actions) * target).mean() - 0.01 * dist.entropy().mean() + \
        (critic(obs).squeeze(-1) - target).pow(2).mean()


def warm_up(actor, critic, optimizer, gen, steps=5):
    """Plain Adam steps so that exp_avg / exp_avg_sq are non-zero everywhere."""
    for _ in range(steps):
        optimizer.zero_grad()
        loss_on_random_batch(actor, critic, gen).backward()
        optimizer.step()


def magnitude_masks(actor, names, s=0.8):
    weights = {n: p.detach().numpy().copy() for n, p in actor.named_parameters()}
    return Pruner(expected_spec(actor), method="magnitude").compute(weights, s).elements


def masked_after_warm_up(seed):
    """A warmed-up actor whose 80% magnitude masks TrainingMasks has applied."""
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(seed)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    masks = magnitude_masks(actor, names)
    tm = TrainingMasks({n: params[n] for n in names}, optimizer)
    tm.apply(masks)
    return actor, critic, optimizer, names, gen, params, masks, tm


def test_masked_weights_stay_exactly_zero_under_adam_after_warm_up():
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(1)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    assert all(optimizer.state[params[n]]["exp_avg"].abs().sum() > 0 for n in names)

    masks = magnitude_masks(actor, names)
    tm = TrainingMasks({n: params[n] for n in names}, optimizer)
    tm.apply(masks)
    before = {n: params[n].detach().clone() for n in names}
    for _ in range(50):
        optimizer.zero_grad()
        loss_on_random_batch(actor, critic, gen).backward()
        tm.after_backward()
        optimizer.step()
        tm.after_step()
        for n in names:
            pruned = params[n].detach()[~torch.from_numpy(masks[n])]
            assert (pruned == 0.0).all(), n
    for n in names:
        keep = torch.from_numpy(masks[n])
        assert keep.any() and (~keep).any()
        assert not torch.equal(params[n].detach()[keep], before[n][keep]), f"{n}: unmasked weights did not train"


def test_without_training_masks_adam_revives_masked_weights():
    """The failure mode TrainingMasks exists for: zero the weights once and mask only the gradients,
    and Adam's momentum from before the mask moves pruned weights off zero."""
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(1)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    masks = {n: torch.from_numpy(m) for n, m in magnitude_masks(actor, names).items()}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    for _ in range(50):
        optimizer.zero_grad()
        loss_on_random_batch(actor, critic, gen).backward()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].grad.mul_(m)
        optimizer.step()
    revived = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items())
    assert revived > 0


def test_apply_zeroes_weights_and_adam_state_at_masked_positions():
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(2)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    masks = magnitude_masks(actor, names, s=0.5)
    kept_state = {n: {k: optimizer.state[params[n]][k].clone() for k in ("exp_avg", "exp_avg_sq")} for n in names}
    kept_weights = {n: params[n].detach().clone() for n in names}
    TrainingMasks({n: params[n] for n in names}, optimizer).apply(masks)
    for n in names:
        keep = torch.from_numpy(masks[n])
        state = optimizer.state[params[n]]
        assert (params[n].detach()[~keep] == 0).all()
        assert torch.equal(params[n].detach()[keep], kept_weights[n][keep])
        for k in ("exp_avg", "exp_avg_sq"):
            assert (state[k][~keep] == 0).all(), (n, k)
            assert torch.equal(state[k][keep], kept_state[n][k][keep]), (n, k)
            assert (state[k][keep] != 0).any()
    # parameters without a mask (the output layer, the biases, the critic) are untouched
    out_name = [n for n in params if n.endswith("weight") and n not in names][0]
    assert (params[out_name].detach() != 0).all()


def synthetic_batch(rng, t=16, n=4):
    terminated = rng.random((t, n)) < 0.1
    truncated = (rng.random((t, n)) < 0.1) & ~terminated
    terminated[0, 0], truncated[1, 1] = True, True
    final_obs = np.zeros((t, n, 4), np.float32)
    final_obs[truncated] = rng.standard_normal((int(truncated.sum()), 4)).astype(np.float32)
    return Batch(
        obs=rng.standard_normal((t + 1, n, 4)).astype(np.float32),
        actions=rng.integers(0, 2, (t, n)).astype(np.int64),
        logprobs=np.full((t, n), np.log(0.5), np.float32) + rng.normal(0, 0.05, (t, n)).astype(np.float32),
        rewards=rng.standard_normal((t, n)).astype(np.float32),
        terminated=terminated,
        truncated=truncated,
        final_obs=final_obs,
    )


def test_ppo_update_with_hooks_keeps_masked_weights_zero_and_accumulates_unmasked_gradients():
    actor, critic, optimizer, names, gen, params, masks, tm = masked_after_warm_up(3)
    stats_hook = GradientStats({n: params[n] for n in names}, num_batches=6)
    before = {n: params[n].detach().clone() for n in names}
    cfg = PPOConfig(hidden_sizes=HIDDEN, update_epochs=2, minibatches=4)
    rng = np.random.default_rng(0)
    for _ in range(2):
        stats = update(actor, critic, optimizer, synthetic_batch(rng), cfg, gen, [stats_hook, tm])
        for n in names:
            assert (params[n].detach()[~torch.from_numpy(masks[n])] == 0).all(), n
    assert stats["skipped_steps"] == 0
    assert all(np.isfinite(v) for v in stats.values())
    assert len(stats_hook.window) == 6  # 2 updates x 8 minibatches, the last 6 kept
    grads = stats_hook.mean()
    assert set(grads) == set(names)
    for n in names:
        keep = torch.from_numpy(masks[n])
        assert grads[n].shape == tuple(params[n].shape) and grads[n].dtype == np.float32
        assert (grads[n] >= 0).all()
        # taken before masking: a pruned weight has value 0 but a gradient
        assert grads[n][~masks[n]].sum() > 0
        assert not torch.equal(params[n].detach()[keep], before[n][keep])


def test_gradient_stats_are_the_mean_of_abs_gradients_over_the_last_n_minibatches():
    w = torch.nn.Parameter(torch.zeros(3))
    stats = GradientStats({"w": w}, num_batches=2)
    assert (stats.mean()["w"] == 0).all() and len(stats.window) == 0
    for g in ([1.0, -2.0, 3.0], [-3.0, 0.0, 1.0], [5.0, 5.0, -5.0]):
        w.grad = torch.tensor(g)
        stats.after_backward()
    np.testing.assert_allclose(stats.mean()["w"], [4.0, 2.5, 3.0])  # |g| of the last two, averaged


class InjectNonFinite(UpdateHooks):
    """A hook that puts one NaN (or inf) into a kept weight's gradient at the first minibatch, as a
    numerically unlucky batch would."""

    def __init__(self, param, position, value=float("nan")):
        self.param, self.position, self.value, self.done = param, position, value, False

    def before_minibatch(self):
        if not self.done:
            self.done = True
            self.param.register_hook(self._inject)

    def _inject(self, grad):
        if self.done is True:
            self.done = "fired"
            grad = grad.clone()
            grad[self.position] = self.value
        return grad


def test_a_non_finite_gradient_skips_the_step_and_leaves_masked_weights_at_plus_zero():
    actor, critic, optimizer, names, gen, params, masks, tm = masked_after_warm_up(4)
    kept = tuple(int(i) for i in np.argwhere(masks[names[0]])[0])
    cfg = PPOConfig(hidden_sizes=HIDDEN, update_epochs=1, minibatches=4)
    stats = update(actor, critic, optimizer, synthetic_batch(np.random.default_rng(1)), cfg, gen,
                   [InjectNonFinite(params[names[0]], kept), tm])
    assert stats["skipped_steps"] == 1
    for p in [*actor.parameters(), *critic.parameters()]:
        assert torch.isfinite(p).all()
    for n in names:
        pruned = params[n].detach()[~torch.from_numpy(masks[n])]
        assert (pruned == 0).all() and not torch.signbit(pruned).any(), f"{n}: masked weights must be +0.0"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_finiteness_check_finds_one_non_finite_gradient_and_leaves_every_gradient_bit_for_bit(bad):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((4, 3), (3,), (2, 2))]
    grads = [torch.tensor([[1.0, -0.0, 3e38]] * 4), torch.tensor([-3e38, 1e-45, 0.0]), torch.full((2, 2), -2.5)]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    assert all_finite_grads(params)  # the largest floats and a denormal are finite: nothing overflows
    for p, g in zip(params, grads):
        assert torch.equal(p.grad.view(torch.int32), g.view(torch.int32))  # -0.0 and the denormal too
    params[2].grad[1, 0] = bad
    assert not all_finite_grads(params)
    assert all_finite_grads(params[:2]) and all_finite_grads([torch.nn.Parameter(torch.zeros(1))])  # no gradient


def test_masks_are_nested_a_later_mask_cannot_revive_a_pruned_weight():
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(5)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    first = magnitude_masks(actor, names, s=0.5)
    # a second mask computed on other (dense) weights: it does not cover the first
    with torch.no_grad():
        other = {n: torch.randn_like(p).numpy() for n, p in params.items()}
    second = Pruner(expected_spec(actor), method="magnitude").compute(other, 0.5).elements
    assert any((~first[n] & second[n]).any() for n in names)
    tm = TrainingMasks({n: params[n] for n in names}, optimizer)
    tm.apply(first)
    counts = tm.apply(second)
    assert counts["refused_revivals"] == sum(int((~first[n] & second[n]).sum()) for n in names)
    assert counts["revived"] == 0
    for _ in range(20):
        optimizer.zero_grad()
        loss_on_random_batch(actor, critic, gen).backward()
        tm.after_backward()
        optimizer.step()
        tm.after_step()
    for n in names:
        union = torch.from_numpy(~first[n] | ~second[n])
        assert (params[n].detach()[union] == 0).all()
    assert tm.count() == sum(int((~first[n] | ~second[n]).sum()) for n in names)


def test_with_regrowth_revived_weights_start_at_zero_with_cleared_adam_state_and_then_train():
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(6)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    first = magnitude_masks(actor, names, s=0.5)
    second = {n: ~m for n, m in first.items()}  # everything pruned comes back, everything kept goes
    tm = TrainingMasks({n: params[n] for n in names}, optimizer, regrow=True)
    tm.apply(first)
    counts = tm.apply(second)
    assert counts["revived"] == sum(int((~first[n]).sum()) for n in names) and counts["refused_revivals"] == 0
    for n in names:
        revived = torch.from_numpy(~first[n])
        assert (params[n].detach()[revived] == 0).all()
        for k in ("exp_avg", "exp_avg_sq"):
            assert (optimizer.state[params[n]][k][revived] == 0).all()
    for _ in range(5):
        optimizer.zero_grad()
        loss_on_random_batch(actor, critic, gen).backward()
        tm.after_backward()
        optimizer.step()
        tm.after_step()
    for n in names:
        revived = torch.from_numpy(~first[n])
        assert (params[n].detach()[revived] != 0).any(), "revived weights train again"
        assert (params[n].detach()[torch.from_numpy(first[n])] == 0).all()


@pytest.mark.parametrize("spec", [SPEC, EnvSpec("Pendulum-v1", 3, 1, False)], ids=["discrete", "continuous"])
def test_a_neuron_pruned_trainer_and_the_workers_small_actor_compute_the_same_function(spec):
    """Both-pruned neuron pruning: the trainer keeps full shapes with removed units masked (rows,
    biases, next-layer columns) through real PPO updates; the workers rebuild a smaller actor from
    the compressor's sliced tensors. Both give the same outputs."""
    torch.manual_seed(7)
    actor, critic = make_actor(spec, HIDDEN), make_critic(spec, HIDDEN)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=1e-2, eps=1e-5)
    pruner = Pruner(expected_spec(actor), method="magnitude", structure="neuron", scope="layer")
    masks = pruner.compute(actor_arrays(actor), 0.75)
    params = dict(actor.named_parameters())
    tm = TrainingMasks({n: params[n] for n in pruner.mask_names()}, optimizer)
    tm.apply(masks.elements)
    rng = np.random.default_rng(2)
    batch = synthetic_batch(rng)
    if not spec.discrete:
        batch.obs = batch.obs[..., :3].copy()
        batch.final_obs = batch.final_obs[..., :3].copy()
        batch.actions = rng.standard_normal((*batch.rewards.shape, 1)).astype(np.float32)
    cfg = PPOConfig(hidden_sizes=HIDDEN, update_epochs=2, minibatches=4)
    stats = update(actor, critic, optimizer, batch, cfg, torch.Generator().manual_seed(0), [tm])
    assert stats["skipped_steps"] == 0
    small = actor_from_tensors(apply_masks(actor_arrays(actor), masks), spec.discrete)
    assert small.net[0].weight.shape == (8, spec.obs_dim) and small.net[2].weight.shape == (8, 8)
    obs = torch.randn(100, spec.obs_dim)
    with torch.no_grad():
        assert torch.allclose(actor.net(obs), small.net(obs), atol=1e-6)
        if not spec.discrete:
            assert torch.equal(actor.log_std, small.log_std)


def test_masked_update_takes_masks_up_before_the_forward_pass_and_ranks_by_unmasked_gradients():
    """MaskedUpdate's order is its code: masks that arrive are in force before the minibatch's forward pass; the
    gradient statistics see the pruned weights' own gradients (with regrowth they are what may bring them back),
    and only then are those gradients zeroed; the step leaves the pruned weights exactly zero."""
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(0)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    keeping = TrainingMasks({n: params[n] for n in names}, optimizer)
    stats = GradientStats({n: params[n] for n in names}, num_batches=4)
    arrived = [{n: np.random.default_rng(1).random(params[n].shape) > 0.5 for n in names}]
    hooks = MaskedUpdate(keeping=keeping, stats=stats, take_up=lambda: arrived and keeping.apply(arrived.pop()))
    assert keeping.count() == 0

    hooks.before_minibatch()
    pruned = {n: keeping.pruned[n].clone() for n in names}
    assert all(pruned[n].any() and (params[n][pruned[n]] == 0).all() for n in names)  # in force for the forward
    assert hooked_step(loss_on_random_batch(actor, critic, gen), optimizer, [*actor.parameters()], [hooks])
    seen = stats.mean()
    for n in names:
        assert (seen[n][pruned[n].numpy()] > 0).any(), f"{n}: statistics saw masked gradients"
        assert (params[n].grad[pruned[n]] == 0).all() and (params[n][pruned[n]] == 0).all()
        assert (params[n][~pruned[n]] != 0).all()
