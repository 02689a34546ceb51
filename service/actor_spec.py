"""The actor's (and the critic's) tensor names and shapes, without torch.

`hotprune.learning.policy.Actor` is an MLP whose linear layers are `net.0`, `net.2`, ... (its algorithm's
activation between each two, hotprune.algorithms); a Gaussian head (PPO, continuous) adds `log_std`,
a squashed one (SAC) has 2 * act_dim outputs (mean, log std) instead; with observation normalisation
(`normalize_obs`) it starts with `obs_norm.mean` and `obs_norm.var` (obs_dim each), the running
statistics the trainer keeps (hotprune.learning.normalize): the MLP's input is clip((obs - mean) / sqrt(var +
NORM_EPS), +-NORM_CLIP).

A CNN actor (image observations, hotprune.config.ConvNet) starts with its conv layers `conv.0`,
`conv.2`, ... (weight [C_out, C_in, k, k], ReLU after each), whose last output, flattened channel-major
(feature c*H*W + h*W + w), is the MLP's input; its critic has the same layers under the same names.

The supervisor sizes the store and the compressor checks and prunes snapshots from this table
alone: importing torch costs each of them over a second of CPU at start-up, on a machine where every
process starts at once (a test holds this table to the one torch builds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from hotprune import spaces
from hotprune.algorithms import actor_kind
from hotprune.config import ConvNet
from hotprune.envs import EnvSource, EnvSpec, action_space, env_spec, spec_of

if TYPE_CHECKING:
    from hotprune.config import Config

_LINEAR_WEIGHT = re.compile(r"^net\.(\d+)\.weight$")
_CONV_WEIGHT = re.compile(r"^conv\.(\d+)\.weight$")
OBS_NORM = ("obs_norm.mean", "obs_norm.var")
NORM_EPS = 1e-8  # gymnasium's and SB3's epsilon, for observations and rewards alike
SAC_CRITICS = ("qf1", "qf2")  # SAC's twin Q networks (hotprune.learning.sac), each with a target copy
NORM_CLIP = 10.0  # normalised observations and scaled rewards are clipped to +-this (SB3's VecNormalize, CleanRL)


def actor_shapes(spec: EnvSpec, hidden_sizes: list[int], normalize_obs: bool = False,
                 algorithm: str = "ppo", conv: ConvNet | None = None) -> dict[str, tuple[int, ...]]:
    """name -> shape of the dense actor's tensors (all float32), in the actor's own order."""
    kind = actor_kind(algorithm, spec.discrete)
    shapes: dict[str, tuple[int, ...]] = {n: (spec.obs_dim,) for n in OBS_NORM} if normalize_obs else {}
    inputs = spec.obs_dim
    if conv is not None:
        shapes |= conv_shapes(conv)
        inputs = conv.channels[-1] * math.prod(conv.out_hw())
    shapes |= _mlp_shapes([inputs, *hidden_sizes, spec.act_dim * kind.outputs_per_action], "net.")
    return {**shapes, "log_std": (spec.act_dim,)} if kind.head == "gaussian" else shapes


def run_shapes(cfg: Config, spec: EnvSpec, part: str = "actor") -> dict[str, tuple[int, ...]]:
    """name -> shape of a run's dense actor's (or critic's) tensors, its network as the config says."""
    network = cfg.network(part, spec)
    shapes = actor_shapes if part == "actor" else critic_shapes
    return shapes(spec, network.hidden_sizes, cfg.normalize_obs, cfg.algorithm, network.conv)


def conv_shapes(conv: ConvNet) -> dict[str, tuple[int, ...]]:
    """name -> shape of the conv layers `conv.0`, `conv.2`, ... (a ReLU between each two)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (c_in, c_out, k) in enumerate(zip((conv.in_shape[0], *conv.channels), conv.channels, conv.kernels)):
        shapes |= {f"conv.{2 * i}.weight": (c_out, c_in, k, k), f"conv.{2 * i}.bias": (c_out,)}
    return shapes


def critic_shapes(spec: EnvSpec, hidden_sizes: list[int], normalize_obs: bool = False,
                  algorithm: str = "ppo", conv: ConvNet | None = None) -> dict[str, tuple[int, ...]]:
    """name -> shape of the critic's tensors. PPO's: a bare MLP (0.weight, 0.bias, 2.weight, ...), after
    the actor's observation normaliser when there is one (0.mean, 0.var, then 1.weight, 1.bias, 3.weight,
    ...). SAC's: its twin Q networks and their targets (SAC_CRITICS, then `<name>_target`), each
    `<name>.net.0.weight`, ... on observation and action side by side (after `<name>.obs_norm.*`).
    A CNN critic (PPO): the actor's layout, `conv.0.weight`, ..., `net.0.weight`, ..., one output."""
    if conv is not None:
        return {**conv_shapes(conv), **_mlp_shapes([conv.channels[-1] * math.prod(conv.out_hw()), *hidden_sizes, 1],
                                                   "net.")}
    if algorithm == "sac":
        norm = {n: (spec.obs_dim,) for n in OBS_NORM} if normalize_obs else {}
        q = {**norm, **_mlp_shapes([spec.obs_dim + spec.act_dim, *hidden_sizes, 1], "net.")}
        return {f"{c}.{n}": shape for c in (*SAC_CRITICS, *(f"{c}_target" for c in SAC_CRITICS))
                for n, shape in q.items()}
    norm = {"0.mean": (spec.obs_dim,), "0.var": (spec.obs_dim,)} if normalize_obs else {}
    return {**norm, **_mlp_shapes([spec.obs_dim, *hidden_sizes, 1], "", first=1 if norm else 0)}


