"""What a run keeps besides its logs: the pruned policy, its masks, the initial weights, progress.csv.

Tensor files are safetensors, not `torch.save` pickles (nothing we write is a pickle): read them with
`safetensors.torch.load_file(path)` or `safetensors.numpy.load_file(path)`, no hotprune needed, or
rebuild the actor with `load_policy`. Each file's metadata says what it holds (run id, env id,
version, epoch, structure, ...), so a loader can refuse a policy for another environment. Files are
written to a temporary name and renamed: a reader never sees half a file.

Nothing corrupt is trusted. Every file `save` writes carries in its metadata a `checksum`: sha256 over
its tensors (`digest`: name, dtype, shape and raw bytes, in name order), and every file `load` reads is
checked against it; a float tensor with a NaN or an infinity is refused too. A file without a checksum
(written before hotprune kept one, or by other tools: a hand-made mask or init file) is read with a
warning line on stderr. A run's own files (checkpoint, masks, policy, ...) also carry its `run_uid`, a
random id made with its directory and kept in its config.toml (run ids repeat across runs directories:
the uid does not): `load_kept` refuses a file of another run, or one of this run without a checksum. A
run made before uids existed has none (run_uid "" in its config): its files are read by run id, as then.

    runs/<id>/policy.safetensors    the pruned actor (pruned weights exactly 0, or physically smaller
                                    for neuron pruning): after every compression and at the end
    runs/<id>/masks.safetensors     the keep-masks (bool, dense shapes) of the last compression
    runs/<id>/initial.safetensors   the actor before any update (epoch 0): what a lottery ticket rewinds to
    runs/<id>/progress.csv          one row per epoch, with global_step (env samples so far)
    runs/<id>/weights/, transitions.safetensors   what a lottery ticket needs (hotprune.commands.lth)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from hotprune.runs import private

if TYPE_CHECKING:
    from hotprune.config import Config
    from hotprune.learning.policy import Actor


POLICY = "policy.safetensors"
MASKS = "masks.safetensors"
INITIAL = "initial.safetensors"
CHECKPOINT = "checkpoint.safetensors"  # the trainer's, to resume from (hotprune.learning.checkpoints)
PROGRESS = "progress.csv"
CHECKSUM = "checksum"  # metadata: "sha256:<hex>" of the file's tensors (digest)
RUN_UID = "run_uid"  # metadata: the run that kept the file (Config.run_uid)


class ArtifactError(ValueError):
    """A file is missing, not a hotprune tensor file, or not for this environment."""


def digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype, shape and raw bytes (C order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return f"sha256:{h.hexdigest()}"


def save(path: Path, tensors: Mapping[str, np.ndarray], **meta: Any) -> None:
    """Write tensors and JSON-encoded metadata atomically, with their checksum (any given is replaced:
    a file read, changed and written again gets its new tensors' own)."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory; give a file name")
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    meta = {**meta, CHECKSUM: digest(arrays)}
    try:
        safetensors.numpy.save_file(arrays, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
        os.replace(tmp, path)
    except (safetensors.SafetensorError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None


def load(path: Path, warn_unverified: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and metadata of a file `save` wrote, verified (ArtifactError if corrupt); one without a
    checksum is read with a warning line (a caller that checks the file further passes
    `warn_unverified=False` and warns once it has accepted it: a refused file gets its one line only)."""
    tensors, meta = _verified(Path(path))
    if CHECKSUM not in meta and warn_unverified:
        warn_unverified_file(Path(path))
    return tensors, meta


def load_kept(path: Path, cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A file run `cfg` kept and now reads back, verified and refused unless it is this run's: its
    run uid (or, in a run made before uids, its run id) is the run's, and it has a checksum."""
    path = Path(path)
    tensors, meta = _verified(path)
    if not cfg.run_uid:  # a run from before uids: its files have neither uid nor, maybe, checksum
        if meta.get("run_id") != cfg.run_id:
            raise ArtifactError(f"{path} is a file of run_id {meta.get('run_id')!r}, not {cfg.run_id!r}")
        if CHECKSUM not in meta:
            warn_unverified_file(path)
    elif meta.get(RUN_UID) != cfg.run_uid:
        raise ArtifactError(f"{path} belongs to another run (run uid {meta.get(RUN_UID) or 'none'}), not to "
                            f"this one (run uid {cfg.run_uid}, in its config.toml): refused")
    elif CHECKSUM not in meta:
        raise ArtifactError(f"{path} has no checksum, which every file of this run has: refused")
    return tensors, meta


def run_meta(cfg: Config) -> dict[str, Any]:
    """What every file a run keeps says about the run: its id and uid, environment (with env_kwargs,
    env_wrappers and env_dir where set: what eval and load_policy need to make it again), algorithm and
    model (the actor's hidden sizes)."""
    from hotprune.envs import EnvSource

    return {"run_id": cfg.run_id, RUN_UID: cfg.run_uid, "env_id": cfg.env_id, **EnvSource.of(cfg).meta(),
            "algorithm": cfg.algorithm, "hidden_sizes": cfg.network("actor").hidden_sizes}


# What a checkpoint's tensors mean depends on these settings (Config attributes, dotted for sections; the
# [actor], [critic] and [cnn] sections as written, which with the algorithm's hidden sizes fix each network; the
# environment's constructor arguments and wrappers, which fix its spaces):
# resumed with one of them edited in config.toml, they would be loaded into another model (or one with another
# activation), or masks into a model that keeps none. `check_checkpoint` refuses that.
CHECKPOINT_SETTINGS = ("env_id", "env_kwargs", "env_wrappers", "algorithm", "algo.hidden_sizes", "actor.hidden_sizes",
                       "actor.activation", "critic.hidden_sizes", "critic.activation", "cnn.channels", "cnn.kernels",
                       "cnn.strides", "cnn.hidden_sizes", "prune_training_model", "normalize_obs",
                       "normalize_reward", "pruning.method", "pruning.structure", "pruning.targets",
                       "pruning.prune_output_layer")


def checkpoint_settings(cfg: Config) -> dict[str, Any]:
    """The values of CHECKPOINT_SETTINGS in run `cfg`: what its checkpoints record."""
    def value(key: str) -> Any:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        return node

    return {key: value(key) for key in CHECKPOINT_SETTINGS}


def check_checkpoint(path: Path, meta: Mapping[str, Any], cfg: Config) -> None:
    """A checkpoint of run `cfg` (load_kept) can be resumed under the settings its config.toml holds now:
    it was written under the same CHECKPOINT_SETTINGS (a checkpoint from before they were recorded: the
    same environment, model and algorithm) and at an epoch within the run's length."""
    now = checkpoint_settings(cfg)
    recorded = meta.get("settings") or {"algorithm": meta.get("algorithm", "ppo"), "env_id": meta.get("env_id"),
                                        "algo.hidden_sizes": meta.get("hidden_sizes")}
    for key, then in recorded.items():
        if key in now and then is not None and now[key] != then:
            shown = key.replace("algo.", f"{cfg.algorithm}.")  # the key as config.toml spells it
            raise ArtifactError(f"{cfg.run_dir / 'config.toml'} was edited: {shown} is {json.dumps(now[key])}, but the "
                                f"checkpoint {path} was trained with {json.dumps(then)} (a run resumes with the "
                                "settings it started with; start a new run for others)")
    epoch = meta.get("epoch", 0)
    if epoch > cfg.total_epochs:
        raise ArtifactError(f"{cfg.run_dir / 'config.toml'} says {cfg.total_epochs} epochs (epochs or total_steps), "
                            f"but the checkpoint {path} is at epoch {epoch}: a run cannot be resumed shorter than "
                            f"it has trained (set epochs >= {epoch})")


def _verified(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with safetensors.safe_open(str(path), "np") as f:
            meta = {k: _meta_value(v) for k, v in (f.metadata() or {}).items()}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a hotprune tensor file ({type(exc).__name__})") from None
    if CHECKSUM in meta and meta[CHECKSUM] != digest(tensors):
        raise ArtifactError(f"{path} is corrupt: its tensors do not match the checksum it was written with")
    for name, a in tensors.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ArtifactError(f"{path}: {name} holds non-finite values (NaN or infinity)")
    return tensors, meta


_warned: set[Path] = set()  # one warning per file and process: the same file is read at several places


def warn_unverified_file(path: Path) -> None:
    if path.resolve() not in _warned:
        _warned.add(path.resolve())
        print(f"hotprune: warning: {path} has no checksum (written before hotprune kept one, or by another tool): "
              "read unverified", file=sys.stderr)


def _meta_value(text: str) -> Any:
    """A metadata value: JSON, as `save` writes it; a value that is not JSON is the plain string it is
    (a file written by other code: `env_id=CartPole-v1`, not `env_id="CartPole-v1"`)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth (a crafted file)
        return text


def other_kind(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str | None:
    """What a kept file that is not a policy is, by its contents: masks (every tensor bool), or the
    trainer's checkpoint (its records, its networks under prefixes); None for anything else."""
    if tensors and all(a.dtype == np.bool_ for a in tensors.values()):
        return "a masks file (True: a weight kept)"
    if "records" in meta and "discrete" not in meta:
        return "a trainer checkpoint (what `hotprune run --resume` goes on from)"
    return None


def read_policy(path: str | Path, env_id: str | None = None) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """A policy file's path, its actor's tensors and its metadata (a run directory means its
    policy.safetensors). With `env_id`, a policy trained on another environment is refused."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY
    tensors, meta = load(path)
    other = other_kind(tensors, meta)
    if other:
        raise ArtifactError(f"{path} is {other}, not a policy: pass a run directory or its policy.safetensors")
    missing = [key for key in ("env_id", "discrete") if key not in meta]
    if missing:
        raise ArtifactError(f"{path} is not a hotprune policy: its metadata lacks {' and '.join(missing)} "
                            "(expected e.g. env_id=CartPole-v1 and discrete=true)")
    if env_id is not None and meta["env_id"] != env_id:
        raise ArtifactError(f"{path} is a policy for {meta['env_id']}, not {env_id}")
    # the actor's part: an init file's `actor.<name>` are its tensors too, its `critic.<name>` are not
    actor = {name.removeprefix("actor."): a for name, a in tensors.items() if not name.startswith("critic.")}
    return path, actor, meta


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
    """The actor of a policy file's tensors, as its metadata says (hotprune.actor_spec.policy_metadata:
    algorithm, activation, action bounds; older files: the algorithm's activation, the env's bounds)."""
    from hotprune.actor_spec import policy_conv, policy_spec
    from hotprune.learning.policy import actor_from_tensors

    algorithm = meta.get("algorithm", "ppo")  # files from before SAC are PPO's
    spec = policy_spec(meta) if algorithm == "sac" else None  # older PPO files: no env needed
    return actor_from_tensors(dict(tensors), meta["discrete"], algorithm,
                              (spec.action_low, spec.action_high) if spec else None, meta.get("activation"),
                              policy_conv(meta))


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
