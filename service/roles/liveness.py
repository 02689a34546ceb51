"""Liveness: every supervised process pings its supervisor through a pipe only the two of them hold.

The supervisor makes one pipe per child and passes the child the write end (its number in the
environment variable HOTPRUNE_LIVENESS_FD). The child writes a byte at most every PING_S from its
busiest loop (`eventlog.Heartbeat.beat` does it), so a process that is frozen (SIGSTOP), deadlocked or
stuck somewhere that never beats goes silent, and after `supervisor.hang_timeout_s` of silence the
supervisor treats it as crashed. A pipe rather than a socket or a log file: nothing else can write to
it (no forged pings), there is no port or path to clean up, and the child needs no set-up. A process
started by hand has no pipe and pings nothing.
"""

from __future__ import annotations

import os
import stat
import time

ENV = "HOTPRUNE_LIVENESS_FD"
PING_S = 0.5
PING = b"."
# "My work is done; my exit follows." The trainer says it once training is over, so a worker that stops
# on the run's `stop` before a slow trainer has exited (interpreter teardown on a loaded machine takes
# seconds) is the normal end of the run, not a worker that quit early.
DONE = b"!"


class Pulse:
    """The child's end: `ping()` costs a clock read when no ping is due."""

    def __init__(self, fd: int | None):
        self.fd = fd
        self.due = 0.0

    @classmethod
    def inherited(cls) -> "Pulse":
        """The pipe the supervisor passed, if any (an unrelated or closed fd number is ignored)."""
        try:
            fd = int(os.environ.get(ENV, ""))
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return cls(None)
            os.set_blocking(fd, False)
        except (ValueError, OSError):
            return cls(None)
        return cls(fd)

    def ping(self) -> None:
        if self.fd is None:
            return
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + PING_S
        self._write(PING)

    def done(self) -> None:
        self._write(DONE)

    def _write(self, byte: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, byte)
        except BlockingIOError:  # the supervisor is not reading (stopped): it will see the earlier pings
            pass
        except OSError:  # the supervisor is gone
            self.fd = None


class Listener:
    """The supervisor's end for one child: when it last pinged."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.last = time.monotonic()
        self.pinged = False  # a child pings first once its imports and set-up are done
        self.done = False  # the child said its work is done (liveness.DONE)

    def child_env(self) -> dict[str, str]:
        return {**os.environ, ENV: str(self.write_fd)}

    def started(self) -> None:
        """After the child has its copy: ours would keep the pipe open (no EOF) and is not needed."""
        os.close(self.write_fd)
        self.last = time.monotonic()

    def silent_s(self) -> float:
        """Seconds since the last ping (reading every ping that arrived)."""
        try:
            while chunk := os.read(self.read_fd, 4096):
                self.last, self.pinged = time.monotonic(), True
                self.done |= DONE in chunk
        except BlockingIOError:
            pass
        return time.monotonic() - self.last

    def close(self) -> None:
        os.close(self.read_fd)
