"""Trainer checkpoints and liveness pings, in-process: what a restart relies on."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from hotprune.config import load_config
from hotprune.learning import checkpoints
from hotprune.roles import liveness
from hotprune.runs import artifacts, cleanup, rundir, runlog
from hotprune.envs import env_spec
from hotprune.protocol.endpoints import socket_dir
from hotprune.learning.policy import actor_arrays, make_actor, make_critic
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer import Trainer
from tests.servicekit import hotprune, logged, run_cli, settings


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


def _config(tmp_path):
    """Run r's settings (16-16 CartPole), its directory made, as the checkpoints above are written for."""
    cfg = load_config(None, [f"runs_dir={json.dumps(str(tmp_path))}", "run_id=r", "ppo.hidden_sizes=16,16"])
    cfg.run_dir.mkdir()
    return cfg


def _parts(actor, critic, optimizer):
    """PPO's modules and optimizer, by the names its checkpoint gives them."""
    return {"actor": actor, "critic": critic}, {"adam": optimizer}


def test_a_restored_learner_continues_exactly_as_the_original(tmp_path):
    actor, critic, optimizer, generator = _learner(1)
    _steps(actor, critic, optimizer, generator, 5)
    tensors = checkpoints.state_tensors(*_parts(actor, critic, optimizer), generator)
    cfg = _config(tmp_path)
    checkpoints.save(cfg, tensors, param_groups=checkpoints.param_groups(_parts(actor, critic, optimizer)[1]))
    expected = _steps(actor, critic, optimizer, generator, 5)

    other = _learner(2)  # different weights, no optimizer state, other RNG states
    loaded, meta = checkpoints.load(cfg)
    checkpoints.restore(loaded, *_parts(*other[:3]), other[3], meta["param_groups"])
    got = _steps(*other, 5)
    assert torch.equal(got, expected)
    for (name, a), b in zip(actor.state_dict().items(), other[0].state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_is_plain_safetensors_and_refused_by_another_run_or_model(tmp_path):
    actor, critic, optimizer, generator = _learner(1)
    _steps(actor, critic, optimizer, generator, 1)
    cfg = _config(tmp_path)
    checkpoints.save(cfg, checkpoints.state_tensors(*_parts(actor, critic, optimizer), generator), param_groups={})
    plain = safetensors.torch.load_file(str(checkpoints.path(cfg.run_dir)))  # no hotprune, no pickle
    assert torch.equal(plain["actor.net.0.weight"], actor.state_dict()["net.0.weight"])
    assert "adam.0.exp_avg" in plain and "rng.generator" in plain
    other = dataclasses.replace(cfg, run_id="other")  # r's checkpoint copied into run other's directory
    other.run_dir.mkdir()
    shutil.copy(checkpoints.path(cfg.run_dir), checkpoints.path(other.run_dir))
    with pytest.raises(checkpoints.CheckpointError, match="run_id 'r', not 'other'"):
        checkpoints.load(other)
    with pytest.raises(checkpoints.CheckpointError, match="hidden_sizes"):
        checkpoints.load(load_config(None, [f"runs_dir={json.dumps(str(tmp_path))}", "run_id=r"]))
    checkpoints.path(cfg.run_dir).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(checkpoints.CheckpointError, match="not a hotprune tensor file"):
        checkpoints.load(cfg)


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


def test_a_child_that_says_done_is_seen_as_done_and_alive(monkeypatch):
    listener = liveness.Listener()
    monkeypatch.setenv(liveness.ENV, str(listener.write_fd))
    pulse = liveness.Pulse.inherited()
    pulse.ping()
    assert listener.silent_s() < 0.1 and not listener.done
    time.sleep(0.2)
    pulse.done()
    assert listener.silent_s() < 0.1 and listener.done
    listener.close()
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


# --- resume: nothing corrupt, foreign or edited under the checkpoint is trusted -------------------

CHECKPOINT_EPOCH = 5


def _flip_last_byte(path: Path) -> None:
    """One bit of the last tensor's data (the file ends with the data section)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _stopped_run(runs_dir: Path) -> Path:
    """A run stopped at epoch CHECKPOINT_EPOCH of 10: its real trainer's checkpoint, and the policy and
    masks its compressor keeps (half of the first layer pruned)."""
    cfg = load_config(None, [f"runs_dir={json.dumps(str(runs_dir))}", "run_id=stopped", "epochs=10",
                             "ppo.hidden_sizes=16,16"])
    run_dir = rundir.prepare(cfg, check_ports=False)  # `hotprune init`
    cfg = load_run_config(run_dir)
    trainer = Trainer(cfg, StopFlag())
    trainer.position.epoch = CHECKPOINT_EPOCH
    trainer.checkpoint.save(trainer.position.epoch, trainer.position.version)
    trainer.ctx.destroy(linger=0)
    cleanup.remove_sockets(run_dir)  # as the stopped run's supervisor did
    keep = {"net.0.weight": np.arange(64).reshape(16, 4) % 2 == 0}
    artifacts.save(run_dir / artifacts.MASKS, keep, **artifacts.run_meta(cfg), masks_version=4, masks_epoch=4,
                   masks_due_epoch=2)
    artifacts.save(run_dir / artifacts.POLICY, actor_arrays(trainer.actor), **artifacts.run_meta(cfg))
    return run_dir


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """Made once; each test tampers with its own copy."""
    return _stopped_run(tmp_path_factory.mktemp("stopped") / "runs")


def _edit_config(run_dir: Path, line: str, replacement: str) -> None:
    path = run_dir / "config.toml"
    text = path.read_text()
    assert line in text.splitlines(), line
    path.write_text(text.replace(line + "\n", replacement + "\n", 1))


def _nan_in(path: Path) -> None:
    """A NaN written back with a valid checksum: refused for the value itself."""
    tensors, meta = artifacts.load(path)
    name = next(n for n, a in tensors.items() if a.dtype == np.float32 and a.size)
    tensors[name].flat[0] = np.nan
    artifacts.save(path, tensors, **meta)


def _from_another_run(run_dir: Path, name: str) -> None:
    """The same file of a run with the same run id in another runs directory (grid cells repeat ids)."""
    twin = _stopped_run(run_dir.parent.parent / "elsewhere")
    shutil.copy(twin / name, run_dir / name)


def _all_kept(run_dir: Path) -> None:
    """masks.safetensors replaced by an all-kept one, written with safetensors itself."""
    path = run_dir / artifacts.MASKS
    tensors, meta = artifacts.load(path)
    safetensors.numpy.save_file({n: np.ones_like(a) for n, a in tensors.items()}, str(path),
                                metadata={k: json.dumps(v) for k, v in meta.items() if k != artifacts.CHECKSUM})


TAMPERED = {
    "a flipped bit in the checkpoint": (lambda d: _flip_last_byte(d / artifacts.CHECKPOINT), "is corrupt"),
    "a NaN in the checkpoint": (lambda d: _nan_in(d / artifacts.CHECKPOINT), "holds non-finite values"),
    "another run's checkpoint": (lambda d: _from_another_run(d, artifacts.CHECKPOINT), "belongs to another run"),
    "a flipped mask entry": (lambda d: _flip_last_byte(d / artifacts.MASKS), "is corrupt"),
    "an all-kept masks file": (_all_kept, "has no checksum"),
    "another run's masks": (lambda d: _from_another_run(d, artifacts.MASKS), "belongs to another run"),
    "a NaN in the policy": (lambda d: _nan_in(d / artifacts.POLICY), "holds non-finite values"),
    "teacher-student instead of both pruned": (
        lambda d: _edit_config(d, "prune_training_model = true", "prune_training_model = false"),
        "prune_training_model is false, but the checkpoint"),
    "other hidden sizes": (lambda d: _edit_config(d, "hidden_sizes = [16, 16]", "hidden_sizes = [32, 32]"),
                           "hidden_sizes is [32, 32]"),
    "another activation": (lambda d: _edit_config(d, 'activation = "auto"', 'activation = "elu"'),
                           'actor.activation is "elu"'),
    "another environment": (lambda d: _edit_config(d, 'env_id = "CartPole-v1"', 'env_id = "Acrobot-v1"'),
                            'env_id is "Acrobot-v1"'),
    "other environment arguments": (
        lambda d: _edit_config(d, "env_kwargs = {}", "env_kwargs = { sutton_barto_reward = true }"),
        'env_kwargs is {"sutton_barto_reward": true}'),
    "fewer epochs than the checkpoint's": (lambda d: _edit_config(d, "epochs = 10", "epochs = 3"),
                                           f"at epoch {CHECKPOINT_EPOCH}"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_resume_refuses_a_corrupt_foreign_or_edited_run_in_one_line_before_anything_starts(stopped, tmp_path,
                                                                                            capsys, case):
    run_dir = tmp_path / "runs" / stopped.name
    shutil.copytree(stopped, run_dir)
    tamper, says = TAMPERED[case]
    tamper(run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "run", "--resume", str(run_dir))
    assert code == 2 and err.count("\n") == 1 and err.startswith("hotprune run: error: ") and says in err, err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # nothing started or changed
    if "another run" in case:  # the line names both uids
        twin = tmp_path / "elsewhere" / stopped.name
        assert load_run_config(run_dir).run_uid in err and load_run_config(twin).run_uid in err


@pytest.mark.slow
def test_a_trainer_resumed_by_hand_refuses_the_same_way(stopped, tmp_path):
    run_dir = tmp_path / "runs" / stopped.name
    shutil.copytree(stopped, run_dir)
    _edit_config(run_dir, "prune_training_model = true", "prune_training_model = false")
    result = hotprune("trainer", "--run-dir", str(run_dir), "--resume")  # (it used to be a KeyError)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("hotprune trainer: error: ") and "prune_training_model" in result.stderr


def test_a_run_from_before_checksums_and_uids_resumes_with_a_warning(stopped, tmp_path, capsys):
    """Its config.toml has no run_uid, its files neither a uid nor a checksum: read by run id, as then."""
    run_dir = tmp_path / "runs" / stopped.name
    shutil.copytree(stopped, run_dir)
    _edit_config(run_dir, f'run_uid = "{load_run_config(run_dir).run_uid}"', "")
    for name in (artifacts.CHECKPOINT, artifacts.MASKS, artifacts.POLICY):
        tensors, meta = artifacts.load(run_dir / name)
        old = {k: json.dumps(v) for k, v in meta.items() if k not in (artifacts.CHECKSUM, artifacts.RUN_UID)}
        safetensors.numpy.save_file(tensors, str(run_dir / name), metadata=old)
    capsys.readouterr()
    rundir.check_resume(load_run_config(run_dir))
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 3 and all("has no checksum" in w and "read unverified" in w for w in warnings)
    # and a file of the same run id from another old run is still refused by its id... not its content:
    # what an old run can be told apart by is its run id alone
    with pytest.raises(artifacts.ArtifactError, match="run_id 'stopped', not 'renamed'"):
        artifacts.load_kept(run_dir / artifacts.CHECKPOINT, dataclasses.replace(load_run_config(run_dir),
                                                                                 run_id="renamed"))


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
    # what a kept file has carried since: its checksum, the run's uid (none for a run made before uids)
    # and the settings the checkpoint's tensors depend on (issue 24)
    added = {artifacts.CHECKSUM, artifacts.RUN_UID, "settings"}
    assert sorted(after) == sorted(before) and sorted(after_meta) == sorted(set(before_meta) | added)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    moved = {k for k in before_meta if after_meta[k] != before_meta[k]}
    if name == "sac":  # SAC's Adam runs fused since (docs/sac_speed.md): that flag, and only it, changed
        assert implementation_free(after_meta["param_groups"]) == implementation_free(before_meta["param_groups"])
        moved.discard("param_groups")
    assert moved <= {"version", "trainer_start", "epoch_ceiling"} and "version" in moved


def implementation_free(param_groups: dict) -> dict:
    """Optimizer param groups without the kernel an optimizer runs (`fused`, `foreach`): the same Adam."""
    return {name: [{k: v for k, v in group.items() if k not in ("fused", "foreach")} for group in groups]
            for name, groups in param_groups.items()}
