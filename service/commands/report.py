"""`hotprune report RUN_DIR [RUN_DIR ...] [--out DIR]`: PNG plots of one run, or several overlaid.

Drawn from the logs alone (hotprune.runs.runlog), with matplotlib (the optional `plots` extra; only this
command imports it, never a training process):

    return.png     mean return (last 10 episodes) against env steps
    sparsity.png   training and inference sparsity per epoch; dashed lines where a compression
                   finished (its snapshot's epoch), dots where the trainer applied masks: the lag
    time.png       per-epoch rollout (waiting for data) and train time
    throughput.png samples per second per epoch
    swaps.png      every worker's swap latency (store written -> swapped) per version
    lag.png        mean policy lag per epoch (trainer version - version that acted)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hotprune.runs.runlog import Run

PLOTS: dict[str, tuple[str, str, str]] = {  # file -> title, x label, y label
    "return": ("Return", "env steps", "mean return (last 10 episodes)"),
    "sparsity": ("Sparsity (solid: training, dotted: inference)", "epoch", "sparsity"),
    "time": ("Epoch time (solid: train, dotted: rollout wait)", "epoch", "seconds"),
    "throughput": ("Throughput", "epoch", "samples / s"),
    "swaps": ("Swap latency (store written -> worker swapped)", "version", "ms"),
    "lag": ("Policy lag", "epoch", "versions"),
}


def _label(run: Run, runs: list[Run]) -> str:
    return run.path.name if len({r.path.name for r in runs}) == len(runs) else str(run.path)


def _return(ax, run: Run, label: str, color) -> None:
    points = [(e["global_step"], e["reward_mean"]) for e in run.epochs() if e["reward_mean"] is not None]
    ax.plot([p[0] for p in points], [p[1] for p in points], label=label, color=color)


def _sparsity(ax, run: Run, label: str, color) -> None:
    epochs = run.epochs()
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e["training_sparsity"] for e in epochs], label=label, color=color)
    ax.plot(x, [e["inference_sparsity"] for e in epochs], linestyle=":", color=color)
    for c in run.events("compressor", "compression_finished"):
        ax.axvline(c["epoch"], linestyle="--", linewidth=0.8, color=color)
    applied = run.events("trainer", "masks_applied")
    ax.plot([m["epoch"] for m in applied], [m["training_sparsity_verified"] for m in applied], "o", color=color)


def _time(ax, run: Run, label: str, color) -> None:
    epochs = run.epochs()
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e["train_s"] for e in epochs], label=label, color=color)
    ax.plot(x, [e["rollout_s"] for e in epochs], linestyle=":", color=color)


def _throughput(ax, run: Run, label: str, color) -> None:
    epochs = run.epochs()
    ax.plot([e["epoch"] for e in epochs], [e["samples_per_s"] for e in epochs], label=label, color=color)


def _swaps(ax, run: Run, label: str, color) -> None:
    markers = "o^sv<>Dph"
    for i, worker in enumerate(run.workers()):
        swaps = [s for s in run.events(worker, "worker_swapped") if s.get("latency_ms") is not None]
        ax.plot([s["version"] for s in swaps], [s["latency_ms"] for s in swaps], markers[i % len(markers)],
                markersize=3, color=color, label=f"{label} {worker}")


def _lag(ax, run: Run, label: str, color) -> None:
    epochs = run.epochs()
    ax.plot([e["epoch"] for e in epochs], [e["policy_lag"] for e in epochs], label=label, color=color)


DRAW: dict[str, Callable] = {"return": _return, "sparsity": _sparsity, "time": _time, "throughput": _throughput,
                             "swaps": _swaps, "lag": _lag}


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 -- optional, imported only by this command

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("hotprune report needs matplotlib: pip install -e '.[plots]'") from None
    return plt


def figure(name: str, runs: list[Run]):
    """One plot of `runs` overlaid (a matplotlib Figure)."""
    plt = _pyplot()
    title, xlabel, ylabel = PLOTS[name]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, run in enumerate(runs):
        DRAW[name](ax, run, _label(run, runs), colors[i % len(colors)])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def report(runs: list[Run], out: Path) -> list[Path]:
    """Write one PNG per plot into `out`; returns their paths."""
    plt = _pyplot()
    empty = [run.path.name for run in runs if not run.epochs()]
    if empty:
        raise RuntimeError(f"no epochs to plot in {', '.join(empty)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot write plots to {out}: {exc.strerror}") from None
    paths = []
    for name in PLOTS:
        fig = figure(name, runs)
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
