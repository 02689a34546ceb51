"""A masked tensor as its kept values and a packed bitmap of its mask: how a weight version with masks
in force travels and sits in the weight store, in bytes proportional to what is kept.

A version is a mapping name -> tensor, each either a dense numpy array or a `SparseTensor`. Both the
store (`store_layout.write_payload` / `read_payload`) and messages (`codec.Encoder.encode` /
`codec.decode`) carry such a mapping as it is, and both check a sparse tensor with `sparse_tensor`,
so a version read from one can be written to the other without being rebuilt (a relay does that).

    SparseTensor  values  1-D, the kept entries in C order (row-major over `shape`)
                  bitmap  uint8 [ceil(size / 8)]: np.packbits of the flattened mask (first entry = the
                          first byte's high bit), the padding bits of the last byte 0
                  shape   the dense shape; the dense tensor is 0 wherever the mask is False

`SparseCode` is one mask's flat indices of kept positions, made once per mask (unpacking a bitmap
costs about 15x a scatter of its values): a writer takes values with it, a reader scatters with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

# Sparse when the kept values and the bitmap take at most this share of the dense bytes (at float32,
# 53% sparsity or more). Not as soon as sparse is smaller: a reader's scatter costs about as much per
# kept value as a copy of several dense ones, and the swap must not get slower.
SPARSE_AT_MOST = 0.5
# ... and never below this many dense bytes: a sparse entry's longer table entry and its second array's
# alignment take up to 32 bytes more, and a version must never outgrow the slot sized for it dense.
SPARSE_MIN_BYTES = 256
NONZERO_CHUNK = 1 << 16  # entries `nonzero` shifts at a time: a scratch in cache, few Python-level calls
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # numpy 1 has no np.bitwise_count


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """A masked tensor as stored and sent (see above); `dtype` and `shape` are the dense tensor's."""

    values: np.ndarray
    bitmap: np.ndarray
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """What it takes in the store and on the wire (its dense tensor would take size * itemsize)."""
        return self.values.nbytes + self.bitmap.nbytes

    def dense(self) -> np.ndarray:
        """A new dense array (a reader swapping versions keeps buffers instead: workers.dense)."""
        out = np.zeros(self.shape, self.dtype)
        SparseCode.of(self).scatter(self.values, out)
        return out


Version = Mapping[str, np.ndarray | SparseTensor]  # a weight version's tensors, dense or sparse


def bitmap_bytes(size: int) -> int:
    return (size + 7) // 8


def worth_sparse(size: int, kept: int, itemsize: int) -> bool:
    """The rule a writer picks sparse by: kept values + bitmap <= SPARSE_AT_MOST of the dense bytes, and
    those at least SPARSE_MIN_BYTES."""
    dense = size * itemsize
    return dense >= SPARSE_MIN_BYTES and kept * itemsize + bitmap_bytes(size) <= SPARSE_AT_MOST * dense


class SparseCode:
    """One mask's packed bitmap and the flat indices of its kept entries."""

    def __init__(self, bitmap: np.ndarray, indices: np.ndarray, shape: tuple[int, ...]):
        self.bitmap, self.indices, self.shape = bitmap, indices, tuple(shape)

    @classmethod
    def of_mask(cls, keep: np.ndarray) -> "SparseCode":
        flat = np.ascontiguousarray(keep, bool).reshape(-1)
        return cls(np.packbits(flat), np.flatnonzero(flat), keep.shape)

    @classmethod
    def of(cls, tensor: SparseTensor) -> "SparseCode":
        # Its own copy of the bitmap (size / 8 bytes): a worker's tensor views a read buffer that a
        # later read overwrites (workers.dense), and a code comparing against that would match any mask.
        size = tensor.size
        return cls(tensor.bitmap.copy(), np.flatnonzero(np.unpackbits(tensor.bitmap, count=size)), tensor.shape)

    def describes(self, tensor: SparseTensor) -> bool:
        """Is this the mask of `tensor` (same shape, same bitmap: a comparison of size / 8 bytes)?"""
        return self.shape == tensor.shape and np.array_equal(self.bitmap, tensor.bitmap)

    def sparse(self, dense: np.ndarray) -> SparseTensor:
        """`dense`'s entries under this mask; those outside it are taken to be 0."""
        return SparseTensor(np.ascontiguousarray(dense).reshape(-1).take(self.indices), self.bitmap, self.shape)

    def scatter(self, values: np.ndarray, out: np.ndarray) -> None:
        """Write `values` at the kept entries of `out` (C-contiguous, this mask's shape); others untouched."""
        out.reshape(-1)[self.indices] = values


