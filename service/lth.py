"""Lottery tickets (`hotprune lth`): what a dense run keeps, masks made from it, and a ticket's settings.

The user's workflow (train dense -> masks from the final weights -> rewind -> train the ticket) on
the service's own parts:

- **What a run keeps** (`Keeper`, plugged into the trainer): with `keep_weights_every = N`, actor and
  critic at epoch 0, every N epochs and the last, in `weights/epoch-K.safetensors` (`actor.<name>`,
  `critic.<name>`): epoch 0 is the initialisation a ticket rewinds to, K a later rewind point (the
  rewind epoch is chosen after training, so several are kept; not every checkpoint, which for
  CartPole's 391 epochs would be 14 MB), the last the final weights masks are made from; the critic
  too, as PPO's loss needs it for gradient criteria and a ticket rewinds it with the actor. With
  `keep_transitions = N`, the last N epochs' trajectory chunks in `transitions.safetensors`:
  `Batch`'s fields (service.chunks) with a leading epoch axis. These are the "recent transitions" a gradient
  criterion is measured on; an off-policy algorithm keeps its replay buffer's newest transitions in
  the same file under its own `algorithm`, with its own loss in `gradient_statistics`.
- **Masks** (`create_mask`): the pruning engine's own `Pruner` on the final weights, with g the mean
  |dL/dw| of PPO's own loss (`ppo.minibatch_loss`) over N minibatches of B samples drawn from the kept
  transitions (`service.gradient_stats`, as the trainer measures it), so the masks are exactly what the
  compressor computes from the same scores. Written as safetensors (the format every run reads:
  `pruning.mask_file`), and for other tools as `.pt` and `.npz` with the same keys.
- **A ticket** (`ticket_overrides`): the dense run's settings with `pruning.method = fixed`, its mask
  file, and `init_file` its epoch-0 (or epoch-K) weights; `random` keeps the fresh init of the seed.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from service import artifacts, ppo, ticket_files
from service.artifacts import ArtifactError
from service.chunks import Batch
from service.config import Config, ConfigError, load_config
from service.envs import env_spec
from service.gradient_stats import GradientStats
from service.policy import make_actor, make_critic
from service.pruning import CompressionFailed, Pruner, masked_stats, prunable_names
from service.runlog import run_config

WEIGHTS_DIR = "weights"
TRANSITIONS = "transitions.safetensors"
TARGETS = ticket_files.PARTS
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.safetensors$")


def weights_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / WEIGHTS_DIR / f"epoch-{epoch}.safetensors"


def model_arrays(actor: torch.nn.Module, critic: torch.nn.Module) -> dict[str, np.ndarray]:
    parts = {"actor": actor.state_dict(), "critic": critic.state_dict()}
    return ticket_files.joined({p: {n: t.detach().numpy().copy() for n, t in sd.items()} for p, sd in parts.items()})


class Keeper:
    """The trainer's side: writes weights and transitions as the run's settings ask (nothing when both are 0)."""

    def __init__(self, cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module, meta: dict):
        self.cfg, self.actor, self.critic, self.meta = cfg, actor, critic, meta
        self.recent: deque[Batch] = deque(maxlen=cfg.keep_transitions or None)
        self.epochs: deque[int] = deque(maxlen=cfg.keep_transitions or None)

    def after_epoch(self, epoch: int, batch: Batch | None) -> None:
        """After epoch `epoch`'s update (0: the initial weights, no batch)."""
        every, last = self.cfg.keep_weights_every, self.cfg.total_epochs
        if every and (epoch % every == 0 or epoch == last):
            weights_path(self.cfg.run_dir, epoch).parent.mkdir(exist_ok=True)
            artifacts.save(weights_path(self.cfg.run_dir, epoch), model_arrays(self.actor, self.critic),
                           **self.meta, epoch=epoch)
        if batch is not None and self.cfg.keep_transitions:
            self.recent.append(batch)
            self.epochs.append(epoch)

    def finish(self) -> None:
        """The kept transitions (those of the epochs this trainer process ran: a resumed trainer starts afresh)."""
        if not self.recent:
            return
        tensors = {f.name: np.stack([getattr(b, f.name) for b in self.recent]) for f in fields(Batch)}
        artifacts.save(self.cfg.run_dir / TRANSITIONS, tensors, **(self.meta | {"algorithm": self.cfg.algorithm}),
                       epochs=list(self.epochs))


