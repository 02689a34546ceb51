"""Trajectory intake: the workers' chunks taken in, checked, credited, and gathered into an epoch.

Async: `samples_per_epoch` of chunks at most `max_policy_lag` versions old; older ones are dropped and
counted (`dropped_stale`). PPO's behaviour log-probs correct for that staleness; SAC is off-policy and
needs no correction, and keeps the bound only for what it guards against, a stalled compressor whose
workers run one old policy on and on. Sync: `chunks_per_worker` chunks of the newest version from every
worker (the workers pause after sending them, so none are thrown away).

Credits, the channel's flow control: the trainer publishes on `credits` how many chunks it has taken from
each worker process, and a worker keeps at most its share of an epoch in flight, so the pipes never
buffer more than about one epoch. A chunk whose data is rejected still credits its worker process (it
goes on) and in sync mode serves its share; a chunk nothing of which can be trusted credits nobody.

`WorkerReports` keeps what the chunks say besides their data (finished episodes' returns, swap latencies,
the newest policy a worker ran) for the epoch lines and the summary; it is checkpointed.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import zmq

from hotprune.comms.curve import SocketSecurity
from hotprune.config import Config
from hotprune.envs import EnvSpec
from hotprune.learning.normalize import RewardScaler
from hotprune.protocol.codec import Encoder, Message, MessageRejected
from hotprune.protocol.endpoints import Endpoints
from hotprune.protocol.trajectory import check_trajectory, check_trajectory_fields
from hotprune.roles.process import TRAJECTORY_BUFFER, receive, socket
from hotprune.roles.trainer.state import Position, Tensors

CREDITS_EVERY_S = 0.2  # while collecting, the credits go out at least this often (PUB may drop one)
REWARD_WINDOW = 10  # reward_mean: mean return of the last 10 finished episodes


@dataclass
class Collected:
    """An epoch's chunks (their tensors, policy versions and finished episodes), and the samples of
    the valid chunks taken: `received` = the chunks' samples + `dropped_stale`."""

    chunks: list[dict]
    versions: list[int]
    episodes: int
    received: int
    dropped_stale: int


class WorkerReports:
    """From every valid chunk, used or dropped: its finished episodes' returns, its swap latencies, and
    the newest (version, sparsity, non-zero params) a worker reported running."""

    def __init__(self, params_total: int):
        self.episodes: deque[float] = deque(maxlen=REWARD_WINDOW)
        self.swap_latencies: list[float] = []
        self.inference = (-1, 0.0, params_total)

    def add(self, f: dict) -> None:
        self.episodes.extend(f["episode_returns"])
        self.swap_latencies.extend(f["swap_latencies_ms"])
        if f["policy_version"] >= self.inference[0]:
            self.inference = (f["policy_version"], f["policy_sparsity"], f["policy_nonzero_params"])

    def reward_mean(self) -> float | None:
        return statistics.fmean(self.episodes) if self.episodes else None

    def state_dict(self) -> tuple[Tensors, dict]:
        return ({"swap_latencies_ms": np.asarray(self.swap_latencies, np.float64)},
                {"episodes": list(self.episodes), "inference": list(self.inference)})

    def load_state_dict(self, tensors: Tensors, meta: dict) -> None:
        self.episodes.extend(meta["episodes"])
        self.inference = tuple(meta["inference"])
        self.swap_latencies = tensors["swap_latencies_ms"].tolist()


