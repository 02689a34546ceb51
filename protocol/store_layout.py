"""Byte layout of the shared-memory weight store: a 64-byte header, then two equal slots.

    header  magic | layout | active_slot | seq | version | publish_ts_ns | payload_size | checksum
            | structure_id | slot_size
    slot    u32 table length | msgpack tensor table | tensor bytes, each 8-byte aligned

`seq` is the seqlock counter (odd while the writer updates the header). The tensor table lists
(name, dtype, shape, offset) per dense tensor and (name, dtype, shape, offset, kept, bitmap offset)
per sparse one (hotprune.protocol.sparse: `kept` values at `offset`, the packed mask at the bitmap
offset), so a slot can hold a model of a different shape than the other one: a structure change is
just another version, and each version carries its own bitmaps (a reader needs nothing but the slot).
The checksum (`checksum`) covers the payload.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import msgpack
import numpy as np

from hotprune.protocol.codec import WIRE_DTYPES, little_endian
from hotprune.protocol.sparse import SparseTensor, Version, bitmap_bytes, sparse_tensor

SEGMENT_PREFIX = "hotprune-"  # a run's segment is /dev/shm/hotprune-<run_id>-<hash of its run directory>
SEGMENT_SUFFIX_LEN = 9  # "-" and 8 hex digits
# A relay's store, on its node: the run's segment name, "@" (which no run id holds, so no other run's
# segment name can be taken for it) and the node id: lowercase letters, digits and "-", at most 16.
NODE_SEPARATOR = "@"
MAX_NODE_CHARS = 16
NODE_SUFFIX_LEN = len(NODE_SEPARATOR) + MAX_NODE_CHARS


def check_node(node: str) -> str:
    """A node id as it names a relay's store, log and socket; ValueError with the rule if it cannot."""
    if not (0 < len(node) <= MAX_NODE_CHARS and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in node)):
        raise ValueError(f"node id {node[:40]!r} must be 1-{MAX_NODE_CHARS} lowercase letters, digits or -")
    return node


def segment_name(run_dir: Path, node: str | None = None) -> str:
    """The run's segment, named after its run directory's absolute path as well as its id: two
    runs of one id in different runs_dirs (two experiment grids' s1) do not share a segment. With a
    `node`, the store that node's relay feeds (hotprune.roles.relay)."""
    path = str(Path(run_dir).resolve())
    name = f"{SEGMENT_PREFIX}{Path(path).name}-{zlib.crc32(path.encode()):08x}"
    return name if node is None else f"{name}{NODE_SEPARATOR}{check_node(node)}"
MAGIC = b"HOTPRUNE"
LAYOUT_VERSION = 3  # 2: the payload checksum is a word sum, no longer CRC-32; 3: sparse tensors
HEADER = struct.Struct("<8sIIQqQQIIQ")
HEADER_SIZE = 64
SEQ = struct.Struct("<Q")
SEQ_OFFSET = 16
TABLE_LEN = struct.Struct("<I")
ALIGN = 8
CHECKSUM_CHUNK = 1 << 20  # bytes a checksum copies and sums at a time: still in cache when summed
assert HEADER.size == HEADER_SIZE


class StoreHeader(NamedTuple):
    magic: bytes
    layout: int
    active_slot: int
    seq: int
    version: int
    publish_ts_ns: int
    payload_size: int
    checksum: int
    structure_id: int
    slot_size: int


class LayoutError(ValueError):
    """The bytes in the store do not describe a valid payload."""


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _parts(tensor: np.ndarray | SparseTensor) -> list[np.ndarray]:
    """The arrays a tensor is stored as: a dense one itself, a sparse one its values and its bitmap."""
    if isinstance(tensor, SparseTensor):
        return [little_endian(tensor.values), tensor.bitmap]
    return [little_endian(tensor)]


def _table(tensors: Version) -> tuple[bytes, list[list[np.ndarray]], list[int], int]:
    """Tensor table bytes, each tensor's arrays, their offsets in the payload, and the payload size."""
    parts = [_parts(t) for t in tensors.values()]

    # Offsets depend on the table's own length, so size the table with placeholder offsets first:
    # msgpack ints of the final values are never longer than the 8-byte placeholders.
    def pack(offsets):
        entries, at = [], iter(offsets)
        for (name, tensor), arrays in zip(tensors.items(), parts):
            entry = [name, arrays[0].dtype.name, list(tensor.shape), next(at)]
            if isinstance(tensor, SparseTensor):
                entry += [arrays[0].size, next(at)]
            entries.append(entry)
        return msgpack.packb(entries, use_bin_type=True)

    start = _aligned(TABLE_LEN.size + len(pack([2**63 - 1] * sum(map(len, parts)))))
    offsets, cursor = [], start
    for array in (a for arrays in parts for a in arrays):
        offsets.append(cursor)
        cursor = _aligned(cursor + array.nbytes)
    return pack(offsets), parts, offsets, cursor


def payload_size(tensors: Version) -> int:
    return _table(tensors)[3]


def dense_payload_size(tensors: Version) -> int:
    """What the version would take with every tensor dense. np.empty stands in for a sparse one's dense
    array: only its dtype and shape are read, and its pages are never touched."""
    return payload_size({n: np.empty(t.shape, t.dtype) if isinstance(t, SparseTensor) else t
                         for n, t in tensors.items()})


