"""`hotprune report RUN_DIR [RUN_DIR ...] [--out DIR]`: PNG plots of runs, every one against env steps.

Drawn from the logs alone (hotprune.runs.runlog), with matplotlib (the optional `plots` extra; only this
command imports it, never a training process):

    return.png     mean return (last 10 episodes)
    sparsity.png   training, inference (and SAC's critics') sparsity in %; for a single run, dashed
                   lines where a compression finished (its snapshot's env step), dots where the trainer
                   applied its masks: the lag between the two
    losses.png     the algorithm's losses and health, one panel each (those of hotprune.runs.metrics.LOSSES
                   the epoch records have: PPO's or SAC's)
    time.png       per-epoch train time and rollout (waiting for data) time
    throughput.png samples per second per epoch
    swaps.png      every worker's swap latency (store written -> swapped), at the env step the version
                   was published
    lag.png        mean policy lag per epoch (trainer version - version that acted)

Runs are drawn in groups: the seeds of one variant (the experiments grid passes its variants; `hotprune
report` puts runs named s<seed> in the same directory together). A group of several runs is drawn as
its interquartile mean over seeds (hotprune.commands.stats, the table's statistics) with a shaded 95%
bootstrap interval, and each seed as a thin line; curves are interpolated onto the env steps the seeds
share. One figure per environment: runs of several environments are never drawn on one axis
(`<plot>-<env id>.png` each); runs of several environments or algorithms given together are named in
a note, printed and in the figures' titles.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hotprune.commands import stats
from hotprune.runs.metrics import LOSSES
from hotprune.runs.runlog import Run

PLOT_REPS = 1000  # bootstrap resamples per band: a band's edge, not a table's number
MAX_POINTS = 300  # points of an interpolated group curve
LEGEND_COLUMNS = 4
PANELS_PER_ROW = 3  # of losses.png
TITLE_WIDTH = 100  # characters of a title line
SEED_DIR = re.compile(r"s\d+")


@dataclass(frozen=True)
class Curve:
    """An epoch-record field against env steps, times `scale`, in `style`; `part` names it in the title
    when a plot has several curves per run (the legend names the runs)."""

    key: str
    scale: float = 1.0
    style: str = "-"
    part: str = ""


@dataclass(frozen=True)
class Plot:
    title: str
    ylabel: str
    curves: tuple[Curve, ...] = ()


PLOTS: dict[str, Plot] = {
    "return": Plot("Return", "mean return (last 10 episodes)", (Curve("reward_mean"),)),
    "sparsity": Plot("Sparsity", "sparsity (%)", (
        Curve("training_sparsity", 100, part="training"), Curve("inference_sparsity", 100, ":", "inference"),
        Curve("critic_sparsity", 100, "--", "critics"))),
    "losses": Plot("Losses and health", "", (Curve(""),)),  # one panel per field present: LOSSES
    "time": Plot("Epoch time", "seconds per epoch",
                 (Curve("train_s", part="train"), Curve("rollout_s", style=":", part="waiting for data"))),
    "throughput": Plot("Throughput", "env samples / s", (Curve("samples_per_s"),)),
    "swaps": Plot("Swap latency (store written -> worker swapped)", "ms"),
    "lag": Plot("Policy lag", "versions (mean per epoch)", (Curve("policy_lag"),)),
}


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415 -- optional, imported only by this command

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise RuntimeError("hotprune report needs matplotlib: pip install -e '.[plots]'") from None
    return plt


def groups_of(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of `hotprune report` in groups: runs named s<seed> in one directory are a variant's seeds
    (an experiments grid's layout); any other run is its own group. Labels are directory names, or
    whole paths where names repeat."""
    keys = [run.path.parent if SEED_DIR.fullmatch(run.path.name) else run.path for run in runs]
    names = {key.name for key in keys}
    short = len(names) == len(set(keys))
    out: dict[str, list[Run]] = {}
    for key, run in zip(keys, runs):
        out.setdefault(key.name if short else str(key), []).append(run)
    return out


def _series(run: Run, key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    points = [(e["global_step"], e[key] * scale) for e in run.epochs()
              if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)]
    return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)


