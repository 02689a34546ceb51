"""SAC on the workers' transitions (after CleanRL's sac_continuous_action.py).

Twin soft Q critics with target copies moved by Polyak averaging (tau), automatic entropy tuning
towards -act_dim, a squashed Gaussian actor (hotprune.learning.policy.Actor, head `squashed`), and delayed actor
updates (`policy_frequency`). Off-policy: the trainer turns each epoch's chunks into transitions for
the replay buffer here, whatever policy version acted in them, so the async lag needs no correction.

The actor's gradient steps call the update hooks (hotprune.learning.hooks) as PPO's minibatches do, so
the trainer's mask intake, gradient statistics and mask keeping work unchanged; the critics' steps
call `critic_hooks` (the trainer's own critic masks and their gradient statistics, when
`pruning.targets` has "critic"). The replay buffer lives on the learner's device, only in the trainer; it
is not checkpointed (a resumed trainer refills it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hotprune.learning.chunks import Batch
from hotprune.actor_spec import SAC_CRITICS
from hotprune.learning.device import to_device
from hotprune.config import Network, SACConfig
from hotprune.envs import EnvSpec
from hotprune.learning.policy import make_actor, mlp
from hotprune.learning.hooks import UpdateHooks, hooked_step
from hotprune.learning.learners import RunLength

TRANSITION_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")
CRITIC_STATS = ("qf_loss", "qf1_values", "qf2_values")  # an update's means over its critic steps
ACTOR_STATS = ("actor_loss", "alpha_loss")  # and over its actor steps


def _means(names: Sequence[str], sums: torch.Tensor, steps: int) -> dict[str, float | None]:
    return dict(zip(names, (sums / steps).tolist())) if steps else dict.fromkeys(names)


ADAM_IMPLEMENTATION = {"foreach": None, "fused": True}  # 3.5x foreach on CPU: docs/sac_speed.md


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam's fused kernel: one pass over each tensor per step, not a Python loop of operations over them."""
    return torch.optim.Adam(params, lr=lr, **ADAM_IMPLEMENTATION)


class ReplayBuffer:
    """A ring of the last `capacity` transitions, float32 tensors on `device`. On the cpu they are numpy's
    zeros (the OS hands pages out as rows are first written, so a buffer larger than the run costs only
    what it holds; torch.zeros would write every page at once)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | None = None):
        self.capacity = capacity
        shapes = {"obs": (capacity, obs_dim), "actions": (capacity, act_dim), "rewards": (capacity,),
                  "next_obs": (capacity, obs_dim), "terminated": (capacity,)}
        self.data = {name: to_device(np.zeros(shape, np.float32), device or torch.device("cpu"))
                     for name, shape in shapes.items()}
        self.pos = 0  # the next row written
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Transitions, a row each (Batch.transitions); the oldest are overwritten once full."""
        n = len(rows["rewards"])
        skip = max(0, n - self.capacity)  # more rows than fit: only the newest capacity of them
        index = (self.pos + torch.arange(skip, n)) % self.capacity
        for name in TRANSITION_FIELDS:
            buffer, new = self.data[name], np.ascontiguousarray(rows[name][skip:], np.float32)
            buffer[index.to(buffer.device)] = to_device(new, buffer.device)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """n transitions drawn uniformly with replacement (the trainer's checkpointed cpu generator), on the
        buffer's device."""
        index = torch.randint(self.size, (n,), generator=generator).to(self.data["obs"].device)
        return {name: self.data[name][index] for name in TRANSITION_FIELDS}


class SoftQNetwork(nn.Module):
    """Q(s, a): an MLP (`net.0`, `net.2`, ... like the actor, so the same pruning code masks it) on
    the observation and action side by side; given the actor's `obs_norm`, the observation is
    normalised as the actor's. Its layers compute through oneDNN (hotprune.learning.fast_linear)."""

    def __init__(self, spec: EnvSpec, hidden_sizes: list[int], obs_norm: nn.Module | None = None,
                 activation: str = "relu"):
        super().__init__()
        self.obs_norm = obs_norm
        self.net = mlp([spec.obs_dim + spec.act_dim, *hidden_sizes, 1], activation, fast=True)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, weight_grads: bool = True) -> torch.Tensor:
        """Q values, [n]. `weight_grads` False: gradients reach the inputs (the actor's actions) but not the
        weights (the actor's step, which does not train the critics, makes none)."""
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.net(torch.cat([obs, actions], 1), weight_grads).view(-1)


