"""Trainer checkpoints and liveness pings, in-process: what a restart relies on."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from hotprune.learning import checkpoints
from hotprune.roles import liveness
from hotprune.runs import artifacts, runlog
from hotprune.envs import env_spec
from hotprune.protocol.endpoints import socket_dir
from hotprune.learning.policy import make_actor, make_critic
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer import Trainer
from tests.servicekit import hotprune, logged, settings


def _learner(seed: int):
    torch.manual_seed(seed)
    spec = env_spec("CartPole-v1")
    actor, critic = make_actor(spec, [16, 16]), make_critic(spec, [16, 16])
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=1e-2, eps=1e-5)
    return actor, critic, optimizer, torch.Generator().manual_seed(seed)


def _steps(actor, critic, optimizer, generator, n: int) -> torch.Tensor:
    """n Adam steps on random batches drawn from both RNGs; returns the last loss."""
    for _ in range(n):
        obs = torch.randn(32, 4, generator=generator) + torch.rand(1)  # the global RNG too
        loss = actor.net(obs).pow(2).mean() + critic(obs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.detach()


def _parts(actor, critic, optimizer):
    """PPO's modules and optimizer, by the names its checkpoint gives them."""
    return {"actor": actor, "critic": critic}, {"adam": optimizer}


def test_a_restored_learner_continues_exactly_as_the_original(tmp_path):
    actor, critic, optimizer, generator = _learner(1)
    _steps(actor, critic, optimizer, generator, 5)
    tensors = checkpoints.state_tensors(*_parts(actor, critic, optimizer), generator)
    checkpoints.save(tmp_path, tensors, run_id="r", env_id="CartPole-v1", hidden_sizes=[16, 16],
                     param_groups=checkpoints.param_groups(_parts(actor, critic, optimizer)[1]))
    expected = _steps(actor, critic, optimizer, generator, 5)

    other = _learner(2)  # different weights, no optimizer state, other RNG states
    loaded, meta = checkpoints.load(tmp_path, "r", "CartPole-v1", [16, 16])
    checkpoints.restore(loaded, *_parts(*other[:3]), other[3], meta["param_groups"])
    got = _steps(*other, 5)
    assert torch.equal(got, expected)
    for (name, a), b in zip(actor.state_dict().items(), other[0].state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_is_plain_safetensors_and_refused_by_another_run_or_model(tmp_path):
    actor, critic, optimizer, generator = _learner(1)
    _steps(actor, critic, optimizer, generator, 1)
    checkpoints.save(tmp_path, checkpoints.state_tensors(*_parts(actor, critic, optimizer), generator), run_id="r",
                     env_id="CartPole-v1", hidden_sizes=[16, 16], param_groups={})
    plain = safetensors.torch.load_file(str(checkpoints.path(tmp_path)))  # no hotprune, no pickle
    assert torch.equal(plain["actor.net.0.weight"], actor.state_dict()["net.0.weight"])
    assert "adam.0.exp_avg" in plain and "rng.generator" in plain
    with pytest.raises(checkpoints.CheckpointError, match="run_id 'r', not 'other'"):
        checkpoints.load(tmp_path, "other", "CartPole-v1", [16, 16])
    with pytest.raises(checkpoints.CheckpointError, match="hidden_sizes"):
        checkpoints.load(tmp_path, "r", "CartPole-v1", [64, 64])
    checkpoints.path(tmp_path).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(checkpoints.CheckpointError, match="not a hotprune tensor file"):
        checkpoints.load(tmp_path, "r", "CartPole-v1", [16, 16])


def test_restoring_into_a_model_of_another_shape_is_one_clear_error(tmp_path):
    actor, critic, optimizer, generator = _learner(1)
    tensors = checkpoints.state_tensors(*_parts(actor, critic, optimizer), generator)
    spec = env_spec("CartPole-v1")
    bigger = make_actor(spec, [32, 32]), make_critic(spec, [32, 32])
    opt = torch.optim.Adam([*bigger[0].parameters(), *bigger[1].parameters()])
    with pytest.raises(checkpoints.CheckpointError, match="does not fit this model"):
        checkpoints.restore(tensors, *_parts(*bigger, opt), torch.Generator(), checkpoints.param_groups({"adam": opt}))


def test_pings_through_the_inherited_pipe_reset_the_silence(monkeypatch):
    listener = liveness.Listener()
    monkeypatch.setenv(liveness.ENV, str(listener.write_fd))
    pulse = liveness.Pulse.inherited()
    assert pulse.fd == listener.write_fd
    time.sleep(0.3)
    assert listener.silent_s() >= 0.3 and not listener.pinged
    pulse.ping()
    assert listener.silent_s() < 0.1 and listener.pinged
    time.sleep(0.3)
    pulse.ping()  # within PING_S of the last: not sent
    assert listener.silent_s() >= 0.3
    listener.close()
    pulse.due = 0.0
    pulse.ping()  # the reader is gone: the pulse goes quiet instead of failing
    assert pulse.fd is None
    os.close(listener.write_fd)


@pytest.mark.parametrize("value", ["", "not-a-number", "99999", "a regular file"])
def test_a_process_without_a_liveness_pipe_pings_nothing(monkeypatch, tmp_path, value):
    if value == "a regular file":  # an open descriptor, but not a pipe
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
        value = str(fd)
    monkeypatch.setenv(liveness.ENV, value)
    assert liveness.Pulse.inherited().fd is None


@pytest.mark.slow
def test_a_resumed_trainer_logs_an_epoch_its_killed_predecessor_checkpointed_but_never_logged(tmp_path):
    """The checkpoint of epoch e is written before epoch e's line: a kill in between leaves the log
    without it. The resumed trainer logs it (`replayed`), and the run's history has every epoch once."""
    result = hotprune("run", "--quiet", *settings(tmp_path, "lost", "epochs=3"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "lost"
    log = run_dir / "logs" / "trainer.jsonl"
    lines = log.read_text().splitlines()
    last_epoch = max(i for i, line in enumerate(lines) if json.loads(line)["event"] == "epoch")
    log.write_text("\n".join(lines[:last_epoch] + ['{"event": "epo']) + "\n")  # cut short by the kill
    trainer = Trainer(load_run_config(run_dir), StopFlag(), resume=True)
    trainer.ctx.destroy(linger=0)
    assert [e["epoch"] for e in runlog.load(run_dir).epochs()] == [1, 2, 3]
    assert [e["epoch"] for e in logged(run_dir, "trainer", "epoch") if e.get("replayed")] == [3]


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


@pytest.mark.parametrize("name", ["ppo", "sac"])
def test_a_checkpoint_written_before_the_trainer_became_a_package_resumes_and_is_written_back_the_same(tmp_path, name):
    """tests/fixtures/checkpoints/<name>: a finished run's config.toml and trainer checkpoint, written by the
    trainer before it was split into parts (commit 653abd1; its config still names ppo.input_bound), with
    training masks, SAC's critic masks and temperature, and normalisation statistics. A trainer resumes from
    it, and its own checkpoint has the same tensors and metadata: only the position it took over moved."""
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    socket_dir(run_dir).mkdir(mode=0o700)  # what the stopped run's cleanup removed
    before, before_meta = artifacts.load(run_dir / artifacts.CHECKPOINT)
    trainer = Trainer(load_run_config(run_dir), StopFlag(), resume=True)
    try:
        assert trainer.resumed and (trainer.position.epoch, trainer.position.trainer_start) == (4, 1)
        assert trainer.masks.training.count() > 0 and trainer.records.completed
        trainer.checkpoint.save(trainer.position.epoch, trainer.position.version)
    finally:
        trainer.ctx.destroy(linger=0)
    after, after_meta = artifacts.load(run_dir / artifacts.CHECKPOINT)
    assert sorted(after) == sorted(before) and sorted(after_meta) == sorted(before_meta)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    moved = {k for k in before_meta if after_meta[k] != before_meta[k]}
    assert moved <= {"version", "trainer_start", "epoch_ceiling"} and "version" in moved
