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

from hotprune.protocol.endpoints import SOCKETS, Endpoints, endpoints
from hotprune.protocol.store_layout import SEGMENT_PREFIX, SEGMENT_SUFFIX_LEN
from hotprune.algorithms import ALGORITHMS
from hotprune.pruning.criteria import DISTRIBUTIONS, METHODS, SCOPES, STRUCTURES
from hotprune.pruning.schedule import SCHEDULES


# the shared memory segment hotprune-<run_id>-<hash> is a file name: 255 bytes
MAX_RUN_ID = 255 - len(SEGMENT_PREFIX) - SEGMENT_SUFFIX_LEN
MAX_SEED = 2**32 - 1  # numpy's legacy bound; worker seeds add at most 1000 * (MAX_WORKERS + 1)
# A replay buffer takes at most this share of the machine's available memory (the rest is the run's).
REPLAY_MEMORY_SHARE = 0.5
PRUNING_TARGETS = ("actor", "critic")
# Keys renamed since: (section, key) -> the new top-level key. A run directory's config.toml holds every key
# under the name it had when written, so a run from before a rename still resumes and still makes tickets.
RENAMED = {("ppo", "input_bound"): "input_bound"}  # it bounds SAC's chunks and distillation observations too
MAX_WORKERS = 64  # processes on one machine: beyond this the supervisor's table is the wrong tool (rundir
# also holds it to 4 per core of the machine that starts the run)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def setting(default: Any, meaning: str) -> Any:
    """A config field and what it means, said once: `hotprune run --help` and the README's table are
    generated from it (`settings()`); its bounds are checked in `validate`."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": meaning})
    return field(default=default, metadata={"help": meaning})


@dataclass
class PPOConfig:
    """the PPO learner, as CleanRL's ppo.py"""

    learning_rate: float = setting(1e-3, "Adam's step size")
    anneal_lr: bool = setting(True, "decay the learning rate linearly towards 0 over the run")
    gamma: float = setting(0.99, "discount factor")
    gae_lambda: float = setting(0.95, "lambda of the generalized advantage estimate")
    update_epochs: int = setting(4, "passes over an epoch's samples in each PPO update")
    minibatches: int = setting(8, "minibatches per pass (advantages are normalised per minibatch)")
    clip_coef: float = setting(0.2, "PPO's clip of the probability ratio")
    ent_coef: float = setting(0.01, "weight of the entropy bonus")
    vf_coef: float = setting(0.5, "weight of the value loss")
    max_grad_norm: float = setting(0.5, "gradients are clipped to this global norm")
    hidden_sizes: list[int] = setting([64, 64], "hidden layer widths of actor and critic (tanh), e.g. 256,256")

    def minibatch_size(self, epoch_samples: int) -> int:
        """Samples in a minibatch of an epoch of `epoch_samples`."""
        return epoch_samples // self.minibatches


@dataclass
class SACConfig:
    """the SAC learner, as CleanRL's sac_continuous_action.py (algorithm = "sac")"""

    q_lr: float = setting(1e-3, "Adam's step size for the twin Q critics and the entropy temperature")
    policy_lr: float = setting(3e-4, "Adam's step size for the actor")
    gamma: float = setting(0.99, "discount factor")
    tau: float = setting(0.005, "target critics move this fraction of the way to the critics (Polyak averaging)")
    batch_size: int = setting(256, "transitions per gradient step, sampled uniformly from the replay buffer")
    buffer_size: int = setting(1_000_000, "replay buffer capacity in transitions (a ring; at most the run's "
                                          "length is allocated, and at most half the machine's free memory)")
    learning_starts: int = setting(5000, "env steps before the first gradient step; until then the workers act "
                                         "uniformly at random")
    utd: float = setting(1.0, "gradient steps per env step (update-to-data ratio): an epoch takes "
                              "round(utd * samples) of them")
    policy_frequency: int = setting(2, "the actor (and temperature) steps every N critic steps, N times "
                                       "(TD3's delayed update)")
    target_network_frequency: int = setting(1, "the target critics move every N critic steps")
    alpha: float = setting(0.2, "entropy coefficient when autotune is false")
    autotune: bool = setting(True, "tune the entropy coefficient towards a target entropy of -act_dim")
    hidden_sizes: list[int] = setting([256, 256], "hidden layer widths of actor and critics (ReLU)")

    def minibatch_size(self, epoch_samples: int) -> int:
        """Samples in a gradient step: a replay batch, whatever the epoch."""
        return self.batch_size

    def replay_capacity(self, run_samples: int) -> int:
        """Replay buffer rows: buffer_size, but never more than the run's env steps."""
        return min(self.buffer_size, run_samples)


