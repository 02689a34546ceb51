"""`hotprune diagnose RUN_DIR`: the user's by-hand pruning checklist, automated from the logs and
checked against what the run kept.

Each check reads a finished run's events (hotprune.runs.runlog) and says PASS or FAIL with its evidence
(epochs, versions, values); INFO lines show what is worth seeing but is not a fault (the async
lag). Checks that do not apply to the run's mode are left out. The logs are not trusted alone: what
they say of the masks, the policy and the schedule is checked against masks.safetensors,
policy.safetensors (their counted zeros and their metadata) and config.toml. Exit code
(`exit_code`): 0 when every check passes, 1 on a FAIL, 3 when lines of the logs could not be read
(the verdict rests on logs with lines left out, so it is not given as a pass or a fail).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hotprune.actor_spec import run_shapes
from hotprune.envs import EnvSource, env_spec
from hotprune.pruning.criteria import CRITERIA, DYNAMIC
from hotprune.pruning.engine import prunable_names, sparsity, sparsity_of_counts
from hotprune.pruning.schedule import plan
from hotprune.runs import artifacts
from hotprune.runs.runlog import Run

TOLERANCE = 1e-6  # sparsities are fractions of counts: equal up to float noise
REASON_CHARS = 120  # a rejected message's reason is shown cut to this length
EXIT_FAIL, EXIT_UNREADABLE = 1, 3
LOGS_READABLE = "logs readable"
SHOWN_PROBLEMS = 3  # disagreements or unreadable files named in one line; the rest counted


@dataclass(frozen=True)
class Check:
    status: str  # PASS | FAIL | INFO
    name: str
    evidence: str


def _ok(name: str, ok: bool, evidence: str) -> Check:
    return Check("PASS" if ok else "FAIL", name, evidence)


def _versions(values) -> str:
    values = list(values)
    shown = ", ".join(f"v{v}" for v in values[:6])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 6 else "")


def run_completed(run: Run) -> Check:
    s, fin = run.summary, run.finished
    if s is None:
        return _ok("run completed", False, "no summary in trainer.jsonl: the trainer has not finished "
                   "(still running, or stopped before its end)")
    outcome = fin["outcome"] if fin else "no supervisor log (processes started by hand)"
    ok = s["completed"] and (fin is None or fin["outcome"] == "completed")
    return _ok("run completed", ok, f"{s['epochs']} epochs, completed={s['completed']}, outcome: {outcome}")


def no_skipped_compression(run: Run) -> Check:
    [plan] = run.events("compressor", "pruning_planned")[-1:] or [None]
    if plan is None:
        return _ok("no scheduled compression skipped", False, "no pruning_planned in compressor.jsonl")
    last_epoch = max((e["epoch"] for e in run.events("trainer", "epoch")), default=0)
    planned = [epoch for epoch, _ in plan["steps"] if epoch <= last_epoch]
    served = {}
    for e in run.events("compressor", "compression_finished"):
        served[e["due_epoch"]] = e["epoch"]
    folded = {d for e in run.events("compressor", "compression_started") if e["due_epoch"] in served
              for d in e["folded_due_epochs"]}
    missing = [d for d in planned if d not in served and d not in folded]
    shown = ", ".join(f"{d}->{served[d]}" for d in planned if d in served)
    evidence = f"{len(planned)} step(s) due by epoch {last_epoch}; served (due epoch -> snapshot epoch): {shown or '-'}"
    if missing:
        evidence += f"; never served: {missing}"
    return _ok("no scheduled compression skipped", not missing, evidence)


def _compressions(run: Run) -> list[dict]:
    return run.events("compressor", "compression_finished")


def snapshot_full_before_first_masks(run: Run) -> Check:
    trainer = run.events("trainer")
    first = next((i for i, e in enumerate(trainer) if e["event"] == "masks_applied"), None)
    if first is None:
        return _ok("snapshot FULL before the first masks", False, "no masks_applied in trainer.jsonl")
    before = [e for e in trainer[:first] if e["event"] == "snapshot_published"]
    if not before:
        return _ok("snapshot FULL before the first masks", False, "no snapshot published before the first masks")
    last = before[-1]
    masks = trainer[first]
    return _ok("snapshot FULL before the first masks", last["training_sparsity"] == 0,
               f"v{last['version']} (epoch {last['epoch']}) published at {last['training_sparsity']:.1%}, "
               f"then masks v{masks['version']} applied during epoch {masks['epoch']}")


def masks_applied_once_per_compression(run: Run) -> Check:
    # A report sent again (to a restarted trainer, or by a restarted compressor) is not a new compression.
    sent = [e["version"] for e in run.events("compressor", "masks_sent")
            if e.get("tensors", True) and not e.get("again") and not e.get("failed", False)]
    by_trainer = [(e["pid"], e["version"]) for e in run.events("trainer", "masks_applied")]
    applied = [v for _, v in by_trainer]
    duplicates = sorted({v for p, v in by_trainer if by_trainer.count((p, v)) > 1})  # twice by one trainer
    lost = [v for v in sent if v not in applied and not any(a > v for a in applied)]
    unknown = [v for v in applied if v not in sent]
    ok = bool(sent) and not duplicates and not lost and not unknown
    evidence = f"{len(sent)} compression(s) sent masks ({_versions(sent)}); applied: {_versions(applied) or 'none'}"
    for label, values in (("applied twice", duplicates), ("never applied", lost), ("applied but never sent", unknown)):
        if values:
            evidence += f"; {label}: {_versions(values)}"
    return _ok("masks applied once per compression", ok, evidence)


def _held(masks_applied: dict) -> float:
    """The sparsity a masks_applied holds the training model at: what its masks prune (logs from before
    `masks_sparsity`: the zeros verified then). Zeros verified right after applying may be more: weights
    regrown at zero move with the next step."""
    return masks_applied.get("masks_sparsity", masks_applied["training_sparsity_verified"])


def training_sparsity_never_falls_back(run: Run) -> Check:
    floor, floor_from, checked = 0.0, None, 0
    for e in run.events("trainer"):
        if e["event"] == "masks_applied":
            floor, floor_from = max(floor, _held(e)), e
        elif e["event"] == "epoch" and floor_from is not None:
            checked += 1
            if e["training_sparsity"] < floor - TOLERANCE:
                return _ok("training sparsity never falls back", False,
                           f"epoch {e['epoch']}: {e['training_sparsity']:.2%} after masks v{floor_from['version']} "
                           f"holding {floor:.2%}")
    if floor_from is None:
        return _ok("training sparsity never falls back", False, "the trainer never applied masks")
    epochs = run.events("trainer", "epoch")
    final = run.summary["final_training_sparsity"] if run.summary else epochs[-1]["training_sparsity"]
    target = _compressions(run)[-1]["weight_sparsity"] if _compressions(run) else None
    at_target = final is not None and target is not None and abs(final - target) <= 1e-3
    return _ok("training sparsity never falls back", at_target,
               f"{checked} epochs after the first masks all >= the masks' sparsity; final "
               f"{final:.2%} against the last compression's {target:.2%}" if at_target else
               f"final training sparsity {final} is not the last compression's {target}")


def snapshots_after_masks_show_it(run: Run) -> Check:
    floor, seen, bad = None, 0, None
    for e in run.events("trainer"):
        if e["event"] == "masks_applied":
            floor = max(floor or 0.0, _held(e))
        elif e["event"] == "snapshot_published" and floor is not None:
            seen += 1
            if e["training_sparsity"] < floor - TOLERANCE and bad is None:
                bad = e
    if floor is None:
        return _ok("snapshots after the masks show them", False, "the trainer never applied masks")
    if bad is not None:
        return _ok("snapshots after the masks show them", False,
                   f"snapshot v{bad['version']} (epoch {bad['epoch']}) at {bad['training_sparsity']:.2%} < {floor:.2%}")
    return _ok("snapshots after the masks show them", seen > 0, f"{seen} snapshot(s) after the first masks, "
               f"every one at or above the masks' sparsity (last {floor:.2%})")


def pruned_weights_stay_zero(run: Run) -> Check:
    checked = [e for e in run.events("compressor", "snapshot_received") if e.get("pruned_nonzero") is not None]
    revived = [e for e in checked if e["pruned_nonzero"]]
    if revived:
        e = revived[0]
        return _ok("pruned weights stay exactly zero", False,
                   f"snapshot v{e['version']}: {e['pruned_nonzero']} weight(s) the trainer's masks "
                   f"v{e['masks_version']} prune are non-zero ({len(revived)} snapshot(s) in all)")
    return _ok("pruned weights stay exactly zero", bool(checked),
               f"{len(checked)} snapshot(s) checked by the compressor against the trainer's applied masks: 0 non-zero")


def trainer_stays_dense(run: Run) -> Check:
    epochs = run.events("trainer", "epoch")
    dense = [e for e in epochs if e["training_sparsity"] != 0]
    return _ok("teacher-student: trainer stays dense", bool(epochs) and not dense,
               f"{len(epochs)} epochs at 0.0%" if not dense else
               f"epoch {dense[0]['epoch']} at {dense[0]['training_sparsity']:.2%}")


def _runnable(run: Run) -> tuple[dict | None, str]:
    """The last compression the workers could have run, and a note when a later one came only at the
    run's end (a snapshot of the last epoch: the workers stop before they could swap to it)."""
    last_epoch = max((e["epoch"] for e in run.events("trainer", "epoch")), default=0)
    compressions = _compressions(run)
    runnable = [c for c in compressions if c["epoch"] < last_epoch]
    late = [c for c in compressions if c["epoch"] >= last_epoch]
    note = f" (v{late[-1]['version']}, compressed at the run's end, was never runnable)" if late else ""
    return (runnable[-1] if runnable else None), note


