"""Keeping the trainer's pruned weights exactly zero (both-pruned mode), as update hooks.

Masking gradients alone is not enough: Adam's moment estimates carry momentum from before the mask,
and would move a masked weight off zero. So applying a mask also clears the optimizer state at the
masked positions, gradients are masked after backward, and the mask is re-applied after each step (to the
tensors the optimizer steps: one it does not, such as a SAC target critic, is zeroed when the mask is
applied and moves only by Polyak averaging, of zeros there).
Masking uses `masked_fill_`, not `mul_`: a masked weight is +0.0 even if a NaN or -x reached it
(NaN * 0 is NaN, -x * 0 is -0.0).

Masks only grow: unless the run regrows, an incoming mask is intersected with the one in force, so
a late or forged mask cannot revive a pruned weight. With regrowth, a revived weight starts at zero
with cleared optimizer state.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from hotprune.learning.hooks import UpdateHooks


class TrainingMasks(UpdateHooks):
    def __init__(self, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 regrow: bool = False):
        self.params = dict(params)
        self.optimizer = optimizer
        self.regrow = regrow
        self.pruned: dict[str, torch.Tensor] = {}  # name -> True where pruned
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.stepped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # the optimizer's params among them

    @torch.no_grad()
    def apply(self, keep: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Install new keep-masks; returns counts: `newly_pruned`, `revived` (regrowth only) and
        `refused_revivals` (positions the new mask would have revived, kept pruned)."""
        counts = {"newly_pruned": 0, "revived": 0, "refused_revivals": 0}
        for name, mask in keep.items():
            param = self.params[name]
            pruned = torch.from_numpy(~np.asarray(mask, dtype=bool)).to(param.device)  # where the weights learn
            old = self.pruned.get(name, torch.zeros_like(pruned))
            revive = old & ~pruned
            if self.regrow:
                counts["revived"] += int(revive.sum())
            else:
                counts["refused_revivals"] += int(revive.sum())
                pruned = pruned | old
            counts["newly_pruned"] += int((pruned & ~old).sum())
            self.pruned[name] = pruned
            clear = pruned | revive  # revived weights start from zero, with no optimizer history
            param.masked_fill_(clear, 0.0)
            for value in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.masked_fill_(clear, 0.0)
        self.stepped = [(self.params[n], pruned) for n, pruned in self.pruned.items()
                        if id(self.params[n]) in self.optimized]
        return counts

    def after_backward(self) -> None:
        for param, pruned in self.stepped:
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def after_step(self) -> None:
        for param, pruned in self.stepped:
            param.masked_fill_(pruned, 0.0)

    def count(self) -> int:
        """Positions pruned now."""
        return sum(int(p.sum()) for p in self.pruned.values())

    def keep_masks(self) -> dict[str, np.ndarray]:
        """The masks in force, as keep-masks (True = kept)."""
        return {name: (~pruned).cpu().numpy() for name, pruned in self.pruned.items()}


class MaskedUpdate(UpdateHooks):
    """Masked training at an update's points, in the one order that is right, fixed here rather than by
    the order of a list of hooks:

    - before a minibatch, `take_up()` (the trainer's intake of masks that have arrived): new masks take
      effect before the minibatch's forward pass, so its step already keeps them;
    - after backward, the gradient statistics (`stats`) first, then `keeping`: a criterion ranks weights by
      their unmasked gradients (with regrowth, a pruned weight's gradient is what may bring it back), and
      only then are the pruned weights' gradients zeroed;
    - after the step, `keeping` zeroes the pruned weights again.
    """

    def __init__(self, keeping: TrainingMasks | None = None, stats: UpdateHooks | None = None,
                 take_up: Callable[[], None] | None = None):
        self.keeping, self.stats, self.take_up = keeping, stats, take_up

    def before_minibatch(self) -> None:
        if self.take_up:
            self.take_up()

    def after_backward(self) -> None:
        if self.stats:
            self.stats.after_backward()
        if self.keeping:
            self.keeping.after_backward()

    def after_step(self) -> None:
        if self.keeping:
            self.keeping.after_step()
