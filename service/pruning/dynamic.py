"""Dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020) as mask updates, and the
run's pruner.

The sparsity is the target from the first compression on (magnitude, in the run's scope and distribution:
RigL's own choice is layer scope with ERK). Each later schedule step (hotprune.pruning.schedule: its fraction
f_t decays by RigL's cosine) updates the masks in force with `drop_grow`, one pure function that the
compressor (the actor) and the trainer (SAC's critics) both call. In each layer, as RigL's
`_get_update_op` (rigl/sparse_optimizers_base.py):

1. drop: the floor(f_t * kept) kept weights of smallest |w|;
2. grow: as many positions not kept after the drop, of largest grow score: at random for SET (uniform
   draws, deterministic given the run's seed, the step's epoch and the layer), the dense gradient
   statistic g = mean |dL/dw| for RigL (taken before masking: hotprune.learning.gradient_stats). As in
   RigL's code, a weight dropped at this step may be grown again at once (it then stays as it was); a
   weight grown at this step is never dropped at it (the drop comes first).

Guarantees of `drop_grow`:
- each layer keeps exactly as many weights as before: the sparsity stays exact;
- ties go by position, as the engine's selection (hotprune.pruning.engine.lowest): the lower |w| and
  the earlier position is dropped first, the higher score and the earlier position grown first;
- no input is cut off: a first-layer input's `minimum` best kept weights are never dropped
  (hotprune.pruning.coverage), and growing only adds. A layer then drops (and grows) fewer if it must.

Grown weights start at zero: the trainer's masks revive them with cleared optimizer state
(hotprune.learning.training_masks, as RigL's default `grow_init='zeros'` and momentum reset), and the
compressor masks the trainer's weights, zero there before the update, for the workers.
"""

from __future__ import annotations

import zlib
from typing import Mapping

import numpy as np

from hotprune.pruning.coverage import covered
from hotprune.pruning.criteria import CRITERIA, DYNAMIC
from hotprune.pruning.engine import CompressionFailed, Masks, Pruner, Spec, lowest
from hotprune.pruning.schedule import Step


def drop_grow(weights: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray], grow_scores: Mapping[str, np.ndarray],
              fraction: float, spec: Spec, minimum: int = 0) -> dict[str, np.ndarray]:
    """New keep-masks for the layers of `keep`: in each, floor(fraction * kept) kept weights of smallest
    |w| dropped and as many positions not kept after that grown, highest `grow_scores` first (finite,
    one per weight). `spec` names the first layer, whose inputs keep `minimum` weights each."""
    out = {}
    for name, mask in keep.items():
        kept = np.asarray(mask, bool).reshape(-1)
        drop_keys = covered({name: np.abs(weights[name].astype(np.float64)).reshape(-1)}, spec, "weight", minimum,
                            {name: kept})[name]  # a first-layer input's best kept weights: +inf, never dropped
        drop_keys[~kept] = np.inf  # only kept weights are dropped
        n = min(int(np.floor(fraction * np.count_nonzero(kept))), int(np.count_nonzero(np.isfinite(drop_keys))))
        after = kept & ~lowest(drop_keys, n)
        grow_keys = -np.asarray(grow_scores[name], np.float64).reshape(-1)  # a new array: highest score lowest
        grow_keys[after] = np.inf
        out[name] = (after | lowest(grow_keys, n)).reshape(mask.shape)
    return out


class DynamicPruner(Pruner):
    """The masks of a dynamic sparse training run: its first compression is magnitude pruning to the target
    (`compute`), every later step `drop_grow` on the masks in force."""

    def __init__(self, spec: Spec, *, method: str, seed: int, stream: str = "", scope: str = "global",
                 distribution: str = "uniform", prune_output_layer: bool = False, min_weights_per_input: int = 0):
        super().__init__(spec, method="magnitude", scope=scope, distribution=distribution, regrow=True,
                         prune_output_layer=prune_output_layer, min_weights_per_input=min_weights_per_input)
        if method not in DYNAMIC:
            raise ValueError(f"unknown dynamic sparse training method {method!r} (known: {', '.join(DYNAMIC)})")
        self.method, self.seed, self.stream = method, seed, stream  # stream: a critic's name, so twins draw apart

    @property
    def grad_names(self) -> list[str]:
        """RigL grows by g, so a snapshot carries it for every scored weight; SET needs none."""
        return list(self.scored) if self.method == "rigl" else []

    def at_step(self, step: Step, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray] | None = None,
                previous: Masks | None = None) -> Masks:
        if previous is None:  # the first compression (or a later step serving it)
            return self.compute(weights, step.sparsity)
        keep = {n: previous.elements[n] for n in self.scored}
        grow = {n: self._grow_scores(n, step.epoch, (grads or {}).get(n)) for n in self.scored}
        return Masks(drop_grow(weights, keep, grow, step.fraction, self.spec, self.min_weights_per_input))

    def _grow_scores(self, name: str, epoch: int, g: np.ndarray | None) -> np.ndarray:
        if self.method == "set":
            key = zlib.crc32(f"{self.stream}/{name}".encode())  # the same draw in every process and run
            return np.random.default_rng([self.seed, epoch, key]).random(self.spec[name][1])
        if g is None:
            raise CompressionFailed(f"rigl needs gradient statistics for {name}")
        if not np.isfinite(g).all():
            raise CompressionFailed(f"rigl got non-finite gradient statistics for {name}")
        if g.size > 1 and g.min() == g.max():  # e.g. no update yet: growing would just take the first positions
            raise CompressionFailed(f"all gradient statistics of {name} are equal ({g.flat[0]:g}): nothing to grow by")
        return g


def pruner_for(spec: Spec, p, critic: bool = False, seed: int = 0, stream: str = "") -> Pruner | None:
    """The run's pruner (p: the config's `pruning` section) of its actor, or of a SAC `critic`: with
    p.critic_distribution erk and weight structure, each critic layer pruned to its ERK share; for set
    and rigl a DynamicPruner drawing from `seed` (SET) in its `stream`; None for the dense baseline."""
    if p.method not in (*CRITERIA, *DYNAMIC):  # none, fixed: nothing to compute
        return None
    erk = critic and p.critic_distribution == "erk" and p.structure == "weight"
    shared = {"scope": "layer" if erk else p.scope, "distribution": "erk" if erk else p.distribution,
              "prune_output_layer": p.prune_output_layer, "min_weights_per_input": p.min_weights_per_input}
    if p.method in DYNAMIC:
        return DynamicPruner(spec, method=p.method, seed=seed, stream=stream, **shared)
    return Pruner(spec, method=p.method, structure=p.structure, regrow=p.regrow, **shared)