def workers_run_the_target(run: Run) -> Check:
    compression, note = _runnable(run)
    if compression is None:
        return Check("INFO" if note else "FAIL", "workers run the pruned policy",
                     "no compression finished" + note)
    target = compression["weight_sparsity"]
    last = {w: (run.events(w, "worker_swapped") or [None])[-1] for w in run.workers()}
    wrong = {w: s for w, s in last.items() if s is None or abs(s["sparsity"] - target) > 1e-3}
    shown = ", ".join(f"{w} v{s['version']} at {s['sparsity']:.2%}" for w, s in last.items() if s)
    return _ok("workers run the pruned policy", bool(last) and not wrong,
               f"last compression {target:.2%}{note}; last swaps: {shown or 'none'}")


def workers_never_go_backwards(run: Run) -> Check:
    last, _ = _runnable(run)
    final = last["version"] if last else None
    problems, shown = [], []
    for w in run.workers():
        swaps = [(e.get("pid"), e["version"]) for e in run.events(w, "worker_swapped")]
        versions = [version for _, version in swaps]
        # A restarted worker (another process) swaps first to what its store holds: its predecessor's last, or newer.
        back = [(a, b) for (pid_a, a), (pid_b, b) in zip(swaps, swaps[1:]) if b < a or (b == a and pid_a == pid_b)]
        if back:
            problems.append(f"{w} went from v{back[0][0]} to v{back[0][1]}")
        if final is not None and (not versions or versions[-1] < final):
            problems.append(f"{w} never ran v{final} (the last compression) or newer")
        shown.append(f"{w}: {len(versions)} swaps up to v{versions[-1] if versions else '-'}")
    return _ok("workers swap forward to every version or a newer one", bool(shown) and not problems,
               "; ".join(problems or shown))


