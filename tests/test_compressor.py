"""The compressor in this process, on a real store and real sockets: the figures it logs for each
compression, and the memory a process that receives weight versions keeps for the next one."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from hotprune.config import load_config
from hotprune.protocol.codec import Encoder, decode
from hotprune.pruning.engine import masked_stats, masks_sparsity
from hotprune.roles.compressor import Compressor
from hotprune.roles.process import StopFlag
from hotprune.runs import rundir
from tests.servicekit import events, of


def test_each_compression_logs_what_its_own_masks_prune(tmp_path):
    """The masks' figures are counted once per masks and kept: a cubic schedule's three steps must each
    report the masks just made, not the ones before."""
    cfg = load_config(overrides=[f'runs_dir="{tmp_path}"', "run_id=figures", "ppo.hidden_sizes=[64, 64]",
                                 "num_workers=1", "epochs=6", "pruning.schedule=cubic", "pruning.start_epoch=1",
                                 "pruning.every=1", "pruning.end_epoch=3", "pruning.initial_sparsity=0.5",
                                 "pruning.target_sparsity=0.9"])
    rundir.prepare(cfg, check_ports=False)
    compressor = Compressor(cfg, StopFlag())
    encoder, rng = Encoder(cfg.run_id, "trainer"), np.random.default_rng(0)
    spec, names = compressor.weight_spec, compressor.sparsity_names
    try:
        reported = []
        for epoch in range(5):
            weights = {n: rng.standard_normal(shape).astype(dtype) for n, (dtype, shape) in spec.items()}
            fields = {"version": epoch, "epoch": epoch, "training_sparsity": 0.0, "masks_version": -1,
                      "trainer_start": 0}
            msg = decode(encoder.encode("snapshot", fields, weights), run_id=cfg.run_id)
            compressor._check_snapshot(msg)
            compressor.handle(msg)
            finished = of(events(cfg.run_dir, "compressor"), "compression_finished")
            if len(finished) > len(reported):
                reported.append(finished[-1])
                assert finished[-1]["weight_sparsity"] == masks_sparsity(compressor.masks, spec, names)
                assert finished[-1]["params_kept"] == masked_stats(compressor.masks, spec, names)["params_kept"]
        sparsities = [e["weight_sparsity"] for e in reported]
        assert len(reported) == 3 and sparsities == sorted(sparsities) and sparsities[-1] > sparsities[0]
        assert [e["params_kept"] for e in reported] == sorted((e["params_kept"] for e in reported), reverse=True)
    finally:
        compressor.ctx.destroy(linger=0)
        compressor.publisher.close()


FRAMES = """
import resource, sys
import numpy as np, zmq
from hotprune.roles.process import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
ctx = zmq.Context()
pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
pull.bind(f"ipc://{sys.argv[2]}/frames")
push.connect(pull.LAST_ENDPOINT.decode())
frame = np.ones(40 << 18, np.float32)  # 40 MB: a 10M-parameter actor's weight matrix
for _ in range(3):
    push.send_multipart([b"snapshot", frame], copy=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    received = pull.recv_multipart(copy=False)
    assert np.frombuffer(received[1].buffer, np.float32)[-1] == 1
    del received
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
ctx.destroy(linger=0)
"""


def test_a_process_that_keeps_freed_memory_receives_each_large_frame_into_pages_it_already_has(tmp_path):
    """As the compressor receives a 40 MB snapshot per version: by glibc's defaults each is received into
    freshly mapped memory, a page fault per 4 KB page; kept, the third lands in the first's pages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults otherwise
    faults = {how: int(subprocess.run([sys.executable, "-c", FRAMES, how, str(tmp_path)], capture_output=True,
                                      text=True, env=env, check=True, timeout=60).stdout)
              for how in ("default", "kept")}
    pages = (40 << 20) // 4096
    assert faults["kept"] < pages // 10 < pages // 2 < faults["default"], faults


PEAK = """
import sys
from hotprune.roles.process import KEPT_FREE_BYTES, keep_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
assert keep_freed_memory()
start = rss()
top = bytearray(KEPT_FREE_BYTES + (64 << 20))  # freed at the heap's top: more than is kept
del top
after_top = rss() - start
below = bytearray(300 << 20)  # a transient (a checkpoint's copy) ...
held = bytearray(8 << 20)  # ... under a block still in use (the next version)
del below
print(after_top, rss() - start)
"""


def test_a_process_that_keeps_freed_memory_gives_back_a_large_free_top_but_keeps_a_block_freed_below_a_held_one():
    """What keep_freed_memory's docstring promises, both ways: its memory after a peak."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    after_top, after_below = map(int, subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True,
                                                      env=env, check=True, timeout=60).stdout.split())
    assert after_top < 32 << 20 and after_below > 300 << 20, (after_top, after_below)
