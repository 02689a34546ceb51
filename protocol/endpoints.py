"""Endpoint names: where each socket of a run lives.

By default every socket is an `ipc://` path inside the run's private directory (mode 0700), so only
this user can connect. With `tcp`, sockets listen on consecutive ports of a loopback host.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

SOCKETS = ("snapshots", "masks", "trajectories", "weights")
# Linux caps a unix socket path at 107 bytes (sun_path is 108 with its NUL).
MAX_IPC_PATH = 107


class Endpoints(NamedTuple):
    snapshots: str  # trainer PUB -> compressor SUB: weight snapshots (latest wins) and control
    masks: str  # compressor PUSH -> trainer PULL: masks for both-pruned mode
    trajectories: str  # workers PUSH -> trainer PULL: trajectory chunks
    weights: str  # compressor PUB -> workers SUB: weights_ready hints and control


def socket_dir(run_dir: Path) -> Path:
    return run_dir / "sock"


def endpoints(run_dir: Path, transport: str = "ipc", host: str = "127.0.0.1", base_port: int = 5550) -> Endpoints:
    if transport == "ipc":
        paths = [socket_dir(run_dir.resolve()) / name for name in SOCKETS]
        too_long = [p for p in paths if len(os.fsencode(p)) > MAX_IPC_PATH]
        if too_long:
            raise ValueError(
                f"ipc socket path {too_long[0]} is longer than {MAX_IPC_PATH} bytes; "
                "use a shorter runs_dir or transport = \"tcp\""
            )
        return Endpoints(*(f"ipc://{p}" for p in paths))
    if transport == "tcp":
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"tcp host {host} is not loopback; binding beyond loopback needs CURVE keys")
        return Endpoints(*(f"tcp://{host}:{base_port + i}" for i in range(len(SOCKETS))))
    raise ValueError(f"unknown transport {transport!r} (ipc or tcp)")
