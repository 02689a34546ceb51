"""Run configuration: every default built in, a TOML file and `--set key=value` on top, checked at start.

Each key is declared once, on its field: type, default, meaning and what it allows (choices drawn from
the registry that implements them, bounds, a few named rules). The checks of single keys, `hotprune run
--help` and docs/settings.md's table are all made from those declarations; only rules between keys are
written by hand (`validate`). A bad value fails with one line naming the key, the value and what is
allowed; a misspelled key, with the keys it is closest to. `load_config_with_sources` also says where
each value came from (default, preset, file, --set).

The top-level keys `env_id`, `mode` and `prune_training_model` are a stable interface: users' scripts
set them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import secrets
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, get_type_hints

from hotprune.protocol.endpoints import SOCKETS, TRANSPORTS, Endpoints, endpoints
from hotprune.protocol.store_layout import NODE_SUFFIX_LEN, SEGMENT_PREFIX, SEGMENT_SUFFIX_LEN
from hotprune.algorithms import ACTIVATIONS, ALGORITHMS
from hotprune.pruning.criteria import CRITIC_DISTRIBUTIONS, DISTRIBUTIONS, DYNAMIC, METHODS, SCOPES, STRUCTURES
from hotprune.pruning.schedule import SCHEDULES


# the shared memory segment hotprune-<run_id>-<hash>[@<node>] is a file name: 255 bytes
MAX_RUN_ID = 255 - len(SEGMENT_PREFIX) - SEGMENT_SUFFIX_LEN - NODE_SUFFIX_LEN
MAX_SEED = 2**32 - 1  # numpy's legacy bound; worker seeds add at most 1000 * (MAX_WORKERS + 1)
# A replay buffer takes at most this share of the machine's available memory (the rest is the run's).
REPLAY_MEMORY_SHARE = 0.5
PRUNING_TARGETS = ("actor", "critic")
# Keys renamed since: (section, key) -> the new top-level key. A run directory's config.toml holds every key
# under the name it had when written, so a run from before a rename still resumes and still makes tickets.
RENAMED = {("ppo", "input_bound"): "input_bound"}  # it bounds SAC's chunks and distillation observations too
MAX_WORKERS = 64  # processes on one machine: beyond this the supervisor's table is the wrong tool (rundir
# also holds it to 4 per core of the machine that starts the run)
LAST_BASE_PORT = 65536 - len(SOCKETS)  # the run's sockets take consecutive ports from base_port
MODES = ("async", "sync")
DEVICES = ("auto", "cpu", "cuda")  # torch's names (hotprune.learning.device resolves them)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


# A section's field types; the annotations are strings (from __future__), so each look-up would compile them again.
_types = functools.cache(get_type_hints)


# Hand-written, not pydantic or tyro: measured on this config (CPU, Python 3.11), pydantic's import and
# schema build take about 155 ms in every process that loads a config, tyro's about 265 ms for `--help`
# (which must stay under 0.5 s); these declarations cost about 2 ms of import and load_config 1.4 ms.
@dataclass(frozen=True)
class Allowed:
    """What a key allows, declared on its field: a choice of values, bounds, and named rules (a test of
    the value and what it must be). Its rules are checked whenever a key is read or a config validated,
    and `--help` and docs/settings.md show them, all in the words of the error."""

    choices: tuple[str, ...] = ()
    low: int | float | None = None
    high: int | float | None = None
    low_open: bool = False  # (low, ...: the bound itself is not allowed
    high_open: bool = False
    checks: tuple[tuple[Callable[[Any], bool], str], ...] = ()

    def rules(self) -> list[tuple[Callable[[Any], bool], str]]:
        """(test, what a value must be) for each rule, in the order they are checked."""
        if not self.choices:
            return self.limits()
        return [(lambda value: value in self.choices, "must be one of " + "|".join(self.choices)), *self.limits()]

    def limits(self) -> list[tuple[Callable[[Any], bool], str]]:
        """The rules but the choices (which a key's type shows: {async,sync}): its bounds and checks."""
        bounds = [(self._within, self._bounds())] if self.low is not None or self.high is not None else []
        return [*bounds, *self.checks]

    def _within(self, value: int | float) -> bool:
        low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return low and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f"must be in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        return f"must be {'<' if self.high_open else '<='} {self.high}"


def setting(default: Any, meaning: str, *, choices: tuple[str, ...] = (), low: int | float | None = None,
            high: int | float | None = None, low_open: bool = False, high_open: bool = False,
            checks: tuple[tuple[Callable[[Any], bool], str], ...] = ()) -> Any:
    """A config field, said once: its default, what it means and what it allows (`Allowed`).
    `hotprune run --help` and docs/settings.md's table are generated from it (`settings()`), and so are
    the checks of its value."""
    metadata = {"help": meaning, "allowed": Allowed(tuple(choices), low, high, low_open, high_open, checks)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive_sizes(sizes: list[int]) -> bool:
    return len(sizes) >= 1 and all(h >= 1 for h in sizes)


POSITIVE_SIZES = ((_positive_sizes, "must be positive sizes"),)


def _is_wrapper(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name) is not None


def _file_name_chars(run_id: str) -> bool:
    return all(ch.isalnum() or ch in "-_." for ch in run_id) and not run_id.startswith(".")


@dataclass
class PPOConfig:
    """the PPO learner, as CleanRL's ppo.py"""

    learning_rate: float = setting(1e-3, "Adam's step size", low=0, low_open=True)
    anneal_lr: bool = setting(True, "decay the learning rate linearly towards 0 over the run")
    gamma: float = setting(0.99, "discount factor", low=0, high=1, low_open=True)
    gae_lambda: float = setting(0.95, "lambda of the generalized advantage estimate", low=0, high=1)
    update_epochs: int = setting(4, "passes over an epoch's samples in each PPO update", low=1)
    # Advantages are normalised per minibatch: validate holds a minibatch to two samples at least.
    minibatches: int = setting(8, "minibatches per pass (advantages are normalised per minibatch)", low=1)
    clip_coef: float = setting(0.2, "PPO's clip of the probability ratio", low=0, low_open=True)
    ent_coef: float = setting(0.01, "weight of the entropy bonus", low=0)
    vf_coef: float = setting(0.5, "weight of the value loss", low=0)
    max_grad_norm: float = setting(0.5, "gradients are clipped to this global norm", low=0, low_open=True)
    hidden_sizes: list[int] = setting([64, 64], "hidden layer widths of actor and critic, e.g. 256,256 (the "
                                                "shorthand: actor.hidden_sizes, critic.hidden_sizes go over it)",
                                      checks=POSITIVE_SIZES)

    def minibatch_size(self, epoch_samples: int) -> int:
        """Samples in a minibatch of an epoch of `epoch_samples`."""
        return epoch_samples // self.minibatches


@dataclass
class SACConfig:
    """the SAC learner, as CleanRL's sac_continuous_action.py (algorithm = "sac")"""

    q_lr: float = setting(1e-3, "Adam's step size for the twin Q critics and the entropy temperature",
                          low=0, low_open=True)
    policy_lr: float = setting(3e-4, "Adam's step size for the actor", low=0, low_open=True)
    gamma: float = setting(0.99, "discount factor", low=0, high=1, low_open=True)
    tau: float = setting(0.005, "target critics move this fraction of the way to the critics (Polyak averaging)",
                         low=0, high=1, low_open=True)
    batch_size: int = setting(256, "transitions per gradient step, sampled uniformly from the replay buffer", low=1)
    buffer_size: int = setting(1_000_000, "replay buffer capacity in transitions (a ring; at most the run's "
                                          "length is allocated, and at most half the machine's free memory)", low=1)
    learning_starts: int = setting(5000, "env steps before the first gradient step; until then the workers act "
                                         "uniformly at random", low=0)
    utd: float = setting(1.0, "gradient steps per env step (update-to-data ratio): an epoch takes "
                              "round(utd * samples) of them", low=0, high=64, low_open=True)
    policy_frequency: int = setting(2, "the actor (and temperature) steps every N critic steps, N times "
                                       "(TD3's delayed update)", low=1)
    target_network_frequency: int = setting(1, "the target critics move every N critic steps", low=1)
    alpha: float = setting(0.2, "entropy coefficient when autotune is false", low=0)
    autotune: bool = setting(True, "tune the entropy coefficient towards a target entropy of -act_dim")
    hidden_sizes: list[int] = setting([256, 256], "hidden layer widths of actor and critics (the shorthand: "
                                                  "actor.hidden_sizes, critic.hidden_sizes go over it)",
                                      checks=POSITIVE_SIZES)

    def minibatch_size(self, epoch_samples: int) -> int:
        """Samples in a gradient step: a replay batch, whatever the epoch."""
        return self.batch_size

    def replay_capacity(self, run_samples: int) -> int:
        """Replay buffer rows: buffer_size, but never more than the run's env steps."""
        return min(self.buffer_size, run_samples)


def _own_sizes(network: str) -> Any:
    return setting([], f"the {network}'s hidden layer widths; empty: the algorithm's (ppo.hidden_sizes or "
                       "sac.hidden_sizes)", checks=((lambda sizes: not sizes or _positive_sizes(sizes),
                                                     "must be empty or positive sizes"),))


def _own_activation(network: str) -> Any:
    own = ", ".join(f"{a.name} {a.activation}" for a in ALGORITHMS.values())
    return setting("auto", f"the activation between the {network}'s hidden layers; auto: the algorithm's ({own}); "
                           "gelu is its tanh form", choices=("auto", *ACTIVATIONS))


@dataclass
class ActorConfig:
    """the actor's network: the policy the workers run and the compressor prunes"""

    hidden_sizes: list[int] = _own_sizes("actor")
    activation: str = _own_activation("actor")


@dataclass
class CriticConfig:
    """the critic's network (SAC: each of the twin Q networks), the trainer's only"""

    hidden_sizes: list[int] = _own_sizes("critic")
    activation: str = _own_activation("critic")


EMPTY_OR_POSITIVE = ((lambda sizes: not sizes or _positive_sizes(sizes), "must be empty or positive sizes"),)


def _same_lengths(section: CNNConfig) -> bool:
    lengths = {len(v) for v in (section.channels, section.kernels, section.strides)}
    return len(lengths) == 1


@dataclass
class CNNConfig:
    """the convolutional layers of actor and critic for image observations (MinAtar, Atari); empty lists:
    chosen from the observation's height and width (NATURE_CNN from 36x36 up, else SMALL_CNN)"""

    channels: list[int] = setting([], "output channels of each conv layer, e.g. 32,64,64 (ReLU after each)",
                                  checks=EMPTY_OR_POSITIVE)
    kernels: list[int] = setting([], "square kernel size of each conv layer, e.g. 8,4,3 (no padding)",
                                 checks=EMPTY_OR_POSITIVE)
    strides: list[int] = setting([], "stride of each conv layer, e.g. 4,2,1",
                                 checks=EMPTY_OR_POSITIVE)
    hidden_sizes: list[int] = setting([], "the MLP head's hidden widths after the flattened conv output (instead "
                                          "of ppo.hidden_sizes for images; actor.hidden_sizes and critic.hidden_sizes "
                                          "still go over it); empty: 512 (Nature) or 128 (small)",
                                      checks=EMPTY_OR_POSITIVE)


@dataclass(frozen=True)
class ConvNet:
    """The conv layers of a CNN actor or critic (hotprune.learning.policy): Conv2d(kernel, stride, no
    padding) and ReLU each, on the observation reshaped to `in_shape` (C, H, W) and divided by `scale`
    (255 for Atari frames, 1 for MinAtar's 0/1 planes), then flattened channel-major into the MLP head."""

    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    in_shape: tuple[int, int, int]
    scale: float

    def out_hw(self) -> tuple[int, int]:
        """Height and width of the last conv layer's output (ValueError if a kernel outgrows its input)."""
        h, w = self.in_shape[1:]
        for k, s in zip(self.kernels, self.strides):
            if k > h or k > w:
                raise ValueError(f"a {k}x{k} kernel does not fit a {h}x{w} input (observations {self.in_shape})")
            h, w = (h - k) // s + 1, (w - k) // s + 1
        return h, w

    def meta(self) -> dict[str, Any]:
        """As a policy file's metadata keeps it (JSON)."""
        return {"channels": list(self.channels), "kernels": list(self.kernels), "strides": list(self.strides),
                "in_shape": list(self.in_shape), "scale": self.scale}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ConvNet:
        return cls(*(tuple(int(v) for v in meta[k]) for k in ("channels", "kernels", "strides", "in_shape")),
                   float(meta["scale"]))


# (channels, kernels, strides, head): Mnih et al. 2015's for 84x84 Atari frames (CleanRL's ppo_atari), and
# Young & Tian 2019's one 3x3 layer of 16 for MinAtar's 10x10 planes
NATURE_CNN = ((32, 64, 64), (8, 4, 3), (4, 2, 1), [512])
SMALL_CNN = ((16,), (3,), (1,), [128])
NATURE_MIN_SIDE = 36  # the Nature CNN's smallest input: 36 -> 8 -> 3 -> 1


class Network(NamedTuple):
    """A network as the run builds it (Config.network): its hidden layer widths and the activation between
    them, its own section's over the algorithm's; for image observations its conv layers (`conv`), the
    head's widths from the cnn section and ReLU unless its section says otherwise."""

    hidden_sizes: list[int]
    activation: str
    conv: ConvNet | None = None


@dataclass
class PruningConfig:
    """what the compressor prunes, how and when"""

    method: str = setting("magnitude", "none: the dense baseline; fixed: the masks of mask_file, no schedule; "
                                       "magnitude abs(w); taylor abs(w * g); gradient g; g is the mean abs(dL/dw) "
                                       "over recent minibatches; set, rigl: dynamic sparse training at the target "
                                       "from start_epoch on, each update dropping the smallest abs(w) and "
                                       "regrowing as many at random (set) or at the largest g (rigl)",
                          choices=METHODS)
    mask_file: str = setting("", "keep-masks in force from the first step, in training and inference, never "
                                 "changed (a lottery ticket: hotprune lth create-mask); given without a method, it "
                                 "makes the method fixed, which needs it")
    structure: str = setting("weight", "weight: single weights; neuron: whole hidden units of the MLP, which the "
                                       "workers then run as smaller matrices; channel: those and whole output "
                                       "channels (filters) of the conv layers", choices=tuple(STRUCTURES))
    target_sparsity: float = setting(0.8, "fraction of prunable weights (neuron, channel: of hidden units and "
                                          "channels) removed, exactly "
                                          "round(s * n) per scope", low=0, high=1, high_open=True)
    start_epoch: int = setting(3, "the first compression is due from the snapshot of this epoch; a due step is "
                                  "served by the newest snapshot at or past its epoch, never skipped", low=1)
    every: int = setting(10, "then one compression every K epochs", low=1)
    schedule: str = setting("constant", "constant: the target at every step (masks are nested: it prunes once); "
                                        "cubic (Zhu & Gupta 2017): from initial_sparsity at start_epoch to the "
                                        "target at end_epoch; a step to 0% is left out", choices=SCHEDULES)
    initial_sparsity: float = setting(0.0, "cubic: the sparsity at start_epoch", low=0)
    end_epoch: int = setting(0, "cubic: the epoch the target is reached (0: half the run)", low=0)
    scope: str = setting("global", "global: one threshold over all prunable layers; layer: each layer its own count",
                         choices=SCOPES)
    distribution: str = setting("uniform", "layer scope: uniform (each layer to the target) or erk "
                                           "(Erdos-Renyi-kernel, RigL: denser small layers, same total)",
                                choices=DISTRIBUTIONS)
    prune_output_layer: bool = setting(False, "prune the output layer's weights too (not with neuron); biases are "
                                              "never pruned")
    min_weights_per_input: int = setting(1, "every criterion, scope and structure keeps at least this many first-"
                                            "layer weights of each input (observation feature; SAC's critics: "
                                            "action inputs too), pruning as many others instead; 0: off",
                                         low=0)
    critic_distribution: str = setting("erk", "SAC's critics (targets critic): erk prunes each critic layer to "
                                              "its Erdos-Renyi-kernel share (with structure weight; neuron: as "
                                              "the actor); actor: the actor's scope and distribution",
                                       choices=CRITIC_DISTRIBUTIONS)
    regrow: bool = setting(False, "false: masks are nested, a pruned weight stays pruned; true: each compression "
                                  "re-selects, and revived weights restart at zero with no optimizer history "
                                  "(set and rigl always regrow)")
    drop_fraction: float = setting(0.3, "set, rigl: alpha, the share of each layer's kept weights dropped and "
                                        "regrown at an update, decayed as alpha/2 * (1 + cos(pi * epoch / "
                                        "update_end_epoch)) (RigL)", low=0, high=1, low_open=True)
    update_end_epoch: int = setting(0, "set, rigl: the masks are updated every `every` epochs before this one, "
                                       "frozen from it on (0: 75% of the run)", low=0)
    num_gradient_batches: int = setting(32, "taylor, gradient, rigl: g is averaged over the last N minibatches of the "
                                            "trainer's own updates (no extra passes; SAC: replay batches, of the "
                                            "actor loss for the actor, of the critic loss for the critics)", low=1)
    gradient_batch_size: int = setting(0, "samples in each such minibatch: 0 or the algorithm's own (PPO's "
                                          "minibatch, SAC's batch_size)", low=0)
    targets: list[str] = setting(["actor"], "what is pruned: actor; or actor,critic (SAC, both pruned): the trainer "
                                            "also prunes its critics, at each step's sparsity, with its own masks",
                                 checks=((lambda targets: targets in (["actor"], list(PRUNING_TARGETS)),
                                          "must be [\"actor\"] or [\"actor\", \"critic\"]"),))
    delay_s: float = setting(0.0, "testing: the compressor sleeps this long per snapshot, to try the service under "
                                  "a slow compressor", low=0)
    distill_steps: int = setting(32, "teacher-student: Adam steps per version that bring the pruned student the "
                                     "workers run to the dense teacher (KL, mask fixed); 0: the student is the "
                                     "teacher masked, untrained", low=0)
    distill_lr: float = setting(1e-3, "teacher-student: the student's Adam step size", low=0, low_open=True)
    distill_samples: int = setting(1024, "teacher-student: observations of its last epoch the trainer ships with "
                                         "each snapshot for distilling", low=1)

    @property
    def regrows(self) -> bool:
        """Whether a compression may revive pruned weights: with `regrow`, and always in dynamic sparse training."""
        return self.regrow or self.method in DYNAMIC


@dataclass
class TransportConfig:
    """the sockets between the processes"""

    kind: str = setting("ipc", "ipc: sockets in the run's private directory; tcp: ports of one host, always "
                               "CURVE-encrypted and authenticated with the run's keys", choices=TRANSPORTS)
    host: str = setting("127.0.0.1", "tcp: the IPv4 address to listen on: loopback, or 0.0.0.0 or a LAN "
                                    "address to listen beyond it")
    base_port: int = setting(5550, f"tcp: the first of {len(SOCKETS)} consecutive ports (one per socket)",
                             low=1024, high=LAST_BASE_PORT)
    max_frame_bytes: int = setting(64 * 1024 * 1024, "a received frame larger than this is refused", low=1024)


LOCAL_NODE = "local"  # relay.local: the node id of the relay on this machine


@dataclass
class RelayConfig:
    """relays: a node's own weight store, fed with each version over the run's transport"""

    local: bool = setting(False, "run one relay on this machine (node `local`) and have every worker swap from "
                                 "its store and hints, not the compressor's: what the workers of a node other "
                                 "than the compressor's do, on one host")
    workers_per_node: int = setting(0, "hotprune run --ray: this many workers on each node, the head's first (each "
                                       "other node with workers runs a relay); 0: num_workers spread evenly over "
                                       "the cluster's nodes", low=0)


@dataclass
class SupervisorConfig:
    """starting, watching, restarting and stopping the processes"""

    stop_grace_s: float = setting(10.0, "how long the supervisor waits for processes to stop before SIGKILL",
                                  low=0, low_open=True)
    start_timeout_s: float = setting(120.0, "how long a worker waits for the weight store to appear, "
                                            "and a trainer for its compressor to subscribe (then: exit 2)",
                                     low=0, low_open=True)
    heartbeat_s: float = setting(5.0, "every process logs a heartbeat event (proof of life, counters) this often",
                                 low=0, low_open=True)
    hang_timeout_s: float = setting(60.0, "a process that sends no liveness ping for this long (frozen, deadlocked) "
                                          "is killed and restarted; start_timeout_s before its first ping; 0: off",
                                    checks=((lambda s: s == 0 or s >= 1, "must be 0 (off) or >= 1"),))
    max_restarts: int = setting(3, "a crashed or hung process is restarted unless it has had this many restarts "
                                   "within restart_window_s; then the run stops, exit 1 (0: any crash ends the run)",
                                low=0, high=100)
    restart_window_s: float = setting(300.0, "the window max_restarts counts in", low=0, low_open=True)
    restart_backoff_s: float = setting(1.0, "wait before a restart, doubled for each restart in the window "
                                            "(at most 30 s)", low=0, high=30)


@dataclass
class WandbConfig:
    """experiment tracking with Weights & Biases (CleanRL's --track): the trainer logs TensorBoard's scalars"""

    track: bool = setting(False, "log each epoch's metrics to a W&B run (hotprune run --track); its files go to "
                                 "the run directory's wandb/ (WANDB_MODE=offline: only there, `wandb sync` "
                                 "later); needs the wandb extra: pip install -e \".[wandb]\"")
    project: str = setting("hotprune", "the W&B project")
    entity: str = setting("", "the W&B team or user; empty: your default entity")
    group: str = setting("", "the W&B group, e.g. an experiment's name; empty: none")
    tags: list[str] = setting([], "W&B tags of the run, e.g. --set wandb.tags=pruned,async")


@dataclass
class Config:
    env_id: str = setting("CartPole-v1", "any gymnasium id with Discrete or flat Box actions and observations that "
                                         "flatten: Box, Discrete (one-hot), MultiBinary, MultiDiscrete, a Dict or "
                                         "Tuple of them (no images yet); module:EnvName-vN imports module (from "
                                         "env_dir) first, as gymnasium does",
                          checks=((bool, "must name a gymnasium environment"),))
    env_kwargs: dict = setting({}, "keyword arguments of the environment's constructor, a table: {size = 8}, or "
                                   "--set env_kwargs.size=8")
    env_wrappers: list[str] = setting([], "module:callable wrappers applied to each environment in this order "
                                          "(RL Zoo's env_wrapper), e.g. gymnasium.wrappers:FlattenObservation",
                                      checks=((lambda names: all(_is_wrapper(n) for n in names),
                                               "must be module:callable names"),))
    env_dir: str = setting("", "the directory a module:EnvName-vN id's module and the wrappers' modules are "
                               "imported from, in every process; empty: the directory the run is started in "
                               "(config.toml records it as an absolute path)")
    algorithm: str = setting("ppo", "the learner: ppo (on-policy, any action space) or sac (off-policy from a "
                                    "replay buffer, Box actions)", choices=tuple(ALGORITHMS))
    device: str = setting("auto", "where the trainer learns (networks, optimizers, replay buffer, masks) and the "
                                  "compressor distils: auto: cuda when torch finds a CUDA device, else cpu; cuda "
                                  "without one is refused at start. Workers, pruning and the store are always CPU",
                          choices=DEVICES)
    preset: str = setting("auto", "tuned settings under yours: auto: the shipped preset of env_id (ppo) or "
                                  "<env_id>-<algorithm>, if any (hotprune presets); none: the built-in defaults; or "
                                  "a preset's name")
    mode: str = setting("async", "async: training never waits for the compressor or the workers; sync: each epoch "
                                 "trains on data of the newest version only: every worker sends its share of "
                                 "the epoch, then pauses until the next version is in the store", choices=MODES)
    max_policy_lag: int = setting(4, "async: the trainer drops chunks more than this many versions older than its "
                                     "policy (counted as dropped_stale); the workers' flow control keeps the "
                                     "lag at 1-2 unless the compressor falls behind",
                                  checks=((lambda lag: lag >= 1, "must be >= 1 (lag 0 only: mode=sync)"),))
    prune_training_model: bool = setting(True, "true: both pruned (the masks go back to the trainer); false: "
                                               "teacher-student (the trainer stays dense)")
    seed: int = setting(1, "random seed of the trainer; worker i adds 1000 * (i + 1)", low=0, high=MAX_SEED)
    epochs: int = setting(150, "updates to train for (a run's config.toml holds the number total_steps gave)", low=1)
    total_steps: int = setting(0, "when > 0, the length in env samples instead: epochs = "
                                  "ceil(total_steps / samples_per_epoch)", low=0)
    samples_per_epoch: int = setting(2048, "env samples per update (PPO's batch; SAC's between two snapshots), at "
                                           "least (whole chunks; in sync mode the same number of chunks from every "
                                           "worker)", low=1)
    num_workers: int = setting(2, "inference worker processes", low=1, high=MAX_WORKERS)
    envs_per_worker: int = setting(4, "environments in each worker's vector env", low=1)
    chunk_steps: int = setting(64, "vector steps per trajectory chunk a worker sends", low=1)
    runs_dir: str = setting("runs", "where run directories go: runs_dir/run_id")
    run_id: str = setting("", "empty: a fresh id from env, mode, pruning, seed and the time; a run's config.toml "
                              "leaves it out (the directory's name is the id), so --config of it starts a new run",
                          checks=((_file_name_chars, "may hold only letters, digits, - _ . and must not start with ."),
                                  (lambda run_id: run_id != "latest",
                                   "must not be latest (runs_dir/latest links to the newest run)"),
                                  (lambda run_id: len(run_id) <= MAX_RUN_ID,
                                   f"must be at most {MAX_RUN_ID} characters")))
    run_uid: str = setting("", "made with the run directory (uuid4 hex, never reused; any given is replaced): every "
                               "file the run keeps carries it, and resume refuses a file of another run",
                           checks=((lambda uid: uid == "" or re.fullmatch(r"[0-9a-f]{32}", uid) is not None,
                                    "must be 32 hexadecimal digits (hotprune makes it)"),))
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
                                         "epochs and the last (what hotprune lth rewinds to and prunes); 0: never",
                                      low=0)
    keep_transitions: int = setting(0, "at the end, write the last N epochs' trajectory chunks to "
                                       "transitions.safetensors (PPO's trajectories; SAC's newest replay-buffer rows: "
                                       "what hotprune lth create-mask's gradient criteria read); 0: none", low=0)
    checkpoint_every: int = setting(1, "the trainer checkpoints every N epochs (and at epoch 0 and the last) to "
                                       "checkpoint.safetensors; a restarted trainer redoes the epochs since", low=1)
    input_bound: float = setting(1e6, "a trajectory chunk (or a teacher-student snapshot's observations) whose "
                                      "observations, rewards or log-probabilities exceed +-this is rejected",
                                 low=0, low_open=True)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    cnn: CNNConfig = field(default_factory=CNNConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

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

    def network(self, part: str, spec: Any = None) -> Network:
        """The "actor"'s or the "critic"'s network: its own section over the algorithm's `hidden_sizes`
        and activation; for a `spec` (hotprune.envs.EnvSpec) of image observations, a CNN: the cnn
        section's layers over the ones its observations' size picks, and ReLU."""
        own = getattr(self, part)
        image = spec.image if spec is not None else None
        if image is None:
            activation = ALGORITHMS[self.algorithm].activation if own.activation == "auto" else own.activation
            return Network(own.hidden_sizes or self.algo.hidden_sizes, activation)
        channels, kernels, strides, head = NATURE_CNN if min(image[1:]) >= NATURE_MIN_SIDE else SMALL_CNN
        c = self.cnn
        scale = float(spec.observation_space.high.max())
        conv = ConvNet(tuple(c.channels or channels), tuple(c.kernels or kernels), tuple(c.strides or strides),
                       image, scale)
        activation = "relu" if own.activation == "auto" else own.activation
        return Network(own.hidden_sizes or c.hidden_sizes or head, activation, conv)

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

    @property
    def update_end_epoch(self) -> int:
        """set, rigl: the epoch the masks freeze at (RigL's T_end, 75% of the run by default)."""
        return self.pruning.update_end_epoch or max(self.pruning.start_epoch + 1, int(0.75 * self.total_epochs))

    # The Python API (hotprune.Config, docs/api.md): the command line's path, `--config PATH --set KEY=VALUE`.
    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | None = None) -> Config:
        """The defaults, env_id's preset, then `settings` as `--set` applies them: dotted keys
        ({"pruning.target_sparsity": 0.9}) or sections ({"pruning": {"target_sparsity": 0.9}}).
        run_id stays empty unless given: each run gets a fresh id when it starts (hotprune.run)."""
        return _from_file(None, settings)

    @classmethod
    def from_toml(cls, path: str | Path, settings: Mapping[str, Any] | None = None) -> Config:
        """`hotprune run --config PATH`, with `settings` as from_dict's over it."""
        return _from_file(path, settings)

    def validate(self) -> None:
        """ConfigError with the line `hotprune run` prints for the first bad value."""
        validate(self)


PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> dict[str, Path]:
    """The shipped presets by name (an env id): tuned settings per environment."""
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.toml"))}


def _with_preset(data: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    """`data` (the file and the overrides) over its preset, as RL Zoo does: the env's tuned settings
    unless a key is given, and the preset's file (None: no preset). The run's length is one thing:
    given `epochs` or `total_steps`, the preset's length does not apply. `preset` is resolved to a
    name or "none"."""
    name = data.get("preset", "auto")
    if not isinstance(name, str):
        raise ConfigError(f"preset must be a string (auto, none or a preset's name), got {name!r}")
    shipped = presets()
    if name == "auto":  # env_id's preset for its algorithm: <env_id> for PPO, <env_id>-<algorithm> for others
        env, algorithm = data.get("env_id", Config.env_id), data.get("algorithm", Config.algorithm)
        name = f"{env}-{algorithm}" if algorithm != Config.algorithm else env
        name = name.replace("/", "-") if isinstance(name, str) else name  # MinAtar/Breakout-v1: MinAtar-Breakout-v1
        name = name if isinstance(env, str) and isinstance(algorithm, str) and name in shipped else "none"
    if name == "none":
        return {**data, "preset": "none"}, None
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
    return {**_merged(base, data), "preset": name}, shipped[name]


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
    return load_config_with_sources(path, overrides, with_preset)[0]


def load_config_with_sources(path: str | Path | None = None, overrides: list[str] = (),
                             with_preset: bool = True) -> tuple[Config, dict[str, str]]:
    """`load_config`'s config, and where each value came from, by dotted key (run_id too): "default",
    "preset <its file>", "file <path>", "--set", or what load_config made it from ("from total_steps":
    the epochs it gives; "from pruning.mask_file": method fixed; "generated": a fresh run_id). The
    preset's own source ends in " (auto)" when the preset was chosen from env_id."""
    data = _read(path) if path is not None else {}
    given = [_parse_override(item) for item in overrides]
    set_keys = [key for key, _ in given]
    for length, other in (("epochs", "total_steps"), ("total_steps", "epochs")):
        if length in set_keys and other not in set_keys:  # a length given replaces the file's (and the preset's)
            data.pop(other, None)
    for key, value in given:
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a section")
        node[leaf] = value
    yours = data
    auto = yours.get("preset", Config.preset) == "auto"
    data, preset_file = _with_preset(yours) if with_preset else (yours, None)
    from_you, from_preset = set(_flat(yours)), set(_flat(data)) - {"preset"}
    pruning = data.get("pruning")
    implied_method = isinstance(pruning, dict) and bool(pruning.get("mask_file")) and "method" not in pruning
    if implied_method:  # a mask file alone means: prune with it
        data = {**data, "pruning": {**pruning, "method": "fixed"}}
    config = _build(Config, _renamed(data), "")
    config.epochs = config.total_epochs
    if needs_env_dir(config):  # absolute, so every process imports the module from the same place
        config.env_dir = str(Path(config.env_dir or os.getcwd()).resolve())
    generated_id = not config.run_id
    if generated_id:
        stamp = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        config.run_id = f"{describe(config)}-{stamp}"
        try:
            config.endpoints()
        except ValueError:  # ipc paths under a deep runs_dir would be too long: the short form
            config.run_id = stamp
    validate(config)

    def within(key: str, keys: Any) -> bool:  # a key of `keys` names `key`, its section, or one of its table's
        return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)

    def source(key: str) -> str:
        if within(key, set_keys):
            return "--set"
        return f"file {path}" if within(key, from_you) else f"preset {preset_file}" if within(key, from_preset) \
            else "default"

    sources = {key: source(key) for key, *_ in _leaves(config)}
    if auto and with_preset:
        sources["preset"] += " (auto)"
    if config.total_steps > 0:
        sources["epochs"] = "from total_steps"
    if implied_method:
        sources["pruning.method"] = "from pruning.mask_file"
    if generated_id:
        sources["run_id"] = "generated"
    if needs_env_dir(config) and sources["env_dir"] == "default":
        sources["env_dir"] = "the start directory"
    return config, sources


def needs_env_dir(c: Config) -> bool:
    """Whether the run imports a module of the user's: a module:EnvName-vN id or a wrapper."""
    return ":" in c.env_id or bool(c.env_wrappers)


def _read(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:  # an over-4,300-digit int, deep nesting
        raise ConfigError(f"config file {path} is not valid TOML: {str(exc)[:120]}") from None


def _flat(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted keys of nested TOML tables: {"ppo": {"gamma": 0.9}} -> ppo.gamma (an empty table is a key:
    env_kwargs = {})."""
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def as_overrides(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A dict of settings (dotted keys or sections) as the `--set KEY=VALUE` strings that mean the same:
    the values written as TOML literals, which `--set` reads back exactly."""
    out = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out += as_overrides(value, f"{prefix}{key}.")
            continue
        try:
            out.append(f"{prefix}{key}={_toml_value(_plain(value))}")
        except TypeError:
            raise ConfigError(f"{prefix}{key} must be a number, bool, string or list, got {value!r}") from None
    return out


def _plain(value: Any) -> Any:
    """`value` in the types TOML writes: a path as a string, a tuple or numpy array as a list, numpy's
    numbers as Python's."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _from_file(path: str | Path | None, settings: Mapping[str, Any] | None) -> Config:
    """Config.from_dict / from_toml: load_config's path, without the run id it makes up when none is
    named (one made now would keep the seed and the time of now through later changes)."""
    overrides = as_overrides(settings or {})
    config = load_config(path, overrides)
    named = any(o.startswith("run_id=") for o in overrides) or \
        (path is not None and "run_id" in tomllib.loads(Path(path).read_text(encoding="utf-8")))
    if not named:
        config.run_id = ""
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
    an n after the method: neurons, a c: channels). Short on purpose: ipc socket paths under the run directory are
    capped at 107 bytes."""
    env = re.sub(r"[^a-z0-9]+", "-", re.sub(r"-v\d+$", "", c.env_id.lower())).strip("-")[:16] or "env"
    p = c.pruning
    pruning = "dense" if p.method == "none" else "fixed" if p.method == "fixed" else \
        f"{p.method[:3]}{'' if p.structure == 'weight' else p.structure[0]}{round(p.target_sparsity * 100)}"
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
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):  # also an over-4,300-digit int, deep nesting
        return raw.strip()


def _build(cls: type, data: Any, prefix: str) -> Any:
    """A `cls` of `data`, each key typed and checked against what its field allows."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')} must be a section")
    hints = _types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _unknown(prefix + unknown[0], data[unknown[0]], sorted(fields))
    values = {}
    for name, value in data.items():
        key, kind = prefix + name, hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, key + ".")
        else:
            values[name] = _checked(key, value, kind, fields[name].metadata["allowed"])
    return cls(**values)


def _unknown(key: str, value: Any, known: list[str]) -> ConfigError:
    """The error for a key that is no setting: the settings it most likely means, else the keys known
    where it stands."""
    typed = next(_flat({key: value}), key)  # a misspelled section: the key given under it
    close = _closest(typed)
    if close:
        return ConfigError(f"unknown config key {typed}: did you mean {' or '.join(close)}?")
    return ConfigError(f"unknown config key {key} (known: {', '.join(known)})")


def _closest(key: str) -> list[str]:
    """The settings most like `key`, as a whole (pruning.target_sparsty) or by its last part in any
    section (gamma: ppo.gamma or sac.gamma); none below a likeness of 0.8 (difflib's ratio)."""
    from difflib import SequenceMatcher  # only when a key is wrong

    def likeness(a: str, b: str) -> float:
        return SequenceMatcher(None, a, b).ratio()

    leaf = key.rpartition(".")[2]
    # the same name in another section ranks just below a near spelling in its own
    scores = {k: max(likeness(key, k), likeness(leaf, k.rpartition(".")[2]) - 0.05) for k, *_ in _leaves(Config())}
    best = max(scores.values())
    return sorted(k for k, score in scores.items() if score == best) if best >= 0.8 else []


def _checked(key: str, value: Any, kind: Any, allowed: Allowed) -> Any:
    """`value` of `key` as its type (`_coerce`), or an error with the first of its field's rules it breaks."""
    value = _coerce(key, value, kind)
    for test, rule in allowed.rules():
        if not test(value):
            raise ConfigError(f"{key} {rule}, got {value!r}")
    return value


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
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table (e.g. {{size = 8}}, or --set {key}.size=8), got {value!r}")
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
    """Every key within what its field allows, then the rules between keys (ConfigError: the first broken)."""
    for key, f, kind, value in _leaves(c):
        _checked(key, value, kind, f.metadata["allowed"])

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key} {rule}, got {_lookup(c, key)!r}")

    need(c.samples_per_epoch >= c.chunk_samples, "samples_per_epoch", f"must be >= one chunk ({c.chunk_samples})")
    p = c.ppo
    # Advantages are normalised per minibatch: a minibatch needs two samples for a standard deviation.
    need(p.minibatches <= c.samples_per_epoch // 2, "ppo.minibatches", "must be in [1, samples_per_epoch / 2]")
    a = c.sac
    need(a.buffer_size >= a.batch_size, "sac.buffer_size", "must be >= sac.batch_size")
    q = c.pruning
    need(0 <= q.initial_sparsity <= q.target_sparsity, "pruning.initial_sparsity", "must be in [0, target_sparsity]")
    need(q.end_epoch == 0 or q.end_epoch > q.start_epoch, "pruning.end_epoch", "must be 0 or > start_epoch")
    need(q.distribution == "uniform" or (q.scope == "layer" and q.structure == "weight"), "pruning.distribution",
         "erk needs pruning.scope=layer and pruning.structure=weight")
    need(not (q.prune_output_layer and q.structure != "weight"), "pruning.prune_output_layer",
         f"must be false with pruning.structure={q.structure} (output units are the actions)")
    need(q.method not in DYNAMIC or q.structure == "weight", "pruning.structure",
         f"must be weight with pruning.method={q.method} (dynamic sparse training drops and regrows single weights)")
    need(q.method not in DYNAMIC or q.schedule == "constant", "pruning.schedule",
         f"must be constant with pruning.method={q.method} (dynamic sparse training keeps the target from the start)")
    need(q.update_end_epoch == 0 or q.update_end_epoch > q.start_epoch, "pruning.update_end_epoch",
         "must be 0 or > start_epoch")
    need(not (q.regrow and q.structure != "weight"), "pruning.regrow",
         f"must be false with pruning.structure={q.structure} (a revived unit has no weights in or out: it cannot "
         "learn)")
    need((q.method == "fixed") == bool(q.mask_file), "pruning.mask_file",
         "is what method fixed prunes with, and only it (a mask file given without a method makes it fixed)")
    minibatch = c.algo.minibatch_size(c.epoch_samples)
    need(q.gradient_batch_size in (0, minibatch), "pruning.gradient_batch_size",
         f"must be 0 or {'SAC' if c.algorithm == 'sac' else 'PPO'}'s minibatch size {minibatch} (g comes from the "
         "trainer's own minibatches)")
    need(_same_lengths(c.cnn), "cnn.channels",
         "with cnn.kernels and cnn.strides must be all empty or all given, one entry per conv layer")
    need("critic" not in q.targets or (c.algorithm == "sac" and c.prune_training_model), "pruning.targets",
         "may hold critic only with algorithm=sac and prune_training_model=true (the critics are the trainer's)")


def _lookup(c: Config, key: str) -> Any:
    node: Any = c
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _leaves(c: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any, Any]]:
    """Every setting of `c` (a Config or one of its sections), the top-level keys first: (dotted key,
    its field, its type, its value)."""
    hints = _types(type(c))
    sections = []
    for f in dataclasses.fields(c):
        kind, value = hints[f.name], getattr(c, f.name)
        if not dataclasses.is_dataclass(kind):
            yield prefix + f.name, f, kind, value
        elif isinstance(value, kind):
            sections.append((f.name, value))
        else:  # a Config made in Python with something else in a section's place
            raise ConfigError(f"{prefix}{f.name} must be a section, got {value!r}")
    for name, section in sections:
        yield from _leaves(section, f"{prefix}{name}.")


def to_toml(c: Config, sources: dict[str, str] | None = None) -> str:
    """The resolved configuration as TOML: what a run directory keeps as config.toml. With `sources`
    (`load_config_with_sources`), each value's line ends in a comment saying where it came from: the
    same loadable TOML.

    Without run_id: a run directory's name is its id (every process takes it from there), and a
    config file that named a taken run would refuse to start; so `--config runs/<id>/config.toml`
    starts a new run with the same settings."""
    tables: dict[str, list[tuple[str, str]]] = {"": []}
    for key, _, _, value in _leaves(c):
        if key != "run_id":
            section, _, name = key.rpartition(".")
            tables.setdefault(section, []).append((key, f"{name} = {_toml_value(value)}"))

    def lines(table: list[tuple[str, str]]) -> list[str]:
        if sources is None:
            return [line for _, line in table]
        width = max(len(line) for _, line in table)
        return [f"{line:<{width}}  # {sources[key]}" for key, line in table]

    top = lines(tables.pop(""))
    return "\n".join(top) + "\n\n" + "\n".join(f"[{name}]\n" + "\n".join(lines(t)) + "\n" for name, t in tables.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table; quoted keys are valid whatever the name
        pairs = (f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted: pruning.target_sparsity
    kind: str  # int, float, bool, str, list[int], or the choices: {async,sync}
    default: str  # as TOML writes it
    meaning: str
    allowed: str  # its rules beyond its type and choices, as errors say them: "must be in [0, 1)"; or ""


def settings() -> list[tuple[str, str, list[Setting]]]:
    """Every key with its type, default, meaning and what it allows, by section: (name, what it is,
    its keys), the top-level keys first (name ""). What `hotprune run --help` and docs/settings.md's table show."""
    defaults = Config()
    sections: dict[str, tuple[str, list[Setting]]] = {"": ("the run", [])}
    for key, f, kind, default in _leaves(defaults):
        section = key.rpartition(".")[0]
        if section not in sections:
            sections[section] = (type(getattr(defaults, section)).__doc__, [])
        sections[section][1].append(_setting(key, f, kind, default))
    return [(name, what, rows) for name, (what, rows) in sections.items()]


def _setting(key: str, f: dataclasses.Field, kind: Any, default: Any) -> Setting:
    allowed: Allowed = f.metadata["allowed"]
    if allowed.choices:
        name = "{" + ",".join(allowed.choices) + "}"
    else:  # list[int] is no type: its str is its name
        name = kind.__name__ if isinstance(kind, type) else str(kind)
    rules = "; ".join(rule for _, rule in allowed.limits())
    return Setting(key, name, _toml_value(default), f.metadata["help"], rules)
