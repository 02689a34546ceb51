"""Bad input over real sockets: each process rejects it with a reason, keeps running, keeps its weights.

Each test runs a real process through its CLI and plays its peers itself (binding the endpoints the
peer would bind), so it can send exactly the malformed messages it wants.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import torch
import zmq

from hotprune.protocol.codec import Encoder, decode
from hotprune.protocol.endpoints import endpoints
from hotprune.protocol.sparse import SparseCode, SparseTensor, densified
from hotprune.protocol.trajectory import check_trajectory
from hotprune.envs import env_spec
from hotprune.learning.policy import actor_arrays, expected_spec, make_actor
from hotprune.pruning.engine import Pruner, apply_masks, prunable_names
from hotprune.protocol.store_layout import segment_name
from hotprune.comms.weight_store import WeightStore
from tests.servicekit import HOTPRUNE, assert_clean, events, hotprune, logged, of, run_cli, settings, wait_for

pytestmark = pytest.mark.slow

torch.set_num_threads(1)
CARTPOLE = env_spec("CartPole-v1")
DENSE = actor_arrays(make_actor(CARTPOLE, [64, 64]))  # a fresh policy's weights


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def init_run(tmp_path: Path, run_id: str, *extra: str) -> Path:
    result = hotprune("init", *settings(tmp_path, run_id, *extra))
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def with_header(frames: list, **changes) -> list:
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header), *frames[1:]]


def rejections(run_dir: Path, name: str) -> list[str]:
    return [e["reason"] for e in logged(run_dir, name, "message_rejected")]


@contextmanager
def lone_compressor(tmp_path: Path, ctx: zmq.Context, run_id: str, *extra: str):
    """A real compressor process whose trainer is the test: it binds the snapshot PUB and reads the
    weight store the compressor creates. A test that leaves normally stops it with the trainer's
    `stop`, which it must obey (exit 0), and nothing of the run may be left behind."""
    run_dir = init_run(tmp_path, run_id, *extra)
    peer = SimpleNamespace(run_dir=run_dir, trainer=ctx.socket(zmq.PUB), encoder=Encoder(run_id, "test-trainer"))
    peer.trainer.bind(endpoints(run_dir).snapshots)
    compressor = subprocess.Popen([HOTPRUNE, "compressor", "--run-dir", str(run_dir)])

    def snapshot(version, tensors, enc=peer.encoder, **changes):
        fields = {"version": version, "epoch": version, "training_sparsity": 0.0, "masks_version": -1,
                  "trainer_start": 0, **changes}
        return enc.encode("snapshot", fields, tensors)

    def lands(frames, version):
        peer.trainer.send_multipart(frames)
        return peer.store.version() == version

    peer.snapshot, peer.lands, peer.compressor = snapshot, lands, compressor
    try:
        peer.store = WeightStore.attach(segment_name(run_dir), timeout_s=60)
        yield peer
        peer.store.close()
        peer.trainer.send_multipart(peer.encoder.encode("control", {"command": "stop"}))
        assert compressor.wait(timeout=30) == 0
    finally:
        compressor.kill()
    assert_clean(run_dir)


def test_compressor_rejects_bad_snapshots_and_keeps_its_last_good_weights(tmp_path, ctx):
    with lone_compressor(tmp_path, ctx, "comp", "pruning.start_epoch=50", "pruning.method=taylor") as peer:
        run_dir, store, snapshot, lands = peer.run_dir, peer.store, peer.snapshot, peer.lands
        weights = DENSE
        grads = {f"grad:{n}": np.zeros_like(weights[n]) for n in prunable_names(weights, False)}
        nan_grads = {**grads, "grad:net.0.weight": np.full_like(weights["net.0.weight"], np.inf)}
        wait_for(lambda: lands(snapshot(1, {**weights, **grads}), 1), what="the first snapshot (slow joiner)")
        nan = {**weights, "net.2.weight": np.full_like(weights["net.2.weight"], np.nan)}
        wrong_shape = {**weights, "net.0.weight": np.zeros((3, 3), np.float32)}
        keep = np.arange(64 * 64).reshape(64, 64) % 10 == 0
        code = SparseCode.of_mask(keep)
        nan_kept = {**weights, "net.2.weight": SparseTensor(np.full(code.indices.size, np.nan, np.float32),
                                                            code.bitmap, code.shape)}
        sparse_grad = {**grads, "grad:net.2.weight": code.sparse(grads["grad:net.2.weight"])}
        bad = {
            "not msgpack": [b"\xc1garbage"],
            "unsupported proto 99": with_header(snapshot(2, {**weights, **grads}), proto=99),
            "non-finite": snapshot(2, {**nan, **grads}),
            # an epoch from the far future would serve (and so skip) every remaining schedule step
            "snapshot epoch 1000000000 outside": snapshot(2, {**weights, **grads}, epoch=10**9),
            "masks_version 2 is not older than its version": snapshot(2, {**weights, **grads}, masks_version=2),
            "'grad:net.0.weight' has non-finite": snapshot(2, {**weights, **nan_grads}),
            "is float32[3, 3], expected float32[64, 4]": snapshot(2, {**wrong_shape, **grads}),
            "missing tensors": snapshot(2, weights),
            "sparse 'net.2.weight': non-finite values": snapshot(2, {**nan_kept, **grads}),
            "'grad:net.2.weight' is sparse, expected dense": snapshot(2, {**weights, **sparse_grad}),
            "not this run's": snapshot(2, {**weights, **grads}, Encoder("another-run", "x")),
            "do not match": with_header(snapshot(2, {**weights, **grads}), buffers=[
                {"name": "net.0.weight", "dtype": "float32", "shape": [64, 5]}] + msgpack.unpackb(
                snapshot(2, {**weights, **grads})[0])["buffers"][1:]),
        }
        for frames in bad.values():
            peer.trainer.send_multipart(frames)
        wait_for(lambda: len(rejections(run_dir, "compressor")) >= len(bad), what="every bad snapshot rejected")
        reasons = rejections(run_dir, "compressor")
        for expected in bad:
            assert any(expected in r for r in reasons), (expected, reasons)
        assert peer.compressor.poll() is None and store.version() == 1  # still running, still on the last good

        newer = {k: v + 1 for k, v in weights.items()}
        wait_for(lambda: lands(snapshot(3, {**newer, **grads}), 3), what="a good snapshot after the bad ones")
        header, stored = store.read()
        assert header.version == 3 and all(np.array_equal(stored[k], newer[k]) for k in weights)
        kept = {**newer, "net.2.weight": code.sparse(newer["net.2.weight"])}  # as a both-pruned trainer sends
        wait_for(lambda: lands(snapshot(4, {**kept, **grads}), 4), what="a snapshot with kept values")
        header, stored = store.read()
        assert header.version == 4 and np.array_equal(stored["net.2.weight"], newer["net.2.weight"] * keep)
        assert [e["version"] for e in of(events(run_dir, "compressor"), "weights_written")] == [1, 3, 4]


def test_with_observation_normalisation_snapshots_must_carry_valid_statistics(tmp_path, ctx):
    """The statistics travel with the weights: a snapshot without them, with a negative variance, or with
    them as kept values + bitmap (no mask covers them), is rejected; a good one reaches the store with them."""
    with lone_compressor(tmp_path, ctx, "norm", "normalize_obs=true", "pruning.start_epoch=50") as peer:
        stats = {"obs_norm.mean": np.arange(4, dtype=np.float32), "obs_norm.var": np.full(4, 2.0, np.float32)}
        negative = {**stats, "obs_norm.var": np.array([1, 1, -1, 1], np.float32)}
        # one landed first: the compressor has subscribed (a PUB drops what it sends before that)
        wait_for(lambda: peer.lands(peer.snapshot(1, {**DENSE, **stats}), 1), what="the first snapshot (slow joiner)")
        code = SparseCode.of_mask(np.array([1, 0, 1, 1], bool))
        sparse = {**stats, "obs_norm.var": code.sparse(stats["obs_norm.var"])}
        for tensors in (DENSE, {**DENSE, **negative}, {**DENSE, **sparse}):
            peer.trainer.send_multipart(peer.snapshot(2, tensors))
        wait_for(lambda: len(rejections(peer.run_dir, "compressor")) >= 3, what="the three snapshots rejected")
        reasons = rejections(peer.run_dir, "compressor")
        assert "missing tensors ['obs_norm.mean', 'obs_norm.var']" in reasons[0]
        assert "obs_norm.var has negative variances" in reasons[1]
        assert "'obs_norm.var' is sparse, expected dense" in reasons[2]
        assert peer.compressor.poll() is None  # (it used to crash comparing a SparseTensor with 0)
        assert peer.store.version() == 1
        newer = {"obs_norm.mean": stats["obs_norm.mean"] + 1, "obs_norm.var": stats["obs_norm.var"] + 1}
        wait_for(lambda: peer.lands(peer.snapshot(3, {**DENSE, **newer}), 3), what="a snapshot with statistics")
        stored = peer.store.read()[1]
        assert all(np.array_equal(stored[n], v) for n, v in newer.items())


def test_a_criterion_that_cannot_rank_fails_the_compression_and_the_next_snapshot_serves_the_step(tmp_path, ctx):
    """taylor with all-zero gradient statistics: every score is 0, nothing to rank by. The compressor
    logs compression_failed, publishes the snapshot unpruned (no masks were in force), keeps the step
    due, and the next snapshot with real gradients serves it."""
    with lone_compressor(tmp_path, ctx, "cfail", "pruning.start_epoch=2", "pruning.every=10",
                         "pruning.method=taylor", "prune_training_model=false",
                         "pruning.distill_steps=0") as peer:  # snapshots without observations
        run_dir, store, lands = peer.run_dir, peer.store, peer.lands
        names = prunable_names(DENSE, False)

        def snapshot(version, grads):
            return peer.snapshot(version, {**DENSE, **{f"grad:{n}": g for n, g in grads.items()}})

        zero = {n: np.zeros_like(DENSE[n]) for n in names}
        wait_for(lambda: lands(snapshot(2, zero), 2), what="the snapshot of the due epoch")
        [failed] = wait_for(lambda: logged(run_dir, "compressor", "compression_failed"), what="compression_failed")
        assert failed["due_epoch"] == 2 and "equal" in failed["reason"] and failed["masks_in_force"] is False
        assert (store.read()[1]["net.2.weight"] != 0).all()  # published unpruned: no masks were in force
        rng = np.random.default_rng(0)
        real = {n: np.abs(rng.standard_normal(DENSE[n].shape)).astype(np.float32) for n in names}
        wait_for(lambda: lands(snapshot(3, real), 3), what="the next snapshot")
        [finished] = of(events(run_dir, "compressor"), "compression_finished")
        assert finished["due_epoch"] == 2 and finished["epoch"] == 3 and finished["method"] == "taylor"
        stored = densified(store.read()[1])  # pruned 80%: its weights are stored sparse
        assert sum(int((stored[n] == 0).sum()) for n in names) == round(0.8 * sum(DENSE[n].size for n in names))
        _sent_as_kept_values_is_stored_as_the_masks_say(peer, real)


def _sent_as_kept_values_is_stored_as_the_masks_say(peer, real: dict) -> None:
    """Snapshots as a both-pruned trainer sends them, kept values + bitmaps (masks_version 3): under the
    very masks in force they are stored as they came (the bitmap's kept values, -0.0 made +0.0), with a
    bitmap that keeps more they are masked as a dense snapshot is, and `pruned_nonzero` counts the
    non-zero kept values the masks prune in either case."""
    in_store = peer.store.read()[1]
    codes = {n: SparseCode.of(t) for n, t in in_store.items() if isinstance(t, SparseTensor)}
    masks = {n: np.unpackbits(codes[n].bitmap, count=t.size).astype(bool).reshape(t.shape) if n in codes
             else t != 0 for n, t in in_store.items() if n in real}  # dense-stored: its zeros (random weights)
    newer = {n: (w + 1) * masks[n] for n, w in real.items()}
    newer["net.2.weight"].reshape(-1)[codes["net.2.weight"].indices[0]] = -0.0
    grads = {f"grad:{n}": np.ones_like(w) for n, w in real.items()}
    wider = SparseCode.of_mask(masks["net.2.weight"] | (np.arange(64 * 64).reshape(64, 64) % 2 == 0))
    extra = np.unpackbits(wider.bitmap, count=64 * 64).astype(bool) & ~masks["net.2.weight"].reshape(-1)
    for version, code in ((4, codes["net.2.weight"]), (5, wider)):
        values = newer["net.2.weight"] + ~masks["net.2.weight"]  # non-zero where the masks prune (float32)
        sent = {**DENSE, **newer, **grads, **{n: c.sparse(newer[n]) for n, c in codes.items()},
                "net.2.weight": code.sparse(values)}
        wait_for(lambda: peer.lands(peer.snapshot(version, sent, masks_version=3), version), what=f"v{version}")
        stored = peer.store.read()[1]
        assert set(stored) == set(in_store) and all(isinstance(stored[n], SparseTensor) for n in codes)
        for n, code_in_force in codes.items():
            expected = newer[n].reshape(-1)[code_in_force.indices] + 0
            assert np.array_equal(stored[n].bitmap, code_in_force.bitmap)
            assert stored[n].values.tobytes() == expected.tobytes()  # bit for bit: no -0.0 (its sign bit is set)
    received = {e["version"]: e["pruned_nonzero"] for e in of(events(peer.run_dir, "compressor"), "snapshot_received")}
    assert received[4] == 0 and received[5] == int(np.count_nonzero(extra)) > 0


# A compressor's report on the first step of servicekit.SMALL's schedule (epoch 2, 80%).
REPORT = {"version": 2, "epoch": 2, "due_epoch": 2, "target_sparsity": 0.8, "failed": False, "weight_sparsity": 0.8,
          "params_kept": 1128}


def _trajectory(encoder: Encoder, worker_id=0, steps=32, envs=4, obs=None, rewards=None, logprobs=None, **fields):
    tensors = {
        "obs": np.zeros((steps + 1, envs, 4), np.float32) if obs is None else obs,
        "actions": np.zeros((steps, envs), np.int64),
        "logprobs": np.full((steps, envs), -0.69, np.float32) if logprobs is None else logprobs,
        "rewards": np.ones((steps, envs), np.float32) if rewards is None else rewards,
        "terminated": np.zeros((steps, envs), bool),
        "truncated": np.zeros((steps, envs), bool),
        "final_obs": np.zeros((0, 4), np.float32),
    }
    head = {"worker_id": worker_id, "worker_start": 1,
            "policy_version": 0, "policy_sparsity": 0.0, "policy_nonzero_params": 4610,
            "episode_returns": [],
            "episode_lengths": [], "swap_latencies_ms": [], **fields}
    return encoder.encode("trajectory", head, tensors)


def test_trainer_rejects_bad_trajectories_and_masks_and_trains_on(tmp_path, ctx, capsys):
    run = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, "inj", "epochs=60")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "inj"
    try:
        wait_for(lambda: len(logged(run_dir, "trainer", "epoch")) >= 3, timeout=90, what="three epochs")
        ep = endpoints(run_dir)
        to_trainer, masks_to_trainer = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
        to_trainer.connect(ep.trajectories)
        masks_to_trainer.connect(ep.masks)
        intruder = Encoder("inj", "intruder")
        nan_obs = np.zeros((33, 4, 4), np.float32)
        nan_obs[5, 1, 2] = np.nan
        bad = {
            "not msgpack": [b"\x00\x01garbage"],
            "obs' is float32[33, 2, 4], expected float32[33, 4, 4]": _trajectory(
                intruder, obs=np.zeros((33, 2, 4), np.float32)),
            "non-finite": _trajectory(intruder, obs=nan_obs),
            "worker_id 7 outside": _trajectory(intruder, worker_id=7),
            # finite but absurd: one such reward made the trainer's logits NaN and failed the run
            "rewards outside +-1e+06": _trajectory(intruder, rewards=np.full((32, 4), 3e38, np.float32)),
            "a discrete log-probability above 0": _trajectory(intruder, logprobs=np.full((32, 4), 5.0, np.float32)),
            "policy_nonzero_params outside [0, 4610]": _trajectory(intruder, policy_nonzero_params=10**9),
            "policy_version 999999": _trajectory(intruder, policy_version=999999),
            "not this run's": _trajectory(Encoder("other", "intruder")),
            "unexpected kind 'masks'": intruder.encode(
                "masks", {**REPORT, "version": 1, "epoch": 1}),
        }
        for frames in bad.values():
            to_trainer.send_multipart(frames)
        wrong_shape = {"net.0.weight": np.ones((3, 3), bool), "net.2.weight": np.ones((64, 64), bool)}
        all_pruned = {"net.0.weight": np.zeros((64, 4), bool), "net.2.weight": np.zeros((64, 64), bool)}
        bad_masks = {
            "tensor 'net.0.weight' is bool[3, 3]": intruder.encode("masks", REPORT, wrong_shape),
            "due_epoch 7 is not a step of this run's schedule": intruder.encode(
                "masks", {**REPORT, "due_epoch": 7}, all_pruned),
            "target_sparsity 1.0 is not the planned 0.8": intruder.encode(
                "masks", {**REPORT, "target_sparsity": 1.0}, all_pruned),
            "masks tensors in a failed report": intruder.encode("masks", {**REPORT, "failed": True}, all_pruned),
            "masks version 1000000 (epoch 2) is not one of this trainer's snapshots": intruder.encode(
                "masks", {**REPORT, "version": 10**6}, all_pruned),
        }
        for frames in bad_masks.values():
            masks_to_trainer.send_multipart(frames)
        wait_for(lambda: len(rejections(run_dir, "trainer")) >= len(bad) + len(bad_masks), timeout=60,
                 what="every rejection")
        out, err = run.communicate(timeout=180)
    finally:
        run.kill()
    assert run.returncode == 0, err
    reasons = rejections(run_dir, "trainer")
    for expected in [*bad, *bad_masks]:
        assert any(expected in r for r in reasons), (expected, reasons)
    trainer = events(run_dir, "trainer")
    assert len(of(trainer, "epoch")) == 60
    assert all(m["version"] < 60 for m in of(trainer, "masks_applied"))  # the intruder's masks never applied
    assert of(trainer, "epoch")[-1]["training_sparsity"] == pytest.approx(0.8, abs=0.005)
    # diagnose sees the attack in the logs, and nothing else wrong
    code, diagnosed, _ = run_cli(capsys, "diagnose", str(run_dir))
    assert code == 1
    assert [line.split(":")[0] for line in diagnosed.splitlines() if line.startswith("FAIL")] == [
        "FAIL  no rejected messages"], diagnosed
    assert_clean(run_dir)


@contextmanager
def lone_worker(tmp_path: Path, ctx: zmq.Context, run_id: str):
    """A real worker process whose peers are the test: it binds the compressor's PUB and the
    trainer's PULL and credits PUB, and owns a weight store holding dense weights as version 0."""
    run_dir = init_run(tmp_path, run_id)
    ep = endpoints(run_dir)
    peers = SimpleNamespace(run_dir=run_dir, compressor=ctx.socket(zmq.PUB), trainer=ctx.socket(zmq.PULL),
                            credits=ctx.socket(zmq.PUB), taken=[0, 0])
    peers.compressor.bind(ep.weights)
    peers.trainer.bind(ep.trajectories)
    peers.credits.bind(ep.credits)
    peers.store = WeightStore.create(segment_name(run_dir), 1 << 16)
    peers.store.publish(DENSE, 0)
    peers.worker = subprocess.Popen([HOTPRUNE, "worker", "--run-dir", str(run_dir), "--index", "0"])
    try:
        yield peers
    finally:
        peers.worker.kill()
        peers.worker.wait()
        peers.store.close()
        peers.store.unlink()


def next_chunk(peers, credit: bool = True) -> dict:
    """The worker's next chunk; with `credit`, the test tells it the chunk was taken, as the trainer does."""
    assert peers.trainer.poll(60_000), "no trajectory chunk from the worker"
    msg = decode(peers.trainer.recv_multipart(), run_id=peers.run_dir.name, kinds={"trajectory"})
    check_trajectory(msg.tensors, 32, 4, 4, 2, True)
    peers.taken = [msg.fields["worker_start"], peers.taken[1] + 1]
    if credit:
        send_credits(peers)
    return msg.fields


def send_credits(peers) -> None:
    encoder = Encoder(peers.run_dir.name, "trainer")
    peers.credits.send_multipart(encoder.encode("credits", {"trainer_id": 1, "taken": [peers.taken, [0, 0]]}))


def test_a_worker_keeps_at_most_its_share_of_an_epoch_in_flight(tmp_path, ctx):
    """SMALL: 512-sample epochs of 128-sample chunks from 2 workers: 2 chunks each in flight."""
    with lone_worker(tmp_path, ctx, "credit") as peers:
        first, second = next_chunk(peers, credit=False), next_chunk(peers, credit=False)
        assert not peers.trainer.poll(3000), "a third chunk went out with two in flight"
        heartbeats = logged(peers.run_dir, "worker-0", "heartbeat")
        assert heartbeats and heartbeats[-1]["chunks_sent"] == 2
        forged = Encoder(peers.run_dir.name, "trainer").encode("credits", {"trainer_id": 2, "taken": [[1, 2, 3]]})
        wait_for(lambda: peers.credits.send_multipart(forged) or rejections(peers.run_dir, "worker-0"),
                 what="the worker to reject malformed credits")
        assert "credits: taken must be 2 [worker_start, count] pairs" in rejections(peers.run_dir, "worker-0")[0]
        assert not peers.trainer.poll(500)  # and they changed nothing
        send_credits(peers)  # both taken
        third = next_chunk(peers)
        assert first["worker_start"] == second["worker_start"] == third["worker_start"]
        assert peers.worker.poll() is None


def test_worker_ignores_garbage_hints_and_hot_swaps_new_weights(tmp_path, ctx):
    with lone_worker(tmp_path, ctx, "wrk") as peers:
        assert next_chunk(peers)["policy_version"] == 0
        garbage = [b"\xc1 not a message"]
        wait_for(lambda: peers.compressor.send_multipart(garbage) or rejections(peers.run_dir, "worker-0"),
                 what="the worker to reject a garbage hint")
        assert peers.worker.poll() is None

        spec = expected_spec(make_actor(CARTPOLE, [64, 64]))
        pruned = apply_masks(DENSE, Pruner(spec, method="magnitude").compute(DENSE, 0.8))
        peers.store.publish(pruned, 1)  # no weights_ready hint at all: the store is the truth
        fields = wait_for(lambda: (f := next_chunk(peers))["policy_version"] == 1 and f, what="a chunk of version 1")
        assert fields["policy_sparsity"] == pytest.approx(0.8, abs=0.005)
        swaps = logged(peers.run_dir, "worker-0", "worker_swapped")
        assert [s["version"] for s in swaps] == [0, 1] and swaps[1]["sparsity"] == pytest.approx(0.8, abs=0.005)

        peers.compressor.send_multipart(Encoder("wrk", "test-compressor").encode("control", {"command": "stop"}))
        assert peers.worker.wait(timeout=30) == 0
    assert_clean(peers.run_dir)


def test_worker_keeps_its_policy_when_the_store_holds_something_else(tmp_path, ctx):
    with lone_worker(tmp_path, ctx, "wbad") as peers:
        wait_for(lambda: logged(peers.run_dir, "worker-0", "worker_swapped"), what="the first swap")
        peers.store.publish({"something": np.ones(3, np.float32)}, 1)  # consistent, but not a policy
        failed = wait_for(lambda: logged(peers.run_dir, "worker-0", "store_read_failed"), what="the rejection")
        assert "version 1 is not a policy" in failed[0]["reason"]
        for _ in range(5):  # more than can be queued from before: the worker goes on acting, with version 0
            assert next_chunk(peers)["policy_version"] == 0
        assert [s["version"] for s in logged(peers.run_dir, "worker-0", "worker_swapped")] == [0]
        assert peers.worker.poll() is None


def test_teacher_student_snapshots_must_carry_bounded_observations(tmp_path, ctx):
    """In teacher-student mode a snapshot ships observations to distil on: up to distill_samples rows
    of the env's width, within +-input_bound; anything else is rejected and the store keeps what it had."""
    with lone_compressor(tmp_path, ctx, "tsobs", "prune_training_model=false", "pruning.distill_samples=16") as peer:
        run_dir, store = peer.run_dir, peer.store

        def snapshot(version, obs):
            return peer.snapshot(version, {**DENSE, **({} if obs is None else {"distill:obs": obs})}, epoch=0)

        wait_for(lambda: peer.lands(snapshot(1, np.zeros((0, 4), np.float32)), 1),
                 what="a snapshot with no observations yet")
        bad = [None, np.zeros((17, 4), np.float32), np.zeros((8, 5), np.float32),
               np.full((8, 4), 2e6, np.float32), np.zeros((8, 4), np.float64)]
        for obs in bad:
            peer.trainer.send_multipart(snapshot(2, obs))
        wait_for(lambda: len(rejections(run_dir, "compressor")) >= len(bad), what="the bad snapshots rejected")
        reasons = rejections(run_dir, "compressor")
        assert "missing tensors ['distill:obs']" in reasons[0]
        assert "float32[17, 4], expected float32[16, 4]" in reasons[1]
        assert "float32[8, 5], expected float32[8, 4]" in reasons[2]
        assert "distill:obs outside +-1e+06" in reasons[3]
        assert "float64[8, 4], expected float32[8, 4]" in reasons[4]
        assert store.version() == 1 and peer.compressor.poll() is None


def test_sync_a_rejected_chunk_serves_its_worker_s_share_and_a_forged_process_takes_no_credit(tmp_path, ctx):
    """Sync mode, one worker played by the test: its share is 4 chunks of each version. One of them
    is rejected (a reward beyond input_bound): the worker has sent its share and paused, so the
    trainer must not wait for a fifth; it trains epoch 1 on the 3 good chunks. A chunk claiming to be
    a newer process of that worker, but invalid, takes none of its credits."""
    run_dir = init_run(tmp_path, "syncrej", "mode=sync", "num_workers=1", "epochs=2", "pruning.method=none")
    ep = endpoints(run_dir)
    to_trainer, credits = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    to_trainer.connect(ep.trajectories)
    credits.subscribe(b"")
    credits.connect(ep.credits)
    trainer = subprocess.Popen([HOTPRUNE, "trainer", "--run-dir", str(run_dir)])
    try:
        wait_for(lambda: logged(run_dir, "trainer", "snapshot_published"), what="the trainer's first snapshot")
        worker = Encoder("syncrej", "worker-0")
        huge = np.full((32, 4), 3e38, np.float32)
        forged = _trajectory(Encoder("syncrej", "intruder"), worker_start=2**62, rewards=huge)
        sent = [_trajectory(worker), forged, _trajectory(worker, rewards=huge), _trajectory(worker),
                _trajectory(worker)]
        for frames in sent:
            to_trainer.send_multipart(frames)
        [epoch] = wait_for(lambda: logged(run_dir, "trainer", "epoch"), timeout=60,
                           what="epoch 1 without a 5th chunk")
        assert (epoch["samples"], epoch["samples_received"], epoch["samples_dropped_stale"]) == (384, 384, 0)
        last, deadline = None, time.monotonic() + 1.5  # the trainer sends them every 0.2 s while collecting
        while time.monotonic() < deadline and credits.poll(500):
            last = decode(credits.recv_multipart(), run_id="syncrej", kinds={"credits"}).fields
        assert last is not None and last["taken"] == [[1, 4]]  # the forged process credited nothing
    finally:
        trainer.kill()
        trainer.wait()


def test_chunks_a_collecting_trainer_never_takes_are_forgotten_not_waited_for(tmp_path, ctx):
    """A worker's first two chunks went to a trainer that died before taking them: the trainer now
    collecting (its credits keep coming) never counts them. After CREDITS_LOST_S the worker forgets
    them (`credits_lost`) and sends again, instead of waiting forever."""
    with lone_worker(tmp_path, ctx, "lost") as peers:
        next_chunk(peers, credit=False), next_chunk(peers, credit=False)  # taken by the test, never credited
        peers.taken = [0, 0]  # what a trainer that never saw them says
        t0 = time.monotonic()
        while not peers.trainer.poll(200):
            send_credits(peers)
            assert time.monotonic() - t0 < 30, "the worker waited for lost chunks"
        assert time.monotonic() - t0 >= 4.5  # not before CREDITS_LOST_S
        [lost] = logged(peers.run_dir, "worker-0", "credits_lost")
        assert lost["in_flight"] == 2 and peers.worker.poll() is None
