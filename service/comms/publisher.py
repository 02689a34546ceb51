"""The sending halves of weight versions: into a store (and its readers' hints), and to the relays.

`StorePublisher`: the compressor (the run's store) and each relay (its node's store) publish through
this one class, so a node's workers see exactly what local workers see: the version in the store
first, then a `weights_ready` on the notify socket (a hint: a worker that misses it finds the version
at its next check), and `stop` on the same socket when the run ends.

`VersionFeed`: the compressor's `versions` socket, each version whole to every relay (hotprune.roles.relay
is the receiving half). A relay that subscribes is sent the newest version at once.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import zmq

from hotprune.comms.weight_store import WeightStore
from hotprune.protocol.codec import Encoder

SUBSCRIBE = b"\x01"  # an XPUB receives a subscription as this byte and the topic (0: unsubscribe)
# Versions queued for each relay. A PUB drops what would go over its queue (the newest, not the oldest),
# so a relay this far behind misses versions until the next: one an epoch, written in milliseconds.
VERSIONS_QUEUE = 4


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


class VersionFeed:
    """Versions whole on an XPUB socket (verbose: every subscription reaches us, not only a topic's first)."""

    def __init__(self, sock: zmq.Socket, encoder: Encoder):
        sock.xpub_verbose = True
        self.sock, self.encoder = sock, encoder
        self.newest: tuple[dict, Mapping[str, np.ndarray]] | None = None

    def send(self, tensors: Mapping[str, np.ndarray], version: int, epoch: int) -> None:
        """To every relay subscribed (none: ZeroMQ drops it at once, without a copy)."""
        self.newest = ({"version": version, "epoch": epoch}, tensors)
        self._send_newest()

    def answer(self) -> None:
        """Take in subscriptions; a relay that subscribes has just (re)started: send it the newest now."""
        joined = False
        while self.sock.poll(0):
            joined |= self.sock.recv()[:1] == SUBSCRIBE
        if joined and self.newest is not None:
            self._send_newest()

    def stop(self) -> None:
        """Pass the run's `stop` on to the relays (each passes it on to its node's workers)."""
        self.sock.send_multipart(self.encoder.encode("control", {"command": "stop"}))

    def _send_newest(self) -> None:
        fields, tensors = self.newest
        self.sock.send_multipart(self.encoder.encode("version", fields, tensors), copy=False)
