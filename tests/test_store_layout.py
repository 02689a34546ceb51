"""Shared-memory weight store byte layout (protocol/store_layout.py) and endpoint names (protocol/endpoints.py)."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np
import pytest

from hotprune.protocol.endpoints import MAX_IPC_PATH, SOCKETS, Endpoints, endpoints, socket_dir
from hotprune.protocol.store_layout import (
    ALIGN,
    HEADER,
    HEADER_SIZE,
    LAYOUT_VERSION,
    MAGIC,
    SEQ,
    SEQ_OFFSET,
    TABLE_LEN,
    LayoutError,
    StoreHeader,
    checksum,
    payload_size,
    read_payload,
    segment_size,
    slot_offset,
    write_payload,
)
from tests.arrays import assert_same_tensors

# --- helpers ------------------------------------------------------------------------------

TENSOR_SETS = {
    "model": {
        "fc1.weight": np.arange(15, dtype=np.float32).reshape(3, 5) / 3,
        "fc1.bias": np.array([0.5, -1.0, 2.0], dtype=np.float32),
        "fc2.weight": np.linspace(-1, 1, 7, dtype=np.float64),
        "mask": np.array([[True, False], [False, True], [True, True]]),
    },
    "all_dtypes_odd_sizes": {
        "u8": np.arange(13, dtype=np.uint8),  # 13 bytes: the next tensor needs padding
        "i32": np.array([-1, 2, -3], dtype=np.int32),
        "b": np.array([True, False, True]),
        "i64": np.array([[-(2**62), 2**62]], dtype=np.int64),
        "f64": np.array([1e-300, -1e300]),
        "scalar": np.array(7.5, dtype=np.float32),
    },
    "with_empty": {
        "before": np.ones(3, np.float32),
        "empty1d": np.zeros(0, np.float32),
        "empty2d": np.zeros((4, 0), np.int64),
        "empty_bool": np.zeros((0, 0), bool),
        "after": np.full((2, 2), 9, np.int32),
    },
    "only_empty": {"e": np.zeros((0, 3), np.float64)},
    "none": {},
}


def table_of(payload) -> list:
    (n,) = TABLE_LEN.unpack_from(payload, 0)
    return msgpack.unpackb(bytes(payload[TABLE_LEN.size : TABLE_LEN.size + n]), raw=False)


def raw_payload(entries, body: bytes = b"\x00" * 64) -> bytes:
    """A payload with a hand-written tensor table, followed by `body`."""
    table = msgpack.packb(entries, use_bin_type=True)
    return TABLE_LEN.pack(len(table)) + table + body


def written(tensors, slot_size=None, fill=0xAB) -> tuple[bytearray, int, int]:
    """Write into a slot pre-filled with junk (slots are reused, never zeroed)."""
    buf = bytearray([fill]) * (slot_size if slot_size is not None else payload_size(tensors) + 40)
    size, crc = write_payload(memoryview(buf), tensors)
    return buf, size, crc


# --- payload round trip -------------------------------------------------------------------


@pytest.mark.parametrize("key", list(TENSOR_SETS))
def test_payload_round_trip(key):
    tensors = TENSOR_SETS[key]
    buf, size, crc = written(tensors)
    assert size == payload_size(tensors)
    assert size % ALIGN == 0
    assert crc == checksum(bytes(buf[:size])) == checksum(memoryview(buf)[:size])
    # readers work on their own copy of exactly payload_size bytes
    assert_same_tensors(read_payload(bytes(buf[:size])), tensors)
    assert_same_tensors(read_payload(memoryview(bytearray(buf[:size]))), tensors)


@pytest.mark.parametrize("key", list(TENSOR_SETS))
def test_payload_offsets_are_aligned_and_disjoint(key):
    tensors = TENSOR_SETS[key]
    buf, size, _ = written(tensors)
    entries = table_of(buf)
    (table_len,) = TABLE_LEN.unpack_from(buf, 0)
    assert [e[0] for e in entries] == list(tensors)
    cursor = TABLE_LEN.size + table_len  # no tensor may overlap the table
    for name, dtype, shape, offset in entries:
        array = tensors[name]
        assert (dtype, tuple(shape)) == (array.dtype.name, array.shape)
        assert offset % ALIGN == 0, (name, offset)
        assert offset >= cursor, name
        cursor = offset + array.nbytes
    assert cursor <= size


def test_payload_fits_a_slot_of_exactly_its_size():
    tensors = TENSOR_SETS["all_dtypes_odd_sizes"]
    size = payload_size(tensors)
    buf, written_size, crc = written(tensors, slot_size=size)
    assert written_size == size and crc == checksum(bytes(buf))
    assert_same_tensors(read_payload(bytes(buf)), tensors)


def test_checksum_changes_when_a_weight_changes():
    tensors = {"w": np.zeros(8, np.float32)}
    _, _, crc1 = written(tensors)
    _, _, crc2 = written({"w": np.array([0] * 7 + [1e-30], np.float32)})
    assert crc1 != crc2


def test_checksum_catches_a_copy_torn_between_two_training_steps():
    """A reader's copy with a stretch of the next version's bytes (what the checksum is there for),
    at every 8-byte boundary, for weights that moved by one small Adam-like step."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(256).astype(np.float32)
    old, _, crc = written({"w": w})
    new, size, _ = written({"w": w - np.float32(1e-3) * np.sign(rng.standard_normal(256)).astype(np.float32)})
    for cut in range(8, size, 8):
        torn = bytes(old[:cut]) + bytes(new[cut:size])
        assert torn == bytes(old[:size]) or checksum(torn) != crc, cut
    assert checksum(b"") == 0 and checksum(b"\x01") == 1  # a tail shorter than a word counts too


