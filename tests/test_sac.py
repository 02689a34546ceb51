"""SAC (hotprune.learning.sac) without processes: the replay buffer, transitions from chunks, Polyak targets,
masks of actor and critics kept at exactly +0.0 through its steps, gradient statistics from replay
batches, and a checkpoint that continues exactly."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from hotprune.actor_spec import critic_shapes
from hotprune.learning import checkpoints, fast_linear
from hotprune.learning.chunks import Batch
from hotprune.config import load_config
from hotprune.learning.critic_masks import CriticMasks
from hotprune.envs import env_spec
from hotprune.learning.gradient_stats import GradientStats
from hotprune.pruning.dynamic import pruner_for
from hotprune.pruning.engine import allocate, erk_densities
from hotprune.pruning.schedule import Step
from hotprune.learning.policy import actor_arrays, expected_spec
from hotprune.learning.learners import make_learner
from hotprune.learning.sac import Learner, ReplayBuffer
from hotprune.learning.training_masks import TrainingMasks
from hotprune.roles import liveness
from hotprune.roles.trainer.shell import StillAlive

torch.set_num_threads(1)
PENDULUM = env_spec("Pendulum-v1")


def config(*extra: str):
    return load_config(overrides=["algorithm=sac", "env_id=Pendulum-v1", "preset=none", "sac.hidden_sizes=32,32",
                                  "sac.batch_size=16", "sac.learning_starts=64", "samples_per_epoch=64",
                                  "chunk_steps=16", "envs_per_worker=2", "epochs=10", *extra])


def pendulum_batch(rng: np.random.Generator, t: int = 16, n: int = 4) -> Batch:
    truncated = np.zeros((t, n), bool)
    truncated[5, 1] = True
    final_obs = np.zeros((t, n, 3), np.float32)
    final_obs[truncated] = 7.0
    return Batch(obs=rng.standard_normal((t + 1, n, 3)).astype(np.float32),
                 actions=rng.uniform(-2, 2, (t, n, 1)).astype(np.float32),
                 logprobs=np.zeros((t, n), np.float32), rewards=rng.standard_normal((t, n)).astype(np.float32),
                 terminated=np.zeros((t, n), bool), truncated=truncated, final_obs=final_obs)


def rows(values) -> dict[str, np.ndarray]:
    v = np.asarray(values, np.float32)
    return {"obs": np.stack([v, v, v], 1), "actions": v[:, None], "rewards": v, "next_obs": np.stack([v + 1] * 3, 1),
            "terminated": np.zeros_like(v)}


def test_the_replay_buffer_is_a_ring_of_the_newest_transitions():
    buffer = ReplayBuffer(5, 3, 1)
    buffer.add(rows([0, 1, 2]))
    assert len(buffer) == 3 and buffer.pos == 3
    buffer.add(rows([3, 4, 5, 6]))
    assert len(buffer) == 5 and buffer.pos == 2
    assert buffer.data["rewards"].tolist() == [5, 6, 2, 3, 4]
    buffer.add(rows(range(10, 22)))  # more than it holds: the newest 5
    assert sorted(buffer.data["rewards"].tolist()) == [17, 18, 19, 20, 21] and len(buffer) == 5


def test_replay_samples_are_whole_stored_transitions_drawn_uniformly():
    buffer = ReplayBuffer(100, 3, 1)
    buffer.add(rows(range(10)))
    data = buffer.sample(20_000, torch.Generator().manual_seed(0))
    rewards = data["rewards"].numpy()
    assert set(rewards.tolist()) == set(range(10))  # never an unwritten row
    assert np.array_equal(data["obs"][:, 0].numpy(), rewards) and np.array_equal(data["next_obs"][:, 2].numpy(),
                                                                                 rewards + 1)
    counts = np.bincount(rewards.astype(int))
    assert ((counts - 2000) ** 2 / 2000).sum() < 27.9  # chi-square, 9 degrees of freedom, 99.9%


def test_transitions_take_the_next_observation_or_a_truncated_steps_final_one():
    batch = pendulum_batch(np.random.default_rng(0))
    tr = batch.transitions()
    assert tr["obs"].shape == (64, 3) and tr["actions"].shape == (64, 1)
    row = 5 * 4 + 1  # time-major: step 5 of env 1
    assert (tr["next_obs"][row] == 7.0).all()
    np.testing.assert_array_equal(tr["next_obs"][row + 1], batch.obs[6, 2])
    np.testing.assert_array_equal(tr["obs"][row], batch.obs[5, 1])


def test_targets_move_towards_the_critics_by_tau():
    learner = make_learner(config("sac.tau=0.25"), PENDULUM, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in learner.qf1.parameters():
            p.add_(1.0)
    before = [t.detach().clone() for t in learner.qf1_target.parameters()]
    learner.update_targets()
    for old, critic, target in zip(before, learner.qf1.parameters(), learner.qf1_target.parameters()):
        torch.testing.assert_close(target.detach(), 0.75 * old + 0.25 * critic.detach())


def both_pruned(cfg, learner: Learner):
    """The trainer's arrangement: actor masks (as the compressor's would be) on the actor's optimizer,
    the critics' own masks on theirs, gradient statistics of both."""
    pruner = pruner_for(expected_spec(learner.actor), cfg.pruning)
    params = dict(learner.actor.named_parameters())
    actor_masks = TrainingMasks({n: params[n] for n in pruner.mask_names()}, learner.optimizer)
    actor_stats = GradientStats({n: params[n] for n in pruner.grad_names}, cfg.pruning.num_gradient_batches)
    critic = CriticMasks(learner.critics, learner.critic_targets, learner.critic_optimizer, cfg.pruning, cfg.seed)
    return pruner, actor_masks, actor_stats, critic


