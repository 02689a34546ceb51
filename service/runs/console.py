"""Human console lines, drawn from the same events the JSON logs hold.

These are the diagnostics a user watches while a run goes: one progress line per epoch, the
snapshot / both-pruned / masks-applied lines that show pruning happening and persisting, each
compression, and the end-of-run summary. Each line fits in 100 columns for a usual run (a plain
console, hotprune.runs.view, wraps what does not).
"""

from __future__ import annotations

from typing import Any, Callable


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _epoch(e: dict) -> str:
    """The epoch's time and its rollout / train split are in the log, progress.csv and the summary:
    not here, where they made the line 135 columns."""
    return (
        f"epoch {e['epoch']:>4}/{e['epochs']} | reward {_num(e['reward_mean']):>6} | {e['samples_per_s']:.0f}/s | "
        f"sparsity train {_pct(e['training_sparsity'])} infer {_pct(e['inference_sparsity'])} | "
        f"v{e['inference_version']} lag {e['policy_lag']:.2f}"
    )


def live_stats(e: dict, swap_ms: float | None) -> str:
    """The two lines under the live view's progress bar (hotprune.runs.view): the newest epoch, and the
    median latency of the workers' newest swaps."""
    return (f"reward {_num(e['reward_mean'])} | sparsity train {_pct(e['training_sparsity'])} "
            f"infer {_pct(e['inference_sparsity'])} | {e['samples_per_s']:,.0f} samples/s\n"
            f"swap {_num(swap_ms, '.2f')} ms | policy lag {e['policy_lag']:.2f} (v{e['inference_version']}) | "
            f"last epoch {e['epoch_s']:.2f}s (rollout {e['rollout_s']:.2f}s)")


def _snapshot(e: dict) -> str | None:
    if not (e.get("compression_scheduled") or e.get("after_masks")):
        return None
    state = (
        "Training model is FULL (not pruned)"
        if e["training_sparsity"] == 0
        else f"Training model sparsity: {_pct(e['training_sparsity'])}"
    )
    return f"[trainer] Snapshot taken (v{e['version']}, epoch {e['epoch']}) - {state}"


def _masks_applied(e: dict) -> str:
    if not e.get("newly_pruned") and not e.get("revived"):
        return (f"[trainer] Masks v{e['version']} applied: no change (nested, training sparsity "
                f"{_pct(e['training_sparsity_verified'])})")
    return (
        f"[trainer] Both Pruned mode: training pruned to {_pct(e['target_sparsity'])} (masks v{e['version']}); "
        f"inference ran v{e['inference_version']} at {_pct(e['inference_sparsity'])}\n"
        f"[trainer] Masks applied to training model (v{e['version']}, Both Pruned mode)\n"
        f"[trainer] Training model sparsity verified: {_pct(e['training_sparsity_verified'])}"
    )


def _parameters(e: dict) -> list[str]:
    """The summary's parameter lines; a summary from a version before them has none."""
    if not {"pruned_params_kept", "training_params_kept", "training_layers"} <= set(e):
        return []
    lines = [f"Parameters: pruned policy {_count(e['pruned_params_kept'])} kept of {e['params_total']:,} | "
             f"training {e['training_params_kept']:,} kept | inference ran {e['inference_nonzero_params']:,} non-zero",
             "Training layers: " + ", ".join(f"{name} {_pct(v['sparsity'])} ({v['kept']:,}/{v['total']:,} kept)"
                                             for name, v in e["training_layers"].items())]
    if e.get("compression_failures"):
        lines.append(f"Compressions that failed: {e['compression_failures']}")
    return lines


def _summary(e: dict) -> str:
    return "\n".join(
        [
            f"=== Summary ({e['mode']}, {'both pruned' if e['prune_training_model'] else 'teacher-student'}) ===",
            f"Epochs: {e['epochs']}",
            f"Reward mean (avg over epochs): {_num(e['reward_mean'], '.2f')} | last {e['last_n']} epochs: "
            f"{_num(e['reward_mean_last'], '.2f')}",
            f"Total time (avg per epoch): {e['epoch_s_mean']:.2f}s",
            f"  Rollout time avg: {e['rollout_s_mean']:.2f}s | Train time avg: {e['train_s_mean']:.2f}s",
            f"Throughput (avg samples/s): {e['samples_per_s_mean']:.1f}",
            f"Final sparsity: training {_pct(e['final_training_sparsity'])} | "
            f"inference {_pct(e['final_inference_sparsity'])} | pruned policy {_pct(e.get('pruned_sparsity'))} "
            f"(target {_pct(e['target_sparsity'])}"
            + {"neuron": " of hidden units)", "channel": " of units and channels)"}.get(e.get("structure"), ")"),
            *_parameters(e),
            f"Swap latency: median {_num(e['swap_latency_ms_median'], '.2f')} ms | "
            f"p99 {_num(e['swap_latency_ms_p99'], '.2f')} ms ({e['swaps']} swaps)",
            f"Policy lag (versions): mean {e['policy_lag_mean']:.2f} | max {e['policy_lag_max']}"
            + (f" (chunks older than {e['max_policy_lag']} dropped)" if e["mode"] == "async" else ""),
            f"Samples: received {e['samples_received']:,} = trained on {e['samples_used']:,} + dropped as stale "
            f"{e['samples_dropped_stale']:,}",
        ]
    )


