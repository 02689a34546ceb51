"""Sync runs are reproducible: two runs with the same seed and config log the same epoch records (every field
that does not measure time) and keep bit-identical weights; a run with another seed does not.

What made two such runs differ was the trainer, not the workers: it used an epoch's chunks in the order
they arrived, which shuffled PPO's minibatches and SAC's replay rows, and moved the shared reward
statistics and the window of episode returns in that order. The in-process tests below hold the part that
timing cannot reach in a whole run on demand: an epoch is the same whichever worker's chunk arrives first,
and sync mode does not start an update before the report on the snapshot the workers ran. The same sync
runs also show that sync mode throws no env step away (the workers pause after their share of a version).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import zmq

from hotprune.learning.chunks import Batch
from hotprune.protocol.codec import Encoder
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer import Trainer
from tests.servicekit import HOTPRUNE, accounting_adds_up, assert_clean, hotprune, logged, settings

TIMING = {"ts", "pid", "run_id", "rollout_s", "train_s", "epoch_s", "samples_per_s"}  # what differs by right
# Checkpoint tensors that record when, not what: swap latencies, and the reward returns' worker process starts.
TIMED_TENSORS = {"swap_latencies_ms", "reward_stats.starts"}

PPO = ["mode=sync", "epochs=5", "normalize_obs=true", "normalize_reward=true", "pruning.method=taylor"]
SAC = ["mode=sync", "algorithm=sac", "env_id=Pendulum-v1", "epochs=3", "sac.hidden_sizes=32,32",
       "sac.batch_size=64", "sac.learning_starts=512", "sac.utd=0.25", "pruning.targets=actor,critic"]
# SMALL's 512-sample epochs are two 128-sample chunks from each of the two workers; both-pruned, a
# compression is due from the snapshot of epoch 2, so the masks go back to the trainer mid-run. SAC: version 0
# acts at random, epochs 1-3 take 128 critic and 128 actor steps each; its critics are pruned at epoch 2.


def sync_trainer(tmp_path: Path, run_id: str, *extra: str) -> Trainer:
    run_dir = Path(hotprune("init", *settings(tmp_path, run_id, "mode=sync", *extra)).stdout.strip())
    return Trainer(load_run_config(run_dir), StopFlag())


def chunk(worker: int, seq: int) -> tuple[dict, dict]:
    """A CartPole chunk of SMALL's size (32 steps x 4 envs) that depends on who sent it only."""
    rng = np.random.default_rng([worker, seq])
    fields = {"worker_id": worker, "worker_start": 100 + worker, "policy_version": 0, "policy_sparsity": 0.0,
              "policy_nonzero_params": 0, "episode_returns": [float(10 * worker + seq)], "episode_lengths": [5],
              "swap_latencies_ms": []}
    tensors = {"obs": rng.normal(size=(33, 4, 4)).astype(np.float32), "actions": rng.integers(0, 2, (32, 4)),
               "logprobs": np.full((32, 4), -0.69, np.float32), "rewards": rng.random((32, 4)).astype(np.float32),
               "terminated": rng.random((32, 4)) < 0.1, "truncated": np.zeros((32, 4), bool),
               "final_obs": np.zeros((0, 4), np.float32)}
    return fields, tensors


def epoch_taken_in(tmp_path: Path, run_id: str, arrival: list[tuple[int, int]]) -> tuple[Batch, list, dict]:
    """The epoch a fresh sync trainer makes of the chunks (worker, seq) arriving in this order on its real
    trajectory socket: the batch, the episode window, and the reward statistics."""
    trainer = sync_trainer(tmp_path, run_id, "normalize_reward=true")
    ctx = zmq.Context()
    try:
        pushes = {}
        for worker in (0, 1):
            pushes[worker] = ctx.socket(zmq.PUSH)
            pushes[worker].connect(trainer.cfg.endpoints().trajectories)
        encoders = {w: Encoder(trainer.cfg.run_id, f"worker-{w}") for w in (0, 1)}
        collection = trainer.collection
        collection.begin()
        for worker, seq in arrival:
            pushes[worker].send_multipart(encoders[worker].encode("trajectory", *chunk(worker, seq)))
            assert collection.socket.poll(10_000), "the chunk never reached the trainer"
            collection.receive()  # one at a time: the trainer reads them in exactly this order
        assert not collection.wants_more()
        collected = collection.finish()
        return Batch.stack(collected.chunks), list(trainer.reports.episodes), trainer.normalisation.rewards.state()
    finally:
        ctx.destroy(linger=0)
        trainer.ctx.destroy(linger=0)


def test_an_epoch_is_the_same_whichever_workers_chunk_arrives_first(tmp_path):
    # Each worker's chunks come in the order it sent them (one pipe each); the pipes interleave as they will.
    one = epoch_taken_in(tmp_path, "first", [(0, 0), (0, 1), (1, 0), (1, 1)])
    other = epoch_taken_in(tmp_path, "second", [(1, 0), (0, 0), (1, 1), (0, 1)])
    batch, episodes, rewards = one
    for name, array in vars(batch).items():
        assert np.array_equal(array, getattr(other[0], name)), name
    assert episodes == other[1] == [0.0, 1.0, 10.0, 11.0]  # worker by worker, not as they came
    for name in ("mean", "var", "count", "returns"):
        assert np.array_equal(rewards[name], other[2][name]), name
    assert not np.array_equal(batch.rewards, np.concatenate([chunk(w, s)[1]["rewards"] for w, s in
                                                             [(0, 0), (0, 1), (1, 0), (1, 1)]], axis=1))  # scaled


