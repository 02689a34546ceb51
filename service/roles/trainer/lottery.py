"""The trainer's part in lottery tickets (hotprune.commands.lth): a ticket's initial weights loaded, and
what a dense run keeps for the tickets made from it.

- `load_initial`: `init_file`'s weights (checked by hotprune.runs.tickets.read_init) into the fresh
  actor and critic; a part the file lacks keeps its init; SAC's critics without their targets get
  copies of them as targets, as in a fresh SAC.
- `Keeper`: with `keep_weights_every = N`, actor and critic at epoch 0, every N epochs and the last,
  in `weights/epoch-K.safetensors` (`actor.<name>`, `critic.<name>`; hotprune.runs.tickets names the
  files): epoch 0 is the initialisation a ticket rewinds to, K a later rewind point (the rewind epoch
  is chosen after training, so several are kept; not every checkpoint, which for CartPole's 391
  epochs would be 14 MB), the last the final weights masks are made from; the critic too (PPO's value
  MLP; SAC's twin Q networks and their targets, with the temperature alpha in the file's metadata),
  as the losses need it for gradient criteria and a ticket rewinds it with the actor. With
  `keep_transitions = N`, the last N epochs' trajectory chunks in `transitions.safetensors`: `Batch`'s
  fields (hotprune.learning.chunks) with a leading epoch axis, the "recent transitions" a gradient
  criterion is measured on: PPO's last trajectories, SAC's newest replay-buffer rows (the buffer holds
  exactly these chunks' `Batch.transitions()`, rewards as trained on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import fields
from typing import Callable

import numpy as np
import torch

from hotprune.actor_spec import SAC_CRITICS
from hotprune.config import Config
from hotprune.learning.chunks import Batch
from hotprune.learning.policy import actor_arrays
from hotprune.runs import artifacts, tickets


def model_arrays(actor: torch.nn.Module, critic: torch.nn.Module) -> dict[str, np.ndarray]:
    return tickets.joined({"actor": actor_arrays(actor), "critic": actor_arrays(critic)})


class Keeper:
    """Writes weights and transitions as the run's settings ask (nothing when both are 0).
    `extra_meta()`: what else each weights file says (the learner's `ticket_meta`)."""

    def __init__(self, cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module, meta: dict,
                 extra_meta: Callable[[], dict] = dict):
        self.cfg, self.actor, self.critic, self.meta, self.extra_meta = cfg, actor, critic, meta, extra_meta
        self.recent: deque[Batch] = deque(maxlen=cfg.keep_transitions or None)
        self.epochs: deque[int] = deque(maxlen=cfg.keep_transitions or None)

    def after_epoch(self, epoch: int, batch: Batch | None) -> None:
        """After epoch `epoch`'s update (0: the initial weights, no batch)."""
        every, last = self.cfg.keep_weights_every, self.cfg.total_epochs
        if every and (epoch % every == 0 or epoch == last):
            tickets.weights_path(self.cfg.run_dir, epoch).parent.mkdir(exist_ok=True)
            artifacts.save(tickets.weights_path(self.cfg.run_dir, epoch), model_arrays(self.actor, self.critic),
                           **self.meta, **self.extra_meta(), epoch=epoch)
        if batch is not None and self.cfg.keep_transitions:
            self.recent.append(batch)
            self.epochs.append(epoch)

    def finish(self) -> None:
        """The kept transitions (those of the epochs this trainer process ran: a resumed trainer starts afresh)."""
        if not self.recent:
            return
        tensors = {f.name: np.stack([getattr(b, f.name) for b in self.recent]) for f in fields(Batch)}
        artifacts.save(self.cfg.run_dir / tickets.TRANSITIONS, tensors,
                       **(self.meta | {"algorithm": self.cfg.algorithm}), epochs=list(self.epochs))


def load_initial(cfg: Config, actor: torch.nn.Module, critic: torch.nn.Module) -> dict:
    """Load `init_file` into the fresh modules. Returns the file's metadata ({} without one): a kept
    weights file's `obs_count` is how many observations the actor's normalisation statistics it holds
    were taken over."""
    if not cfg.init_file:
        return {}
    parts, meta = tickets.read_init(cfg)
    critics = parts["critic"]
    if critics and not any(n.split(".", 1)[0].endswith("_target") for n in critics):
        # SAC's critics without their targets: the targets start as copies, as in a fresh SAC
        critics |= {f"{c}_target.{rest}": a for n, a in list(critics.items())
                    for c, _, rest in [n.partition(".")] if c in SAC_CRITICS}
    for part, module in zip(tickets.PARTS, (actor, critic)):
        tensors = parts[part]
        if tensors:
            module.load_state_dict({n: torch.from_numpy(a.copy()) for n, a in tensors.items()}, strict=False)
    return meta
