"""`hotprune`: one entry point, a subcommand per job.

    hotprune run        [--config FILE] [--set key=value ...]   the whole service, under the supervisor
    hotprune init       [--config FILE] [--set key=value ...]   make a run directory, print its path
    hotprune trainer    --run-dir DIR                           one process by hand, against DIR
    hotprune compressor --run-dir DIR
    hotprune worker     --run-dir DIR --index I
"""

from __future__ import annotations

import argparse
import sys

import torch
import zmq

from service.config import ConfigError, load_config
from service.process import ignore_stop_signals
from service.weight_store import StoreError

PROCESSES = {
    "trainer": "service.trainer",
    "compressor": "service.compressor",
    "worker": "workers.inference_worker",
}


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file; every key has a built-in default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set mode=sync --set pruning.target_sparsity=0.9")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hotprune", description="Prune an RL policy while it trains.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_args(sub.add_parser("run", help="run trainer, compressor and workers under the supervisor"))
    _config_args(sub.add_parser("init", help="create a run directory for processes started by hand"))
    for name in PROCESSES:
        sub.add_parser(name, help=f"run the {name} process by hand (see --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    # Many processes share a few cores: one torch thread each keeps them from fighting.
    torch.set_num_threads(1)
    try:
        if args.command in PROCESSES:
            module = __import__(PROCESSES[args.command], fromlist=["main"])
            return module.main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        cfg = load_config(args.config, args.set)
        if args.command == "init":
            from service import rundir

            print(rundir.prepare(cfg))
            return 0
        from service.supervisor import Supervisor

        return Supervisor(cfg).run()
    except (ConfigError, StoreError, zmq.ZMQError) as exc:  # e.g. a tcp port already in use
        print(f"hotprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        ignore_stop_signals()
