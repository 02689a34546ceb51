"""The pruning engine: importance criteria, exact-count nested masks, ERK, whole-neuron and -channel removal.

Two separate choices, as in Torch-Pruning's importance / pruner split:

- a **criterion** turns weights (and, if it needs them, gradient statistics) into one importance
  score per weight: `magnitude` |w|, `taylor` |w * g|, `gradient` g, where g = mean |dL/dw| over
  recent minibatches. Adding one is adding an entry to CRITERIA; the config's choices come from it.
- a **structure** (hotprune.pruning.criteria.STRUCTURES) decides what is removed: single weights
  (`weight`, conv kernels' included) or whole output units of hidden layers: the MLP's hidden units
  (`neuron`), and those plus the conv layers' output channels, their filters (`channel`). A unit is
  scored by the mean of its incoming weights' scores (a filter's: over in-channels x kh x kw): within
  a layer that ranks exactly like their sum, i.e. like `torch.nn.utils.prune.ln_structured(n=1,
  dim=0)` for magnitude. Under one global threshold, unit scores are divided by their layer's mean
  first (Torch-Pruning's "mean" normalizer; the same for means and sums), so layers of different
  fan-in and gradient scale compete fairly; every hidden layer keeps at least one unit.
  `target_sparsity` is then the fraction of those units removed. Removing a unit removes its weights
  and bias and the next layer's inputs from it: for the last conv layer, the H*W columns of the
  flattened feature map that its channel feeds (hotprune.actor_spec.layer_chain).

Guarantees of `Pruner.compute`:
- exactly k = round(s * n) items pruned per scope (global: all prunable items; layer: each layer, or
  the ERK allocation whose per-layer counts sum to round(s * n)), lowest score first, ties broken by
  position (as a stable sort would): the same inputs always give the same masks. Scores are float32
  (a unit's, the float64 mean of its weights'); the selection ranks only the items still standing and
  takes O(n) whatever the ties (`_kth`), a few passes over the scores in all;
- nested unless asked to regrow: items the previous masks pruned score lowest, so a mask never
  un-prunes (masks only grow, whatever order snapshots and masks arrive in);
- no input cut off: each first-layer input keeps `min_weights_per_input` weights, the count still exact
  (hotprune.pruning.coverage);
- a criterion that cannot rank (non-finite scores, or all candidates equal) raises CompressionFailed
  and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from hotprune.pruning.coverage import covered
from hotprune.pruning.criteria import CRITERIA, STRUCTURES
from hotprune.pruning.schedule import Step
from hotprune.actor_spec import Layer, layer_chain, layer_weight_names
from hotprune.protocol.sparse import Version, nonzero

Spec = Mapping[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)


class CompressionFailed(ValueError):
    """The criterion cannot rank these weights; the previous masks stay in force."""




@dataclass
class Masks:
    """Keep-masks (True = kept) in the dense shapes, and for `neuron` and `channel` the kept units of
    each pruned hidden layer.

    `elements` is what the trainer applies and what a snapshot is multiplied by; `units` is what a
    unit-pruned snapshot is sliced by (layer weight name -> bool per output unit or channel).
    """

    elements: dict[str, np.ndarray]
    units: dict[str, np.ndarray] | None = None

    def pruned(self) -> int:
        return sum(m.size - int(np.count_nonzero(m)) for m in self.elements.values())

    @classmethod
    def from_elements(cls, elements: Mapping[str, np.ndarray], structure: str) -> "Masks":
        """Masks rebuilt from their element masks (a masks file): for `neuron` and `channel`, a unit of
        a layer that structure prunes is kept iff its bias is."""
        elements = {n: np.asarray(m, bool) for n, m in elements.items()}
        if not STRUCTURES[structure]:
            return cls(elements)
        chain = layer_chain({n: m.shape for n, m in elements.items()})
        return cls(elements, {layer.weight: elements[layer.bias].copy() for layer in _unit_layers(chain, structure)})


def prunable_names(names, prune_output_layer: bool) -> list[str]:
    """The weights (conv kernels and matrices) sparsity is measured over (and, for `weight`, pruned):
    biases never."""
    weights = layer_weight_names(names)
    return weights if prune_output_layer else weights[:-1]


def _unit_layers(chain: Sequence[Layer], structure: str) -> list[Layer]:
    """The hidden layers whose output units `structure` removes whole (none for `weight`)."""
    return [layer for layer in chain[:-1] if layer.kind in STRUCTURES[structure]]


def _shapes(table: Mapping) -> dict[str, tuple[int, ...]]:
    """name -> shape of a Spec (name -> (dtype, shape)) or of a tensor table."""
    return {n: tuple(v.shape) if hasattr(v, "shape") else tuple(v[1]) for n, v in table.items()}


class Pruner:
    """Computes masks for one model's tensor table under one run's pruning settings."""

    def __init__(self, spec: Spec, *, method: str, structure: str = "weight", scope: str = "global",
                 distribution: str = "uniform", prune_output_layer: bool = False, regrow: bool = False,
                 min_weights_per_input: int = 0):
        if method not in CRITERIA:
            raise ValueError(f"unknown criterion {method!r} (known: {', '.join(CRITERIA)})")
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r} (known: {', '.join(STRUCTURES)})")
        self.spec = dict(spec)
        self.criterion = CRITERIA[method]
        self.structure, self.scope, self.distribution, self.regrow = structure, scope, distribution, regrow
        self.min_weights_per_input = min_weights_per_input  # hotprune.pruning.coverage
        self.by_unit = bool(STRUCTURES[structure])
        # Single weights need no chain (nor layers that chain up); units are removed along it.
        self.chain = layer_chain(_shapes(self.spec)) if self.by_unit else []
        # What gets scored: for `weight` the prunable weights, else the pruned hidden layers' incoming weights.
        self.scored = [layer.weight for layer in _unit_layers(self.chain, structure)] if self.by_unit \
            else prunable_names(self.spec, prune_output_layer)

    @property
    def grad_names(self) -> list[str]:
        """Tensors whose gradient statistics a snapshot must carry (none for magnitude)."""
        return list(self.scored) if self.criterion.needs_grads else []

    def mask_names(self) -> list[str]:
        return mask_names(self.chain, self.structure, self.scored)

    def at_step(self, step: Step, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray] | None = None,
                previous: Masks | None = None) -> Masks:
        """The masks of a schedule step (hotprune.pruning.schedule): `compute` at its sparsity here; an update
        of `previous` in dynamic sparse training (hotprune.pruning.dynamic.DynamicPruner)."""
        return self.compute(weights, step.sparsity, grads, previous)

    def compute(self, weights: Mapping[str, np.ndarray], sparsity: float, grads: Mapping[str, np.ndarray] | None = None,
                previous: Masks | None = None) -> Masks:
        """Masks pruning `sparsity` of the items (weights or hidden units), nested in `previous`
        unless this pruner regrows. Raises CompressionFailed when the criterion cannot rank."""
        scores = {}
        for name in self.scored:
            g = None if grads is None else grads.get(name)
            if self.criterion.needs_grads and g is None:
                raise CompressionFailed(f"criterion {self.criterion.name} needs gradient statistics for {name}")
            s = self.criterion.score(np.asarray(weights[name], np.float32),
                                     None if g is None else np.asarray(g, np.float32))
            if not np.isfinite(s).all():
                raise CompressionFailed(f"criterion {self.criterion.name} gave non-finite scores in {name}")
            # A unit's mean over its weights' float32 scores, summed in float64: a few thousand unit scores.
            scores[name] = s.reshape(len(s), -1).mean(axis=1, dtype=np.float64) if self.by_unit else s.reshape(-1)
        before = None
        if previous is not None and not self.regrow:
            before = previous.units if self.by_unit else previous.elements
            before = {n: before[n].reshape(-1) for n in self.scored}
        if self.by_unit and self.scope == "global":
            scores = {n: _normalized(s, None if before is None else before[n]) for n, s in scores.items()}
        scores = covered(scores, self.spec, self.structure, self.min_weights_per_input, before)
        counts = self._counts(sparsity, before)
        keep = select(scores, counts, self.scope, previous=before, min_keep=1 if self.by_unit else 0)
        if not self.by_unit:
            return Masks({n: keep[n].reshape(self.spec[n][1]) for n in self.scored})
        return Masks(unit_element_masks(self.spec, keep), keep)

    def _counts(self, sparsity: float, before: Mapping[str, np.ndarray] | None) -> dict[str, int] | int:
        """Items to prune: one count for global scope, one per layer for layer scope."""
        sizes = {n: self._items(n) for n in self.scored}
        if self.scope == "global":
            return int(round(sparsity * sum(sizes.values())))
        if self.distribution == "erk":
            shapes = {n: self.spec[n][1] for n in self.scored}
            already = {n: k.size - int(np.count_nonzero(k)) for n, k in before.items()} if before is not None else None
            return allocate(sizes, erk_densities(shapes, sparsity), int(round(sparsity * sum(sizes.values()))), already)
        return {n: int(round(sparsity * size)) for n, size in sizes.items()}

    def _items(self, name: str) -> int:
        shape = self.spec[name][1]
        return shape[0] if self.by_unit else int(np.prod(shape))


def _normalized(unit_scores: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
    """Unit scores over their layer's mean (over units still kept): layers of different fan-in and
    gradient scale become comparable under one global threshold (Torch-Pruning's "mean" normalizer)."""
    live = unit_scores if kept is None else unit_scores[kept]
    mean = live.mean() if live.size else 0.0
    return unit_scores / mean if mean > 0 else unit_scores


def mask_names(chain: Sequence[Layer], structure: str, scored: Sequence[str]) -> list[str]:
    """The tensors a Masks carries: the scored weights, or for `neuron` and `channel` every tensor a
    unit can touch (every layer's weights, the hidden layers' biases)."""
    if not STRUCTURES[structure]:
        return list(scored)
    return [*(layer.weight for layer in chain), *(layer.bias for layer in chain[:-1])]


def select(scores: Mapping[str, np.ndarray], counts: Mapping[str, int] | int, scope: str, *,
           previous: Mapping[str, np.ndarray] | None = None, min_keep: int = 0) -> dict[str, np.ndarray]:
    """Keep-masks over 1-D score arrays: prune `counts` lowest-scored items (an int for one global
    threshold, or a count per layer), lowest first, ties by position. Items `previous` pruned stay
    pruned (they count towards the total); each layer keeps at least `min_keep` items."""
    names = list(scores)
    if scope == "layer":
        assert isinstance(counts, Mapping)
        return {n: _select_one({n: scores[n]}, counts[n], previous, min_keep)[n] for n in names}
    assert isinstance(counts, int)
    return _select_one(scores, counts, previous, min_keep)


def _select_one(scores: Mapping[str, np.ndarray], k: int, previous: Mapping[str, np.ndarray] | None,
                min_keep: int) -> dict[str, np.ndarray]:
    """One threshold over `scores`: the order is that of a stable argsort of the scores concatenated in
    layer order, with the items `previous` pruned first (-inf) and the protected ones last (+inf)."""
    names = list(scores)
    if min_keep:  # unit scores (a few thousand): a layer's best min_keep items still standing go to +inf
        scores = {n: _protected(scores[n], None if previous is None else previous[n], min_keep) for n in names}
        previous = None  # folded into the keys as -inf
    # Only the items still standing are ranked: the selection runs over them alone, not over the whole
    # model with the pruned ones at -inf (a partition slows down 100x on that many equal keys).
    pruned = pinned_low = 0  # pruned before; at -inf (pruned first). Items at +inf are never pruned.
    live = []
    for n in names:
        x = scores[n]
        if previous is not None:
            pruned += x.size - int(np.count_nonzero(previous[n]))
            x = np.compress(previous[n], x)  # compress, not x[mask]: 20x faster on a random mask here
        if x.size and (x.min() == -np.inf or x.max() == np.inf):  # covered()'s protected weights, min_keep
            pinned_low += int(np.count_nonzero(x == -np.inf))
            x = np.compress(np.isfinite(x), x)
        live.append(x)
    live = np.concatenate(live) if len(live) > 1 else live[0]  # in position order across layers
    already = pruned + pinned_low
    k = min(max(k, already), already + live.size)
    take = k - already  # the lowest-scored standing items to prune now
    if take and live.size > 1 and live.min() == live.max():
        raise CompressionFailed(f"all {live.size} candidate scores are equal ({live[0]:g}): nothing to rank by")
    threshold, ties = _kth(live, take) if take else (-np.inf, 0)
    keep = {}
    for n in names:
        keep[n] = scores[n] > threshold  # every tie pruned, -inf too; +inf kept
        if previous is not None:
            keep[n] &= previous[n]
    if take and np.count_nonzero(live == threshold) > ties:  # some ties stay: the later ones
        skip = ties
        for n in names:
            at = np.flatnonzero(scores[n] == threshold)
            if previous is not None:
                at = at[previous[n][at]]
            keep[n][at[skip:]] = True
            skip = max(0, skip - at.size)
    return keep


def _protected(scores: np.ndarray, kept: np.ndarray | None, min_keep: int) -> np.ndarray:
    """A copy of `scores` with the items no longer `kept` at -inf and the best `min_keep` still kept
    (ties to the earlier position) at +inf."""
    keys = np.array(scores, np.result_type(scores, np.float32))
    if kept is not None:
        keys[~kept] = -np.inf
    keys[lowest(-keys, min_keep) & (keys > -np.inf)] = np.inf
    return keys


def lowest(keys: np.ndarray, k: int) -> np.ndarray:
    """A bool mask of the k lowest keys, ties broken by position: the first k of a stable argsort,
    found in O(n) (hotprune.pruning.engine._kth) rather than a sort, which takes 40x longer on a
    1M-weight layer. Keys must not be NaN."""
    if k <= 0 or k >= keys.size:
        return np.full(keys.size, k > 0)
    kth, ties = _kth(keys, k)
    out = keys < kth
    out[np.flatnonzero(keys == kth)[:ties]] = True
    return out


def _kth(values: np.ndarray, k: int) -> tuple[float, int]:
    """The k-th lowest of `values` (1 <= k <= size; no NaN) as a stable argsort orders them, and how
    many of the values equal to it are among the k lowest (the earliest ones)."""
    if values.dtype == np.float32:
        # A unique key per item, the value's bits then the position: np.partition (introselect) takes
        # 100x longer when many values are equal (dead units' zero gradients), and the position settles
        # the ties. The int32 order of a float32's bits, its sign folded in, is the float order.
        bits = np.add(values, np.float32(0)).view(np.int32)  # -0.0 becomes +0.0: equal values, equal keys
        bits ^= (bits >> 31) & 0x7FFFFFFF
        key = np.left_shift(bits, 32, dtype=np.int64)
        key |= np.arange(key.size, dtype=np.int64)
        key.partition(k - 1)
        at = int(key[k - 1] & 0xFFFFFFFF)
        return values[at], int(np.count_nonzero(values[: at + 1] == values[at]))
    kth = np.partition(values, k - 1)[k - 1]  # unit scores (float64): a few thousand
    return kth, k - int(np.count_nonzero(values < kth))


def erk_densities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Erdős–Rényi-kernel layer densities (Evci et al. 2020, RigL's sparse_utils): density of a layer
    proportional to (fan_in + fan_out) / (fan_in * fan_out), scaled so the total is 1 - sparsity;
    a layer whose density would exceed 1 stays dense and the rest are rescaled."""
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    raw = {n: sum(s) / np.prod(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = sum((1 - sparsity) * sizes[n] if n not in dense else -sparsity * sizes[n] for n in shapes)
        divisor = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        eps = rhs / divisor if divisor else 0.0
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


def allocate(sizes: Mapping[str, int], densities: Mapping[str, float], total: int,
             minimum: Mapping[str, int] | None = None) -> dict[str, int]:
    """Per-layer pruned counts near sizes * (1 - density) that sum exactly to `total` (largest
    remainder first, ties by layer order), none below `minimum` (what nested masks already prune:
    the rounding of a higher sparsity may not take a weight back from a layer). Only minimums that
    sum past `total` (a lower sparsity than already pruned) can make the sum exceed it."""
    names = list(sizes)
    low = {n: (minimum or {}).get(n, 0) for n in names}
    want = {n: sizes[n] * (1 - densities[n]) for n in names}
    counts = {n: min(sizes[n], max(low[n], int(np.floor(want[n])))) for n in names}
    by_remainder = sorted(names, key=lambda n: -(want[n] - np.floor(want[n])))  # stable: layer order on ties
    short = total - sum(counts.values())
    for step, order, can in ((1, by_remainder, lambda n: counts[n] < sizes[n]),
                             (-1, by_remainder[::-1], lambda n: counts[n] > low[n])):
        while short * step > 0 and any(can(n) for n in order):
            for n in order:
                if short * step > 0 and can(n):
                    counts[n] += step
                    short -= step
    return counts


def _kept_inputs(chain: Sequence[Layer], i: int, units: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Which inputs of layer i the removed units of layer i - 1 leave (None: all of them): a removed
    channel of the last conv layer takes its `flatten` (H*W) columns of the first linear layer."""
    before = units.get(chain[i - 1].weight) if i else None
    return None if before is None else np.repeat(before, chain[i].flatten)


def unit_element_masks(spec: Spec, units: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element masks of removed hidden units and channels: their incoming weights (a filter: all of its
    kernel) and bias, the next layer's inputs from them."""
    shapes = _shapes(spec)
    chain = layer_chain(shapes)
    masks = {}
    for i, layer in enumerate(chain):
        shape = shapes[layer.weight]
        rows = units.get(layer.weight, np.ones(shape[0], bool))
        cols = _kept_inputs(chain, i, units)
        cols = np.ones(shape[1], bool) if cols is None else cols
        masks[layer.weight] = np.broadcast_to(np.outer(rows, cols).reshape(*shape[:2], *[1] * (len(shape) - 2)),
                                              shape).copy()
        if i < len(chain) - 1:
            masks[layer.bias] = rows.copy()
    return masks


def apply_masks(weights: Mapping[str, np.ndarray], masks: Masks | None) -> dict[str, np.ndarray]:
    """The weights as workers run them: masked entries +0.0, and removed units sliced out. Sliced first,
    masks too: masking the smaller tensors gives the same result, and for the Nature CNN with 75% of its
    channels gone takes 3-10x less time than masking the dense ones (its 6 MB head is not copied whole)."""
    if masks is None:
        return dict(weights)
    keep = masks.elements
    if masks.units is not None:
        weights, keep = shrink(weights, masks.units), shrink(keep, masks.units)
    return {n: masked(w, keep[n]) if n in keep else w for n, w in weights.items()}


def masked(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """w with the entries `keep` prunes set to +0.0. A multiply, not np.where, which branches per
    element and takes 10x longer on a random mask; adding +0.0 turns the -0.0 of a negative weight
    times False into +0.0. For finite w only (a snapshot with a non-finite value is rejected)."""
    out = np.multiply(w, keep, dtype=w.dtype)
    out += 0
    return out


def shrink(weights: Mapping[str, np.ndarray], units: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Physically smaller tensors without the removed hidden units and channels (a new tensor table):
    a removed channel's filter and bias, and the next conv's input channel or the first linear layer's
    H*W columns it fed."""
    chain = layer_chain(_shapes(weights))
    out = dict(weights)
    for i, layer in enumerate(chain):
        w = weights[layer.weight]
        if layer.weight in units:
            w = w[units[layer.weight]]
            out[layer.bias] = weights[layer.bias][units[layer.weight]]
        cols = _kept_inputs(chain, i, units)
        if cols is not None:
            w = w[:, cols]
        out[layer.weight] = np.ascontiguousarray(w)
    return out


def sparsity(tensors: Version, dense: Spec, names: Sequence[str]) -> float:
    """Fraction of the named tensors' dense positions that are zero or gone (removed units count as pruned);
    a tensor may be dense or kept values + bitmap (hotprune.protocol.sparse)."""
    return sparsity_of_counts({n: nonzero(tensors[n]) for n in names}, dense, names)


def sparsity_of_counts(nonzero: Mapping[str, int], dense: Spec, names: Sequence[str]) -> float:
    """`sparsity` from each tensor's count of non-zeros, for a caller that needs the counts too."""
    total = sum(int(np.prod(dense[n][1])) for n in names)
    return 1 - sum(nonzero[n] for n in names) / total if total else 0.0


def masks_sparsity(masks: Masks | None, dense: Spec, names: Sequence[str]) -> float:
    """The fraction of the named tensors' dense positions the masks prune: the sparsity they hold the weights
    at, whatever zeros the kept weights have besides (a weight regrown at zero, or a kept weight exactly 0)."""
    elements = masks.elements if masks is not None else {}
    return sparsity_of_counts({n: int(np.count_nonzero(elements[n])) if n in elements else int(np.prod(dense[n][1]))
                               for n in names}, dense, names)


def masked_stats(masks: Masks | None, spec: Spec, names: Sequence[str]) -> dict:
    """What a compression leaves: per layer of `names` its sparsity and kept / total weights, the
    whole model's kept / total parameters (every tensor: weights, biases, log std), and for `neuron`
    and `channel` the fraction of hidden units and channels removed."""
    layers, pruned_all = {}, 0
    elements = masks.elements if masks is not None else {}
    for n, (_, shape) in spec.items():
        total = int(np.prod(shape))
        pruned = total - int(np.count_nonzero(elements[n])) if n in elements else 0
        pruned_all += pruned
        if n in names:
            layers[n] = {"sparsity": pruned / total, "kept": total - pruned, "total": total}
    total_all = sum(int(np.prod(shape)) for _, shape in spec.values())
    units = masks.units if masks is not None else None
    unit_sparsity = 1 - sum(int(u.sum()) for u in units.values()) / sum(u.size for u in units.values()) if units \
        else None
    return {"layers": layers, "params_kept": total_all - pruned_all, "params_total": total_all,
            "unit_sparsity": unit_sparsity}


def cut_inputs(masks: Masks | None) -> list[int]:
    """The network's inputs (features, or a CNN's input channels) whose every weight in the first layer
    is pruned: it no longer sees them. Magnitude ranks by |w|, so an input on a large scale (an angular
    velocity) or one the network weighs lightly can lose all of its weights; for SAC's critics an action
    input cut off means Q ignores that action, and the actor gets no gradient through it."""
    first = layer_weight_names(masks.elements)[:1] if masks is not None else []
    if not first:
        return []
    keep = masks.elements[first[0]]
    return np.flatnonzero(~keep.any(axis=tuple(a for a in range(keep.ndim) if a != 1))).tolist()


def churn(previous: Masks | None, new: Masks) -> tuple[int, int]:
    """(positions whose keep/prune state changed, positions revived) between two masks."""
    if previous is None:
        return new.pruned(), 0
    changed = revived = 0
    for n, m in new.elements.items():
        old = previous.elements[n]
        flips = int(np.count_nonzero(old != m))
        changed += flips
        # flips = pruned now + revived, and kept(new) - kept(old) = revived - pruned now: no second pass
        revived += (flips + int(np.count_nonzero(m)) - int(np.count_nonzero(old))) // 2
    return changed, revived