def test_pruned_weights_of_actor_and_critics_stay_exactly_positive_zero_through_sac_steps():
    # 64-wide: the hidden layers compute through oneDNN; the targets are zeroed with the masks, never re-masked
    cfg = config("pruning.method=taylor", "pruning.targets=actor,critic", "sac.hidden_sizes=64,64")
    learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(1))
    pruner, actor_masks, actor_stats, critic = both_pruned(cfg, learner)
    rng = np.random.default_rng(1)
    learner.update(pendulum_batch(rng), 1, [actor_stats, actor_masks], [critic.hooks])  # gradients to prune by
    masks = pruner.compute(actor_arrays(learner.actor), 0.8, actor_stats.mean())
    actor_masks.apply(masks.elements)
    report = critic.prune(Step(1, 0.8))
    assert report["critic_sparsity"] == pytest.approx(0.8, abs=0.01) and report["newly_pruned"] > 0
    for epoch in range(2, 5):
        losses = learner.update(pendulum_batch(rng), epoch, [actor_stats, actor_masks], [critic.hooks])
        assert losses["gradient_steps"] > 0 and losses["qf_loss"] is not None
    pruned = {"actor": (learner.actor, masks.elements)}
    for name in ("qf1", "qf2"):
        keep = {n.removeprefix(name + "."): m for n, m in critic.keep_masks().items() if n.startswith(name + ".")}
        pruned[name] = (learner.critics[name], keep)
        pruned[name + "_target"] = (learner.critic_targets[name], keep)
    for who, (module, keep) in pruned.items():
        params = dict(module.named_parameters())
        assert keep, who
        for n, k in keep.items():
            w = params[n].detach()[~torch.from_numpy(k)]
            assert (w == 0).all() and not torch.signbit(w).any(), f"{who}.{n}"
            assert (params[n].detach()[torch.from_numpy(k)] != 0).any(), f"{who}.{n} did not train"


@pytest.mark.parametrize("minimum", [0, 1])
def test_a_critic_keeps_its_action_input_by_default_and_one_pruned_blind_to_it_is_reported(minimum):
    cfg = config("pruning.method=magnitude", "pruning.targets=actor,critic", "pruning.critic_distribution=actor",
                 f"pruning.min_weights_per_input={minimum}")
    learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(3))
    *_, critic = both_pruned(cfg, learner)
    with torch.no_grad():
        learner.qf2.net[0].weight[:, PENDULUM.obs_dim] *= 1e-4  # the action's column: the lightest of qf2's
    report = critic.prune(Step(1, 0.5))
    assert report["inputs_cut"] == ({} if minimum else {"qf2": [PENDULUM.obs_dim]})
    assert critic.keep_masks()["qf2.net.0.weight"][:, PENDULUM.obs_dim].sum() == minimum
    assert learner.qf2.net[0].weight[:, PENDULUM.obs_dim].count_nonzero() == minimum


def test_sacs_critics_are_pruned_to_their_erk_shares_by_default_and_to_the_actors_scope_otherwise():
    for distribution in ("erk", "actor"):
        cfg = config("pruning.method=magnitude", "pruning.targets=actor,critic",
                     f"pruning.critic_distribution={distribution}")
        learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(3))
        *_, critic = both_pruned(cfg, learner)
        critic.prune(Step(1, 0.8))
        keep = critic.keep_masks()
        shapes = {n: tuple(p.shape) for n, p in learner.qf1.named_parameters() if n in ("net.0.weight", "net.2.weight")}
        pruned = {n: int((~keep[f"qf1.{n}"]).sum()) for n in shapes}
        sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
        erk = allocate(sizes, erk_densities(shapes, 0.8), round(0.8 * sum(sizes.values())))
        assert sum(pruned.values()) == round(0.8 * sum(sizes.values()))
        assert (pruned == erk) == (distribution == "erk"), pruned


