"""`hotprune show RUN_DIR` and `hotprune list [RUNS_DIR]`: a finished run seen again, from its logs.

Both show what they could read and say what they could not (hotprune.runs.runlog counts it): a log
line that is not a well-formed event never stops them."""

from __future__ import annotations

from pathlib import Path

from hotprune.runs import cleanup, console
from hotprune.runs.runlog import Run, RunError, load


def timeline(run: Run) -> list[str]:
    """The pruning story: the plan, each compression, when the trainer took the masks up."""
    lines = [console.human_line(e) for e in run.events("compressor", "pruning_planned")]
    applied = {e["version"]: e for e in run.events("trainer", "masks_applied")}
    for e in run.events("compressor", "compression_finished"):
        taken = applied.get(e["version"])
        lines.append(
            f"  due epoch {e['due_epoch']:>4} | snapshot v{e['version']} (epoch {e['epoch']}) -> "
            f"{console.pruned_to(e)} ({e['params_kept']:,}/{e['params_total']:,} parameters kept, "
            f"churn {e['mask_churn']:,}, {e['duration_ms']:.1f} ms)"
            + (f" | trainer took it up in epoch {taken['epoch']}" if taken else ""))
    for e in run.events("compressor", "compression_failed"):
        lines.append(f"  due epoch {e['due_epoch']:>4} | snapshot v{e['version']} FAILED: {e['reason']}")
    return [line for line in lines if line]


def show(run: Run) -> str:
    c = run.config
    parts = [f"run {c.run_id}: {c.env_id}, {console.kind_of_run(c.mode, c.prune_training_model, c.pruning.method)}"]
    parts += timeline(run)
    parts.append(console.human_line(run.summary) if run.summary else "no summary: the run did not finish (yet)")
    if run.finished:  # a stopped or failed run's line says how to resume it
        parts.append(console.human_line(run.finished))
    elif not (run.summary and run.summary["completed"]) and not cleanup.run_pids(run.path):
        parts.append(f"no process of the run is alive and none said it finished (killed?): resume it: "
                     f"{console.resume_command(run.path)}")
    parts += [f"left out: {unreadable}" for unreadable in run.unreadable]
    return "\n".join(parts)


COLUMNS = ("run", "env", "mode", "", "method", "struct", "target", "epochs", "outcome", "last-10 return")
RIGHT = {"target", "epochs"}  # numbers, aligned right; the other columns left


def _cells(run_dir: Path) -> list[str] | str:
    """One run's row of `list`, or for a directory that is not a readable run, its name and why."""
    try:
        run = load(run_dir)
    except RunError as exc:
        return f"{run_dir.name} ({exc})"
    c, s, fin = run.config, run.summary, run.finished
    outcome = fin["outcome"] if fin else ("completed" if s and s["completed"] else "unfinished")
    ret = f"{s['reward_mean_last']:.1f}" if s and s["reward_mean_last"] is not None else "-"
    unread = sum(u.lines or 1 for u in run.unreadable)
    return [c.run_id, c.env_id, c.mode, "both" if c.prune_training_model else "ts", c.pruning.method,
            c.pruning.structure, "-" if c.pruning.method == "none" else format(c.pruning.target_sparsity, ".0%"),
            f"{s['epochs'] if s else '?'}/{c.total_epochs}", outcome,
            ret + (f" ({unread} unreadable log lines)" if unread else "")]


def list_runs(runs_dir: Path) -> str:
    """One line per run, the columns as wide as their widest cell (a run id can be long)."""
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir} is not a directory")
    dirs = sorted(d for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink())
    if not dirs:
        return f"no runs in {runs_dir}"
    rows = [_cells(d) for d in dirs]
    table = [list(COLUMNS), *(row for row in rows if isinstance(row, list))]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]

    def line(row: list[str] | str) -> str:
        if isinstance(row, str):
            return row
        cells = [f"{cell:>{w}}" if name in RIGHT else f"{cell:<{w}}" for name, cell, w in zip(COLUMNS, row, widths)]
        return " ".join([*cells, row[-1]])

    return "\n".join(line(row) for row in [list(COLUMNS), *rows])
