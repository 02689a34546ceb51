"""`hotprune export RUN_DIR --format state_dict|torch-prune|masks`: the kept policy, for other code.

Every format is a safetensors file (no pickle), read with `safetensors.torch.load_file`:
- `state_dict`: the pruned actor's tensors as `Actor.state_dict()` names them (physically smaller
  for neuron pruning); `load_state_dict` into an actor of those shapes.
- `torch-prune`: `torch.nn.utils.prune`'s layout in the dense shapes: `<layer>.weight_orig` and
  `<layer>.weight_mask` for every masked weight (and bias, for neurons), the other tensors as they
  are. `load_torch_prune` rebuilds the module: `prune.identity` on each masked tensor, then
  `load_state_dict`; the module then computes exactly the pruned policy.
- `masks`: the keep-masks (bool, dense shapes) of the last compression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors.torch
from torch.nn.utils import prune

from hotprune.runs import artifacts
from hotprune.learning.policy import Actor

FORMATS = ("state_dict", "torch-prune", "masks")


def export(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {'|'.join(FORMATS)}, got {fmt!r}")
    run_dir = Path(run_dir)
    tensors, meta = artifacts.load(run_dir / artifacts.POLICY)
    out = out or run_dir / f"export_{fmt.replace('-', '_')}.safetensors"
    if fmt == "state_dict":
        artifacts.save(out, tensors, **meta, format=fmt)
    else:
        masks, masks_meta = artifacts.load(run_dir / artifacts.MASKS)
        if masks_meta.get("version") != meta.get("version"):  # written one after the other: a live run
            raise artifacts.ArtifactError(f"{run_dir}: the policy (v{meta.get('version')}) and the masks "
                                          f"(v{masks_meta.get('version')}) differ; export again when the run is done")
        if fmt == "masks":
            artifacts.save(out, masks, **meta, format=fmt)
        else:
            artifacts.save(out, torch_prune_layout(tensors, masks), **meta, format=fmt)
    return out


def torch_prune_layout(tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense `<name>_orig` + `<name>_mask` for every masked tensor; a neuron-pruned (smaller) tensor is
    scattered back into its dense shape (its mask is the outer product of kept rows and columns, so
    the kept positions in row-major order are exactly the small tensor's elements)."""
    out = {}
    for name, value in tensors.items():
        if name not in masks:
            out[name] = value
            continue
        mask = masks[name]
        dense = np.zeros(mask.shape, value.dtype)
        dense[mask] = value.reshape(-1) if value.shape != mask.shape else value[mask]
        out[name + "_orig"], out[name + "_mask"] = dense, mask.astype(value.dtype)
    return out


def load_torch_prune(path: str | Path) -> Actor:
    """The actor a torch-prune export holds, with `torch.nn.utils.prune` reparametrisation in place."""
    tensors = safetensors.torch.load_file(str(path))
    _, meta = artifacts.load(Path(path))
    dense = {n.removesuffix("_orig"): t for n, t in tensors.items() if n.endswith("_orig")}
    dense.update({n: t for n, t in tensors.items() if not n.endswith(("_orig", "_mask"))})
    actor = artifacts.policy_actor({n: t.numpy() for n, t in dense.items()}, meta)
    modules = dict(actor.named_modules())
    for name in (n.removesuffix("_orig") for n in tensors if n.endswith("_orig")):
        module_name, _, param = name.rpartition(".")
        prune.identity(modules[module_name], param)
    actor.load_state_dict(tensors)
    return actor
