"""A worker's weights in buffers it keeps: its store reads, and the dense tensors rebuilt from their
sparse ones.

Two sets of buffers take turns: a read and the rebuild of what it read write the set the running actor
does not use, so a version that turns out not to be a policy leaves the running one untouched, and the
running actor's weights never change under it (its dense tensors view its own set's read buffer).
Reusing the read buffers spares each version a fresh copy of the slot: at 10M parameters that copy's
page faults and zeroing took 18 of a swap's 32 ms of CPU, and freeing the previous one 3 more.
Each rebuild buffer remembers the mask it was last rebuilt under; while the mask stays the same
(between two compressions, most versions), its pruned entries are still 0 and a rebuild only scatters
the kept values. A new mask costs one unpack of its bitmap (kept for both sets) and one zero-fill.
"""

from __future__ import annotations

import numpy as np

from hotprune.protocol.sparse import Codes, SparseCode, SparseTensor, Version


class DenseBuffers:
    def __init__(self):
        self.codes = Codes()  # each sparse tensor's newest mask
        self.sets: list[dict[str, tuple[SparseCode, np.ndarray]]] = [{}, {}]  # name -> (mask it holds, buffer)
        self.payloads: list[np.ndarray | None] = [None, None]  # each set's store read (WeightStore.read's `into`)
        self.spare = 0  # the set the next read and rebuild write

    def payload(self, size: int) -> np.ndarray:
        """The spare set's read buffer, of at least `size` bytes (a store's slot: made once, its pages
        touched by the first reads only)."""
        buffer = self.payloads[self.spare]
        if buffer is None or buffer.size < size:
            buffer = self.payloads[self.spare] = np.empty(size, np.uint8)
        return buffer

    def rebuild(self, tensors: Version) -> dict[str, np.ndarray]:
        """The version with its sparse tensors dense, in the spare set of buffers (dense tensors as they
        are). Call `keep()` once the caller runs on them: until then the next rebuild writes the same set."""
        held, out = self.sets[self.spare], {}
        for name in set(held) - set(tensors):
            del held[name]
        for name, tensor in tensors.items():
            if not isinstance(tensor, SparseTensor):
                held.pop(name, None)
                out[name] = tensor
                continue
            code = self.codes.of(name, tensor)
            mask, buffer = held.get(name, (None, None))
            if mask is not code:  # zero what the buffer's mask kept and this one does not
                if buffer is not None and buffer.shape == tensor.shape and buffer.dtype == tensor.dtype:
                    buffer.fill(0)
                else:
                    buffer = np.zeros(tensor.shape, tensor.dtype)
                held[name] = (code, buffer)
            code.scatter(tensor.values, buffer)
            out[name] = buffer
        self.codes.forget_all_but(tensors)
        return out

    def keep(self) -> None:
        """The caller now runs on the last read's and rebuild's buffers: the next ones write the other set."""
        self.spare ^= 1
