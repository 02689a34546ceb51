"""`hotprune experiments --experiment NAME`: a grid of service runs, resumable, ending in a results table.

Each variant is a set of config overrides; each (variant, seed) is one `hotprune run` whose run
directory is `<root>/pruning_<experiment>/<variant>/s<seed>` (the seed's `logs/pruning_basic/...`
layout with root `logs`). A (variant, seed) whose run completed is not run again, so an interrupted
grid resumes where it stopped; a failed or unfinished one is moved aside and run again.

The table (results.md and results.csv next to the variants) has, per variant over its seeds: last-10
return mean ± std, samples to the environment's reward threshold, epoch time with its rollout/train
split, throughput, final sparsities, the pruned policy's parameters, swap latency and policy lag.
Whether a variant's return differs from the first variant's beyond seed-to-seed noise is decided by
Welch's t-test on the per-seed last-10 returns (unequal variances; "differs" when p < 0.05). A
bootstrap of 3 seeds was tried first and called same-distribution samples different 19% of the time
(3 possible values per resample); Welch's test keeps that near 5% for normal noise, and with few
seeds it has little power: "within noise" does not mean equal.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hotprune.config import ConfigError, load_config, to_toml
from hotprune.commands.evaluate import MAX_EPISODES, evaluate
from hotprune.envs import EnvSource
from hotprune.runs.runlog import Run, RunError, load
from hotprune.commands import lth

ALPHA = 0.05
# Thresholds for environments gymnasium gives none: the issues' targets (Pendulum: above -250)
THRESHOLDS = {"Pendulum-v1": -250.0}
CORES_PER_RUN = 2  # trainer + compressor + workers: a run keeps about two cores busy
MIN_SEEDS_TO_COMPARE = 2  # a sample variance needs two
EVAL_FILE = "eval_deterministic.json"


@dataclass(frozen=True)
class Variant:
    """A run's overrides; `{base}` (the experiment's directory) and `{seed}` in them are filled in. Stage 1
    runs after stage 0 and the experiment's PREPARE step (lth: masks from stage 0's dense runs). A
    seed offset gives the run another seed than its row's (lth's random re-initialisation: the dense
    run's seed would draw the dense run's own initial weights, the ticket itself)."""

    name: str
    overrides: tuple[str, ...]
    stage: int = 0
    seed_offset: int = 0


def _v(name: str, *overrides: str, stage: int = 0, seed_offset: int = 0) -> Variant:
    return Variant(name, overrides, stage, seed_offset)


RANDOM_REINIT_SEED_OFFSET = 1000
LTH_SPARSITIES = (0.8, 0.9)
LTH_METHODS = ("magnitude", "taylor", "gradient")


def lth_mask(method: str, sparsity: float) -> str:
    """Where the lth grid's masks of a seed's dense run go, under its directory."""
    return f"{{base}}/masks/s{{seed}}/{method}-{round(sparsity * 100)}.safetensors"


def _lth_variants(sac: bool = False) -> list[Variant]:
    """Dense (keeping what tickets need), gradual magnitude pruning while training (a cubic schedule,
    every 2 epochs, from epoch 3 to half the run: Zhu & Gupta's, the baseline Graesser et al. 2022
    found hard to beat in deep RL), tickets rewound to the dense run's initial weights, and the same
    masks from a fresh random initialisation (is it the init or the mask's layout?). SAC's (`sac`):
    every variant algorithm=sac, and actor and critics pruned (the gradual runs, and the tickets'
    masks: lth.grid_masks)."""
    common = ("algorithm=sac",) if sac else ()
    out = [_v("dense", *common, *lth.TRAIN_DENSE)]
    out += [_v(f"gradual_{round(s * 100)}", *common, f"pruning.target_sparsity={s}", "pruning.schedule=cubic",
               "pruning.every=2", *(["pruning.targets=actor,critic"] if sac else [])) for s in LTH_SPARSITIES]
    out += [_v(f"ticket_{m}_{round(s * 100)}", *common, "pruning.method=fixed", f'pruning.mask_file="{lth_mask(m, s)}"',
               'init_file="{base}/dense/s{seed}/weights/epoch-0.safetensors"', stage=1)
            for s in LTH_SPARSITIES for m in LTH_METHODS]
    out += [_v(f"random_{m}_{round(s * 100)}", *common, "pruning.method=fixed", f'pruning.mask_file="{lth_mask(m, s)}"',
               stage=1, seed_offset=RANDOM_REINIT_SEED_OFFSET)
            for s in LTH_SPARSITIES for m in LTH_METHODS]
    return out


EXPERIMENTS: dict[str, list[Variant]] = {
    # the seed's basic experiment: both modes, both pruning placements, and the dense baseline
    "basic": [
        _v("async_both_pruned"), _v("async_teacher_student", "prune_training_model=false"),
        _v("sync_both_pruned", "mode=sync"), _v("sync_teacher_student", "mode=sync", "prune_training_model=false"),
        _v("async_dense", "pruning.method=none"),
    ],
    "modes": [
        _v(f"{mode}_{place}_{structure}", f"mode={mode}", f"prune_training_model={str(place == 'both').lower()}",
           f"pruning.structure={structure}", *(["pruning.scope=layer"] if structure == "neuron" else []))
        for mode in ("async", "sync") for place in ("both", "teacher_student") for structure in ("weight", "neuron")
    ],
    "methods": [
        _v(f"{method}_{structure}", f"pruning.method={method}", f"pruning.structure={structure}",
           "pruning.target_sparsity=0.9", *(["pruning.scope=layer"] if structure == "neuron" else []))
        for structure in ("weight", "neuron") for method in ("magnitude", "taylor", "gradient")
    ] + [_v("dense", "pruning.method=none")],
    "sparsity": [_v(f"s{round(s * 100)}", f"pruning.target_sparsity={s}") for s in (0.5, 0.8, 0.9, 0.95, 0.98)]
    + [_v("dense", "pruning.method=none")],
    # teacher-student (the student distilled, or not) against both pruned, and async against sync
    "teacher_student": [
        _v("both_pruned_90", "pruning.target_sparsity=0.9"),
        _v("teacher_student_80", "prune_training_model=false"),
        _v("teacher_student_90", "prune_training_model=false", "pruning.target_sparsity=0.9"),
        _v("teacher_student_90_undistilled", "prune_training_model=false", "pruning.target_sparsity=0.9",
           "pruning.distill_steps=0"),
        _v("sync_both_pruned_90", "mode=sync", "pruning.target_sparsity=0.9"),
    ],
    # an environment's preset (--set env_id=...): dense against both pruned at 90%
    "presets": [_v("dense", "pruning.method=none"), _v("both_pruned_90", "pruning.target_sparsity=0.9")],
    # SAC on an environment's SAC preset (--set env_id=...): dense against actor and critics both pruned at
    # pruning.target_sparsity (0.8 unless --set; the table's sparsity columns say which)
    "sac": [_v("sac_dense", "algorithm=sac", "pruning.method=none"),
            _v("sac_both_pruned", "algorithm=sac", "pruning.targets=actor,critic")],
    # lottery tickets (hotprune lth compare): PPO's, the actor's masks; SAC's, the actor's and the critics'
    "lth": _lth_variants(),
    "lth_sac": _lth_variants(sac=True),
    "schedules": [
        _v("constant_90", "pruning.target_sparsity=0.9"),
        _v("cubic_90", "pruning.target_sparsity=0.9", "pruning.schedule=cubic", "pruning.every=2"),
        _v("cubic_90_regrow", "pruning.target_sparsity=0.9", "pruning.schedule=cubic", "pruning.every=2",
           "pruning.regrow=true"),
        _v("late_constant_90", "pruning.target_sparsity=0.9", "pruning.start_epoch=50"),
    ],
}


def _lth_masks(base: Path, seeds: list[int], log) -> None:
    lth.grid_masks(base, seeds, LTH_METHODS, LTH_SPARSITIES, lth_mask, log)


PREPARE = {"lth": _lth_masks, "lth_sac": _lth_masks}  # between stage 0 and stage 1


def hotprune_command() -> list[str]:
    return [sys.executable, "-m", "hotprune.cli"]


def completed(run_dir: Path) -> bool:
    try:
        summary = load(run_dir).summary
    except RunError:
        return False
    return bool(summary and summary["completed"])


def plan(experiment: str, seeds: list[int], root: Path, extra: list[str],
         variants: Sequence[str] = ()) -> list[tuple[Variant, int, Path]]:
    """The grid's (variant, seed, run directory), seed by seed; `variants`: only these of the experiment's."""
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"--experiment must be one of {'|'.join(EXPERIMENTS)}, got {experiment!r}")
    names = [v.name for v in EXPERIMENTS[experiment]]
    if unknown := [v for v in variants if v not in names]:
        raise ConfigError(f"--variants must be among {experiment}'s {', '.join(names)}, got {', '.join(unknown)}")
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be non-negative integers, got {seeds}")
    base = root / f"pruning_{experiment}"
    seeds = list(dict.fromkeys(seeds))  # a seed given twice is one run
    # seed by seed, the variants alternating: a grid cut short (or a machine whose load drifts) still
    # compares every variant on the same seeds and under the same conditions
    grid = [(v, s, base / v.name / f"s{s}") for s in seeds for v in EXPERIMENTS[experiment]
            if not variants or v.name in variants]
    for v, s, run_dir in grid:  # every variant's config is valid before anything runs
        planned_config(v, s, run_dir, extra)
    return grid


def _overrides(variant: Variant, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    base = str(run_dir.parent.parent)
    filled = [o.replace("{base}", base).replace("{seed}", str(seed)) for o in variant.overrides]
    return [*filled, *extra, f"seed={seed + variant.seed_offset}", f"runs_dir={run_dir.parent}",
            f"run_id={run_dir.name}"]


def planned_config(variant: Variant, seed: int, run_dir: Path, extra: list[str]) -> str:
    """The config.toml this (variant, seed) run has: a kept run with another one is not reused."""
    return to_toml(load_config(None, _overrides(variant, seed, run_dir, extra)))


def _settings(config_toml: str) -> dict | None:
    """A config.toml's settings but its run uid (each run makes its own); None if it cannot be read."""
    try:
        data = tomllib.loads(config_toml)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return None
    data.pop("run_uid", None)
    return data


def run_one(variant: Variant, seed: int, run_dir: Path, extra: list[str], log) -> bool:
    kept = run_dir / "config.toml"
    same = kept.is_file() and \
        _settings(kept.read_text(errors="replace")) == _settings(planned_config(variant, seed, run_dir, extra))
    if completed(run_dir) and same:
        log(f"{variant.name} seed {seed}: done already ({run_dir})")
        return True
    if run_dir.exists():  # failed, interrupted, or made with other settings: keep it aside, run again
        why = "an unfinished run" if same or not (run_dir / "config.toml").is_file() else "a run with other settings"
        aside = run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run_dir), aside)
        log(f"{variant.name} seed {seed}: {why} moved to {aside.name}")
    args = _overrides(variant, seed, run_dir, extra)
    command = hotprune_command() + ["run", *(x for a in args for x in ("--set", a))]
    t0 = time.monotonic()
    run_dir.mkdir(parents=True)
    with open(run_dir / "console.txt", "w") as console:  # what the run printed
        code = subprocess.run(command, stdout=console, stderr=subprocess.STDOUT).returncode
    log(f"{variant.name} seed {seed}: exit {code} in {time.monotonic() - t0:.0f}s")
    return code == 0


