"""Keeping the trainer's pruned weights exactly zero (both-pruned mode).

Masking gradients alone is not enough: Adam's moment estimates carry momentum from before the mask,
and would move a masked weight off zero. So applying a mask also clears the optimizer state at the
masked positions, gradients are masked before each step, and the mask is re-applied after each step.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch


class TrainingMasks:
    def __init__(self, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params = dict(params)
        self.optimizer = optimizer
        self.masks: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, masks: Mapping[str, np.ndarray]) -> None:
        """Install new masks: zero the weights and the optimizer state they prune."""
        self.masks = {name: torch.from_numpy(np.asarray(m, dtype=bool)) for name, m in masks.items()}
        for name, mask in self.masks.items():
            param = self.params[name]
            param.mul_(mask)
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for name, mask in self.masks.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(mask)

    @torch.no_grad()
    def after_step(self) -> None:
        for name, mask in self.masks.items():
            self.params[name].mul_(mask)
