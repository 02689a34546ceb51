"""`hotprune`: one entry point, a subcommand per job.

    hotprune run        [--config FILE] [--set key=value ...] [--quiet | --verbose]
                                                                the whole service, under the supervisor
    hotprune run        --resume RUN_DIR [--ray ADDRESS|auto]   continue a stopped run from its checkpoint
    hotprune init       [--config FILE] [--set key=value ...]   make a run directory, print its path
    hotprune config show [--config FILE] [--set key=value ...] [--sources]
                                                                the config.toml such a run would keep
    hotprune trainer    --run-dir DIR [--resume]                one process by hand, against DIR
    hotprune compressor --run-dir DIR [--resume]
    hotprune worker     --run-dir DIR --index I [--node NODE]
    hotprune relay      --run-dir DIR --node NODE               a node's own weight store, fed by the compressor
    hotprune watch      RUN_DIR [--quiet | --verbose]           the console of a run started elsewhere
    hotprune diagnose   RUN_DIR                                 the pruning checklist, from the logs
    hotprune show       RUN_DIR                                 the pruning timeline and the summary again
    hotprune list       [RUNS_DIR]                              one line per run
    hotprune clean      [RUNS_DIR]                              remove what dead runs left: segments, sockets
    hotprune eval       RUN_DIR|POLICY [--episodes N] [--deterministic] [--seed S] [--video OUT.mp4]
    hotprune export     RUN_DIR --format state_dict|torch-prune|masks|onnx|torchscript [--out FILE]
    hotprune report     RUN_DIR [RUN_DIR ...] [--out DIR]        PNG plots (needs the `plots` extra)
    hotprune import     sb3|cleanrl FILE --env ENV_ID [--out FILE]
                                                                an SB3 or CleanRL PPO model as a policy file
    hotprune experiments --experiment NAME | --grid FILE.toml [--seeds 1 2 3] [--jobs N] [--root logs]
                         [--set key=value ...] [--eval-episodes N] [--ray ADDRESS|auto [--ray-shared PATH]]
    hotprune keys       DIR                                     a CURVE key set for tcp runs across hosts
    hotprune lth train-dense  [--config FILE] [--set key=value ...]       a dense run that keeps what tickets need
    hotprune lth create-mask  RUN_DIR --method M --sparsity S [...]       masks from its final weights
    hotprune lth train-ticket RUN_DIR --mask FILE [--rewind init|epoch:K|random] [--set key=value ...]
    hotprune lth compare      [--seeds 1 2 3] [--jobs N] [--root logs] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

PROCESSES = {
    "trainer": "hotprune.roles.trainer",
    "compressor": "hotprune.roles.compressor",
    "worker": "hotprune.workers.inference_worker",
    "relay": "hotprune.roles.relay",
}
# The commands that run a torch model. The others (the supervisor, the compressor and the workers above
# all: every process of a run starts at once, and each torch import is over a second of CPU) never load
# torch, so they need no thread setting (a worker limits its numpy to one thread itself).
TORCH_COMMANDS = {"trainer", "eval", "export", "experiments", "report", "import"}


BUILT_IN_GRIDS = sorted(p.stem for p in (Path(__file__).parent / "grids").glob("*.toml"))  # commands/grids.py's

# The keys people type most, as options of their own.
ALIASES = {"--env": "env_id", "--seed": "seed", "--total-steps": "total_steps", "--sparsity": "pruning.target_sparsity"}


class _PrintAndExit(argparse.Action):
    """An option that prints `text(parser)` and exits. The text is made only when asked: making it
    imports what `hotprune --help` need not (the config pulls in numpy, the version importlib.metadata)."""

    def __init__(self, option_strings, dest, text, help):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, help=help)
        self.text = text

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(self.text(parser))
        parser.exit()


def _version(parser: argparse.ArgumentParser) -> str:
    from importlib.metadata import version

    return f"hotprune {version('hotprune')}\n"


def _help_with_settings(parser: argparse.ArgumentParser) -> str:
    from hotprune.config import settings

    def wrap(text: str, indent: int) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * indent,
                             break_on_hyphens=False)

    width = min(shutil.get_terminal_size().columns, 100) - 2
    lines = wrap("settings: every key has a default; set one with --set KEY=VALUE, or in the --config TOML "
                 "file (the keys of a section under [section])", 0)
    for section, what, rows in settings():
        lines += ["", f"[{section}] {what}:" if section else f"{what}:"]
        for s in rows:
            meaning = f"{s.meaning}; {s.allowed}" if s.allowed else s.meaning
            lines += [f"  {s.key} = {s.default}  ({s.kind})", *wrap(meaning, 6)]
    parser.epilog = "\n".join(lines)
    return parser.format_help()


def _config_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that reads a config: --config, --set, the aliases, and a --help that lists every setting."""
    parser = sub.add_parser(name, help=help, add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-h", "--help", action=_PrintAndExit, text=_help_with_settings,
                        help="show this help and every setting: its type, default, meaning and what it allows")
    parser.add_argument("--config", help="TOML file; every key has a built-in default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set mode=sync --set pruning.target_sparsity=0.9 "
                        "(1e5 for an int, 256,256 for a list)")
    for flag, key in ALIASES.items():
        parser.add_argument(flag, dest="set", action="append", type=lambda value, key=key: f"{key}={value}",
                            metavar="VALUE", help=f"same as --set {key}=VALUE")
    return parser


