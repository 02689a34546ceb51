"""When to compress, and to what sparsity: the planned steps, and which one a snapshot serves.

A step is due from its epoch on. The compressor works on the newest snapshot and drops older ones,
so the snapshot of a step's own epoch may never reach it: the first snapshot at or past a due epoch
serves it (and every earlier due step it passed, at the latest one's sparsity). A step is never
skipped because its snapshot was dropped.

Steps: from `start_epoch` every `every` epochs up to the run's last epoch, each at the constant
target or on the cubic schedule s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3 (Zhu & Gupta
2017), held at s_f after t1. A step to 0% prunes nothing and is left out of the plan; so is, with
nested masks (no `regrow`), a step that does not raise the sparsity: it would select nothing new, so
a constant schedule prunes once.

Dynamic sparse training (methods `set`, `rigl`: hotprune.pruning.dynamic) keeps the target from the
first compression at `start_epoch` on, and then every `every` epochs before `update_end_epoch` T_end
updates the masks: each layer drops the fraction f_t of its kept weights and regrows as many, with
f_t = alpha / 2 * (1 + cos(pi * t / T_end)) at epoch t (RigL's cosine decay, alpha =
`drop_fraction`). From T_end on the masks are frozen: no step is planned there (f_T_end is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hotprune.pruning.criteria import DYNAMIC

SCHEDULES = ("constant", "cubic")


@dataclass(frozen=True)
class Step:
    epoch: int
    sparsity: float
    fraction: float = 0.0  # dynamic sparse training: the share of each layer's kept weights dropped and regrown


def drop_fraction(epoch: int, *, alpha: float, end_epoch: int) -> float:
    """RigL's cosine decay of the update fraction: alpha / 2 * (1 + cos(pi * t / T_end)), 0 from T_end on."""
    return alpha / 2 * (1 + math.cos(math.pi * epoch / end_epoch)) if epoch < end_epoch else 0.0


def scheduled_sparsity(epoch: int, *, target: float, start_epoch: int, schedule: str = "constant",
                       initial: float = 0.0, end_epoch: int | None = None) -> float:
    """The schedule's sparsity at `epoch` (>= start_epoch)."""
    if schedule == "constant":
        return target
    if end_epoch is None or end_epoch <= start_epoch:
        raise ValueError(f"cubic schedule needs end_epoch > start_epoch, got {end_epoch} <= {start_epoch}")
    progress = min(1.0, (epoch - start_epoch) / (end_epoch - start_epoch))
    return target + (initial - target) * (1.0 - progress) ** 3


def plan(cfg) -> tuple[list[Step], list[str]]:
    """The run's compression steps and warnings about a schedule that degenerates."""
    p = cfg.pruning
    if p.method in ("none", "fixed"):  # fixed: the masks of its file, from the start
        return [], []
    if p.method in DYNAMIC:
        return _dynamic_plan(cfg)
    end = cfg.pruning_end_epoch
    epochs = range(p.start_epoch, cfg.total_epochs + 1, p.every)
    all_steps = [Step(e, scheduled_sparsity(e, target=p.target_sparsity, start_epoch=p.start_epoch,
                                            schedule=p.schedule, initial=p.initial_sparsity, end_epoch=end))
                 for e in epochs]
    steps = [s for s in all_steps if s.sparsity > 0]
    if not p.regrow:  # nested masks: a step that does not raise the sparsity selects nothing new
        steps = [s for i, s in enumerate(steps) if i == 0 or s.sparsity > steps[i - 1].sparsity]
    warnings = []
    if not all_steps:
        warnings.append(f"no compression: start_epoch {p.start_epoch} is after the last epoch {cfg.total_epochs}")
    elif all_steps[0].sparsity == 0:
        warnings.append(f"the first step (epoch {all_steps[0].epoch}) prunes 0% and is left out"
                        + (f"; the first compression is at epoch {steps[0].epoch}" if steps else ""))
    if p.schedule == "cubic":
        ramp = [s for s in all_steps if s.epoch <= end and s.sparsity > 0]
        if len(ramp) <= 2:
            warnings.append(f"the cubic schedule prunes in {len(ramp)} step(s) between epochs {p.start_epoch} and "
                            f"{end}: it is not gradual (every={p.every}, end_epoch={end})")
    if all_steps and not steps:
        warnings.append("every step prunes 0%: nothing will be pruned")
    return steps, warnings


def _dynamic_plan(cfg) -> tuple[list[Step], list[str]]:
    """The first compression at start_epoch, then an update every `every` epochs before T_end."""
    p, end = cfg.pruning, cfg.update_end_epoch
    if p.start_epoch > cfg.total_epochs:
        return [], [f"no compression: start_epoch {p.start_epoch} is after the last epoch {cfg.total_epochs}"]
    steps = [Step(p.start_epoch, p.target_sparsity)]  # before T_end every f_t is > 0
    steps += [Step(e, p.target_sparsity, drop_fraction(e, alpha=p.drop_fraction, end_epoch=end))
              for e in range(p.start_epoch + p.every, min(end, cfg.total_epochs + 1), p.every)]
    warnings = [] if len(steps) > 1 else [f"no mask update between the first compression (epoch {p.start_epoch}) "
                                          f"and update_end_epoch {end}: the masks never change (every={p.every})"]
    return steps, warnings


class Schedule:
    """Hands out the due steps, each once, to the snapshots that serve them."""

    def __init__(self, steps: list[Step]):
        self.steps = list(steps)
        self.served = 0  # steps[:served] are done

    def is_step(self, epoch: int) -> bool:
        return any(s.epoch == epoch for s in self.steps)

    def due(self, epoch: int) -> tuple[Step, list[int]] | None:
        """The step the snapshot of `epoch` serves, and the epochs of earlier due steps it folds in;
        None when no step is due. Call `done()` once the step was carried out."""
        due = [s for s in self.steps[self.served :] if s.epoch <= epoch]
        if not due:
            return None
        return due[-1], [s.epoch for s in due[:-1]]

    def done(self, step: Step) -> None:
        self.served = max(self.served, self.steps.index(step) + 1)

