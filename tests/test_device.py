"""The `device` setting (hotprune.learning.device): auto picks cuda only where torch finds it, cuda without it is
refused in one line, and the learners (PPO, SAC, both pruned) step, mask, copy snapshots off and checkpoint
through the one code path every device takes. Here that path runs on the cpu; on a machine with a CUDA device
the same tests run on cuda too, and a checkpoint crosses between the two (scripts/gpu_check.sh runs them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hotprune.config import ConfigError, load_config
from hotprune.envs import env_spec
from hotprune.learning import checkpoints
from hotprune.learning.device import HostCopy, resolve
from hotprune.learning.distill import Distiller
from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.learners import make_learner
from hotprune.learning.policy import actor_arrays
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks
from hotprune.protocol.codec import GRAD_PREFIX
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer.shell import Trainer
from hotprune.runs import rundir
from hotprune.runs.console import human_line
from tests.servicekit import run_cli, settings
from tests.test_mask_intake import cartpole_batch
from tests.test_sac import pendulum_batch

torch.set_num_threads(1)
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
NO_CUDA = pytest.mark.skipif(CUDA, reason="this machine has a CUDA device: device=cuda is not refused here")
RUNS = {"ppo": ("env_id=CartPole-v1", "ppo.hidden_sizes=16,16", "samples_per_epoch=128", "ppo.minibatches=4"),
        "sac": ("algorithm=sac", "env_id=Pendulum-v1", "sac.hidden_sizes=16,16", "sac.batch_size=16",
                "sac.learning_starts=0", "samples_per_epoch=64")}


def config(algorithm: str, *extra: str):
    return load_config(overrides=["preset=none", "chunk_steps=16", "envs_per_worker=2", "epochs=4",
                                  "pruning.method=taylor", *RUNS[algorithm], *extra])


def batch(algorithm: str, seed: int):
    rng = np.random.default_rng(seed)
    return cartpole_batch(32, 4, rng) if algorithm == "ppo" else pendulum_batch(rng)


def both_pruned(learner) -> tuple[TrainingMasks, GradientStats, MaskedUpdate, dict[str, np.ndarray]]:
    """The trainer's actor hooks on `learner`, with half of each hidden layer's weights masked as a mask from
    the compressor arrives: host arrays."""
    params = dict(learner.actor.named_parameters())
    names = [n for n in params if n.endswith("weight")][:-1]
    keep = {n: np.random.default_rng(0).random(tuple(params[n].shape)) < 0.5 for n in names}
    masks = TrainingMasks({n: params[n] for n in names}, learner.optimizer)
    masks.apply(keep)
    stats = GradientStats({n: params[n] for n in names}, 4)
    return masks, stats, MaskedUpdate(keeping=masks, stats=stats), keep


def test_auto_is_cuda_exactly_where_torch_finds_a_cuda_device_and_cpu_is_always_the_cpu():
    assert resolve("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve("cpu") == torch.device("cpu")


@NO_CUDA
def test_device_cuda_without_a_cuda_device_is_refused_in_one_line_before_the_run_exists(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", *settings(tmp_path, "gpu", "device=cuda"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "device cuda needs a CUDA device" in lines[0] and "use device=auto or cpu" in lines[0]
    assert not (tmp_path / "runs" / "gpu").exists()
    with pytest.raises(ConfigError, match="device cuda needs a CUDA device"):  # a compressor started by hand
        Distiller(True, 1, 1e-3, device="cuda")


@NO_CUDA
def test_a_run_whose_config_toml_was_edited_to_cuda_is_refused_by_its_trainer_and_its_resume(tmp_path, capsys):
    code, out, err = run_cli(capsys, "init", *settings(tmp_path, "edited"))
    assert code == 0, err
    run_dir = Path(out.strip())
    toml = run_dir / "config.toml"
    toml.write_text(toml.read_text().replace('device = "auto"', 'device = "cuda"'))
    cfg = load_run_config(run_dir)
    with pytest.raises(ConfigError, match="device cuda needs a CUDA device"):  # `hotprune trainer`: exit 2, one line
        Trainer(cfg, StopFlag())
    with pytest.raises(ConfigError, match="device cuda needs a CUDA device"):  # `hotprune run --resume`
        rundir.check_resume(cfg)


def test_a_device_that_is_no_choice_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"device must be one of auto\|cpu\|cuda, got 'gpu'"):
        load_config(overrides=["device=gpu"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_a_both_pruned_update_learns_on_the_device_and_its_snapshot_reaches_the_host(algorithm, device):
    cfg = config(algorithm)
    learner = make_learner(cfg, env_spec(cfg.env_id), torch.Generator().manual_seed(1), resolve(device))
    masks, stats, hooks, keep = both_pruned(learner)
    before = actor_arrays(learner.actor)
    losses = learner.update(batch(algorithm, 1), 1, [hooks])
    assert losses["skipped_steps"] == 0 and len(stats.window) > 0
    tensors = learner.actor.state_dict() | {GRAD_PREFIX + n: g for n, g in stats.tensors().items()}  # a snapshot's
    assert {t.device.type for t in tensors.values()} == {device}  # weights, statistics: where it learns
    snapshot = HostCopy(tensors)
    assert all(host.is_pinned() == (device == "cuda") for host in snapshot.host.values())
    arrays = snapshot.arrays()
    after = actor_arrays(learner.actor)
    assert any(not np.array_equal(before[n], after[n]) for n in keep)  # it learned
    for name, kept in keep.items():
        assert np.array_equal(arrays[name], after[name]) and (arrays[GRAD_PREFIX + name] >= 0).all()
        assert (arrays[name][~kept] == 0).all() and not np.signbit(arrays[name][~kept]).any()  # exactly +0.0
        assert (arrays[name][kept] != 0).all()
    kept_now = masks.keep_masks()  # back on the host, as checkpoints write them
    assert kept_now.keys() == keep.keys() and all(np.array_equal(kept_now[n], keep[n]) for n in keep)


@pytest.mark.parametrize("device", DEVICES)
def test_a_host_copy_is_its_own_memory_the_next_step_and_the_next_copy_leave_it_as_it_was(device):
    weight = torch.arange(6.0, device=device).reshape(2, 3)
    first = HostCopy({"w": weight}).arrays()
    weight.add_(10)
    second = HostCopy({"w": weight}).arrays()
    assert first["w"].tolist() == [[0, 1, 2], [3, 4, 5]] and second["w"][0, 0] == 10
    assert not np.shares_memory(first["w"], second["w"])


def crossings() -> list:
    pairs = [("cpu", "cpu"), ("cuda", "cpu"), ("cpu", "cuda")]
    return [pytest.param(a, b, marks=pytest.mark.skipif("cuda" in (a, b) and not CUDA, reason="no CUDA device"))
            for a, b in pairs]


@pytest.mark.parametrize("written, resumed", crossings())
@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_a_checkpoint_written_on_one_device_resumes_on_another_and_learns_on(algorithm, written, resumed):
    cfg = config(algorithm)
    spec = env_spec(cfg.env_id)
    first = make_learner(cfg, spec, torch.Generator().manual_seed(2), resolve(written))
    first.update(batch(algorithm, 2), 1)
    saved = checkpoints.state_tensors(first.modules(), first.optimizers(), first.generator)
    own, meta = first.state()
    again = make_learner(cfg, spec, torch.Generator(), resolve(resumed))
    checkpoints.restore(saved | own, again.modules(), again.optimizers(), again.generator,
                        checkpoints.param_groups(first.optimizers()))
    again.restore(saved | own, meta)
    for name, module in first.modules().items():
        theirs = actor_arrays(again.modules()[name])
        assert all(np.array_equal(a, theirs[n]) for n, a in actor_arrays(module).items()), name
    for optimizer in again.optimizers().values():
        for state in optimizer.state.values():
            assert all(v.device.type == resumed for k, v in state.items() if k != "step")  # moments where it learns
    losses = again.update(batch(algorithm, 3), 2)
    assert losses["skipped_steps"] == 0


def test_the_trainers_start_line_says_where_it_learns_and_that_auto_chose_it():
    line = human_line({"event": "trainer_started", "algorithm": "sac", "device": "cuda (NVIDIA H100)",
                       "device_setting": "auto"})
    assert line == "[trainer] SAC learner on cuda (NVIDIA H100) (device auto)"
    assert human_line({"event": "trainer_started", "algorithm": "ppo", "device": "cpu",
                       "device_setting": "cpu"}) == "[trainer] PPO learner on cpu"
