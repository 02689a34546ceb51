"""A run directory: runs/<run_id>/ with config.toml, logs/, the private socket directory and, for a
tcp run, its CURVE keys (keys/); and runs/latest, a link to the newest run (`hotprune diagnose runs/latest`)."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.endpoints import socket_dir
from service.config import Config, ConfigError, to_toml
from service import metrics, transport_security
from service.envs import env_spec


def prepare(cfg: Config) -> Path:
    """Check what can only be checked against the machine, then create the run directory."""
    env_spec(cfg.env_id)  # unknown env ids fail here, before any process starts
    if cfg.tensorboard and not metrics.available():
        raise ConfigError("tensorboard = true needs TensorBoard: pip install -e '.[tensorboard]'")
    run_dir = cfg.run_dir
    try:
        cfg.endpoints()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cores = os.cpu_count() or 1
    if cfg.num_workers > WORKERS_PER_CORE * cores:
        raise ConfigError(f"num_workers must be <= {WORKERS_PER_CORE * cores} on this machine "
                          f"({WORKERS_PER_CORE} per core, {cores} cores), got {cfg.num_workers}")
    needed = largest_frame(cfg)
    if cfg.transport.max_frame_bytes < needed:
        raise ConfigError(f"transport.max_frame_bytes must be >= {needed} (the largest tensor frame this run sends), "
                          f"got {cfg.transport.max_frame_bytes}")
    if (run_dir / "config.toml").exists():
        raise ConfigError(f"run directory {run_dir} already holds a run; choose another run_id")
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"runs_dir {cfg.runs_dir}: cannot create {run_dir}: {exc.strerror}") from None
    run_dir.chmod(0o700)  # sockets and logs of a run are its user's only
    socket_dir(run_dir).mkdir(mode=0o700, exist_ok=True)
    if cfg.transport.kind == "tcp":
        keys = transport_security.keys_dir(run_dir)
        if not keys.exists():  # a key set copied in beforehand (multi-host) is kept
            transport_security.generate(keys)
        transport_security.load(keys)  # a bad copied-in set fails here, before any process starts
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg))
    _point_latest(run_dir)
    return run_dir


LATEST = "latest"
WORKERS_PER_CORE = 4  # more inference workers than this per core only fight over the CPU


def largest_frame(cfg: Config) -> int:
    """Bytes of the largest single tensor any process of this run sends: an actor weight (and its
    gradient statistics) in a snapshot, or a trajectory chunk's observations."""
    spec = env_spec(cfg.env_id)
    sizes = [spec.obs_dim, *cfg.ppo.hidden_sizes, spec.act_dim]
    weight = max(a * b for a, b in zip(sizes[:-1], sizes[1:])) * 4
    chunk_obs = (cfg.chunk_steps + 1) * cfg.envs_per_worker * spec.obs_dim * 4
    return max(weight, chunk_obs)


def _point_latest(run_dir: Path) -> None:
    """runs_dir/latest -> the newest run (replaced atomically; a real directory of that name is left alone)."""
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        return
    tmp = run_dir.parent / f".{LATEST}.{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)