def test_write_into_second_slot_of_a_segment():
    tensors = TENSOR_SETS["model"]
    slot = 512
    segment = bytearray(segment_size(slot))
    view = memoryview(segment)
    start = slot_offset(1, slot)
    size, crc = write_payload(view[start : start + slot], tensors)
    assert not any(segment[: start])  # header and slot 0 untouched
    assert crc == checksum(segment[start : start + size])
    assert_same_tensors(read_payload(bytes(segment[start : start + size])), tensors)


def test_write_non_contiguous_arrays():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    tensors = {"t": base.T, "strided": base[:, ::2]}
    buf, size, _ = written(tensors)
    assert_same_tensors(read_payload(bytes(buf[:size])), tensors)


def test_big_endian_arrays_are_not_stored_mislabelled():
    """BUG: dtype.name is 'float32' for '>f4' too, so big-endian bytes are stored under a label that
    read_payload interprets as little-endian: the weights come back corrupted. Refusing
    (LayoutError) or converting would both be fine."""
    tensors = {"w": np.array([1.0, -2.5], dtype=">f4")}
    try:
        buf, size, _ = written(tensors)
    except LayoutError:
        return
    got = read_payload(bytes(buf[:size]))["w"]
    np.testing.assert_array_equal(got, tensors["w"], err_msg="BUG: big-endian tensor corrupted in the store")


# --- write/read errors --------------------------------------------------------------------


def test_payload_too_big_for_slot():
    tensors = {"w": np.ones(100, np.float32)}
    size = payload_size(tensors)
    with pytest.raises(LayoutError, match=f"payload of {size} bytes does not fit a slot of {size - 1} bytes"):
        write_payload(memoryview(bytearray(size - 1)), tensors)


@pytest.mark.parametrize("dtype", [np.float16, np.complex64, object])
def test_write_refuses_disallowed_dtype(dtype):
    with pytest.raises(LayoutError, match="cannot be stored"):
        write_payload(memoryview(bytearray(4096)), {"w": np.zeros(3, dtype=dtype)})


@pytest.mark.parametrize("payload", [b"", b"\x01\x00"])
def test_read_rejects_payload_shorter_than_table_length(payload):
    with pytest.raises(LayoutError, match="shorter than its table length"):
        read_payload(payload)