@dataclass
class PruningConfig:
    """what the compressor prunes, how and when"""

    method: str = setting("magnitude", "none: the dense baseline; fixed: the masks of mask_file, no schedule; "
                                       "magnitude abs(w); taylor abs(w * g); gradient g; g is the mean abs(dL/dw) "
                                       "over recent minibatches")
    mask_file: str = setting("", "keep-masks in force from the first step, in training and inference, never "
                                 "changed (a lottery ticket: hotprune lth create-mask); given without a method, it "
                                 "makes the method fixed, which needs it")
    structure: str = setting("weight", "weight: single weights; neuron: whole hidden units, which the workers then "
                                       "run as smaller matrices")
    target_sparsity: float = setting(0.8, "fraction of prunable weights (neuron: of hidden units) removed, exactly "
                                          "round(s * n) per scope")
    start_epoch: int = setting(3, "the first compression is due from the snapshot of this epoch; a due step is "
                                  "served by the newest snapshot at or past its epoch, never skipped")
    every: int = setting(10, "then one compression every K epochs")
    schedule: str = setting("constant", "constant: the target at every step (masks are nested: it prunes once); "
                                        "cubic (Zhu & Gupta 2017): from initial_sparsity at start_epoch to the "
                                        "target at end_epoch; a step to 0% is left out")
    initial_sparsity: float = setting(0.0, "cubic: the sparsity at start_epoch")
    end_epoch: int = setting(0, "cubic: the epoch the target is reached (0: half the run)")
    scope: str = setting("global", "global: one threshold over all prunable layers; layer: each layer its own count")
    distribution: str = setting("uniform", "layer scope: uniform (each layer to the target) or erk "
                                           "(Erdos-Renyi-kernel, RigL: denser small layers, same total)")
    prune_output_layer: bool = setting(False, "prune the output layer's weights too (not with neuron); biases are "
                                              "never pruned")
    regrow: bool = setting(False, "false: masks are nested, a pruned weight stays pruned; true: each compression "
                                  "re-selects, and revived weights restart at zero with no optimizer history")
    num_gradient_batches: int = setting(32, "taylor, gradient: g is averaged over the last N minibatches of the "
                                            "trainer's own updates (no extra passes; SAC: replay batches, of the "
                                            "actor loss for the actor, of the critic loss for the critics)")
    gradient_batch_size: int = setting(0, "samples in each such minibatch: 0 or the algorithm's own (PPO's "
                                          "minibatch, SAC's batch_size)")
    targets: list[str] = setting(["actor"], "what is pruned: actor; or actor,critic (SAC, both pruned): the trainer "
                                            "also prunes its critics, at each step's sparsity, with its own masks")
    delay_s: float = setting(0.0, "testing: the compressor sleeps this long per snapshot, to try the service under "
                                  "a slow compressor")
    distill_steps: int = setting(32, "teacher-student: Adam steps per version that bring the pruned student the "
                                     "workers run to the dense teacher (KL, mask fixed); 0: the student is the "
                                     "teacher masked, untrained")
    distill_lr: float = setting(1e-3, "teacher-student: the student's Adam step size")
    distill_samples: int = setting(1024, "teacher-student: observations of its last epoch the trainer ships with "
                                         "each snapshot for distilling")


