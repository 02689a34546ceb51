"""`hotprune export RUN_DIR --format state_dict|torch-prune|masks|onnx|torchscript`: the kept policy, for
other code.

The first three are safetensors files (no pickle), read with `safetensors.torch.load_file`:
- `state_dict`: the pruned actor's tensors as `Actor.state_dict()` names them (physically smaller
  for neuron pruning); `load_state_dict` into an actor of those shapes.
- `torch-prune`: `torch.nn.utils.prune`'s layout in the dense shapes: `<layer>.weight_orig` and
  `<layer>.weight_mask` for every masked weight (and bias, for neurons), the other tensors as they
  are. `load_torch_prune` rebuilds the module: `prune.identity` on each masked tensor, then
  `load_state_dict`; the module then computes exactly the pruned policy.
- `masks`: the keep-masks (bool, dense shapes) of the last compression.

The last two are the policy as a graph from observations (float32, a batch `obs` of shape (n, obs_dim);
for a CNN policy the frames as its environment gives them, uint8 (n, C, H, W), scaled inside the graph)
to the deterministic action `action` (what `hotprune.load_policy(...).predict(obs)` returns: the argmax
of the logits, as int64; the Gaussian's mean; for SAC's tanh-squashed actor tanh of its mean in the
action box; continuous actions clipped to the box), observation normalisation included, in the kept
policy's shapes (a neuron-pruned policy is physically smaller). Sampled actions are not exported.
- `onnx`: an ONNX model (opset 17), run with onnxruntime; needs the `onnx` extra. Its metadata_props
  carry the policy file's metadata (JSON values).
- `torchscript`: a traced TorchScript module, `torch.jit.load(path)`; the policy file's metadata is its
  extra file `hotprune.json`.
Each file is written to a temporary name and renamed: nothing is left of a failed export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch.nn.utils import prune

from hotprune.runs import artifacts
from hotprune.learning.policy import Actor

GRAPHS = {"onnx": ".onnx", "torchscript": ".pt"}  # graph formats and their files' suffixes
FORMATS = ("state_dict", "torch-prune", "masks", *GRAPHS)
ONNX_OPSET = 17  # read by every onnxruntime since 1.11


def export(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {'|'.join(FORMATS)}, got {fmt!r}")
    run_dir = Path(run_dir)
    if fmt in GRAPHS:
        return export_graph(run_dir, fmt, out or run_dir / f"export_{fmt}{GRAPHS[fmt]}")
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


def export_graph(run_dir: Path, fmt: str, out: Path) -> Path:
    """The run's policy as an ONNX or TorchScript graph of its deterministic action (module docstring)."""
    onnx = _onnx() if fmt == "onnx" else None  # before anything is read or written
    from hotprune.policy_api import load_policy

    policy = load_policy(run_dir)
    if out.is_dir():
        raise artifacts.ArtifactError(f"{out} is a directory; give a file name")
    module = policy.to_torch(deterministic=True)
    example = torch.zeros(2, policy.spec.obs_dim)
    if image := policy.spec.image:  # a CNN takes the frames as the environment gives them: uint8 (n, C, H, W)
        module, example = torch.nn.Sequential(torch.nn.Flatten(1), module), torch.zeros(2, *image, dtype=torch.uint8)
    meta = json.dumps(policy.metadata)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        # torch deprecates both tracers (for torch.export) but they are the ones that need nothing
        # beyond torch and onnx: its torch.export-based ONNX exporter needs onnxscript too, and took
        # 12 s for a 64x64 MLP against 3.5 s here. The graph is the same few ops either way.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if onnx is not None:
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["obs"], output_names=["action"],
                                  dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}})
                model = onnx.load(str(tmp))
                onnx.helper.set_model_props(model, {"hotprune": meta})
                onnx.checker.check_model(model)
                onnx.save(model, str(tmp))
            else:
                torch.jit.save(torch.jit.trace(module, example), str(tmp), _extra_files={"hotprune.json": meta})
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:
        raise artifacts.ArtifactError(f"cannot write {out}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _onnx():
    try:
        import onnx  # noqa: PLC0415 -- the optional onnx extra, only for this export
    except ImportError:
        raise ValueError("--format onnx needs the onnx extra: pip install -e '.[onnx]'") from None
    return onnx
