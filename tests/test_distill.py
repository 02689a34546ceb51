"""Teacher-student distillation: the student follows the teacher, its mask held fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hotprune.runs import artifacts
from hotprune.learning.distill import Distiller
from hotprune.envs import env_spec
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor
from hotprune.pruning.dynamic import DynamicPruner
from hotprune.pruning.engine import Masks, Pruner
from hotprune.pruning.schedule import Step
from tests.servicekit import assert_clean, hotprune, logged, settings


def _setup(env_id: str, structure: str = "weight", sparsity: float = 0.8):
    torch.manual_seed(0)
    spec = env_spec(env_id)
    teacher = actor_arrays(make_actor(spec, [32, 32]))
    rng = np.random.default_rng(0)
    teacher = {n: (w + 0.3 * rng.standard_normal(w.shape)).astype(np.float32) for n, w in teacher.items()}
    pruner = Pruner(expected_spec(make_actor(spec, [32, 32])), method="magnitude", structure=structure,
                    scope="layer" if structure == "neuron" else "global")
    masks = pruner.compute(teacher, sparsity)
    obs = rng.standard_normal((256, spec.obs_dim)).astype(np.float32)
    return spec, teacher, masks, obs


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("structure", ["weight", "neuron"])
def test_distilling_brings_the_student_to_the_teacher_and_keeps_its_mask(env_id, structure):
    spec, teacher, masks, obs = _setup(env_id, structure)
    distiller = Distiller(spec.discrete, steps=50, lr=1e-2)
    student, record = distiller.distil(teacher, masks, obs)
    assert record["steps"] == 50 and record["samples"] == 256
    assert record["kl_after"] < 0.5 * record["kl_before"], record
    for name, keep in masks.elements.items():
        assert not np.any(student[name][~keep]), name  # pruned entries exactly zero
        assert not np.signbit(student[name][~keep]).any()  # +0.0, not -0.0
    assert {n: w.shape for n, w in student.items()} == {n: w.shape for n, w in teacher.items()}
    # the next version starts from this student: closer already
    again, second = distiller.distil(teacher, masks, obs)
    assert second["kl_before"] == pytest.approx(record["kl_after"], rel=1e-4)


def test_a_new_mask_restarts_the_student_from_itself_masked_further():
    spec, teacher, masks, obs = _setup("CartPole-v1", sparsity=0.5)
    distiller = Distiller(spec.discrete, steps=20, lr=1e-2)
    student, _ = distiller.distil(teacher, masks, obs)
    pruner = Pruner(expected_spec(make_actor(spec, [32, 32])), method="magnitude")
    tighter = pruner.compute(teacher, 0.9, previous=masks)
    student2, _ = distiller.distil(teacher, tighter, obs)
    for name, keep in tighter.elements.items():
        assert not np.any(student2[name][~keep])


def test_after_a_set_update_the_students_grown_weights_start_at_zero_not_at_the_teachers():
    spec, teacher, masks, obs = _setup("CartPole-v1")
    distiller = Distiller(spec.discrete, steps=1, lr=1e-12)  # one step too small to move a weight visibly
    distiller.distil(teacher, masks, obs)
    pruner = DynamicPruner(expected_spec(make_actor(spec, [32, 32])), method="set", seed=1)
    moved = pruner.at_step(Step(5, 0.8, 0.3), teacher, previous=masks)
    student, _ = distiller.distil(teacher, moved, obs)
    for name, keep in moved.elements.items():
        grown = keep & ~masks.elements[name]
        assert grown.any() and np.abs(teacher[name][grown]).min() > 1e-6, name
        assert np.abs(student[name][grown]).max() < 1e-9, name
        assert not np.any(student[name][~keep]), name


def test_a_carried_over_student_takes_each_teacher_s_observation_statistics():
    """The statistics are the trainer's, not the student's: the student the workers run normalises
    its input as the newest teacher does, from the version that brings them on."""
    spec = env_spec("Pendulum-v1")
    torch.manual_seed(0)
    teacher = actor_arrays(make_actor(spec, [16, 16], normalize_obs=True))
    masks = Pruner(expected_spec(make_actor(spec, [16, 16], normalize_obs=True)), method="magnitude").compute(teacher,
                                                                                                            0.5)
    obs = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    distiller = Distiller(spec.discrete, steps=5, lr=1e-2)
    distiller.distil(teacher, masks, obs)
    newer = {**teacher, "obs_norm.mean": np.array([1, 2, 3], np.float32), "obs_norm.var": np.full(3, 4, np.float32)}
    student, _ = distiller.distil(newer, masks, obs)
    assert student["obs_norm.mean"].tolist() == [1, 2, 3] and student["obs_norm.var"].tolist() == [4, 4, 4]


def test_without_observations_the_student_is_kept_as_it_is():
    spec, teacher, masks, obs = _setup("CartPole-v1")
    distiller = Distiller(spec.discrete, steps=20, lr=1e-2)
    student, record = distiller.distil(teacher, masks, obs[:0])
    assert (record["steps"], record["kl_before"], record["kl_after"]) == (0, None, None)
    masked = {n: w * masks.elements[n] if n in masks.elements else w for n, w in teacher.items()}
    assert all(np.array_equal(student[n], masked[n]) for n in teacher)
    assert isinstance(masks, Masks)


@pytest.mark.slow
def test_a_teacher_student_run_distils_the_student_the_workers_run(tmp_path):
    result = hotprune("run", "--quiet", *settings(tmp_path, "ts", "prune_training_model=false", "epochs=8"))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "ts"
    first = logged(run_dir, "compressor", "compression_finished")[0]["version"]
    distilled = logged(run_dir, "compressor", "distill_finished")
    assert distilled and distilled[0]["version"] == first  # from the first compression on, every version
    assert [d["version"] for d in distilled] == sorted({d["version"] for d in distilled})
    trained = [d for d in distilled if d["steps"]]
    assert trained and all(d["steps"] == 32 and d["kl_after"] < d["kl_before"] for d in trained)
    # what the workers ran and what the run keeps is the student: pruned, exactly
    policy, _ = artifacts.load(run_dir / artifacts.POLICY)
    masks, _ = artifacts.load(run_dir / artifacts.MASKS)
    assert all(not np.any(policy[n][~keep]) for n, keep in masks.items())
    summary = logged(run_dir, "trainer", "summary")[-1]
    assert summary["final_training_sparsity"] == 0
    assert summary["final_inference_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert_clean(run_dir)


def test_a_student_that_diverges_is_never_published_non_finite():
    spec, teacher, masks, obs = _setup("CartPole-v1")
    distiller = Distiller(spec.discrete, steps=5, lr=1e-3)
    first, _ = distiller.distil(teacher, masks, obs)

    def blow_up():  # an optimizer step gone wrong: every weight NaN
        with torch.no_grad():
            for param in distiller.student.parameters():
                param.fill_(float("nan"))

    distiller.optimizer.step = blow_up
    student, record = distiller.distil(teacher, masks, obs)
    assert record["diverged"] and record["kl_after"] is None
    assert all(np.isfinite(w).all() for w in student.values())
    assert all(np.array_equal(student[n], first[n]) for n in first)  # kept as it was
