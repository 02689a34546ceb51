"""Teacher-student mode: the compressor keeps the pruned student close to the dense teacher.

The workers act with the student, the trainer learns with the dense teacher. A student that is only
the teacher masked was never trained under its mask: it acts differently from the teacher, so PPO's
ratios between the two are far from 1 and most samples hit the clip (clip fraction 0.17-0.22 against
0.04 for both-pruned), and the run does not learn. So at every version after the first compression
the student takes `pruning.distill_steps` Adam steps on KL(teacher || student), over observations of
the trainer's last epoch shipped with the snapshot, with its mask held fixed (a masked weight is
exactly zero through every step, as in both-pruned training). The student carries over from version
to version: it tracks a teacher that moves a little each epoch. A new mask (a later compression)
starts it again from the student so far, masked further, with a fresh optimizer.

It distils on the run's `device` (hotprune.learning.device: teacher, student, optimizer, masks and
observations there); the student goes back to the compressor as host arrays.

Imported by the compressor only in teacher-student mode: it is the one use of torch there.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.distributions import kl_divergence

from hotprune.config import ConvNet
from hotprune.learning.device import resolve, to_device
from hotprune.learning.policy import Actor, actor_arrays, actor_from_tensors
from hotprune.actor_spec import OBS_NORM
from hotprune.pruning.engine import Masks, apply_masks


class Distiller:
    def __init__(self, discrete: bool, steps: int, lr: float, algorithm: str = "ppo",
                 action_box: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 activation: str | None = None, conv: ConvNet | None = None, device: str = "cpu"):
        torch.set_num_threads(1)  # one CPU thread per process, as the trainer and the workers
        self.device = resolve(device)
        # torch's optimizers import torch._dynamo on first use (about a second): paid here, at start,
        # not at the first compression, where it would hold the store back while the trainer runs on
        torch.optim.Adam([torch.zeros(1, requires_grad=True)]).zero_grad()
        self.discrete, self.steps, self.lr = discrete, steps, lr
        self.algorithm, self.action_box, self.activation, self.conv = algorithm, action_box, activation, conv
        self.student: Actor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.masks: Masks | None = None
        self.keep: dict[str, torch.Tensor] = {}

    def actor(self, tensors: dict[str, np.ndarray]) -> Actor:
        return actor_from_tensors(tensors, self.discrete, self.algorithm, self.action_box, self.activation,
                                  self.conv).to(self.device)

    def distil(self, teacher: dict[str, np.ndarray], masks: Masks,
               obs: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        """The student for this version (full shapes, masked entries +0.0) and what distilling did."""
        t0 = time.perf_counter()
        if masks is not self.masks:
            start = teacher if self.student is None else actor_arrays(self.student)
            full_shapes = Masks(masks.elements)  # masked in place, no unit sliced out: the student keeps its shapes
            self.student = self.actor(apply_masks(start, full_shapes))
            self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.lr)
            self.keep = {n: to_device(k, self.device) for n, k in masks.elements.items()}
            self.masks = masks
        student = self.student
        if student.obs_norm is not None:  # the trainer's newest statistics: the input the workers will see
            student.obs_norm.set(teacher[OBS_NORM[0]], teacher[OBS_NORM[1]])
        if not len(obs):  # no observations yet (epoch 0, a resumed trainer): the student as it is
            return actor_arrays(student), {"steps": 0, "samples": 0, "kl_before": None, "kl_after": None,
                                           "diverged": False, "duration_ms": (time.perf_counter() - t0) * 1e3}
        params, x = dict(student.named_parameters()), to_device(np.array(obs), self.device)
        with torch.no_grad():  # copies: a snapshot's arrays are read-only views of its message
            target = self.actor({n: np.array(w) for n, w in teacher.items()}).distribution(x)
            last_good = {n: p.detach().clone() for n, p in params.items()}

        def kl() -> torch.Tensor:
            divergence = kl_divergence(target, student.distribution(x))
            return (divergence if self.discrete else divergence.sum(-1)).mean()

        with torch.no_grad():
            before = float(kl())
        try:
            for _ in range(self.steps):
                loss = kl()
                self.optimizer.zero_grad(set_to_none=False)
                loss.backward()
                with torch.no_grad():
                    for name, keep in self.keep.items():
                        params[name].grad.masked_fill_(~keep, 0.0)
                self.optimizer.step()
                with torch.no_grad():
                    for name, keep in self.keep.items():
                        params[name].masked_fill_(~keep, 0.0)
            with torch.no_grad():
                after = float(kl())
            diverged = not (np.isfinite(after) and all(bool(p.isfinite().all()) for p in params.values()))
        except ValueError:  # torch.distributions refuses non-finite logits or scales
            diverged = True
        if diverged:  # never publish a non-finite student: the one before this version's steps
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(last_good[name])
            self.optimizer = torch.optim.Adam(student.parameters(), lr=self.lr)
            after = None
        return actor_arrays(student), {"steps": self.steps, "samples": len(obs), "kl_before": before,
                                       "kl_after": after, "diverged": diverged,
                                       "duration_ms": (time.perf_counter() - t0) * 1e3}

