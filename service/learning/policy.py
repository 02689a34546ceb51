"""The policy (actor) the workers run and the compressor prunes, and the trainer's critic.

The actor is an MLP with a hidden activation (hotprune.algorithms.ACTIVATIONS; by default its
algorithm's: tanh for PPO, ReLU for SAC) and the head of its algorithm (PPO's Categorical or a Gaussian
with a `log_std` parameter; SAC's tanh-squashed Gaussian whose mean and log std are its outputs). Its
layer sizes are read back from the weights themselves (`actor_from_tensors`), so a worker can rebuild
whatever shape the weight store holds. With observation normalisation, actor and critic share one
`ObsNormalizer` whose statistics the trainer keeps (hotprune.learning.normalize); they are buffers of
the actor, so they travel with its weights.

For image observations actor and critic are CNNs (CleanRL's ppo_atari): conv layers `conv.0`, `conv.2`,
... with ReLU after each (hotprune.config.ConvNet), on the uint8 rows reshaped to (C, H, W) and divided
by the ConvNet's scale inside the network (observations travel as uint8), flattened channel-major into
the MLP (`net.*`, ReLU); orthogonal init with gain sqrt(2), as the MLP's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution, Normal

from hotprune.actor_spec import NORM_CLIP, NORM_EPS, OBS_NORM, conv_of, linear_weight_names
from hotprune.algorithms import LOG_STD_MAX, LOG_STD_MIN, actor_kind
from hotprune.config import ConvNet
from hotprune.envs import EnvSpec
from hotprune.learning.fast_linear import MLP

ACTIVATIONS = {  # hotprune.algorithms.ACTIVATIONS, as hotprune.workers.numpy_policy computes them
    "tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU,
    "gelu": lambda: nn.GELU(approximate="tanh"), "leaky_relu": nn.LeakyReLU,
}
SQUASH_EPS = 1e-6  # actions at the box's bounds are pulled this far inside to take their atanh
LOG_2 = float(np.log(2))


def mlp(sizes: list[int], activation: str = "tanh", out_gain: float | None = None,
        fast: bool = False) -> nn.Sequential:
    """Linear layers `0`, `2`, ... with `activation` between each two. With `out_gain`, CleanRL's PPO
    initialisation (orthogonal, gain sqrt(2), the last layer `out_gain`, zero biases); without,
    PyTorch's default (CleanRL's SAC). `fast`: a hotprune.learning.fast_linear.MLP (the same layers,
    computed through oneDNN)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        if out_gain is not None:
            nn.init.orthogonal_(linear.weight, out_gain if last else np.sqrt(2))
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return (MLP if fast else nn.Sequential)(*layers)


def conv_layers(conv: ConvNet) -> nn.Sequential:
    """Conv2d layers `0`, `2`, ... with ReLU after each, CleanRL's init (orthogonal, gain sqrt(2), zero biases)."""
    layers: list[nn.Module] = []
    for c_in, c_out, k, stride in zip((conv.in_shape[0], *conv.channels), conv.channels, conv.kernels, conv.strides):
        layer = nn.Conv2d(c_in, c_out, k, stride)
        nn.init.orthogonal_(layer.weight, np.sqrt(2))
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers)


