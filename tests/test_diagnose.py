"""`hotprune diagnose`, `show` and `list` on real runs, and each diagnose check failing on a run that
has its fault: tampered copies of a real run's logs (the faults the service no longer makes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hotprune.commands.diagnose import diagnose
from hotprune.runs import artifacts
from hotprune.runs.runlog import RunError, load
from tests.servicekit import hotprune, run_cli, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    both = hotprune("run", *settings(tmp, "both", "epochs=7", "pruning.schedule=cubic", "pruning.every=2",
                                     "pruning.end_epoch=6", "pruning.initial_sparsity=0.3"))
    ts = hotprune("run", *settings(tmp, "ts", "epochs=6", "prune_training_model=false"))
    assert both.returncode == 0 and ts.returncode == 0, both.stderr + ts.stderr
    return tmp / "runs"


def statuses(run_dir: Path) -> dict[str, str]:
    return {c.name: c.status for c in diagnose(load(run_dir))}


def test_a_good_both_pruned_run_passes_every_check(runs):
    result = hotprune("diagnose", str(runs / "both"))  # the installed command once; the others in this process
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("PASS", "INFO")) for line in lines), result.stdout
    for name in ("snapshot FULL before the first masks", "masks applied once per compression",
                 "training sparsity never falls back", "pruned weights stay exactly zero",
                 "no scheduled compression skipped"):
        assert any(f"PASS  {name}:" in line for line in lines), name
    assert "INFO  trainer's masks lag (async)" in result.stdout


def test_a_good_teacher_student_run_passes_and_checks_the_trainer_stays_dense(runs, capsys):
    code, out, _ = run_cli(capsys, "diagnose", str(runs / "ts"))
    assert code == 0, out
    assert "PASS  teacher-student: trainer stays dense" in out
    assert "masks applied once" not in out  # a both-pruned check, not this mode's


def test_show_and_list_read_finished_runs_again(runs, capsys):
    code, shown, _ = run_cli(capsys, "show", str(runs / "both"))
    assert code == 0
    assert "Pruning plan: magnitude weights" in shown and "=== Summary (async, both pruned) ===" in shown
    assert shown.count("due epoch") == len(load(runs / "both").events("compressor", "compression_finished"))
    assert (runs / "latest").resolve() == (runs / "ts").resolve()  # the newest run
    assert run_cli(capsys, "diagnose", str(runs / "latest"))[0] == 0
    code, listed, _ = run_cli(capsys, "list", str(runs))
    assert code == 0
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["both", "ts"]


@pytest.mark.parametrize("args, message", [
    (["diagnose", "/nonexistent/run"], "is not a directory"),
    (["show", "/tmp"], "is not a hotprune run"),
    (["list", "/nonexistent"], "is not a directory"),
])
def test_a_directory_that_is_not_a_run_is_one_line(capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err


def tampered(runs: Path, source: str, tmp_path: Path, name: str, edit) -> Path:
    """A copy of a real run whose `name`.jsonl events went through `edit(events) -> events`."""
    copy = tmp_path / source
    shutil.copytree(runs / source, copy, ignore=shutil.ignore_patterns("sock"))
    path = copy / "logs" / f"{name}.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(e) + "\n" for e in edit(events)))
    return copy


def first_after(events, event, after):
    """Index of the first `event` after the first `after` event."""
    start = next(i for i, e in enumerate(events) if e["event"] == after)
    return next(i for i, e in enumerate(events) if i > start and e["event"] == event)


def set_field(event_name, field, value, after=None, last=False):
    def edit(events):
        if after:
            i = first_after(events, event_name, after)
        else:
            found = [i for i, e in enumerate(events) if e["event"] == event_name]
            i = found[-1] if last else found[0]
        events[i][field] = value
        return events
    return edit


def drop(*names):
    return lambda events: [e for e in events if e["event"] not in names]


def drop_last(name):
    def edit(events):
        i = max(i for i, e in enumerate(events) if e["event"] == name)
        return events[:i] + events[i + 1 :]
    return edit


def append(event):
    return lambda events: [*events, {**events[-1], **event}]


def duplicate(event_name):
    def edit(events):
        i = next(i for i, e in enumerate(events) if e["event"] == event_name)
        return [*events[: i + 1], events[i], *events[i + 1 :]]
    return edit


FAULTS = [
    ("both", "trainer", set_field("epoch", "training_sparsity", 0.0, after="masks_applied"),
     "training sparsity never falls back"),
    ("both", "trainer", set_field("snapshot_published", "training_sparsity", 0.1, after="masks_applied"),
     "snapshots after the masks show them"),
    ("both", "trainer", duplicate("masks_applied"), "masks applied once per compression"),
    ("both", "trainer", drop_last("masks_applied"), "masks applied once per compression"),
    ("both", "trainer", drop("summary"), "run completed"),
    ("both", "compressor", drop("compression_finished", "compression_started"), "no scheduled compression skipped",
     {"workers run the pruned policy", "training sparsity never falls back"}),  # they compare with a compression
    ("both", "compressor", set_field("snapshot_received", "pruned_nonzero", 5, last=True),
     "pruned weights stay exactly zero"),
    ("both", "worker-1", append({"event": "worker_swapped", "version": 0, "previous_version": 99, "sparsity": 0.8}),
     "workers swap forward to every version or a newer one"),
    ("both", "worker-0", append({"event": "message_rejected", "reason": "x" * 10_000}), "no rejected messages"),
    ("both", "worker-0", append({"event": "store_read_failed", "reason": "torn"}), "no failed store reads"),
    ("ts", "trainer", set_field("epoch", "training_sparsity", 0.5, last=True), "teacher-student: trainer stays dense"),
    ("ts", "worker-0", set_field("worker_swapped", "sparsity", 0.0, last=True), "workers run the pruned policy"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f[3] + "-" + f[1] for f in FAULTS])
def test_each_check_fails_on_a_run_with_its_fault(runs, tmp_path, capsys, fault):
    source, log, edit, check, *also = fault
    faulty = tampered(runs, source, tmp_path, log, edit)
    found = statuses(faulty)
    assert found[check] == "FAIL", found
    failed = {name for name, status in found.items() if status == "FAIL"}
    assert failed == {check, *(also[0] if also else ())}, found  # and nothing else
    code, out, _ = run_cli(capsys, "diagnose", str(faulty))
    assert code == 1 and f"FAIL  {check}:" in out
    assert max(len(line) for line in out.splitlines()) < 400  # attacker strings are cut


def test_a_restarted_worker_may_swap_first_to_the_version_its_predecessor_last_ran(runs, tmp_path):
    def again(pid_of):
        def edit(events):
            last = [e for e in events if e["event"] == "worker_swapped"][-1]
            return [*events, {**last, "pid": pid_of(last["pid"])}]
        return edit

    check = "workers swap forward to every version or a newer one"
    assert statuses(tampered(runs, "both", tmp_path / "restarted", "worker-1", again(lambda pid: pid + 1)))[check] \
        == "PASS"  # the new process read the store's version, which its predecessor had run
    assert statuses(tampered(runs, "both", tmp_path / "same", "worker-1", again(lambda pid: pid)))[check] == "FAIL"


def test_a_run_with_no_logs_yet_is_refused(tmp_path):
    init = hotprune("init", *settings(tmp_path, "empty"))
    with pytest.raises(RunError, match="no log events yet"):
        load(Path(init.stdout.strip()))


def forged_sparsity(events):
    """Every sparsity the logs state above 50% (the run prunes to 80%) rewritten to 95%."""
    def forged(value):
        if isinstance(value, dict):
            return {k: 0.95 if "sparsity" in k and type(v) is float and v > 0.5 else forged(v)
                    for k, v in value.items()}
        return [forged(v) for v in value] if isinstance(value, list) else value
    return [{**forged(e), **({"steps": [[epoch, 0.95] for epoch, _ in e["steps"]]}
                             if e["event"] == "pruning_planned" else {})} for e in events]


def test_logs_that_claim_another_sparsity_than_the_kept_files_and_config_fail(runs, tmp_path, capsys):
    faulty = tampered(runs, "both", tmp_path, "compressor", forged_sparsity)
    for name in ("trainer", "worker-0", "worker-1"):
        path = faulty / "logs" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in forged_sparsity(
            [json.loads(line) for line in path.read_text().splitlines()])))
    code, out, _ = run_cli(capsys, "diagnose", str(faulty))
    [line] = [line for line in out.splitlines() if "logs agree with the kept files and config" in line]
    assert code == 1 and line.startswith("FAIL"), out
    assert "compression_finished v" in line and "says 95.00%, masks.safetensors prunes 80." in line
    assert "policy_saved v" in line and "says 95.00%, policy.safetensors's metadata 80." in line


def kept_file_edited(runs: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the both-pruned run whose kept file `name` went through `edit(tensors, meta)`."""
    copy = tmp_path / "both"
    shutil.copytree(runs / "both", copy, ignore=shutil.ignore_patterns("sock"))
    tensors, meta = artifacts.load(copy / name)
    edit(tensors, meta)
    artifacts.save(copy / name, tensors, **meta)
    return copy