def test_read_rejects_table_running_past_payload():
    payload = raw_payload([["w", "float32", [1], 8]], body=b"")
    with pytest.raises(LayoutError, match="tensor table runs past the payload"):
        read_payload(payload[:-1])
    with pytest.raises(LayoutError, match="tensor table runs past the payload"):
        read_payload(TABLE_LEN.pack(2**32 - 1) + b"\x00" * 64)


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x91\x94\xa1w"], ids=["reserved", "truncated", "cut"])
def test_read_rejects_garbage_table(garbage):
    with pytest.raises(LayoutError, match="tensor table is not msgpack"):
        read_payload(TABLE_LEN.pack(len(garbage)) + garbage + b"\x00" * 16)


def test_read_rejects_entry_running_past_payload():
    tensors = {"a": np.ones(4, np.float32), "b": np.ones(6, np.float64)}
    buf, size, _ = written(tensors)
    with pytest.raises(LayoutError, match="tensor 'b' runs past the payload"):
        read_payload(bytes(buf[: size - 8]))
    with pytest.raises(LayoutError, match="runs past the payload"):
        read_payload(raw_payload([["w", "float32", [4], 10**6]]))
    with pytest.raises(LayoutError, match="runs past the payload"):
        read_payload(raw_payload([["w", "float32", [4], -8]]))


@pytest.mark.parametrize("dtype", ["object", "complex64", "float16", ">f4"])
def test_read_rejects_disallowed_dtype(dtype):
    with pytest.raises(LayoutError, match="not allowed"):
        read_payload(raw_payload([["w", dtype, [2], 8]]))


@pytest.mark.parametrize(
    "entries",
    [
        5,
        [5],
        [["w", "float32", [2]]],
        [["w", ["float32"], [2], 8]],
        [["w", "float32", [2], 8.0]],
        [["w", "float32", "2", 8]],
        [["w", "float32", [2**32, 2**32], 16]],
    ],
    ids=["int", "int_entry", "short_entry", "list_dtype", "float_offset", "str_shape", "overflow"],
)
def test_read_rejects_malformed_table_with_layout_error(entries):
    """BUG: read_payload only guards msgpack parsing; a table that is valid msgpack but not a list
    of [name, dtype, shape, offset] escapes as TypeError/ValueError, and negative dims are not
    rejected at all (see test_read_rejects_negative_dims)."""
    payload = raw_payload(entries)
    try:
        read_payload(payload)
    except LayoutError:
        return
    except Exception as exc:  # noqa: BLE001 - the point is which type escapes
        pytest.fail(f"BUG: malformed table {entries!r} raised {type(exc).__name__}: {exc}")
    pytest.fail(f"BUG: malformed table {entries!r} was accepted")


@pytest.mark.parametrize("shape", [[-1], [2, -1]])
def test_read_rejects_negative_dims(shape):
    """BUG: a negative dim makes the element count negative, which passes the bounds check and which
    np.frombuffer reads as 'the rest of the buffer'; reshape(-1) then silently accepts the tensor."""
    head = raw_payload([["w", "float32", shape, 24]], body=b"")
    payload = head + b"\x00" * (24 - len(head)) + np.arange(4, dtype=np.float32).tobytes()
    try:
        got = read_payload(payload)
    except LayoutError:
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"BUG: negative dims {shape} raised {type(exc).__name__}: {exc}")
    pytest.fail(f"BUG: negative dims {shape} accepted as shape {got['w'].shape}")


# --- header and segment arithmetic --------------------------------------------------------


def test_header_is_64_bytes_and_seq_sits_at_seq_offset():
    assert HEADER.size == HEADER_SIZE == 64
    header = StoreHeader(MAGIC, LAYOUT_VERSION, 1, 0x1122334455667789, -1, 123, 456, 0xDEADBEEF, 9, 4096)
    raw = HEADER.pack(*header)
    assert len(raw) == 64 and raw[:8] == MAGIC
    assert SEQ.unpack_from(raw, SEQ_OFFSET)[0] == header.seq
    assert StoreHeader._make(HEADER.unpack(raw)) == header


def test_segment_size_and_slot_offsets():
    assert segment_size(0) == HEADER_SIZE
    assert segment_size(1000) == 64 + 2000
    assert slot_offset(0, 1000) == 64
    assert slot_offset(1, 1000) == 1064
    assert slot_offset(1, 1000) + 1000 == segment_size(1000)  # slot 1 ends the segment


