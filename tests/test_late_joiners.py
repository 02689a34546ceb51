"""A compressor that joins after the trainer published (every process of a run starts at once; a
restarted compressor always joins late) gets the newest snapshot at once, not at the next epoch."""

from __future__ import annotations

from pathlib import Path

import zmq

from hotprune.protocol.codec import decode
from hotprune.roles.process import StopFlag, load_run_config
from hotprune.roles.trainer import Trainer
from tests.servicekit import hotprune, settings


def test_a_subscriber_that_joins_late_is_answered_with_the_newest_snapshot(tmp_path):
    run_dir = Path(hotprune("init", *settings(tmp_path, "late")).stdout.strip())
    cfg = load_run_config(run_dir)
    trainer = Trainer(cfg, StopFlag())
    ctx = zmq.Context()
    try:
        trainer.publish(0, 0.0)  # nobody subscribed yet: a PUB socket drops it
        sub = ctx.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(cfg.endpoints().snapshots)
        assert trainer.publisher.socket.poll(10_000), "the subscription never reached the trainer"
        assert not sub.poll(200)  # what went out before the subscriber joined is gone
        trainer.publisher.answer_subscribers()
        assert sub.poll(10_000), "the late subscriber got no snapshot"
        msg = decode(sub.recv_multipart(), run_id=cfg.run_id, kinds={"snapshot"})
        assert (msg.fields["version"], msg.fields["epoch"]) == (0, 0)
    finally:
        ctx.destroy(linger=0)
        trainer.ctx.destroy(linger=0)
