"""What every scripts/bench_*.py shares: one torch thread, the machine's description and load, median
and p99, and writing benchmarks/<name>.json and .md."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

OUT = Path(__file__).resolve().parent.parent / "benchmarks"


def one_thread() -> None:
    """Each process computes on one core, as hotprune's processes do: torch, and numpy's BLAS (the workers')."""
    torch.set_num_threads(1)
    threadpool_limits(1, "blas")


def machine() -> dict:
    """What the numbers were taken on, and how busy it was (2 shared cores drift: compare ratios)."""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def summary(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, float)
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "min_ms": float(a.min()), "max_ms": float(a.max())} if a.size else {"n": 0}


def write(name: str, results: dict, lines: list[str]) -> None:
    """benchmarks/<name>.json (everything) and benchmarks/<name>.md (the table)."""
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print((OUT / f"{name}.md").read_text())
