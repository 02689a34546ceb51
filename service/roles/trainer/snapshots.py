"""The trainer's side of the snapshot channel: every epoch's snapshot out to the compressor (XPUB -> SUB).

`Publisher` owns the socket. A snapshot is logged as `snapshot_published` before it is sent, so the log
never shows the compressor receiving it first. A PUB socket drops what it sends before a subscriber has
joined, and every process of a run starts at once (a restarted compressor joins late): XPUB lets the
trainer hear a subscription and answer it with the newest snapshot at once, at most every ANSWER_EVERY_S
(a peer that subscribes in a loop gets no snapshot storm); and the trainer sends the newest again when it
hears nothing usable for REPUBLISH_S (`republish`). The run's `stop` goes out on the same socket.

`DistillSample` is what teacher-student distillation adds to each snapshot: observations of the last
epoch, for the compressor to distil the student on (hotprune.learning.distill).
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from hotprune.comms.curve import SocketSecurity
from hotprune.learning.chunks import Batch
from hotprune.protocol.codec import DISTILL_OBS, Encoder
from hotprune.protocol.sparse import SparseTensor
from hotprune.roles.process import socket

REPUBLISH_S = 0.5  # with no usable chunk for this long, publish the newest snapshot again (PUB may drop)
ANSWER_EVERY_S = 0.1  # a new subscriber gets the newest snapshot at once, but not more often than this
SUBSCRIPTION_MAX_BYTES = 1024  # a subscription is a byte and a topic (ours is empty): a larger frame drops the peer
SUBSCRIPTIONS_PER_CALL = 16
# The socket's kernel send buffer (Linux caps it at net.core.wmem_max): a snapshot crosses to the
# compressor in as few hand-offs between the two processes' I/O threads as that allows. At the default
# (about 208 KB) a 5 MB snapshot takes dozens, each a wake-up that waits for a core on a busy machine;
# at 8 MB its hop took 1.0 instead of 3.5 ms even on an idle one.
SNAPSHOT_SNDBUF = 8 * 1024 * 1024


class Publisher:
    def __init__(self, ctx: zmq.Context, security: SocketSecurity, endpoint: str, encoder: Encoder, log):
        self.encoder, self.log = encoder, log
        self.socket = socket(ctx, zmq.XPUB, hwm=16, max_frame=SUBSCRIPTION_MAX_BYTES)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only a topic's first
        self.socket.sndbuf = SNAPSHOT_SNDBUF
        security.bind(self.socket, endpoint)
        self.last: list = []  # the newest snapshot's frames
        self.answered_at = -ANSWER_EVERY_S  # when a subscriber last got the newest snapshot
        self.subscriber_waiting = False  # one joined and is still to be answered

    def publish(self, fields: dict, tensors: dict[str, np.ndarray | SparseTensor], **logged) -> None:
        """Send a snapshot (`logged`: what its `snapshot_published` line says beyond its fields, and
        `nbytes`, its frames' bytes)."""
        self.last = self.encoder.encode("snapshot", fields, tensors)
        self.log.info("snapshot_published", **fields, **logged, nbytes=sum(len(f) for f in self.last))
        self.socket.send_multipart(self.last, copy=False)

    def republish(self) -> None:
        self.socket.send_multipart(self.last, copy=False)

    def answer_subscribers(self) -> bool:
        """A subscriber joined (the compressor, started or restarted): it gets the newest snapshot now
        rather than at the next epoch or REPUBLISH_S. One snapshot for however many subscriptions are
        waiting; unsubscriptions and anything else a peer sends are ignored. True if one is waiting."""
        for _ in range(SUBSCRIPTIONS_PER_CALL):  # bounded: a flood cannot keep the trainer here
            if not self.socket.poll(0):
                break
            self.subscriber_waiting |= self.socket.recv()[:1] == b"\x01"
        subscribed = self.subscriber_waiting
        if self.subscriber_waiting and self.last and time.monotonic() - self.answered_at >= ANSWER_EVERY_S:
            self.answered_at, self.subscriber_waiting = time.monotonic(), False
            self.republish()
        return subscribed

    def stop_run(self) -> None:
        """The run's `stop`: every process that subscribes ends."""
        self.socket.send_multipart(self.encoder.encode("control", {"command": "stop"}))


class DistillSample:
    """Teacher-student distillation: `size` observations of the last epoch (drawn without replacement, in
    their order), shipped with each snapshot; none before the first epoch."""

    def __init__(self, obs_dim: int, size: int, seed: int):
        self.obs_dim, self.size = obs_dim, size
        self.obs = np.zeros((0, obs_dim), np.float32)
        self.rng = np.random.default_rng(seed)

    def draw(self, batch: Batch) -> None:
        seen = batch.obs[:-1].reshape(-1, self.obs_dim)
        rows = self.rng.choice(len(seen), min(len(seen), self.size), replace=False)
        self.obs = np.ascontiguousarray(seen[np.sort(rows)], np.float32)  # image rows come as uint8

    def tensors(self) -> dict[str, np.ndarray]:
        return {DISTILL_OBS: self.obs}
