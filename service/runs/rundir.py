"""A run directory: runs/<run_id>/ with config.toml, logs/, the private socket directory and, for a
tcp run, its CURVE keys (keys/); and runs/latest, a link to the newest run (`hotprune diagnose
runs/latest`).

Everything that can be checked before a run starts is checked before its directory is made, and a
start that fails after that removes what it made: a run id that failed to start can be tried again.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import socket
import sys
import uuid
from pathlib import Path

import numpy as np

from hotprune.protocol import store_layout as layout
from hotprune.protocol.endpoints import SOCKETS, node_weights, socket_dir
from hotprune.runs import artifacts, cleanup, metrics, private, tickets
from hotprune.runs.artifacts import CHECKPOINT, MASKS, POLICY
from hotprune.comms import curve
from hotprune.actor_spec import run_shapes
from hotprune.algorithms import actor_kind
from hotprune.config import LOCAL_NODE, REPLAY_MEMORY_SHARE, Config, ConfigError, to_toml
from hotprune.envs import EnvSource, EnvSpec, env_spec


def prepare(cfg: Config, check_ports: bool = True, workers_here: int | None = None) -> Path:
    """Check what can only be checked against the machine, then create the run directory.
    `workers_here`: the workers this machine runs (with --ray, its share; all of them by default).

    A shared-memory segment of this run id that no live process uses (left by a run whose every
    process was killed) is removed; one in use is refused. With tcp, the ports are checked free
    unless `check_ports` is false (`hotprune init`: processes started by hand later bind them).
    """
    spec = env_spec(EnvSource.of(cfg))  # unknown env ids fail here, before any process starts
    try:
        actor_kind(cfg.algorithm, spec.discrete)
    except ValueError:
        raise ConfigError(f"algorithm {cfg.algorithm} needs Box actions; env_id {cfg.env_id} has Discrete "
                          "actions (use algorithm=ppo)") from None
    if spec.image is not None:
        _check_images(cfg, spec)
    if cfg.algorithm == "sac":
        _check_replay_memory(cfg, spec)
    check_device(cfg)
    if cfg.tensorboard and not metrics.available("tensorboard"):
        raise ConfigError("tensorboard = true needs TensorBoard: pip install -e '.[tensorboard]'")
    if cfg.wandb.track and not metrics.available("wandb"):
        raise ConfigError("wandb.track = true needs Weights & Biases: pip install -e '.[wandb]'")
    run_dir = cfg.run_dir
    try:
        cfg.endpoints()
        if cfg.relay.local:
            node_weights(cfg.run_dir, LOCAL_NODE)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cores = os.cpu_count() or 1
    here = cfg.num_workers if workers_here is None else workers_here
    if here > WORKERS_PER_CORE * cores:
        what = "num_workers" if workers_here is None else "this node's share of num_workers (relay.workers_per_node)"
        raise ConfigError(f"{what} must be <= {WORKERS_PER_CORE * cores} on this machine "
                          f"({WORKERS_PER_CORE} per core, {cores} cores), got {here}")
    needed = largest_frame(cfg)
    if cfg.transport.max_frame_bytes < needed:
        raise ConfigError(f"transport.max_frame_bytes must be >= {needed} (the largest tensor frame this run sends), "
                          f"got {cfg.transport.max_frame_bytes}")
    if (run_dir / "config.toml").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; choose another run_id")
    if check_ports:
        _check_ports_free(cfg)
    try:
        for path in cleanup.segment_paths(cfg.run_dir):
            if cleanup.remove_stale_segment(path):
                print(f"hotprune: removed {path}, left by a run with no live process", file=sys.stderr)
    except cleanup.SegmentKept as exc:
        raise ConfigError(f"{exc}; choose another run_id") from None
    try:
        private.make_dirs(run_dir.parent, private.SHARED_DIR)
        run_dir.mkdir(mode=private.PRIVATE_DIR, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"runs_dir {cfg.runs_dir}: cannot create {run_dir}: {exc.strerror}") from None
    run_dir.chmod(private.PRIVATE_DIR)  # sockets and logs of a run are its user's only
    private.check(run_dir)  # one made beforehand (`hotprune experiments`) holds no link out of it
    private.make_dirs(socket_dir(run_dir), private.PRIVATE_DIR)
    if cfg.transport.kind == "tcp":
        keys = curve.keys_dir(run_dir)
        if not keys.exists():  # a key set copied in beforehand (multi-host) is kept
            curve.generate(keys)
        curve.load(keys)  # a bad copied-in set fails here, before any process starts
    private.make_dirs(run_dir / "logs", private.SHARED_DIR)
    cfg.run_uid = uuid.uuid4().hex  # this run's own, whatever the settings said: a copied config.toml carries one
    private.write_text(run_dir / "config.toml", to_toml(cfg))
    return run_dir


def _check_images(cfg: Config, spec: EnvSpec) -> None:
    """What a CNN run cannot do, one line each: SAC (its critics take observation and action as one flat
    vector), observation normalisation (frames are scaled in the network), conv layers that do not fit."""
    if cfg.algorithm == "sac":
        raise ConfigError(f"algorithm sac does not take image observations ({cfg.env_id}: {spec.image}); use ppo")
    if cfg.normalize_obs:
        raise ConfigError(f"normalize_obs must be false for image observations ({cfg.env_id}): the CNN scales "
                          "frames itself")
    try:
        cfg.network("actor", spec).conv.out_hw()
    except ValueError as exc:
        raise ConfigError(f"cnn.kernels: {exc}") from None


def check_resume(cfg: Config) -> None:
    """Before a stopped run goes on, every file it reads back is verified: its checkpoint, masks and
    policy are this run's (its uid), not corrupt and finite (hotprune.runs.artifacts.load_kept); its
    checkpoint fits the settings config.toml holds now and its epochs (check_checkpoint); its mask and
    init files are usable (hotprune.runs.tickets.check). ArtifactError, one line, if not."""
    for name in (CHECKPOINT, MASKS, POLICY):
        path = cfg.run_dir / name
        if path.exists():
            _, meta = artifacts.load_kept(path, cfg)
            if name == CHECKPOINT:
                artifacts.check_checkpoint(path, meta, cfg)
    tickets.check(cfg)
    check_device(cfg)


def check_device(cfg: Config) -> None:
    """device = cuda needs a CUDA device here (ConfigError, one line). Only then is torch imported: the
    supervisor never needs it, and auto falls back to the cpu in the trainer itself."""
    if cfg.device == "cuda":
        from hotprune.learning.device import resolve

        resolve(cfg.device)


def discard(run_dir: Path, made: bool) -> None:
    """Undo `prepare` after a start failed before any process ran, so the run id can be tried again:
    the whole directory if this start made it, else only what the start put in it (a directory
    made beforehand, e.g. by `hotprune experiments` with its console.txt, stays)."""
    if made:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in ("config.toml", cleanup.PID_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("logs", socket_dir(run_dir).name):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _check_replay_memory(cfg: Config, spec: EnvSpec) -> None:
    """SAC's replay buffer (float32 obs, next obs, action, reward, done per row) must fit in
    REPLAY_MEMORY_SHARE of the memory the machine has available now."""
    row = 4 * (2 * spec.obs_dim + spec.act_dim + 2)
    needed = cfg.replay_capacity * row
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024
    except (OSError, AttributeError):  # not Linux as we know it: nothing to check against
        return
    if needed > REPLAY_MEMORY_SHARE * available:
        most = int(REPLAY_MEMORY_SHARE * available // row)
        raise ConfigError(f"sac.buffer_size {cfg.sac.buffer_size:,} needs {needed / 2**30:.1f} GiB for this run "
                          f"({row} bytes a transition), more than {REPLAY_MEMORY_SHARE:.0%} of the "
                          f"{available / 2**30:.1f} GiB available; at most {most:,} here")


def _check_ports_free(cfg: Config) -> None:
    """With tcp, bind each port the run will listen on, as ZeroMQ will (SO_REUSEADDR: a port left
    in TIME_WAIT is free), so a busy port fails here and not after every process started."""
    if cfg.transport.kind != "tcp":
        return
    for name, endpoint in zip(SOCKETS, cfg.endpoints()):
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                raise ConfigError(f"transport.base_port: port {port} on {host} (the {name} socket) cannot be "
                                  f"bound: {exc.strerror}; choose another transport.base_port") from None


LATEST = "latest"
WORKERS_PER_CORE = 4  # more inference workers than this per core only fight over the CPU


def store_slot_size(cfg: Config) -> int:
    """A slot holds the run's dense actor: every later (pruned or smaller) version fits too."""
    shapes = run_shapes(cfg, env_spec(EnvSource.of(cfg)))
    return layout.payload_size({n: np.zeros(shape, np.float32) for n, shape in shapes.items()})


def largest_frame(cfg: Config) -> int:
    """Bytes of the largest single tensor any process of this run sends: an actor weight (and its
    gradient statistics) in a snapshot, a trajectory chunk's observations, or in teacher-student
    mode the observations a snapshot ships for distilling."""
    spec = env_spec(EnvSource.of(cfg))
    obs_dim = spec.obs_dim
    shapes = run_shapes(cfg, spec)
    weight = max(math.prod(shape) for shape in shapes.values()) * 4
    chunk_obs = (cfg.chunk_steps + 1) * cfg.envs_per_worker * obs_dim * 4
    distill_obs = min(cfg.pruning.distill_samples, cfg.epoch_samples) * obs_dim * 4 if cfg.distills else 0
    return max(weight, chunk_obs, distill_obs)


def point_latest(run_dir: Path) -> None:
    """runs_dir/latest -> the newest run (replaced atomically; a real directory of that name is left alone)."""
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        return
    tmp = run_dir.parent / f".{LATEST}.{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)
