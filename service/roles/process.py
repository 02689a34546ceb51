"""What every hotprune process does first: one CPU thread, its run's config, and a stop flag; and how
one started by hand waits for a peer it cannot go on without (a worker for its weight store, a
trainer for its compressor): saying so every WAIT_NOTE_S, giving up after supervisor.start_timeout_s."""

from __future__ import annotations

import argparse
import ctypes
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from hotprune import eventlog
from hotprune.config import Config, load_config
from hotprune.runs import private
from hotprune.protocol.codec import Message, MessageRejected, decode


def role_process(role: str, description: str, make: Callable[[Config, "StopFlag", argparse.Namespace], Any],
                 *arguments: tuple[tuple[str, ...], dict]) -> Callable[[list[str] | None], int]:
    """A role's `main(argv)`, the same for every process: `--run-dir` and the role's own `arguments`
    ((flags, add_argument keywords) pairs), the run's config and stop flag (`start`), then `make`'s role
    run with a crash written into its own log. Its exit code is the role's."""

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=f"hotprune {role}", description=description)
        parser.add_argument("--run-dir", required=True, type=Path,
                            help="run directory made by `hotprune init` or `hotprune run`")
        for flags, options in arguments:
            parser.add_argument(*flags, **options)
        args = parser.parse_args(argv)
        cfg, stop = start(args.run_dir)
        process = make(cfg, stop, args)
        with eventlog.crashes_logged(process.log):
            return process.run()

    return main


def load_run_config(run_dir: Path) -> Config:
    """The run's config.toml; the directory itself decides runs_dir and run_id."""
    run_dir = run_dir.resolve()  # runs/latest is a link: the run's own directory and name
    config = load_config(run_dir / "config.toml", with_preset=False)  # complete: the presets do not apply
    config.runs_dir, config.run_id = str(run_dir.parent), run_dir.name
    return config


class StopFlag(threading.Event):
    """Set by SIGINT or SIGTERM; remembers the first signal for the exit code."""

    signum = 0

    def exit_code(self) -> int:
        """128 + the signal number (the shell's convention) if a signal stopped us, else 0."""
        return 128 + self.signum if self.signum else 0


def start(run_dir: Path) -> tuple[Config, StopFlag]:
    private.check(run_dir)  # its logs and sockets are files of its own, no link out of it
    config = load_run_config(run_dir)
    stop = StopFlag()

    def on_signal(signum, frame):
        stop.signum = stop.signum or signum
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return config, stop


WAIT_NOTE_S = 5.0  # while a process waits for a peer to come up, a line saying so this often


class WaitedTooLong(RuntimeError):
    """A peer a process cannot go on without never came up (a refusal: one line, exit 2)."""


class Awaited:
    """A peer that has not come up yet, waited for from now: `check()` in the waiting loop logs `event`
    (waited_s, timeout_s and `fields`) every WAIT_NOTE_S and raises WaitedTooLong with `advice` after
    `timeout_s` (the run's supervisor.start_timeout_s, as the workers wait for their store); `arrived()`
    ends the wait for good."""

    def __init__(self, log, event: str, timeout_s: float, advice: str, **fields):
        self.log, self.event, self.timeout_s, self.advice, self.fields = log, event, timeout_s, advice, fields
        self.since = time.monotonic()
        self.notes = 0
        self.waiting = True

    def arrived(self) -> None:
        self.waiting = False

    def check(self) -> None:
        if not self.waiting:
            return
        waited = time.monotonic() - self.since
        if waited >= self.timeout_s:
            raise WaitedTooLong(f"waited {self.timeout_s:g} s (supervisor.start_timeout_s): {self.advice}")
        if waited >= (self.notes + 1) * WAIT_NOTE_S:
            self.notes += 1
            self.log.info(self.event, waited_s=self.notes * WAIT_NOTE_S, timeout_s=self.timeout_s, **self.fields)


def compressor_awaited(log, cfg: Config) -> Awaited:
    """What a trainer waits for until the first subscription to its snapshots comes: its compressor."""
    return Awaited(log, "compressor_waiting", cfg.supervisor.start_timeout_s,
                   f"no compressor of run {cfg.run_id} subscribed to its snapshots; start the run's compressor "
                   f"(hotprune compressor --run-dir {cfg.run_dir}, or hotprune run)")


