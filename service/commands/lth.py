"""Lottery tickets (`hotprune lth`): what a dense run keeps, masks made from it, and a ticket's settings.

The user's workflow (train dense -> masks from the final weights -> rewind -> train the ticket) on
the service's own parts:

- **What a run keeps** (`Keeper`, plugged into the trainer): with `keep_weights_every = N`, actor and
  critic at epoch 0, every N epochs and the last, in `weights/epoch-K.safetensors` (`actor.<name>`,
  `critic.<name>`): epoch 0 is the initialisation a ticket rewinds to, K a later rewind point (the
  rewind epoch is chosen after training, so several are kept; not every checkpoint, which for
  CartPole's 391 epochs would be 14 MB), the last the final weights masks are made from; the critic
  too (PPO's value MLP; SAC's twin Q networks and their targets, with the temperature alpha in the
  file's metadata), as the losses need it for gradient criteria and a ticket rewinds it with the
  actor. With `keep_transitions = N`, the last N epochs' trajectory chunks in
  `transitions.safetensors`: `Batch`'s fields (hotprune.learning.chunks) with a leading epoch axis. These are the
  "recent transitions" a gradient criterion is measured on: PPO's last trajectories, SAC's newest
  replay-buffer rows (the buffer holds exactly these chunks' `Batch.transitions()`, rewards as trained on).
- **Masks** (`create_mask`): the pruning engine's own `Pruner` on the final weights, with g the mean
  |dL/dw| over N minibatches of B samples drawn from the kept transitions (`hotprune.learning.gradient_stats`, as
  the trainer measures it) of the algorithm's own loss: PPO's (`ppo.minibatch_loss`) for actor and
  critic; SAC's actor loss for the actor and its critic loss for the twin critics
  (`sac.Learner.actor_loss`, `critic_loss`), as SAC's trainer measures them. So the masks are exactly
  what the compressor (and, for SAC's critics, the trainer) computes from the same scores; each SAC
  critic is ranked on its own, as the trainer prunes them. Written as safetensors (the format every
  run reads: `pruning.mask_file`; other tools read it with `safetensors.torch.load_file`), never as a
  pickle.
- **A ticket** (`ticket_overrides`): the dense run's settings with `pruning.method = fixed`, its mask
  file, and `init_file` its epoch-0 (or epoch-K) weights; `random` keeps the fresh init of the seed.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import deque
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hotprune.runs import artifacts, private, tickets
from hotprune.learning import ppo
from hotprune.actor_spec import SAC_CRITICS
from hotprune.algorithms import ALGORITHMS
from hotprune.runs.artifacts import ArtifactError
from hotprune.learning.chunks import Batch
from hotprune.config import Config, ConfigError, load_config
from hotprune.envs import EnvSource, env_spec
from hotprune.learning.gradient_stats import GradientStats
from hotprune.pruning.engine import CompressionFailed, Pruner, cut_inputs, masked_stats, prunable_names
from hotprune.runs.runlog import RunError, run_config
from hotprune.learning.sac import TRANSITION_FIELDS

WEIGHTS_DIR = "weights"
TRANSITIONS = "transitions.safetensors"
TARGETS = tickets.PARTS
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.safetensors$")


def weights_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / WEIGHTS_DIR / f"epoch-{epoch}.safetensors"


def model_arrays(actor: torch.nn.Module, critic: torch.nn.Module) -> dict[str, np.ndarray]:
    parts = {"actor": actor.state_dict(), "critic": critic.state_dict()}
    return tickets.joined({p: {n: t.detach().numpy().copy() for n, t in sd.items()} for p, sd in parts.items()})


class Keeper:
    """The trainer's side: writes weights and transitions as the run's settings ask (nothing when both
    are 0). `extra_meta()`: what else each weights file says (the learner's `ticket_meta`)."""

    def __init__(self, cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module, meta: dict,
                 extra_meta: Callable[[], dict] = dict):
        self.cfg, self.actor, self.critic, self.meta, self.extra_meta = cfg, actor, critic, meta, extra_meta
        self.recent: deque[Batch] = deque(maxlen=cfg.keep_transitions or None)
        self.epochs: deque[int] = deque(maxlen=cfg.keep_transitions or None)

    def after_epoch(self, epoch: int, batch: Batch | None) -> None:
        """After epoch `epoch`'s update (0: the initial weights, no batch)."""
        every, last = self.cfg.keep_weights_every, self.cfg.total_epochs
        if every and (epoch % every == 0 or epoch == last):
            weights_path(self.cfg.run_dir, epoch).parent.mkdir(exist_ok=True)
            artifacts.save(weights_path(self.cfg.run_dir, epoch), model_arrays(self.actor, self.critic),
                           **self.meta, **self.extra_meta(), epoch=epoch)
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
    if meta.get("env_id") != cfg.env_id or meta.get("algorithm") != cfg.algorithm:
        raise ArtifactError(f"{path} holds {meta.get('algorithm')} transitions of {meta.get('env_id')}, "
                            f"not {cfg.algorithm} of {cfg.env_id}")
    try:
        count = len(tensors["rewards"])
        return [Batch(**{f.name: tensors[f.name][i] for f in fields(Batch)}) for i in range(count)]
    except KeyError as exc:
        raise ArtifactError(f"{path} lacks {exc.args[0]}") from None


def load_initial(cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module) -> dict:
    """Load `init_file` (checked: tickets.read_init) into the fresh modules; a part it lacks keeps
    its init. Returns the file's metadata ({} without one): a kept weights file's `obs_count` is how
    many observations the actor's normalisation statistics it holds were taken over."""
    if not cfg.init_file:
        return {}
    parts, meta = tickets.read_init(cfg)
    critics = parts["critic"]
    if critics and not any(n.split(".", 1)[0].endswith("_target") for n in critics):
        # SAC's critics without their targets: the targets start as copies, as in a fresh SAC
        critics |= {f"{c}_target.{rest}": a for n, a in list(critics.items())
                    for c, _, rest in [n.partition(".")] if c in SAC_CRITICS}
    for part, module in zip(TARGETS, (actor, critic)):
        tensors = parts[part]
        if tensors:
            module.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in tensors.items()}, strict=False)
    return meta