@dataclass
class TransportConfig:
    """the sockets between the processes"""

    kind: str = setting("ipc", "ipc: sockets in the run's private directory; tcp: ports of one host, always "
                                   "CURVE-encrypted and authenticated with the run's keys")
    host: str = setting("127.0.0.1", "tcp: the IPv4 address to listen on: loopback, or 0.0.0.0 or a LAN "
                                    "address to listen beyond it")
    base_port: int = setting(5550, "tcp: the first of 5 consecutive ports (one per socket)")
    max_frame_bytes: int = setting(64 * 1024 * 1024, "a received frame larger than this is refused")


@dataclass
class SupervisorConfig:
    """starting, watching, restarting and stopping the processes"""

    stop_grace_s: float = setting(10.0, "how long the supervisor waits for processes to stop before SIGKILL")
    start_timeout_s: float = setting(120.0, "how long a worker waits for the weight store to appear")
    heartbeat_s: float = setting(5.0, "every process logs a heartbeat event (proof of life, counters) this often")
    hang_timeout_s: float = setting(60.0, "a process that sends no liveness ping for this long (frozen, deadlocked) "
                                          "is killed and restarted; start_timeout_s before its first ping; 0: off")
    max_restarts: int = setting(3, "a crashed or hung process is restarted unless it has had this many restarts "
                                   "within restart_window_s; then the run stops, exit 1 (0: any crash ends the run)")
    restart_window_s: float = setting(300.0, "the window max_restarts counts in")
    restart_backoff_s: float = setting(1.0, "wait before a restart, doubled for each restart in the window "
                                            "(at most 30 s)")


