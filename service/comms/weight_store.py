"""The weight store: pruned weights in shared memory, double-buffered under a seqlock.

One writer (the compressor) fills the inactive slot, then publishes it by updating the header while
the seqlock counter is odd. Readers (the workers) copy the active slot out, re-check the counter and
verify the checksum, retrying until they hold a consistent copy: a reader never runs torn weights.
A version's tensors are dense arrays or, with masks in force, sparse (hotprune.protocol.sparse: kept
values and the mask's bitmap, in the slot); `read` returns them as stored, and a worker rebuilds the
dense ones (hotprune.workers.dense).
This relies on stores not being reordered with stores, nor loads with loads (x86-64 TSO); the
checksum catches any torn copy that slipped through anyway.

The process that creates the segment owns it (the supervisor, or a compressor run by hand): only it
unlinks it, and its resource tracker unlinks it if it dies. Others attach with a bare shm_open, so
no resource tracker of theirs can unlink a segment they do not own.
"""

from __future__ import annotations

import mmap
import os
import time
import zlib
from multiprocessing import shared_memory
from typing import Callable

import _posixshmem
import msgpack
import numpy as np

from hotprune.protocol import store_layout as layout
from hotprune.protocol.sparse import Version


class StoreError(RuntimeError):
    """The segment is missing, not a hotprune store, or could not be read consistently."""


def structure_id(tensors: Version) -> int:
    """Identifies the tensor table's names, dtypes and shapes: equal ids mean the same model shape
    (whether a tensor is stored dense or sparse does not change it)."""
    table = [[n, a.dtype.name, list(a.shape)] for n, a in tensors.items()]
    return zlib.crc32(msgpack.packb(table))