def kept_epochs(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / WEIGHTS_DIR
    found = [_EPOCH_FILE.match(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m)


# --- masks ---------------------------------------------------------------------------------------


def gradient_statistics(cfg: Config, weights: tickets.Parts, batches: list[Batch], num_batches: int,
                        batch_size: int, meta: dict) -> tickets.Parts:
    """g = mean |dL/dw| of the algorithm's loss at the final weights (`meta`: their file's metadata)
    over `num_batches` minibatches of `batch_size` samples drawn (without replacement within one, seeded
    with the run's seed) from the kept transitions. PPO: its loss, advantages from the final critic, for
    actor and critic at once. SAC: the actor loss for the actor, the critic loss for the twin critics
    (targets and alpha from the same file), each backward on its own, as SAC's trainer steps them. By
    part, like `weights`."""
    torch.manual_seed(cfg.seed)  # SAC's losses sample actions
    generator = torch.Generator().manual_seed(cfg.seed)
    learner = importlib.import_module(f"hotprune.learning.{ALGORITHMS[cfg.algorithm].module}").Learner(
        env_spec(EnvSource.of(cfg)), cfg, torch.Generator())
    actor, critic = learner.actor, learner.ticket_critic
    for module, part in ((actor, "actor"), (critic, "critic")):
        module.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in weights[part].items()})
    actor_params = {f"actor.{n}": p for n, p in actor.named_parameters()}
    if cfg.algorithm == "sac":
        rows = {k: torch.from_numpy(np.concatenate([b.transitions()[k] for b in batches]).astype(np.float32))
                for k in TRANSITION_FIELDS}  # as the replay buffer holds them
        critic_params = {f"critic.{c}.{n}": p for c in SAC_CRITICS for n, p in learner.critics[c].named_parameters()}
        alpha = float(meta.get("alpha", learner.alpha))
        losses = [(lambda mb: learner.actor_loss(rows["obs"][mb], alpha), actor_params),
                  (lambda mb: learner.critic_loss({k: v[mb] for k, v in rows.items()}, alpha)[0], critic_params)]
        count = len(rows["rewards"])
    else:
        flat = [ppo.samples(b, critic, cfg.ppo) for b in batches]
        obs, actions, old_logp, adv, returns = (torch.cat(x) for x in zip(*flat))
        both = actor_params | {f"critic.{n}": p for n, p in critic.named_parameters()}
        losses = [(lambda mb: ppo.minibatch_loss(actor, critic, obs[mb], actions[mb], old_logp[mb], adv[mb],
                                                 returns[mb], cfg.ppo)[0], both)]
        count = len(obs)
    if not 2 <= batch_size <= count:
        raise ConfigError(f"--batch-size must be in [2, {count}] (the kept transitions), got {batch_size}")
    stats = [(loss, GradientStats(params, num_batches)) for loss, params in losses]
    for _ in range(num_batches):
        mb = torch.randperm(count, generator=generator)[:batch_size]
        for loss, measured in stats:
            actor.zero_grad()
            critic.zero_grad()
            loss(mb).backward()
            measured.after_backward()
    mean = {n: g for _, measured in stats for n, g in measured.mean().items()}
    return {part: {n: mean[f"{part}.{n}"] for n in weights[part] if f"{part}.{n}" in mean} for part in TARGETS}


