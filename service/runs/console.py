"""Human console lines, drawn from the same events the JSON logs hold.

These are the diagnostics a user watches while a run goes: one progress line per epoch, the
snapshot / both-pruned / masks-applied lines that show pruning happening and persisting, each
compression, and the end-of-run summary. Each line fits in 100 columns for a usual run (a plain
console, hotprune.runs.view, wraps what does not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _loss(value: float | None) -> str:
    """A loss or statistic in 3 significant digits, its exponent short (1.23e4, 1.2e-5)."""
    if value is None:
        return "n/a"
    return format(value, ".3g").replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _reward(e: dict, none: str = "no episode ended") -> str:
    """The mean return of the last 10 finished episodes; before the first has ended (long episodes, as
    a good policy's after a warm start), `none` says so, rather than a number that is not there."""
    return none if e["reward_mean"] is None else f"reward {e['reward_mean']:>6.1f}"


def kind_of_run(mode: str, prune_training_model: bool, method: str | None) -> str:
    """"async, both pruned": who is pruned, which means nothing for a dense run ("async, dense")."""
    who = "dense" if method == "none" else "both pruned" if prune_training_model else "teacher-student"
    return f"{mode}, {who}"


def learning(e: dict) -> str | None:
    """The epoch's update, told apart by its fields: PPO's losses and health, or SAC's; None for an
    epoch of a log from before them. Units and meaning: docs/console.md."""
    if "policy_loss" in e:
        return (f"loss policy {_loss(e['policy_loss'])} value {_loss(e.get('value_loss'))} | "
                f"entropy {_loss(e.get('entropy'))} | KL {_loss(e.get('approx_kl'))} | "
                f"clip {_pct(e.get('clip_frac'))} | expl var {_loss(e.get('explained_variance'))}")
    if "qf_loss" not in e:
        return None
    if e["qf_loss"] is None:
        return f"no gradient step yet: {_count(e.get('replay_size'))} samples in the replay buffer"
    sparsity = e.get("critic_sparsity")
    critics = "critics not pruned" if sparsity is None else f"critic sparsity {_pct(sparsity)}"
    return (f"loss critic {_loss(e['qf_loss'])} actor {_loss(e.get('actor_loss'))} | "
            f"alpha {_loss(e.get('alpha'))} | {critics}")


def _epoch(e: dict) -> str:
    """The epoch's time and its rollout / train split are in the log, progress.csv and the summary:
    not here, where they made the line 135 columns. Under it, the update's losses and health."""
    line = (
        f"epoch {e['epoch']:>4}/{e['epochs']} | {_reward(e)} | {e['samples_per_s']:.0f}/s | "
        f"sparsity train {_pct(e['training_sparsity'])} infer {_pct(e['inference_sparsity'])} | "
        f"v{e['inference_version']} lag {e['policy_lag']:.2f}"
    )
    update = learning(e)
    return line if update is None else f"{line}\n  {update}"


def live_stats(e: dict, swap_ms: float | None) -> str:
    """The lines under the live view's progress bar (hotprune.runs.view): the newest epoch, the
    median latency of the workers' newest swaps, and the newest update's losses."""
    update = learning(e)
    return (f"{_reward(e, 'no episode has ended yet')} | sparsity train {_pct(e['training_sparsity'])} "
            f"infer {_pct(e['inference_sparsity'])} | {e['samples_per_s']:,.0f} samples/s\n"
            f"swap {_num(swap_ms, '.2f')} ms | policy lag {e['policy_lag']:.2f} (v{e['inference_version']}) | "
            f"last epoch {e['epoch_s']:.2f}s (rollout {e['rollout_s']:.2f}s)" + (f"\n{update}" if update else ""))


def _snapshot(e: dict) -> str | None:
    if not (e.get("compression_scheduled") or e.get("after_masks")):
        return None
    state = (
        "Training model is FULL (not pruned)"
        if e["training_sparsity"] == 0
        else f"Training model sparsity: {_pct(e['training_sparsity'])}"
    )
    return f"[trainer] Snapshot taken (v{e['version']}, epoch {e['epoch']}) - {state}"


def _of_target(e: dict) -> str:
    """A target sparsity and what it counts: units (a structured pruning) or weights."""
    return f"{_pct(e['target_sparsity'])} of {UNITS.get(e.get('structure'), 'weights')}"


def _masks_applied(e: dict) -> str:
    if not e.get("newly_pruned") and not e.get("revived"):
        return (f"[trainer] Masks v{e['version']} applied: no change (nested, training sparsity "
                f"{_pct(e['training_sparsity_verified'])} of weights)")
    return (
        f"[trainer] Both Pruned mode: training pruned to {_of_target(e)} (masks v{e['version']})\n"
        f"[trainer] Masks applied to training model (v{e['version']}, Both Pruned mode); inference ran "
        f"v{e['inference_version']} at {_pct(e['inference_sparsity'])}\n"
        f"[trainer] Training model sparsity verified: {_pct(e['training_sparsity_verified'])} of weights"
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


def _critics(e: dict) -> list[str]:
    """Each critic's measured sparsity; a summary from a version before it has none."""
    critics = e.get("critics_sparsity")
    return [f"Critic sparsity: {', '.join(f'{name} {_pct(v)}' for name, v in critics.items())}"] if critics else []


def _summary(e: dict) -> str:
    return "\n".join(
        [
            f"=== Summary ({kind_of_run(e['mode'], e['prune_training_model'], e.get('method'))}) ===",
            f"Epochs: {e['epochs']}",
            f"Reward mean (avg over epochs): {_num(e['reward_mean'], '.2f')} | last {e['last_n']} epochs: "
            f"{_num(e['reward_mean_last'], '.2f')}",
            f"Total time (avg per epoch): {e['epoch_s_mean']:.2f}s",
            f"  Rollout time avg: {e['rollout_s_mean']:.2f}s | Train time avg: {e['train_s_mean']:.2f}s",
            f"Throughput (avg samples/s): {e['samples_per_s_mean']:.1f}",
            f"Final sparsity: training {_pct(e['final_training_sparsity'])} | "
            f"inference {_pct(e['final_inference_sparsity'])} | pruned policy {_pct(e.get('pruned_sparsity'))} "
            f"(target {_pct(e['target_sparsity'])}"
            + (f" of {UNITS[e.get('structure')]})" if e.get("structure") in UNITS else ")"),
            *_parameters(e),
            *_critics(e),
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


def pruned_to(e: dict) -> str:
    """A compression's sparsity: a structured pruning counts units (hidden units, conv channels), and the
    weights it removes with them are a larger share."""
    weights = f"{_pct(e['weight_sparsity'])} of weights"
    units = UNITS.get(e["structure"])
    return f"{_pct(e['unit_sparsity'])} of {units} ({weights})" if units else weights


UNITS = {"neuron": "hidden units", "channel": "units and channels"}  # what a structured pruning counts


def _compression_finished(e: dict) -> str:
    """Saying both shares of a structured pruning takes a second line."""
    structured = e["structure"] != "weight"
    update = f", {e['dropped']:,} dropped and {e['regrown']:,} regrown (f={e['drop_fraction']:.3f})" \
        if e.get("drop_fraction") else ""  # a dynamic sparse training update
    return (f"[compressor] Pruned v{e['version']} to {pruned_to(e)}, due epoch {e['due_epoch']}"
            + ("\n[compressor]   " if structured else ": ")
            + f"{e['params_kept']:,}/{e['params_total']:,} kept, {e['duration_ms']:.0f} ms{update}")


def _waiting(e: dict, who: str, what: str) -> str:
    """A process started by hand waits for its compressor (the weight store it makes, or its subscription)."""
    return (f"{who} waiting for {what} of run {e['run_id']}\n"
            f"{who}   {e['waited_s']:.0f} s of {e['timeout_s']:.0f} s: start the run's compressor (or hotprune run)")


def _store_waiting(e: dict) -> str:
    return _waiting(e, f"[worker-{e['worker_id']}]", "the weight store")


def _compressor_waiting(e: dict) -> str:
    return _waiting(e, "[trainer]", "the compressor")


def _trainer_started(e: dict) -> str:
    """Where the learner runs: with device auto, what it found."""
    found = " (device auto)" if e.get("device_setting") == "auto" else ""
    return f"[trainer] {e['algorithm'].upper()} learner on {e['device']}{found}"


def _process(e: dict) -> str:
    exit_code = f" exit code {e['exitcode']}" if "exitcode" in e else ""
    return f"[supervisor] {e['event'].replace('_', ' ')}: {e['name']} (pid {e['child_pid']}){exit_code}"


def resume_command(run_dir: Path | str) -> str:
    return f"hotprune run --resume {run_dir}"


def _run_finished(e: dict) -> str:
    """A run stopped or failed goes on from its checkpoint: the line says how (a refused one would
    only be refused again)."""
    line = f"[supervisor] run {e['run_id']} finished: {e['outcome']}, logs in {e['logs']}"
    if e["outcome"] == "completed" or e["outcome"].startswith("refused"):
        return line
    return f"{line}\n[supervisor] resume it: {resume_command(Path(e['logs']).parent)}"


FORMATS: dict[str, Callable[[dict], str | None]] = {
    "epoch": _epoch,
    "snapshot_published": _snapshot,
    "trainer_started": _trainer_started,
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
