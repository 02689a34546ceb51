"""`hotprune import sb3|cleanrl FILE --env ENV_ID`: a PPO policy trained by Stable-Baselines3 or CleanRL as a
hotprune policy file, which `load_policy` runs and `init_file` starts a run from.

What it reads, and nothing else (no pickle is ever unpickled):
- `sb3`: the model zip's `policy.pth` through `torch.load(weights_only=True)` (tensors only) and its `data`
  as plain JSON. SB3 writes the objects JSON cannot hold (the spaces, policy_kwargs with a class in it) as
  pickled bytes with readable fields beside them; only those fields are read (the observation shape, the
  activation's class name, the features extractor's). An `ActorCriticPolicy` (PPO's and A2C's `MlpPolicy`):
  `mlp_extractor.policy_net.{0,2,...}`, `action_net`, `log_std` (Box actions), `mlp_extractor.value_net.*`,
  `value_net`; the activation is policy_kwargs' `activation_fn`, Tanh unless it names another.
- `cleanrl`: a `.cleanrl_model` (`torch.save(agent.state_dict())`) through `torch.load(weights_only=True)`:
  the `Agent` of `ppo.py` (`actor.{0,2,4}`, `critic.{0,2,4}`) or of `ppo_continuous_action.py`
  (`actor_mean.*`, `actor_logstd`, `critic.*`), whose activation is tanh (a state_dict does not name it).

The file it writes holds the actor as a run's policy file names it (`net.0.weight`, ..., `log_std`) and
the critic as `critic.0.weight`, ... (left out when its widths differ from the actor's: a run's PPO
critic has the actor's widths), with metadata env_id, discrete, algorithm, activation, hidden sizes and
where it came from. A model that cannot be mapped (another layout, an activation hotprune's PPO does not
compute, shapes that do not fit the environment, gSDE) is refused with one line naming what differs
(ArtifactError), and nothing is written.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hotprune.algorithms import actor_kind
from hotprune.envs import EnvSpec, env_spec
from hotprune.runs import artifacts
from hotprune.runs.artifacts import ArtifactError

SB3_WEIGHTS, SB3_DATA = "policy.pth", "data"  # the zip's members this reads
# torch.nn class names -> the activation's name in hotprune
TORCH_ACTIVATIONS = {"Tanh": "tanh", "ReLU": "relu", "ELU": "elu", "SiLU": "silu", "GELU": "gelu",
                     "LeakyReLU": "leaky_relu"}
SB3_DEFAULT_ACTIVATION = "Tanh"  # ActorCriticPolicy's activation_fn
_CLASS = re.compile(r"<class '([\w.]+)'>")  # how SB3's data names a class it pickled
WB = ("weight", "bias")  # a Linear layer's tensors


@dataclass(frozen=True)
class Network:
    """A foreign actor-critic, as layers: each a (weight, bias) pair, input first, output last."""

    actor: list[tuple[np.ndarray, np.ndarray]]
    critic: list[tuple[np.ndarray, np.ndarray]]
    log_std: np.ndarray | None  # a Gaussian's (Box actions); None: logits over Discrete actions
    activation: str  # torch.nn's class name: Tanh, ReLU, ...
    layout: str  # what it is, for messages: "an SB3 ActorCriticPolicy"


@dataclass(frozen=True)
class Imported:
    """A written policy file, and the settings a run that starts from it needs (its widths, its
    environment, no observation normalisation: the model was trained on raw observations):
    `hotprune.Config.from_dict({**imported.settings, ...})`. `critic` says whether the file holds one."""

    path: Path
    settings: dict[str, Any]
    critic: bool

    def __fspath__(self) -> str:  # hotprune.load_policy(imported)
        return str(self.path)

    def command(self) -> str:
        """`hotprune run` with these settings."""
        sets = [f"{key}={_typed(value)}" for key, value in self.settings.items() if key != "env_id"]
        return shlex.join(["hotprune", "run", "--env", self.settings["env_id"],
                           *(arg for s in sets for arg in ("--set", s))])


def _typed(value: Any) -> str:
    """A setting's value as --set takes it."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def import_policy(path: str | Path, kind: str, env_id: str, out: str | Path | None = None) -> Imported:
    """Read the model at `path` (`kind`: sb3 or cleanrl), check it against `env_id`'s spaces and write
    it as a hotprune policy file to `out` (default: `path` with the suffix .safetensors)."""
    if kind not in READERS:
        raise ValueError(f"kind must be one of {', '.join(READERS)}, got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    spec = env_spec(env_id)
    network = READERS[kind](path)
    _check(network, spec, path)
    out = Path(out) if out is not None else path.with_suffix(".safetensors")
    if out.resolve() == path.resolve():
        raise ArtifactError(f"{out} is the model itself: give another --out")
    tensors = {f"net.{2 * i}.{part}": a for i, layer in enumerate(network.actor) for part, a in zip(WB, layer)}
    if network.log_std is not None:
        tensors["log_std"] = network.log_std
    hidden = [w.shape[0] for w, _ in network.actor[:-1]]
    critic = [w.shape[0] for w, _ in network.critic[:-1]] == hidden  # else a run's critic cannot take it
    if critic:
        tensors |= {f"critic.{2 * i}.{part}": a for i, layer in enumerate(network.critic) for part, a in zip(WB, layer)}
    artifacts.save(out, tensors, env_id=env_id, discrete=spec.discrete, algorithm="ppo",
                   activation=TORCH_ACTIVATIONS[network.activation], hidden_sizes=hidden, source=kind,
                   source_file=path.name, weight_sparsity=0.0)
    settings = {"env_id": env_id, "algorithm": "ppo", "init_file": str(out.absolute()), "ppo.hidden_sizes": hidden,
                "normalize_obs": False}
    return Imported(out, settings, critic)


def _check(network: Network, spec: EnvSpec, path: Path) -> None:
    """The network is one hotprune's PPO computes for `spec`'s environment (ArtifactError naming what differs)."""
    activation = TORCH_ACTIVATIONS.get(network.activation)
    expected = actor_kind("ppo", spec.discrete).activation
    if activation != expected:
        raise ArtifactError(f"{path}: {network.layout} with {network.activation} activations; hotprune's PPO "
                            f"networks use {_torch_name(expected)}")
    action = f"Discrete({spec.act_dim})" if spec.discrete else f"Box({spec.act_dim},)"
    if (network.log_std is None) != spec.discrete:
        has = "a Gaussian for Box actions (it has a log std)" if spec.discrete else "logits for Discrete actions"
        raise ArtifactError(f"{path}: its policy is {has}; {spec.env_id}'s actions are {action}")
    for name, layers, outputs in (("policy", network.actor, spec.act_dim), ("value", network.critic, 1)):
        sizes = [spec.obs_dim] + [w.shape[0] if w.ndim == 2 else -1 for w, _ in layers]
        for i, (w, b) in enumerate(layers):
            if w.shape != (sizes[i + 1], sizes[i]) or b.shape != (sizes[i + 1],):
                what = f"{spec.env_id} has {spec.obs_dim} observations" if i == 0 else \
                    f"the layer before gives {sizes[i]}"
                raise ArtifactError(f"{path}: its {name} network's layer {i} has weight {tuple(w.shape)} and bias "
                                    f"{tuple(b.shape)}; {what}")
        if sizes[-1] != outputs:
            raise ArtifactError(f"{path}: its {name} network has {sizes[-1]} outputs; {spec.env_id} needs {outputs} "
                                f"({'actions ' + action if name == 'policy' else 'a value'})")
    if network.log_std is not None and network.log_std.shape != (spec.act_dim,):
        raise ArtifactError(f"{path}: its log std has shape {network.log_std.shape}; {spec.env_id} has "
                            f"{spec.act_dim} action dimensions")
    arrays = [a for layers in (network.actor, network.critic) for layer in layers for a in layer]
    if not all(np.isfinite(a).all() for a in arrays + ([network.log_std] if network.log_std is not None else [])):
        raise ArtifactError(f"{path}: its weights are not all finite")


def _torch_name(activation: str) -> str:
    return next(name for name, ours in TORCH_ACTIVATIONS.items() if ours == activation)


# --- readers -------------------------------------------------------------------------------------


def _state_dict(data: bytes | Path, what: str) -> dict[str, np.ndarray]:
    """A state_dict saved with torch.save, loaded with weights_only=True (torch's own unpickler, which
    builds tensors and plain containers and refuses everything else), as float32 arrays. (torch is
    imported here: `import hotprune` and its public names load none.)"""
    import torch

    try:
        state = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu",
                           weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...: torch's reasons to refuse a file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{what} is not a torch state_dict of tensors ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ArtifactError(f"{what} is not a state_dict (names -> tensors) but a {type(state).__name__}")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _stack(state: dict[str, np.ndarray], prefix: str, what: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Linear layers `prefix.0`, `prefix.2`, ... of an nn.Sequential that alternates Linear and
    activation (its weights and biases taken out of `state`); refused if anything else sits in it."""
    names = sorted((k for k in state if k.startswith(prefix + ".")), key=lambda k: (len(k), k))
    layer = re.compile(re.escape(prefix) + r"\.(\d+)\.(?:weight|bias)")
    indices = sorted({int(m.group(1)) for k in names if (m := layer.fullmatch(k))})
    expected = {f"{prefix}.{i}.{part}" for i in indices for part in WB}
    if indices != list(range(0, 2 * len(indices), 2)) or set(names) != expected:
        raise ArtifactError(f"{what}: {prefix} is not Linear layers with an activation between each two (it holds "
                            f"{', '.join(names)}; expected {prefix}.0.weight, {prefix}.0.bias, {prefix}.2.weight, ...)")
    return [(state.pop(f"{prefix}.{i}.weight"), state.pop(f"{prefix}.{i}.bias")) for i in indices]


def _linear(state: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    return state.pop(f"{name}.weight"), state.pop(f"{name}.bias")


def _unmapped(state: dict[str, np.ndarray], path: Path, layout: str, expected: str) -> None:
    if state:
        raise ArtifactError(f"{path} holds {', '.join(sorted(state))}, which {layout} ({expected}) does not have")


def read_sb3(path: Path) -> Network:
    """An SB3 model zip's ActorCriticPolicy (PPO's, A2C's)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = [m for m in (SB3_WEIGHTS, SB3_DATA) if m not in members]
            if missing:
                raise ArtifactError(f"{path} is not an SB3 model: its zip has no {' and no '.join(missing)}")
            weights, data = archive.read(SB3_WEIGHTS), archive.read(SB3_DATA)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{path} is not an SB3 model zip ({type(exc).__name__})") from None
    try:
        data = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not an SB3 model: its {SB3_DATA} is not JSON") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not an SB3 model: its {SB3_DATA} is not a JSON object")
    layout = "an SB3 ActorCriticPolicy (PPO's or A2C's MlpPolicy)"
    if data.get("use_sde"):
        raise ArtifactError(f"{path}: {layout} with gSDE (use_sde=True), whose noise hotprune's Gaussian "
                            "does not compute")
    kwargs, space = (data.get(key) if isinstance(data.get(key), dict) else {}
                     for key in ("policy_kwargs", "observation_space"))  # JSON, or the fields beside a pickle
    extractor = _class_name(kwargs.get("features_extractor_class", "<class 'FlattenExtractor'>"))
    if extractor != "FlattenExtractor":
        raise ArtifactError(f"{path}: {layout} with features extractor {extractor}; only FlattenExtractor "
                            "(MlpPolicy's) maps to an MLP")
    trained_on = space.get("_shape")
    state = _state_dict(weights, f"{path}'s {SB3_WEIGHTS}")
    expected = "mlp_extractor.policy_net.*, action_net, mlp_extractor.value_net.*, value_net, log_std"
    for name in ("action_net", "value_net"):
        if f"{name}.weight" not in state or f"{name}.bias" not in state:
            raise ArtifactError(f"{path} holds no {name}: it is not {layout} ({expected}); it holds "
                                f"{', '.join(sorted(state)[:12])}{', ...' if len(state) > 12 else ''}")
    network = Network(
        actor=[*_stack(state, "mlp_extractor.policy_net", path), _linear(state, "action_net")],
        critic=[*_stack(state, "mlp_extractor.value_net", path), _linear(state, "value_net")],
        log_std=state.pop("log_std", None), activation=_class_name(kwargs.get("activation_fn",
                                                                              SB3_DEFAULT_ACTIVATION)),
        layout=layout)
    _unmapped(state, path, layout, expected)
    if isinstance(trained_on, list) and len(trained_on) != 1:
        raise ArtifactError(f"{path} was trained on observations of shape {tuple(trained_on)}; hotprune's "
                            "networks take flat (Box of one dimension) observations")
    return network


