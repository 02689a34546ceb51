"""Experiment tracking (hotprune.runs.metrics): TensorBoard and Weights & Biases get the same scalars against
env steps, and W&B's files, offline, stay inside the run directory."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

from hotprune.config import load_config
from hotprune.runs import metrics
from tests.servicekit import wait_for

BLOCK = 32 * 1024  # a .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (its header is 7 bytes)."""
    data, pos, parts, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def written_run(directory: Path) -> list | None:
    """The records of the one offline run file in `directory` once it ends with its exit record, else None:
    W&B's own service process writes the file, and `finish()` can return before it has (a busy machine)."""
    (run_file,) = directory.glob("offline-run-*/run-*.wandb")
    try:
        records = wandb_records(run_file)
    except DecodeError:  # a record cut off where the writer has got to
        return None
    return records if records and records[-1].WhichOneof("record_type") == "exit" else None


def epoch(step: int, reward: float) -> dict:
    return {"global_step": step, "reward_mean": reward, "samples_per_s": 900.0, "training_sparsity": 0.8,
            "inference_sparsity": 0.75, "policy_lag": 1.25, "rollout_s": 0.1, "train_s": 0.5, "policy_loss": -0.01,
            "approx_kl": 0.004}


@pytest.mark.slow  # W&B starts its own service process
def test_wandb_offline_gets_tensorboards_scalars_tags_and_settings_inside_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing may land there
    for place in metrics.WANDB_PLACES:  # the tracker points these into the run directory; restored after
        monkeypatch.setenv(place, str(tmp_path / "elsewhere"))
    cfg = load_config(None, [f"runs_dir={tmp_path}", "run_id=r1", "tensorboard=true", "wandb.track=true",
                             "wandb.project=pruning", "wandb.group=grid-a", "wandb.tags=pruned,async"])
    cfg.run_dir.mkdir()
    trackers = metrics.trackers(cfg)
    assert [type(t) for t in trackers] == [metrics.TensorBoard, metrics.WandB]
    epochs = [epoch(512, 20.0), epoch(1024, 35.5)]
    for record in epochs:
        values = metrics.scalars(record, {"net.0.weight": 0.7})
        for tracker in trackers:
            tracker.log(values, record["global_step"])
    for tracker in trackers:
        tracker.close()

    records = wait_for(lambda: written_run(cfg.run_dir / "wandb"), timeout=30, what="W&B's run file to be written")
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name, list(run.tags)) == ("pruning", "grid-a", "r1",
                                                                              ["pruned", "async"])
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [512, 1024]
    history = [{name: float(i.value_json) for i in h.item if not (name := i.key or "/".join(i.nested_key))[0] == "_"}
               for h in history]  # _step, _runtime, _timestamp: W&B's own
    assert history[1]["charts/episodic_return"] == 35.5 and history[1]["sparsity/net.0.weight"] == 0.7
    assert history[0]["losses/approx_kl"] == 0.004 and "losses/entropy" not in history[0]  # only what it has
    board = EventAccumulator(str(cfg.run_dir / metrics.DIRECTORY))
    board.Reload()
    assert set(board.Tags()["scalars"]) == set(history[0])  # the same tags in both
    assert [(e.step, e.value) for e in board.Scalars("charts/episodic_return")] == [(512, 20.0), (1024, 35.5)]
    assert not (tmp_path / "home").exists() and not (tmp_path / "elsewhere").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"r1"}
