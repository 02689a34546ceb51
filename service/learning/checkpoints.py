"""Trainer checkpoints: what a trainer needs to go on after a crash, in one safetensors file.

runs/<id>/checkpoint.safetensors is rewritten atomically (hotprune.runs.artifacts.save: a temporary file,
then a rename) at epoch 0, every `checkpoint_every` epochs, after the last epoch, and when a trainer
resumes. It is written before that epoch's snapshot is published, so a resumed trainer knows an upper
bound on the versions its lost epochs published, and starts above it: workers never swap backwards.

Tensors: the algorithm's modules' parameters (PPO: `actor.<name>`, `critic.<name>`; SAC: also
`qf1.`, `qf2.` and their `_target`s), its optimizers' state (PPO: `adam.<param index>.<key>`; SAC:
`adam_actor.`, `adam_q.`, `adam_alpha.`) and what else it keeps (SAC: `log_alpha`), the training
masks (`mask.<name>`, True = kept; SAC's critic masks `critic_mask.<critic>.<name>`), the RNG states
(`rng.torch`, `rng.generator`) and the swap latencies so far. Metadata (JSON): the run (id and uid),
environment and model it belongs to, the settings its tensors depend on (`settings`), and the
trainer's counters and epoch records. `load` refuses a checkpoint that is corrupt, of another run,
written under other settings or past the run's epochs (hotprune.runs.artifacts: load_kept,
check_checkpoint), in one line. Not `torch.save`: that is a
pickle, and nothing hotprune writes is one; `safetensors.torch.load_file` reads it without running
any code, which is what `weights_only` loading is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from hotprune.learning.policy import actor_arrays
from hotprune.runs import artifacts
from hotprune.runs.artifacts import CHECKPOINT

if TYPE_CHECKING:
    from hotprune.config import Config


class CheckpointError(artifacts.ArtifactError):
    """No usable checkpoint: missing, unreadable, or from another run or model."""


def path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def state_tensors(modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                  generator: torch.Generator) -> dict[str, np.ndarray]:
    """The learning state as named host arrays, whatever device it learns on: each module's parameters
    (`<module>.<name>`), each optimizer's moments (`<optimizer>.<param index>.<key>`), the cpu RNG states
    (a GPU's generator is not kept: sampled actions after a resume differ, as they would on another
    device)."""
    out = {}
    for prefix, module in modules.items():
        out |= {f"{prefix}.{n}": a for n, a in actor_arrays(module).items()}
    for prefix, optimizer in optimizers.items():
        for index, state in optimizer.state_dict()["state"].items():
            out |= {f"{prefix}.{index}.{key}": value.cpu().numpy().copy() for key, value in state.items()
                    if torch.is_tensor(value)}
    out["rng.torch"] = torch.get_rng_state().numpy()
    out["rng.generator"] = generator.get_state().numpy()
    return out


def param_groups(optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, list[dict]]:
    """Each optimizer's settings (learning rate, betas, ...), for the checkpoint's metadata."""
    return {prefix: optimizer.state_dict()["param_groups"] for prefix, optimizer in optimizers.items()}


def restore(tensors: dict[str, np.ndarray], modules: Mapping[str, torch.nn.Module],
            optimizers: Mapping[str, torch.optim.Optimizer], generator: torch.Generator,
            groups: Mapping[str, list[dict]]) -> None:
    """Load what `state_tensors` wrote back into freshly built modules (same shapes), on whatever device
    they are: `load_state_dict` copies into the modules' own tensors, and torch's optimizers move their
    state to their parameters' device (what torch.load's map_location does for a pickle)."""
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {n[len(prefix):]: torch.from_numpy(a.copy()) for n, a in tensors.items() if n.startswith(prefix)}

    try:
        for prefix, module in modules.items():
            module.load_state_dict(part(prefix + "."))
        for prefix, optimizer in optimizers.items():
            state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in part(prefix + ".").items():
                index, key = name.split(".", 1)
                state.setdefault(int(index), {})[key] = value
            optimizer.load_state_dict({"state": state, "param_groups": groups[prefix]})
        torch.set_rng_state(torch.from_numpy(tensors["rng.torch"].copy()))
        generator.set_state(torch.from_numpy(tensors["rng.generator"].copy()))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not fit this model: {str(exc).splitlines()[0][:200]}") from None


def save(cfg: Config, tensors: dict[str, np.ndarray], **meta: Any) -> None:
    """Write run `cfg`'s checkpoint: `tensors` and `meta`, with the run's identity and settings."""
    artifacts.save(path(cfg.run_dir), tensors, **artifacts.run_meta(cfg),
                   settings=artifacts.checkpoint_settings(cfg), **meta)


def load(cfg: Config) -> tuple[dict[str, np.ndarray], dict]:
    """Run `cfg`'s checkpoint, verified: refused if corrupt, of another run or model, written under other
    settings than the run's config.toml holds now, or past its epochs."""
    try:
        tensors, meta = artifacts.load_kept(path(cfg.run_dir), cfg)
        artifacts.check_checkpoint(path(cfg.run_dir), meta, cfg)
    except artifacts.ArtifactError as exc:
        raise CheckpointError(str(exc)) from None
    return tensors, meta
