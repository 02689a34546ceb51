"""Sparse weight versions (protocol/sparse.py): kept values + a packed bitmap, in the store's slots and in
messages, checked on the way in, and rebuilt dense by a worker (workers/dense.py) with its indices cached."""

from __future__ import annotations

import numpy as np
import pytest

from hotprune.actor_spec import actor_spec
from hotprune.comms.weight_store import WeightStore
from hotprune.config import load_config
from hotprune.envs import env_spec
from hotprune.protocol.codec import Encoder, MessageRejected, check_tensors, decode
from hotprune.protocol.sparse import NONZERO_CHUNK, POPCOUNT, SparseCode, SparseTensor, bits_set, densified, nonzero, \
    sparse_tensor, worth_sparse
from hotprune.protocol.store_layout import LayoutError, payload_size, read_payload, segment_name, write_payload
from hotprune.pruning.engine import Pruner, apply_masks
from hotprune.roles.process import StopFlag
from hotprune.runs import rundir
from hotprune.workers.dense import DenseBuffers
from hotprune.workers.inference_worker import InferenceWorker
from tests.arrays import assert_same_tensors

RNG = np.random.default_rng(7)


def masked(shape, sparsity: float, rng=RNG) -> tuple[np.ndarray, np.ndarray]:
    """(weights with the pruned entries 0, the keep-mask) at about `sparsity`."""
    keep = rng.random(shape) >= sparsity
    return rng.standard_normal(shape).astype(np.float32) * keep, keep


def version_of(sparsity: float = 0.9) -> tuple[dict, dict]:
    """(a version with one sparse and two dense tensors, the same version dense)."""
    w, keep = masked((64, 300), sparsity)
    dense = {"net.0.weight": w, "net.0.bias": RNG.standard_normal(64).astype(np.float32),
             "steps": np.arange(5, dtype=np.int64)}
    return {**dense, "net.0.weight": SparseCode.of_mask(keep).sparse(w)}, dense


def payload(tensors) -> bytes:
    buf = memoryview(bytearray(payload_size(tensors)))
    size, _ = write_payload(buf, tensors)
    return bytes(buf[:size])


# --- the format -------------------------------------------------------------------------------


def test_a_sparse_version_round_trips_through_a_store_payload_and_a_message():
    version, dense = version_of()
    from_store = read_payload(payload(version))
    assert isinstance(from_store["net.0.weight"], SparseTensor)
    assert_same_tensors(densified(from_store), dense)
    # a relay's path: what it read from its store goes out as it is, and lands as the same version
    message = decode(Encoder("r", "relay").encode("control", {"command": "x"}, from_store))
    assert_same_tensors(densified(message.tensors), dense)
    assert_same_tensors(densified(read_payload(payload(message.tensors))), dense)


def test_at_90_percent_sparsity_a_version_costs_at_most_15_percent_of_its_dense_bytes():
    w, keep = masked((1024, 1024), 0.9)
    sparse = SparseCode.of_mask(keep).sparse(w)
    assert payload_size({"w": sparse}) <= 0.15 * payload_size({"w": w})
    frames = Encoder("r", "c").encode("control", {"command": "x"}, {"w": sparse})
    assert sum(len(memoryview(f).cast("B")) for f in frames) <= 0.15 * w.nbytes


@pytest.mark.parametrize("sparsity, sparse", [(0.9, True), (0.6, True), (0.45, False), (0.0, False)])
def test_a_tensor_goes_sparse_only_where_that_halves_its_bytes(sparsity, sparse):
    n = 10_000
    assert worth_sparse(n, round(n * (1 - sparsity)), 4) is sparse