def relays_feed_their_workers(run: Run) -> Check:
    """A worker on a relay's node ran only versions that relay wrote, and a relay wrote only versions
    the compressor wrote: each node's store held the run's versions, and nothing else."""
    wrote = {relay.removeprefix("relay-"): {e["version"] for e in run.events(relay, "relay_wrote")}
             for relay in run.relays()}
    compressed = {e["version"] for e in run.events("compressor", "weights_written")}
    problems = [f"relay-{node} wrote {_versions(sorted(versions - compressed))}, which the compressor never wrote"
                for node, versions in wrote.items() if versions - compressed]
    shown = [f"relay-{node}: {len(versions)} versions" for node, versions in wrote.items()]
    for w in run.workers():
        by_node: dict[str | None, set[int]] = {}
        for e in run.events(w, "worker_swapped"):
            by_node.setdefault(e.get("node_id"), set()).add(e["version"])
        for node, versions in by_node.items():
            if node is None:
                continue
            if node not in wrote:
                problems.append(f"{w} swapped from node {node}'s store, whose relay left no log")
            elif versions - wrote[node]:
                problems.append(f"{w} ran {_versions(sorted(versions - wrote[node]))}, which relay-{node} "
                                "never wrote")
            else:
                shown.append(f"{w} on {node}: {len(versions)} versions")
    return _ok("workers on a relay's node run what it wrote", bool(wrote) and not problems,
               _listed(problems, "problems") if problems else "; ".join(shown))


