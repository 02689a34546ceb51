"""An inference worker: steps a gymnasium vector env with the newest pruned policy.

Between two vector steps (the safe point), and while a finished chunk waits for the trainer to take
it, it checks the weight store's version; when a newer one is there it copies it out consistently
(sparse tensors rebuilt dense: hotprune.workers.dense) and swaps it in, so a step always runs one
whole version.
Every `chunk_steps` steps it pushes a trajectory chunk to the trainer, tagged with the version (and
sparsity) of the policy that took its first step, the oldest in it, and carrying the behaviour
log-probabilities PPO corrects with. Flow control: it sends only while fewer than its share of an
epoch (`chunks_per_worker`) of its chunks are in flight, counting what the trainer's `credits` say
it has taken, so the policy lag stays bounded in versions whatever the chunk and epoch sizes. In
sync mode it sends that share of each version, then pauses until the next version is in the store:
no env step is thrown away.

The policy runs in numpy (`hotprune.workers.numpy_policy`), on one BLAS thread: the worker never imports torch,
which would cost it over a second of CPU at start-up, when every process of the run starts at once.

On a node fed by a relay (`--node NODE`, hotprune.roles.relay) it reads that node's store and takes its
hints from that node's relay instead of the compressor; nothing else changes.

Run it: `hotprune worker --run-dir runs/<run_id> --index 0 [--node NODE]` or
`python -m hotprune.workers.inference_worker ...`.
"""

from __future__ import annotations

import time

import numpy as np
import zmq
from threadpoolctl import threadpool_limits

from hotprune.protocol.codec import Encoder, MessageRejected, decode
from hotprune.protocol.sparse import nonzero
from hotprune import eventlog
from hotprune.actor_spec import actor_spec
from hotprune.config import Config, ConfigError
from hotprune.envs import EnvSource, clip_actions, env_spec, make_vector_env
from hotprune.roles.process import TRAJECTORY_BUFFER, WAIT_NOTE_S, StopFlag, role_process, send_when_ready, \
    socket
from hotprune.pruning.engine import prunable_names, sparsity_of_counts
from hotprune.comms.curve import SocketSecurity
from hotprune.protocol.endpoints import node_weights
from hotprune.protocol.store_layout import check_node, segment_name
from hotprune.comms.weight_store import StoreError, WeightStore
from hotprune.workers.dense import DenseBuffers
from hotprune.workers.numpy_policy import NumpyActor


READ_TIMEOUT_S = 0.05  # per safe point: a failed read is retried at the next one, not waited out
CREDITS_LOST_S = 5.0  # a trainer that keeps collecting this long without taking our chunks lost them
WORKER_SEED_STRIDE = 1000  # worker i's seed is the run's + 1000 * (i + 1): its envs take that one and the next
ACTION_STREAM = 1  # spawn key of the actions' generator, apart from every env's seed


def worker_seeds(seed: int, index: int) -> tuple[int, np.random.SeedSequence]:
    """Worker `index`'s env seed (its vector env seeds env j with it + j, and each env's later episodes
    follow from its own generator) and its actions' seed sequence. Both depend on the run's seed and the
    index only, so a worker steps the same episodes with the same samples in every run of a seed. The
    actions' sequence is spawned from the env seed rather than being the next worker's env seed, which
    drew the same numbers."""
    env_seed = seed + WORKER_SEED_STRIDE * (index + 1)
    return env_seed, np.random.SeedSequence(env_seed, spawn_key=(ACTION_STREAM,))


