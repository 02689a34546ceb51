"""Each process started by hand through its own CLI, against one run directory: the same service."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tests.servicekit import HOTPRUNE, assert_clean, events, hotprune, of, settings

pytestmark = pytest.mark.slow


def test_processes_started_by_hand_make_the_same_service(tmp_path):
    init = hotprune("init", *settings(tmp_path, "hand", "epochs=4"))
    assert init.returncode == 0, init.stderr
    run_dir = Path(init.stdout.strip())
    assert run_dir == tmp_path / "runs" / "hand"
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700 and (run_dir / "config.toml").is_file()

    args = ["--run-dir", str(run_dir)]
    others = [
        subprocess.Popen([sys.executable, "-m", "hotprune.roles.compressor", *args]),
        subprocess.Popen([HOTPRUNE, "worker", *args, "--index", "0"]),
        subprocess.Popen([sys.executable, "-m", "hotprune.workers.inference_worker", *args, "--index", "1"]),
    ]
    try:
        trainer = subprocess.run([HOTPRUNE, "trainer", *args], capture_output=True, text=True, timeout=120)
        assert trainer.returncode == 0, trainer.stderr
        assert "=== Summary (async, both pruned) ===" in trainer.stdout
        # The trainer's control `stop` reaches the compressor, which passes it on to the workers.
        assert [p.wait(timeout=30) for p in others] == [0, 0, 0]
    finally:
        for p in others:
            p.kill()
    assert_clean(run_dir)  # no supervisor: the compressor created the store, so it unlinked it
    assert of(events(run_dir, "compressor"), "compression_finished")
    assert of(events(run_dir, "trainer"), "masks_applied")
    for worker in ("worker-0", "worker-1"):
        assert of(events(run_dir, worker), "worker_swapped")


def test_worker_index_outside_the_run_is_refused(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "idx")).stdout.strip())
    result = hotprune("worker", "--run-dir", str(run_dir), "--index", "5", timeout=60)
    assert result.returncode == 2
    assert result.stderr == "hotprune worker: error: --index must be in [0, 2) (the run's num_workers), got 5\n"


def test_a_process_without_a_run_directory_fails_with_one_line(tmp_path):
    result = hotprune("trainer", "--run-dir", str(tmp_path / "nowhere"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_a_port_in_use_fails_with_one_line(tmp_path):
    ctx = zmq.Context()
    squatter = ctx.socket(zmq.PULL)
    port = squatter.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=30000)
    try:  # the trainer binds base_port .. base_port + 2; trajectories is the last
        run_dir = Path(hotprune("init", *settings(tmp_path, "tcp", "transport.kind=tcp",
                                                  f"transport.base_port={port - 2}")).stdout.strip())
        result = hotprune("trainer", "--run-dir", str(run_dir), timeout=60)
    finally:
        ctx.destroy(linger=0)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Address already in use" in result.stderr