def async_lag(run: Run) -> Check:
    applied = run.events("trainer", "masks_applied")
    lags = [e["epoch"] - e["version"] for e in applied]
    shown = ", ".join(f"snapshot of epoch {e['version']} -> applied in epoch {e['epoch']}" for e in applied[:4])
    return Check("INFO", f"trainer's masks lag ({run.config.mode})",
                 f"{shown}{' ...' if len(applied) > 4 else ''}; lag in epochs: {sorted(set(lags))}" if applied else
                 "no masks applied")


def no_rejected_messages(run: Run) -> Check:
    rejected = run.all("message_rejected")
    first = repr(str(rejected[0]["reason"])[:REASON_CHARS]) if rejected else ""
    return _ok("no rejected messages", not rejected,
               f"{len(rejected)} rejected; first: {first}" if rejected else "0 in all logs")


def no_failed_reads(run: Run) -> Check:
    failed = run.all("store_read_failed")
    first = repr(str(failed[0]["reason"])[:REASON_CHARS]) if failed else ""
    return _ok("no failed store reads", not failed,
               f"{len(failed)} failed; first: {first}" if failed else "0 in all logs")


def compression_failures(run: Run) -> Check:
    failed = run.events("compressor", "compression_failed")
    return Check("INFO", "compressions that failed",
                 f"{len(failed)}; first: epoch {failed[0]['epoch']}: {failed[0]['reason'][:REASON_CHARS]}"
                 if failed else "0")


def logs_readable(run: Run) -> Check:
    if run.unreadable:
        return _ok(LOGS_READABLE, False, _listed([str(u) for u in run.unreadable], "files"))
    return _ok(LOGS_READABLE, True, f"every line of {len(run.logs)} log files")


def _listed(problems: list[str], what: str) -> str:
    more = f" ({len(problems)} {what} in all)" if len(problems) > SHOWN_PROBLEMS else ""
    return "; ".join(problems[:SHOWN_PROBLEMS]) + more