def load_transitions(run_dir: Path, cfg: Config) -> list[Batch]:
    """The kept epochs' batches of a run, refused if written by another run."""
    path = Path(run_dir) / TRANSITIONS
    if not path.exists():
        raise ArtifactError(f"{run_dir} kept no transitions ({TRANSITIONS}), which gradient criteria are measured "
                            "on: train it with hotprune lth train-dense (keep_transitions > 0)")
    tensors, meta = artifacts.load(path)
    if meta.get("env_id") != cfg.env_id or meta.get("algorithm") != "ppo":
        raise ArtifactError(f"{path} holds {meta.get('algorithm')} transitions of {meta.get('env_id')}, "
                            f"not ppo of {cfg.env_id}")
    try:
        count = len(tensors["rewards"])
        return [Batch(**{f.name: tensors[f.name][i] for f in fields(Batch)}) for i in range(count)]
    except KeyError as exc:
        raise ArtifactError(f"{path} lacks {exc.args[0]}") from None


def load_initial(cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module) -> None:
    """Load `init_file` (checked: ticket_files.read_init) into the fresh modules; a part it lacks keeps its init."""
    if not cfg.init_file:
        return
    parts = ticket_files.read_init(cfg)
    for part, module in zip(TARGETS, (actor, critic)):
        tensors = parts[part]
        if tensors:
            module.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in tensors.items()}, strict=False)


def kept_epochs(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / WEIGHTS_DIR
    found = [_EPOCH_FILE.match(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m)


# --- masks ---------------------------------------------------------------------------------------


def gradient_statistics(cfg: Config, weights: ticket_files.Parts, batches: list[Batch], num_batches: int,
                        batch_size: int) -> ticket_files.Parts:
    """g = mean |dL/dw| of PPO's loss at the final weights over `num_batches` minibatches of
    `batch_size` samples drawn (without replacement within one, seeded with the run's seed) from
    the kept transitions; advantages from the final critic. By part, like `weights`."""
    spec = env_spec(cfg.env_id)
    actor = make_actor(spec, cfg.ppo.hidden_sizes, cfg.normalize_obs)
    critic = make_critic(spec, cfg.ppo.hidden_sizes, actor.obs_norm)
    for module, part in ((actor, "actor"), (critic, "critic")):
        module.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in weights[part].items()})
    flat = [ppo.samples(b, critic, cfg.ppo) for b in batches]
    obs, actions, old_logp, adv, returns = (torch.cat(x) for x in zip(*flat))
    if not 2 <= batch_size <= len(obs):
        raise ConfigError(f"--batch-size must be in [2, {len(obs)}] (the kept transitions), got {batch_size}")
    params = {f"actor.{n}": p for n, p in actor.named_parameters()} | \
        {f"critic.{n}": p for n, p in critic.named_parameters()}
    stats = GradientStats(params, num_batches)
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(num_batches):
        mb = torch.randperm(len(obs), generator=generator)[:batch_size]
        loss, _ = ppo.minibatch_loss(actor, critic, obs[mb], actions[mb], old_logp[mb], adv[mb], returns[mb], cfg.ppo)
        actor.zero_grad()
        critic.zero_grad()
        loss.backward()
        stats.after_backward()
    mean = stats.mean()
    return {part: {n: mean[f"{part}.{n}"] for n in weights[part] if f"{part}.{n}" in mean} for part in TARGETS}


def _engine_names(part: str, names) -> dict[str, str]:
    """The pruning engine finds linear layers by the actor's names (net.<i>.weight): the critic's
    bare Sequential names (<i>.weight) are given to it under that prefix."""
    return {n: n if part == "actor" else f"net.{n}" for n in names}


