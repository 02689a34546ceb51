"""Lottery tickets (`hotprune lth`): what a dense run keeps, masks made from it, and a ticket's settings.

The user's workflow (train dense -> masks from the final weights -> rewind -> train the ticket) on
the service's own parts:

- **What a run keeps** (`TRAIN_DENSE`: its weights every 10 epochs and its last transitions): the
  trainer writes them (hotprune.roles.trainer.lottery), `weights/epoch-K.safetensors` and
  `transitions.safetensors` (hotprune.runs.tickets names them).
- **Masks** (`create_mask`): the pruning engine's own `Pruner` on the final weights, with g the mean
  |dL/dw| over N minibatches of B samples drawn from the kept transitions (`hotprune.learning.gradient_stats`, as
  the trainer measures it) of the algorithm's own loss: PPO's (`ppo.minibatch_loss`) for actor and
  critic; SAC's actor loss for the actor and its critic loss for the twin critics
  (`sac.Learner.actor_loss`, `critic_loss`), as SAC's trainer measures them. So the masks are exactly
  what the compressor (and, for SAC's critics, the trainer) computes from the same scores (every input
  keeping `pruning.min_weights_per_input` weights); each SAC critic is ranked on its own, as the trainer
  prunes them (by default each layer to its ERK share: `pruning.critic_distribution`). Written as
  safetensors (the format every run reads: `pruning.mask_file`; other tools read it with
  `safetensors.torch.load_file`), never as a pickle.
- **A ticket** (`ticket_overrides`): the dense run's settings with `pruning.method = fixed`, its mask
  file, and `init_file` its epoch-0 (or epoch-K) weights; `random` keeps the fresh init of the seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from hotprune.runs import artifacts, private, tickets
from hotprune.actor_spec import SAC_CRITICS, policy_metadata
from hotprune.runs.artifacts import ArtifactError
from hotprune.learning.chunks import Batch
from hotprune.config import Config, ConfigError, load_config
from hotprune.envs import EnvSource, env_spec
from hotprune.pruning.dynamic import pruner_for
from hotprune.pruning.engine import CompressionFailed, cut_inputs, masked_stats, prunable_names
from hotprune.runs.runlog import RunError, run_config
from hotprune.runs.tickets import TRANSITIONS, WEIGHTS_DIR, kept_epochs, weights_path

# A dense run that keeps what tickets need (hotprune lth train-dense; under the user's settings): the weights
# every 10 epochs (epoch 0: the rewind point), the last 8 epochs' transitions (2,048 samples of CartPole's preset).
TRAIN_DENSE = ["pruning.method=none", "keep_weights_every=10", "keep_transitions=8"]
TARGETS = tickets.PARTS


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


# --- masks ---------------------------------------------------------------------------------------


def gradient_statistics(cfg: Config, weights: tickets.Parts, batches: list[Batch], num_batches: int,
                        batch_size: int, meta: dict) -> tickets.Parts:
    """g = mean |dL/dw| of the algorithm's loss at the final weights (`meta`: their file's metadata)
    over `num_batches` minibatches of `batch_size` samples drawn (without replacement within one, seeded
    with the run's seed) from the kept transitions. PPO: its loss, advantages from the final critic, for
    actor and critic at once. SAC: the actor loss for the actor, the critic loss for the twin critics
    (targets and alpha from the same file), each backward on its own, as SAC's trainer steps them. By
    part, like `weights`."""
    import torch  # only for the steps that run a model, so train-dense's console starts before it

    from hotprune.learning import ppo
    from hotprune.learning.learners import make_learner
    from hotprune.learning.gradient_stats import GradientStats
    from hotprune.learning.sac import TRANSITION_FIELDS

    torch.manual_seed(cfg.seed)  # SAC's losses sample actions
    generator = torch.Generator().manual_seed(cfg.seed)
    learner = make_learner(cfg, env_spec(EnvSource.of(cfg)), torch.Generator())
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
    engine finds linear layers by the actor's names (net.<i>.weight): PPO's MLP critic's bare Sequential
    names (<i>.weight) are given to it under that prefix (a CNN critic has the actor's names already);
    SAC's twin critics are ranked each on its own (as its trainer prunes them), by their own names
    (qf1.net.<i>.weight), never their targets."""
    groups = []
    for part in targets:
        if part == "actor":
            groups.append(("actor", {n: n for n in names["actor"]}))
        elif cfg.algorithm == "sac":
            groups += [(f"critic.{c}", {n: n.removeprefix(f"{c}.") for n in names["critic"] if n.startswith(f"{c}.")})
                       for c in SAC_CRITICS]
        else:
            own = names["critic"]
            groups.append(("critic", {n: n if n.startswith(("net.", "conv.")) else f"net.{n}" for n in own}))
    return groups


def create_mask(run_dir: Path, method: str, sparsity: float, *, num_batches: int | None = None,
                batch_size: int | None = None, targets: tuple[str, ...] = ("actor",), structure: str = "weight",
                scope: str = "global", out: Path | None = None,
                critic_distribution: str | None = None) -> tuple[Path, list[str]]:
    """Masks from a kept run's final weights; returns the file written (safetensors) and
    the per-layer sparsity lines; `critic_distribution` over the run's pruning.critic_distribution.
    Nothing is written unless every input checks out."""
    from hotprune.pruning.criteria import CRITERIA, CRITIC_DISTRIBUTIONS, SCOPES, STRUCTURES

    cfg = run_config(Path(run_dir))
    if method not in CRITERIA:
        raise ConfigError(f"--method must be one of {'|'.join(CRITERIA)}, got {method!r}")
    if not 0 < sparsity < 1:
        raise ConfigError(f"--sparsity must be in (0, 1), got {sparsity}")
    if structure not in STRUCTURES or scope not in SCOPES:
        raise ConfigError(f"--structure must be one of {'|'.join(STRUCTURES)} and --scope one of {'|'.join(SCOPES)}")
    critic_distribution = critic_distribution or cfg.pruning.critic_distribution
    if critic_distribution not in CRITIC_DISTRIBUTIONS:
        raise ConfigError(f"--critic-distribution must be one of {'|'.join(CRITIC_DISTRIBUTIONS)}, "
                          f"got {critic_distribution!r}")
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
    batch_size = cfg.algo.minibatch_size(cfg.epoch_samples) if batch_size is None else batch_size
    if criterion.needs_grads:
        if num_batches < 1:
            raise ConfigError(f"--num-batches must be >= 1, got {num_batches}")
        grads = gradient_statistics(cfg, weights, load_transitions(run_dir, cfg), num_batches, batch_size,
                                    weights_meta)
    masks: tickets.Parts = {part: {} for part in targets}
    # the trainer's own choice of masks (pruner_for: input coverage, SAC critics' ERK) at the asked
    # method, structure and scope; the weights of the output layer are never pruned here
    chosen = replace(cfg.pruning, method=method, structure=structure, scope=scope, distribution="uniform",
                     prune_output_layer=False, regrow=False, critic_distribution=critic_distribution)
    lines, inputs_cut = [], {}
    obs_dim = env_spec(EnvSource.of(cfg)).obs_dim
    for label, names in _ranked_groups(cfg, targets, weights):
        part = label.split(".")[0]
        spec = {names[n]: ("float32", weights[part][n].shape) for n in names}
        pruner = pruner_for(spec, chosen, critic=part == "critic")
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
    meta = {"run_id": cfg.run_id, **policy_metadata(env_spec(EnvSource.of(cfg)), cfg), "method": method,
            "sparsity": sparsity, "structure": structure, "scope": scope, "targets": list(targets),
            **({"critic_distribution": critic_distribution} if "critic" in targets else {}),
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
    same_sizes = all(cfg.network(part).hidden_sizes == dense.network(part).hidden_sizes for part in tickets.PARTS)
    if rewind == "random" and cfg.seed == dense.seed and same_sizes:
        raise ConfigError(f"--rewind random draws the initial weights from the run's seed, and seed {cfg.seed} "
                          "draws the dense run's own (the ticket itself): give another --seed")
    return cfg