# --- endpoints ----------------------------------------------------------------------------


def ipc_path(endpoint: str) -> Path:
    assert endpoint.startswith("ipc://"), endpoint
    return Path(endpoint[len("ipc://"):])


def test_ipc_endpoints_live_in_the_run_socket_dir(tmp_path):
    run_dir = tmp_path / "run"
    ep = endpoints(run_dir)
    assert isinstance(ep, Endpoints)
    assert ep._fields == SOCKETS
    paths = [ipc_path(e) for e in ep]
    assert len(set(paths)) == len(SOCKETS)
    for name, path in zip(SOCKETS, paths):
        assert path.is_absolute()
        assert path == socket_dir(run_dir.resolve()) / name
        assert path.parent == run_dir.resolve() / "sock"


def test_ipc_endpoints_of_a_relative_run_dir_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for e in endpoints(Path("runs") / "r1"):
        path = ipc_path(e)
        assert path.is_absolute()
        assert path.parent == tmp_path.resolve() / "runs" / "r1" / "sock"


def _run_dir_with_longest_path(tmp_path: Path, length: int, filler: str = "d") -> Path:
    """A run dir whose longest socket path ('<run>/sock/trajectories') has `length` characters."""
    base = tmp_path.resolve()
    longest = max(SOCKETS, key=len)
    extra = length - len(str(base / "x" / "sock" / longest)) + 1
    if extra < 1:
        pytest.skip("tmp_path is already too long for this check")
    return base / (filler * extra)


def test_ipc_path_limit_boundary(tmp_path):
    ok = _run_dir_with_longest_path(tmp_path, MAX_IPC_PATH)
    assert max(len(str(ipc_path(e))) for e in endpoints(ok)) == MAX_IPC_PATH
    too_long = _run_dir_with_longest_path(tmp_path, MAX_IPC_PATH + 1)
    with pytest.raises(ValueError, match=f"longer than {MAX_IPC_PATH} bytes"):
        endpoints(too_long)


def test_ipc_path_far_too_long(tmp_path):
    with pytest.raises(ValueError, match=r"107 bytes.*transport = \"tcp\""):
        endpoints(tmp_path / ("x" * 120))


def test_ipc_path_limit_counts_bytes_not_characters(tmp_path):
    """BUG: the limit is on sun_path bytes, but endpoints() compares len(str(path)), i.e. characters;
    a non-ASCII run dir passes the check and then fails to bind."""
    run_dir = _run_dir_with_longest_path(tmp_path, MAX_IPC_PATH, filler="é")
    longest = socket_dir(run_dir) / max(SOCKETS, key=len)
    assert len(str(longest)) == MAX_IPC_PATH < len(os.fsencode(longest))  # too long in bytes only
    with pytest.raises(ValueError, match=f"longer than {MAX_IPC_PATH} bytes"):
        endpoints(run_dir)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_tcp_endpoints_use_consecutive_loopback_ports(tmp_path, host):
    ep = endpoints(tmp_path, "tcp", host, 6000)
    assert list(ep) == [f"tcp://{host}:{port}" for port in range(6000, 6006)]
    assert ep.snapshots.endswith(":6000") and ep.weights.endswith(":6003")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "10.0.0.1"])
def test_tcp_may_listen_beyond_loopback_when_configured(tmp_path, host):
    """Every tcp socket speaks CURVE with the run's keys (service/transport_security.py)."""
    assert endpoints(tmp_path, "tcp", host, 6000).snapshots == f"tcp://{host}:6000"


@pytest.mark.parametrize("host", ["::", "::1", "localhost", "192.168.1", ""])
def test_tcp_host_must_be_an_ipv4_address(tmp_path, host):
    with pytest.raises(ValueError, match=f"transport.host must be an IPv4 address, got {host!r}"):
        endpoints(tmp_path, "tcp", host)


@pytest.mark.parametrize("transport", ["udp", "IPC", "", "inproc"])
def test_unknown_transport(tmp_path, transport):
    with pytest.raises(ValueError, match="unknown transport"):
        endpoints(tmp_path, transport)
