"""Pruning criteria: importance scores per weight, higher = more important (kept longer).

The one registry the config's choices (`pruning.method`) and the pruning engine (hotprune.pruning.engine)
both read. g is the mean |dL/dw| over recent minibatches (hotprune.learning.gradient_stats), shipped with a
snapshot only when a criterion needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Criterion:
    """An importance score per weight, in the weights' float32 (the engine passes float32): |w| and g
    exactly, |w * g| rounded, which only turns products closer than 2^-24 of each other into ties
    (broken by position). A score is a new array or `g` itself; the engine never writes into it."""

    name: str
    formula: str
    needs_grads: bool  # needs g, the mean |dL/dw| the trainer accumulates and ships with a snapshot
    score: Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def _abs_product(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    product = np.multiply(w, g)
    return np.abs(product, out=product)  # in place: one array, not two


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", "|w|", False, lambda w, g: np.abs(w)),
        Criterion("taylor", "|w * g|", True, lambda w, g: _abs_product(w, g)),
        Criterion("gradient", "g", True, lambda w, g: g),
    )
}
# Dynamic sparse training (hotprune.pruning.dynamic): masks at a constant sparsity from the first compression on,
# whose smallest |w| are dropped at every update and as many pruned positions regrown: at random (SET, Mocanu
# et al. 2018) or where g is largest (RigL, Evci et al. 2020)
DYNAMIC = ("set", "rigl")
# `none`: the dense baseline, nothing pruned; `fixed`: the masks of a file from the first step on
# (pruning.mask_file: a lottery ticket), never changed, no schedule
METHODS = ("none", "fixed", *CRITERIA, *DYNAMIC)
# What a structure removes whole: the output units of its hidden layers of these kinds (hotprune.actor_spec.Layer);
# none for `weight`, which removes single weights. `channel` is `neuron` plus the conv layers' output channels
# (filters); on an MLP the two are the same.
STRUCTURES: dict[str, tuple[str, ...]] = {"weight": (), "neuron": ("linear",), "channel": ("conv", "linear")}
SCOPES = ("global", "layer")
DISTRIBUTIONS = ("uniform", "erk")
CRITIC_DISTRIBUTIONS = ("erk", "actor")  # SAC's critics: ERK per layer, or as the actor (pruning.critic_distribution)
