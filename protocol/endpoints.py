"""Endpoint names: where each socket of a run lives.

By default every socket is an `ipc://` path inside the run's private directory (mode 0700), so only
this user can connect. With `tcp`, sockets listen on consecutive ports of one IPv4 host: loopback by
default, or an address beyond it (e.g. 0.0.0.0, or a LAN address) when configured. Every tcp socket
speaks CURVE with the run's keys (service/transport_security.py), so a peer without them is refused
at the handshake wherever the port can be reached.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

SOCKETS = ("snapshots", "masks", "trajectories", "weights", "credits", "versions")
TRANSPORTS = ("ipc", "tcp")  # what `endpoints` builds: the config's transport.kind choices
# Linux caps a unix socket path at 107 bytes (sun_path is 108 with its NUL).
MAX_IPC_PATH = 107


class Endpoints(NamedTuple):
    snapshots: str  # trainer PUB -> compressor SUB: weight snapshots (latest wins) and control
    masks: str  # compressor PUSH -> trainer PULL: masks for both-pruned mode
    trajectories: str  # workers PUSH -> trainer PULL: trajectory chunks
    weights: str  # compressor PUB -> workers SUB: weights_ready hints and control
    credits: str  # trainer PUB -> workers SUB: the chunks the trainer has taken (flow control)
    versions: str  # compressor XPUB -> relays SUB: each weight version whole, for a node's own store


def socket_dir(run_dir: Path) -> Path:
    return run_dir / "sock"


def _ipc(path: Path) -> str:
    if len(os.fsencode(path)) > MAX_IPC_PATH:
        raise ValueError(f"ipc socket path {path} is longer than {MAX_IPC_PATH} bytes; "
                         "use a shorter runs_dir or transport = \"tcp\"")
    return f"ipc://{path}"


def node_weights(run_dir: Path, node: str) -> str:
    """relay PUB -> its node's workers SUB: weights_ready hints for the node's store, and control. Always
    ipc: it never leaves the node (its run directory there), whatever the run's transport."""
    return _ipc(socket_dir(run_dir.resolve()) / f"weights@{node}")


def endpoints(run_dir: Path, transport: str = "ipc", host: str = "127.0.0.1", base_port: int = 5550) -> Endpoints:
    if transport == "ipc":
        return Endpoints(*(_ipc(socket_dir(run_dir.resolve()) / name) for name in SOCKETS))
    if transport == "tcp":
        try:
            ipaddress.IPv4Address(host)
        except ValueError:  # ZeroMQ would need brackets and its ipv6 option for IPv6
            raise ValueError(f"transport.host must be an IPv4 address, got {host!r}") from None
        return Endpoints(*(f"tcp://{host}:{base_port + i}" for i in range(len(SOCKETS))))
    raise ValueError(f"unknown transport {transport!r} ({' or '.join(TRANSPORTS)})")
