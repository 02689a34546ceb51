"""Swap latency: from a writer starting to publish a version until every busy worker has swapped to it
and taken its next step, for hotprune and the ways a user would otherwise ship weights to workers.

Systems (each worker is a forked process stepping a CartPole vector env of 4 with the actor, one
torch thread, checking for new weights between steps, as a hotprune worker does; the hotprune
systems' workers run its numpy actor, the others the torch Actor):
  floor        one memcpy into shared memory + one 8-byte ZeroMQ notification; the worker copies the
               shared weights into its actor when notified. No consistency protocol: a lower bound
               on the writer's side (the issue's floor); the worker waits on ZeroMQ's I/O thread.
  floor_shm    the same, the notification an 8-byte version in the shared memory, polled at the safe
               point: the least this worker loop can do, since it needs no other thread.
  hotprune     WeightStore.publish + weights_ready (what the compressor does once its masks are
               applied); the worker is a real InferenceWorker swapping at its safe point (maybe_swap).
  masked90_dense  as hotprune, with a fixed 90% mask on every weight matrix, the masked version written
               dense (what the compressor wrote before the kept-values path).
  masked90_sparse  the same version written as kept values + bitmaps (hotprune.protocol.sparse: what
               the compressor writes now); the worker rebuilds dense (hotprune.workers.dense). The
               writer's publish call includes taking the kept values; the mask's multiply is not timed
               (the compressor pays it either way).
  via_compressor  as hotprune, but the writer is the trainer: a snapshot over ZeroMQ to a real
               compressor process, which applies the masks in force (pruned once, at version 1) and
               writes the store: what a user waits for, trainer published -> every worker swapped.
  via_compressor_every  the same with a compression due at every version (new masks each time).
  via_compressor_kept90  via_compressor at 90% as in both-pruned mode: once the compressor's masks
               report reaches the bench (the trainer), it sends each version as a both-pruned trainer
               does, masked weights as kept values + bitmaps (masks_version set), and the compressor
               stores them as they came: the path at 90% sparsity, trainer published -> every worker swapped.
  via_compressor_neuron90  the same with 90% of the hidden neurons pruned (pruning.structure = "neuron"):
               the compressor stores the smaller matrices the workers then run (no rebuild to dense).
  mp_queue     the state_dict as numpy arrays, pickled through one multiprocessing.Queue per worker.
  sample_factory  Sample Factory's pattern: shared-memory tensors, a lock, a version counter; the
               writer copies in under the lock, a worker that sees a newer version copies out under it.
  torchrl      TorchRL 0.14's MultiAsyncCollector (one CartPole env per worker process, always
               collecting); the writer updates its policy in place (not timed) and calls
               update_policy_weights_(), which syncs the workers' shared-memory weights. Each step
               stamps the version it ran, the time and a torn flag (first and last element of every
               tensor on one version; a lower bound on torn reads); a worker has swapped at its first
               step on a whole new version (a step on weights still being copied does not count).

Latency rounds: publish, wait until every worker has reported that version, wait 5-20 ms (so the
next publish lands at a random point of the workers' steps), repeat; the first 2 of each block are
warm-up. Systems alternate block by block (A B C A B C ...). Torn reads: every version's weights are
base + version, so a worker can tell a whole version from a mix of two; after the latency rounds the
writer publishes back to back for a while (`--stress-s`) and every swap is checked.

    .venv/bin/python scripts/bench_swap.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.protocol.codec import Encoder, decode  # noqa: E402
from hotprune.protocol.sparse import SparseCode, worth_sparse  # noqa: E402
from hotprune.runs import rundir  # noqa: E402
from hotprune.config import load_config  # noqa: E402
from hotprune.envs import env_spec, make_vector_env  # noqa: E402
from hotprune.learning.policy import actor_arrays, make_actor  # noqa: E402
from hotprune.roles.process import StopFlag  # noqa: E402
from hotprune.roles.trainer.snapshots import SNAPSHOT_SNDBUF  # noqa: E402
from hotprune.protocol.store_layout import segment_name  # noqa: E402
from hotprune.runs.rundir import store_slot_size  # noqa: E402
from hotprune.comms.weight_store import WeightStore  # noqa: E402
from hotprune.workers.inference_worker import InferenceWorker  # noqa: E402
from hotprune.workers.numpy_policy import NumpyActor  # noqa: E402

# hidden sizes of the CartPole actor; 1.7M: as many parameters as the Nature CNN actor (1,687,206 with 6 actions),
# the size issue 20 holds to within 2x of 1M's swap cost (the path moves bytes; a conv actor's worker also
# reorders its head's columns once per version, measured in docs/pixels.md)
SIZES = {"10K": [96, 96], "1M": [1024, 1024], "1.7M": [1296, 1296], "10M": [3162, 3162]}
SYSTEMS = ("floor", "floor_shm", "hotprune", "masked90_dense", "masked90_sparse", "via_compressor",
           "via_compressor_every", "via_compressor_kept90", "via_compressor_neuron90", "mp_queue", "sample_factory",
           "torchrl")
MASKED = 0.9  # the masked systems' sparsity
WARMUP = 2
CTX = mp.get_context("fork")  # the workers start in well under a second from a parent that has torch


def weights_of(base: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
    """The weights of a version: one base, shifted by the version (a whole version is recognisable)."""
    return {n: b + np.float32(version) for n, b in base.items()}


def torn(actor: torch.nn.Module | NumpyActor, base: dict[str, np.ndarray], keep: dict[str, np.ndarray] | None) -> bool:
    """True if the actor's weights are not one whole version (masked by `keep`, whose first entries are kept)."""
    state = actor.tensors if isinstance(actor, NumpyActor) else {n: t.numpy() for n, t in actor.state_dict().items()}
    first = next(iter(state))
    version = int(round(float(state[first].flat[0] - base[first].flat[0])))
    whole = masked(weights_of(base, version), keep) if keep else weights_of(base, version)
    return any(not np.array_equal(state[n], w) for n, w in whole.items())


