"""The shared-memory weight store: real segments in /dev/shm, real processes, no mocks."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import threading
import time
import traceback
import uuid
from multiprocessing import shared_memory

import numpy as np
import pytest

from hotprune.protocol import store_layout as layout
from hotprune.runs import rundir
from hotprune.actor_spec import actor_spec
from hotprune.config import load_config
from hotprune.envs import env_spec
from hotprune.comms.weight_store import StoreError, WeightStore, structure_id
from hotprune.protocol.sparse import SparseCode, SparseTensor, densified
from hotprune.workers.dense import DenseBuffers
from tests.arrays import assert_same_tensors

SLOT_SIZE = 64 * 1024
SPAWN = mp.get_context("spawn")


def _unique_name() -> str:
    return f"hotprune-test-{uuid.uuid4().hex[:8]}"


def _shm_path(name: str) -> str:
    return os.path.join("/dev/shm", name)


def _cleanup(store: WeightStore) -> None:
    """Close an owner store, unlink it if it still exists, and check it is gone from /dev/shm."""
    try:
        store.close()
    finally:
        if os.path.exists(_shm_path(store.name)):
            store.unlink()
    assert not os.path.exists(_shm_path(store.name)), f"{store.name} left behind in /dev/shm"


@pytest.fixture
def owner():
    store = WeightStore.create(_unique_name(), SLOT_SIZE)
    try:
        yield store
    finally:
        _cleanup(store)


@pytest.fixture
def attach():
    """Attach to a segment; every attached store is closed at teardown."""
    opened: list[WeightStore] = []

    def _attach(name: str, timeout_s: float = 0.0) -> WeightStore:
        store = WeightStore.attach(name, timeout_s=timeout_s)
        opened.append(store)
        return store

    yield _attach
    for store in opened:
        store.close()


def _mixed(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "i64": rng.integers(-(2**40), 2**40, size=(2, 3), dtype=np.int64),
        "i32": rng.integers(-1000, 1000, size=11, dtype=np.int32),
        "u8": rng.integers(0, 256, size=(4, 1, 3), dtype=np.uint8),
        "mask": rng.random((5, 5)) < 0.5,
        "transposed": rng.standard_normal((4, 6)).astype(np.float32).T,  # not C-contiguous
        "scalar": np.array(seed, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


# --- create, attach, publish, read ------------------------------------------------------------


def test_read_returns_none_before_the_first_publish(owner, attach):
    reader = attach(owner.name)
    assert owner.read() is None
    assert reader.read() is None
    assert owner.version() == reader.version() == -1
    assert owner.owner and not reader.owner


def test_attached_reader_gets_the_published_version_and_arrays(owner, attach):
    reader = attach(owner.name)
    tensors = _mixed(1)
    owner.publish(tensors, 3)
    header, got = reader.read()
    assert header.version == 3
    assert header.structure_id == structure_id(tensors)
    assert_same_tensors(got, tensors)

    tensors = _mixed(2)
    owner.publish(tensors, 4)
    header, got = reader.read()
    assert header.version == 4
    assert_same_tensors(got, tensors)


def test_read_returns_writable_copies(owner, attach):
    reader = attach(owner.name)
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(5, dtype=np.int64)}
    owner.publish(tensors, 1)
    _, got = reader.read()
    for array in got.values():
        assert array.flags.writeable
        array[...] = 0
    _, again = reader.read()
    assert_same_tensors(again, tensors)
    _, from_owner = owner.read()
    assert_same_tensors(from_owner, tensors)


def test_a_read_into_a_buffer_returns_tensors_that_view_it(owner, attach):
    reader = attach(owner.name)
    tensors = _mixed(0)
    owner.publish(tensors, 1)
    buffer = np.zeros(reader.slot_size(), np.uint8)
    header, got = reader.read(into=buffer)
    assert header.version == 1
    assert_same_tensors(got, tensors)
    assert all(np.shares_memory(array, buffer) for array in got.values() if array.size)


@pytest.mark.parametrize("buffer", [np.zeros(SLOT_SIZE - 1, np.uint8), np.zeros(SLOT_SIZE // 4, np.float32),
                                    np.zeros((2, SLOT_SIZE), np.uint8)])
def test_a_read_into_a_buffer_that_cannot_take_a_slot_is_refused_untouched(owner, buffer):
    owner.publish(_mixed(0), 1)
    with pytest.raises(ValueError, match=f"uint8 buffer of at least {owner.slot_size()} bytes"):
        owner.read(into=buffer)
    assert not buffer.any()


def test_a_running_version_never_changes_under_reads_that_were_not_kept(owner, attach):
    """As a worker reads: into its spare set of buffers (workers.dense), keeping a version once it runs
    it. The version it runs (dense tensors viewing one read buffer, a sparse one rebuilt in a buffer of
    the same set) stays as it was through later reads it did not keep (not a policy, say), and the
    next kept read leaves it alone too; only the read after that may reuse its buffers."""
    reader, buffers = attach(owner.name), DenseBuffers()
    w, keep = np.arange(600, dtype=np.float32).reshape(20, 30), np.arange(600).reshape(20, 30) % 3 == 0
    code = SparseCode.of_mask(keep)

    def version(v: int) -> dict:
        return {"dense": w + v, "sparse": code.sparse((w + v) * keep), "bias": np.full(5, v, np.float32)}

    def read() -> dict[str, np.ndarray]:
        return buffers.rebuild(reader.read(into=buffers.payload(reader.slot_size()))[1])

    owner.publish(version(1), 1)
    running = read()
    buffers.keep()
    for v in (2, 3):  # read, not kept: they write the spare set, and the same one twice
        owner.publish(version(v), v)
        assert_same_tensors(read(), densified(version(v)))
        assert_same_tensors(running, densified(version(1)))
    owner.publish(version(4), 4)
    newer = read()
    buffers.keep()
    assert_same_tensors(running, densified(version(1)))
    owner.publish(version(5), 5)
    read()
    assert_same_tensors(newer, densified(version(4)))  # the set v1 ran on took v5
    assert not np.array_equal(running["dense"], w + 1)


def test_publish_alternates_slots_and_reports_payload_size(owner):
    tensors = _mixed(0)
    slots = []
    for version in range(1, 6):
        slot, size, _ = owner.publish(tensors, version)
        header = owner.header()
        assert header.active_slot == slot
        assert header.payload_size == size == layout.payload_size(tensors)
        slots.append(slot)
    assert slots == [0, 1, 0, 1, 0]


def test_version_is_the_newest_version_and_does_not_read_the_payload(owner, attach):
    """version() is the cheap check workers poll at every safe point: header only, no copy, no CRC."""
    reader = attach(owner.name)
    for version in (1, 2, 10):
        owner.publish({"w": np.full(8, version, dtype=np.float32)}, version)
        assert reader.version() == owner.version() == version
    # Corrupt the active payload: a consistent read is impossible, but version() still answers.
    header = owner.header()
    at = layout.slot_offset(header.active_slot, header.slot_size) + header.payload_size - 1
    owner.buf[at] ^= 0xFF
    assert reader.version() == 10
    assert reader.read_retries == 0


def test_structure_change_is_reported_and_changes_structure_id(owner):
    _, _, changed = owner.publish({"a": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}, 1)
    assert changed is False  # nothing to change from
    first_id = owner.header().structure_id

    _, _, changed = owner.publish({"a": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)}, 2)
    assert changed is False
    assert owner.header().structure_id == first_id

    _, _, changed = owner.publish({"a": np.ones((4, 3), np.float32), "b": np.ones(4, np.float32)}, 3)
    assert changed is True
    second_id = owner.header().structure_id
    assert second_id != first_id

    _, _, changed = owner.publish({"a": np.full((4, 3), 2, np.float32), "b": np.full(4, 2, np.float32)}, 4)
    assert changed is False
    assert owner.header().structure_id == second_id

    _, _, changed = owner.publish({"a": np.full((4, 3), 2, np.float64), "b": np.full(4, 2, np.float32)}, 5)
    assert changed is True  # same shapes, different dtype


# --- attach failures, exclusivity, permissions ------------------------------------------------


def test_attach_to_a_missing_segment_fails_at_once_with_zero_timeout():
    name = _unique_name()
    start = time.monotonic()
    with pytest.raises(StoreError, match="does not exist"):
        WeightStore.attach(name, timeout_s=0)
    assert time.monotonic() - start < 5  # no waiting (a loose bound: machines here are noisy)


def test_attach_to_a_missing_segment_waits_for_the_timeout_then_fails():
    name = _unique_name()
    start = time.monotonic()
    with pytest.raises(StoreError, match="does not exist"):
        WeightStore.attach(name, timeout_s=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5
    assert not os.path.exists(_shm_path(name))


def test_attach_waits_for_a_segment_created_meanwhile(attach):
    name = _unique_name()
    created: list[WeightStore] = []
    timer = threading.Timer(0.15, lambda: created.append(WeightStore.create(name, SLOT_SIZE)))
    start = time.monotonic()
    timer.start()
    try:
        reader = attach(name, timeout_s=5)
        assert time.monotonic() - start >= 0.1
        assert reader.read() is None
    finally:
        timer.join(5)
        for store in created:
            _cleanup(store)


def test_attach_rejects_a_segment_that_is_not_a_store():
    name = _unique_name()
    shm = shared_memory.SharedMemory(name, create=True, size=4096)
    try:
        shm.buf[:] = bytes(4096)
        with pytest.raises(StoreError, match="not a hotprune weight store"):
            WeightStore.attach(name)
    finally:
        shm.close()
        shm.unlink()
    assert not os.path.exists(_shm_path(name))


def test_attach_rejects_a_segment_smaller_than_the_header():
    """BUG: a segment shorter than the 64-byte header escapes as struct.error, not StoreError."""
    name = _unique_name()
    shm = shared_memory.SharedMemory(name, create=True, size=16)
    try:
        with pytest.raises(StoreError):
            WeightStore.attach(name)
    finally:
        shm.close()
        shm.unlink()
    assert not os.path.exists(_shm_path(name))


def test_creating_an_existing_segment_raises_and_leaves_it_intact(owner, attach):
    owner.publish({"w": np.arange(4, dtype=np.float32)}, 9)
    with pytest.raises(StoreError, match="already exists"):
        WeightStore.create(owner.name, SLOT_SIZE)
    header, got = attach(owner.name).read()
    assert header.version == 9
    np.testing.assert_array_equal(got["w"], np.arange(4, dtype=np.float32))


def test_segment_is_readable_and_writable_by_its_user_only(owner):
    mode = stat.S_IMODE(os.stat(_shm_path(owner.name)).st_mode)
    assert mode == 0o600, oct(mode)


# --- ownership: only the creator unlinks ------------------------------------------------------


def _attach_read_close_and_exit(name: str, results) -> None:
    """Child: attach, read and close; attach again and exit without closing."""
    try:
        first = WeightStore.attach(name)
        header, _ = first.read()
        first.close()
        WeightStore.attach(name)  # left open on purpose: the process just exits
        results.put(header.version)
    except BaseException:
        results.put(traceback.format_exc())


def test_a_non_owner_exiting_does_not_unlink_and_owner_unlink_does(attach):
    store = WeightStore.create(_unique_name(), SLOT_SIZE)
    try:
        store.publish({"w": np.full(16, 5, dtype=np.int32)}, 5)
        results = SPAWN.Queue()
        child = SPAWN.Process(target=_attach_read_close_and_exit, args=(store.name, results))
        child.start()
        try:
            got = results.get(timeout=60)
            child.join(timeout=30)
        finally:
            if child.is_alive():
                child.terminate()
                child.join(5)
        assert got == 5, got
        assert child.exitcode == 0

        assert os.path.exists(_shm_path(store.name))
        header, tensors = attach(store.name).read()
        assert header.version == 5
        np.testing.assert_array_equal(tensors["w"], np.full(16, 5, dtype=np.int32))

        store.unlink()
        assert not os.path.exists(_shm_path(store.name))
        with pytest.raises(StoreError, match="does not exist"):
            WeightStore.attach(store.name)
    finally:
        _cleanup(store)


# --- consistency --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["tensor table", "tensor bytes"])
def test_a_corrupted_payload_is_never_returned(owner, attach, where):
    owner.publish({"w": np.arange(256, dtype=np.float32), "i": np.arange(32, dtype=np.int64)}, 1)
    header = owner.header()
    start = layout.slot_offset(header.active_slot, header.slot_size)
    at = start + (layout.TABLE_LEN.size + 2 if where == "tensor table" else header.payload_size - 3)
    for i in range(at, at + 2):
        owner.buf[i] ^= 0xFF

    reader = attach(owner.name)
    began = time.monotonic()
    with pytest.raises(StoreError, match="no consistent read"):
        reader.read(timeout_s=0.2)
    assert time.monotonic() - began >= 0.2
    assert reader.read_retries > 0

    # The next publish goes to the other slot and is readable again.
    owner.publish({"w": np.zeros(4, dtype=np.float32)}, 2)
    header, got = reader.read()
    assert header.version == 2
    np.testing.assert_array_equal(got["w"], np.zeros(4, dtype=np.float32))


def test_a_header_caught_mid_update_is_never_accepted(owner, attach):
    """BUG: struct.pack_into zero-fills its target before writing the fields, so while publish()
    rewrites the header it reads as all zeros for an instant: seq 0 (even), version 0, payload_size 0,
    checksum 0 == crc32(b""). read() takes that for a consistent empty payload and raises LayoutError
    instead of retrying (the concurrent test below runs into it at random)."""
    owner.publish({"w": np.ones(4, dtype=np.float32)}, 1)
    reader = attach(owner.name)
    owner.buf[: layout.HEADER_SIZE] = bytes(layout.HEADER_SIZE)  # the header as HEADER.pack_into leaves it
    with pytest.raises(StoreError):
        reader.read(timeout_s=0.2)


def test_read_with_zero_timeout_still_tries_once(owner):
    """BUG: read(timeout_s=0) never looks at the store: it raises even when a consistent copy (or
    nothing yet, which should give None) is right there; attach(timeout_s=0) does try once."""
    assert owner.read(timeout_s=0) is None
    owner.publish({"w": np.ones(4, dtype=np.float32)}, 1)
    header, _ = owner.read(timeout_s=0)
    assert header.version == 1


def test_a_publish_after_an_interrupted_publish_is_readable(owner, attach):
    """BUG: a writer killed between its two seq stores leaves seq odd; the next writer (a restarted
    compressor) adds 1 and 2 as usual, so from then on seq is odd whenever the store is consistent
    and every read spins until its timeout."""
    owner.publish({"w": np.ones(4, dtype=np.float32)}, 1)
    layout.SEQ.pack_into(owner.buf, layout.SEQ_OFFSET, owner.header().seq + 1)  # as the killed writer left it

    writer = attach(owner.name)
    writer.publish({"w": np.full(4, 2, dtype=np.float32)}, 2)
    header, got = attach(owner.name).read(timeout_s=0.2)
    assert header.version == 2
    np.testing.assert_array_equal(got["w"], np.full(4, 2, dtype=np.float32))


def test_non_native_byte_order_is_stored_by_value_or_refused(owner):
    """'>f4'.name is 'float32': without a byte-order conversion, big-endian bytes would be stored as
    they are and read back as garbage."""
    weights = np.arange(6, dtype=">f4")
    try:
        owner.publish({"w": weights}, 1)
    except (layout.LayoutError, StoreError):
        return  # refusing it is fine too
    _, got = owner.read()
    np.testing.assert_array_equal(got["w"], weights)


# --- torn reads under a real concurrent writer ------------------------------------------------

TORN_DURATION_S = 2.0
SHAPE_PERIOD = 50  # the shape of "a" flips every SHAPE_PERIOD versions


def _torn_test_tensors(version: int) -> dict[str, np.ndarray | SparseTensor]:
    """Dense tensors all equal to the version, and a sparse one whose mask moves every 7 versions."""
    rows = 64 if (version // SHAPE_PERIOD) % 2 == 0 else 32
    keep = (np.arange(1000) + version // 7) % 3 == 0
    return {
        "a": np.full((rows, 64), version, dtype=np.float32),
        "b": np.full(64, version, dtype=np.float32),
        "c": np.full(300, version, dtype=np.int64),
        "s": SparseCode.of_mask(keep).sparse(np.full(1000, version, np.float32)),
    }


def _torn_writer(name: str, barrier, results, duration: float) -> None:
    try:
        store = WeightStore.attach(name, timeout_s=10)
        barrier.wait(60)
        deadline = time.monotonic() + duration
        version = changes = 0
        while time.monotonic() < deadline:
            version += 1
            _, _, changed = store.publish(_torn_test_tensors(version), version)
            changes += changed
        store.close()
        results.put(("writer", (version, changes)))
    except BaseException:
        barrier.abort()  # release the others instead of letting them wait out the barrier
        results.put(("writer", traceback.format_exc()))


def _torn_reader(role: str, name: str, barrier, results, duration: float) -> None:
    """Reads as fast as it can; every accepted read must be one whole version, never older."""
    try:
        store = WeightStore.attach(name, timeout_s=10)
        barrier.wait(60)
        deadline = time.monotonic() + duration
        reads = violations = starved = spurious = 0
        last = -1
        versions: set[int] = set()
        rows_seen: set[int] = set()
        problems: list[str] = []
        dense = DenseBuffers()  # as a worker rebuilds the sparse tensor: its cached masks must follow
        while time.monotonic() < deadline:
            try:
                got = store.read(timeout_s=1.0, into=dense.payload(store.slot_size()))  # as a worker
            except Exception as exc:
                if isinstance(exc, StoreError) and "no consistent read" in str(exc):
                    starved += 1  # no consistent copy within the timeout: slow, but not wrong
                else:
                    spurious += 1  # read() judged a header caught mid-publish as corrupt or consistent
                if len(problems) < 20:
                    problems.append(f"read() raised {type(exc).__name__}: {exc}")
                continue
            if got is None:
                continue
            header, tensors = got
            v = header.version
            reads += 1
            versions.add(v)
            bad = []
            if v < last:
                bad.append(f"version went back from {last} to {v}")
            expected = densified(_torn_test_tensors(v))
            if header.structure_id != structure_id(tensors):
                bad.append(f"v{v}: header structure_id does not match the payload")
            tensors = dense.rebuild(tensors)
            dense.keep()
            if list(tensors) != list(expected):
                bad.append(f"v{v}: tensors {list(tensors)}")
            else:
                for key, want in expected.items():
                    array = tensors[key]
                    if array.shape != want.shape or array.dtype != want.dtype:
                        bad.append(f"v{v}: {key} is {array.dtype}{array.shape}")
                    elif not np.array_equal(array, want):
                        bad.append(f"v{v}: {key} holds {np.unique(array)[:5]}")
                rows_seen.add(tensors["a"].shape[0])
            if bad:
                violations += 1
                problems.extend(bad[: max(0, 20 - len(problems))])
            last = max(last, v)
        store.close()
        results.put((role, (reads, len(versions), violations, store.read_retries, starved, spurious,
                            sorted(rows_seen), problems[:5])))
    except BaseException:
        barrier.abort()
        results.put((role, traceback.format_exc()))


def test_concurrent_readers_never_see_a_torn_version():
    """The point of the store: a writer publishing flat out never lets a reader accept a mix of two
    versions (every element of every tensor equals header.version, the sparse one's kept elements
    under its version's mask and 0 elsewhere), nor an older version."""
    largest = max((_torn_test_tensors(v) for v in (0, SHAPE_PERIOD)), key=layout.payload_size)
    store = WeightStore.create(_unique_name(), layout.payload_size(largest))
    barrier = SPAWN.Barrier(4)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_torn_writer, args=(store.name, barrier, results, TORN_DURATION_S))]
    procs += [SPAWN.Process(target=_torn_reader, args=(f"reader{i}", store.name, barrier, results, TORN_DURATION_S))
              for i in (1, 2)]
    try:
        for proc in procs:
            proc.start()
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            pass  # a child failed; its traceback is on the queue
        out = dict(results.get(timeout=TORN_DURATION_S + 30) for _ in procs)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        _cleanup(store)

    for role, result in out.items():
        assert not isinstance(result, str), f"{role} failed:\n{result}"
    assert [proc.exitcode for proc in procs] == [0, 0, 0]

    published, changes = out["writer"]
    assert published > 200, published
    assert changes == published // SHAPE_PERIOD  # one structure change each time the shape flips
    for role in ("reader1", "reader2"):
        reads, distinct, violations, torn_retries, starved, spurious, rows_seen, problems = out[role]
        summary = (f"{role}: {reads} reads, {distinct} distinct versions of {published}, "
                   f"torn_retries={torn_retries}, starved={starved}, spurious errors={spurious}, "
                   f"problems={problems}")
        print(summary)
        assert violations == 0, summary
        assert spurious == 0, summary  # a healthy store mid-publish is neither corrupt nor empty
        assert reads > 100, summary
        assert distinct > 20, summary  # versions interleaved with reads: about 40 at load 12 on 2 cores
        assert rows_seen == [32, 64], summary  # both shapes were read back whole