def write_payload(buf: memoryview, tensors: Version) -> tuple[int, int]:
    """Write a version's tensors (dense or sparse) into `buf`; return (payload size, checksum of the payload)."""
    for name, tensor in tensors.items():
        if tensor.dtype.name not in WIRE_DTYPES:
            raise LayoutError(f"tensor {name!r}: dtype {tensor.dtype.name} cannot be stored")
    table, parts, offsets, size = _table(tensors)
    if size > len(buf):
        raise LayoutError(f"payload of {size} bytes does not fit a slot of {len(buf)} bytes")
    out = np.frombuffer(buf, np.uint8, count=size)
    # Each region (the table, then each array) is summed as it is copied, in one pass as a reader's
    # copy is (`checksum`); their padding is zeroed, so every byte summed is one just written
    regions = [np.frombuffer(TABLE_LEN.pack(len(table)) + table, np.uint8)]
    regions += [a.reshape(-1).view(np.uint8) for arrays in parts for a in arrays]
    total = sum(_summed(flat, out[start:end]) for flat, start, end in zip(regions, [0, *offsets], [*offsets, size]))
    return size, _folded(total)


def read_payload(payload: bytes | memoryview) -> Version:
    """Rebuild the tensors of a payload copy, sparse ones as SparseTensor (the arrays view `payload`;
    keep it alive)."""
    if len(payload) < TABLE_LEN.size:
        raise LayoutError("payload shorter than its table length")
    (table_len,) = TABLE_LEN.unpack_from(payload, 0)
    if TABLE_LEN.size + table_len > len(payload):
        raise LayoutError("tensor table runs past the payload")
    try:
        entries = msgpack.unpackb(bytes(payload[TABLE_LEN.size : TABLE_LEN.size + table_len]), raw=False)
    except Exception as exc:
        raise LayoutError(f"tensor table is not msgpack ({type(exc).__name__})") from None
    if not isinstance(entries, list):
        raise LayoutError("tensor table is not a list")
    tensors = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) in (4, 6)):
            raise LayoutError("malformed tensor table entry")
        name, dtype, shape, offset, *sparse = entry
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise LayoutError(f"tensor {name!r}: dtype {dtype!r} not allowed")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and all(type(i) is int for i in (offset, *sparse))):
            raise LayoutError(f"tensor {name!r}: bad shape {shape!r} or offsets {[offset, *sparse]!r}")
        np_dtype = np.dtype(dtype).newbyteorder("<")
        if not sparse:
            tensors[name] = _array(payload, name, np_dtype, math.prod(shape), offset).reshape(shape)
            continue
        kept, bitmap_offset = sparse
        values = _array(payload, name, np_dtype, kept, offset)
        bitmap = _array(payload, name, np.dtype(np.uint8), bitmap_bytes(math.prod(shape)), bitmap_offset)
        try:
            tensors[name] = sparse_tensor(name, np_dtype, shape, values, bitmap)
        except ValueError as exc:
            raise LayoutError(str(exc)) from None
    return tensors


def _array(payload: bytes | memoryview, name: str, dtype: np.dtype, count: int, offset: int) -> np.ndarray:
    if count < 0 or offset < 0 or offset + count * dtype.itemsize > len(payload):
        raise LayoutError(f"tensor {name!r} runs past the payload")
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset)


def checksum(payload: bytes | memoryview | np.ndarray, copy_to: np.ndarray | None = None) -> int:
    """The payload's little-endian 64-bit words summed mod 2^64 (a short tail as one more word),
    folded to 32 bits. It is there to catch a torn copy, a stretch of another version's bytes that
    slipped past the seqlock: that changes the sum unless the changed words' differences cancel
    exactly, which a training step's changes do not. Not CRC-32: zlib's takes 1.0-1.3 ms for 4 MB
    against 0.16 ms here (half a memcpy), paid by the writer and by every reader at every version.

    With `copy_to` (uint8, at least as long), the payload is also copied there and the sum is the
    copy's: chunk by chunk, each summed while it is still in cache, so a reader's copy and check
    pass over memory once (3.2 against 3.8 ms for 40 MB, scripts/bench_swap.py's 10M actor)."""
    src = np.frombuffer(payload, np.uint8)
    whole = src.size // 8 * 8
    total = _summed(src[:whole], None if copy_to is None else copy_to[:whole])
    tail = src[whole:]
    if copy_to is not None:
        copy_to[whole : src.size] = tail
    return _folded((total & 0xFFFFFFFFFFFFFFFF) + int.from_bytes(tail.tobytes(), "little"))


def _summed(src: np.ndarray, dst: np.ndarray | None = None) -> int:
    """The sum of the little-endian 64-bit words of `src` (uint8, whole words), not yet folded; with
    `dst` (uint8, whole words, at least as long), of `dst` once `src` is copied to its start and the
    rest of it zeroed. A chunk at a time: each chunk is summed while the copy still has it in cache."""
    if dst is None:
        dst = src
    else:
        dst[src.size :] = 0
    total = 0
    for start in range(0, dst.size, CHECKSUM_CHUNK):
        chunk = dst[start : start + CHECKSUM_CHUNK]
        if dst is not src:
            part = src[start : start + chunk.size]
            chunk[: part.size] = part
        total += int(np.add.reduce(chunk.view("<u8"), dtype=np.uint64))
    return total


def _folded(total: int) -> int:
    total &= 0xFFFFFFFFFFFFFFFF
    return (total ^ (total >> 32)) & 0xFFFFFFFF


def segment_size(slot_size: int) -> int:
    return HEADER_SIZE + 2 * slot_size


def slot_offset(slot: int, slot_size: int) -> int:
    return HEADER_SIZE + slot * slot_size
