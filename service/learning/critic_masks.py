"""The trainer's own masks for an algorithm's critics (`pruning.targets` with "critic", both-pruned SAC).

The compressor prunes the actor, which the workers run; the critics live only in the trainer, so
their masks are computed here, by the same pruning engine (hotprune.pruning.engine.Pruner: criterion,
structure, scope, nesting) over each critic's own weights and, for taylor/gradient, g = mean
|dL/dw| of the critic loss over the last `num_gradient_batches` critic steps. They are never sent
anywhere. Each critic is pruned on its own: by default each of its layers to its ERK share
(`pruning.critic_distribution`; `actor`: the actor's scope, e.g. one global threshold per critic),
every input, the action's included, keeping `pruning.min_weights_per_input` weights of the first
layer (hotprune.pruning.coverage: the actor's gradient flows through Q's action input), at the sparsity of each
schedule step once the trainer has trained through that step's epoch. Keeping them zero is
hotprune.learning.training_masks.TrainingMasks on the critics' own optimizer; the target critics are zeroed
with them, so their Polyak averages stay exactly zero there too. A lottery ticket's critics (method
fixed) get their masks from its mask file once (`fix`) and keep them the same way.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from hotprune.learning.gradient_stats import GradientStats
from hotprune.learning.policy import actor_arrays, expected_spec
from hotprune.pruning.dynamic import pruner_for
from hotprune.pruning.engine import Masks, cut_inputs, prunable_names, sparsity
from hotprune.pruning.schedule import Step
from hotprune.learning.training_masks import MaskedUpdate, TrainingMasks


class CriticMasks:
    def __init__(self, critics: Mapping[str, nn.Module], targets: Mapping[str, nn.Module],
                 optimizer: torch.optim.Optimizer, p, seed: int):
        self.critics = dict(critics)
        self.specs = {name: expected_spec(critic) for name, critic in self.critics.items()}
        # None: method fixed
        self.pruners = {name: pruner_for(spec, p, critic=True, seed=seed, stream=name)
                        for name, spec in self.specs.items()}
        self.names = {name: prunable_names(spec, p.prune_output_layer) for name, spec in self.specs.items()}
        params, grads = {}, {}
        for name, critic in self.critics.items():
            params |= {f"{name}.{n}": q for n, q in critic.named_parameters()}
            params |= {f"{name}_target.{n}": q for n, q in targets[name].named_parameters()}
            if self.pruners[name]:
                grads |= {f"{name}.{n}": params[f"{name}.{n}"] for n in self.pruners[name].grad_names}
        self.masks = TrainingMasks(params, optimizer, regrow=p.regrows)
        self.grad_stats = GradientStats(grads, p.num_gradient_batches) if grads else None
        self.hooks = MaskedUpdate(keeping=self.masks, stats=self.grad_stats)  # the critics' steps' hooks
        self.previous: dict[str, Masks] = {}

    def prune(self, step: Step) -> dict:
        """Masks every critic at a schedule step (to its sparsity, nested in its masks before; in dynamic
        sparse training, an update of them) and applies them; what it did, for the `critic_masks_applied`
        event (`newly_pruned`: the weights dropped, `revived`: those grown)."""
        grads = self.grad_stats.mean() if self.grad_stats else {}
        counts = {"newly_pruned": 0, "revived": 0, "refused_revivals": 0}
        inputs_cut = {}
        computed = {}
        for name, critic in self.critics.items():
            own_grads = {n.removeprefix(f"{name}."): g for n, g in grads.items() if n.startswith(f"{name}.")}
            computed[name] = self.pruners[name].at_step(step, actor_arrays(critic), own_grads or None,
                                                        self.previous.get(name))
        # every critic's masks or none (CompressionFailed above leaves them all as they were): the step stays
        # due, and a dynamic update applied to one critic now would be applied to it twice
        for name, masks in computed.items():
            self.previous[name] = masks
            if cut := cut_inputs(masks):
                inputs_cut[name] = cut
            keep = {f"{prefix}.{n}": m for prefix in (name, f"{name}_target") for n, m in masks.elements.items()}
            for key, value in self.masks.apply(keep).items():
                counts[key] += value // 2  # the same positions in the critic and its target: counted once
        return {"target_sparsity": step.sparsity, "drop_fraction": step.fraction, "critic_sparsity": self.sparsity(),
                "pruned": self.masks.count() // 2, **counts, "inputs_cut": inputs_cut}

    def fix(self, keep: Mapping[str, np.ndarray]) -> int:
        """A lottery ticket's critic masks (`<critic>.<name>`, as its mask file's `critic.` part), applied
        to each critic and its target; returns the positions pruned in the critics."""
        both = {}
        for key, mask in keep.items():
            critic, _, name = key.partition(".")
            both |= {f"{critic}.{name}": mask, f"{critic}_target.{name}": mask}
        self.masks.apply(both)
        return self.masks.count() // 2

    def sparsity(self) -> float:
        """The critics' measured sparsity (exact zeros of their prunable weights), all critics together."""
        zeros = total = 0
        for name, critic in self.critics.items():
            s = sparsity(actor_arrays(critic), self.specs[name], self.names[name])
            n = sum(int(np.prod(self.specs[name][w][1])) for w in self.names[name])
            zeros, total = zeros + s * n, total + n
        return zeros / total if total else 0.0

    def keep_masks(self) -> dict[str, np.ndarray]:
        return self.masks.keep_masks()

    def restore(self, keep: Mapping[str, np.ndarray], structure: str) -> None:
        """Masks from a checkpoint (keep_masks' names), and the previous masks they nest the next in."""
        self.masks.apply(keep)
        for name in self.critics:
            own = {n.removeprefix(f"{name}."): m for n, m in keep.items() if n.startswith(f"{name}.")}
            if own:
                self.previous[name] = Masks.from_elements(own, structure)