def create_mask(run_dir: Path, method: str, sparsity: float, *, num_batches: int | None = None,
                batch_size: int | None = None, targets: tuple[str, ...] = ("actor",), structure: str = "weight",
                scope: str = "global", out: Path | None = None) -> tuple[list[Path], list[str]]:
    """Masks from a kept run's final weights; returns the files written (safetensors, .pt, .npz) and
    the per-layer sparsity lines. Nothing is written unless every input checks out."""
    from service.criteria import CRITERIA, SCOPES, STRUCTURES

    cfg = run_config(Path(run_dir))
    if method not in CRITERIA:
        raise ConfigError(f"--method must be one of {'|'.join(CRITERIA)}, got {method!r}")
    if not 0 < sparsity < 1:
        raise ConfigError(f"--sparsity must be in (0, 1), got {sparsity}")
    if structure not in STRUCTURES or scope not in SCOPES:
        raise ConfigError(f"--structure must be one of {'|'.join(STRUCTURES)} and --scope one of {'|'.join(SCOPES)}")
    if not targets or any(t not in TARGETS for t in targets):
        raise ConfigError(f"--targets must be a list of {','.join(TARGETS)}, got {','.join(targets)}")
    epochs = kept_epochs(run_dir)
    if not epochs:
        raise ArtifactError(f"{run_dir} kept no weights ({WEIGHTS_DIR}/epoch-K.safetensors): train it with "
                            "hotprune lth train-dense (keep_weights_every > 0)")
    final = weights_path(run_dir, epochs[-1])
    weights, _ = ticket_files.read(final, "weights file", cfg, "float32")
    criterion = CRITERIA[method]
    grads = None
    num_batches = cfg.pruning.num_gradient_batches if num_batches is None else num_batches
    batch_size = cfg.minibatch_size if batch_size is None else batch_size
    if criterion.needs_grads:
        if num_batches < 1:
            raise ConfigError(f"--num-batches must be >= 1, got {num_batches}")
        grads = gradient_statistics(cfg, weights, load_transitions(run_dir, cfg), num_batches, batch_size)
    masks, lines = {}, []
    for part in targets:
        names = _engine_names(part, weights[part])
        spec = {names[n]: ("float32", a.shape) for n, a in weights[part].items()}
        pruner = Pruner(spec, method=method, structure=structure, scope=scope)
        try:
            keep = pruner.compute({names[n]: a for n, a in weights[part].items()}, sparsity,
                                  None if grads is None else {names[n]: g for n, g in grads[part].items()})
        except CompressionFailed as exc:
            raise ArtifactError(f"{final}: the {part} cannot be ranked: {exc}") from None
        back = {v: k for k, v in names.items()}
        masks[part] = {back[n]: m for n, m in keep.elements.items()}
        layers = masked_stats(keep, spec, prunable_names(spec, False))["layers"]
        kept, total = (sum(v[k] for v in layers.values()) for k in ("kept", "total"))
        lines += [f"{part}.{back[n]}: {v['sparsity']:.1%} pruned ({v['kept']:,}/{v['total']:,} kept)"
                  for n, v in layers.items()]
        lines.append(f"{part}: {1 - kept / total:.1%} pruned ({kept:,}/{total:,} weights kept)")
    tensors = ticket_files.joined(masks)
    meta = {"run_id": cfg.run_id, "env_id": cfg.env_id, "hidden_sizes": cfg.ppo.hidden_sizes, "method": method,
            "sparsity": sparsity, "structure": structure, "scope": scope, "targets": list(targets),
            "weights_epoch": epochs[-1], "shapes": {k: list(m.shape) for k, m in tensors.items()},
            **({"num_batches": num_batches, "batch_size": batch_size} if grads is not None else {})}
    out = Path(out) if out else Path(run_dir) / "masks" / f"{method}-{structure}-{round(sparsity * 100)}.safetensors"
    return write_masks(out, tensors, meta), lines


