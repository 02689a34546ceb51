"""`hotprune show RUN_DIR` and `hotprune list [RUNS_DIR]`: a finished run seen again, from its logs.

Both show what they could read and say what they could not (hotprune.runs.runlog counts it): a log
line that is not a well-formed event never stops them."""

from __future__ import annotations

from pathlib import Path

from hotprune.runs import console
from hotprune.runs.runlog import Run, RunError, load


def timeline(run: Run) -> list[str]:
    """The pruning story: the plan, each compression, when the trainer took the masks up."""
    lines = [console.human_line(e) for e in run.events("compressor", "pruning_planned")]
    applied = {e["version"]: e for e in run.events("trainer", "masks_applied")}
    for e in run.events("compressor", "compression_finished"):
        taken = applied.get(e["version"])
        lines.append(
            f"  due epoch {e['due_epoch']:>4} | snapshot v{e['version']} (epoch {e['epoch']}) -> "
            f"{e['achieved_sparsity']:.1%} ({e['params_kept']:,}/{e['params_total']:,} parameters kept, "
            f"churn {e['mask_churn']:,}, {e['duration_ms']:.1f} ms)"
            + (f" | trainer took it up in epoch {taken['epoch']}" if taken else ""))
    for e in run.events("compressor", "compression_failed"):
        lines.append(f"  due epoch {e['due_epoch']:>4} | snapshot v{e['version']} FAILED: {e['reason']}")
    return [line for line in lines if line]


def show(run: Run) -> str:
    parts = [f"run {run.config.run_id}: {run.config.env_id}, {run.config.mode}, "
             f"{'both pruned' if run.config.prune_training_model else 'teacher-student'}"]
    parts += timeline(run)
    parts.append(console.human_line(run.summary) if run.summary else "no summary: the run did not finish (yet)")
    if run.finished:
        parts.append(console.human_line(run.finished))
    parts += [f"left out: {unreadable}" for unreadable in run.unreadable]
    return "\n".join(parts)


def one_line(run_dir: Path) -> str:
    try:
        run = load(run_dir)
    except RunError as exc:
        return f"{run_dir.name:<32} ({exc})"
    c, s, fin = run.config, run.summary, run.finished
    outcome = fin["outcome"] if fin else ("completed" if s and s["completed"] else "unfinished")
    ret = f"{s['reward_mean_last']:.1f}" if s and s["reward_mean_last"] is not None else "-"
    return (f"{c.run_id:<32} {c.env_id:<14} {c.mode:<5} {'both' if c.prune_training_model else 'ts':<4} "
            f"{c.pruning.method:<9} {c.pruning.structure:<6} "
            f"{'-' if c.pruning.method == 'none' else format(c.pruning.target_sparsity, '.0%'):>5} "
            f"{(s['epochs'] if s else '?')!s:>5}/{c.total_epochs:<5} {outcome:<12} return {ret}"
            + (f" ({unread} unreadable log lines)" if (unread := sum(u.lines or 1 for u in run.unreadable)) else ""))


def list_runs(runs_dir: Path) -> str:
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir} is not a directory")
    dirs = sorted(d for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink())
    header = (f"{'run':<32} {'env':<14} {'mode':<5} {'':<4} {'method':<9} {'struct':<6} {'target':>5} "
              f"{'epochs':>11} {'outcome':<12} last-10 return")
    return "\n".join([header, *(one_line(d) for d in dirs)]) if dirs else f"no runs in {runs_dir}"
