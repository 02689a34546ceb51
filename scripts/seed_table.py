"""Per-seed rows of an experiments grid: `python scripts/seed_table.py logs/pruning_sac [--threshold -250]`.

`hotprune experiments` reports each variant over its seeds; this lists every completed run: its
return at the end (the last epoch's mean of the last 10 episodes) and the mean of its last 10
epochs', the env steps until the return first passed the threshold, env steps per second of wall
time (supervisor start to finish: what a user waits, not the mean of the epochs' rates) and the final
sparsities (actor training / inference, and the critics' when the trainer pruned them).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from hotprune.runs.runlog import RunError, load


def row(variant: str, seed_dir: Path, threshold: float) -> str | None:
    try:
        run = load(seed_dir)
    except RunError:
        return None
    summary, epochs = run.summary, run.epochs()
    if not summary or not summary["completed"]:
        return None
    reached = next((e["global_step"] for e in epochs if e["reward_mean"] is not None and e["reward_mean"] > threshold),
                   None)
    times = {e["event"]: datetime.fromisoformat(e["ts"]) for e in run.events("supervisor")
             if e["event"] in ("run_started", "run_finished")}
    wall = (times["run_finished"] - times["run_started"]).total_seconds()
    critic = summary.get("final_critic_sparsity")
    last = epochs[-1]
    return (f"| {variant} | {seed_dir.name[1:]} | {last['reward_mean']:.1f} | {summary['reward_mean_last']:.1f} | "
            f"{'never' if reached is None else f'{reached:,}'} | {last['global_step'] / wall:.0f} | {wall:.0f} s | "
            f"{summary['final_training_sparsity']:.1%} / {summary['final_inference_sparsity']:.1%}, "
            f"{'-' if critic is None else f'{critic:.1%}'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="an experiments grid: logs/pruning_<experiment>")
    parser.add_argument("--threshold", type=float, default=-250.0, help="the return to count env steps to")
    args = parser.parse_args(argv)
    print(f"| variant | seed | return at the end (last 10 episodes) | mean of the last 10 epochs' | env steps to "
          f"> {args.threshold:g} | env steps/s (steps / wall) | wall time | sparsity actor train / infer, critics |")
    print("| --- " * 8 + "|")
    for variant in sorted(p for p in args.grid.iterdir() if p.is_dir()):
        for seed_dir in sorted(p for p in variant.iterdir() if p.name[:1] == "s" and p.name[1:].isdigit()):
            line = row(variant.name, seed_dir, args.threshold)
            if line:
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