@dataclass
class Config:
    env_id: str = setting("CartPole-v1", "any gymnasium id with a flat Box observation and Discrete or flat Box "
                                         "actions")
    algorithm: str = setting("ppo", "the learner: ppo (on-policy, any action space) or sac (off-policy from a "
                                    "replay buffer, Box actions)")
    preset: str = setting("auto", "tuned settings under yours: auto: the shipped preset of env_id (ppo) or "
                                  "<env_id>-<algorithm>, if any (hotprune presets); none: the built-in defaults; or "
                                  "a preset's name")
    mode: str = setting("async", "async: training never waits for the compressor or the workers; sync: each epoch "
                                 "trains on data of the newest version only: every worker sends its share of "
                                 "the epoch, then pauses until the next version is in the store")
    max_policy_lag: int = setting(4, "async: the trainer drops chunks more than this many versions older than its "
                                     "policy (counted as dropped_stale); the workers' flow control keeps the "
                                     "lag at 1-2 unless the compressor falls behind")
    prune_training_model: bool = setting(True, "true: both pruned (the masks go back to the trainer); false: "
                                               "teacher-student (the trainer stays dense)")
    seed: int = setting(1, "random seed of the trainer; worker i adds 1000 * (i + 1)")
    epochs: int = setting(150, "updates to train for (a run's config.toml holds the number total_steps gave)")
    total_steps: int = setting(0, "when > 0, the length in env samples instead: epochs = "
                                  "ceil(total_steps / samples_per_epoch)")
    samples_per_epoch: int = setting(2048, "env samples per update (PPO's batch; SAC's between two snapshots), at "
                                           "least (whole chunks; in sync mode the same number of chunks from every "
                                           "worker)")
    num_workers: int = setting(2, "inference worker processes")
    envs_per_worker: int = setting(4, "environments in each worker's vector env")
    chunk_steps: int = setting(64, "vector steps per trajectory chunk a worker sends")
    runs_dir: str = setting("runs", "where run directories go: runs_dir/run_id")
    run_id: str = setting("", "empty: a fresh id from env, mode, pruning, seed and the time; a run's config.toml "
                              "leaves it out (the directory's name is the id), so --config of it starts a new run")
    tensorboard: bool = setting(False, "also write TensorBoard event files to the run directory's tensorboard/ "
                                       "(CleanRL's tags and sparsity/*, async/policy_lag, against env steps); "
                                       "needs the tensorboard extra: pip install -e \".[tensorboard]\"")
    normalize_obs: bool = setting(False, "normalise observations by running mean and variance (clipped to +-10), "
                                         "statistics kept by the trainer and shipped with the weights "
                                         "(obs_norm.mean, obs_norm.var), so workers and policy files normalise alike")
    normalize_reward: bool = setting(False, "the trainer divides rewards by the running std of the discounted "
                                            "return (clipped to +-10), as gymnasium's NormalizeReward; returns "
                                            "reported stay the environment's own")
    init_file: str = setting("", "the actor's starting weights, and the critic's if the file has them (SAC: the "
                                 "twin critics, and their targets or copies of them; weights/epoch-K.safetensors, "
                                 "or any policy file); empty: a fresh init from seed")
    keep_weights_every: int = setting(0, "write actor and critic to weights/epoch-K.safetensors at epoch 0, every N "
                                         "epochs and the last (what hotprune lth rewinds to and prunes); 0: never")
    keep_transitions: int = setting(0, "at the end, write the last N epochs' trajectory chunks to "
                                       "transitions.safetensors (PPO's trajectories; SAC's newest replay-buffer rows: "
                                       "what hotprune lth create-mask's gradient criteria read); 0: none")
    checkpoint_every: int = setting(1, "the trainer checkpoints every N epochs (and at epoch 0 and the last) to "
                                       "checkpoint.safetensors; a restarted trainer redoes the epochs since")
    input_bound: float = setting(1e6, "a trajectory chunk (or a teacher-student snapshot's observations) whose "
                                      "observations, rewards or log-probabilities exceed +-this is rejected")
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sac: SACConfig = field(default_factory=SACConfig)
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
    def chunks_per_worker(self) -> int:
        """A worker's share of an epoch, in chunks: how many of its chunks may be in flight to the
        trainer at once (so the pipes hold about one epoch, whatever the sizes), and in sync mode
        how many it sends of each version before it pauses for the next."""
        return math.ceil(math.ceil(self.samples_per_epoch / self.chunk_samples) / self.num_workers)

    @property
    def epoch_samples(self) -> int:
        """Samples an epoch trains on: whole chunks (async), the same number from every worker (sync)."""
        if self.mode == "sync":
            return self.num_workers * self.chunks_per_worker * self.chunk_samples
        return math.ceil(self.samples_per_epoch / self.chunk_samples) * self.chunk_samples

    @property
    def algo(self) -> PPOConfig | SACConfig:
        """The run's algorithm's own section (its hidden sizes, gamma, minibatch, ...): `ppo` or `sac`."""
        return getattr(self, self.algorithm)

    @property
    def replay_capacity(self) -> int:
        """SAC's replay buffer rows for this run."""
        return self.sac.replay_capacity(self.total_epochs * self.epoch_samples)

    @property
    def random_versions(self) -> int:
        """SAC: the policy versions the trainer publishes before its first gradient step (it takes one
        from the first epoch that brings its samples to learning_starts on). While they run, the
        workers act uniformly at random instead (CleanRL's warm-up): the worker knows the version it
        runs and nothing of the trainer's step count, and this needs no new field in the store."""
        return math.ceil(self.sac.learning_starts / self.epoch_samples) if self.algorithm == "sac" else 0

    @property
    def total_epochs(self) -> int:
        """The run's length (load_config also writes it into `epochs`, so a run's config.toml says it)."""
        if self.total_steps > 0:
            return math.ceil(self.total_steps / self.epoch_samples)
        return self.epochs

    def endpoints(self) -> Endpoints:
        """This run's socket endpoints (ValueError if the transport settings cannot work here)."""
        t = self.transport
        return endpoints(self.run_dir, t.kind, t.host, t.base_port)

    @property
    def distills(self) -> bool:
        """Teacher-student mode with a pruning method and distillation steps: the compressor trains
        the student the workers run (hotprune.learning.distill)."""
        return not self.prune_training_model and self.pruning.method != "none" and self.pruning.distill_steps > 0

    @property
    def pruning_end_epoch(self) -> int:
        return self.pruning.end_epoch or max(self.pruning.start_epoch + 1, self.total_epochs // 2)


CHOICES = {
    "algorithm": tuple(ALGORITHMS),
    "mode": ("async", "sync"),
    "pruning.method": METHODS,
    "pruning.structure": STRUCTURES,
    "pruning.schedule": SCHEDULES,
    "pruning.scope": SCOPES,
    "pruning.distribution": DISTRIBUTIONS,
    "transport.kind": ("ipc", "tcp"),
}


PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> dict[str, Path]:
    """The shipped presets by name (an env id): tuned settings per environment."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.toml"))}


def _with_preset(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (the file and the overrides) over its preset, as RL Zoo does: the env's tuned settings
    unless a key is given. The run's length is one thing: given `epochs` or `total_steps`, the
    preset's length does not apply. `preset` is resolved to a name or "none"."""
    name = data.get("preset", "auto")
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a string (auto, none or a preset's name), got {name!r}")
    shipped = presets()
    if name == "auto":  # env_id's preset for its algorithm: <env_id> for PPO, <env_id>-<algorithm> for others
        env, algorithm = data.get("env_id", Config.env_id), data.get("algorithm", Config.algorithm)
        name = f"{env}-{algorithm}" if algorithm != Config.algorithm else env
        name = name if isinstance(env, str) and isinstance(algorithm, str) and name in shipped else "none"
    if name == "none":
        return {**data, "preset": "none"}
    if name not in shipped:
        raise ConfigError(f"unknown preset {name!r} (shipped: {', '.join(shipped)}; or auto, none)")
    base = tomllib.loads(shipped[name].read_text(encoding="utf-8"))
    if data.get("env_id", base["env_id"]) != base["env_id"]:
        raise ConfigError(f"preset {name} is for {base['env_id']}, not env_id {data['env_id']}")
    preset_algorithm = base.get("algorithm", Config.algorithm)
    if data.get("algorithm", preset_algorithm) != preset_algorithm:
        raise ConfigError(f"preset {name} is for algorithm {preset_algorithm}, not algorithm {data['algorithm']}")
    if "epochs" in data or "total_steps" in data:
        base = {k: v for k, v in base.items() if k not in ("epochs", "total_steps")}
    return {**_merged(base, data), "preset": name}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), with_preset: bool = True) -> Config:
    """Defaults, then env_id's preset, then the TOML file, then `key=value` overrides; resolved (the
    epochs total_steps gives, a fresh run_id when none is named) and validated. A run's own
    config.toml holds every key: it is read `with_preset=False`, so it never depends on the presets
    shipped later."""
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
    given = [_parse_override(item)[0] for item in overrides]
    for length, other in (("epochs", "total_steps"), ("total_steps", "epochs")):
        if length in given and other not in given:  # a length given replaces the file's (and the preset's)
            data.pop(other, None)
    for item in overrides:
        key, value = _parse_override(item)
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a section")
        node[leaf] = value
    data = _with_preset(data) if with_preset else data
    pruning = data.get("pruning")
    if isinstance(pruning, dict) and pruning.get("mask_file") and "method" not in pruning:
        data = {**data, "pruning": {**pruning, "method": "fixed"}}  # a mask file alone means: prune with it
    config = _build(Config, _renamed(data), "")
    config.epochs = config.total_epochs
    if not config.run_id:
        stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        config.run_id = f"{describe(config)}-{stamp}"
        try:
            config.endpoints()
        except ValueError:  # ipc paths under a deep runs_dir would be too long: the short form
            config.run_id = stamp
    validate(config)
    return config


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the keys of RENAMED under their new names (the new name wins if both are given)."""
    for (section, key), new in RENAMED.items():
        old = data.get(section)
        if isinstance(old, dict) and key in old:
            data = {new: old[key], **data, section: {k: v for k, v in old.items() if k != key}}
    return data


def describe(c: Config) -> str:
    """What a run is, for its generated id: env, algorithm (unless PPO), mode, placement, pruning, seed;
    e.g. cartpole-async-bp-mag80-s1, pendulum-sac-async-bp-mag80-s1 (bp: both pruned, ts: teacher-student;
    an n after the method: neurons). Short on purpose: ipc socket paths under the run directory are
    capped at 107 bytes."""
    env = re.sub(r"[^a-z0-9]+", "-", re.sub(r"-v\d+$", "", c.env_id.lower())).strip("-")[:16] or "env"
    p = c.pruning
    pruning = "dense" if p.method == "none" else "fixed" if p.method == "fixed" else \
        f"{p.method[:3]}{'n' if p.structure == 'neuron' else ''}{round(p.target_sparsity * 100)}"
    algorithm = "" if c.algorithm == Config.algorithm else f"{c.algorithm}-"
    return f"{env}-{algorithm}{c.mode}-{'bp' if c.prune_training_model else 'ts'}-{pruning}-s{c.seed}"


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    return key, _literal(raw)


def _literal(raw: str) -> Any:
    """A TOML literal (number, bool, list, quoted string); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


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
    """`value` as a `kind`, in the forms people write: an int where a float belongs, an integral float
    where an int belongs (total_steps=1e5, as RL Zoo writes step counts), a comma list (256,256)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int:
        value = _integral(value)
    if kind == list[str]:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return items
        raise ConfigError(f"{key} must be a list of names (e.g. actor,critic or [\"actor\", \"critic\"]), "
                          f"got {value!r}")
    if kind == list[int]:
        items = [_literal(v) for v in value.split(",")] if isinstance(value, str) else value
        if isinstance(items, list):
            items = [_integral(v) for v in items]
            if all(_is_int(v) for v in items):
                return items
        raise ConfigError(f"{key} must be a list of integers (e.g. 64,64 or [64, 64]), got {value!r}")
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    return value


def _integral(value: Any) -> Any:
    """1e5 -> 100000; anything else as it is (1.5 stays a float, and is refused where an int belongs)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(c: Config) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_lookup(c, key)!r}")

    for key, allowed in CHOICES.items():
        need(_lookup(c, key) in allowed, key, "must be one of " + "|".join(allowed))
    need(bool(c.env_id), "env_id", "must name a gymnasium environment")
    need(c.epochs >= 1, "epochs", "must be >= 1")
    need(c.total_steps >= 0, "total_steps", "must be >= 0")
    need(c.max_policy_lag >= 1, "max_policy_lag", "must be >= 1 (lag 0 only: mode=sync)")
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
    need(len(p.hidden_sizes) >= 1 and all(h >= 1 for h in p.hidden_sizes), "ppo.hidden_sizes", "must be positive sizes")
    a = c.sac
    need(a.q_lr > 0, "sac.q_lr", "must be > 0")
    need(a.policy_lr > 0, "sac.policy_lr", "must be > 0")
    need(0 < a.gamma <= 1, "sac.gamma", "must be in (0, 1]")
    need(0 < a.tau <= 1, "sac.tau", "must be in (0, 1]")
    need(a.batch_size >= 1, "sac.batch_size", "must be >= 1")
    need(a.buffer_size >= a.batch_size, "sac.buffer_size", "must be >= sac.batch_size")
    need(a.learning_starts >= 0, "sac.learning_starts", "must be >= 0")
    need(0 < a.utd <= 64, "sac.utd", "must be in (0, 64]")
    need(a.policy_frequency >= 1, "sac.policy_frequency", "must be >= 1")
    need(a.target_network_frequency >= 1, "sac.target_network_frequency", "must be >= 1")
    need(a.alpha >= 0, "sac.alpha", "must be >= 0")
    need(len(a.hidden_sizes) >= 1 and all(h >= 1 for h in a.hidden_sizes), "sac.hidden_sizes", "must be positive sizes")
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
    need((q.method == "fixed") == bool(q.mask_file), "pruning.mask_file",
         "is what method fixed prunes with, and only it (a mask file given without a method makes it fixed)")
    need(c.keep_weights_every >= 0, "keep_weights_every", "must be >= 0")
    need(c.keep_transitions >= 0, "keep_transitions", "must be >= 0")
    need(q.num_gradient_batches >= 1, "pruning.num_gradient_batches", "must be >= 1")
    minibatch = c.algo.minibatch_size(c.epoch_samples)
    need(q.gradient_batch_size in (0, minibatch), "pruning.gradient_batch_size",
         f"must be 0 or {'SAC' if c.algorithm == 'sac' else 'PPO'}'s minibatch size {minibatch} (g comes from the "
         "trainer's own minibatches)")
    need(q.targets in (["actor"], list(PRUNING_TARGETS)), "pruning.targets",
         "must be [\"actor\"] or [\"actor\", \"critic\"]")
    need("critic" not in q.targets or (c.algorithm == "sac" and c.prune_training_model), "pruning.targets",
         "may hold critic only with algorithm=sac and prune_training_model=true (the critics are the trainer's)")
    need(q.delay_s >= 0, "pruning.delay_s", "must be >= 0")
    need(q.distill_steps >= 0, "pruning.distill_steps", "must be >= 0")
    need(q.distill_lr > 0, "pruning.distill_lr", "must be > 0")
    need(q.distill_samples >= 1, "pruning.distill_samples", "must be >= 1")
    t = c.transport
    last_base = 65536 - len(SOCKETS)  # the run's sockets take consecutive ports from base_port
    need(1024 <= t.base_port <= last_base, "transport.base_port", f"must be in [1024, {last_base}]")
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
    need(c.input_bound > 0, "input_bound", "must be > 0")