def pixels(layers: nn.Sequential, conv: ConvNet, obs: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) rows of C*H*W -> float NCHW / scale -> the conv layers -> flat features, under
    the same leading axes as `obs` (the critic values [T + 1, N] observations at once)."""
    x = layers(obs.reshape(-1, *conv.in_shape).to(torch.float32) / conv.scale)
    return x.reshape(*obs.shape[:-1], -1)


def conv_features(conv: ConvNet) -> int:
    """The MLP head's inputs: the last conv layer's outputs, flattened."""
    h, w = conv.out_hw()
    return conv.channels[-1] * h * w


class ConvCritic(nn.Module):
    """PPO's value network on image observations: the actor's layout (`conv.*`, then `net.*`)."""

    def __init__(self, conv: ConvNet, hidden_sizes: list[int], activation: str = "relu"):
        super().__init__()
        self.layout, self.conv = conv, conv_layers(conv)
        self.net = mlp([conv_features(conv), *hidden_sizes, 1], activation, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(pixels(self.conv, self.layout, obs))


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
    """`sizes` are the MLP's, input to output (a squashed head's output has 2 units per action).
    `action_box` (low, high): the squashed head's action bounds; its scale and offset are buffers that
    are not part of the state dict (not weights: the env, or a policy file's metadata, gives them).
    `activation`: None, the algorithm's own. `conv`: a CNN's conv layers, before the MLP (whose first
    size is then conv_features(conv)). `fast`: the MLP computed through oneDNN (mlp)."""

    def __init__(self, sizes: list[int], discrete: bool, normalize_obs: bool = False, algorithm: str = "ppo",
                 action_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 activation: str | None = None, conv: ConvNet | None = None, fast: bool = False):
        super().__init__()
        self.kind = actor_kind(algorithm, discrete, activation)
        self.head, self.discrete = self.kind.head, discrete
        self.obs_norm = ObsNormalizer(sizes[0]) if normalize_obs else None
        self.layout = conv
        if conv is not None:
            self.conv = conv_layers(conv)
        squashed = self.head == "squashed"
        self.net = mlp(sizes, self.kind.activation, out_gain=None if squashed else 0.01, fast=fast)
        if self.head == "gaussian":  # state-independent log std of a diagonal Gaussian
            self.log_std = nn.Parameter(torch.zeros(sizes[-1]))
        if squashed:
            low, high = (torch.tensor(b, dtype=torch.float32) for b in action_box)
            self.register_buffer("action_scale", (high - low) / 2, persistent=False)
            self.register_buffer("action_bias", (high + low) / 2, persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The MLP's output: logits, the Gaussian's mean, or the squashed head's mean and log std."""
        if self.layout is not None:
            return self.net(pixels(self.conv, self.layout, obs))
        return self.net(self.obs_norm(obs) if self.obs_norm is not None else obs)

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """Categorical(logits) or the Gaussian; for the squashed head the Gaussian before tanh (a
        bijection: its KL divergences are the squashed distribution's, which distilling needs)."""
        out = self.forward(obs)
        if self.head == "categorical":
            return Categorical(logits=out)
        if self.head == "gaussian":
            return Normal(out, self.log_std.exp().expand_as(out))
        mean, log_std = out.chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)  # SpinUp / Yarats
        return Normal(mean, log_std.exp())

    def squash(self, dist: Normal, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The action tanh(x) * scale + bias and its log-probability, with the change of variables
        log(scale * (1 - tanh(x)^2)), written as SpinUp does: 2 (log 2 - x - softplus(-2x)) stays exact
        where tanh saturates (CleanRL's log(... + 1e-6) is off by up to 1e-4 there in float32)."""
        log_det = torch.log(self.action_scale) + 2 * (LOG_2 - x - F.softplus(-2 * x))
        return torch.tanh(x) * self.action_scale + self.action_bias, (dist.log_prob(x) - log_det).sum(-1)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAC: a reparameterised action sample (gradients flow through it) and its log-probability."""
        dist = self.distribution(obs)
        return self.squash(dist, dist.rsample())

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action to step an env with: sampled, or the most likely (`most_likely`)."""
        if deterministic:
            return self.most_likely(obs)
        dist = self.distribution(obs)
        x = dist.sample()
        return x if self.head != "squashed" else self.squash(dist, x)[0]

    def most_likely(self, obs: torch.Tensor) -> torch.Tensor:
        """The argmax of the logits, the Gaussian's mean, or tanh of the squashed Gaussian's mean in the
        action box, as the numpy workers compute it; plain tensor operations, no distribution object
        (with its argument checks), so that `hotprune export` can trace it into ONNX and TorchScript."""
        out = self.forward(obs)
        if self.head == "categorical":
            return out.argmax(-1)
        if self.head == "gaussian":
            return out
        return torch.tanh(out.chunk(2, dim=-1)[0]) * self.action_scale + self.action_bias

    def log_prob(self, dist: Distribution, actions: torch.Tensor) -> torch.Tensor:
        if self.head == "squashed":  # back through the squash; actions at the bounds are pulled inside
            y = ((actions - self.action_bias) / self.action_scale).clamp(-1 + SQUASH_EPS, 1 - SQUASH_EPS)
            return self.squash(dist, torch.atanh(y))[1]
        logp = dist.log_prob(actions)
        return logp if self.discrete else logp.sum(-1)

    def entropy(self, dist: Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)


class Acting(nn.Module):
    """obs -> the action an environment is stepped with (hotprune.load_policy(...).to_torch()): the
    actor's action (deterministic: the most likely one), continuous actions clipped to the action box
    as `hotprune eval` and SB3's predict clip them; what hotprune.Policy.predict computes in numpy."""

    def __init__(self, actor: Actor, deterministic: bool = True,
                 action_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
        super().__init__()
        self.actor, self.deterministic = actor, deterministic
        box = (None, None) if actor.discrete else (torch.tensor(b, dtype=torch.float32) for b in action_box)
        for name, bound in zip(("low", "high"), box):
            self.register_buffer(name, bound, persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        action = self.actor.act(obs, self.deterministic)
        return action if self.low is None else torch.clamp(action, self.low, self.high)


def make_actor(spec: EnvSpec, hidden_sizes: list[int], normalize_obs: bool = False, algorithm: str = "ppo",
               activation: str | None = None, conv: ConvNet | None = None, fast: bool = False) -> Actor:
    outputs = spec.act_dim * actor_kind(algorithm, spec.discrete).outputs_per_action
    inputs = spec.obs_dim if conv is None else conv_features(conv)
    return Actor([inputs, *hidden_sizes, outputs], spec.discrete, normalize_obs, algorithm,
                 (spec.action_low, spec.action_high), activation, conv, fast)


def make_critic(spec: EnvSpec, hidden_sizes: list[int], obs_norm: ObsNormalizer | None = None,
                activation: str = "tanh", conv: ConvNet | None = None) -> nn.Module:
    """The value MLP; given the actor's `obs_norm`, it sees the observations normalised the same way;
    given `conv`, the CNN critic (`ConvCritic`)."""
    if conv is not None:
        return ConvCritic(conv, hidden_sizes, activation)
    value = mlp([spec.obs_dim, *hidden_sizes, 1], activation, out_gain=1.0)
    return value if obs_norm is None else nn.Sequential(obs_norm, *value)


def actor_from_tensors(tensors: dict[str, np.ndarray], discrete: bool, algorithm: str = "ppo",
                       action_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                       activation: str | None = None, conv: ConvNet | None = None) -> Actor:
    """Build an actor whose layer sizes are those of `tensors` and load them into it (`action_box`:
    the env's action bounds, for a squashed head; `activation`: None, the algorithm's own; `conv`: a
    CNN's strides, input shape and scale, its channels and kernels read from `tensors`)."""
    weights = linear_weight_names(tensors)
    sizes = [tensors[weights[0]].shape[1]] + [tensors[n].shape[0] for n in weights]
    conv = conv_of(tensors, conv) if conv is not None else None
    actor = Actor(sizes, discrete, OBS_NORM[0] in tensors, algorithm, action_box, activation, conv)
    actor.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return actor


def actor_arrays(actor: Actor) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}


def expected_spec(actor: Actor) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of the actor's tensors: what a snapshot must carry."""
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in actor.state_dict().items()}