class InferenceWorker:
    def __init__(self, cfg: Config, index: int, stop: StopFlag, node: str | None = None):
        if not 0 <= index < cfg.num_workers:
            raise ConfigError(f"--index must be in [0, {cfg.num_workers}) (the run's num_workers), got {index}")
        try:
            self.node = node if node is None else check_node(node)
            hints = cfg.endpoints().weights if node is None else node_weights(cfg.run_dir, node)
        except ValueError as exc:
            raise ConfigError(f"--node: {exc}") from None
        self.cfg, self.index, self.stop = cfg, index, stop
        self.log = eventlog.setup(cfg.run_dir, cfg.run_id, "worker", index, node=node)
        self.heartbeat = eventlog.Heartbeat(self.log, cfg.supervisor.heartbeat_s)
        self.spec = env_spec(EnvSource.of(cfg))
        actor = cfg.network("actor", self.spec)
        self.dense_spec = actor_spec(self.spec, actor.hidden_sizes, cfg.normalize_obs, cfg.algorithm, actor.conv)
        self.activation, self.conv = actor.activation, actor.conv
        self.sparsity_names = prunable_names(self.dense_spec, cfg.pruning.prune_output_layer)
        self.envs = make_vector_env(EnvSource.of(cfg), cfg.envs_per_worker)
        self.store = self.attach_store()
        self.dense = DenseBuffers()  # the store's sparse tensors, rebuilt
        self.env_seed, actions_seed = worker_seeds(cfg.seed, index)
        self.rng = np.random.default_rng(actions_seed)  # the actions' samples, across swaps
        threadpool_limits(1, "blas")  # as every process of a run: one core each (OpenBLAS would take them all)

        ep = cfg.endpoints()
        self.ctx = zmq.Context()
        self.security = SocketSecurity(cfg, self.ctx, self.log)
        self.out = socket(self.ctx, zmq.PUSH, hwm=1, kernel_buffer=TRAJECTORY_BUFFER)
        self.security.connect(self.out, ep.trajectories)
        self.notify = socket(self.ctx, zmq.SUB, hwm=16, max_frame=cfg.transport.max_frame_bytes)
        self.notify.subscribe(b"")
        self.security.connect(self.notify, hints, "weights" if node is None else "node_weights")
        self.security.connect(self.notify, ep.credits)  # one SUB, two publishers: compressor (or relay), trainer
        self.encoder = Encoder(cfg.run_id, f"worker-{index}")

        self.actor = None
        self.version, self.structure_id, self.sparsity, self.nonzero_params = -1, None, 0.0, 0
        self.rejected_version = -1  # a store version that did not load as a policy
        self.failed_version = -1  # the last store version a read failed on (logged once)
        self.latencies: list[float] = []  # swap latencies not yet reported to the trainer
        self.stopping = False
        self.steps = self.chunks_sent = 0  # vector steps taken, trajectory chunks sent
        self.start_ns = time.time_ns()  # this worker process, in its chunks: the trainer credits it
        self.trainer_id = 0  # the trainer process whose credits count (the newest seen)
        self.sent_before = 0  # chunks sent before that trainer's first credits: lost with the one before
        self.taken = 0  # of this process's chunks, those the trainer says it has taken
        self.sent_of_version = (-1, 0)  # sync: (version, chunks of it sent)
        self.credits_at = 0.0  # when credits last came (monotonic)
        self.blocked_since: float | None = None  # since when may_send() says no
        self.collecting_since: float | None = None  # the first credits that came while blocked

    def attach_store(self) -> WeightStore:
        """The run's weight store, waiting up to `start_timeout_s` for it to appear, and saying so
        every WAIT_NOTE_S: a worker started by hand before its compressor is not stuck."""
        name, timeout = segment_name(self.cfg.run_dir, self.node), self.cfg.supervisor.start_timeout_s
        waited = 0.0
        while True:
            try:
                return WeightStore.attach(name, min(WAIT_NOTE_S, timeout - waited), self.stop.is_set)
            except StoreError:
                if self.stop.is_set():  # stopped while waiting for the store: not an error
                    raise SystemExit(self.stop.exit_code()) from None
                waited += WAIT_NOTE_S
                if waited >= timeout:
                    raise
                self.log.info("store_waiting", store=name, waited_s=waited, timeout_s=timeout)

    def maybe_swap(self) -> None:
        """The safe point: take up a newer version from the store, if there is one."""
        if self.store.version() <= max(self.version, self.rejected_version):
            return
        try:
            got = self.store.read(READ_TIMEOUT_S, into=self.dense.payload(self.store.slot_size()))
        except StoreError as exc:  # keep running the weights we have; the next safe point tries again
            failed = self.store.version()
            if failed != self.failed_version:  # once per version, not at every step
                self.log.warning("store_read_failed", reason=str(exc), version=self.version, store_version=failed)
                self.failed_version = failed
            return
        if got is None or got[0].version <= self.version:
            return
        header, stored = got
        structure_changed = header.structure_id != self.structure_id
        tensors = self.dense.rebuild(stored)
        try:  # the actor runs on the spare set of buffers (workers.dense): the read and the rebuild
            self.actor = NumpyActor(tensors, self.spec, self.rng, self.cfg.algorithm, self.activation, self.conv)
        except ValueError as exc:  # not an actor: keep the last good one
            self.log.warning("store_read_failed", reason=f"version {header.version} is not a policy: {exc}",
                             version=self.version)
            self.rejected_version = header.version  # not retried at every step
            return
        self.dense.keep()
        latency_ms = (time.time_ns() - header.publish_ts_ns) / 1e6
        previous, self.version, self.structure_id = self.version, header.version, header.structure_id
        counts = {n: nonzero(t) for n, t in stored.items()}  # one pass for both figures, over kept values only
        self.sparsity = sparsity_of_counts(counts, self.dense_spec, self.sparsity_names)
        self.nonzero_params = sum(counts.values())
        self.latencies.append(latency_ms)
        self.log.info("worker_swapped", version=header.version, previous_version=previous, latency_ms=latency_ms,
                      sparsity=self.sparsity, nonzero_params=self.nonzero_params,
                      shapes={n: list(t.shape) for n, t in tensors.items()} if structure_changed else None,
                      structure_changed=structure_changed and previous >= 0,
                      read_retries=self.store.read_retries)

    def drain_notifications(self, timeout_ms: int = 0) -> None:
        """weights_ready is only a hint (the store is the truth); control `stop` ends the worker."""
        while self.notify.poll(timeout_ms):
            timeout_ms = 0
            frames = self.notify.recv_multipart(copy=False)
            try:
                msg = decode([f.buffer for f in frames], run_id=self.cfg.run_id,
                             kinds={"weights_ready", "control", "credits"},
                             max_frame_bytes=self.cfg.transport.max_frame_bytes)
                if msg.kind == "credits":
                    self.take_credits(msg.fields)
            except MessageRejected as exc:
                self.log.warning("message_rejected", reason=exc.reason, expected="weights_ready, control or credits")
                continue
            if msg.kind == "control" and msg.fields["command"] == "stop":
                self.stopping = True

    def take_credits(self, fields: dict) -> None:
        """The trainer's count of chunks taken from each worker process; MessageRejected if malformed.
        A newer trainer process (a restart) holds none of the chunks sent before its first credits."""
        taken = fields["taken"]
        if len(taken) != self.cfg.num_workers or not all(
                isinstance(t, list) and len(t) == 2 and all(type(x) is int for x in t) for t in taken):
            raise MessageRejected(f"credits: taken must be {self.cfg.num_workers} [worker_start, count] pairs")
        if fields["trainer_id"] < self.trainer_id:
            return  # from a trainer that has been replaced
        if fields["trainer_id"] > self.trainer_id:  # the first trainer seen holds them all; a new one, none
            self.sent_before = self.chunks_sent if self.trainer_id else 0
            self.trainer_id, self.taken = fields["trainer_id"], 0
        self.credits_at = time.monotonic()
        if self.blocked_since is not None and self.collecting_since is None:
            self.collecting_since = self.credits_at  # the trainer collects (again) while we wait
        start, count = taken[self.index]
        if start == self.start_ns:  # no more than were sent to it: a count cannot switch flow control off
            self.taken = min(max(self.taken, count), self.chunks_sent - self.sent_before)

    def may_send(self) -> bool:
        """Fewer than this worker's share of an epoch of its chunks in flight. Chunks the trainer has
        not taken while it kept collecting for CREDITS_LOST_S (from its first credits while this
        worker is blocked) are lost (e.g. with a trainer that died
        before its first credits): forgotten, with a `credits_lost` warning, rather than waited for."""
        in_flight = self.chunks_sent - self.sent_before - self.taken
        if in_flight < self.cfg.chunks_per_worker:
            self.blocked_since = self.collecting_since = None
            return True
        now = time.monotonic()
        self.blocked_since = self.blocked_since or now
        # Counted from the first credits while blocked: a trainer busy with a long update (SAC's
        # thousand gradient steps take seconds) sends none, and has lost nothing.
        if self.collecting_since is not None and self.credits_at - self.collecting_since > CREDITS_LOST_S:
            self.log.warning("credits_lost", in_flight=in_flight, waited_s=now - self.blocked_since,
                             trainer_id=self.trainer_id)
            self.sent_before, self.blocked_since, self.collecting_since = self.chunks_sent - self.taken, None, None
            return True
        return False

    def sync_share_sent(self) -> bool:
        """Sync mode: this worker has sent its share of the version it runs."""
        version, sent = self.sent_of_version
        return self.cfg.mode == "sync" and version == self.version and sent >= self.cfg.chunks_per_worker

    def running(self) -> bool:
        return not (self.stop.is_set() or self.stopping)

    def rollout(self, obs: np.ndarray, episode: dict) -> tuple[dict, dict, np.ndarray] | None:
        """One chunk of `chunk_steps` vector steps; returns (fields, tensors, next obs). The chunk's
        observations are flattened (hotprune.spaces): what the trainer and the policy take."""
        steps, n, dim = self.cfg.chunk_steps, self.cfg.envs_per_worker, self.spec.obs_dim
        obs_buf = np.zeros((steps + 1, n, dim), self.spec.obs_dtype)  # images stay uint8
        act_buf = np.zeros((steps, n) if self.spec.discrete else (steps, n, self.spec.act_dim),
                           np.int64 if self.spec.discrete else np.float32)
        logp_buf = np.zeros((steps, n), np.float32)
        rew_buf = np.zeros((steps, n), np.float32)
        term_buf = np.zeros((steps, n), bool)
        trunc_buf = np.zeros((steps, n), bool)
        final_obs, returns, lengths = [], [], []
        first = None  # (version, sparsity, non-zero params) of the policy that took the chunk's first step
        for t in range(steps):
            self.maybe_swap()
            if not self.running():
                return None
            self.beat()
            self.steps += 1
            first = first or (self.version, self.sparsity, self.nonzero_params)
            obs_buf[t] = self.spec.flatten(obs)
            act_buf[t], logp_buf[t] = self.act(obs_buf[t])
            obs, reward, terminated, truncated, info = self.envs.step(clip_actions(self.spec, act_buf[t]))
            rew_buf[t], term_buf[t], trunc_buf[t] = reward, terminated, truncated
            episode["return"] += reward
            episode["length"] += 1
            for i in np.flatnonzero(terminated | truncated):
                if truncated[i]:
                    final_obs.append(self.spec.flatten(info["final_obs"][i], batched=False)[0])
                ret, length = float(episode["return"][i]), int(episode["length"][i])
                returns.append(ret)
                lengths.append(length)
                self.log.info("episode", episode_return=ret, length=length, version=self.version)
                episode["return"][i], episode["length"][i] = 0.0, 0
        obs_buf[steps] = self.spec.flatten(obs)
        fields = {
            "worker_id": self.index,
            "worker_start": self.start_ns,
            "policy_version": first[0],
            "policy_sparsity": first[1],
            "policy_nonzero_params": first[2],
            "episode_returns": returns,
            "episode_lengths": lengths,
            "swap_latencies_ms": self.latencies[-steps:],  # swaps while paused go too: the newest
        }
        self.latencies = []
        tensors = {
            "obs": obs_buf, "actions": act_buf, "logprobs": logp_buf, "rewards": rew_buf,
            "terminated": term_buf, "truncated": trunc_buf,
            "final_obs": np.asarray(final_obs, self.spec.obs_dtype).reshape(len(final_obs), dim),
        }
        return fields, tensors, obs

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The policy's actions and log-probabilities; uniformly random ones (and their log-density)
        while the version is one SAC's trainer published before its first gradient step."""
        if self.version >= self.cfg.random_versions:
            return self.actor.act(obs)
        low, high = np.asarray(self.spec.action_low), np.asarray(self.spec.action_high)
        actions = self.rng.uniform(low, high, (len(obs), self.spec.act_dim)).astype(np.float32)
        return actions, np.full(len(obs), -np.log(high - low).sum(), np.float32)

    def beat(self) -> None:
        self.heartbeat.beat(version=self.version, steps=self.steps, chunks_sent=self.chunks_sent)

    def still_running(self) -> bool:
        """While blocked on the trainer: take in hints and a possible `stop`, and swap to a newer
        version. Between chunks is a safe point too (no step is running), and the chunk waiting to
        go was encoded with the version of its first step: a worker the trainer is slow to read
        from still runs the newest weights the moment it steps again."""
        self.beat()
        self.drain_notifications()
        self.maybe_swap()
        return self.running()

    def wait_until(self, ready) -> bool:
        """Wait, still swapping and answering `stop`, until `ready()`; False if stopped first."""
        while not ready():
            if not self.still_running():
                return False
            self.notify.poll(100)  # a weights_ready or credits message ends the wait at once
        return True

    def run(self) -> int:
        obs, _ = self.envs.reset(seed=self.env_seed)
        episode = {"return": np.zeros(self.cfg.envs_per_worker), "length": np.zeros(self.cfg.envs_per_worker, int)}
        try:
            while self.actor is None and self.running():  # wait for the first weights
                self.beat()
                self.drain_notifications(timeout_ms=100)
                self.maybe_swap()
            while self.running():
                if not self.wait_until(lambda: not self.sync_share_sent()):  # sync: until the next version
                    break
                chunk = self.rollout(obs, episode)
                if chunk is None:
                    break
                fields, tensors, obs = chunk
                if not self.wait_until(self.may_send):
                    break
                if not send_when_ready(self.out, self.encoder.encode("trajectory", fields, tensors),
                                       self.still_running, wake=self.notify):
                    break
                self.chunks_sent += 1
                version, sent = self.sent_of_version
                self.sent_of_version = (version, sent + 1) if version == fields["policy_version"] \
                    else (fields["policy_version"], 1)
                self.drain_notifications()
        finally:
            self.log.info("worker_stopped", steps=self.steps, samples=self.steps * self.cfg.envs_per_worker,
                          chunks_sent=self.chunks_sent, version=self.version)
            self.ctx.destroy(linger=0)
            self.store.close()
            self.envs.close()
        return 0 if self.stopping else self.stop.exit_code()  # ended by the run's `stop`, or by a signal


main = role_process("worker", "steps environments with the newest pruned policy",
                    lambda cfg, stop, args: InferenceWorker(cfg, args.index, stop, args.node),
                    (("--index",), {"type": int, "default": 0, "help": "worker index, 0 .. num_workers-1"}),
                    (("--node",), {"help": "swap from this node's relay (its store and hints), not the compressor"}))


if __name__ == "__main__":
    from hotprune.roles.entry import role_main

    role_main(main, "worker")