def write_masks(path: Path, masks: dict[str, np.ndarray], meta: dict) -> list[Path]:
    """`path` (.safetensors, what runs read) and, for the user's other tools, the same keys as
    `path.pt` and `path.npz`.

    The .pt file is written only because the lottery-ticket workflow asks for a file that
    `torch.load(path, weights_only=True)` reads: `torch.save` of a plain dict of bool tensors, a zip
    whose pickle only rebuilds tensors (what weights_only admits); nothing hotprune reads is a
    pickle, and safetensors is the primary format. The .npz loads with `np.load(path,
    allow_pickle=False)` (bool arrays only; metadata is in the safetensors file)."""
    path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.save(path, masks, **meta)
    written = [path]
    for suffix, write in ((".pt", lambda f: torch.save({k: torch.from_numpy(m) for k, m in masks.items()}, f)),
                          (".npz", lambda f: np.savez(f, **masks))):
        target = path.with_suffix(suffix)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        tmp.replace(target)
        written.append(target)
    return written


def grid_masks(base: Path, seeds: list[int], methods, sparsities, where, log) -> None:
    """The lth experiment's masks: for each seed's completed dense run (base/dense/s<seed>), one per
    method and sparsity at `where(method, sparsity)` ({base}, {seed} filled in), unless made already."""
    for seed in seeds:
        dense = base / "dense" / f"s{seed}"
        for method in methods:
            for sparsity in sparsities:
                out = Path(where(method, sparsity).replace("{base}", str(base)).replace("{seed}", str(seed)))
                if out.exists():
                    continue
                try:
                    create_mask(dense, method, sparsity, out=out)
                except (ArtifactError, ConfigError, ValueError) as exc:
                    log(f"masks {method} {sparsity:.0%} of seed {seed}: {exc}")
                    continue
                log(f"masks {method} {sparsity:.0%} of seed {seed}: {out}")


# --- tickets -------------------------------------------------------------------------------------


def ticket_overrides(run_dir: Path, mask: Path, rewind: str) -> list[str]:
    """The settings that turn the dense run's config into its ticket: fixed masks from `mask`, the
    weights of `rewind` (init: epoch 0; epoch:K; random: the fresh init of the run's seed), both
    pruned, keeping nothing further."""
    if rewind == "init":
        epoch = 0
    elif rewind == "random":
        epoch = None
    elif re.fullmatch(r"epoch:\d+", rewind):
        epoch = int(rewind.split(":")[1])
    else:
        raise ConfigError(f"--rewind must be init, epoch:K or random, got {rewind!r}")
    init = ""
    if epoch is not None:
        init = weights_path(run_dir, epoch)
        if epoch == 0 and not init.exists():  # a run without keep_weights_every still kept its initial actor
            init = Path(run_dir) / artifacts.INITIAL
        if not init.exists():
            kept = ", ".join(map(str, kept_epochs(run_dir))) or "none"
            raise ArtifactError(f"{run_dir} kept no weights of epoch {epoch} (kept epochs: {kept})")
    return ["pruning.method=fixed", f"pruning.mask_file={_quoted(mask)}", f"init_file={_quoted(init)}",
            "prune_training_model=true", "keep_weights_every=0", "keep_transitions=0"]


def _quoted(path) -> str:
    """A path as a TOML string literal (a bare word would do, but not one with a comma or a quote)."""
    return json.dumps(str(path))  # a JSON string is a TOML basic string


def ticket_config(run_dir: Path, mask: Path, rewind: str, sets: list[str]) -> Config:
    """The ticket's run config: the dense run's own settings (its config.toml), the ticket's, then `sets`.
    A random re-initialisation must not draw the dense run's own initial weights (same seed: the ticket)."""
    dense = run_config(Path(run_dir))
    cfg = load_config(Path(run_dir) / "config.toml", [*ticket_overrides(run_dir, mask, rewind), *sets],
                      with_preset=False)
    if rewind == "random" and cfg.seed == dense.seed and cfg.ppo.hidden_sizes == dense.ppo.hidden_sizes:
        raise ConfigError(f"--rewind random draws the initial weights from the run's seed, and seed {cfg.seed} "
                          "draws the dense run's own (the ticket itself): give another --seed")
    return cfg