def _verbosity_args(parser: argparse.ArgumentParser) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true",
                      help="only the first lines, warnings and errors, and the final summary")
    loud.add_argument("--verbose", action="store_true",
                      help="every console line, also each epoch's under the live view and each process start/exit")


def _verbosity(args: argparse.Namespace) -> int:
    from hotprune.runs import view

    return view.QUIET if args.quiet else view.VERBOSE if args.verbose else view.NORMAL


def main(argv: list[str] | None = None) -> int:
    """Heavy imports (torch, zmq) happen inside: a Ctrl-C while they load is one line, not a traceback.
    Output whose reader has gone (`hotprune show RUN | head -1`, a grid's table piped to head) ends the
    command quietly, with PIPE_CLOSED (hotprune.roles.entry says why that code)."""
    from hotprune.roles.entry import PIPE_CLOSED, guarded, stdout_to_devnull

    try:
        code = guarded(lambda: _main(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not in Python's exit
    except BrokenPipeError:
        stdout_to_devnull()
        return PIPE_CLOSED
    return code


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hotprune", description="Prune an RL policy while it trains.")
    parser.add_argument("--version", action=_PrintAndExit, text=_version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run = _config_parser(sub, "run", "run trainer, compressor and workers under the supervisor")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a stopped run from its trainer checkpoint, with its own config")
    run.add_argument("--track", dest="set", action="append_const", const="wandb.track=true",
                     help="same as --set wandb.track=true: log to Weights & Biases (the wandb extra)")
    run.add_argument("--ray", metavar="ADDRESS|auto",
                     help="spread the workers over this Ray cluster's nodes (the ray extra; run it on the head): "
                          "a relay per other node, over tcp with CURVE (docs/distributed.md)")
    _verbosity_args(run)
    watching = sub.add_parser("watch", help="the console of a run started elsewhere, until it ends (Ctrl-C: "
                              "stop watching); of a finished run, its summary")
    watching.add_argument("run_dir", type=Path)
    _verbosity_args(watching)
    _config_parser(sub, "init", "create a run directory for processes started by hand")
    show = _config_parser(sub.add_parser("config", help="the settings a run would use").add_subparsers(
        dest="action", required=True), "show", "print the resolved config: the config.toml a run would keep")
    show.add_argument("--sources", action="store_true", help="end each value's line with a comment saying where it "
                      "came from: default, preset FILE, file FILE, --set, or what it was made from")
    listing = sub.add_parser("presets", help="the tuned settings shipped per environment: a run of env_id uses "
                             "its preset (<env_id>-sac with algorithm=sac) under your settings (preset = auto)")
    listing.add_argument("name", nargs="?", help="print this preset's TOML")
    for name in PROCESSES:
        sub.add_parser(name, help=f"run the {name} process by hand (see --help)", add_help=False)
    sub.add_parser("diagnose", help="check from a run's logs, against its kept files and config, that pruning "
                   "happened and persisted (exit 0: all PASS, 1: a FAIL, 3: lines of the logs could not be "
                   "read, 2: not a run)").add_argument("run_dir", type=Path)
    sub.add_parser("show", help="a run's pruning timeline and summary, again").add_argument("run_dir", type=Path)
    sub.add_parser("list", help="one line per run").add_argument("runs_dir", type=Path, nargs="?", default=Path("runs"))
    sub.add_parser("clean", help="remove the shared memory and socket files of runs with no live process "
                   "(nothing of a live run)").add_argument("runs_dir", type=Path, nargs="?", default=Path("runs"))
    evaluate = sub.add_parser("eval", help="run a kept policy on its environment: mean ± std return")
    evaluate.add_argument("policy", type=Path, help="a run directory or a policy .safetensors file")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--deterministic", action="store_true",
                          help="most likely action / the mean (SAC: tanh of it), not a sample")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--video", type=Path, help="write the first episode to this mp4 (needs the video extra)")
    evaluate.add_argument("--env", help="refuse a policy trained on another environment than this id")
    export = sub.add_parser("export", help="write a run's pruned policy for other code (safetensors; ONNX or "
                                           "TorchScript: its deterministic action)")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--format", default="state_dict", help="state_dict | torch-prune | masks | onnx (the onnx "
                        "extra) | torchscript")
    export.add_argument("--out", type=Path, help="default: export_<format>.safetensors (.onnx, .pt) in the run "
                        "directory")
    importing = sub.add_parser("import", help="write a PPO policy trained by Stable-Baselines3 (its model zip) or "
                               "CleanRL (a .cleanrl_model) as a hotprune policy file, which init_file starts a run "
                               "from; nothing in it is unpickled")
    importing.add_argument("kind", choices=("sb3", "cleanrl"))
    importing.add_argument("file", type=Path)
    importing.add_argument("--env", required=True, metavar="ENV_ID",
                           help="the environment it was trained on (neither file names it)")
    importing.add_argument("--out", type=Path, help="default: FILE with the suffix .safetensors")
    plots = sub.add_parser("report", help="PNG plots of runs, overlaid (needs matplotlib: the plots extra)")
    plots.add_argument("run_dirs", type=Path, nargs="+")
    plots.add_argument("--out", type=Path, help="default: report/ in the (first) run directory")
    grid = sub.add_parser("experiments", help="a grid of runs, resumable, ending in a results table and plots")
    which = grid.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", metavar="NAME",
                       help=f"a built-in grid: {' | '.join(BUILT_IN_GRIDS)} (each file's comment says what it "
                            "compares; presets, sac, dst, dst_sac and pixels take --set env_id=...)")
    which.add_argument("--grid", type=Path, metavar="FILE.toml",
                       help="a grid file: its variants and seeds (docs/experiments.md)")
    grid.add_argument("--seeds", type=int, nargs="+", help="default: the grid's own (1 2 3 for the built-in ones)")
    grid.add_argument("--jobs", type=int, default=1, help="runs side by side (each is several processes)")
    grid.add_argument("--variants", nargs="+", default=[], metavar="NAME", help="only these variants of the grid")
    grid.add_argument("--root", type=Path, default=Path("logs"),
                      help="runs go to ROOT/pruning_<grid>/: the built-in grid's name or the grid file's stem")
    grid.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="an override for every run of the grid, e.g. --set epochs=50")
    grid.add_argument("--eval-episodes", type=int, default=0, metavar="N",
                      help="also evaluate each run's kept policy over N episodes with deterministic actions "
                           "(how RL Zoo and SB3 report returns), a column of the table")
    grid.add_argument("--ray", metavar="ADDRESS|auto",
                      help="run the cells as tasks on this Ray cluster (the ray extra); their run directories "
                           "come back here (docs/experiments.md)")
    grid.add_argument("--ray-shared", type=Path, metavar="PATH",
                      help="with --ray: a directory every node sees at this path; the cells write there instead "
                           "of sending their run directories back (a --root under it: the runs stay in place)")
    sub.add_parser("keys", help="write a new CURVE key set (server and client key pairs) into DIR, for tcp runs "
                   "whose processes share it: copy DIR to each host's <run_dir>/keys").add_argument("dir", type=Path)
    lth = _lth_parsers(sub)
    args, rest = parser.parse_known_args(argv)
    command = show if args.command == "config" else lth[args.action] if args.command == "lth" \
        else sub.choices[args.command]
    if rest and args.command not in PROCESSES:
        command.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "config":  # settings only: no torch
        return _config_show(args)
    if args.command == "presets":  # files only: no torch
        return _presets(args.name)
    if args.command == "watch":  # logs only: no torch
        return _watch(args)
    if args.command == "lth":
        return _lth(args, command)
    loaded = None  # `hotprune run`: its config, checked before the heavier imports
    if args.command == "run" and not args.resume:
        loaded = _run_config(args)
        if loaded is None:
            return 2
    if args.command in TORCH_COMMANDS:
        from hotprune.roles.entry import one_torch_thread

        one_torch_thread()
    from hotprune.config import load_config
    from hotprune.roles.entry import refusals

    try:
        if args.command in PROCESSES:
            module = __import__(PROCESSES[args.command], fromlist=["main"])
            return module.main(rest)
        if args.command in ("diagnose", "show", "list", "eval", "export", "report", "experiments"):
            return _inspect(args)
        if args.command == "import":
            return _import(args)
        if args.command == "keys":
            from hotprune.comms import curve

            print(curve.generate(args.dir))
            return 0
        if getattr(args, "resume", None):
            if args.config or args.set:
                command.error("--resume continues a run with its own config: no --config or --set")
            return _supervise(_supervisor_class().resume(args.resume, ray=args.ray), _verbosity(args))
        if args.command == "clean":
            return _clean(args.runs_dir)
        cfg = loaded or load_config(args.config, args.set)
        if args.command == "init":
            from hotprune.runs import rundir

            run_dir = rundir.prepare(cfg, check_ports=False)
            rundir.point_latest(run_dir)
            print(run_dir)
            return 0
        return _supervise(_supervisor_class()(cfg, ray=args.ray), _verbosity(args))
    except refusals() as exc:
        return _error(args.command, exc)


