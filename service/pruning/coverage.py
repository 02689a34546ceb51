"""No mask blinds a network: each input unit keeps at least `minimum` weights of the first layer.

Magnitude ranks by |w|, so an input on a small scale, or one the network weighs lightly, can lose every
weight of the first layer: the network no longer sees it. For SAC's critics on Pendulum this cut the
action input (Q(s, a) stopped depending on a, and the actor got no gradient: nothing learned). An
**input unit** is a column of the first layer's weight (`weight[:, j]`: an observation feature, and
for SAC's critics, whose input is observation and action concatenated, an action input too; for a
4-D convolution `weight[:, j, :, :]`, an input channel).

The rule is applied when choosing, not after: in each input unit, the `minimum` best-scoring weights
still kept rank last (score +inf), so they are never prune candidates, and the `k` weights the scope
prunes are the `k` lowest of the rest. That is the same as pruning plainly, giving each short unit
back its best weights and pruning as many more of the lowest-scoring kept weights of units with slack
(or of other layers), within the same scope: per layer, the first layer itself; global, anywhere
prunable. So:
- the count stays exact (k pruned stays k), unless the scope cannot prune k without cutting into the
  protected weights (a first layer asked to keep fewer weights than inputs x minimum, in layer scope):
  then it prunes every other weight and no more;
- masks stay nested: only weights still kept are protected, and a weight an earlier mask pruned is
  never revived by this rule. Masks this engine made never cut a unit below the minimum; masks made
  with a lower minimum (a file from before it, or a run resumed with a higher one) keep what they have;
- it is deterministic: "best" is the order the engine keeps by, score first and the later position
  on ties (the last of a stable ascending sort).

For `neuron` structure the first layer's columns are never pruned one by one: input unit j keeps one
weight in every first-layer hidden unit still kept. So the rule becomes "the first hidden layer keeps
at least `minimum` units": its `minimum` best units rank last. With minimum 1 it adds nothing to the
engine's own "every hidden layer keeps a unit".
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hotprune.actor_spec import layer_weight_names


def covered(scores: Mapping[str, np.ndarray], spec: Mapping[str, tuple[str, tuple[int, ...]]], structure: str,
            minimum: int, kept: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`scores` (flat, one per scored item) with each first-layer input unit's `minimum` best items
    still `kept` set to +inf, which the engine's selection never prunes. A new dict; the inputs are
    not changed. Nothing to do when minimum is 0 or the first layer is not scored."""
    out = dict(scores)
    first = next(iter(layer_weight_names(spec)), None)  # conv.0 for a CNN
    if not minimum or first not in scores:
        return out
    live = np.array(scores[first], np.result_type(scores[first], np.float32))  # ours: -inf goes in
    if kept is not None:
        live[~kept[first]] = -np.inf  # pruned before: never protected (nested)
    shape = spec[first][1]
    if structure == "weight":  # one row per input unit: weight[:, j, ...], in position order
        units = live.reshape(shape[0], shape[1], -1).transpose(1, 0, 2).reshape(shape[1], -1)
    else:  # items are the first layer's units: each input keeps its weights in every unit kept
        units = live.reshape(1, -1)
    best = _best(units, minimum)
    if structure == "weight":
        best = best.reshape(shape[1], shape[0], -1).transpose(1, 0, 2).reshape(-1)
    out[first] = np.where(best.reshape(-1), np.inf, scores[first])
    return out


def _best(rows: np.ndarray, minimum: int) -> np.ndarray:
    """Per row, the `minimum` highest keys that are not -inf, ties to the later position (the last
    `minimum` of a stable ascending sort: the order the engine keeps items by). One argmax pass per
    weight kept, over the rows reversed (argmax takes the first of its ties): a sort of a 385k-weight
    first layer took over 10x longer here than the one pass of minimum 1."""
    left = rows[:, ::-1].copy()
    best = np.zeros(left.shape, bool)
    at = np.arange(len(left))
    for _ in range(min(minimum, left.shape[1])):
        i = np.argmax(left, axis=1)
        hit = left[at, i] > -np.inf
        best[at[hit], i[hit]] = True
        left[at, i] = -np.inf
    return best[:, ::-1]