def _mlp_shapes(sizes: list[int], prefix: str, first: int = 0) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):  # Linear, activation, Linear, ...
        k = first + 2 * i
        shapes |= {f"{prefix}{k}.weight": (n_out, n_in), f"{prefix}{k}.bias": (n_out,)}
    return shapes


def actor_spec(spec: EnvSpec, hidden_sizes: list[int], normalize_obs: bool = False,
               algorithm: str = "ppo", conv: ConvNet | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape): what a snapshot of this actor must carry."""
    shapes = actor_shapes(spec, hidden_sizes, normalize_obs, algorithm, conv)
    return {n: ("float32", shape) for n, shape in shapes.items()}


def linear_weight_names(names: Iterable[str]) -> list[str]:
    """The actor's linear weight names, input layer first."""
    found = [(int(m.group(1)), n) for n in names if (m := _LINEAR_WEIGHT.match(n))]
    return [n for _, n in sorted(found)]


def conv_weight_names(names: Iterable[str]) -> list[str]:
    """A CNN's conv weight names, input layer first (none for an MLP)."""
    found = [(int(m.group(1)), n) for n in names if (m := _CONV_WEIGHT.match(n))]
    return [n for _, n in sorted(found)]


# --- the layer chain: which layer feeds which (convolutions, then the MLP head) ---------------------


@dataclass(frozen=True)
class Layer:
    """One weighted layer of a network: its weight and bias names, `conv` (weight [out, in, kh, kw]) or
    `linear` ([out, in]), and `flatten`: how many of its input columns each output unit of the layer
    before feeds. That is H*W for the first linear layer after the last convolution (the feature map is
    flattened channel-major, as torch's NCHW flatten(1): channel c feeds columns [c*H*W, (c+1)*H*W)),
    and 1 everywhere else."""

    weight: str
    bias: str
    kind: str
    flatten: int = 1


def layer_weight_names(names: Iterable[str]) -> list[str]:
    """The weight names of every conv and linear layer, input first (conv.0, conv.2, ..., net.0, ...)."""
    names = list(names)
    return conv_weight_names(names) + linear_weight_names(names)


def layer_chain(shapes: Mapping[str, Sequence[int]]) -> list[Layer]:
    """The chain of layers of a tensor table (name -> shape), dense or with channels and units removed:
    what the pruning engine scores, what the compressor slices and what a worker runs, read from names
    and shapes alone. ValueError when a layer's inputs are not the outputs of the one before."""
    chain, width = [], None  # width: the previous layer's output units
    for name in layer_weight_names(shapes):
        shape, kind = tuple(shapes[name]), "conv" if name.startswith("conv.") else "linear"
        if len(shape) != (4 if kind == "conv" else 2):
            raise ValueError(f"{name} has shape {shape}: a {kind} weight is {4 if kind == 'conv' else 2}-D")
        flatten = 1
        if width is not None and kind == "linear" and chain[-1].kind == "conv":
            flatten = shape[1] // width if width else 0
        if width is not None and shape[1] != width * flatten or flatten == 0:
            raise ValueError(f"{name} has {shape[1]} inputs, not a multiple of the {width} outputs before it")
        chain.append(Layer(name, name.removesuffix("weight") + "bias", kind, flatten))
        width = shape[0]
    return chain


def conv_of(tensors: Mapping[str, Any], conv: ConvNet) -> ConvNet:
    """`conv` with the channels and kernels of `tensors` (a channel-pruned actor has fewer channels)."""
    weights = [tensors[n] for n in conv_weight_names(tensors)]
    return ConvNet(tuple(int(w.shape[0]) for w in weights), tuple(int(w.shape[-1]) for w in weights),
                   conv.strides, conv.in_shape, conv.scale)


def policy_metadata(spec: EnvSpec, cfg: Config) -> dict[str, Any]:
    """What a policy file says of its actor: enough to rebuild and run it without its environment
    (`policy_spec`): the algorithm, hidden sizes and activation, the head, both spaces as JSON
    (hotprune.spaces.describe: how observations are flattened, the action bounds), and whether it
    normalises its observations (the statistics are its `obs_norm.*` tensors)."""
    sizes, activation, conv = cfg.network("actor", spec)
    return {"env_id": spec.env_id, "discrete": spec.discrete, "algorithm": cfg.algorithm, "hidden_sizes": sizes,
            "activation": activation, "head": actor_kind(cfg.algorithm, spec.discrete).head,
            "observation_space": spaces.describe(spec.observation_space),
            "action_space": spaces.describe(action_space(spec)), "normalize_obs": cfg.normalize_obs,
            **({"conv": conv.meta()} if conv is not None else {})}


def policy_conv(meta: Mapping[str, Any]) -> ConvNet | None:
    """The conv layers a policy file's metadata describes (`policy_metadata`); None for an MLP."""
    return ConvNet.from_meta(meta["conv"]) if "conv" in meta else None


def policy_spec(meta: Mapping[str, Any]) -> EnvSpec:
    """The env spec a policy file's metadata describes (`policy_metadata`); for a file from before it
    said so, its environment's (made to read its spaces)."""
    if "observation_space" not in meta:
        return env_spec(EnvSource.from_meta(meta))
    return spec_of(meta["env_id"], spaces.from_description(meta["observation_space"]),
                   spaces.from_description(meta["action_space"]))