class Codes:
    """The SparseCode of each named tensor's newest mask, for a reader: a bitmap is unpacked once per
    mask, and each later tensor under the same mask costs a comparison of its bitmap."""

    def __init__(self):
        self.codes: dict[str, SparseCode] = {}

    def of(self, name: str, tensor: SparseTensor) -> SparseCode:
        code = self.codes.get(name)
        if code is None or not code.describes(tensor):
            code = self.codes[name] = SparseCode.of(tensor)
        return code

    def dense(self, tensors: Version) -> dict[str, np.ndarray]:
        """The version with its sparse tensors rebuilt in new arrays."""
        out = {}
        for name, tensor in tensors.items():
            if isinstance(tensor, SparseTensor):
                out[name] = np.zeros(tensor.shape, tensor.dtype)
                self.of(name, tensor).scatter(tensor.values, out[name])
            else:
                out[name] = tensor
        return out

    def forget_all_but(self, names) -> None:
        for name in set(self.codes) - set(names):
            del self.codes[name]


def bits_set(bitmap: np.ndarray) -> int:
    """The bits set in a uint8 bitmap: np.bitwise_count over 8-byte words where numpy has it (numpy 2:
    0.1 ms for a 10M-entry mask, a worker's check at every swap, against 2.5 ms through the byte
    table, which numpy 1.26 still takes)."""
    if not hasattr(np, "bitwise_count"):
        return int(POPCOUNT[bitmap].sum(dtype=np.int64))
    whole = bitmap.size // 8 * 8
    return int(np.bitwise_count(bitmap[:whole].view(np.uint64)).sum(dtype=np.int64)) + \
        int(POPCOUNT[bitmap[whole:]].sum(dtype=np.int64))


def sparse_tensor(name: str, dtype: np.dtype, shape: list[int], values: np.ndarray, bitmap: np.ndarray) -> SparseTensor:
    """A received sparse tensor, checked: ValueError (with a reason naming it) unless `values` are 1-D
    finite `dtype` entries, as many as the bitmap has bits set, and the bitmap has exactly ceil(size/8)
    bytes with its padding bits 0. The arrays are kept, not copied."""
    size = math.prod(shape)
    if bitmap.dtype != np.uint8 or bitmap.shape != (bitmap_bytes(size),):
        raise ValueError(f"sparse {name}: bitmap of {bitmap.size} bytes for {size} entries")
    if size % 8 and bitmap[-1] & (0xFF >> (size % 8)):
        raise ValueError(f"sparse {name}: bitmap bits set past its {size} entries")
    kept = bits_set(bitmap)
    if values.ndim != 1 or values.size != kept:
        raise ValueError(f"sparse {name}: {values.size} values for a bitmap of {kept} kept entries")
    if values.dtype != dtype:
        raise ValueError(f"sparse {name}: values are {values.dtype.name}, not {np.dtype(dtype).name}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"sparse {name}: non-finite values")
    return SparseTensor(values, bitmap, tuple(shape))


def nonzero(tensor: np.ndarray | SparseTensor) -> int:
    """The non-zero entries of a tensor, dense or sparse (only its kept values can be), as
    np.count_nonzero counts them (-0.0 is zero, NaN is not). Floats are counted as their bits shifted
    left by one (dropping the sign, so both zeros are 0), a chunk at a time: numpy counts unsigned
    integers with SIMD, floats an element at a time (3.8 against 4.6-6.7 ms at 10M float32, the cost a
    worker pays at every swap for its sparsity figures)."""
    array = tensor.values if isinstance(tensor, SparseTensor) else tensor
    if array.dtype.kind != "f":
        return int(np.count_nonzero(array))
    bits = np.ascontiguousarray(array).reshape(-1)
    bits = bits.view(np.dtype(f"u{bits.itemsize}").newbyteorder(bits.dtype.byteorder))
    shifted, count = np.empty(min(bits.size, NONZERO_CHUNK), bits.dtype), 0
    for start in range(0, bits.size, NONZERO_CHUNK):
        chunk = bits[start : start + NONZERO_CHUNK]
        count += int(np.count_nonzero(np.left_shift(chunk, 1, out=shifted[: chunk.size])))
    return count


def densified(tensors: Version) -> dict[str, np.ndarray]:
    """A version with every tensor dense (new arrays for the sparse ones)."""
    return {n: t.dense() if isinstance(t, SparseTensor) else t for n, t in tensors.items()}
