"""Env steps to a return threshold per variant of an lth grid:
`python scripts/lth_table.py logs/pruning_lth 475`.

Per variant over its completed seeds: the mean of the last 10 epochs' returns, the env steps at which
the last-10 mean first passed the threshold (a run that never did is marked "never" and counts as its
whole length in the mean and the test), and Welch's t-test on those steps against `dense` and, for a
ticket, against the same masks on a random initialisation (`random_<method>_<sparsity>`). p < 0.05 is
in bold.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hotprune.commands.stats import welch
from hotprune.runs.runlog import RunError, load


def steps_and_returns(variant_dir: Path, threshold: float) -> tuple[list[float], list[float], list[bool]]:
    steps, returns, never = [], [], []
    for seed_dir in sorted(variant_dir.glob("s[0-9]*")):
        try:
            run = load(seed_dir)
        except RunError:
            continue
        if not run.summary or not run.summary["completed"] or not seed_dir.name[1:].isdigit():
            continue
        epochs = run.epochs()
        hit = next((e["global_step"] for e in epochs if e["reward_mean"] is not None and e["reward_mean"] > threshold),
                   None)
        never.append(hit is None)
        if hit is None:
            hit = epochs[-1]["global_step"]
        steps.append(hit)
        returns.append(run.summary["reward_mean_last"])
    return steps, returns, never


def spread(xs: list[float], scale: float = 1.0) -> str:
    return f"{statistics.fmean(xs) / scale:.1f} ± {(statistics.stdev(xs) if len(xs) > 1 else 0) / scale:.1f}"


def versus(a: list[float], b: list[float]) -> str:
    """mean(a) - mean(b) in thousands of steps, and Welch's p."""
    if len(a) < 2 or len(b) < 2:
        return "-"
    diff, p = welch(b, a)
    mark = "**" if p < 0.05 else ""
    return f"{diff / 1000:+.1f}k, {mark}p={p:.2f}{mark}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="an lth grid's directory, e.g. logs/pruning_lth")
    parser.add_argument("threshold", type=float)
    args = parser.parse_args()
    rows = {}
    for variant_dir in sorted(p for p in args.grid.iterdir() if p.is_dir() and p.name not in ("masks", "report")):
        found = steps_and_returns(variant_dir, args.threshold)
        if found[0]:
            rows[variant_dir.name] = found
    kinds = ("dense", "gradual", "pruned", "ticket", "random")
    order = sorted(rows, key=lambda n: (next((i for i, k in enumerate(kinds) if n.startswith(k)), len(kinds)), n))
    print(f"| variant | seeds | return (mean of the last 10 epochs) | steps to {args.threshold:g} per seed | "
          "mean ± std | vs dense | vs the same masks on a random init |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    dense = rows.get("dense", ([], [], []))[0]
    for name in order:
        steps, returns, never = rows[name]
        per = ", ".join("never" if missed else f"{s / 1000:.1f}k" for s, missed in zip(steps, never))
        twin = rows.get(name.replace("ticket_", "random_", 1)) if name.startswith("ticket_") else None
        against_dense = "reference" if name == "dense" else versus(steps, dense)
        print(f"| {name} | {len(steps)} | {spread(returns)} | {per} | {spread(steps, 1000)}k | {against_dense} | "
              f"{versus(steps, twin[0]) if twin else ''} |")


if __name__ == "__main__":
    main()
