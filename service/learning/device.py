"""Where the learning runs: the run's `device` setting as a torch device, and tensors copied off it.

The trainer's learner (networks, optimizers, replay buffer, batches, masks, gradient statistics) and the
compressor's distillation live on `resolve(cfg.device)`; everything else of a run (workers, pruning, the
weight store, files) works on host memory. One code path for every device: the cpu path is the cuda path
with another device, and the test suite runs it.

Guarantees:
- `resolve` gives a device torch can use, or refuses with one line (ConfigError): "cuda" on a machine
  without a CUDA device never reaches a traceback in a process.
- `HostCopy` copies device tensors to the host without waiting for them: on a CUDA device into page-locked
  (pinned) host memory, with non-blocking copies queued behind the work that made the tensors, and one
  event; `arrays()` waits on that event only, when the host copy is needed. Each copy gets fresh host
  tensors (torch's host allocator reuses pinned blocks once nothing refers to them), so a snapshot whose
  frames ZeroMQ still holds is never overwritten by the next.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from hotprune.config import ConfigError

CUDA_MISSING = "device cuda needs a CUDA device, and torch finds none here (torch {version}); use device=auto or cpu"


def resolve(setting: str) -> torch.device:
    """The device of `setting` (auto, cpu, cuda): auto is cuda when torch finds a CUDA device, else cpu."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(CUDA_MISSING.format(version=torch.__version__))
    return torch.device(setting)


def describe(device: torch.device) -> str:
    """The device as the trainer's start event names it: cpu, or cuda with the card's name."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor on `device` (on the cpu, the array's own memory)."""
    return torch.from_numpy(array).to(device)


class HostCopy:
    """`tensors` copied to the host, started now and waited for by `arrays()` (see the module's doc)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.host: dict[str, torch.Tensor] = {}
        self.done: torch.Event | None = None
        for name, tensor in tensors.items():
            pinned = tensor.device.type != "cpu"  # pin_memory needs an accelerator; on the cpu it is a plain copy
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pinned)
            self.host[name] = host.copy_(tensor.detach(), non_blocking=pinned)
            if pinned:  # the cpu backend has no events: its copies are done when copy_ returns
                self.done = torch.Event(device=tensor.device)
        if self.done is not None:
            self.done.record()  # on the current stream, after every copy queued above

    def arrays(self) -> dict[str, np.ndarray]:
        """The host copies as numpy arrays (each keeps its host tensor alive), once the copies are done."""
        if self.done is not None:
            self.done.synchronize()
        return {name: host.numpy() for name, host in self.host.items()}