def test_sync_does_not_update_before_the_report_on_the_snapshot_the_workers_ran(tmp_path):
    trainer = sync_trainer(tmp_path, "report", "pruning.start_epoch=2")
    ctx = zmq.Context()
    try:
        intake, step, position = trainer.intake, trainer.schedule.steps[0], trainer.position
        push = ctx.socket(zmq.PUSH)
        push.connect(trainer.cfg.endpoints().masks)
        encoder = Encoder(trainer.cfg.run_id, "compressor")

        def report(version: int, failed: bool) -> None:
            fields = {"version": version, "epoch": version, "due_epoch": step.epoch, "target_sparsity": step.sparsity,
                      "failed": failed, "weight_sparsity": 0.0 if failed else step.sparsity, "params_kept": 100}
            keep = {} if failed else {n: np.arange(p.numel()).reshape(tuple(p.shape)) >= step.sparsity * p.numel()
                                      for n, p in trainer.masks.training.params.items()}
            push.send_multipart(encoder.encode("masks", fields, keep))
            assert intake.socket.poll(10_000), "the report never reached the trainer"
            intake.drain()

        position.epoch, position.version = 2, 1  # collecting the data of snapshot 1 (epoch 1)
        assert not intake.report_awaited()  # no step was due at epoch 1
        position.epoch, position.version = 3, 2  # the data of snapshot 2, whose epoch is the step's
        assert intake.report_awaited()
        report(2, failed=True)  # the criterion could not rank: the step stays due
        assert not intake.report_awaited()
        position.epoch, position.version = 4, 3  # the compressor tries again on snapshot 3
        assert intake.report_awaited()
        report(3, failed=False)
        assert not intake.report_awaited() and intake.pending is not None  # the masks wait for take_up
        position.epoch, position.version = 5, 4
        assert not intake.report_awaited()  # the step is done
    finally:
        ctx.destroy(linger=0)
        trainer.ctx.destroy(linger=0)


def start(tmp_path: Path, run_id: str, config: list[str], seed: int) -> subprocess.Popen:
    """A run beside the others; a long stop grace, since five runs at once slow each torch process's exit."""
    return subprocess.Popen([HOTPRUNE, "run", "--quiet", *settings(tmp_path, run_id, *config, f"seed={seed}",
                                                                   "supervisor.stop_grace_s=30")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def sync_runs(tmp_path_factory) -> dict[str, Path]:
    """Two PPO runs with seed 1, one with seed 2, two SAC runs with seed 1: all at once, so the machine's
    load varies the timing of each as much as it can."""
    tmp = tmp_path_factory.mktemp("sync")
    runs = {"ppo-a": (PPO, 1), "ppo-b": (PPO, 1), "ppo-seed2": (PPO, 2), "sac-a": (SAC, 1), "sac-b": (SAC, 1)}
    procs = {run_id: start(tmp, run_id, config, seed) for run_id, (config, seed) in runs.items()}
    for run_id, proc in procs.items():
        assert proc.wait(timeout=300) == 0, f"{run_id}: {proc.stderr.read()}"
        assert_clean(tmp / "runs" / run_id)
    return {run_id: tmp / "runs" / run_id for run_id in runs}


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in logged(run_dir, "trainer", "epoch")]


def kept(run_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor a run keeps (the published policy, its masks, the trainer's last checkpoint), by file."""
    return {f"{name}:{key}": array
            for name in ("policy", "masks", "checkpoint")
            for key, array in safetensors.numpy.load_file(run_dir / f"{name}.safetensors").items()
            if key not in TIMED_TENSORS}


@pytest.mark.slow
def test_two_sync_runs_with_one_seed_are_identical_and_another_seed_differs(sync_runs):
    run = sync_runs
    for a, b in (("ppo-a", "ppo-b"), ("sac-a", "sac-b")):
        assert records(run[a]) == records(run[b]), f"{a} and {b} logged different epochs"
        one, other = kept(run[a]), kept(run[b])
        assert one.keys() == other.keys()
        assert [k for k in one if not np.array_equal(one[k], other[k])] == [], f"{a} and {b} kept different weights"
    sac_epochs = records(run["sac-a"])
    assert sac_epochs[-1]["gradient_steps"] > 0 and sac_epochs[-1]["critic_sparsity"] > 0  # it learnt, pruned
    assert records(run["ppo-a"])[-1]["training_sparsity"] > 0
    one, other = kept(run["ppo-a"]), kept(run["ppo-seed2"])
    assert not np.array_equal(one["policy:net.0.weight"], other["policy:net.0.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("run_id", ["ppo-a", "sac-a"])
def test_sync_workers_pause_after_their_share_so_no_env_step_is_thrown_away(sync_runs, run_id):
    run_dir = sync_runs[run_id]
    cfg = load_run_config(run_dir)
    epochs, summary = accounting_adds_up(run_dir)
    assert len(epochs) == cfg.total_epochs and summary["samples_dropped_stale"] == 0
    assert all(e["policy_lag"] == 0 for e in epochs)
    taken = sum(logged(run_dir, f"worker-{i}", "worker_stopped")[-1]["samples"] for i in range(cfg.num_workers))
    # Every env step the workers took was trained on, but for the share each sends of the last
    # version (nobody trains on it: the run is over) and a chunk begun when the stop came.
    share = cfg.chunks_per_worker * cfg.chunk_samples
    assert summary["samples_received"] <= taken <= summary["samples_received"] + cfg.num_workers * (
        share + cfg.chunk_samples), (taken, summary["samples_received"])
