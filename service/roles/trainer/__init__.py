"""The trainer role (hotprune.roles.trainer.shell): `Trainer`, and `main`, the process's command line."""

from hotprune.roles.trainer.shell import Trainer, main

__all__ = ["Trainer", "main"]