def band(ax, series: list[tuple[np.ndarray, np.ndarray]], color, label: str, style: str = "-") -> None:
    """One group's curve: a single run as it is; several as thin per-run lines, their IQM over the env steps
    they share (interpolated) and its 95% bootstrap interval shaded."""
    series = [(x, y) for x, y in series if len(x)]
    if len(series) == 1:
        ax.plot(*series[0], color=color, linestyle=style, label=label)
        return
    if not series:
        return
    for x, y in series:
        ax.plot(x, y, color=color, linestyle=style, linewidth=0.6, alpha=0.4)
    low, high = max(x[0] for x, _ in series), min(x[-1] for x, _ in series)
    steps = np.unique(np.concatenate([x[(x >= low) & (x <= high)] for x, _ in series]))
    if len(steps) > MAX_POINTS:
        steps = np.linspace(low, high, MAX_POINTS)
    ys = np.stack([np.interp(steps, x, y) for x, y in series])[:, None, :]  # (runs, one task, points)
    lower, upper = stats.iqm_interval(ys, reps=PLOT_REPS)
    ax.fill_between(steps, lower, upper, color=color, alpha=0.2, linewidth=0)
    ax.plot(steps, stats.iqm(ys), color=color, linestyle=style, linewidth=1.8, label=f"{label} ({len(series)} seeds)")


def _curves(ax, plot: Plot, groups: dict[str, list[Run]], colors) -> None:
    for (label, runs), color in zip(groups.items(), colors):
        for i, curve in enumerate(plot.curves):  # the legend names each group once
            band(ax, [_series(r, curve.key, curve.scale) for r in runs], color, label if i == 0 else "_", curve.style)


def _sparsity_events(ax, groups: dict[str, list[Run]], colors) -> None:
    """A single run's compressions finished (thin vertical lines) and masks applied (dots), at their epochs'
    env steps."""
    for runs, color in zip(groups.values(), colors):
        if len(runs) != 1:
            continue
        steps = {e["epoch"]: e["global_step"] for e in runs[0].epochs()}
        for c in runs[0].events("compressor", "compression_finished"):
            if c["epoch"] in steps:
                ax.axvline(steps[c["epoch"]], linewidth=0.8, alpha=0.6, color=color)
        applied = [m for m in runs[0].events("trainer", "masks_applied") if m["epoch"] in steps]
        ax.plot([steps[m["epoch"]] for m in applied], [m["training_sparsity_verified"] * 100 for m in applied], "o",
                markersize=5, color=color)


def _swaps(ax, groups: dict[str, list[Run]], colors) -> None:
    for (label, runs), color in zip(groups.items(), colors):
        x, y = [], []
        for run in runs:
            steps = {e["epoch"]: e["global_step"] for e in run.epochs()}
            published = {s["version"]: steps.get(s["epoch"], 0) for s in run.events("trainer", "snapshot_published")}
            for worker in run.workers():
                swaps = [s for s in run.events(worker, "worker_swapped")
                         if s.get("latency_ms") is not None and s["version"] in published]
                x += [published[s["version"]] for s in swaps]
                y += [s["latency_ms"] for s in swaps]
        ax.plot(x, y, "o", markersize=2.5, alpha=0.6, color=color, label=label)


def losses_present(runs: list[Run]) -> list[str]:
    """The loss fields (hotprune.runs.metrics.LOSSES, in its order) that some epoch record of `runs` has."""
    return [k for k in LOSSES if any(len(_series(r, k)[0]) for r in runs)]


def _note(groups: dict[str, list[Run]]) -> str:
    """What the runs given together are, when they are not all one environment and algorithm."""
    runs = [r for rs in groups.values() for r in rs]
    envs = sorted({r.config.env_id for r in runs})
    algorithms = sorted({r.config.algorithm for r in runs})
    parts = []
    if len(envs) > 1:
        parts.append(f"{len(envs)} environments ({', '.join(envs)}): one figure each")
    if len(algorithms) > 1:
        parts.append(f"runs of {len(algorithms)} algorithms ({', '.join(a.upper() for a in algorithms)}): returns "
                     "and losses on different scales")
    return "; ".join(parts)


