"""Pruning math: importance criteria, exact-count masks, the schedule, and measured sparsity.

A criterion is one small function from (weights, gradient statistics) to importance scores; adding
one is adding an entry to CRITERIA. Masks prune exactly k = round(s * n) weights, lowest score first,
ties broken by position (stable sort), so the same inputs always give the same mask.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from service.config import Config

Criterion = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]

CRITERIA: dict[str, Criterion] = {
    "magnitude": lambda weight, grad: np.abs(weight),
}


def compute_masks(
    weights: Mapping[str, np.ndarray],
    sparsity: float,
    *,
    criterion: str = "magnitude",
    scope: str = "global",
    grads: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Boolean keep-masks for `weights` (True = kept) at the given sparsity."""
    score_fn = CRITERIA[criterion]
    scores = {name: score_fn(w, grads.get(name) if grads else None).astype(np.float64) for name, w in weights.items()}
    if scope == "layer":
        return {name: _keep_mask(s.reshape(-1), sparsity).reshape(s.shape) for name, s in scores.items()}
    flat = np.concatenate([s.reshape(-1) for s in scores.values()])
    keep = _keep_mask(flat, sparsity)
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.size].reshape(s.shape)
        start += s.size
    return masks


def _keep_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    k = int(round(sparsity * scores.size))
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    return keep


def apply_masks(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of `weights` with masked entries zeroed (tensors without a mask pass unchanged)."""
    return {name: np.where(masks[name], w, 0).astype(w.dtype) if name in masks else w for name, w in weights.items()}


def sparsity(tensors: Mapping[str, np.ndarray], names: list[str]) -> float:
    """Fraction of exact zeros over the named tensors."""
    total = sum(tensors[n].size for n in names)
    zeros = sum(int(np.count_nonzero(tensors[n] == 0)) for n in names)
    return zeros / total if total else 0.0


def scheduled_sparsity(
    epoch: int,
    *,
    target: float,
    start_epoch: int,
    every: int,
    schedule: str = "constant",
    initial: float = 0.0,
    end_epoch: int | None = None,
) -> float | None:
    """The sparsity to prune to at `epoch`, or None when this epoch is not a compression point.

    cubic: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3, held at s_f after t1.
    """
    if epoch < start_epoch or (epoch - start_epoch) % every:
        return None
    if schedule == "constant":
        return target
    if end_epoch is None or end_epoch <= start_epoch:
        raise ValueError(f"cubic schedule needs end_epoch > start_epoch, got {end_epoch} <= {start_epoch}")
    progress = min(1.0, (epoch - start_epoch) / (end_epoch - start_epoch))
    return target + (initial - target) * (1.0 - progress) ** 3


def compression_target(cfg: Config, epoch: int) -> float | None:
    """The sparsity this run prunes the snapshot of `epoch` to, or None when it passes unpruned."""
    p = cfg.pruning
    if p.method == "none":
        return None
    return scheduled_sparsity(epoch, target=p.target_sparsity, start_epoch=p.start_epoch, every=p.every,
                              schedule=p.schedule, initial=p.initial_sparsity, end_epoch=cfg.pruning_end_epoch)
