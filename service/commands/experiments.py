"""`hotprune experiments --experiment NAME | --grid FILE.toml`: a grid of service runs, resumable, ending in a
results table and plots.

A grid (hotprune.commands.grids: a TOML file; the built-in ones ship as files too) is variants, each a set
of config overrides, and seeds; each (variant, seed) is one `hotprune run` whose run directory is
`<root>/pruning_<grid>/<variant>/s<seed>` (the seed's `logs/pruning_basic/...` layout with root `logs`).
A (variant, seed) whose run completed is not run again, so an interrupted grid resumes where it
stopped; an unfinished one is moved aside (`s1.failed-<time>`) and run again. A grid whose finished
runs were made with other settings (another `--set`, an edited grid file) is refused before anything
runs: its finished runs are results, never relabelled as failed, and a grid directory holds one set
of settings, so its table compares like with like (`plan`).

The table (results.md and results.csv next to the variants) has, per variant over its seeds: the
return as an IQM with a 95% stratified-bootstrap interval (hotprune.commands.stats), samples to the
environment's reward threshold, epoch time with its rollout/train split, throughput, final
sparsities, the pruned policy's parameters, swap latency and policy lag. Whether a variant's return
differs from the first variant's beyond seed-to-seed noise is Welch's t-test on the per-seed returns
("differs" when p < 0.05). A bootstrap test of 3 seeds was tried first and called same-distribution
samples different 19% of the time (3 possible values per resample); Welch's test keeps that near 5%
for normal noise, and with few seeds it has little power: "within noise" does not mean equal.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from hotprune.config import Config, ConfigError, load_config, to_toml
from hotprune.commands import stats
from hotprune.commands.evaluate import MAX_EPISODES, evaluate
from hotprune.commands.grids import PREPARE, Grid, Variant
from hotprune.envs import EnvSource
from hotprune.roles.entry import die_with_parent
from hotprune.runs.runlog import Run, RunError, load

ALPHA = 0.05
# Thresholds for environments gymnasium gives none: the issues' targets (Pendulum: above -250)
THRESHOLDS = {"Pendulum-v1": -250.0}
CORES_PER_RUN = 2  # trainer + compressor + workers: a run keeps about two cores busy
MIN_SEEDS_TO_COMPARE = 2  # a sample variance needs two
EVAL_FILE = "eval_deterministic.json"
SHOWN_DIFFERENCES = 3  # settings named in the refusal of a grid whose finished runs had others


def hotprune_command() -> list[str]:
    return [sys.executable, "-m", "hotprune.cli"]


def completed(run_dir: Path) -> bool:
    try:
        summary = load(run_dir).summary
    except RunError:
        return False
    return bool(summary and summary["completed"])


def directory(grid: Grid, root: Path) -> Path:
    return root / f"pruning_{grid.name}"


def plan(grid: Grid, seeds: list[int], root: Path, extra: list[str],
         variants: Sequence[str] = ()) -> list[tuple[Variant, int, Path]]:
    """Every (variant, seed) run with its directory, seed by seed (`variants`: only these of the grid's),
    after checking every run's config and that no finished run of the grid was made with other settings."""
    names = [v.name for v in grid.variants]
    if unknown := [v for v in variants if v not in names]:
        raise ConfigError(f"--variants must be among {grid.name}'s {', '.join(names)}, got {', '.join(unknown)}")
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers, got {seeds}")
    base = directory(grid, root)
    seeds = list(dict.fromkeys(seeds))  # a seed given twice is one run
    # seed by seed, the variants alternating: a grid cut short (or a machine whose load drifts) still
    # compares every variant on the same seeds and under the same conditions
    cells = [(v, s, base / v.name / f"s{s}") for s in seeds for v in grid.variants
             if not variants or v.name in variants]
    for v, s, run_dir in cells:  # every variant's config is valid before anything runs
        try:
            planned = planned_config(v, s, run_dir, extra)
        except ConfigError as exc:
            load_config(None, extra)  # a --set bad on its own is the command line's fault, not the grid file's
            raise ConfigError(f"{grid.path}: variant {v.name}: {exc}") from None
        changed = _changed(run_dir, planned)
        if changed:
            raise ConfigError(
                f"{base} has finished runs made with other settings ({v.name}/s{s}: {changed}); a grid keeps "
                "its finished runs: start a new grid for these settings with another --root")
    return cells


def _changed(run_dir: Path, planned: str) -> str | None:
    """The settings in which a finished run differs from its planned config ("a: 1 -> 2, ..."), or None if
    it has not finished or has the same ones."""
    if not completed(run_dir):
        return None
    kept = _settings((run_dir / "config.toml").read_text(errors="replace")) or {}
    planned_settings = _settings(planned)
    if kept == planned_settings:
        return None
    old, new = _flat(kept), _flat(planned_settings)
    # a setting added to hotprune since the run was made, planned at its default, is what the run did
    defaults = _flat(_settings(to_toml(Config())))
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)
            and not (k not in old and k in defaults and new[k] == defaults[k])]
    if not keys:
        return None
    shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:SHOWN_DIFFERENCES])
    return shown + (f" and {len(keys) - SHOWN_DIFFERENCES} more" if len(keys) > SHOWN_DIFFERENCES else "")


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _overrides(variant: Variant, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    """The run's settings (`--set` strings) but where it runs (`location`)."""
    base = str(run_dir.parent.parent)
    filled = [o.replace("{base}", base).replace("{seed}", str(seed)) for o in variant.overrides]
    return [*filled, *extra, f"seed={seed + variant.seed_offset}"]


def location(run_dir: Path) -> list[str]:
    """The settings that put a run in `run_dir`."""
    return [f"runs_dir={run_dir.parent}", f"run_id={run_dir.name}"]


def planned_config(variant: Variant, seed: int, run_dir: Path, extra: list[str]) -> str:
    """The config.toml this (variant, seed) run has: a kept run with another one is not reused."""
    return to_toml(load_config(None, [*_overrides(variant, seed, run_dir, extra), *location(run_dir)]))


def _settings(config_toml: str) -> dict | None:
    """A config.toml's settings but its run uid (each run makes its own) and its runs_dir (where it ran: a
    cell run on a Ray node ran in that node's directory; its own directory is what decides, as
    runlog.load has it); None if it cannot be read."""
    try:
        data = tomllib.loads(config_toml)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return None
    data.pop("run_uid", None)
    data.pop("runs_dir", None)
    return data


def set_aside(run_dir: Path) -> Path:
    """A failed or interrupted run directory moved aside (`s1.failed-<time>`), kept for its logs."""
    aside = run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(run_dir), aside)
    return aside


