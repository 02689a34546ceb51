"""Run configuration: every default built in, a TOML file and `--set key=value` on top, checked at start.

The top-level keys `env_id`, `mode` and `prune_training_model` are a stable interface: users' scripts
set them. A bad value fails with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from protocol.endpoints import Endpoints, endpoints
from protocol.store_layout import SEGMENT_PREFIX
from service.criteria import DISTRIBUTIONS, METHODS, SCOPES, STRUCTURES
from service.schedule import SCHEDULES


MAX_RUN_ID = 255 - len(SEGMENT_PREFIX)  # the shared memory segment hotprune-<run_id> is a file name: 255 bytes
MAX_SEED = 2**32 - 1  # numpy's legacy bound; worker seeds add at most 1000 * (MAX_WORKERS + 1)
MAX_WORKERS = 64  # processes on one machine: beyond this the supervisor's table is the wrong tool (rundir
# also holds it to 4 per core of the machine that starts the run)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass
class PPOConfig:
    learning_rate: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatches: int = 8
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    input_bound: float = 1e6  # chunks whose observations, rewards or log-probs exceed +-this are rejected


@dataclass
class PruningConfig:
    method: str = "magnitude"  # none | a criterion of service.criteria: magnitude |w|, taylor |w*g|, gradient g
    structure: str = "weight"  # weight (single weights) | neuron (whole hidden units, smaller tensors)
    target_sparsity: float = 0.8  # fraction of prunable weights (neuron: of hidden units) removed
    start_epoch: int = 3  # first compression, due from the snapshot of this epoch
    every: int = 10  # then every K epochs
    schedule: str = "constant"  # constant | cubic (Zhu & Gupta 2017)
    initial_sparsity: float = 0.0  # cubic: sparsity at start_epoch
    end_epoch: int = 0  # cubic: epoch the target is reached (0: half the run)
    scope: str = "global"  # global (one threshold) | layer (each layer its own count)
    distribution: str = "uniform"  # layer scope: uniform (each layer to the target) | erk (Erdos-Renyi-kernel)
    prune_output_layer: bool = False
    regrow: bool = False  # false: masks are nested, a pruned weight stays pruned; true: each compression re-selects
    num_gradient_batches: int = 32  # taylor / gradient: g = mean |dL/dw| over the last N PPO minibatches
    gradient_batch_size: int = 0  # samples per such minibatch: 0 or PPO's minibatch size (g needs no extra pass)
    delay_s: float = 0.0  # testing: the compressor sleeps this long per snapshot (a slow compressor)


@dataclass
class TransportConfig:
    kind: str = "ipc"  # ipc | tcp
    host: str = "127.0.0.1"
    base_port: int = 5550
    max_frame_bytes: int = 64 * 1024 * 1024


@dataclass
class SupervisorConfig:
    stop_grace_s: float = 10.0  # after training ends or on a stop signal, before SIGKILL
    start_timeout_s: float = 120.0  # how long a worker waits for the weight store to appear
    heartbeat_s: float = 5.0  # every process logs a `heartbeat` (proof of life, counters) this often
    hang_timeout_s: float = 60.0  # a process silent this long (no liveness ping) is hung: killed and restarted
    max_restarts: int = 3  # restarts allowed per process within restart_window_s; 0: any crash ends the run
    restart_window_s: float = 300.0
    restart_backoff_s: float = 1.0  # wait before a restart, doubled per restart in the window (at most 30 s)


@dataclass
class Config:
    env_id: str = "CartPole-v1"
    mode: str = "async"  # async | sync
    prune_training_model: bool = True  # true: both pruned; false: teacher-student
    seed: int = 1
    epochs: int = 150
    total_steps: int = 0  # when > 0, sets epochs = ceil(total_steps / samples_per_epoch)
    samples_per_epoch: int = 2048
    num_workers: int = 2
    envs_per_worker: int = 4
    chunk_steps: int = 64  # vector steps per trajectory chunk
    runs_dir: str = "runs"
    run_id: str = ""  # empty: a fresh id from the time
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard extra)
    checkpoint_every: int = 1  # the trainer checkpoints every N epochs (and at epochs 0 and the last)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    @property
    def chunk_samples(self) -> int:
        return self.chunk_steps * self.envs_per_worker

    @property
    def minibatch_size(self) -> int:
        """Samples in a PPO minibatch (an epoch collects whole chunks)."""
        epoch_samples = math.ceil(self.samples_per_epoch / self.chunk_samples) * self.chunk_samples
        return epoch_samples // self.ppo.minibatches

    @property
    def total_epochs(self) -> int:
        if self.total_steps > 0:
            return math.ceil(self.total_steps / self.samples_per_epoch)
        return self.epochs

    def endpoints(self) -> Endpoints:
        """This run's socket endpoints (ValueError if the transport settings cannot work here)."""
        t = self.transport
        return endpoints(self.run_dir, t.kind, t.host, t.base_port)

    @property
    def pruning_end_epoch(self) -> int:
        return self.pruning.end_epoch or max(self.pruning.start_epoch + 1, self.total_epochs // 2)


CHOICES = {
    "mode": ("async", "sync"),
    "pruning.method": METHODS,
    "pruning.structure": STRUCTURES,
    "pruning.schedule": SCHEDULES,
    "pruning.scope": SCOPES,
    "pruning.distribution": DISTRIBUTIONS,
    "transport.kind": ("ipc", "tcp"),
}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the TOML file, then `key=value` overrides; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for item in overrides:
        key, value = _parse_override(item)
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a section")
        node[leaf] = value
    config = _build(Config, data, "")
    if not config.run_id:
        stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        config.run_id = f"{describe(config)}-{stamp}"
        try:
            config.endpoints()
        except ValueError:  # ipc paths under a deep runs_dir would be too long: the short form
            config.run_id = stamp
    validate(config)
    return config


def describe(c: Config) -> str:
    """What a run is, for its generated id: env, mode, placement, pruning, seed; e.g.
    cartpole-async-bp-mag80-s1 (bp: both pruned, ts: teacher-student; an n after the method: neurons).
    Short on purpose: ipc socket paths under the run directory are capped at 107 bytes."""
    env = re.sub(r"[^a-z0-9]+", "-", re.sub(r"-v\d+$", "", c.env_id.lower())).strip("-")[:16] or "env"
    p = c.pruning
    pruning = "dense" if p.method == "none" else \
        f"{p.method[:3]}{'n' if p.structure == 'neuron' else ''}{round(p.target_sparsity * 100)}"
    return f"{env}-{c.mode}-{'bp' if c.prune_training_model else 'ts'}-{pruning}-s{c.seed}"


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:  # a TOML literal (number, bool, list, quoted string); anything else is a bare string
        return key, tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw.strip()


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')} must be a section")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        key, kind = prefix + name, hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, key + ".")
        else:
            values[name] = _coerce(key, value, kind)
    return cls(**values)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind == list[int]:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value
        raise ConfigError(f"{key} must be a list of integers, got {value!r}")
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return value


def validate(c: Config) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_lookup(c, key)!r}")

    for key, allowed in CHOICES.items():
        need(_lookup(c, key) in allowed, key, "must be one of " + "|".join(allowed))
    need(bool(c.env_id), "env_id", "must name a gymnasium environment")
    need(c.epochs >= 1, "epochs", "must be >= 1")
    need(c.total_steps >= 0, "total_steps", "must be >= 0")
    need(1 <= c.num_workers <= MAX_WORKERS, "num_workers", f"must be in [1, {MAX_WORKERS}]")
    need(c.envs_per_worker >= 1, "envs_per_worker", "must be >= 1")
    need(c.chunk_steps >= 1, "chunk_steps", "must be >= 1")
    need(c.samples_per_epoch >= c.chunk_samples, "samples_per_epoch", f"must be >= one chunk ({c.chunk_samples})")
    need(0 <= c.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]")
    need(all(ch.isalnum() or ch in "-_." for ch in c.run_id) and not c.run_id.startswith("."), "run_id",
         "may hold only letters, digits, - _ . and must not start with .")
    need(c.run_id != "latest", "run_id", "must not be latest (runs_dir/latest links to the newest run)")
    need(len(c.run_id) <= MAX_RUN_ID, "run_id", f"must be at most {MAX_RUN_ID} characters")
    p = c.ppo
    need(p.learning_rate > 0, "ppo.learning_rate", "must be > 0")
    need(0 < p.gamma <= 1, "ppo.gamma", "must be in (0, 1]")
    need(0 <= p.gae_lambda <= 1, "ppo.gae_lambda", "must be in [0, 1]")
    need(p.update_epochs >= 1, "ppo.update_epochs", "must be >= 1")
    # Advantages are normalised per minibatch: a minibatch needs two samples for a standard deviation.
    need(1 <= p.minibatches <= c.samples_per_epoch // 2, "ppo.minibatches", "must be in [1, samples_per_epoch / 2]")
    need(p.clip_coef > 0, "ppo.clip_coef", "must be > 0")
    need(p.ent_coef >= 0, "ppo.ent_coef", "must be >= 0")
    need(p.vf_coef >= 0, "ppo.vf_coef", "must be >= 0")
    need(p.max_grad_norm > 0, "ppo.max_grad_norm", "must be > 0")
    need(p.input_bound > 0, "ppo.input_bound", "must be > 0")
    need(len(p.hidden_sizes) >= 1 and all(h >= 1 for h in p.hidden_sizes), "ppo.hidden_sizes", "must be positive sizes")
    q = c.pruning
    need(0 <= q.target_sparsity < 1, "pruning.target_sparsity", "must be in [0, 1)")
    need(0 <= q.initial_sparsity <= q.target_sparsity, "pruning.initial_sparsity", "must be in [0, target_sparsity]")
    need(q.start_epoch >= 1, "pruning.start_epoch", "must be >= 1")
    need(q.every >= 1, "pruning.every", "must be >= 1")
    need(q.end_epoch == 0 or q.end_epoch > q.start_epoch, "pruning.end_epoch", "must be 0 or > start_epoch")
    need(q.distribution == "uniform" or (q.scope == "layer" and q.structure == "weight"), "pruning.distribution",
         "erk needs pruning.scope=layer and pruning.structure=weight")
    need(not (q.prune_output_layer and q.structure == "neuron"), "pruning.prune_output_layer",
         "must be false with pruning.structure=neuron (output units are the actions)")
    need(not (q.regrow and q.structure == "neuron"), "pruning.regrow",
         "must be false with pruning.structure=neuron (a revived unit has no weights in or out: it cannot learn)")
    need(q.num_gradient_batches >= 1, "pruning.num_gradient_batches", "must be >= 1")
    minibatch = c.minibatch_size
    need(q.gradient_batch_size in (0, minibatch), "pruning.gradient_batch_size",
         f"must be 0 or PPO's minibatch size {minibatch} (g comes from the trainer's own minibatches)")
    need(q.delay_s >= 0, "pruning.delay_s", "must be >= 0")
    t = c.transport
    need(1024 <= t.base_port <= 65535 - 4, "transport.base_port", "must be in [1024, 65531]")
    need(t.max_frame_bytes >= 1024, "transport.max_frame_bytes", "must be >= 1024")
    need(c.supervisor.stop_grace_s > 0, "supervisor.stop_grace_s", "must be > 0")
    need(c.supervisor.start_timeout_s > 0, "supervisor.start_timeout_s", "must be > 0")
    need(c.supervisor.heartbeat_s > 0, "supervisor.heartbeat_s", "must be > 0")
    need(c.supervisor.hang_timeout_s == 0 or c.supervisor.hang_timeout_s >= 1, "supervisor.hang_timeout_s",
         "must be 0 (off) or >= 1")
    need(0 <= c.supervisor.max_restarts <= 100, "supervisor.max_restarts", "must be in [0, 100]")
    need(c.supervisor.restart_window_s > 0, "supervisor.restart_window_s", "must be > 0")
    need(0 <= c.supervisor.restart_backoff_s <= 30, "supervisor.restart_backoff_s", "must be in [0, 30]")
    need(c.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")


def _lookup(c: Config, key: str) -> Any:
    node: Any = c
    for part in key.split("."):
        node = getattr(node, part)
    return node


def to_toml(c: Config) -> str:
    """The resolved configuration as TOML (what a run directory keeps as config.toml)."""
    top, sections = [], []
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if dataclasses.is_dataclass(value):
            body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(value).items())
            sections.append(f"[{f.name}]\n{body}\n")
        else:
            top.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(top) + "\n\n" + "\n".join(sections)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