def _supervisor_class():
    """hotprune.roles.supervisor.Supervisor, loaded with Ctrl-C held (it loads zmq, ssl and asyncio)."""
    from hotprune.roles.entry import interrupts_held

    with interrupts_held():
        from hotprune.roles.supervisor import Supervisor
    return Supervisor


def _error(command: str, exc: Exception | str) -> int:
    """The one form of every subcommand's errors, as argparse's own: a line and exit code 2."""
    from hotprune.roles.entry import refused

    return refused(f"hotprune {command}", exc)


def _config_show(args: argparse.Namespace) -> int:
    from hotprune.config import ConfigError, load_config_with_sources, to_toml

    try:
        config, sources = load_config_with_sources(args.config, args.set)
        print(to_toml(config, sources if args.sources else None), end="")
    except ConfigError as exc:
        return _error("config show", exc)
    return 0


def _presets(name: str | None) -> int:
    from hotprune.config import presets

    shipped = presets()
    if name is not None:
        if name not in shipped:
            print(f"hotprune presets: no preset {name!r} (shipped: {', '.join(shipped)})", file=sys.stderr)
            return 2
        print(shipped[name].read_text(encoding="utf-8"), end="")
        return 0
    width = max(map(len, shipped))
    for preset, path in shipped.items():
        about = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# ").split(": ", 1)[-1]
        print(f"{preset:<{width}} {about}")
    return 0


