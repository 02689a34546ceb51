"""PPO on trajectory chunks from the workers (after CleanRL's ppo.py).

The workers record the behaviour policy's log-probabilities; the ratio is taken against those, so a
chunk from a stale or pruned policy version is corrected by the clipped ratio. The critic lives only
here and values the observations the workers sent.

`Learner` is the algorithm as the trainer's shell (hotprune.roles.trainer) sees it, the same for every
algorithm (hotprune.learning.sac.Learner is the other), built from its own section of the config, the
run's length and its networks (hotprune.learning.learners.make_learner): `actor` (what the workers run
and the compressor prunes) and its `optimizer`; the critics the trainer may prune itself (`critics`,
their `critic_targets` and `critic_optimizer`; none for PPO); `value_networks` (every critic by name,
pruned or not: the summary measures their sparsity); `update(batch, epoch, hooks, critic_hooks)`
-> the losses for the `epoch` line; `modules()`, `optimizers()`, `state()` and `restore()` for
checkpoints (hotprune.learning.checkpoints); `hidden_sizes` (the actor's); `device`, where all of it
lives (hotprune.learning.device: batches are moved there, and whatever leaves is copied off); for lottery tickets
(hotprune.commands.lth), `ticket_critic` (the critic tensors the files keep, as a module) and
`ticket_meta()` (what else their losses need).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from hotprune.learning.chunks import Batch
from hotprune.config import Network, PPOConfig
from hotprune.learning.device import to_device
from hotprune.envs import EnvSpec
from hotprune.learning.policy import Actor, make_actor, make_critic
from hotprune.learning.hooks import UpdateHooks, hooked_step
from hotprune.learning.learners import RunLength


class Learner:
    """PPO's learning state: actor, critic, one Adam over both (CleanRL's), and its update."""

    def __init__(self, spec: EnvSpec, cfg: PPOConfig, length: RunLength, generator: torch.Generator, *,
                 actor: Network, critic: Network, normalize_obs: bool = False, device: torch.device | None = None):
        self.cfg, self.epochs, self.generator = cfg, length.epochs, generator
        self.hidden_sizes = actor.hidden_sizes
        self.device = device or torch.device("cpu")
        self.actor = make_actor(spec, actor.hidden_sizes, normalize_obs, "ppo", actor.activation,
                                actor.conv).to(self.device)
        self.critic = make_critic(spec, critic.hidden_sizes, self.actor.obs_norm, critic.activation,
                                  critic.conv).to(self.device)
        self.optimizer = torch.optim.Adam([*self.actor.parameters(), *self.critic.parameters()],
                                          lr=cfg.learning_rate, eps=1e-5)
        self.critics: dict[str, nn.Module] = {}  # PPO's critic is never pruned (pruning.targets)
        self.critic_targets: dict[str, nn.Module] = {}
        self.critic_optimizer = self.optimizer
        self.value_networks: dict[str, nn.Module] = {"critic": self.critic}
        self.ticket_critic = self.critic  # what lottery-ticket files keep of the critic (hotprune.commands.lth)

    def update(self, batch: Batch, epoch: int, hooks: Sequence[UpdateHooks] = (),
               critic_hooks: Sequence[UpdateHooks] = ()) -> dict[str, float | None]:
        c = self.cfg
        if c.anneal_lr:
            self.optimizer.param_groups[0]["lr"] = c.learning_rate * (1 - (epoch - 1) / self.epochs)
        return update(self.actor, self.critic, self.optimizer, batch, c, self.generator, hooks)

    def ticket_meta(self) -> dict:
        return {}

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {}, {}

    def restore(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        pass


@torch.no_grad()
def advantages(batch: Batch, critic: nn.Module, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) advantages and returns, [T, N], on the critic's device. Truncated steps bootstrap from
    their final obs."""
    device = next(critic.parameters()).device
    values = critic(to_device(batch.obs, device)).squeeze(-1)
    rewards = to_device(batch.rewards, device).clone()
    # Only a cut-off episode continues past its end: a step can be both terminated and truncated
    # (the time limit fires on the terminal step), and then there is nothing to bootstrap.
    cut = batch.truncated & ~batch.terminated
    if cut.any():
        rewards[to_device(cut, device)] += gamma * critic(to_device(batch.final_obs[cut], device)).squeeze(-1)
    not_done = 1.0 - to_device(batch.terminated | batch.truncated, device).float()
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[1], device=device)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * values[t + 1] * not_done[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values[:-1]


def update(
    actor: Actor,
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    generator: torch.Generator,
    hooks: Sequence[UpdateHooks] = (),
) -> dict[str, float | int | None]:
    """One PPO update; returns its statistics (STATS: means over the optimizer steps taken, None when
    none was) and `skipped_steps`.

    `hooks` run at each minibatch's update points (hotprune.learning.hooks): the trainer takes up masks
    before a minibatch, gradient statistics and mask keeping happen after backward and after the
    step. A minibatch whose gradients are not all finite takes no optimizer step (clipping would
    spread one NaN to every weight) and is counted in `skipped_steps`. The statistics are summed as a
    tensor and read once, at the end: no synchronisation per minibatch.
    """
    obs, actions, old_logp, adv, returns = samples(batch, critic, cfg)
    all_params = [*actor.parameters(), *critic.parameters()]
    size = batch.size
    mb_size = size // cfg.minibatches
    steps, skipped = 0, 0
    sums = torch.zeros(len(STATS), device=obs.device)
    for _ in range(cfg.update_epochs):
        order = torch.randperm(size, generator=generator).to(obs.device)  # the cpu generator's order, anywhere
        for start in range(0, size - mb_size + 1, mb_size):
            for hook in hooks:
                hook.before_minibatch()
            mb = order[start : start + mb_size]
            loss, (policy_loss, value_loss, entropy, ratio, log_ratio) = minibatch_loss(
                actor, critic, obs[mb], actions[mb], old_logp[mb], adv[mb], returns[mb], cfg)

            if not hooked_step(loss, optimizer, all_params, hooks, cfg.max_grad_norm):
                skipped += 1
                continue

            with torch.no_grad():
                steps += 1
                approx_kl = ((ratio - 1) - log_ratio).mean()  # CleanRL's (Schulman's k3 estimator)
                clip_frac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
                sums += torch.stack([policy_loss, value_loss, entropy, approx_kl, clip_frac])
    optimizer.zero_grad()
    means = dict.fromkeys(STATS) if not steps else dict(zip(STATS, (sums / steps).tolist()))
    return {**means, "explained_variance": explained_variance(adv, returns), "skipped_steps": skipped}


STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac")  # an update's means, by name


def explained_variance(adv: torch.Tensor, returns: torch.Tensor) -> float | None:
    """How much of the value targets' variance the critic's values (before the update) explain:
    1 - Var(returns - values) / Var(returns), values = returns - advantages (SB3's and CleanRL's
    `explained_variance`; 1 is perfect, 0 no better than a constant, below 0 worse). None when the
    returns do not vary."""
    var = returns.var()
    return None if var == 0 or not torch.isfinite(var) else float(1 - adv.var() / var)


def samples(batch: Batch, critic: nn.Module, cfg: PPOConfig) -> tuple[torch.Tensor, ...]:
    """The batch as flat samples on the critic's device: observations, actions, behaviour log-probs,
    advantages, returns."""
    adv, returns = advantages(batch, critic, cfg.gamma, cfg.gae_lambda)
    t, n = batch.rewards.shape
    obs = to_device(batch.obs[:-1], adv.device).reshape(t * n, -1)
    actions = to_device(batch.actions, adv.device).reshape(t * n, *batch.actions.shape[2:])
    old_logp = to_device(batch.logprobs, adv.device).reshape(-1)
    return obs, actions, old_logp, adv.reshape(-1), returns.reshape(-1)


def minibatch_loss(actor: Actor, critic: nn.Module, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
                   adv: torch.Tensor, returns: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, tuple]:
    """PPO's loss on one minibatch (advantages normalised within it), and its parts:
    (policy_loss, value_loss, entropy, ratio, log_ratio)."""
    dist = actor.distribution(obs)
    logp = actor.log_prob(dist, actions)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    mb_adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss1 = -mb_adv * ratio
    pg_loss2 = -mb_adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
    policy_loss = torch.max(pg_loss1, pg_loss2).mean()
    value_loss = 0.5 * (critic(obs).squeeze(-1) - returns).pow(2).mean()
    entropy = actor.entropy(dist).mean()
    loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
    return loss, (policy_loss, value_loss, entropy, ratio, log_ratio)