class Learner:
    """SAC's learning state (nets, targets, optimizers, entropy temperature, replay buffer) and its
    update, behind the trainer's algorithm interface (see hotprune.learning.ppo.Learner)."""

    def __init__(self, spec: EnvSpec, cfg: SACConfig, length: RunLength, generator: torch.Generator, *,
                 actor: Network, critic: Network, normalize_obs: bool = False, device: torch.device | None = None):
        s = self.cfg = cfg
        self.generator = generator
        self.hidden_sizes = actor.hidden_sizes
        self.device = device = device or torch.device("cpu")
        self.actor = make_actor(spec, actor.hidden_sizes, normalize_obs, "sac", actor.activation,
                                fast=True).to(device)  # its products through oneDNN, as the critics'
        obs_norm = self.actor.obs_norm  # shared: the trainer sets its statistics once for all nets
        q = (critic.hidden_sizes, obs_norm, critic.activation)
        self.qf1, self.qf2 = (SoftQNetwork(spec, *q).to(device) for _ in range(2))
        self.qf1_target, self.qf2_target = (SoftQNetwork(spec, *q).to(device) for _ in range(2))
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.critic_params = [*self.qf1.parameters(), *self.qf2.parameters()]
        self.target_params = [*self.qf1_target.parameters(), *self.qf2_target.parameters()]
        self.q_optimizer = adam(self.critic_params, s.q_lr)
        self.optimizer = adam(self.actor.parameters(), s.policy_lr)  # the actor's
        # Automatic entropy tuning: alpha = exp(log_alpha) is driven towards entropy -act_dim.
        self.target_entropy = -float(spec.act_dim)
        self.log_alpha = torch.zeros(1, requires_grad=True, device=device)
        self.a_optimizer = adam([self.log_alpha], s.q_lr)
        self.buffer = ReplayBuffer(s.replay_capacity(length.samples), spec.obs_dim, spec.act_dim, device)
        self.samples_seen = 0  # env steps added to the buffer (this trainer's, and its checkpoint's)
        self.gradient_steps = 0  # critic steps so far: the clock of the delayed actor and target updates
        # What the trainer's critic pruning masks and checkpoints: the critics and their targets by name.
        self.critics = dict(zip(SAC_CRITICS, (self.qf1, self.qf2)))
        self.critic_targets = dict(zip(SAC_CRITICS, (self.qf1_target, self.qf2_target)))
        self.critic_optimizer = self.q_optimizer
        self.value_networks = self.critics
        # What lottery-ticket files keep of the critics (hotprune.commands.lth): both, and their targets.
        targets = {f"{n}_target": t for n, t in self.critic_targets.items()}
        self.ticket_critic = nn.ModuleDict({**self.critics, **targets})

    @property
    def alpha(self) -> float:
        return self.log_alpha.exp().item() if self.cfg.autotune else self.cfg.alpha

    def _alpha(self) -> torch.Tensor:
        """The temperature as a tensor, for the update's loop (no .item() per step)."""
        return self.log_alpha.detach().exp() if self.cfg.autotune else torch.tensor(self.cfg.alpha, device=self.device)

    def ticket_meta(self) -> dict:
        """What a kept weights file says beyond the weights: the temperature, which the losses need."""
        return {"alpha": self.alpha}

    def critic_loss(self, data: dict[str, torch.Tensor],
                    alpha: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The twin critics' soft Bellman loss on replay rows `data`, and each critic's Q values."""
        with torch.no_grad():
            next_actions, next_log_pi = self.actor.sample(data["next_obs"])
            q_next = torch.min(self.qf1_target(data["next_obs"], next_actions),
                               self.qf2_target(data["next_obs"], next_actions)) - alpha * next_log_pi
            next_q_value = data["rewards"] + (1 - data["terminated"]) * self.cfg.gamma * q_next
        q1, q2 = self.qf1(data["obs"], data["actions"]), self.qf2(data["obs"], data["actions"])
        return F.mse_loss(q1, next_q_value) + F.mse_loss(q2, next_q_value), q1, q2

    def actor_loss(self, obs: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """The actor's loss; its gradient reaches the critics' inputs but not their weights (the critics'
        own step recomputes theirs from zero, so the actor's step need not make any)."""
        pi, log_pi = self.actor.sample(obs)
        return (alpha * log_pi - torch.min(self.qf1(obs, pi, weight_grads=False),
                                           self.qf2(obs, pi, weight_grads=False))).mean()

    def update(self, batch: Batch, epoch: int, hooks: Sequence[UpdateHooks] = (),
               critic_hooks: Sequence[UpdateHooks] = ()) -> dict[str, float | int | None]:
        """The epoch's transitions into the buffer, then round(utd * samples) gradient steps (none
        before `learning_starts` env steps). Returns the mean losses over the steps (None when none
        were taken), `gradient_steps`, `skipped_steps` and the buffer's size. The losses are summed as
        tensors and read once, at the end: no step waits on a Python float."""
        s = self.cfg
        self.buffer.add(batch.transitions())
        self.samples_seen += batch.size
        steps = round(s.utd * batch.size) if self.samples_seen >= s.learning_starts else 0
        critic_params = self.critic_params
        actor_params = list(self.actor.parameters())
        # Summed as tensors and read once at the end: no synchronisation per gradient step.
        sums = torch.zeros(len(CRITIC_STATS), device=self.device)
        actor_sums = torch.zeros(len(ACTOR_STATS), device=self.device)
        critic_steps = actor_steps = skipped = 0
        alpha = self._alpha()
        for _ in range(steps):
            data = self.buffer.sample(s.batch_size, self.generator)
            obs = data["obs"]
            for hook in critic_hooks:
                hook.before_minibatch()
            qf_loss, qf1_a_values, qf2_a_values = self.critic_loss(data, alpha)
            if not hooked_step(qf_loss, self.q_optimizer, critic_params, critic_hooks):
                skipped += 1
                continue
            self.gradient_steps += 1
            critic_steps += 1
            with torch.no_grad():  # CleanRL logs the mean of the twins' losses
                sums += torch.stack([qf_loss / 2, qf1_a_values.mean(), qf2_a_values.mean()])

            if self.gradient_steps % s.policy_frequency == 0:  # TD3's delayed update
                for _ in range(s.policy_frequency):  # as many actor steps as were delayed
                    for hook in hooks:
                        hook.before_minibatch()
                    actor_loss = self.actor_loss(obs, alpha)
                    if not hooked_step(actor_loss, self.optimizer, actor_params, hooks):
                        skipped += 1
                        continue
                    actor_steps += 1
                    alpha_loss = self.alpha_step(obs) if s.autotune else torch.zeros((), device=self.device)
                    if s.autotune:
                        alpha = self._alpha()
                    actor_sums += torch.stack([actor_loss.detach(), alpha_loss])

            if self.gradient_steps % s.target_network_frequency == 0:
                self.update_targets()
        self.q_optimizer.zero_grad()
        self.optimizer.zero_grad()
        means = _means(CRITIC_STATS, sums, critic_steps) | _means(ACTOR_STATS, actor_sums, actor_steps)
        return {**means, "alpha": self.alpha, "gradient_steps": critic_steps + actor_steps, "skipped_steps": skipped,
                "replay_size": len(self.buffer)}

    def alpha_step(self, obs: torch.Tensor) -> torch.Tensor:
        """The temperature's step, on log-probabilities of the just-updated actor; its loss."""
        with torch.no_grad():
            _, log_pi = self.actor.sample(obs)
        alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()
        return alpha_loss.detach()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak averaging: target <- tau * critic + (1 - tau) * target, every tensor of both critics in
        two foreach operations. A weight the trainer's critic masks hold at zero (and its target,
        zeroed with it) stays exactly zero."""
        tau = self.cfg.tau
        torch._foreach_mul_(self.target_params, 1 - tau)
        torch._foreach_add_(self.target_params, self.critic_params, alpha=tau)

    # --- checkpoints (hotprune.learning.checkpoints) ------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, **self.critics, **{f"{n}_target": t for n, t in self.critic_targets.items()}}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam_actor": self.optimizer, "adam_q": self.q_optimizer, "adam_alpha": self.a_optimizer}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors and metadata beyond modules and optimizers: the temperature and the step clocks.
        Not the replay buffer (up to buffer_size rows: a resumed trainer refills it)."""
        return ({"log_alpha": self.log_alpha.detach().cpu().numpy().copy()},
                {"samples_seen": self.samples_seen, "gradient_steps": self.gradient_steps})

    def restore(self, tensors: dict[str, np.ndarray], meta: dict) -> None:
        for optimizer in self.optimizers().values():  # a checkpoint's param_groups name no implementation
            for group in optimizer.param_groups:
                group.update(ADAM_IMPLEMENTATION)
        with torch.no_grad():
            self.log_alpha.copy_(torch.from_numpy(tensors["log_alpha"]))
        self.samples_seen, self.gradient_steps = meta["samples_seen"], meta["gradient_steps"]