TRAJECTORY_BUFFER = 16 * 1024  # bytes of OS socket buffer at each end of a trajectory pipe


def socket(ctx: zmq.Context, kind: int, hwm: int = 0, kernel_buffer: int = 0, max_frame: int = 0) -> zmq.Socket:
    """A socket that never blocks process exit.

    `hwm` > 0 bounds its queue in messages. For backpressure that really bounds how far senders run
    ahead, `kernel_buffer` > 0 also shrinks the OS socket buffers, which otherwise hold dozens of
    small messages beyond ZeroMQ's high-water mark. `max_frame` > 0 makes ZeroMQ drop a peer that
    sends a larger frame, before it is ever held in memory.
    """
    sock = ctx.socket(kind)
    sock.linger = 0
    if hwm:
        sock.sndhwm = sock.rcvhwm = hwm
    if kernel_buffer:
        sock.sndbuf = sock.rcvbuf = kernel_buffer
    if max_frame:
        sock.maxmsgsize = max_frame
    return sock


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEPT_FREE_BYTES = 256 * 1024 * 1024  # a free top of the heap up to this stays with the process; a larger one goes back


def keep_freed_memory() -> bool:
    """From now on, memory this process frees stays with it for its next allocations, rather than going
    back to the kernel; False where the C library has no glibc mallopt (nothing changes there). Call it
    before the process starts threads (a ZeroMQ context). What stays: a free top of the heap up to
    KEPT_FREE_BYTES (a larger one goes back whole), and, whatever its size, a block freed below one still
    in use (no allocation is a mapping of its own any more): after a peak, such a process's memory does
    not shrink back below its newest live block (tests/test_compressor.py measures both).

    For a process that makes or receives a weight version per epoch (the trainer its snapshot's host
    copy, the compressor a snapshot, a relay a version): each lands in a fresh allocation (ZeroMQ's I/O
    thread receives a frame into one), which glibc serves from a fresh mmap when it is over 32 MB (or
    from a heap of that thread's own, unmapped whole once empty) and gives back when it is freed, so
    every 40 MB version of a 10M-parameter actor faulted in 9,800 pages: 18 of the ZeroMQ hop's 26 ms
    of CPU, 17 of the trainer's 20 ms host copy. One heap for every thread, no mmap and a kept top: the
    next version lands in the pages the last one left (0 faults; 7.6 and 2.4 ms)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and all(mallopt(param, value) for param, value in
                                       ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEPT_FREE_BYTES)))


def receive(sock: zmq.Socket, kind: str, cfg: Config, log, check: Callable[[Message], None] | None = None,
            control: bool = False) -> Message | None:
    """The next message on `sock`, decoded strictly as a `kind` of this run (or, with `control`, a run
    control) and passed by `check` (MessageRejected when it is not valid; control messages are not
    checked); None, logged as `message_rejected`, when it is not one."""
    frames = sock.recv_multipart(copy=False)
    try:
        msg = decode([f.buffer for f in frames], run_id=cfg.run_id, kinds={kind, "control"} if control else {kind},
                     max_frame_bytes=cfg.transport.max_frame_bytes)
        if check is not None and msg.kind == kind:
            check(msg)
        return msg
    except MessageRejected as exc:
        log.warning("message_rejected", reason=exc.reason, expected=f"{kind} or control" if control else kind)
        return None


def send_when_ready(sock: zmq.Socket, frames: list, keep_waiting: Callable[[], bool],
                    wake: zmq.Socket | None = None) -> bool:
    """Send once the socket takes the message (its queue may be full: backpressure). Between waits
    of at most 100 ms, `keep_waiting()` decides whether to go on; False gives up without sending.
    A message arriving on `wake` ends a wait at once, so `keep_waiting` can act on it (a worker
    whose trajectory waits for the trainer still swaps to new weights within a millisecond);
    `keep_waiting` must take that message, or the next wait ends at once again."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLOUT)
    if wake is not None:
        poller.register(wake, zmq.POLLIN)
    while True:
        if dict(poller.poll(100)).get(sock, 0) & zmq.POLLOUT:
            sock.send_multipart(frames, copy=False)
            return True
        if not keep_waiting():
            return False
