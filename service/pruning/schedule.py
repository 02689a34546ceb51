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
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "cubic")


@dataclass(frozen=True)
class Step:
    epoch: int
    sparsity: float


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