def kept_files_agree(run: Run) -> Check:
    """What the logs say of the schedule, the masks and the policy, against config.toml's schedule and
    the zeros counted in masks.safetensors and policy.safetensors (and those files' metadata)."""
    name = "logs agree with the kept files and config"
    cfg = run.config
    problems = []
    shapes = run_shapes(cfg, env_spec(EnvSource.of(cfg)))
    spec = {n: ("float32", shape) for n, shape in shapes.items()}
    names = prunable_names(spec, cfg.pruning.prune_output_layer)
    masks, shown = None, [f"config.toml's schedule to {cfg.pruning.target_sparsity:.2%} = the logged plan and targets"]
    masks_file, policy_file = run.path / artifacts.MASKS, run.path / artifacts.POLICY
    try:  # a file that is no tensor file (ArtifactError) is one disagreement, and the end of the comparison
        if masks_file.exists() or _compressions(run):
            masks, problem, note = _masks_agree(run, masks_file, spec, names)
            problems, shown = problems + problem, [*shown, note]
        if policy_file.exists():
            problem, note = _policy_agrees(run, policy_file, spec, names, masks)
            problems, shown = problems + problem, [*shown, note]
    except artifacts.ArtifactError as exc:
        problems.append(str(exc))
    problems += _schedule_problems(run)
    return _ok(name, not problems, _listed(problems, "disagreements") if problems else "; ".join(filter(None, shown)))


def _schedule_problems(run: Run) -> list[str]:
    """The logged plan and every compression's target against the schedule config.toml makes."""
    cfg, problems = run.config, []
    planned = [[s.epoch, s.sparsity] for s in plan(cfg)[0]]
    for e in run.events("compressor", "pruning_planned")[-1:]:
        if len(e["steps"]) != len(planned) or any(a[0] != b[0] or abs(a[1] - b[1]) > TOLERANCE
                                                  for a, b in zip(e["steps"], planned)):
            problems.append(f"pruning_planned's steps {_steps(e['steps'])} are not config.toml's {_steps(planned)}")
    targets = dict(planned)
    for e in _compressions(run):
        want = targets.get(e["due_epoch"])
        if want is None or abs(e["target_sparsity"] - want) > TOLERANCE:
            problems.append(f"compression v{e['version']} logs a target of {e['target_sparsity']:.2%} for due epoch "
                            f"{e['due_epoch']}, config.toml's schedule " +
                            (f"{want:.2%}" if want is not None else "has no step there"))
    summary = run.summary
    if summary and (summary["target_sparsity"] is None
                    or abs(summary["target_sparsity"] - cfg.pruning.target_sparsity) > TOLERANCE):
        problems.append(f"the summary's target {summary['target_sparsity']} is not config.toml's "
                        f"{cfg.pruning.target_sparsity}")
    return problems


def _steps(steps: list) -> str:
    shown = ", ".join(f"{epoch}->{s:.2%}" for epoch, s in steps[:4])
    return f"[{shown}{', ...' if len(steps) > 4 else ''}]"


def _masks_agree(run: Run, path: Path, spec, names) -> tuple[dict | None, list[str], str]:
    """(the keep-masks, disagreements, evidence): the pruned fraction counted in the masks file
    against its metadata and the logs' compression_finished and masks_sent of its version."""
    if not path.exists():
        return None, [f"{path.name} is missing, though {len(_compressions(run))} compression(s) are logged"], ""
    masks, meta = artifacts.load(path)
    wrong = [n for n, m in masks.items() if n not in spec or m.dtype != bool or m.shape != spec[n][1]]
    if wrong:
        return None, [f"{path.name}: {wrong[0]} is not a keep-mask of the run's actor"], ""
    counted = sparsity_of_counts({n: int(np.count_nonzero(masks[n])) if n in masks else int(np.prod(spec[n][1]))
                                  for n in names}, spec, names)
    version = meta.get("masks_version")
    claims = [(f"{path.name}'s metadata", meta.get("weight_sparsity"))]
    claims += [(f"{e['event']} v{version}", e.get("weight_sparsity"))
               for e in [*_compressions(run), *run.events("compressor", "masks_sent")]
               if e["version"] == version and "weight_sparsity" in e]
    problems = [f"{who} says {_pct(value)}, {path.name} prunes {counted:.2%}" for who, value in claims
                if not _near(value, counted)]
    if len(claims) == 1:
        problems.append(f"no line of the logs states the sparsity of {path.name} (v{version})")
    return masks, problems, f"{path.name} (v{version}) prunes {counted:.2%} = {', '.join(w for w, _ in claims)}"