def _class_name(text: Any) -> str:
    """`<class 'torch.nn.modules.activation.ReLU'>` (how SB3's data names a pickled class) -> `ReLU`."""
    found = _CLASS.fullmatch(str(text))
    return (found.group(1) if found else str(text)).rpartition(".")[2]


def read_cleanrl(path: Path) -> Network:
    """A CleanRL PPO Agent's state_dict (ppo.py, ppo_continuous_action.py)."""
    state = _state_dict(path, str(path))
    continuous = "actor_mean.0.weight" in state
    layout = f"CleanRL's {'ppo_continuous_action.py' if continuous else 'ppo.py'} Agent"
    expected = "actor_mean.*, actor_logstd, critic.*" if continuous else "actor.*, critic.*"
    actor_prefix = "actor_mean" if continuous else "actor"
    if f"{actor_prefix}.0.weight" not in state or "critic.0.weight" not in state:
        raise ArtifactError(f"{path} is not a CleanRL PPO Agent's state_dict (actor.* or actor_mean.*, and "
                            f"critic.*); it holds {', '.join(sorted(state)[:12])}{', ...' if len(state) > 12 else ''}")
    log_std = state.pop("actor_logstd", None)
    network = Network(actor=_stack(state, actor_prefix, path), critic=_stack(state, "critic", path),
                      log_std=None if log_std is None else log_std.reshape(-1), activation="Tanh", layout=layout)
    _unmapped(state, path, layout, expected)
    return network


READERS: dict[str, Callable[[Path], Network]] = {"sb3": read_sb3, "cleanrl": read_cleanrl}
