"""`hotprune`: one entry point, a subcommand per job.

    hotprune run        [--config FILE] [--set key=value ...] [--quiet | --verbose]
                                                                the whole service, under the supervisor
    hotprune run        --resume RUN_DIR                        continue a stopped run from its checkpoint
    hotprune init       [--config FILE] [--set key=value ...]   make a run directory, print its path
    hotprune trainer    --run-dir DIR [--resume]                one process by hand, against DIR
    hotprune compressor --run-dir DIR [--resume]
    hotprune worker     --run-dir DIR --index I
    hotprune watch      RUN_DIR [--quiet | --verbose]           the console of a run started elsewhere
    hotprune diagnose   RUN_DIR                                 the pruning checklist, from the logs
    hotprune show       RUN_DIR                                 the pruning timeline and the summary again
    hotprune list       [RUNS_DIR]                              one line per run
    hotprune eval       RUN_DIR|POLICY [--episodes N] [--deterministic] [--seed S] [--video OUT.mp4]
    hotprune export     RUN_DIR --format state_dict|torch-prune|masks [--out FILE]
    hotprune report     RUN_DIR [RUN_DIR ...] [--out DIR]        PNG plots (needs the `plots` extra)
    hotprune experiments --experiment NAME [--seeds 1 2 3] [--jobs N] [--root logs] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

PROCESSES = {
    "trainer": "service.trainer",
    "compressor": "service.compressor",
    "worker": "workers.inference_worker",
}


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file; every key has a built-in default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set mode=sync --set pruning.target_sparsity=0.9")


def _verbosity_args(parser: argparse.ArgumentParser) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true",
                      help="only the first lines, warnings and errors, and the final summary")
    loud.add_argument("--verbose", action="store_true",
                      help="every console line, also each epoch's under the live view and each process start/exit")


def _verbosity(args: argparse.Namespace) -> int:
    from service import view

    return view.QUIET if args.quiet else view.VERBOSE if args.verbose else view.NORMAL


def main(argv: list[str] | None = None) -> int:
    """Heavy imports (torch, zmq) happen inside: a Ctrl-C while they load is one line, not a traceback."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # before this process installed its own handlers
        print("hotprune: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        # Python restores default handlers while it shuts down, and a SIGTERM then would kill an
        # already finished process with -15 (as if it had failed).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hotprune", description="Prune an RL policy while it trains.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run trainer, compressor and workers under the supervisor")
    _config_args(run)
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a stopped run from its trainer checkpoint, with its own config")
    _verbosity_args(run)
    watching = sub.add_parser("watch", help="the console of a run started elsewhere, until it ends (Ctrl-C: "
                              "stop watching); of a finished run, its summary")
    watching.add_argument("run_dir", type=Path)
    _verbosity_args(watching)
    _config_args(sub.add_parser("init", help="create a run directory for processes started by hand"))
    for name in PROCESSES:
        sub.add_parser(name, help=f"run the {name} process by hand (see --help)", add_help=False)
    sub.add_parser("diagnose", help="check from a run's logs that pruning happened and persisted "
                   "(exit 1 on any FAIL)").add_argument("run_dir", type=Path)
    sub.add_parser("show", help="a run's pruning timeline and summary, again").add_argument("run_dir", type=Path)
    sub.add_parser("list", help="one line per run").add_argument("runs_dir", type=Path, nargs="?", default=Path("runs"))
    evaluate = sub.add_parser("eval", help="run a kept policy on its environment: mean ± std return")
    evaluate.add_argument("policy", type=Path, help="a run directory or a policy .safetensors file")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--deterministic", action="store_true", help="most likely action / the mean, not a sample")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--video", type=Path, help="write the first episode to this mp4 (needs the video extra)")
    evaluate.add_argument("--env", help="refuse a policy trained on another environment than this id")
    export = sub.add_parser("export", help="write a run's pruned policy for other code (safetensors)")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", default="state_dict", help="state_dict | torch-prune | masks")
    export.add_argument("--out", type=Path, help="default: export_<format>.safetensors in the run directory")
    plots = sub.add_parser("report", help="PNG plots of runs, overlaid (needs matplotlib: the plots extra)")
    plots.add_argument("run_dirs", type=Path, nargs="+")
    plots.add_argument("--out", type=Path, help="default: report/ in the (first) run directory")
    grid = sub.add_parser("experiments", help="a grid of runs, resumable, ending in a results table and plots")
    grid.add_argument("--experiment", required=True, help="basic | modes | methods | sparsity | schedules")
    grid.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    grid.add_argument("--jobs", type=int, default=1, help="runs side by side (each is several processes)")
    grid.add_argument("--root", type=Path, default=Path("logs"), help="runs go to ROOT/pruning_<experiment>/")
    grid.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override for every run of the grid, e.g. --set epochs=50")
    args, rest = parser.parse_known_args(argv)
    import torch
    import zmq

    from service.artifacts import ArtifactError
    from service.checkpoints import CheckpointError
    from service.config import ConfigError, load_config
    from service.runlog import RunError
    from service.weight_store import StoreError

    # Many processes share a few cores: one torch thread each keeps them from fighting.
    torch.set_num_threads(1)
    try:
        if args.command in PROCESSES:
            module = __import__(PROCESSES[args.command], fromlist=["main"])
            return module.main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command in ("diagnose", "show", "list", "eval", "export", "report", "experiments"):
            return _inspect(args)
        if args.command == "watch":
            from service import view

            if not (args.run_dir / "config.toml").is_file():
                raise RunError(f"{args.run_dir} is not a hotprune run (no config.toml)")
            return view.watch(args.run_dir, _verbosity(args))
        if getattr(args, "resume", None):
            if args.config or args.set:
                parser.error("--resume continues a run with its own config: no --config or --set")
            from service.supervisor import Supervisor

            return _supervise(Supervisor.resume(args.resume), _verbosity(args))
        cfg = load_config(args.config, args.set)
        if args.command == "init":
            from service import rundir

            print(rundir.prepare(cfg))
            return 0
        from service.supervisor import Supervisor

        return _supervise(Supervisor(cfg), _verbosity(args))
    # ZMQError: e.g. a tcp port in use
    except (ConfigError, StoreError, RunError, ArtifactError, CheckpointError, zmq.ZMQError) as exc:
        print(f"hotprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _supervise(supervisor, verbosity: int) -> int:
    """The run, with its console (service.view) drawn from the first line, before any process starts."""
    from service import view

    with view.showing(supervisor.cfg, supervisor.run_dir, verbosity):
        return supervisor.run()


def _inspect(args: argparse.Namespace) -> int:
    """The commands on finished runs: they read logs, and start no process."""
    from service import diagnose, evaluate, export, report, show
    from service.config import ConfigError
    from service.runlog import load

    if args.command == "experiments":
        from service import experiments

        results, failed = experiments.run_grid(args.experiment, args.seeds, args.root, args.jobs, args.set)
        print(results.read_text())
        print(f"results: {results} and {results.with_suffix('.csv')}")
        if failed:
            print(f"hotprune experiments: {failed} run(s) failed; their console output is in console.txt "
                  "in their run directories", file=sys.stderr)
        return 1 if failed else 0
    if args.command == "report":
        runs = [load(d) for d in args.run_dirs]
        try:
            paths = report.report(runs, args.out or args.run_dirs[0] / "report")
        except RuntimeError as exc:  # matplotlib missing
            raise ConfigError(str(exc)) from None
        print("\n".join(str(p) for p in paths))
        return 0
    if args.command == "eval":
        try:
            print(evaluate.report(evaluate.evaluate(args.policy, args.episodes, args.deterministic, args.seed,
                                                    args.video, args.env)))
        except ValueError as exc:  # a bad --episodes
            raise ConfigError(str(exc)) from None
        return 0
    if args.command == "export":
        try:
            print(export.export(args.run_dir, args.format, args.out))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return 0
    if args.command == "list":
        print(show.list_runs(args.runs_dir))
        return 0
    run = load(args.run_dir)
    if args.command == "show":
        print(show.show(run))
        return 0
    checks = diagnose.diagnose(run)
    print(diagnose.report(checks))
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