def _policy_agrees(run: Run, path: Path, spec, names, masks: dict | None) -> tuple[list[str], str]:
    """(disagreements, evidence): the policy file's zeros against its metadata and policy_saved, and
    every weight the masks prune exactly zero in it."""
    policy, meta = artifacts.load(path)
    try:
        counted = sparsity(policy, spec, names)
    except (KeyError, ValueError) as exc:
        return [f"{path.name} does not hold the run's actor ({type(exc).__name__}: {str(exc)[:80]})"], ""
    version, stated = meta.get("version"), meta.get("weight_sparsity")
    problems = [] if _near(stated, counted, at_most=True) else \
        [f"{path.name}'s metadata says {_pct(stated)}, but {counted:.2%} of its weights are zero"]
    saved = [e for e in run.events("compressor", "policy_saved") if e["version"] == version]
    problems += [f"policy_saved v{version} says {e['weight_sparsity']:.2%}, {path.name}'s metadata {_pct(stated)}"
                 for e in saved[-1:] if not _near(e["weight_sparsity"], stated)]
    revived = sum(int(np.count_nonzero(policy[n][~m])) for n, m in (masks or {}).items()
                  if n in policy and policy[n].shape == m.shape)
    if revived:
        problems.append(f"{revived} weight(s) that masks.safetensors prunes are non-zero in {path.name}")
    return problems, f"{path.name} (v{version}) {counted:.2%} zero = its metadata" + (", policy_saved" if saved else "")


def _near(value, counted: float, at_most: bool = False) -> bool:
    """`value` is a number equal to `counted` (or, `at_most`, not above it: a kept weight may be exactly 0)."""
    if type(value) not in (int, float):
        return False
    return value <= counted + TOLERANCE if at_most else abs(value - counted) <= TOLERANCE


def _pct(value) -> str:
    return f"{value:.2%}" if type(value) in (int, float) else repr(value)[:40]


ALWAYS: list[Callable[[Run], Check]] = [logs_readable, run_completed, no_rejected_messages, no_failed_reads]
PRUNING: list[Callable[[Run], Check]] = [no_skipped_compression, compression_failures, workers_run_the_target,
                                         workers_never_go_backwards, kept_files_agree]
BOTH_PRUNED: list[Callable[[Run], Check]] = [snapshot_full_before_first_masks, masks_applied_once_per_compression,
                                             training_sparsity_never_falls_back, snapshots_after_masks_show_it,
                                             pruned_weights_stay_zero, async_lag]
TEACHER_STUDENT: list[Callable[[Run], Check]] = [trainer_stays_dense]


def diagnose(run: Run) -> list[Check]:
    checks = list(ALWAYS)
    if run.relays():
        checks.append(relays_feed_their_workers)
    if run.config.pruning.method in (*CRITERIA, *DYNAMIC):  # none, fixed: nothing is scheduled
        checks += PRUNING + (BOTH_PRUNED if run.config.prune_training_model else TEACHER_STUDENT)
    return [_guarded(check, run) for check in checks]


def _guarded(check: Callable[[Run], Check], run: Run) -> Check:
    """A log that lacks what a check reads (cut off, edited, from another version) fails that check."""
    try:
        return check(run)
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # ConfigError, ArtifactError too
        name = check.__name__.replace("_", " ")
        return Check("FAIL", name, f"the logs lack what this check reads ({type(exc).__name__}: {str(exc)[:80]})")


def report(checks: list[Check]) -> str:
    return "\n".join(f"{c.status:<4}  {c.name}: {c.evidence}" for c in checks)


def exit_code(checks: list[Check]) -> int:
    """0: every check passed; EXIT_UNREADABLE: lines of the logs could not be read (whatever the other
    checks found: they judged logs with lines left out); EXIT_FAIL: a check failed."""
    failed = {c.name for c in checks if c.status == "FAIL"}
    return EXIT_UNREADABLE if LOGS_READABLE in failed else EXIT_FAIL if failed else 0
