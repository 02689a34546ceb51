"""A worker whose trajectory chunk waits for the trainer keeps swapping to new weights, and the chunk
keeps the version of its first step. One real worker process; the test plays compressor and trainer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from hotprune.protocol.codec import Encoder, decode
from hotprune.config import load_config
from hotprune.envs import env_spec
from hotprune.learning.policy import actor_arrays, make_actor
from hotprune.protocol.store_layout import segment_name
from hotprune.runs.rundir import store_slot_size
from hotprune.comms.weight_store import WeightStore
from tests.servicekit import HOTPRUNE, hotprune, logged, settings, wait_for

pytestmark = pytest.mark.slow


def test_a_worker_blocked_on_a_full_trajectory_queue_swaps_and_its_chunk_keeps_its_first_version(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "blocked", "chunk_steps=8")).stdout.strip())
    cfg = load_config(run_dir / "config.toml")
    cfg.runs_dir, cfg.run_id = str(run_dir.parent), run_dir.name
    weights = actor_arrays(make_actor(env_spec(cfg.env_id), cfg.ppo.hidden_sizes))
    store = WeightStore.create(segment_name(cfg.run_dir), store_slot_size(cfg))
    ctx = zmq.Context()
    notify = ctx.socket(zmq.PUB)
    notify.bind(cfg.endpoints().weights)
    encoder = Encoder(cfg.run_id, "compressor")
    store.publish(weights, 0)
    worker = subprocess.Popen([HOTPRUNE, "worker", "--run-dir", str(run_dir), "--index", "0"])
    try:
        # Nobody takes trajectories yet: the first chunk (8 steps of v0) fills the socket's queue, the
        # second cannot be sent.
        wait_for(lambda: any(e["steps"] == 16 for e in logged(run_dir, "worker-0", "heartbeat")), timeout=60,
                 what="the worker to block on its second chunk")
        store.publish({n: w + np.float32(1) for n, w in weights.items()}, 1)
        notify.send_multipart(encoder.encode("weights_ready", {"version": 1, "slot": 1, "structure_changed": False}))
        swapped = wait_for(lambda: [e for e in logged(run_dir, "worker-0", "worker_swapped") if e["version"] == 1],
                           timeout=10, what="the blocked worker to swap to v1")
        assert swapped[0]["previous_version"] == 0
        assert max(e["steps"] for e in logged(run_dir, "worker-0", "heartbeat")) == 16  # swapped without stepping

        trajectories = ctx.socket(zmq.PULL)
        trajectories.bind(cfg.endpoints().trajectories)
        chunks = [decode(trajectories.recv_multipart(), run_id=cfg.run_id, kinds={"trajectory"}) for _ in range(3)]
        assert [c.fields["policy_version"] for c in chunks] == [0, 0, 1]
        notify.send_multipart(encoder.encode("control", {"command": "stop"}))
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
        ctx.destroy(linger=0)
        store.close()
        store.unlink()