class WeightStore:
    def __init__(self, name: str, buf: memoryview, closer, unlinker=None):
        self.name = name
        self.buf = buf
        self._closer = closer
        self._unlinker = unlinker
        self.read_retries = 0  # reads retried: the writer moved underneath, or the checksum failed

    @classmethod
    def create(cls, name: str, slot_size: int) -> "WeightStore":
        slot_size = (slot_size + 63) // 64 * 64
        try:
            shm = shared_memory.SharedMemory(name, create=True, size=layout.segment_size(slot_size))
        except FileExistsError:
            raise StoreError(f"shared memory segment {name} already exists (another run with this run_id?)") from None
        except OSError as exc:  # e.g. a name longer than the file system takes
            raise StoreError(f"cannot create shared memory segment {name}: {exc.strerror}") from None
        try:
            # A segment is sparse until written: on a full /dev/shm the compressor's first write would
            # die of SIGBUS. Reserve every page now, so a machine without room fails here, in one line.
            os.posix_fallocate(shm._fd, 0, shm.size)
        except OSError as exc:
            shm.close()
            shm.unlink()
            raise StoreError(f"cannot reserve {shm.size} bytes of shared memory for {name} in /dev/shm: "
                             f"{exc.strerror}") from None
        header = layout.HEADER.pack(layout.MAGIC, layout.LAYOUT_VERSION, 0, 0, -1, 0, 0, 0, 0, slot_size)
        shm.buf[: layout.HEADER_SIZE] = header
        return cls(name, shm.buf, shm.close, shm.unlink)

    @classmethod
    def attach_or_create(cls, name: str, slot_size: int) -> "WeightStore":
        """Attach to the segment, or create it (and own it) when nobody has: a process run by hand,
        with no supervisor to make its store."""
        try:
            return cls.attach(name)
        except StoreError:
            return cls.create(name, slot_size)

    @classmethod
    def attach(cls, name: str, timeout_s: float = 0.0, cancelled: Callable[[], bool] = lambda: False) -> "WeightStore":
        """Open an existing segment, waiting up to `timeout_s` for it to appear and be initialised
        (its creator may be between creating and sizing it), unless `cancelled()` says stop."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return cls._open(name)
            except StoreError:
                if time.monotonic() >= deadline or cancelled():
                    raise
                time.sleep(0.05)

    @classmethod
    def _open(cls, name: str) -> "WeightStore":
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        except FileNotFoundError:
            raise StoreError(f"shared memory segment {name} does not exist") from None
        try:
            size = os.fstat(fd).st_size
            if size < layout.HEADER_SIZE:
                raise StoreError(f"segment {name} is too small to be a hotprune weight store")
            mem = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        buf = memoryview(mem)

        def close():
            buf.release()
            mem.close()

        store = cls(name, buf, close)
        header = store.header()
        if header.magic != layout.MAGIC or header.layout != layout.LAYOUT_VERSION:
            store.close()
            raise StoreError(f"segment {name} is not a hotprune weight store (layout {layout.LAYOUT_VERSION})")
        return store

    def header(self) -> layout.StoreHeader:
        return layout.StoreHeader(*layout.HEADER.unpack_from(self.buf, 0))

    def _seq(self) -> int:
        return layout.SEQ.unpack_from(self.buf, layout.SEQ_OFFSET)[0]

    def _slot(self, slot: int, slot_size: int) -> memoryview:
        start = layout.slot_offset(slot, slot_size)
        return self.buf[start : start + slot_size]

    def _set_seq(self, seq: int) -> None:
        # A slice assignment is one memcpy; struct.pack_into would zero the field first, and a reader
        # could see that transient 0 as "even, consistent".
        self.buf[layout.SEQ_OFFSET : layout.SEQ_OFFSET + layout.SEQ.size] = layout.SEQ.pack(seq)

    def publish(self, tensors: Version, version: int) -> tuple[int, int, bool]:
        """Write a new version; return (slot, payload bytes, structure changed). Single writer only."""
        h = self.header()
        slot = 1 - h.active_slot if h.version >= 0 else 0
        size, crc = layout.write_payload(self._slot(slot, h.slot_size), tensors)
        sid = structure_id(tensors)
        odd = (h.seq + 1) | 1  # odd even if a writer died mid-update and left the counter odd
        new = h._replace(active_slot=slot, seq=odd, version=version, publish_ts_ns=time.time_ns(),
                         payload_size=size, checksum=crc, structure_id=sid)
        header = layout.HEADER.pack(*new)  # packed first: a bad value raises before the store changes
        self._set_seq(odd)  # header update in progress
        self.buf[: layout.HEADER_SIZE] = header
        self._set_seq(odd + 1)  # even: consistent again
        return slot, size, h.version >= 0 and sid != h.structure_id  # as changes_structure()

    def changes_structure(self, tensors: Version) -> bool:
        """Would publishing `tensors` change the tensor table (what `publish` reports)?"""
        h = self.header()
        return h.version >= 0 and structure_id(tensors) != h.structure_id

    def version(self) -> int:
        """The newest published version (-1 before the first); a cheap check, not a consistent read."""
        return self.header().version

    def slot_size(self) -> int:
        """The bytes a slot holds: no version's payload is larger (what a reader's `into` must take)."""
        return self.header().slot_size

    def read(self, timeout_s: float = 1.0, into: np.ndarray | None = None) -> tuple[layout.StoreHeader, Version] | None:
        """A consistent copy of the active slot, or None if nothing was published yet.

        Tries at least once; retries while the writer moves underneath, up to `timeout_s`. The copy
        goes to `into` (uint8, at least `slot_size()` bytes: a reader swapping versions reuses two,
        hotprune.workers.dense, with no allocation and no page faults per version), else to a new
        array; the tensors returned view it, and a retry overwrites it.
        """
        if into is not None and not (into.dtype == np.uint8 and into.ndim == 1 and into.size >= self.slot_size()):
            raise ValueError(f"a read of {self.name} needs a uint8 buffer of at least {self.slot_size()} bytes")
        deadline = time.monotonic() + timeout_s
        while True:
            before = self._seq()
            h = self.header()
            sane = h.active_slot in (0, 1) and 0 <= h.payload_size <= h.slot_size
            if sane:
                payload = np.empty(h.payload_size, np.uint8) if into is None else into[: h.payload_size]
                crc = layout.checksum(self._slot(h.active_slot, h.slot_size)[: h.payload_size], copy_to=payload)
            if not before & 1 and self._seq() == before == h.seq:  # nothing moved: h and payload agree
                if h.version < 0:
                    return None
                if not sane:
                    raise StoreError(f"segment {self.name} has a corrupt header")
                if crc == h.checksum:
                    try:
                        return h, layout.read_payload(payload)
                    except layout.LayoutError as exc:
                        raise StoreError(f"segment {self.name}: {exc}") from None
            self.read_retries += 1
            if time.monotonic() >= deadline:
                raise StoreError(f"no consistent read of {self.name} within {timeout_s}s")

    def close(self) -> None:
        self._closer()

    @property
    def owner(self) -> bool:
        return self._unlinker is not None

    def unlink(self) -> None:
        if self._unlinker is not None:
            self._unlinker()
