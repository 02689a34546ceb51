"""The log reader is total: whatever a run's log files hold, `hotprune diagnose`, `show`, `list` and
`report` read what they can, count and name what they cannot, and never end in a traceback. Real
files in a run directory made by `rundir.prepare`; no service runs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from hotprune.config import load_config
from hotprune.runs import rundir, runlog
from tests.servicekit import run_cli

WHO = {"ts": "2026-01-01T00:00:00.000001Z", "role": "trainer", "pid": 7, "run_id": "r"}  # what every line carries
EPOCH = {**WHO, "event": "epoch", "epoch": 1, "epochs": 2, "samples": 512, "reward_mean": 9.5, "samples_per_s": 1e3,
         "rollout_s": 0.1, "train_s": 0.2, "epoch_s": 0.3, "training_sparsity": 0.0, "inference_sparsity": 0.0,
         "inference_version": 0, "policy_lag": 0.5}
# Each crafted line, and how the reader names it.
CRAFTED = {
    "nested": (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    "digits": (b'{"event": "epoch", "samples": ' + b"9" * 5000 + b"}", "not JSON (Exceeds the limit"),
    "wrong type": (json.dumps({**EPOCH, "samples": "lots"}).encode(), 'epoch: samples is "lots", not an integer'),
    "bool for int": (json.dumps({**EPOCH, "epoch": True}).encode(), "epoch: epoch is true, not an integer"),
    "huge int": (json.dumps({**EPOCH, "training_sparsity": 10**400}).encode(), "training_sparsity is 1000"),
    "missing": (json.dumps({**WHO, "event": "summary"}).encode(), "summary: no mode"),
    "nested type": (json.dumps({**WHO, "role": "compressor", "event": "pruning_planned", "method": "magnitude",
                                "structure": "weight", "scope": "global", "distribution": "uniform", "regrow": False,
                                "schedule": "constant", "steps": [["x", 0.8]]}).encode(), "steps is"),
    "bad time": (json.dumps({**EPOCH, "ts": "yesterday"}).encode(), 'ts is "yesterday", not an ISO 8601 time'),
    "unhashable role": (json.dumps({**EPOCH, "role": ["trainer"]}).encode(),
                        'epoch: role is ["trainer"], not a string'),
    "not an object": (b"[1, 2]", "not a JSON object with an event name"),
    "no event": (b'{"ts": "2026-01-01T00:00:00Z"}', "not a JSON object with an event name"),
    "not utf-8": (b'{"event": "\xff\xfe"}', "not UTF-8 (byte 11)"),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_line_is_named_and_never_raises_anything_else(name):
    raw, reason = CRAFTED[name]
    with pytest.raises(runlog.BadLine) as caught:
        runlog.parse_line(raw)
    assert str(caught.value).startswith(reason) or reason in str(caught.value), str(caught.value)
    assert len(str(caught.value)) < 120


def test_a_well_formed_line_comes_back_as_it_was_logged():
    assert runlog.parse_line(json.dumps(EPOCH).encode()) == EPOCH
    unknown = {**WHO, "event": "something_new", "anything": [1, {"x": None}]}  # an event the readers do not read
    assert runlog.parse_line(json.dumps(unknown).encode()) == unknown


@pytest.fixture
def run_dir(tmp_path) -> Path:
    cfg = load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path / 'runs'))}", "run_id=r", "preset=none",
                                 "epochs=2"])
    return rundir.prepare(cfg, check_ports=False)


def crafted_log(run_dir: Path) -> Path:
    """trainer.jsonl: two good epochs around every crafted line (lines 2 to 12), and a last line
    still being written."""
    path = run_dir / "logs" / "trainer.jsonl"
    good = [json.dumps(EPOCH).encode(), json.dumps({**EPOCH, "epoch": 2}).encode()]
    path.write_bytes(b"\n".join([good[0], *(raw for raw, _ in CRAFTED.values()), good[1], b'{"event": "ep']))
    return path


def test_a_run_is_read_whole_but_its_bad_lines_which_are_counted_with_the_first(run_dir):
    crafted_log(run_dir)
    run = runlog.load(run_dir)
    assert [e["epoch"] for e in run.epochs()] == [1, 2]
    [unreadable] = run.unreadable
    assert str(unreadable) == (f"{len(CRAFTED)} unreadable lines in logs/trainer.jsonl, first at line 2: "
                               "JSON nested too deeply")  # the unfinished last line is not one of them


def test_a_log_that_is_a_link_or_a_pipe_is_not_read(run_dir, tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(json.dumps(EPOCH) + "\n")
    (run_dir / "logs" / "trainer.jsonl").symlink_to(outside)
    os.mkfifo(run_dir / "logs" / "worker-0.jsonl")  # reading it would wait for a writer forever
    (run_dir / "logs" / "supervisor.jsonl").write_text(json.dumps({**WHO, "role": "supervisor",
                                                                    "event": "run_started"}) + "\n")
    found = {}
    reader = threading.Thread(target=lambda: found.setdefault("run", runlog.load(run_dir)), daemon=True)
    reader.start()
    reader.join(10)
    assert "run" in found, "reading a pipe never returned"
    assert [str(u) for u in found["run"].unreadable] == [
        "logs/trainer.jsonl could not be read: a symbolic link (a run's logs are its own files)",
        "logs/worker-0.jsonl could not be read: not a regular file"]


@pytest.mark.parametrize("command", ["diagnose", "show", "list", "report"])
def test_no_command_that_reads_logs_fails_on_crafted_lines(run_dir, tmp_path, capsys, command):
    crafted_log(run_dir)
    target = run_dir.parent if command == "list" else run_dir
    extra = ["--out", str(tmp_path / "plots")] if command == "report" else []
    code, out, err = run_cli(capsys, command, str(target), *extra)  # in this process: a traceback fails the test
    if command == "list":
        assert code == 0 and f"({len(CRAFTED)} unreadable log lines)" in out
    else:
        assert f"{len(CRAFTED)} unreadable lines in logs/trainer.jsonl, first at line 2" in out + err
    if command == "diagnose":  # could not read: neither a pass nor a fail
        assert code == 3 and "FAIL  logs readable:" in out
    elif command in ("show", "report"):
        assert code == 0


def test_diagnose_tells_could_not_read_from_fail_from_pass_in_its_help(capsys):
    code, help_text, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "1: a FAIL, 3: lines of the logs could not be read" in " ".join(help_text.split())


@pytest.mark.parametrize("text, reason", [
    ("x = " + "[" * 5000 + "]" * 5000, "is not valid TOML: maximum recursion depth exceeded"),
    ("epochs = " + "9" * 5000, "is not valid TOML: Exceeds the limit (4300 digits)"),
])
def test_a_crafted_config_is_one_line_for_the_run_and_list_goes_on(run_dir, capsys, text, reason):
    (run_dir / "config.toml").write_text(text + "\n")
    code, _, err = run_cli(capsys, "diagnose", str(run_dir))
    assert code == 2 and reason in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "list", str(run_dir.parent))
    assert code == 0 and reason in out
