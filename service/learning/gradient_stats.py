"""Gradient statistics for saliency criteria: g = mean |dL/dw| over the last N minibatches.

The seed's `grad_avg = sum |grad_i| / N`, accumulated from the trainer's own minibatches (no extra
forward or backward pass), over the last `num_gradient_batches` of them, across epochs. It is taken
in `after_backward`, before any mask: the gradient the trainer's weights actually have, so a pruned
weight has value 0 but not necessarily gradient 0 (nested masks keep it pruned).
"""

from __future__ import annotations

from collections import deque
from typing import Mapping

import numpy as np
import torch

from hotprune.learning.hooks import UpdateHooks


class GradientStats(UpdateHooks):
    def __init__(self, params: Mapping[str, torch.nn.Parameter], num_batches: int):
        self.params = dict(params)
        self.window: deque[dict[str, torch.Tensor]] = deque(maxlen=num_batches)

    @torch.no_grad()
    def after_backward(self) -> None:
        self.window.append({n: p.grad.abs() for n, p in self.params.items() if p.grad is not None})

    @torch.no_grad()
    def tensors(self) -> dict[str, torch.Tensor]:
        """g per tensor, on the weights' device (what a snapshot copies off); zeros before the first minibatch."""
        out = {}
        for name, p in self.params.items():
            seen = [b[name] for b in self.window if name in b]
            out[name] = torch.stack(seen).mean(0) if seen else torch.zeros_like(p)
        return out

    def mean(self) -> dict[str, np.ndarray]:
        """g per tensor on the host, float32 (what the pruning engine ranks by)."""
        return {name: g.cpu().numpy().astype(np.float32, copy=False) for name, g in self.tensors().items()}