def run_grid(experiment: str, seeds: list[int], root: Path, jobs: int, extra: list[str],
             log=print, eval_episodes: int = 0, variants: Sequence[str] = ()) -> tuple[Path, list[dict], int]:
    """Run the grid (`variants`: only these); returns the results table (results.md), its rows
    (write_results) and how many runs failed."""
    if not 0 <= eval_episodes <= MAX_EPISODES:
        raise ConfigError(f"--eval-episodes must be in [0, {MAX_EPISODES}], got {eval_episodes}")
    most = max(1, (os.cpu_count() or 1) // CORES_PER_RUN)
    if not 1 <= jobs <= most:
        raise ConfigError(f"--jobs must be in [1, {most}] here (a run keeps about {CORES_PER_RUN} cores busy), "
                          f"got {jobs}")
    grid = plan(experiment, seeds, root, extra, variants)
    base = root / f"pruning_{experiment}"
    base.mkdir(parents=True, exist_ok=True)
    seeds = list(dict.fromkeys(seeds))
    ok = []
    for stage in sorted({v.stage for v, _, _ in grid}):
        if stage and experiment in PREPARE:
            PREPARE[experiment](base, seeds, log)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            ok += pool.map(lambda item: run_one(*item, extra, log), [g for g in grid if g[0].stage == stage])
    results, rows = write_results(experiment, seeds, root, eval_episodes)
    plot(experiment, seeds, root, log)
    return results, rows, ok.count(False)


def plot(experiment: str, seeds: list[int], root: Path, log) -> None:
    """The report plots, the first completed seed of each variant overlaid (matplotlib, if installed)."""
    from hotprune.commands import report  # noqa: PLC0415 -- only here: it brings in matplotlib

    base = root / f"pruning_{experiment}"
    runs = []
    for variant in EXPERIMENTS[experiment]:
        for s in seeds:
            if completed(base / variant.name / f"s{s}"):
                run = load(base / variant.name / f"s{s}")
                run.path = base / variant.name  # the legend names the variant
                runs.append(run)
                break
    try:
        paths = report.report(runs, base / "report")
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


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t-test: (mean(b) - mean(a), two-sided p-value); unequal variances, no scipy."""
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    diff = float(b_.mean() - a_.mean())
    va, vb = a_.var(ddof=1) / a_.size, b_.var(ddof=1) / b_.size
    se2 = va + vb
    if se2 == 0:  # both constant (e.g. every seed at the maximum return)
        return diff, 1.0 if diff == 0 else 0.0
    df = se2**2 / (va**2 / (a_.size - 1) + vb**2 / (b_.size - 1))
    t = abs(diff) / math.sqrt(se2)
    return diff, float(_betainc(df / 2, 0.5, df / (df + t * t)))  # = 2 * P(T_df > t)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f / a


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_results(experiment: str, seeds: list[int], root: Path, eval_episodes: int = 0) -> tuple[Path, list[dict]]:
    """results.md and results.csv of the grid's completed runs; returns results.md and the table's rows,
    one per variant: {"variant", "seeds": 0} when none completed, else every column of results.csv
    (per-seed lists as lists) and the variant's "returns" and "threshold"."""
    base = root / f"pruning_{experiment}"
    rows, reference = [], None
    for variant in EXPERIMENTS[experiment]:
        runs = []
        for s in seeds:
            try:
                run = load(base / variant.name / f"s{s}")
            except RunError:
                continue
            if run.summary and run.summary["completed"]:
                runs.append(run)
        if not runs:
            rows.append({"variant": variant.name, "seeds": 0})
            continue
        env_id = runs[0].config.env_id
        threshold = EnvSource.of(runs[0].config).registered().reward_threshold
        threshold = THRESHOLDS.get(env_id) if threshold is None else threshold
        per_seed = [seed_row(r, threshold, eval_episodes) for r in runs]
        returns = [p["return"] for p in per_seed]
        row = {"variant": variant.name, "seeds": len(runs), "return_mean": statistics.fmean(returns),
               "return_std": statistics.stdev(returns) if len(returns) > 1 else 0.0, "returns": returns,
               "threshold": threshold,
               "samples_to_threshold": [p["samples_to_threshold"] for p in per_seed],
               "eval_returns": [p["eval_return"] for p in per_seed] if eval_episodes else None,
               **{k: _mean(p[k] for p in per_seed) for k in per_seed[0]
                  if k not in ("return", "samples_to_threshold", "eval_return")}}
        if reference is None:
            reference, row["vs_first"] = row, "reference"
        elif min(len(returns), len(reference["returns"])) < MIN_SEEDS_TO_COMPARE:
            row["vs_first"] = f"too few seeds to tell (need {MIN_SEEDS_TO_COMPARE})"
        else:
            diff, p = welch(reference["returns"], returns)
            row["vs_first"] = f"{'differs' if p < ALPHA else 'within noise'} ({diff:+.1f}, p={p:.3g})"
        rows.append(row)
    columns = ["variant", "seeds", "return_mean", "return_std", "samples_to_threshold", "epoch_s", "rollout_s",
               "train_s", "samples_per_s", "training_sparsity", "inference_sparsity", "pruned_sparsity", "params_kept",
               "params_total", "swap_ms", "policy_lag", "vs_first", "eval_returns"]
    with open(base / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join("" if x is None else str(x) for x in v) if isinstance(v, list) else v)
                             for k, v in row.items()})
    lines = [f"# pruning_{experiment}: {len(seeds)} seed(s) per variant ({', '.join(map(str, seeds))})", "",
             "| variant | seeds | return (last 10) mean ± std | samples to threshold per seed "
             "| epoch s (rollout / train) | samples/s | sparsity train / infer / pruned | params kept "
             "| swap ms (median) | policy lag | vs first variant (Welch t-test on the return, p < 0.05) |",
             "| --- " * 11 + "|"]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['variant']} | 0 | no completed run | | | | | | | | |")
            continue
        reach = ", ".join(f"{x // 1000}k" if x else "never" for x in r["samples_to_threshold"])
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | {reach} "
            f"(>= {_fmt(r['threshold'], '.0f')}) | {_fmt(r['epoch_s'])} "
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