def _lookup(c: Config, key: str) -> Any:
    node: Any = c
    for part in key.split("."):
        node = getattr(node, part)
    return node


def to_toml(c: Config) -> str:
    """The resolved configuration as TOML: what a run directory keeps as config.toml.

    Without run_id: a run directory's name is its id (every process takes it from there), and a
    config file that named a taken run would refuse to start; so `--config runs/<id>/config.toml`
    starts a new run with the same settings."""
    top, sections = [], []
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if dataclasses.is_dataclass(value):
            body = "\n".join(f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(value).items())
            sections.append(f"[{f.name}]\n{body}\n")
        elif f.name != "run_id":
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



@dataclass(frozen=True)
class Setting:
    key: str  # dotted: pruning.target_sparsity
    kind: str  # int, float, bool, str, list[int], or the choices: {async,sync}
    default: str  # as TOML writes it
    meaning: str


def settings() -> list[tuple[str, str, list[Setting]]]:
    """Every key with its type, default and meaning, by section: (name, what it is, its keys), the
    top-level keys first (name ""). What `hotprune run --help` and the README's table show."""
    defaults = Config()
    top, sections = [], []
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows = [_setting(f"{f.name}.{g.name}", type(value), g, getattr(value, g.name))
                    for g in dataclasses.fields(value)]
            sections.append((f.name, type(value).__doc__, rows))
        else:
            top.append(_setting(f.name, Config, f, value))
    return [("", "the run", top), *sections]


def _setting(key: str, owner: type, f: dataclasses.Field, default: Any) -> Setting:
    kind = get_type_hints(owner)[f.name]
    if key in CHOICES:
        name = "{" + ",".join(CHOICES[key]) + "}"
    else:  # list[int] is no type: its str is its name
        name = kind.__name__ if isinstance(kind, type) else str(kind)
    return Setting(key, name, _toml_value(default), f.metadata["help"])