class Collection:
    """The trajectory pipe (PULL) and the credits (PUB): `begin` an epoch, `receive` each chunk that
    arrives until `wants_more` says the epoch is full, then take `collected`."""

    def __init__(self, cfg: Config, spec: EnvSpec, params_total: int, position: Position, reports: WorkerReports,
                 rewards: RewardScaler | None, ctx: zmq.Context, security: SocketSecurity, ep: Endpoints,
                 encoder: Encoder, log):
        self.cfg, self.spec, self.params_total, self.position = cfg, spec, params_total, position
        self.reports, self.rewards, self.encoder, self.log = reports, rewards, encoder, log
        # Small queues: workers block instead of running ahead, which bounds the policy lag.
        self.socket = socket(ctx, zmq.PULL, hwm=1, kernel_buffer=TRAJECTORY_BUFFER,
                             max_frame=cfg.transport.max_frame_bytes)
        self.credits = socket(ctx, zmq.PUB, hwm=16)
        security.bind(self.credits, ep.credits)
        security.bind(self.socket, ep.trajectories)
        self.trainer_id = time.time_ns()  # this trainer process, for the workers' credits
        self.taken = [[0, 0] for _ in range(cfg.num_workers)]  # per worker: [its process's start, chunks taken]
        self.credits_sent_at = 0.0
        self.collected = Collected([], [], 0, 0, 0)
        self.current = [0] * cfg.num_workers  # sync: chunks of the newest version from each worker
        self.last_usable = 0.0

    def begin(self) -> None:
        self.collected = Collected([], [], 0, 0, 0)
        self.current = [0] * self.cfg.num_workers
        self.last_usable = time.monotonic()

    def wants_more(self) -> bool:
        c = self.cfg
        if c.mode == "sync":
            return min(self.current) < c.chunks_per_worker
        return len(self.collected.chunks) * c.chunk_samples < c.samples_per_epoch

    def quiet_for(self, seconds: float) -> bool:
        """No usable chunk for `seconds` (then the clock starts again)."""
        if time.monotonic() - self.last_usable <= seconds:
            return False
        self.last_usable = time.monotonic()
        return True

    def send_credits_when_due(self) -> None:
        if time.monotonic() - self.credits_sent_at > CREDITS_EVERY_S:
            self.send_credits()

    def send_credits(self) -> None:
        fields = {"trainer_id": self.trainer_id, "taken": self.taken}
        self.credits.send_multipart(self.encoder.encode("credits", fields))
        self.credits_sent_at = time.monotonic()

    def receive(self) -> None:
        """The next chunk: into the epoch if it is usable, counted as dropped if it is too old."""
        c, got = self.cfg, self.collected
        sync = c.mode == "sync"
        msg, f = self._checked()
        if msg is None:
            if sync and f is not None and f["policy_version"] == self.position.version:
                self.current[f["worker_id"]] += 1  # its worker sent its share and paused: it counts, without data
            return
        if self.rewards:  # every chunk of the env's stream, used or not, moves the return
            msg.tensors["rewards"] = self.rewards.scale(f["worker_id"], f["worker_start"], msg.tensors["rewards"],
                                                        msg.tensors["terminated"] | msg.tensors["truncated"])
        self.reports.add(f)
        got.received += c.chunk_samples
        lag = self.position.version - f["policy_version"]
        beyond_share = sync and self.current[f["worker_id"]] >= c.chunks_per_worker  # a restarted worker's repeat
        if lag > (0 if sync else c.max_policy_lag) or beyond_share:
            got.dropped_stale += c.chunk_samples
            return
        self.last_usable = time.monotonic()
        got.episodes += len(f["episode_returns"])
        self.current[f["worker_id"]] += 1
        got.chunks.append(msg.tensors)
        got.versions.append(f["policy_version"])

    def _checked(self) -> tuple[Message | None, dict | None]:
        """(the chunk, its fields); (None, fields) for a chunk from a known worker process whose data
        was rejected: it is still credited (its worker goes on) and in sync mode serves its share;
        (None, None) when nothing about it can be trusted."""
        msg = receive(self.socket, "trajectory", self.cfg, self.log)
        if msg is None:
            return None, None
        f, c, spec = msg.fields, self.cfg, self.spec
        try:
            if not 0 <= f["worker_id"] < c.num_workers:
                raise MessageRejected(f"worker_id {f['worker_id']} outside [0, {c.num_workers})")
            if not 0 <= f["policy_version"] <= self.position.version:
                raise MessageRejected(f"policy_version {f['policy_version']} is not one this trainer published")
            check_trajectory_fields(f, c.chunk_steps, c.envs_per_worker, self.params_total)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="trajectory", sender=msg.sender)
            return None, None
        try:
            check_trajectory(msg.tensors, c.chunk_steps, c.envs_per_worker, spec.obs_dim, spec.act_dim,
                             spec.discrete, c.input_bound, spec.obs_dtype)
        except MessageRejected as exc:
            self.log.warning("message_rejected", reason=exc.reason, expected="trajectory", sender=msg.sender)
            known = self.count_taken(f["worker_id"], f["worker_start"], valid=False)
            return None, (f if known else None)
        self.count_taken(f["worker_id"], f["worker_start"], valid=True)
        return msg, f

    def count_taken(self, worker_id: int, worker_start: int, valid: bool) -> bool:
        """One more chunk taken from worker process `worker_start`, and the credits go out at once.
        A valid chunk from a newer process (a replacement) starts its count; a chunk a dead process
        left in the pipe credits nobody; an invalid chunk counts only for the process already known
        (a forged one cannot take a worker's credits over). True if it was credited."""
        start, count = self.taken[worker_id]
        credited = worker_start == start or (valid and worker_start > start)
        if credited:
            self.taken[worker_id] = [worker_start, count + 1 if worker_start == start else 1]
            self.send_credits()
        return credited