@pytest.mark.parametrize("shape", [(1,), (7,), (63,), (64,), (65,), (8, 9), (300,)])
def test_a_version_written_by_the_rule_never_outgrows_its_dense_payload(shape):
    """The store's slots are sized for the dense model: whatever the rule picks must fit."""
    n = int(np.prod(shape))
    for kept in sorted({0, 1, n // 8, n // 3, n // 2, n}):
        keep = np.zeros(n, bool)
        keep[:kept] = True
        keep = keep.reshape(shape)
        w = np.ones(shape, np.float32) * keep
        tensors = {"a": np.ones(3, np.float32), "w": w, "z": np.ones(5, np.float32)}
        if worth_sparse(n, kept, 4):
            tensors["w"] = SparseCode.of_mask(keep).sparse(w)
        assert payload_size(tensors) <= payload_size({**tensors, "w": w}), (shape, kept)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<f2", "<i8", "|b1"])
def test_nonzero_counts_as_count_nonzero_does_with_negative_zeros_nans_and_subnormals(dtype):
    """Floats are counted by their bits: -0.0 (the product of a negative weight and a mask's 0) must
    still count as zero, NaN as not, at chunk boundaries too."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal(NONZERO_CHUNK * 2 + 4) * (rng.random(NONZERO_CHUNK * 2 + 4) < 0.5)
    values = np.where(rng.random(values.size) < 0.25, -values, values)  # -0.0 where a 0 was negated
    if np.dtype(dtype).kind == "f":
        values[[0, NONZERO_CHUNK - 1, NONZERO_CHUNK, -1]] = [-0.0, np.nan, np.finfo(dtype).smallest_subnormal, -np.inf]
    array = values.astype(dtype)
    assert np.signbit(array[array == 0]).any() or np.dtype(dtype).kind != "f"
    for shape in [array.shape, (3, -1), ()]:
        part = array[:1].reshape(()) if shape == () else array.reshape(shape)
        assert nonzero(part) == np.count_nonzero(part)
    assert nonzero(array[:0]) == 0
    assert nonzero(SparseCode.of_mask(array != 0).sparse(array)) == np.count_nonzero(array)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64, 1001])
def test_bits_set_counts_every_bit_of_a_bitmap_of_any_length(size):
    rng = np.random.default_rng(size)
    bitmap = rng.integers(0, 256, size, dtype=np.uint8)
    assert bits_set(bitmap) == int(np.unpackbits(bitmap).sum()) == int(POPCOUNT[bitmap].sum())
    assert bits_set(np.full(size, 255, np.uint8)) == 8 * size


def test_kept_values_that_are_exactly_zero_stay_kept():
    keep = np.array([True, False, True, True])
    back = read_payload(payload({"w": SparseCode.of_mask(keep).sparse(np.array([0, 0, -2, 0], np.float32))}))["w"]
    assert back.values.tolist() == [0, -2, 0] and back.dense().tolist() == [0, 0, -2, 0]


def sparse_frames(values: np.ndarray, bitmap: np.ndarray, shape, kept=None) -> list:
    """A message whose one sparse buffer says what the test wants, whatever its frames hold."""
    frames = Encoder("r", "c").encode("control", {"command": "x"},
                                      {"w": SparseTensor(values.astype(np.float32), bitmap, tuple(shape))})
    if kept is not None:
        import msgpack
        header = msgpack.unpackb(frames[0])
        header["buffers"][0]["kept"] = kept
        frames[0] = msgpack.packb(header)
    return frames


@pytest.mark.parametrize("values, bitmap, shape, kept, reason", [
    (np.ones(3), np.array([0b11000000], np.uint8), [8], None, "3 values for a bitmap of 2 kept entries"),
    (np.ones(1), np.array([0b10000000, 0], np.uint8), [8], None, "do not match uint8[1]"),
    (np.ones(1), np.array([0b10000000], np.uint8), [12], None, "do not match uint8[2]"),
    (np.ones(2), np.array([0b10000001], np.uint8), [7], None, "bits set past its 7 entries"),
    (np.array([1.0, np.nan]), np.array([0b11000000], np.uint8), [8], None, "non-finite values"),
    (np.array([1.0, np.inf]), np.array([0b11000000], np.uint8), [8], None, "non-finite values"),
    (np.ones(2), np.array([0b11000000], np.uint8), [8], -1, "bad kept count"),
    (np.ones(2), np.array([0b11000000], np.uint8), [8], True, "bad kept count"),
    (np.ones(2), np.array([0b11000000], np.uint8), [8], 3, "do not match float32[3]"),
])
def test_a_message_with_a_malformed_sparse_tensor_is_rejected(values, bitmap, shape, kept, reason):
    with pytest.raises(MessageRejected) as info:
        decode(sparse_frames(values, bitmap, shape, kept))
    assert reason in info.value.reason


def test_a_sparse_tensor_where_a_receiver_expects_dense_ones_is_rejected():
    version, dense = version_of()
    expected = {n: (a.dtype.name, a.shape) for n, a in dense.items()}
    check_tensors(dense, expected)
    with pytest.raises(MessageRejected, match="'net.0.weight' is sparse, expected dense"):
        check_tensors(decode(Encoder("r", "c").encode("control", {"command": "x"}, version)).tensors, expected)


def test_a_store_payload_whose_values_do_not_match_the_bitmap_is_refused():
    keep = np.zeros(64, bool)
    keep[:8] = True
    good = payload({"w": SparseCode.of_mask(keep).sparse(np.ones(64, np.float32))})
    bad = bytearray(good)
    at = bad.index(bytes([0xFF]))  # the bitmap's first byte: the 8 kept entries
    bad[at] = 0x7F
    with pytest.raises(LayoutError, match="8 values for a bitmap of 7 kept entries"):
        read_payload(bytes(bad))


def test_sparse_tensor_keeps_the_arrays_it_is_given():
    values, bitmap = np.ones(2, np.float32), np.array([0b01000001], np.uint8)
    tensor = sparse_tensor("w", np.dtype(np.float32), [8], values, bitmap)
    assert tensor.values is values and tensor.dense().tolist() == [0, 1, 0, 0, 0, 0, 0, 1]


# --- a worker's rebuild ------------------------------------------------------------------------


def test_rebuilt_buffers_equal_the_masked_dense_weights_through_mask_changes():
    """Versions under one mask (values scattered into kept zeros), a nested bigger mask (its newly
    pruned entries must read 0 again in both buffer sets), a shape change, and back to dense."""
    dense_buffers = DenseBuffers()
    rng = np.random.default_rng(1)
    keep = rng.random((40, 50)) >= 0.7
    for step in range(8):
        if step == 4:
            keep = keep & (rng.random(keep.shape) >= 0.5)  # masks only grow
        shape = keep.shape if step < 6 else (40, 49)
        mask = keep if step < 6 else keep[:, :49]
        w = rng.standard_normal(shape).astype(np.float32) * mask
        got = dense_buffers.rebuild({"w": SparseCode.of_mask(mask).sparse(w), "b": np.ones(3, np.float32)})
        np.testing.assert_array_equal(got["w"], w, err_msg=f"version {step}")
        assert got["w"].shape == shape and got["b"].tolist() == [1, 1, 1]
        dense_buffers.keep()
    assert dense_buffers.rebuild({"w": np.full(3, 2, np.float32)})["w"].tolist() == [2, 2, 2]


def test_a_rebuild_that_is_not_kept_leaves_the_running_buffers_alone():
    dense_buffers = DenseBuffers()
    w, keep = masked((8, 8), 0.5)
    code = SparseCode.of_mask(keep)
    running = dense_buffers.rebuild({"w": code.sparse(w)})["w"]
    dense_buffers.keep()
    rejected = dense_buffers.rebuild({"w": code.sparse(w + 1)})["w"]  # e.g. not a policy: keep() not called
    again = dense_buffers.rebuild({"w": code.sparse(w + 2)})["w"]
    assert again is rejected and running is not rejected
    np.testing.assert_array_equal(running, w)
    np.testing.assert_array_equal(again, (w + 2) * keep)


def test_a_rebuild_follows_a_new_mask_read_into_a_buffer_an_older_mask_was_read_into():
    """As a worker reads: each version into its spare read buffer, so the third overwrites the first's
    bitmap. Mask B keeps as many entries as mask A (a new compression at the same sparsity), so its
    bitmap lands where A's was: the rebuild must see it as new, not compare it with itself."""
    w, keep_a = masked((30, 40), 0.5)
    keep_b = np.roll(keep_a, 1)
    store = WeightStore.create(f"hotprune-test-sparse-{RNG.integers(1 << 32):08x}", 64 * 1024)
    dense_buffers = DenseBuffers()
    try:
        for version, keep in enumerate([keep_a, keep_a, keep_b], start=1):
            store.publish({"w": SparseCode.of_mask(keep).sparse(w * keep)}, version)
            stored = store.read(into=dense_buffers.payload(store.slot_size()))[1]
            np.testing.assert_array_equal(dense_buffers.rebuild(stored)["w"], w * keep, err_msg=f"version {version}")
            dense_buffers.keep()
    finally:
        store.close()
        store.unlink()


def test_a_worker_swaps_to_a_sparse_version_and_runs_exactly_the_masked_dense_weights(tmp_path):
    """A real worker (in this process) on a real store: after each swap its actor's tensors equal the
    compressor's masked dense ones, under one mask, a grown one, and after a version that is no policy."""
    cfg = load_config(overrides=[f'runs_dir="{tmp_path}"', "run_id=sparse", "ppo.hidden_sizes=[64, 64]",
                                 "num_workers=1", "envs_per_worker=2"])
    rundir.prepare(cfg, check_ports=False)
    spec = actor_spec(env_spec(cfg.env_id), [64, 64])
    rng = np.random.default_rng(3)
    weights = {n: rng.standard_normal(shape).astype(np.float32) for n, (_, shape) in spec.items()}
    pruner = Pruner(spec, method="magnitude")
    store = WeightStore.create(segment_name(cfg.run_dir), rundir.store_slot_size(cfg))
    worker = None
    try:
        store.publish(weights, 0)
        worker = InferenceWorker(cfg, 0, StopFlag())
        masks = out = None
        for version, target in enumerate([0.9, 0.9, 0.95, None, 0.95], start=1):
            if target is None:  # consistent, but not a policy: the worker keeps what it runs
                store.publish({"net.0.weight": weights["net.0.weight"]}, version)
                worker.maybe_swap()
                assert worker.version == version - 1
                assert_same_tensors(dict(worker.actor.tensors), out)  # read into the spare buffers only
                continue
            weights = {n: w + np.float32(0.01) for n, w in weights.items()}
            masks = pruner.compute(weights, target, previous=masks)
            out = apply_masks(weights, masks)
            stored = {n: SparseCode.of_mask(masks.elements[n]).sparse(w) if n in masks.elements else w
                      for n, w in out.items()}
            assert any(isinstance(t, SparseTensor) for t in stored.values())
            store.publish(stored, version)
            worker.maybe_swap()
            assert worker.version == version
            assert_same_tensors(dict(worker.actor.tensors), out)
            assert worker.sparsity == pytest.approx(target, abs=0.01)
    finally:
        if worker is not None:
            worker.ctx.destroy(linger=0)
            worker.envs.close()
            worker.store.close()
        store.close()
        store.unlink()
