"""The writing half of a weight store: publish a version into the store, then hint it to the readers.

The compressor (the run's store) and each relay (its node's store) publish through this one class, so
a node's workers see exactly what local workers see: the version in the store first, then a
`weights_ready` on the notify socket (a hint: a worker that misses it finds the version at its next
check), and `stop` on the same socket when the run ends.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import zmq

from hotprune.comms.weight_store import WeightStore
from hotprune.protocol.codec import Encoder


class StorePublisher:
    def __init__(self, store: WeightStore, notify: zmq.Socket, encoder: Encoder):
        self.store, self.notify, self.encoder = store, notify, encoder

    def publish(self, tensors: Mapping[str, np.ndarray], version: int) -> tuple[int, int, bool]:
        """Write `version` into the store and announce it; (slot, payload bytes, structure changed)."""
        slot, nbytes, structure_changed = self.store.publish(tensors, version)
        ready = {"version": version, "slot": slot, "structure_changed": structure_changed}
        self.notify.send_multipart(self.encoder.encode("weights_ready", ready))
        return slot, nbytes, structure_changed

    def stop(self) -> None:
        """Pass the run's `stop` on to the readers."""
        self.notify.send_multipart(self.encoder.encode("control", {"command": "stop"}))

    def close(self) -> None:
        """Close the store, and unlink it if this process made it."""
        self.store.close()
        if self.store.owner:
            self.store.unlink()
