"""A 4-cell grid's wall time here (`hotprune experiments`) against on a 2-node Ray cluster (`--ray`), same machine.

The grid: both pruned and dense, 2 seeds each (CartPole-v1, the tests' small runs, --epochs each). The
systems, alternated within each repeat so that the machine's drifting load falls on all of them:

- here, --jobs 1: what `hotprune experiments` allows on 2 cores (a run keeps about 2 busy);
- ray, --jobs 1: the same cells one at a time as Ray tasks: Ray's own cost (connecting, scheduling, the
  run directory packed on its node and unpacked here);
- ray, --jobs 2: two cells in flight, one per node (each node declares 2 CPUs, a cell reserves 2).

The cluster is started once (tests/raykit.py: both nodes on 127.0.0.1 of this machine; its start time is
reported apart) and each grid runs in a fresh root. On one 2-core machine the nodes share its cores: this
measures what Ray adds, not what more machines give. The load average is recorded before and after each grid.

    python scripts/bench_grid.py [--repeats N] [--epochs E] [--quick]

Results: benchmarks/grid.json and benchmarks/grid.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import raykit  # noqa: E402 -- before ray is imported: the cluster stays on loopback

import benchkit  # noqa: E402
import hotprune  # noqa: E402
from tests.servicekit import SMALL  # noqa: E402
from tests.test_experiments import GRID  # noqa: E402 -- both pruned and dense, seeds 1 and 2

SYSTEMS = [("here", 1), ("ray", 1), ("ray", 2)]


def one(system: str, jobs: int, address: str, tmp: Path, index: int, epochs: int) -> dict:
    root = tmp / f"{system}{jobs}-{index}"
    root.mkdir()
    (root / "four.toml").write_text(GRID)
    lines, load_before = [], os.getloadavg()[0]
    t0 = time.monotonic()
    result = hotprune.experiments(grid=root / "four.toml", settings=[*SMALL, f"epochs={epochs}"], root=root, jobs=jobs,
                                  log=lines.append, ray=address if system == "ray" else None)
    wall = time.monotonic() - t0
    cells = [int(m.group(1)) for line in lines if (m := re.search(r": exit 0 in (\d+)s$", line))]
    back = [float(m.group(1)) for line in lines if (m := re.search(r"\(([\d.]+) MB back\)$", line))]
    row = {"system": system, "jobs": jobs, "repeat": index, "wall_s": round(wall, 1), "failed": result.failed,
           "cell_s": cells, "mb_back": back, "loadavg_before": round(load_before, 2),
           "loadavg_after": round(os.getloadavg()[0], 2)}
    print(row, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat of 2-epoch runs")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 2
    benchkit.one_thread()
    rows = []
    t0 = time.monotonic()
    with raykit.loopback_cluster(nodes=2, cpus=2) as cluster, tempfile.TemporaryDirectory(prefix="hp-grid-") as tmp:
        started_s = time.monotonic() - t0
        for index in range(args.repeats):
            order = SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]
            rows += [one(system, jobs, cluster.address, Path(tmp), index, args.epochs) for system, jobs in order]
    machine = benchkit.machine()
    lines = [f"# A 4-cell grid here and on a 2-node Ray cluster ({datetime.now():%Y-%m-%d}, {machine['cpus']} cores, "
             f"`scripts/bench_grid.py --repeats {args.repeats} --epochs {args.epochs}`)", "",
             f"Both pruned and dense x seeds 1, 2; CartPole-v1, {args.epochs} epochs of 512 samples each. Ray "
             f"{_ray_version()}, both nodes on 127.0.0.1 of this one machine (2 logical CPUs each; a cell reserves "
             f"2); the cluster started in {started_s:.0f} s (not counted). Systems alternated in each repeat. "
             "cell s: each run's own time, as its grid logged it; wall: the whole grid, connecting and the table "
             "and plots included.", "",
             "| system | --jobs | grids | wall s (median, each) | cell s (median) | MB back per cell | "
             "load average (1 min) before, after | failed |", "| --- " * 8 + "|"]
    for system, jobs in SYSTEMS:
        mine = [r for r in rows if (r["system"], r["jobs"]) == (system, jobs)]
        cells = [c for r in mine for c in r["cell_s"]]
        back = [b for r in mine for b in r["mb_back"]]
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in mine)
        loads = "; ".join(f"{r['loadavg_before']}, {r['loadavg_after']}" for r in mine)
        lines.append(f"| {system} | {jobs} | {len(mine)} | {_median(mine):.0f} ({walls}) | "
                     f"{statistics.median(cells) if cells else '-'} | "
                     f"{f'{statistics.median(back):.2f}' if back else '-'} | {loads} | "
                     f"{sum(r['failed'] for r in mine)} |")
    here = _median([r for r in rows if r["system"] == "here"])
    lines += ["", "Ratios to here (median wall): " + ", ".join(
        f"ray --jobs {jobs} {_median([r for r in rows if (r['system'], r['jobs']) == ('ray', jobs)]) / here:.2f}"
        for _, jobs in SYSTEMS[1:]) + "."]
    benchkit.write("grid", {"machine": machine, "epochs": args.epochs, "cluster_start_s": round(started_s, 1),
                            "rows": rows}, lines)
    return 0 if not any(r["failed"] for r in rows) else 1


def _median(rows: list[dict]) -> float:
    return statistics.median(r["wall_s"] for r in rows)


def _ray_version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