def masked(weights: dict[str, np.ndarray], keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: w * keep[n] if n in keep else w for n, w in weights.items()}


# --- the systems: a writer (in the bench process) and a swap function (in each worker) ----------


class Floor:
    def __init__(self, base, ep=None):
        """ep: the ZeroMQ notification's endpoint; None: a version counter after the weights."""
        self.size = sum(b.nbytes for b in base.values())
        self.shm = shared_memory.SharedMemory(create=True, size=self.size + 8)
        self.views = self._views(self.shm.buf, base)
        self.counter = np.ndarray(1, np.int64, buffer=self.shm.buf, offset=self.size)
        self.ep = ep

    @staticmethod
    def _views(buf, base):
        views, offset = {}, 0
        for n, b in base.items():
            views[n] = np.ndarray(b.shape, b.dtype, buffer=buf, offset=offset)
            offset += b.nbytes
        return views

    def start_writer(self, ctx):
        if self.ep:
            self.pub = ctx.socket(zmq.PUB)
            self.pub.bind(self.ep)

    def publish(self, weights, version):
        for n, w in weights.items():
            np.copyto(self.views[n], w)
        if self.ep:
            self.pub.send(version.to_bytes(8, "little"))
        else:
            self.counter[0] = version

    def swapper(self, index, actor_box, base):
        actor = make_actor(env_spec("CartPole-v1"), actor_box["hidden"])
        tensors = {n: torch.from_numpy(v) for n, v in self.views.items()}
        actor.load_state_dict(tensors)  # the version written before the workers started
        mine = [int(self.counter[0])]
        if self.ep:
            sub = zmq.Context().socket(zmq.SUB)
            sub.subscribe(b"")
            sub.connect(self.ep)

        def newer():
            if not self.ep:
                version = int(self.counter[0])
                return version if version > mine[0] else None
            version = None
            while sub.poll(0):
                version = int.from_bytes(sub.recv(), "little")
            return version

        def swap():
            version = newer()
            if version is not None:
                actor.load_state_dict(tensors)
                mine[0] = version
            return version, actor
        return swap

    def close(self):
        self.views = self.counter = None  # no view may outlive the mapping
        self.shm.close()
        self.shm.unlink()


