"""How a process of hotprune starts and ends, whether the `hotprune` command or `python -m` started it.

torch- and zmq-free, so the command's `--help` stays fast; the CLI and every role's `__main__` call it (a
role never imports the CLI: the CLI calls the roles, never the reverse).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


CONFIG_ERROR = 2  # the exit code of a refusal (argparse's for usage errors): a supervisor never restarts it
# Output cut off by its reader (`hotprune show RUN | head -1`): what a shell reports for a writer that
# SIGPIPE ended (`yes | head`: 141), so `set -o pipefail` scripts see it as coreutils' own; exit 0 would
# say that everything was written.
PIPE_CLOSED = 128 + signal.SIGPIPE


def refusals() -> tuple[type[Exception], ...]:
    """The errors that mean "cannot start as asked" (bad settings, files, a peer that never came, a busy
    port): one line and exit CONFIG_ERROR, from the CLI and from every role, never a traceback. Imported
    when asked: they live in modules that load numpy and zmq."""
    import zmq

    from hotprune.comms.weight_store import StoreError
    from hotprune.config import ConfigError
    from hotprune.roles.process import WaitedTooLong
    from hotprune.runs.artifacts import ArtifactError  # CheckpointError too
    from hotprune.runs.runlog import RunError

    return ConfigError, StoreError, RunError, ArtifactError, WaitedTooLong, zmq.ZMQError


def refused(name: str, exc: Exception | str) -> int:
    """The one form of every refusal, as argparse's own: a line on stderr and exit CONFIG_ERROR."""
    print(f"{name}: error: {exc}", file=sys.stderr)
    return CONFIG_ERROR


def guarded(body: Callable[[], int], name: str = "hotprune") -> int:
    """Run `body` and return its exit code; a Ctrl-C before the process installed its own handlers is one
    line, not a traceback (heavy imports such as torch and zmq happen inside `body`)."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        # Python restores default handlers while it shuts down, and a SIGTERM then would kill an
        # already finished process with -15 (as if it had failed).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        # Nothing is left to collect that the exit does not free: out of the collector's sight, the
        # objects torch made cost the shutdown no full collection (seconds for a trainer on a busy machine,
        # past the supervisor's stop grace, which then killed a finished process).
        gc.freeze()


@contextmanager
def interrupts_held() -> Iterator[None]:
    """A Ctrl-C while modules load waits until they have loaded, and comes right after: a KeyboardInterrupt
    raised inside an import can leave a module half made (seen: `import zmq` left asyncio without its
    `base_events`, and the run ended in a NameError traceback instead of `interrupted`)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def stdout_to_devnull() -> None:
    """After a BrokenPipeError, as Python's docs advise (signal module, "Note on SIGPIPE"): stdout goes to
    devnull, so that nothing written later (Python's own flush at exit included) fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A child's preexec_fn: if its parent dies (even by SIGKILL), the child gets SIGTERM (Linux: when
    the parent's thread that started it ends)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def one_torch_thread() -> None:
    """Many processes share a few cores: one torch thread each keeps them from fighting."""
    import torch

    torch.set_num_threads(1)


def role_main(main: Callable[[list[str]], int], role: str, uses_torch: bool = False) -> None:
    """`python -m hotprune.roles.<role>`: the same process as `hotprune <role>`, and its exit code (a
    refusal included: one line and CONFIG_ERROR, which the supervisor does not restart)."""

    def body() -> int:
        if uses_torch:
            one_torch_thread()
        try:
            return main(sys.argv[1:])
        except refusals() as exc:
            return refused(f"hotprune {role}", exc)

    sys.exit(guarded(body))