def _ranked_groups(cfg: Config, targets: tuple[str, ...], names) -> list[tuple[str, dict[str, str]]]:
    """What `targets` ranks, each on its own, as (label, its names -> the pruning engine's names). The
    engine finds linear layers by the actor's names (net.<i>.weight): PPO's critic's bare Sequential
    names (<i>.weight) are given to it under that prefix; SAC's twin critics are ranked each on its own
    (as its trainer prunes them), by their own names (qf1.net.<i>.weight), never their targets."""
    groups = []
    for part in targets:
        if part == "actor":
            groups.append(("actor", {n: n for n in names["actor"]}))
        elif cfg.algorithm == "sac":
            groups += [(f"critic.{c}", {n: n.removeprefix(f"{c}.") for n in names["critic"] if n.startswith(f"{c}.")})
                       for c in SAC_CRITICS]
        else:
            groups.append(("critic", {n: f"net.{n}" for n in names["critic"]}))
    return groups


def create_mask(run_dir: Path, method: str, sparsity: float, *, num_batches: int | None = None,
                batch_size: int | None = None, targets: tuple[str, ...] = ("actor",), structure: str = "weight",
                scope: str = "global", out: Path | None = None) -> tuple[Path, list[str]]:
    """Masks from a kept run's final weights; returns the file written (safetensors) and
    the per-layer sparsity lines. Nothing is written unless every input checks out."""
    from hotprune.pruning.criteria import CRITERIA, SCOPES, STRUCTURES

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
    weights, weights_meta = tickets.read(final, "weights file", cfg, "float32")
    criterion = CRITERIA[method]
    grads = None
    num_batches = cfg.pruning.num_gradient_batches if num_batches is None else num_batches
    batch_size = cfg.minibatch_size if batch_size is None else batch_size
    if criterion.needs_grads:
        if num_batches < 1:
            raise ConfigError(f"--num-batches must be >= 1, got {num_batches}")
        grads = gradient_statistics(cfg, weights, load_transitions(run_dir, cfg), num_batches, batch_size,
                                    weights_meta)
    masks: tickets.Parts = {part: {} for part in targets}
    lines, inputs_cut = [], {}
    obs_dim = env_spec(EnvSource.of(cfg)).obs_dim
    for label, names in _ranked_groups(cfg, targets, weights):
        part = label.split(".")[0]
        spec = {names[n]: ("float32", weights[part][n].shape) for n in names}
        pruner = Pruner(spec, method=method, structure=structure, scope=scope)
        try:
            own_grads = None if grads is None else {names[n]: grads[part][n] for n in names if n in grads[part]}
            keep = pruner.compute({names[n]: weights[part][n] for n in names}, sparsity, own_grads)
        except CompressionFailed as exc:
            raise ArtifactError(f"{final}: the {label} cannot be ranked: {exc}") from None
        back = {v: k for k, v in names.items()}
        masks[part] |= {back[n]: m for n, m in keep.elements.items()}
        layers = masked_stats(keep, spec, prunable_names(spec, False))["layers"]
        kept, total = (sum(v[k] for v in layers.values()) for k in ("kept", "total"))
        lines += [f"{part}.{back[n]}: {v['sparsity']:.1%} pruned ({v['kept']:,}/{v['total']:,} kept)"
                  for n, v in layers.items()]
        lines.append(f"{label}: {1 - kept / total:.1%} pruned ({kept:,}/{total:,} weights kept)")
        if cut := cut_inputs(keep):  # the network no longer sees these inputs
            inputs_cut[label] = cut
            seen = ", ".join(f"observation {i}" if i < obs_dim else f"action {i - obs_dim}" for i in cut)
            lines.append(f"warning: {label} has every weight of input {', '.join(map(str, cut))} pruned ({seen}): "
                         "it ignores " + ("them" if len(cut) > 1 else "it") +
                         ("; a critic that ignores an action gives the actor no gradient through it"
                          if any(i >= obs_dim for i in cut) else ""))
    tensors = tickets.joined(masks)
    meta = {"run_id": cfg.run_id, "env_id": cfg.env_id, "algorithm": cfg.algorithm, "hidden_sizes": cfg.hidden_sizes,
            "method": method,
            "sparsity": sparsity, "structure": structure, "scope": scope, "targets": list(targets),
            "weights_epoch": epochs[-1], "shapes": {k: list(m.shape) for k, m in tensors.items()},
            "inputs_cut": inputs_cut,
            **({"num_batches": num_batches, "batch_size": batch_size} if grads is not None else {})}
    out = Path(out) if out else Path(run_dir) / "masks" / f"{method}-{structure}-{round(sparsity * 100)}.safetensors"
    return write_masks(out, tensors, meta), lines


