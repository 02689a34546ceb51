"""The pruning engine through the whole service: a slow compressor, every criterion, whole neurons.

Real processes started through `hotprune run`; a slow compressor is the real compressor with
`pruning.delay_s` (it sleeps that long per snapshot). Where a check must not trust the service's own
logs, the test listens to the trainer's snapshots itself, on a SUB socket of its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from hotprune.protocol.codec import decode
from hotprune.protocol.endpoints import endpoints
from hotprune.protocol.sparse import densified
from hotprune.pruning.engine import prunable_names
from tests.servicekit import assert_clean, events, hotprune, of, settings

pytestmark = pytest.mark.slow


def summary(run_dir) -> dict:
    return of(events(run_dir, "trainer"), "summary")[0]


def run_listening(tmp_path, run_id: str, *extra: str) -> list:
    """`hotprune run` to its end, and every snapshot the trainer published, heard on a SUB socket of our own
    (its tensors dense)."""
    ctx = zmq.Context()
    listener = ctx.socket(zmq.SUB)
    listener.rcvhwm = 0  # keep every snapshot until read
    listener.subscribe(b"")
    listener.connect(endpoints(tmp_path / "runs" / run_id).snapshots)  # connects once the trainer binds
    try:
        result = hotprune("run", *settings(tmp_path, run_id, *extra))
        assert result.returncode == 0, result.stderr
        snapshots = []
        while listener.poll(0):
            msg = decode(listener.recv_multipart(), run_id=run_id)
            if msg.kind == "snapshot":
                msg.tensors = densified(msg.tensors)  # masked weights come as kept values + bitmaps
                snapshots.append(msg)
        return snapshots
    finally:
        ctx.destroy(linger=0)


def test_a_due_compression_is_served_by_a_newer_snapshot_when_its_own_was_dropped(tmp_path):
    """The issue's case: 12 epochs, start 3, every 10. The compressor is still busy when the snapshot
    of epoch 3 arrives, so that snapshot is dropped; the step stays due and a newer snapshot serves it."""
    result = hotprune("run", *settings(tmp_path, "due", "epochs=12", "pruning.start_epoch=3", "pruning.every=10",
                                       "pruning.delay_s=1.0"))
    run_dir = tmp_path / "runs" / "due"
    assert result.returncode == 0, result.stderr
    compressor = events(run_dir, "compressor")
    assert 3 in [e["version"] for e in of(compressor, "snapshot_dropped")], "the fault's condition did not occur"
    [finished] = of(compressor, "compression_finished")
    assert finished["due_epoch"] == 3 and finished["epoch"] > 3
    assert finished["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    [started] = of(compressor, "compression_started")
    assert started["due_epoch"] == 3 and started["folded_due_epochs"] == []
    s = summary(run_dir)
    assert s["completed"] and s["final_training_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert_clean(run_dir)


def test_under_a_slow_compressor_masks_only_grow_and_no_pruned_weight_comes_back(tmp_path):
    """Compressing takes longer than `every` epochs, so masks are computed on snapshots the previous
    masks have not reached yet. Listening to every snapshot the trainer publishes: once the trainer
    is masked, the set of zero weights never shrinks."""
    run_dir = tmp_path / "runs" / "nest"
    snapshots = run_listening(tmp_path, "nest", "epochs=40", "pruning.start_epoch=2", "pruning.every=1",
                              "pruning.schedule=cubic", "pruning.end_epoch=30", "pruning.target_sparsity=0.9",
                              "pruning.delay_s=0.4")
    names = prunable_names(snapshots[0].tensors, prune_output_layer=False)
    masked = [m for m in snapshots if m.fields["masks_version"] >= 0]
    assert len(masked) >= 5, "too few masked snapshots to check"
    zeros = [np.concatenate([m.tensors[n].reshape(-1) == 0 for n in names]) for m in masked]
    for earlier, later, msg in zip(zeros, zeros[1:], masked[1:]):
        revived = int(np.count_nonzero(earlier & ~later))
        assert revived == 0, f"{revived} pruned weights came back in snapshot v{msg.fields['version']}"
    assert zeros[-1].mean() > 0.5  # the schedule's last masks may reach the trainer after its last snapshot

    compressor = events(run_dir, "compressor")
    finished = of(compressor, "compression_finished")
    assert len(finished) >= 2 and all(e["regrown"] == 0 for e in finished)
    assert of(compressor, "snapshot_dropped"), "the compressor was never behind: the test did not test anything"
    checked = [e["pruned_nonzero"] for e in of(compressor, "snapshot_received") if e["pruned_nonzero"] is not None]
    assert checked and set(checked) == {0}
    assert all(e["refused_revivals"] == 0 for e in of(events(run_dir, "trainer"), "masks_applied"))
    assert summary(run_dir)["final_training_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert_clean(run_dir)


@pytest.mark.parametrize("method", ["taylor", "gradient"])
def test_saliency_criteria_prune_exactly_through_the_service(tmp_path, method):
    run_id = f"crit-{method}"
    result = hotprune("run", *settings(tmp_path, run_id, "epochs=6", f"pruning.method={method}",
                                       "pruning.num_gradient_batches=8"))
    run_dir = tmp_path / "runs" / run_id
    assert result.returncode == 0, result.stderr
    compressor = events(run_dir, "compressor")
    [planned] = of(compressor, "pruning_planned")
    assert planned["method"] == method and planned["steps"][0] == [2, 0.8]
    finished = of(compressor, "compression_finished")
    assert finished and all(e["method"] == method for e in finished)
    assert finished[0]["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert finished[0]["params_kept"] == 1128 and finished[0]["params_total"] == 4610
    s = summary(run_dir)
    assert s["final_training_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert s["training_params_kept"] == 1128
    assert f"Pruning plan: {method} weights" in result.stdout
    assert_clean(run_dir)


@pytest.mark.parametrize("prune_training_model", [True, False])
def test_neuron_pruning_publishes_smaller_tensors_that_workers_run(tmp_path, prune_training_model):
    run_id = f"neuron-{prune_training_model}"
    result = hotprune("run", *settings(tmp_path, run_id, "epochs=6", "pruning.structure=neuron",
                                       "pruning.scope=layer", "pruning.target_sparsity=0.75",
                                       f"prune_training_model={str(prune_training_model).lower()}"))
    run_dir = tmp_path / "runs" / run_id
    assert result.returncode == 0, result.stderr
    compressor = events(run_dir, "compressor")
    first = of(compressor, "compression_finished")[0]
    assert first["structure"] == "neuron" and first["structure_changed"] is True
    assert first["achieved_sparsity"] == 0.75  # 48 of 64 units in each hidden layer
    # 16 units per layer: 16*4 + 16 + 16*16 + 16 + 2*16 + 2 weights and biases
    assert first["params_kept"] == 64 + 16 + 256 + 16 + 32 + 2
    swaps = [e for e in of(events(run_dir, "worker-0"), "worker_swapped") if e["structure_changed"]]
    assert swaps, "the worker never rebuilt a smaller actor"
    assert swaps[0]["shapes"]["net.0.weight"] == [16, 4] and swaps[0]["shapes"]["net.2.weight"] == [16, 16]
    assert swaps[0]["shapes"]["net.4.weight"] == [2, 16]
    assert swaps[0]["sparsity"] == pytest.approx(first["weight_sparsity"])
    s = summary(run_dir)
    if prune_training_model:  # the trainer keeps its shapes, with the removed units masked
        assert s["final_training_sparsity"] == pytest.approx(first["weight_sparsity"])
        assert s["training_params_kept"] == first["params_kept"]
        assert "of hidden units" in " ".join(result.stdout.split())  # the console may wrap it at 100 columns
    else:
        assert s["final_training_sparsity"] == 0.0
    assert_clean(run_dir)


def test_a_degenerate_schedule_is_warned_about_at_start(tmp_path):
    result = hotprune("run", *settings(tmp_path, "degen", "epochs=5", "pruning.schedule=cubic",
                                       "pruning.start_epoch=2", "pruning.every=3", "pruning.end_epoch=4"))
    run_dir = tmp_path / "runs" / "degen"
    assert result.returncode == 0, result.stderr
    [planned] = of(events(run_dir, "compressor"), "pruning_planned")
    assert planned["steps"] == [[5, 0.8]]  # the first step (epoch 2) would prune 0%: left out
    assert any("prunes 0%" in w for w in planned["warnings"])
    assert "schedule_degenerate" in result.stderr
    assert "training pruned to 0.0%" not in result.stdout
    assert_clean(run_dir)


def test_rigl_updates_masks_that_trainer_and_workers_follow_at_an_exact_sparsity_with_regrown_weights_at_zero(
        tmp_path):
    """Dynamic sparse training through the service (both pruned, sync: every update is served by its own
    snapshot): the first compression at epoch 2, RigL updates at 4, 6 and 8. Listening to the trainer's
    snapshots: once masked, each keeps exactly the masks' count of weights or fewer, and weights pruned
    in one are alive in a later one (the masks move). The trainer revives grown weights at zero, the
    workers swap every update, and diagnose's checks hold."""
    from hotprune.commands.diagnose import diagnose
    from hotprune.runs.runlog import load

    run_dir = tmp_path / "runs" / "rigl"
    snapshots = run_listening(tmp_path, "rigl", "epochs=10", "mode=sync", "pruning.method=rigl", "pruning.every=2",
                              "pruning.update_end_epoch=9", "pruning.num_gradient_batches=8")
    compressor, trainer = events(run_dir, "compressor"), events(run_dir, "trainer")
    finished = of(compressor, "compression_finished")
    assert [e["due_epoch"] for e in finished] == [2, 4, 6, 8]
    kept = finished[0]["params_kept"]
    prunable = sum(layer["total"] for layer in finished[0]["layers"].values())
    for e in finished:
        assert e["weight_sparsity"] == pytest.approx(0.8, abs=1e-3) and e["params_kept"] == kept
    for e in finished[1:]:
        assert e["method"] == "rigl" and 0 < e["drop_fraction"] < 0.3
        assert e["regrown"] > 0 and e["dropped"] == e["regrown"], e

    applied = of(trainer, "masks_applied")
    assert [e["version"] for e in applied] == [e["version"] for e in finished]
    for e in applied[1:]:  # each grown weight is zero when it comes in: verified zeros = pruned + grown
        assert e["revived"] == e["newly_pruned"] > 0
        assert e["training_sparsity_verified"] * prunable == pytest.approx(e["pruned"] + e["revived"], abs=1e-6)
        assert e["masks_sparsity"] == pytest.approx(0.8, abs=1e-3)

    names = prunable_names(snapshots[0].tensors, prune_output_layer=False)
    masked = [m for m in snapshots if m.fields["masks_version"] >= 0]
    alive = [np.concatenate([m.tensors[n].reshape(-1) != 0 for n in names]) for m in masked]
    limit = prunable - round(0.8 * prunable)
    assert all(a.sum() <= limit for a in alive)
    assert (~alive[0] & alive[-1]).any(), "no weight pruned by the first masks ever came back"
    checked = [e["pruned_nonzero"] for e in of(compressor, "snapshot_received") if e["pruned_nonzero"] is not None]
    assert checked and set(checked) == {0}

    for worker in ("worker-0", "worker-1"):
        swapped = {e["version"] for e in events(run_dir, worker) if e["event"] == "worker_swapped"}
        assert {e["version"] for e in finished if e["epoch"] < 10} <= swapped, worker  # sync: every version
    checks = diagnose(load(run_dir))
    assert all(c.status in ("PASS", "INFO") for c in checks), [c for c in checks if c.status == "FAIL"]
    assert_clean(run_dir)