def all_kept(tensors, meta):
    for mask in tensors.values():
        mask[...] = True


def revived(tensors, meta):
    weight = tensors["net.2.weight"]
    weight[weight == 0] = 0.5


def claims_95(tensors, meta):
    meta["weight_sparsity"] = 0.95


@pytest.mark.parametrize("name, edit, said", [
    ("masks.safetensors", all_kept, "says 80.0"),  # the metadata (and the logs) 80%, the file prunes 0%
    ("policy.safetensors", revived, "weight(s) that masks.safetensors prunes are non-zero in policy.safetensors"),
    ("policy.safetensors", claims_95, "policy.safetensors's metadata says 95.00%, but 80."),
])
def test_kept_files_that_disagree_with_the_logs_fail(runs, tmp_path, capsys, name, edit, said):
    code, out, _ = run_cli(capsys, "diagnose", str(kept_file_edited(runs, tmp_path, name, edit)))
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert code == 1 and len(failed) == 1 and "logs agree with the kept files and config" in failed[0], out
    assert said in failed[0]


def test_a_config_whose_schedule_is_not_the_logged_one_fails(runs, tmp_path, capsys):
    copy = tmp_path / "both"
    shutil.copytree(runs / "both", copy, ignore=shutil.ignore_patterns("sock"))
    config = copy / "config.toml"
    config.write_text(config.read_text().replace("target_sparsity = 0.8", "target_sparsity = 0.95"))
    code, out, _ = run_cli(capsys, "diagnose", str(copy))
    [line] = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert code == 1 and line.startswith("FAIL  logs agree with the kept files and config: pruning_planned's steps ")
    assert "] are not config.toml's [" in line and ", config.toml's schedule 95.00%" in line


def test_a_real_run_with_crafted_lines_is_read_around_them_and_diagnose_says_it_could_not_read(runs, tmp_path, capsys):
    copy = tmp_path / "both"
    shutil.copytree(runs / "both", copy, ignore=shutil.ignore_patterns("sock"))
    trainer = copy / "logs" / "trainer.jsonl"
    lines = trainer.read_bytes().splitlines()
    crafted = [b"[" * 100_000 + b"]" * 100_000, b'{"event": "epoch", "samples": ' + b"9" * 5000 + b"}",
               json.dumps({**json.loads(lines[-1]), "event": "epoch", "samples": "lots"}).encode(), b"[1]", b"\xff"]
    trainer.write_bytes(b"\n".join([*lines[:16], *crafted, *lines[16:]]) + b"\n")
    code, out, _ = run_cli(capsys, "diagnose", str(copy))
    assert code == 3, out
    assert "FAIL  logs readable: 5 unreadable lines in logs/trainer.jsonl, first at line 17: JSON nested too deeply" \
        in out
    assert "PASS  run completed" in out  # the rest is read and checked
    code, shown, _ = run_cli(capsys, "show", str(copy))
    assert code == 0 and "=== Summary" in shown and "left out: 5 unreadable lines" in shown