def test_gradient_statistics_come_from_the_last_replay_batches_of_each_loss():
    cfg = config("pruning.method=gradient", "pruning.targets=actor,critic", "pruning.num_gradient_batches=4")
    learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(2))
    _, actor_masks, actor_stats, critic = both_pruned(cfg, learner)
    assert learner.update(pendulum_batch(np.random.default_rng(2)), 1, [actor_stats], [critic.hooks])["gradient_steps"]
    assert len(actor_stats.window) == 4 and len(critic.grad_stats.window) == 4
    g_actor, g_critic = actor_stats.mean(), critic.grad_stats.mean()
    assert set(g_critic) == {f"{q}.net.{i}.weight" for q in ("qf1", "qf2") for i in (0, 2)}
    assert all((g > 0).any() for g in [*g_actor.values(), *g_critic.values()])
    # the actor's statistics are of the actor loss: a critic-only step leaves them as they were
    window = list(actor_stats.window)
    learner.cfg.policy_frequency = 10**6
    learner.update(pendulum_batch(np.random.default_rng(3)), 2, [actor_stats], [critic.hooks])
    assert list(actor_stats.window) == window


def test_a_restored_sac_learner_continues_exactly_as_the_original(tmp_path):
    cfg = config(f"runs_dir={json.dumps(str(tmp_path))}", "run_id=r")
    cfg.run_dir.mkdir()
    learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(3))
    rng = np.random.default_rng(3)
    learner.update(pendulum_batch(rng), 1)
    extra, meta = learner.state()
    tensors = checkpoints.state_tensors(learner.modules(), learner.optimizers(), learner.generator) | extra
    checkpoints.save(cfg, tensors, param_groups=checkpoints.param_groups(learner.optimizers()), learner=meta)
    buffer = copy.deepcopy(learner.buffer)  # not checkpointed: handed over here to compare the steps
    batch = pendulum_batch(rng)
    expected = learner.update(batch, 2)

    other = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(99))
    loaded, meta = checkpoints.load(cfg)
    checkpoints.restore(loaded, other.modules(), other.optimizers(), other.generator, meta["param_groups"])
    other.restore(loaded, meta["learner"])
    other.buffer = buffer
    assert other.update(batch, 2) == expected
    for name, module in learner.modules().items():
        for (n, a), b in zip(module.state_dict().items(), other.modules()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{n}"
    assert torch.equal(learner.log_alpha, other.log_alpha)


# --- the update against SAC written plainly ------------------------------------------------------


def plain_update(learner: Learner, steps: int) -> dict[str, list[float]]:
    """SAC written plainly (CleanRL's loop): the actor's loss backward through both critics' weights, Adam's
    per-tensor loop, Polyak per tensor, Python floats every step. On `learner`'s modules, buffer and
    generator; its own optimizers."""
    s, actor, qf1, qf2 = learner.cfg, learner.actor, learner.qf1, learner.qf2
    q_opt = torch.optim.Adam([*qf1.parameters(), *qf2.parameters()], lr=s.q_lr, foreach=False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=s.policy_lr, foreach=False)
    a_opt = torch.optim.Adam([learner.log_alpha], lr=s.q_lr, foreach=False)
    alpha, logged = learner.log_alpha.exp().item(), {"qf_loss": [], "actor_loss": [], "alpha_loss": []}
    for step in range(1, steps + 1):
        data = learner.buffer.sample(s.batch_size, learner.generator)
        with torch.no_grad():
            next_actions, next_log_pi = actor.sample(data["next_obs"])
            q_next = torch.min(learner.qf1_target(data["next_obs"], next_actions),
                               learner.qf2_target(data["next_obs"], next_actions)) - alpha * next_log_pi
            target = data["rewards"] + (1 - data["terminated"]) * s.gamma * q_next
        qf_loss = (torch.nn.functional.mse_loss(qf1(data["obs"], data["actions"]), target)
                   + torch.nn.functional.mse_loss(qf2(data["obs"], data["actions"]), target))
        q_opt.zero_grad()
        qf_loss.backward()
        q_opt.step()
        logged["qf_loss"].append(qf_loss.item() / 2)
        if step % s.policy_frequency == 0:
            for _ in range(s.policy_frequency):
                pi, log_pi = actor.sample(data["obs"])
                actor_loss = (alpha * log_pi - torch.min(qf1(data["obs"], pi), qf2(data["obs"], pi))).mean()
                actor_opt.zero_grad()
                actor_loss.backward()
                actor_opt.step()
                with torch.no_grad():
                    _, log_pi = actor.sample(data["obs"])
                alpha_loss = (-learner.log_alpha.exp() * (log_pi + learner.target_entropy)).mean()
                a_opt.zero_grad()
                alpha_loss.backward()
                a_opt.step()
                alpha = learner.log_alpha.exp().item()
                logged["actor_loss"].append(actor_loss.item())
                logged["alpha_loss"].append(alpha_loss.item())
        with torch.no_grad():
            for critic, target in ((qf1, learner.qf1_target), (qf2, learner.qf2_target)):
                for p, t in zip(critic.parameters(), target.parameters()):
                    t.mul_(1 - s.tau).add_(p, alpha=s.tau)
    return logged


def test_the_fast_update_is_the_plain_one_losses_and_weights_within_1e_6(monkeypatch):
    """64-wide hidden layers: their products go through oneDNN (hotprune.learning.fast_linear) in the fast
    update, through F.linear in the plain one."""
    cfg = config("sac.learning_starts=0", "sac.utd=0.125",  # 64 samples: 8 critic steps, 8 actor steps
                 "sac.hidden_sizes=64,64")
    assert 64 * 64 >= fast_linear.MIN_WEIGHTS and fast_linear.ONEDNN
    fast, plain = (make_learner(cfg, PENDULUM, torch.Generator().manual_seed(5)) for _ in range(2))
    for name, module in fast.modules().items():
        plain.modules()[name].load_state_dict(module.state_dict())
    batch = pendulum_batch(np.random.default_rng(5))
    torch.manual_seed(7)
    got = fast.update(batch, 1)
    plain.buffer.add(batch.transitions())
    torch.manual_seed(7)
    monkeypatch.setattr(fast_linear, "ONEDNN", False)
    want = plain_update(plain, 8)
    assert got["gradient_steps"] == 16
    for key, values in want.items():
        assert got[key] == pytest.approx(np.mean(values), rel=1e-6, abs=1e-6), key
    for name, module in fast.modules().items():
        for n, p in module.state_dict().items():
            torch.testing.assert_close(p, plain.modules()[name].state_dict()[n], rtol=1e-6, atol=1e-6,
                                       msg=f"{name}.{n}")
    torch.testing.assert_close(fast.log_alpha, plain.log_alpha, rtol=1e-6, atol=1e-6)


def test_the_critics_keep_their_tensor_names_and_the_actors_step_makes_no_critic_weight_gradients():
    cfg = config("normalize_obs=true")
    learner = make_learner(cfg, PENDULUM, torch.Generator().manual_seed(6))
    names = {f"{m}.{n}": tuple(p.shape) for m, module in learner.modules().items() if m != "actor"
             for n, p in module.state_dict().items()}
    assert names == critic_shapes(PENDULUM, [32, 32], True, "sac")  # what checkpoints and tickets hold
    learner.buffer.add(pendulum_batch(np.random.default_rng(6)).transitions())
    obs = learner.buffer.sample(16, learner.generator)["obs"]
    learner.actor_loss(obs, 0.2).backward()
    assert all(p.grad is None for p in learner.critic_params)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.actor.parameters())
    learner.critic_loss(learner.buffer.sample(16, learner.generator), 0.2)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.critic_params)


def test_a_long_update_pings_the_supervisor_between_its_gradient_steps(monkeypatch):
    """The trainer's update hooks carry its liveness pings (hotprune.roles.trainer.shell.StillAlive): an update
    longer than supervisor.hang_timeout_s is not taken for a hang."""
    monkeypatch.setattr(liveness, "PING_S", 0.0)  # a ping due at every call
    read_end, write_end = os.pipe()
    try:
        learner = make_learner(config(), PENDULUM, torch.Generator().manual_seed(1))
        losses = learner.update(pendulum_batch(np.random.default_rng(0)), 1, [StillAlive(liveness.Pulse(write_end))])
        os.set_blocking(read_end, False)
        pings = os.read(read_end, 1 << 16)
    finally:
        os.close(read_end)
        os.close(write_end)
    actor_steps = losses["gradient_steps"] - learner.gradient_steps  # one ping before each (critic steps: the clock)
    assert actor_steps >= 2 and pings == liveness.PING * actor_steps
