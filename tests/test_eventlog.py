"""Event logs: a crash leaves its reason in the process's own JSON file, without local variables."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from hotprune import eventlog


def test_a_crash_is_logged_with_its_frames_but_no_locals_and_raised_on(tmp_path):
    log = eventlog.setup(tmp_path, "run-x", "trainer")
    # a local a traceback with locals would print; its repr cannot occur in a timestamp (7.0 could: 04:57:07.0...)
    secret = np.full(1000, 123456.5)

    def broken(weights):
        raise RuntimeError("the update went wrong")

    with pytest.raises(RuntimeError, match="the update went wrong"):
        with eventlog.crashes_logged(log):
            broken(secret)
    [line] = [json.loads(x) for x in (tmp_path / "logs" / "trainer.jsonl").read_text().splitlines()]
    assert line["event"] == "process_crashed" and line["level"] == "error" and line["role"] == "trainer"
    assert line["error"] == "RuntimeError: the update went wrong"
    [exc] = line["exception"]
    assert exc["exc_type"] == "RuntimeError" and [f["name"] for f in exc["frames"]][-1] == "broken"
    assert all("locals" not in frame for frame in exc["frames"])
    assert "123456.5" not in json.dumps(line)


def test_a_crash_message_is_cut_so_a_log_line_stays_small(tmp_path):
    log = eventlog.setup(tmp_path, "run-y", "worker", 0)
    with pytest.raises(ValueError):
        with eventlog.crashes_logged(log):
            raise ValueError("A" * 100_000)
    line = (tmp_path / "logs" / "worker-0.jsonl").read_text()
    assert len(line) < 5_000 and json.loads(line)["exception"][0]["exc_value"] == "A" * 200


def test_a_flood_of_warnings_is_echoed_throttled_and_logged_whole(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(eventlog, "ECHO_EVERY_S", 0.5)
    log = eventlog.setup(tmp_path, "run-z", "trainer")
    for i in range(1000):
        log.warning("message_rejected", reason=f"forgery {i}")
    log.warning("masks_not_nested", version=3)  # another warning has its own count
    log.error("process_crashed", error="shown whatever came before")
    time.sleep(0.6)
    log.warning("message_rejected", reason="after the interval")
    shown = capsys.readouterr().err.splitlines()
    assert [line.split(" reason=")[-1] for line in shown if "message_rejected" in line] == [
        "forgery 0", "forgery 1", "forgery 2", "forgery 3",
        "forgery 4 (from now on at most one line per 0.5 s; the JSON log has every one)",
        "after the interval (995 more since the last shown; the JSON log has every one)"]
    assert any("masks_not_nested" in line for line in shown) and any("process_crashed" in line for line in shown)
    lines = [json.loads(x) for x in (tmp_path / "logs" / "trainer.jsonl").read_text().splitlines()]
    assert len([e for e in lines if e["event"] == "message_rejected"]) == 1001