def _masks_loaded(e: dict) -> str:
    if e["role"] == "trainer":  # the trainer's and the compressor's lines have fields of their own
        return (f"[trainer] Masks of {e['mask_file']} applied before the first update: training sparsity "
                f"{_pct(e['training_sparsity_verified'])}")
    return (f"[compressor] Fixed masks of {e['mask_file']} on every snapshot: {_pct(e['weight_sparsity'])} "
            f"({e['params_kept']:,}/{e['params_total']:,} kept)")


def _pruning_planned(e: dict) -> str | None:
    if e["method"] == "none":
        return "[compressor] Dense baseline: nothing is pruned"
    if e["method"] == "fixed":
        return None  # its masks_loaded line says what it prunes
    steps = e["steps"]
    shown = ", ".join(f"{epoch} -> {_pct(s)}" for epoch, s in steps[:PLAN_STEPS_SHOWN])
    more = ", ..." if len(steps) > PLAN_STEPS_SHOWN else ""
    where = e["scope"] if e["scope"] == "global" else f"layer/{e['distribution']}"
    return (f"[compressor] Pruning plan: {e['method']} {e['structure']}s, {where}, {e['schedule']}"
            f"{', regrowth' if e['regrow'] else ', nested'} ({len(steps)} compression{'s' * (len(steps) != 1)})\n"
            f"[compressor]   epoch -> sparsity: {shown or 'none'}{more}")


PLAN_STEPS_SHOWN = 4  # the plan's second line stays within 100 columns


def _compression_finished(e: dict) -> str:
    units = f" ({_pct(e['unit_sparsity'])} of units)" if e["structure"] != "weight" else ""
    return (f"[compressor] Pruned v{e['version']} to {_pct(e['weight_sparsity'])}{units}, due epoch {e['due_epoch']}: "
            f"{e['params_kept']:,}/{e['params_total']:,} kept, {e['duration_ms']:.0f} ms")


def _waiting(e: dict, who: str, what: str) -> str:
    """A process started by hand waits for its compressor (the weight store it makes, or its subscription)."""
    return (f"{who} waiting for {what} of run {e['run_id']}\n"
            f"{who}   {e['waited_s']:.0f} s of {e['timeout_s']:.0f} s: start the run's compressor (or hotprune run)")


def _store_waiting(e: dict) -> str:
    return _waiting(e, f"[worker-{e['worker_id']}]", "the weight store")


def _compressor_waiting(e: dict) -> str:
    return _waiting(e, "[trainer]", "the compressor")


def _process(e: dict) -> str:
    exit_code = f" exit code {e['exitcode']}" if "exitcode" in e else ""
    return f"[supervisor] {e['event'].replace('_', ' ')}: {e['name']} (pid {e['child_pid']}){exit_code}"


def _run_finished(e: dict) -> str:
    return f"[supervisor] run {e['run_id']} finished: {e['outcome']}, logs in {e['logs']}"


FORMATS: dict[str, Callable[[dict], str | None]] = {
    "epoch": _epoch,
    "snapshot_published": _snapshot,
    "masks_applied": _masks_applied,
    "masks_loaded": _masks_loaded,
    "pruning_planned": _pruning_planned,
    "compression_finished": _compression_finished,
    "store_waiting": _store_waiting,
    "compressor_waiting": _compressor_waiting,
    "summary": _summary,
    "process_started": _process,
    "process_exited": _process,
    "run_finished": _run_finished,
}


def human_line(event: dict[str, Any]) -> str | None:
    fmt = FORMATS.get(event.get("event", ""))
    return fmt(event) if fmt else None
