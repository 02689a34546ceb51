import numpy as np
import torch

from service.config import PPOConfig
from service.envs import EnvSpec
from service.policy import make_actor, make_critic, prunable_names
from service.ppo import Batch, update
from service.pruning import compute_masks
from service.training_masks import TrainingMasks

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
    weights = {n: p.detach().numpy().copy() for n, p in actor.named_parameters() if n in names}
    return compute_masks(weights, s)


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
        tm.mask_grads()
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


def test_ppo_update_keeps_masked_weights_zero_and_returns_grad_magnitudes():
    actor, critic, optimizer, names = setup()
    gen = torch.Generator().manual_seed(3)
    warm_up(actor, critic, optimizer, gen)
    params = dict(actor.named_parameters())
    masks = magnitude_masks(actor, names)
    tm = TrainingMasks({n: params[n] for n in names}, optimizer)
    tm.apply(masks)
    before = {n: params[n].detach().clone() for n in names}
    cfg = PPOConfig(hidden_sizes=HIDDEN, update_epochs=2, minibatches=4)
    rng = np.random.default_rng(0)
    for _ in range(2):
        stats, grads = update(actor, critic, optimizer, tm, synthetic_batch(rng), cfg, names, gen)
        for n in names:
            assert (params[n].detach()[~torch.from_numpy(masks[n])] == 0).all(), n
    assert all(np.isfinite(v) for v in stats.values())
    assert set(grads) == set(names)
    for n in names:
        assert isinstance(grads[n], np.ndarray)
        assert grads[n].shape == tuple(params[n].shape)
        assert (grads[n] >= 0).all() and grads[n].sum() > 0
        keep = torch.from_numpy(masks[n])
        assert not torch.equal(params[n].detach()[keep], before[n][keep])