def test_attach_waits_while_the_creator_has_not_initialised_the_segment():
    """Between creating a segment and writing its header, the creator's segment is all zeros: an
    attaching worker must wait for it, not fail (nor crash on a still-empty file)."""
    name = _unique_name()
    raw = shared_memory.SharedMemory(name, create=True, size=4096)
    try:
        def initialise():
            time.sleep(0.2)
            raw.buf[: layout.HEADER_SIZE] = layout.HEADER.pack(layout.MAGIC, layout.LAYOUT_VERSION, 0, 0, -1, 0, 0,
                                                               0, 0, 1984)

        threading.Thread(target=initialise).start()
        store = WeightStore.attach(name, timeout_s=5)
        assert store.read() is None
        store.close()
    finally:
        raw.close()
        raw.unlink()


def test_attach_gives_up_when_cancelled():
    started = time.monotonic()
    with pytest.raises(StoreError, match="does not exist"):
        WeightStore.attach(_unique_name(), timeout_s=30, cancelled=lambda: time.monotonic() - started > 0.2)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_the_store_is_sized_for_the_dense_actor_from_a_table_computed_without_torch(env_id):
    # Imported here: a spawned child of the tests above imports this module, and torch would cost it seconds.
    from hotprune.learning.policy import actor_arrays, expected_spec, make_actor

    cfg = load_config(overrides=[f"env_id={env_id}", "ppo.hidden_sizes=[32, 16]"])
    actor = make_actor(env_spec(env_id), [32, 16])
    assert actor_spec(env_spec(env_id), [32, 16]) == expected_spec(actor)
    assert rundir.store_slot_size(cfg) == layout.payload_size(actor_arrays(actor))