STYLES = {"-": "solid", ":": "dotted", "--": "dashed"}


def _title(name: str, env: str, groups: dict[str, list[Run]], note: str) -> str:
    """What the figure shows: environment and algorithms, what each line style is, how seeds are drawn."""
    plot, runs = PLOTS[name], [r for rs in groups.values() for r in rs]
    algorithms = " and ".join(sorted({r.config.algorithm.upper() for r in runs}))
    styles = [f"{STYLES[c.style]}: {c.part}" for c in plot.curves if c.part and any(len(_series(r, c.key)[0])
                                                                                      for r in runs)]
    lines = [f"{plot.title}: {env}, {algorithms}" + (f" ({', '.join(styles)})" if len(styles) > 1 else "")]
    if name == "sparsity" and any(len(rs) == 1 for rs in groups.values()):
        lines.append("a single run's thin vertical lines: compressions finished; dots: its masks applied")
    if plot.curves and any(len(rs) > 1 for rs in groups.values()):
        lines.append("line: IQM over seeds, band: its 95% bootstrap CI, thin lines: each seed")
    return "\n".join(lines + (textwrap.wrap(f"Note: {note}", TITLE_WIDTH) if note else []))


def figure(name: str, groups: dict[str, list[Run]], env: str = "", note: str = ""):
    """One plot of `groups` (label -> runs, all of environment `env`) as a matplotlib Figure."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter  # noqa: PLC0415

    plot = PLOTS[name]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = [palette[i % len(palette)] for i in range(len(groups))]
    env = env or next(iter(groups.values()))[0].config.env_id
    keys = losses_present([r for rs in groups.values() for r in rs]) if name == "losses" else [None]
    cols = min(PANELS_PER_ROW, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 4.5) if cols == 1 else (12, 2.6 * rows + 1), dpi=100,
                             layout="constrained", squeeze=False)
    for ax, key in zip(axes.flat, keys):
        if key is not None:
            _curves(ax, Plot(key, key, (Curve(key),)), groups, colors)
            ax.set_title(key, fontsize="medium")
        elif name == "swaps":
            _swaps(ax, groups, colors)
        else:
            _curves(ax, plot, groups, colors)
        if name == "sparsity":
            _sparsity_events(ax, groups, colors)
        ax.set(xlabel="env steps", ylabel=plot.ylabel if key is None else "")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(_title(name, env, groups, note), fontsize="medium")
    shown = {}  # label -> handle, over every panel: a group may have only some of the losses
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(label, handle)
    if shown:  # below the axes, never over a curve or the title
        fig.legend(list(shown.values()), list(shown), loc="outside lower center",
                   ncols=min(LEGEND_COLUMNS, len(shown)), fontsize="small", frameon=False)
    return fig


def report(groups: dict[str, list[Run]] | list[Run], out: Path, log: Callable[[str], object] = print) -> list[Path]:
    """Write the plots of `groups` (label -> runs; a list of runs is grouped by `groups_of`) into `out`, one
    figure per plot and environment; returns their paths."""
    plt = _pyplot()
    groups = groups_of(groups) if isinstance(groups, list) else groups
    empty = [run.path.name for runs in groups.values() for run in runs if not run.epochs()]
    if empty or not groups:
        raise RuntimeError(f"no epochs to plot in {', '.join(empty) or 'no run'}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot write plots to {out}: {exc.strerror}") from None
    note = _note(groups)
    if note:
        log(f"note: {note}")
    by_env: dict[str, dict[str, list[Run]]] = {}
    for label, runs in groups.items():
        for run in runs:
            by_env.setdefault(run.config.env_id, {}).setdefault(label, []).append(run)
    paths = []
    for env, env_groups in by_env.items():
        for name in PLOTS:
            if name == "losses" and not losses_present([r for rs in env_groups.values() for r in rs]):
                continue
            fig = figure(name, env_groups, env, note)
            path = out / (f"{name}.png" if len(by_env) == 1 else f"{name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', env)}.png")
            fig.savefig(path)
            plt.close(fig)
            paths.append(path)
    return paths