def run_here(settings: list[str], run_dir: Path) -> int:
    """`hotprune run` with these settings in `run_dir` (made here, fresh), on this machine; its exit code.
    What the run printed is its console.txt."""
    command = hotprune_command() + ["run", *(x for a in [*settings, *location(run_dir)] for x in ("--set", a))]
    run_dir.mkdir(parents=True)
    with open(run_dir / "console.txt", "w") as console:
        # the run stops if this process does (a Ray worker killed with its node or by Ctrl-C's cancel)
        return subprocess.run(command, stdout=console, stderr=subprocess.STDOUT, preexec_fn=die_with_parent).returncode


class Here:
    """Where a grid's cells run by default: `hotprune run` on this machine, up to its cores' worth at once.
    hotprune.commands.ray_grid.RayCells is the other place, with the same three members."""

    def most_jobs(self) -> int:
        return max(1, (os.cpu_count() or 1) // CORES_PER_RUN)

    def run(self, settings: list[str], run_dir: Path) -> int:
        return run_here(settings, run_dir)

    def cancel(self) -> None:
        """Nothing: Ctrl-C reached the runs as well (they share this terminal's process group)."""


def run_one(variant: Variant, seed: int, run_dir: Path, extra: list[str], log, cells: Here) -> bool:
    """One run of the grid where `cells` runs them, unless it finished (plan refused a grid whose finished
    runs differ from it)."""
    if completed(run_dir):
        log(f"{variant.name} seed {seed}: done already ({run_dir})")
        return True
    if run_dir.exists():  # failed or interrupted: keep it aside, run again
        log(f"{variant.name} seed {seed}: an unfinished run moved to {set_aside(run_dir).name}")
    t0 = time.monotonic()
    code = cells.run(_overrides(variant, seed, run_dir, extra), run_dir)
    log(f"{variant.name} seed {seed}: exit {code} in {time.monotonic() - t0:.0f}s")
    return code == 0


def run_grid(grid: Grid, seeds: list[int] | None, root: Path, jobs: int, extra: list[str],
             log=print, eval_episodes: int = 0, variants: Sequence[str] = (), ray: str | None = None,
             ray_shared: Path | None = None) -> tuple[Path, list[dict], int]:
    """Run the grid (on its own seeds if `seeds` is None; `variants`: only these) on this machine, or on
    the Ray cluster at `ray` (hotprune.commands.ray_grid; `ray_shared`: a path every node sees); returns
    the results table (results.md), its rows (write_results) and how many runs failed."""
    if not 0 <= eval_episodes <= MAX_EPISODES:
        raise ConfigError(f"--eval-episodes must be in [0, {MAX_EPISODES}], got {eval_episodes}")
    if ray_shared is not None and ray is None:
        raise ConfigError("--ray-shared names a path every node of a Ray cluster sees: it needs --ray")
    if ray is not None:
        root = root.absolute()  # what the nodes are told: their working directories are others
    seeds = list(dict.fromkeys(grid.seeds if seeds is None else seeds))
    cells = plan(grid, seeds, root, extra, variants)
    base = directory(grid, root)
    with _cells_at(ray, ray_shared, grid, root, log) as where:
        most = where.most_jobs()
        if not 1 <= jobs <= most:
            raise ConfigError(f"--jobs must be in [1, {most}] {'here' if ray is None else 'on this Ray cluster'} "
                              f"(a run keeps about {CORES_PER_RUN} cores busy), got {jobs}")
        base.mkdir(parents=True, exist_ok=True)
        ok = []
        for stage in sorted({v.stage for v, _, _ in cells}):
            if stage and grid.prepare:
                PREPARE[grid.prepare["step"]][0](base, seeds, grid.prepare, log)
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                try:
                    ok += pool.map(lambda item: run_one(*item, extra, log, where),
                                   [c for c in cells if c[0].stage == stage])
                except BaseException:  # Ctrl-C: the runs in flight stop too, wherever they are
                    where.cancel()
                    raise
    results, rows = write_results(grid, seeds, root, eval_episodes)
    plot(grid, seeds, root, log)
    return results, rows, ok.count(False)


@contextmanager
def _cells_at(ray: str | None, shared: Path | None, grid: Grid, root: Path, log):
    """Where the grid's cells run: here, or as tasks on the Ray cluster at `ray` (connected for the grid)."""
    if ray is None:
        yield Here()
        return
    from hotprune.commands import ray_grid  # noqa: PLC0415 -- ray: only with --ray

    with ray_grid.RayCells(ray, shared, grid, root, log) as cells:
        yield cells


def plot(grid: Grid, seeds: list[int], root: Path, log) -> None:
    """The report plots of the grid's completed runs, one band per variant over its seeds (matplotlib, if
    installed)."""
    from hotprune.commands import report  # noqa: PLC0415 -- only here: it brings in matplotlib

    base = directory(grid, root)
    groups = {v.name: [load(base / v.name / f"s{s}") for s in seeds if completed(base / v.name / f"s{s}")]
              for v in grid.variants}
    try:
        paths = report.report({name: runs for name, runs in groups.items() if runs}, base / "report", log)
    except RuntimeError as exc:
        log(f"no plots: {exc}")
        return
    log(f"plots: {', '.join(p.name for p in paths)} in {base / 'report'}")


# --- results --------------------------------------------------------------------------------------


def evaluated(run_dir: Path, episodes: int) -> dict:
    """The kept policy's deterministic return over `episodes` (hotprune.commands.evaluate, seeds 0..episodes-1),
    computed once and kept in the run directory (eval_deterministic.json)."""
    path = run_dir / EVAL_FILE
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("episodes") == episodes:
            return kept
    result = evaluate(run_dir, episodes=episodes, deterministic=True)
    path.write_text(json.dumps(result))
    return result


def seed_row(run: Run, threshold: float | None, eval_episodes: int = 0) -> dict:
    s = run.summary
    reached = next((e["global_step"] for e in run.epochs() if threshold is not None and e["reward_mean"] is not None
                    and e["reward_mean"] >= threshold), None)
    return {"return": s["reward_mean_last"], "samples_to_threshold": reached, "epoch_s": s["epoch_s_mean"],
            "rollout_s": s["rollout_s_mean"], "train_s": s["train_s_mean"], "samples_per_s": s["samples_per_s_mean"],
            "training_sparsity": s["final_training_sparsity"], "inference_sparsity": s["final_inference_sparsity"],
            "pruned_sparsity": s.get("pruned_sparsity"), "params_kept": s.get("pruned_params_kept"),
            "params_total": s["params_total"], "swap_ms": s["swap_latency_ms_median"],
            "policy_lag": s["policy_lag_mean"],
            "eval_return": evaluated(run.path, eval_episodes)["return_mean"] if eval_episodes else None}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _variant_row(name: str, runs: list[Run], eval_episodes: int) -> dict:
    """A variant's row over its completed runs: the table's columns, and its per-seed "returns"."""
    env_id = runs[0].config.env_id
    threshold = EnvSource.of(runs[0].config).registered().reward_threshold
    threshold = THRESHOLDS.get(env_id) if threshold is None else threshold
    per_seed = [seed_row(r, threshold, eval_episodes) for r in runs]
    returns = [p["return"] for p in per_seed]
    low, high = stats.iqm_interval(returns)
    return {"variant": name, "seeds": len(runs), "env_id": env_id, "algorithm": runs[0].config.algorithm,
            "return_iqm": stats.iqm(returns), "return_ci_low": low, "return_ci_high": high,
            "return_mean": statistics.fmean(returns),
            "return_std": statistics.stdev(returns) if len(returns) > 1 else 0.0, "returns": returns,
            "threshold": threshold, "samples_to_threshold": [p["samples_to_threshold"] for p in per_seed],
            "eval_returns": [p["eval_return"] for p in per_seed] if eval_episodes else None,
            **{k: _mean(p[k] for p in per_seed) for k in per_seed[0]
               if k not in ("return", "samples_to_threshold", "eval_return")}}


def _versus(reference: dict, row: dict) -> str:
    if min(len(row["returns"]), len(reference["returns"])) < MIN_SEEDS_TO_COMPARE:
        return f"too few seeds to tell (need {MIN_SEEDS_TO_COMPARE})"
    diff, p = stats.welch(reference["returns"], row["returns"])
    return f"{'differs' if p < ALPHA else 'within noise'} ({diff:+.1f}, p={p:.3g})"


def _how(rows: list[dict], seeds: list[int]) -> list[str]:
    """What the table compares and how, above it."""
    done = [r for r in rows if r["seeds"]]
    kinds = sorted({f"{r['algorithm']} on {r['env_id']}" for r in done})
    lines = [f"Runs: {len(seeds)} seed(s) per variant ({', '.join(map(str, seeds))}); "
             f"{' and '.join(kinds) or 'none completed'}."]
    if len(kinds) > 1:
        lines.append(f"**Note: the variants ran {len(kinds)} different algorithm/environment pairs: their returns "
                     "are on different scales and are not comparable.**")
    lines.append(f"Return: each seed's mean of its last 10 epochs' returns (each the mean of the last 10 episodes); "
                 f"per variant the interquartile mean (IQM) over seeds with a {stats.CONFIDENCE:.0%} stratified "
                 f"bootstrap percentile interval ({stats.BOOTSTRAP_REPS:,} resamples, seed {stats.BOOTSTRAP_SEED}; "
                 "Agarwal et al. 2021, rliable's method). With 3 or fewer seeds the IQM is the mean, and the "
                 "interval of 3 seeds is wide and coarse.")
    lines.append(f"vs first variant: Welch's t-test (scipy.stats.ttest_ind, unequal variances, two-sided) on the "
                 f"per-seed returns against the first variant's; \"differs\" when p < {ALPHA}; with few seeds "
                 "\"within noise\" does not mean equal.")
    return lines


def write_results(grid: Grid, seeds: list[int], root: Path, eval_episodes: int = 0) -> tuple[Path, list[dict]]:
    """results.md and results.csv of the grid's completed runs; returns results.md and the table's rows,
    one per variant: {"variant", "seeds": 0} when none completed, else every column of results.csv
    (per-seed lists as lists) and the variant's "returns" and "threshold"."""
    base = directory(grid, root)
    rows, reference = [], None
    for variant in grid.variants:
        runs = [load(base / variant.name / f"s{s}") for s in seeds if completed(base / variant.name / f"s{s}")]
        if not runs:
            rows.append({"variant": variant.name, "seeds": 0})
            continue
        row = _variant_row(variant.name, runs, eval_episodes)
        if reference is None:
            reference, row["vs_first"] = row, "reference"
        else:
            row["vs_first"] = _versus(reference, row)
        rows.append(row)
    columns = ["variant", "seeds", "env_id", "algorithm", "return_iqm", "return_ci_low", "return_ci_high",
               "return_mean", "return_std", "returns", "samples_to_threshold", "epoch_s", "rollout_s", "train_s",
               "samples_per_s", "training_sparsity", "inference_sparsity", "pruned_sparsity", "params_kept",
               "params_total", "swap_ms", "policy_lag", "vs_first", "eval_returns"]
    with open(base / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join("" if x is None else str(x) for x in v) if isinstance(v, list) else v)
                             for k, v in row.items()})
    lines = [f"# pruning_{grid.name}", "", *_how(rows, seeds), "",
             f"| variant | seeds | return IQM [{stats.CONFIDENCE:.0%} CI] | mean ± std | samples to threshold per seed "
             "| epoch s (rollout / train) | samples/s | sparsity train / infer / pruned | params kept "
             "| swap ms (median) | policy lag | vs first variant (Welch's t-test) |",
             "| --- " * 12 + "|"]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['variant']} | 0 | no completed run | | | | | | | | | |")
            continue
        reach = ", ".join(f"{x // 1000}k" if x else "never" for x in r["samples_to_threshold"])
        interval = f" [{r['return_ci_low']:.1f}, {r['return_ci_high']:.1f}]" if r["seeds"] > 1 else ""
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['return_iqm']:.1f}{interval} | {r['return_mean']:.1f} ± "
            f"{r['return_std']:.1f} | {reach} (>= {_fmt(r['threshold'], '.0f')}) | {_fmt(r['epoch_s'])} "
            f"({_fmt(r['rollout_s'])} / {_fmt(r['train_s'])}) "
            f"| {_fmt(r['samples_per_s'], '.0f')} | {_fmt(r['training_sparsity'], '.1%')} / "
            f"{_fmt(r['inference_sparsity'], '.1%')} / {_fmt(r['pruned_sparsity'], '.1%')} "
            f"| {_fmt(r['params_kept'], ',.0f')} of {_fmt(r['params_total'], ',.0f')} | {_fmt(r['swap_ms'])} "
            f"| {_fmt(r['policy_lag'])} | {r['vs_first']} |")
    if eval_episodes:
        lines += ["", f"The kept policies, deterministic actions, {eval_episodes} episodes each (`hotprune eval "
                  f"--deterministic`; training returns above sample actions):", "",
                  "| variant | return mean ± std over seeds | per seed |", "| --- | --- | --- |"]
        for r in rows:
            if r["seeds"]:
                values = r["eval_returns"]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                lines.append(f"| {r['variant']} | {statistics.fmean(values):.1f} ± {spread:.1f} | "
                             f"{', '.join(f'{v:.1f}' for v in values)} |")
    (base / "results.md").write_text("\n".join(lines) + "\n")
    return base / "results.md", rows