def _clean(runs_dir: Path) -> int:
    from hotprune.runs import cleanup

    removed, kept = cleanup.clean(runs_dir)
    for path in removed:
        print(f"removed {path}")
    for reason in kept:
        print(f"kept {reason}")
    if not removed and not kept:
        print("nothing to clean")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from hotprune.runs import view

    if not (args.run_dir / "config.toml").is_file():
        return _error(args.command, f"{args.run_dir} is not a hotprune run (no config.toml)")
    return view.watch(args.run_dir, _verbosity(args))


def _run_config(args: argparse.Namespace):
    """`hotprune run`: its config, checked before the supervisor (zmq, gymnasium) loads; None after an
    error in the settings (printed). The console's first lines wait for the run directory: a run refused
    before it is made says so in one line, under no header naming a directory that never was."""
    from hotprune.config import ConfigError, load_config_with_sources

    from hotprune.runs.artifacts import ArtifactError

    try:
        cfg, sources = load_config_with_sources(args.config, args.set)
        if getattr(args, "ray", None):
            if cfg.transport.kind != "tcp" and sources["transport.kind"] != "default":
                raise ConfigError(f"--ray runs over tcp: transport.kind = \"{cfg.transport.kind}\" "
                                  f"({sources['transport.kind']}) cannot reach the other nodes")
            cfg.transport.kind = "tcp"
        if cfg.pruning.mask_file or cfg.init_file:  # checked before anything is written (and only then: gymnasium)
            from hotprune.runs import tickets

            tickets.check(cfg)
    except (ConfigError, ArtifactError) as exc:
        _error(args.command, exc)
        return None
    return cfg


