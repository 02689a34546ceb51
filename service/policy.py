"""The policy (actor) the workers run and the compressor prunes, and the trainer's critic.

The actor is a tanh MLP. Its layer sizes are read back from the weights themselves
(`actor_from_tensors`), so a worker can rebuild whatever shape the weight store holds. With
observation normalisation, actor and critic share one `ObsNormalizer` whose statistics the trainer
keeps (service.normalize); they are buffers of the actor, so they travel with its weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Normal

from service.actor_spec import NORM_CLIP, NORM_EPS, OBS_NORM, linear_weight_names
from service.envs import EnvSpec


def _mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(linear.weight, out_gain if last else np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ObsNormalizer(nn.Module):
    """clip((obs - mean) / sqrt(var + eps), +-clip) with the running statistics as buffers (not
    parameters: no optimizer moves them; the trainer sets them with `set`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean) / torch.sqrt(self.var + NORM_EPS)).clamp(-NORM_CLIP, NORM_CLIP)

    @torch.no_grad()
    def set(self, mean: np.ndarray, var: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(np.array(mean, np.float32)))  # a copy: the arrays may be read-only
        self.var.copy_(torch.from_numpy(np.array(var, np.float32)))


class Actor(nn.Module):
    def __init__(self, sizes: list[int], discrete: bool, normalize_obs: bool = False):
        super().__init__()
        self.discrete = discrete
        self.obs_norm = ObsNormalizer(sizes[0]) if normalize_obs else None
        self.net = _mlp(sizes, out_gain=0.01)
        if not discrete:  # state-independent log std of a diagonal Gaussian
            self.log_std = nn.Parameter(torch.zeros(sizes[-1]))

    def distribution(self, obs: torch.Tensor) -> Distribution:
        out = self.net(self.obs_norm(obs) if self.obs_norm is not None else obs)
        if self.discrete:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp().expand_as(out))

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        logp = dist.log_prob(actions)
        return logp if self.discrete else logp.sum(-1)

    def entropy(self, dist: Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)


def make_actor(spec: EnvSpec, hidden_sizes: list[int], normalize_obs: bool = False) -> Actor:
    return Actor([spec.obs_dim, *hidden_sizes, spec.act_dim], spec.discrete, normalize_obs)


def make_critic(spec: EnvSpec, hidden_sizes: list[int], obs_norm: ObsNormalizer | None = None) -> nn.Sequential:
    """The value MLP; given the actor's `obs_norm`, it sees the observations normalised the same way."""
    mlp = _mlp([spec.obs_dim, *hidden_sizes, 1], out_gain=1.0)
    return mlp if obs_norm is None else nn.Sequential(obs_norm, *mlp)


def actor_from_tensors(tensors: dict[str, np.ndarray], discrete: bool) -> Actor:
    """Build an actor whose layer sizes are those of `tensors` and load them into it."""
    weights = linear_weight_names(tensors)
    sizes = [tensors[weights[0]].shape[1]] + [tensors[n].shape[0] for n in weights]
    actor = Actor(sizes, discrete, normalize_obs=OBS_NORM[0] in tensors)
    actor.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return actor


def actor_arrays(actor: Actor) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}


def expected_spec(actor: Actor) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of the actor's tensors: what a snapshot must carry."""
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in actor.state_dict().items()}