def write_masks(path: Path, masks: dict[str, np.ndarray], meta: dict) -> Path:
    """`path` as .safetensors (what runs read; `safetensors.torch.load_file` reads it in any tool), in
    a directory made 0755 whatever the umask. Never a pickle (`torch.save`): nothing hotprune writes is one."""
    path = path.with_suffix(".safetensors")
    private.make_dirs(path.parent, private.SHARED_DIR)
    artifacts.save(path, masks, **meta)
    return path


def grid_masks(base: Path, seeds: list[int], methods, sparsities, where, log) -> None:
    """The lth experiment's masks: for each seed's completed dense run (base/dense/s<seed>), one per
    method and sparsity at `where(method, sparsity)` ({base}, {seed} filled in), unless made already;
    of what its gradual runs prune: PPO's actor, SAC's actor and critics."""
    for seed in seeds:
        dense = base / "dense" / f"s{seed}"
        try:
            targets = ("actor", "critic") if run_config(dense).algorithm == "sac" else ("actor",)
        except (ArtifactError, ConfigError, RunError) as exc:
            log(f"masks of seed {seed}: {exc}")
            continue
        for method in methods:
            for sparsity in sparsities:
                out = Path(where(method, sparsity).replace("{base}", str(base)).replace("{seed}", str(seed)))
                if out.exists():
                    continue
                try:
                    create_mask(dense, method, sparsity, targets=targets, out=out)
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
    if rewind == "random" and cfg.seed == dense.seed and cfg.hidden_sizes == dense.hidden_sizes:
        raise ConfigError(f"--rewind random draws the initial weights from the run's seed, and seed {cfg.seed} "
                          "draws the dense run's own (the ticket itself): give another --seed")
    return cfg