def _lth_parsers(sub) -> dict[str, argparse.ArgumentParser]:
    """`hotprune lth ...`: the lottery-ticket workflow (hotprune.commands.lth), a parser per step."""
    lth = sub.add_parser("lth", help="lottery tickets: train dense, make masks, train the ticket, compare")
    steps = lth.add_subparsers(dest="action", required=True)
    dense = _config_parser(steps, "train-dense", "a dense run that keeps what tickets need: its weights every 10 "
                           "epochs (epoch 0: the rewind point) and its last 8 epochs' transitions")
    _verbosity_args(dense)
    mask = steps.add_parser("create-mask", help="masks from a kept run's final weights: RUN_DIR/masks/*.safetensors "
                            "(safetensors.torch.load_file reads it anywhere)")
    mask.add_argument("run_dir", type=Path)
    mask.add_argument("--method", required=True, help="magnitude | taylor | gradient")
    mask.add_argument("--sparsity", type=float, required=True, help="fraction pruned of each target, e.g. 0.9")
    mask.add_argument("--num-batches", type=int, help="taylor, gradient: minibatches g is averaged over "
                      "(default: the run's pruning.num_gradient_batches)")
    mask.add_argument("--batch-size", type=int, help="samples per minibatch (default: the run's own: PPO's "
                      "minibatch, SAC's batch_size)")
    mask.add_argument("--targets", default="actor", help="actor, or actor,critic (SAC: both twin critics, each "
                      "ranked on its own; as the trainer prunes them: the run's pruning.critic_distribution, erk "
                      "by default, and min_weights_per_input)")
    mask.add_argument("--structure", default="weight", help="weight | neuron | channel")
    mask.add_argument("--scope", default="global", help="global | layer (SAC's critics: erk unless the run's "
                      "pruning.critic_distribution is actor)")
    mask.add_argument("--critic-distribution", help="erk | actor: SAC's critics' (default: the run's "
                      "pruning.critic_distribution)")
    mask.add_argument("--out", type=Path, help="default: RUN_DIR/masks/<method>-<structure>-<percent>.safetensors")
    ticket = _config_parser(steps, "train-ticket", "a run with RUN_DIR's settings, from its rewound weights, "
                            "pruned with the mask's fixed masks from the first step")
    ticket.add_argument("run_dir", type=Path)
    ticket.add_argument("--mask", type=Path, required=True, help="a mask .safetensors of create-mask")
    ticket.add_argument("--rewind", default="init", help="init (epoch 0) | epoch:K (a kept epoch) | random "
                        "(a fresh init from the run's seed; give a --seed other than the dense run's)")
    _verbosity_args(ticket)
    compare = steps.add_parser("compare", help="the lth experiment grid: tickets at 80%% and 90%% (magnitude, "
                               "taylor, gradient), random re-init, dense and gradual pruning during training; "
                               "with --set algorithm=sac the lth_sac grid (actor and critics)")
    compare.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    compare.add_argument("--jobs", type=int, default=1)
    compare.add_argument("--variants", nargs="+", default=[], metavar="NAME",
                         help="only these variants, e.g. dense ticket_magnitude_80")
    compare.add_argument("--root", type=Path, default=Path("logs"))
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    compare.add_argument("--eval-episodes", type=int, default=0, metavar="N",
                         help="also evaluate each kept policy over N episodes with deterministic actions")
    return steps.choices


