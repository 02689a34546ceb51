"""The files a run can start from, read and checked without torch: a mask file and an init file; and
the names of the files a dense run keeps for its tickets (`weights/epoch-K.safetensors`, `transitions.safetensors`).

`pruning.mask_file` holds keep-masks (bool, True = kept, dense shapes) named `actor.<name>` and
`critic.<name>` (`hotprune lth create-mask` writes them); `init_file` holds starting weights (float32)
named the same way (`weights/epoch-K.safetensors` of a run with `keep_weights_every`). A name without
a prefix is the actor's, so a run's `masks.safetensors`, `policy.safetensors` or `initial.safetensors`
serve too. Either file must be a safetensors file whose metadata names its environment. PPO's critic
is one MLP (`critic.0.weight`, ...); SAC's are its twin Q networks and their targets
(`critic.qf1.net.0.weight`, ..., `critic.qf1_target.net.0.weight`, ...: hotprune.actor_spec.critic_shapes),
and a mask file masks the twins only (each target keeps its critic's mask).

Checked before anything starts (the CLI calls `check` before it makes the run directory, and the
trainer and the compressor read the files through the same functions): the file exists and is a
tensor file, not corrupt (its checksum) and finite (hotprune.runs.artifacts.load), is for the run's
environment (and, where its metadata names an activation, as `hotprune import`'s files do, for the
run's activation), names only tensors the model has (else the error lists the names it has), in the
model's shapes and the right dtype, and a mask keeps at least one entry of every tensor. These files
come from other runs by design (a ticket trains on a dense run's masks and weights): their run uid is
not checked. Each failure is one line (ArtifactError). The compressor imports no torch, nor does this
module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotprune.runs import artifacts
from hotprune.actor_spec import run_shapes
from hotprune.runs.artifacts import ArtifactError
from hotprune.envs import EnvSource, env_spec
from hotprune.pruning.engine import Masks, masked_stats, prunable_names

PARTS = ("actor", "critic")
Parts = dict[str, dict[str, np.ndarray]]  # "actor" / "critic" -> name -> array
# What a dense run keeps for its tickets (the trainer writes them: hotprune.roles.trainer.lottery)
WEIGHTS_DIR = "weights"
TRANSITIONS = "transitions.safetensors"
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.safetensors$")


def weights_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / WEIGHTS_DIR / f"epoch-{epoch}.safetensors"


def kept_epochs(run_dir: Path) -> list[int]:
    """The epochs whose weights a run kept, in order."""
    folder = Path(run_dir) / WEIGHTS_DIR
    found = [_EPOCH_FILE.match(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m)


def model_shapes(cfg) -> dict[str, dict[str, tuple[int, ...]]]:
    """The shapes of the tensors a run's actor and critic have, by part."""
    spec = env_spec(EnvSource.of(cfg))
    return {part: run_shapes(cfg, spec, part) for part in PARTS}


def joined(parts: Parts) -> dict[str, np.ndarray]:
    """One flat table, `actor.<name>` and `critic.<name>`: what these files hold."""
    return {f"{part}.{name}": a for part, tensors in parts.items() for name, a in tensors.items()}


def read(path: str | Path, what: str, cfg, dtype: str) -> tuple[Parts, dict]:
    """A mask or init file's tensors by part, checked against the model of run config `cfg`, and its metadata."""
    env_id, hidden_sizes = cfg.env_id, {part: cfg.network(part).hidden_sizes for part in PARTS}
    try:
        tensors, meta = artifacts.load(Path(path), warn_unverified=False)
    except ArtifactError as exc:
        raise ArtifactError(f"{what} {exc}") from None
    if "env_id" not in meta:
        raise ArtifactError(f"{what} {path} has no env_id in its metadata: expected env_id={env_id} (this run's)")
    if meta["env_id"] != env_id:
        raise ArtifactError(f"{what} {path} is for {meta['env_id']}, not for this run's {env_id}")
    if not tensors:
        raise ArtifactError(f"{what} {path} holds no tensors")
    activation = cfg.network("actor").activation
    if meta.get("activation", activation) != activation:  # files of older runs name none
        raise ArtifactError(f"{what} {path} holds a {meta['activation']} network, this run's actor is "
                            f"{activation} (actor.activation)")
    shapes = model_shapes(cfg)
    parts: Parts = {part: {} for part in PARTS}
    for key, array in tensors.items():
        part, _, name = key.partition(".") if key.split(".", 1)[0] in PARTS else ("actor", "", key)
        if name not in shapes[part]:
            expected = ", ".join(joined(shapes))
            raise ArtifactError(f"{what} {path} holds {key}, which this run's {cfg.algorithm} {part} (hidden sizes "
                                f"{hidden_sizes[part]}) does not have; expected names: {expected} (actor.<name> "
                                "may be written <name>)")
        if tuple(array.shape) != shapes[part][name]:
            raise ArtifactError(f"{what} {path}: {key} has shape {tuple(array.shape)}, this run's {part} "
                                f"(hidden sizes {hidden_sizes[part]}) has {shapes[part][name]}")
        if str(array.dtype) != dtype:
            raise ArtifactError(f"{what} {path}: {key} is {array.dtype}, not {dtype}")
        parts[part][name] = array
    if artifacts.CHECKSUM not in meta:  # accepted, but nothing vouches for its bytes
        artifacts.warn_unverified_file(Path(path))
    return parts, meta


def read_masks(cfg) -> tuple[Parts, dict]:
    """pruning.mask_file's keep-masks by part, and its metadata."""
    path = cfg.pruning.mask_file
    parts, meta = read(path, "mask file", cfg, "bool")
    for key, keep in joined(parts).items():
        if not keep.any():
            raise ArtifactError(f"mask file {path}: {key} keeps nothing (every weight of it pruned)")
        if "_target." in key:
            raise ArtifactError(f"mask file {path} holds {key}: a target critic keeps its critic's mask, and has "
                                "none of its own")
    return parts, meta


def read_init(cfg) -> tuple[Parts, dict]:
    """init_file's starting weights by part, and its metadata."""
    return read(cfg.init_file, "init file", cfg, "float32")  # finite: artifacts.load refuses NaN and infinity


def check(cfg) -> None:
    """The run's mask and init files, if it names any, are usable (ArtifactError, one line, if not)."""
    if cfg.pruning.mask_file:
        read_masks(cfg)
    if cfg.init_file:
        read_init(cfg)


@dataclass
class Fixed:
    """Method fixed's masks, read once: the actor's as the compressor applies them (units too, when
    the file was made with `structure = neuron`), the actor's and the critic's by their own names
    (what the trainer keeps zero), and what they leave of the actor: masked_stats with its weight sparsity."""

    masks: Masks
    actor: dict[str, np.ndarray]
    critic: dict[str, np.ndarray]
    stats: dict[str, Any]


def fixed_masks(cfg) -> Fixed | None:
    """pruning.mask_file's masks for a run of method fixed; None for another method."""
    if cfg.pruning.method != "fixed":
        return None
    parts, meta = read_masks(cfg)
    masks = Masks.from_elements(parts["actor"], meta.get("structure", "weight"))
    shapes = model_shapes(cfg)["actor"]
    spec = {n: ("float32", s) for n, s in shapes.items()}
    stats = masked_stats(masks, spec, prunable_names(spec, cfg.pruning.prune_output_layer))
    kept = sum(v["kept"] for v in stats["layers"].values())
    total = sum(v["total"] for v in stats["layers"].values())
    return Fixed(masks, parts["actor"], parts["critic"], {**stats, "weight_sparsity": 1 - kept / total})
