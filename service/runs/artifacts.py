"""What a run keeps besides its logs: the pruned policy, its masks, the initial weights, progress.csv.

Tensor files are safetensors, not `torch.save` pickles (nothing we write is a pickle): read them with
`safetensors.torch.load_file(path)` or `safetensors.numpy.load_file(path)`, no hotprune needed, or
rebuild the actor with `load_policy`. Each file's metadata says what it holds (run id, env id,
version, epoch, structure, ...), so a loader can refuse a policy for another environment. Files are
written to a temporary name and renamed: a reader never sees half a file.

    runs/<id>/policy.safetensors    the pruned actor (pruned weights exactly 0, or physically smaller
                                    for neuron pruning): after every compression and at the end
    runs/<id>/masks.safetensors     the keep-masks (bool, dense shapes) of the last compression
    runs/<id>/initial.safetensors   the actor before any update (epoch 0): what a lottery ticket rewinds to
    runs/<id>/progress.csv          one row per epoch, with global_step (env samples so far)
    runs/<id>/weights/, transitions.safetensors   what a lottery ticket needs (hotprune.commands.lth)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from hotprune.runs import private

if TYPE_CHECKING:
    from hotprune.learning.policy import Actor


POLICY = "policy.safetensors"
MASKS = "masks.safetensors"
INITIAL = "initial.safetensors"
CHECKPOINT = "checkpoint.safetensors"  # the trainer's, to resume from (hotprune.learning.checkpoints)
PROGRESS = "progress.csv"


class ArtifactError(ValueError):
    """A file is missing, not a hotprune tensor file, or not for this environment."""


def save(path: Path, tensors: Mapping[str, np.ndarray], **meta: Any) -> None:
    """Write tensors and JSON-encoded metadata atomically."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory; give a file name")
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    try:
        safetensors.numpy.save_file(arrays, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
        os.replace(tmp, path)
    except (safetensors.SafetensorError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and metadata of a file `save` wrote."""
    try:
        with safetensors.safe_open(str(path), "np") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a hotprune tensor file ({type(exc).__name__})") from None
    return tensors, meta


def read_policy(path: str | Path, env_id: str | None = None) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """A policy file's path, tensors and metadata (a run directory means its policy.safetensors).
    With `env_id`, a policy trained on another environment is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY
    tensors, meta = load(path)
    if "env_id" not in meta or "discrete" not in meta:
        raise ArtifactError(f"{path} is not a hotprune policy (no env_id / discrete in its metadata)")
    if env_id is not None and meta["env_id"] != env_id:
        raise ArtifactError(f"{path} is a policy for {meta['env_id']}, not {env_id}")
    return path, tensors, meta


def load_policy(path: str | Path, env_id: str | None = None) -> tuple[Actor, dict[str, Any]]:
    """The actor a policy file holds (a run directory means its policy.safetensors), and its metadata.
    With `env_id`, a policy trained on another environment is refused. (torch is imported here, not
    with this module: the supervisor reads these files and starts faster without it.)"""
    path, tensors, meta = read_policy(path, env_id)
    try:
        return policy_actor(tensors, meta), meta
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise no_actor(path, exc) from None


def no_actor(path: Path, exc: Exception) -> ArtifactError:
    """The error for a policy file whose tensors do not make an actor (`exc` says why)."""
    return ArtifactError(f"{path} does not hold an actor: {str(exc).splitlines()[0] if str(exc) else exc!r}")


def policy_actor(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Actor:
    """The actor of a policy file's tensors, as its metadata says (algorithm; for SAC's squashed head
    the action bounds come from the environment)."""
    from hotprune.envs import EnvSource, env_spec
    from hotprune.learning.policy import actor_from_tensors

    algorithm = meta.get("algorithm", "ppo")  # files from before SAC are PPO's
    spec = env_spec(EnvSource.from_meta(meta)) if algorithm == "sac" else None
    return actor_from_tensors(dict(tensors), meta["discrete"], algorithm,
                              (spec.action_low, spec.action_high) if spec else None)


class Progress:
    """progress.csv: one row per epoch, columns fixed by the first row, flushed as written. A resumed
    trainer starts it again from the rows its checkpoint kept (dropping the epochs it redoes)."""

    def __init__(self, path: Path, rows: Iterable[Mapping[str, Any]] = ()):
        self.path = path
        self.file = None
        self.writer: csv.DictWriter | None = None
        for row in rows:
            self.write(row)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            self.file = os.fdopen(private.create(self.path), "w", newline="", encoding="utf-8")  # 0644, any umask
            self.writer = csv.DictWriter(self.file, fieldnames=list(row), extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({k: "" if v is None else v for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
