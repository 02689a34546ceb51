"""The actor's (and the critic's) tensor names and shapes, without torch.

`service.policy.Actor` is a tanh MLP whose linear layers are `net.0`, `net.2`, ... (a Tanh between
each two); a continuous actor adds `log_std`. The supervisor sizes the store and the compressor
checks and prunes snapshots from this table alone: importing torch costs each of them over a
second of CPU at start-up, on a machine where every process starts at once (a test holds this
table to the one torch builds).
"""

from __future__ import annotations

import re
from typing import Iterable

from service.envs import EnvSpec

_LINEAR_WEIGHT = re.compile(r"^net\.(\d+)\.weight$")


def actor_shapes(spec: EnvSpec, hidden_sizes: list[int]) -> dict[str, tuple[int, ...]]:
    """name -> shape of the dense actor's tensors (all float32), in the actor's own order."""
    shapes = _mlp_shapes([spec.obs_dim, *hidden_sizes, spec.act_dim], "net.")
    return shapes if spec.discrete else {**shapes, "log_std": (spec.act_dim,)}


def critic_shapes(spec: EnvSpec, hidden_sizes: list[int]) -> dict[str, tuple[int, ...]]:
    """name -> shape of the PPO critic's tensors (a bare tanh MLP: 0.weight, 0.bias, 2.weight, ...)."""
    return _mlp_shapes([spec.obs_dim, *hidden_sizes, 1], "")


def _mlp_shapes(sizes: list[int], prefix: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):  # Linear, Tanh, Linear, ...
        shapes |= {f"{prefix}{2 * i}.weight": (n_out, n_in), f"{prefix}{2 * i}.bias": (n_out,)}
    return shapes


def actor_spec(spec: EnvSpec, hidden_sizes: list[int]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape): what a snapshot of this actor must carry."""
    return {n: ("float32", shape) for n, shape in actor_shapes(spec, hidden_sizes).items()}


def linear_weight_names(names: Iterable[str]) -> list[str]:
    """The actor's linear weight names, input layer first."""
    found = [(int(m.group(1)), n) for n in names if (m := _LINEAR_WEIGHT.match(n))]
    return [n for _, n in sorted(found)]