def _lth(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    name = f"lth {args.action}"
    if args.action == "train-dense":
        from hotprune.commands.lth import TRAIN_DENSE  # no torch: the console starts before it loads

        args.set = [*TRAIN_DENSE, *args.set]  # yours win
        loaded = _run_config(args)
        if loaded is None:
            return 2
        from hotprune.roles.entry import refusals

        try:
            return _supervise(_supervisor_class()(loaded), _verbosity(args))
        except refusals() as exc:
            return _error(name, exc)
    import torch

    torch.set_num_threads(1)
    from hotprune.commands import lth
    from hotprune.runs.artifacts import ArtifactError
    from hotprune.config import ConfigError
    from hotprune.runs.runlog import RunError

    try:
        if args.action == "create-mask":
            path, layers = lth.create_mask(args.run_dir, args.method, args.sparsity, num_batches=args.num_batches,
                                            batch_size=args.batch_size, targets=tuple(args.targets.split(",")),
                                            structure=args.structure, scope=args.scope, out=args.out,
                                            critic_distribution=args.critic_distribution)
            print("\n".join([*layers, str(path)]))
            return 0
        if args.action == "compare":
            from hotprune.config import load_config

            return _experiments("lth_sac" if load_config(None, args.set).algorithm == "sac" else "lth", args)
        if args.config:
            parser.error("a ticket takes the dense run's own settings (its config.toml): change them with --set")
        cfg = lth.ticket_config(args.run_dir, args.mask, args.rewind, args.set)
        from hotprune.runs import tickets

        tickets.check(cfg)
        return _supervise(_supervisor_class()(cfg), _verbosity(args))
    except (ConfigError, ArtifactError, RunError) as exc:
        return _error(name, exc)


def _supervise(supervisor, verbosity: int) -> int:
    """The run, with its console (hotprune.runs.view) drawn from the first line, before any process starts."""
    from hotprune.runs import view

    with view.showing(supervisor.cfg, supervisor.run_dir, verbosity):
        return supervisor.run()


def _experiments(experiment: str | None, args: argparse.Namespace) -> int:
    from hotprune import api

    grid = api.experiments(experiment, args.seeds, grid=getattr(args, "grid", None), settings=args.set,
                           root=args.root, jobs=args.jobs, eval_episodes=args.eval_episodes, variants=args.variants,
                           ray=getattr(args, "ray", None), ray_shared=getattr(args, "ray_shared", None))
    print(grid.results.read_text())
    print(f"results: {grid.results} and {grid.results.with_suffix('.csv')}")
    if grid.failed:
        print(f"hotprune experiments: {grid.failed} run(s) failed; their console output is in console.txt "
              "in their run directories", file=sys.stderr)
    return 1 if grid.failed else 0


def _import(args: argparse.Namespace) -> int:
    from hotprune.commands.import_checkpoint import import_policy

    imported = import_policy(args.file, args.kind, args.env, args.out)
    print(imported.path)
    if not imported.critic:
        print("its value network has other widths than its policy network: the file holds the actor alone, "
              "a run's critic starts fresh")
    print(f"start a run from it: {imported.command()}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    """The commands on finished runs: they read logs, and start no process."""
    from hotprune import api
    from hotprune.commands import evaluate, export, report, show
    from hotprune.config import ConfigError
    from hotprune.runs.runlog import load

    if args.command == "experiments":
        return _experiments(args.experiment, args)
    if args.command == "report":
        runs = [load(d) for d in args.run_dirs]
        for run in runs:  # plotted without them
            for unreadable in run.unreadable:
                print(f"hotprune report: {run.path}: {unreadable}", file=sys.stderr)
        try:
            paths = report.report(runs, args.out or args.run_dirs[0] / "report")
        except RuntimeError as exc:  # matplotlib missing
            raise ConfigError(str(exc)) from None
        print("\n".join(str(p) for p in paths))
        return 0
    if args.command == "eval":
        try:
            print(evaluate.report(api.evaluate(args.policy, args.episodes, args.deterministic, args.seed,
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
    if args.command == "show":
        print(show.show(load(args.run_dir)))
        return 0
    diagnosis = api.diagnose(args.run_dir)
    print(diagnosis)
    return diagnosis.exit_code


if __name__ == "__main__":
    sys.exit(main())