class Hotprune:
    """The store written directly (hot swap alone) or through a real compressor (`via_compressor`)."""

    def __init__(self, base, hidden, workers, via_compressor, tmp, every=1, kept=False, structure="weight"):
        """kept: at 90%, sending masked weights as kept values once the compressor's masks are known;
        structure: the masks' (pruning.structure)."""
        overrides = [f'runs_dir="{tmp}"', f"run_id=swap-{'c' if via_compressor else 'd'}-{random.getrandbits(32):x}",
                     f"ppo.hidden_sizes=[{hidden[0]}, {hidden[1]}]", f"num_workers={workers}", "envs_per_worker=4",
                     "epochs=100000", "supervisor.heartbeat_s=3600",
                     *(["pruning.method=magnitude", "pruning.start_epoch=1", f"pruning.every={every}",
                        f"pruning.target_sparsity={MASKED if kept else 0.8}", f"pruning.structure={structure}"]
                       if via_compressor else ["pruning.method=none"])]
        self.kept, self.codes, self.masks_version = kept, {}, -1
        self.cfg = load_config(overrides=overrides)
        rundir.prepare(self.cfg, check_ports=False)
        self.store = WeightStore.create(segment_name(self.cfg.run_dir), store_slot_size(self.cfg))
        self.via_compressor = via_compressor
        self.compressor = None
        self.base = base
        self.nbytes = None  # the store payload of the last version written here

    def start_writer(self, ctx):
        ep = self.cfg.endpoints()
        self.encoder = Encoder(self.cfg.run_id, "trainer" if self.via_compressor else "compressor")
        if self.via_compressor:  # the bench is the trainer: it binds snapshots and masks
            self.pub = ctx.socket(zmq.PUB)
            self.pub.sndbuf = SNAPSHOT_SNDBUF  # as the trainer's
            self.pub.bind(ep.snapshots)
            self.masks = ctx.socket(zmq.PULL)
            self.masks.bind(ep.masks)
            self.compressor = subprocess.Popen([sys.executable, "-m", "hotprune.roles.compressor", "--run-dir",
                                                str(self.cfg.run_dir)], stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while self.store.version() < 0:  # it takes seconds to start: v0 again until it is in the store
                if time.monotonic() > deadline:
                    raise RuntimeError("the compressor did not write the first version within 120 s")
                self.publish(weights_of(self.base, 0), 0)
                time.sleep(0.2)
        else:
            self.pub = ctx.socket(zmq.PUB)
            self.pub.bind(ep.weights)

    def publish(self, weights, version):
        if self.via_compressor:
            fields = {"version": version, "epoch": version, "training_sparsity": 0.0,
                      "masks_version": self.masks_version, "trainer_start": 0}
            weights = {n: self.codes[n].sparse(w) if n in self.codes else w for n, w in weights.items()}
            self.pub.send_multipart(self.encoder.encode("snapshot", fields, weights), copy=False)
            while self.masks.poll(0):  # the compressor's reports: with `kept`, its masks taken up as a trainer does
                report = decode(self.masks.recv_multipart())
                if self.kept and report.tensors:
                    self.masks_version = report.fields["version"]
                    self.codes = {n: SparseCode.of_mask(m) for n, m in report.tensors.items()
                                  if worth_sparse(m.size, int(np.count_nonzero(m)), weights[n].dtype.itemsize)}
            self.nbytes = self.store.header().payload_size  # of the newest version the compressor wrote
            return
        slot, self.nbytes, changed = self.store.publish(weights, version)
        self.pub.send_multipart(self.encoder.encode("weights_ready", {"version": version, "slot": slot,
                                                                       "structure_changed": changed}))

    def swapper(self, index, actor_box, base):
        worker = InferenceWorker(self.cfg, index, StopFlag())
        actor_box["envs"] = worker.envs

        def swap():
            before = worker.version
            worker.maybe_swap()
            return (worker.version if worker.version != before else None), worker.actor
        return swap

    def close(self):
        if self.compressor is not None:
            self.pub.send_multipart(self.encoder.encode("control", {"command": "stop"}))
            try:
                self.compressor.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.compressor.kill()
        self.store.close()
        self.store.unlink()


class Masked(Hotprune):
    """hotprune's store with a fixed MASKED mask on each weight matrix (its first entry kept, so a worker
    can tell the version), the version written dense or as kept values + bitmaps."""

    def __init__(self, base, hidden, workers, tmp, sparse):
        super().__init__(base, hidden, workers, False, tmp)
        rng = np.random.default_rng(0)
        self.keep = {}
        for n, b in base.items():
            if b.ndim == 2:
                self.keep[n] = rng.random(b.shape) >= MASKED
                self.keep[n].flat[0] = True
        self.codes = {n: SparseCode.of_mask(k) for n, k in self.keep.items()} if sparse else {}
        self.staged = None

    def stage(self, weights):
        self.staged = masked(weights, self.keep)

    def publish(self, weights, version):
        staged = self.staged if self.staged is not None else masked(weights, self.keep)  # v0: not staged
        self.staged = None
        super().publish({n: self.codes[n].sparse(w) if n in self.codes else w for n, w in staged.items()}, version)


class MpQueue:
    def __init__(self, workers):
        self.queues = [CTX.Queue() for _ in range(workers)]

    def start_writer(self, ctx):
        pass

    def publish(self, weights, version):
        for q in self.queues:
            q.put((version, weights))

    def swapper(self, index, actor_box, base):
        actor = make_actor(env_spec("CartPole-v1"), actor_box["hidden"])
        q = self.queues[index]

        def swap():
            got = None
            while not q.empty():
                got = q.get()
            if got is not None:
                actor.load_state_dict({n: torch.from_numpy(w) for n, w in got[1].items()})
                return got[0], actor
            return None, actor
        return swap

    def close(self):
        for q in self.queues:
            q.cancel_join_thread()  # versions nobody took: not worth waiting for at exit
            q.close()


class SampleFactory:
    """Sample Factory's model sharing: tensors in shared memory, a lock, a version counter."""

    def __init__(self, base):
        self.shared = {n: torch.from_numpy(b.copy()).share_memory_() for n, b in base.items()}  # before the fork
        self.lock = CTX.Lock()
        self.version = CTX.Value("q", -1, lock=False)

    def start_writer(self, ctx):
        pass

    def publish(self, weights, version):
        with self.lock:
            for n, w in weights.items():
                self.shared[n].copy_(torch.from_numpy(w))
            self.version.value = version

    def swapper(self, index, actor_box, base):
        actor = make_actor(env_spec("CartPole-v1"), actor_box["hidden"])
        mine = [-1]

        def swap():
            if self.version.value <= mine[0]:
                return None, actor
            with self.lock:
                actor.load_state_dict(self.shared)
                mine[0] = self.version.value
            return mine[0], actor
        return swap

    def close(self):
        pass


# --- workers and the measurement -----------------------------------------------------------------


def worker_main(system, index, hidden, base, conn, stop, check_torn):
    """A busy worker: swap at the safe point, step; report each swap (version, time after the step, torn)."""
    benchkit.one_thread()
    box = {"hidden": hidden}
    swap = system.swapper(index, box, base)
    envs = box.get("envs") or make_vector_env("CartPole-v1", 4)
    obs, _ = envs.reset(seed=index)
    version, actor = swap()
    while actor is None:  # a hotprune worker has no actor before its first swap
        time.sleep(0.001)
        version, actor = swap()
    conn.send(("ready", index))
    while not stop.is_set():
        version, actor = swap()
        if isinstance(actor, NumpyActor):  # a hotprune worker's
            action, _ = actor.act(obs)
        else:
            with torch.no_grad():
                action = actor.distribution(torch.from_numpy(np.asarray(obs, np.float32))).sample().numpy()
        obs, *_ = envs.step(action)
        if version is not None:
            stepped = time.monotonic_ns()
            conn.send((version, stepped, torn(actor, base, getattr(system, "keep", None)) if check_torn else None))


class Forked:
    """A block's workers for the systems above: forked processes reporting over pipes."""

    def __init__(self, system, hidden, base, workers, check_torn):
        self.system, self.stop = system, CTX.Event()
        pipes = [CTX.Pipe(duplex=False) for _ in range(workers)]
        self.conns = [recv for recv, _ in pipes]
        self.procs = [CTX.Process(target=worker_main, args=(system, i, hidden, base, pipes[i][1], self.stop,
                                                            check_torn), daemon=True) for i in range(workers)]
        for p in self.procs:
            p.start()
        for recv in self.conns:
            if not recv.poll(120):
                raise RuntimeError("a worker did not start")
            recv.recv()
        time.sleep(0.5)  # notification subscriptions settle (a PUB drops what it sends before they have)

    def stage(self, weights):
        if isinstance(self.system, Masked):
            self.system.stage(weights)

    def publish(self, weights, version):
        self.system.publish(weights, version)

    def reports(self, timeout):
        """(worker, version, time after its next step, torn) of the swaps reported so far."""
        mp.connection.wait(self.conns, timeout=timeout)  # sleeps: the workers have the cores
        out = []
        for w, recv in enumerate(self.conns):
            while recv.poll(0):
                out.append((w, *recv.recv()))
        return out

    def close(self):
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


class StampedPolicy(torch.nn.Module):
    """For TorchRL: the actor's MLP, greedy, writing into each step's tensordict what a report needs:
    the version its weights are at (first weight - its base), the time after the forward, the worker's
    pid, and whether the first and last element of every tensor agree on that version (torn)."""

    def __init__(self, hidden, base):
        super().__init__()
        self.net = make_actor(env_spec("CartPole-v1"), hidden).net
        ends = [(b.flat[0], b.flat[-1]) for b in base.values()]
        self.register_buffer("ends", torch.tensor(ends, dtype=torch.float32))

    def forward(self, obs):
        action = self.net(obs).argmax(-1)
        params = list(self.net.parameters())
        firsts = torch.stack([p.detach().flatten()[0] for p in params]) - self.ends[:, 0]
        lasts = torch.stack([p.detach().flatten()[-1] for p in params]) - self.ends[:, 1]
        version = torch.round(firsts[0])
        torn = bool(((torch.round(firsts) != version) | (torch.round(lasts) != version)).any())
        stamp = dict(size=obs.shape[:-1], dtype=torch.int64)
        return (action, version.expand(obs.shape[:-1]).clone(), torch.full(**stamp, fill_value=time.monotonic_ns()),
                torch.full(**stamp, fill_value=os.getpid()), torch.full(obs.shape[:-1], torn))


def cartpole():
    from torchrl.envs import GymEnv
    return GymEnv("CartPole-v1", categorical_action_encoding=True)


class TorchRL:
    """TorchRL's MultiAsyncCollector: busy workers collecting; the writer updates its policy in place
    and calls update_policy_weights_() (its default shared-memory weight sync for CPU workers)."""

    def __init__(self, hidden, base, workers):
        from tensordict.nn import TensorDictModule
        from torchrl.collectors import MultiAsyncCollector
        module = StampedPolicy(hidden, base)
        self.policy = TensorDictModule(module, in_keys=["observation"], out_keys=["action", "ver", "t", "pid", "torn"])
        self.params = dict(module.net.named_parameters())
        self.names = {f"net.{n}": n for n in self.params}
        self._load(weights_of(base, 0))
        self.collector = MultiAsyncCollector([cartpole] * workers, self.policy, frames_per_batch=16, total_frames=-1)
        self.batches = iter(self.collector)
        self.pids: dict[int, int] = {}
        while len(self.pids) < workers:  # every worker has stepped
            self.reports(timeout=0)

    def _load(self, weights):
        with torch.no_grad():
            for n, w in weights.items():
                self.params[self.names[n]].copy_(torch.from_numpy(w))

    def stage(self, weights):
        self._load(weights)  # the learner's own update of its policy: before the clock starts

    def publish(self, weights, version):
        self.collector.update_policy_weights_()

    def reports(self, timeout):
        """Per batch (one worker's 16 steps), the first step at each version it ran whole: a step on
        weights still being copied (torn) is reported as torn, and not as having swapped."""
        batch = next(self.batches)
        worker = self.pids.setdefault(int(batch["pid"][0]), len(self.pids))
        out = []
        for version in batch["ver"].unique().tolist():
            at = batch["ver"] == version
            whole = at & ~batch["torn"]
            if bool(batch["torn"][at].any()):
                out.append((worker, -1, 0, True))
            if bool(whole.any()):
                out.append((worker, int(version), int(batch["t"][whole].min()), False))
        return out

    def close(self):
        self.collector.shutdown()


def run_block(block, base, workers, publishes, stress_s, version):
    """Measure `publishes` versions (after warm-up) and a back-to-back stress phase on started workers."""
    latencies, publish_ms, swaps, torn_reads, republished = [], [], 0, 0, 0
    try:
        for i in range(WARMUP + publishes):
            version += 1
            weights = weights_of(base, version)
            block.stage(weights)
            t0 = time.monotonic_ns()
            block.publish(weights, version)
            published = time.monotonic_ns()
            done = [None] * workers
            deadline = time.monotonic() + 30
            while None in done:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not swap to version {version} within 30 s")
                if time.monotonic() > deadline - 25:  # a notification lost to a late subscription: again
                    block.publish(weights, version)
                    republished += 1
                    deadline += 5
                for w, v, t, bad in block.reports(timeout=1.0):
                    swaps += 1
                    torn_reads += bool(bad)
                    if v >= version and done[w] is None:
                        done[w] = t
            if i >= WARMUP:
                latencies.append((max(done) - t0) / 1e6)
                publish_ms.append((published - t0) / 1e6)
            time.sleep(random.uniform(0.005, 0.02))
        end = time.monotonic() + stress_s
        while time.monotonic() < end:  # back to back: readers copy while the writer writes
            version += 1
            weights = weights_of(base, version)
            block.stage(weights)
            block.publish(weights, version)
            for _, _, _, bad in block.reports(timeout=0):
                swaps += 1
                torn_reads += bool(bad)
    finally:
        block.close()
    return latencies, publish_ms, {"swaps": swaps, "torn": torn_reads, "republished": republished}, version


def measure(size, hidden, workers, args, tmp):
    actor = make_actor(env_spec("CartPole-v1"), hidden)
    base = {n: (a * 0.01).astype(np.float32) for n, a in actor_arrays(actor).items()}
    ctx = zmq.Context()
    makers = {
        "floor": lambda: Floor(base, f"ipc://{tmp}/floor-{random.getrandbits(32):x}"),
        "floor_shm": lambda: Floor(base),
        "hotprune": lambda: Hotprune(base, hidden, workers, False, tmp),
        "masked90_dense": lambda: Masked(base, hidden, workers, tmp, sparse=False),
        "masked90_sparse": lambda: Masked(base, hidden, workers, tmp, sparse=True),
        "via_compressor": lambda: Hotprune(base, hidden, workers, True, tmp, every=100000),
        "via_compressor_every": lambda: Hotprune(base, hidden, workers, True, tmp),
        "via_compressor_kept90": lambda: Hotprune(base, hidden, workers, True, tmp, every=100000, kept=True),
        "via_compressor_neuron90": lambda: Hotprune(base, hidden, workers, True, tmp, every=100000, kept=True,
                                                    structure="neuron"),
        "mp_queue": lambda: MpQueue(workers),
        "sample_factory": lambda: SampleFactory(base),
    }
    names = [k for k in SYSTEMS if k in args.systems]
    systems = {k: makers[k]() for k in names if k in makers}  # torchrl: a collector per block
    latencies = {k: [] for k in names}
    publish = {k: [] for k in names}  # the writer's own cost: publish called -> returned
    reads = {k: {"swaps": 0, "torn": 0, "republished": 0} for k in names}
    versions = dict.fromkeys(names, 0)
    try:
        for system in systems.values():
            system.start_writer(ctx)
            system.publish(weights_of(base, 0), 0)
        time.sleep(1.0)  # subscriptions connect; the compressor imports and writes v0
        order = names
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[: r % len(order)]:  # rotate: no system always first
                checked = not name.startswith("via_compressor")
                stress = args.stress_s if checked and name != "mp_queue" else 0.0  # a queue's are copies
                block = TorchRL(hidden, base, workers) if name == "torchrl" else \
                    Forked(systems[name], hidden, base, workers, checked)
                lat, pub, counts, versions[name] = run_block(block, base, workers, args.publishes, stress,
                                                             versions[name])
                latencies[name] += lat
                publish[name] += pub
                for key in reads[name]:
                    reads[name][key] += counts[key]
                print(f"  {size} x{workers} round {r} {name}: median {np.median(lat):.2f} ms", flush=True)
    finally:
        for system in systems.values():
            system.close()
        ctx.destroy(linger=0)
    params = sum(b.size for b in base.values())
    return {"size": size, "params": params, "hidden": hidden, "workers": workers,
            "systems": {k: {**benchkit.summary(latencies[k]), **reads[k],
                            "publish_median_ms": float(np.median(publish[k])) if publish[k] else None,
                            "store_nbytes": getattr(systems.get(k), "nbytes", None)}
                        for k in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10K and 1M, 2 workers, few rounds")
    parser.add_argument("--sizes", default=None, help="comma-separated of " + ",".join(SIZES))
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 2,4)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--publishes", type=int, default=None, help="measured versions per block")
    parser.add_argument("--stress-s", type=float, default=None, help="back-to-back publishing per block")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", default="swap", help="benchmarks/<out>.json and .md")
    args = parser.parse_args()
    quick = args.quick
    sizes = (args.sizes or ("10K,1M" if quick else "10K,1M,10M")).split(",")
    counts = [int(w) for w in (args.workers or ("2" if quick else "2,4")).split(",")]
    args.rounds = args.rounds or (2 if quick else 3)
    args.publishes = args.publishes or (8 if quick else 15)
    args.stress_s = args.stress_s if args.stress_s is not None else (0.5 if quick else 1.0)
    args.systems = args.systems.split(",")
    benchkit.one_thread()
    start = benchkit.machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="hb-swap-", dir="/tmp") as tmp:
        for size in sizes:
            for workers in counts:
                results.append(measure(size, SIZES[size], workers, args, tmp))
    meta = {"start": start, "end": benchkit.machine(), "rounds": args.rounds, "publishes": args.publishes,
            "warmup": WARMUP, "stress_s": args.stress_s, "quick": quick, "command": " ".join(sys.argv)}
    lines = ["# Swap latency: publish -> every busy worker swapped and stepping again", "",
             f"`{meta['command']}`; {args.rounds} alternating blocks of {args.publishes} versions per system "
             f"(+{WARMUP} warm-up each), 1 torch thread per process; load average {start['loadavg']} at the start, "
             f"{meta['end']['loadavg']} at the end ({start['cpus']} cores, torch {start['torch']}).", "",
             "| actor | workers | system | median ms | p99 ms | median / lower floor | p99 / lower floor median "
             "| writer's publish call ms | swaps checked | torn | store bytes per version |", "|---" * 11 + "|"]
    for r in results:
        floors = [r["systems"][f]["median_ms"] for f in ("floor", "floor_shm") if f in r["systems"]]
        floor = min(floors) if floors else None
        for name, s in r["systems"].items():
            ratio = f"{s['median_ms'] / floor:.1f}" if floor else "-"
            p99 = f"{s['p99_ms'] / floor:.1f}" if floor else "-"
            torn_cell = "n/a" if name.startswith("via_") else f"{s['torn']} (copies)" if name == "mp_queue" \
                else str(s["torn"])
            lines.append(f"| {r['size']} ({r['params']:,}) | {r['workers']} | {name} | {s['median_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {ratio} | {p99} | {s['publish_median_ms']:.2f} | {s['swaps']} | "
                         f"{torn_cell} | {f'{nbytes:,}' if (nbytes := s['store_nbytes']) else '-'} |")
    lines += ["", "via_compressor: trainer snapshot over ZeroMQ -> a real compressor (masks in force, pruned once) "
              "-> store -> workers; via_compressor_every: a new compression (magnitude, nested, 80%) at every "
              "version. Their torn reads are those of `hotprune` (the same reader), not checked again: masked "
              "weights are no longer base + version. mp_queue: every version is a pickled copy and cannot tear; "
              "no back-to-back phase (its queues would hold every version). torchrl: torn = a step whose tensors' "
              "first and last elements disagree on the version (a lower bound). Torn reads are counted over every "
              f"swap, including {args.stress_s} s of back-to-back publishing per block. p99 over "
              f"{args.rounds * args.publishes} versions is close to their maximum."]
    benchkit.write(args.out, {"meta": meta, "results": results}, lines)


if __name__ == "__main__":
    main()
