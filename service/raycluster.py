"""Joining a Ray cluster, for the two commands that use one: `hotprune experiments --ray` (its cells as
tasks, hotprune.commands.ray_grid) and `hotprune run --ray` (one run's workers over the nodes,
hotprune.roles.ray_nodes).

Guarantees: ray is imported here only when asked (`join`), so nothing else of hotprune loads it; a missing
ray, an address where nothing listens or no cluster to join is one ConfigError line, at once (ray.init alone
would retry a dead address for minutes); a connection this module made is the caller's to end (`leave`),
one it found (this process already a cluster's driver, as through the Python API) is left alone.
"""

from __future__ import annotations

import logging
import socket
from types import ModuleType

from hotprune.config import ConfigError

EXTRA = "pip install 'hotprune[ray]'"
CONNECT_TIMEOUT_S = 5.0
PROCESSES_PER_CPU = 2  # what a run's processes reserve on a node: they take turns, two keep about a core busy


def answers(address: str) -> None:
    """Refuse, in one line and at once, an address (HOST:PORT, or ray://HOST:PORT) where nothing listens:
    ray.init would retry it for minutes. "auto" is Ray's to find."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray takes a cluster head's HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def join(address: str) -> tuple[ModuleType, bool]:
    """(the ray module, whether this call connected): this process as the driver of the cluster at
    `address` ("auto": the one this machine is part of), or the connection it already has to it."""
    try:
        import ray  # noqa: PLC0415 -- only with --ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, an optional extra: {EXTRA}") from None
    if ray.is_initialized():  # this process is some cluster's driver already (the Python API): that one
        joined = ray.get_runtime_context().gcs_address
        if address not in ("auto", joined):
            raise ConfigError(f"--ray {address}: this process is connected to the Ray cluster at {joined}")
        return ray, False
    answers(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster to join there "
                          f"({str(exc).strip().splitlines()[0]})") from None
    return ray, True


def leave(ray: ModuleType, connected: bool) -> None:
    """End what `join` connected (the driver alone: the cluster goes on)."""
    if connected:
        ray.shutdown()
