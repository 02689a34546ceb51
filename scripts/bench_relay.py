"""A weight version's way from the trainer to every worker, direct (workers read the compressor's store)
against through a relay on the same machine (`relay.local`: the compressor sends each version over tcp
with CURVE to a relay, which writes the node's own store the workers read): latency from the trainer's
`snapshot_published` to the last worker's `worker_swapped` of that version, the relay's share of it
(`relay_wrote.transit_ms`: the compressor's send to the relay's receipt) and the bytes per version in
each store. Real `hotprune run`s on tcp, the two systems alternating (A B A B); one torch thread per process.

    .venv/bin/python scripts/bench_relay.py [--quick] [--rounds N] [--hidden 1024 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import benchkit  # noqa: E402

from hotprune.runs import runlog  # noqa: E402
from tests.servicekit import free_base_port  # noqa: E402

HOTPRUNE = str(Path(sys.executable).with_name("hotprune"))
SYSTEMS = {"direct": [], "relay": ["relay.local=true"]}
RUN = ["preset=none", "samples_per_epoch=512", "chunk_steps=32", "envs_per_worker=4", "pruning.start_epoch=2",
       "pruning.every=2", "pruning.target_sparsity=0.9", "transport.kind=tcp"]


def seconds(event: dict) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def one_run(root: Path, name: str, extra: list[str], epochs: int, hidden: list[int]) -> dict:
    settings = [*RUN, *extra, f"epochs={epochs}", f"ppo.hidden_sizes={json.dumps(hidden)}",
                f"runs_dir={json.dumps(str(root))}", f"run_id={name}", f"transport.base_port={free_base_port()}"]
    t0 = time.perf_counter()
    done = subprocess.run([HOTPRUNE, "run", "--quiet", *(a for s in settings for a in ("--set", s))],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed: {done.stderr[-500:]}")
    run = runlog.load(root / name)
    published = {e["version"]: seconds(e) for e in run.events("trainer", "snapshot_published")}
    swapped: dict[int, list[float]] = {}
    for w in run.workers():
        for e in run.events(w, "worker_swapped"):
            swapped.setdefault(e["version"], []).append(seconds(e))
    everyone = len(run.workers())
    latency = [(max(ts) - published[v]) * 1e3 for v, ts in swapped.items() if len(ts) == everyone and v in published]
    relayed = [e for r in run.relays() for e in run.events(r, "relay_wrote")]
    return {"wall_s": time.perf_counter() - t0, "latency_ms": latency,
            "store_nbytes": statistics.median(e["nbytes"] for e in run.events("compressor", "weights_written")),
            "relay_nbytes": statistics.median(e["nbytes"] for e in relayed) if relayed else None,
            "relay_transit_ms": [e["transit_ms"] for e in relayed]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of short runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--out", default="relay")
    args = parser.parse_args()
    rounds, epochs = (1, 8) if args.quick else (args.rounds, args.epochs)
    load_start = benchkit.machine()["loadavg"]
    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        for r in range(rounds):
            for name, extra in SYSTEMS.items():  # alternating: A B A B
                runs[name].append(one_run(Path(tmp), f"{name}-{r}", extra, epochs, args.hidden))
                print(f"round {r} {name}: {runs[name][-1]['wall_s']:.1f} s", file=sys.stderr)
    results = {"command": " ".join(sys.argv), "machine": benchkit.machine(), "loadavg_start": load_start,
               "hidden": args.hidden, "epochs": epochs, "rounds": rounds, "systems": {}}
    lines = [f"# A version's way to every worker: direct vs through a relay ({'x'.join(map(str, args.hidden))} "
             f"actor, 90% at the end)", "",
             f"`{results['command']}`: {rounds} round(s) of {epochs}-epoch CartPole runs on tcp per system, "
             f"alternating; load average {load_start} at the start, {results['machine']['loadavg']} at the end.", "",
             "| system | versions | trainer -> every worker swapped, median ms | p99 ms | relay transit median ms "
             "| bytes per version in the run's store | in the node's store |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, done in runs.items():
        latency = benchkit.summary([x for d in done for x in d["latency_ms"]])
        transit = benchkit.summary([x for d in done for x in d["relay_transit_ms"]])
        store = statistics.median(d["store_nbytes"] for d in done)
        node = done[0]["relay_nbytes"]
        results["systems"][name] = {"latency": latency, "relay_transit": transit, "store_nbytes": store,
                                    "relay_nbytes": node, "wall_s": [d["wall_s"] for d in done]}
        relayed = (f"{transit['median_ms']:.2f}", f"{node:,.0f}") if transit["n"] else ("", "")
        lines.append(f"| {name} | {latency['n']} | {latency['median_ms']:.1f} | {latency['p99_ms']:.1f} | "
                     f"{relayed[0]} | {store:,.0f} | {relayed[1]} |")
    benchkit.write(args.out, results, lines)


if __name__ == "__main__":
    main()
