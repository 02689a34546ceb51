"""The supervisor: runs the whole service from one config, and stops all of it cleanly.

It creates the run directory and the weight store, starts the compressor, the trainer and the
workers as separate OS processes through their own CLIs (what a user could type), watches them, and
when training ends, a process exits early, or it gets SIGINT/SIGTERM, stops them all: SIGTERM, a grace
period, SIGTERM again, another grace period, then SIGKILL. It unlinks the store last. Exit code: 0
when training completed and every process exited cleanly, 1 when a process failed (any exit before
training ended counts), 128 + signal number when stopped by a signal.

Each process table entry is one child; a restart policy can later hang off it.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from service import cleanup, eventlog, rundir
from service.config import Config
from service.weight_store import StoreError, WeightStore, segment_name, store_slot_size

POLL_S = 0.2
# A child that exited by itself, or stopped gracefully on our SIGTERM or the terminal's SIGINT.
CLEAN_EXITS = {0, 128 + signal.SIGINT, 128 + signal.SIGTERM}
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the supervisor dies (even by SIGKILL), the child gets SIGTERM.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    exitcode: int | None = None
    started_at: float = field(default=0.0)


def process_table(cfg: Config, run_dir: Path) -> list[Child]:
    def cli(module: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", module, "--run-dir", str(run_dir), *extra]

    return [
        Child("compressor", cli("service.compressor")),
        Child("trainer", cli("service.trainer")),
        *(Child(f"worker-{i}", cli("workers.inference_worker", "--index", str(i))) for i in range(cfg.num_workers)),
    ]


class Supervisor:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.made_run_dir = not cfg.run_dir.exists()  # a failed start removes the directory only if it made it
        self.run_dir = rundir.prepare(cfg)
        cleanup.record_supervisor(self.run_dir)
        self.log = eventlog.setup(self.run_dir, cfg.run_id, "supervisor", echo_human=True)
        self.children = process_table(cfg, self.run_dir)
        self.signal: int | None = None

    def _on_signal(self, signum, frame) -> None:
        self.signal = self.signal or signum

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            store = WeightStore.create(segment_name(self.cfg.run_id), store_slot_size(self.cfg))
        except StoreError:
            rundir.discard(self.run_dir, self.made_run_dir)
            raise
        rundir.point_latest(self.run_dir)
        self.log.info("run_started", run_dir=str(self.run_dir), store=store.name,
                      config=str(self.run_dir / "config.toml"))
        early = None
        try:
            for child in self.children:
                child.proc = subprocess.Popen(child.argv, preexec_fn=_die_with_parent)
                child.started_at = time.monotonic()
                self.log.info("process_started", name=child.name, child_pid=child.proc.pid, argv=child.argv)
            early = self.watch()
        finally:
            killed = self.stop_all()
            store.close()
            store.unlink()
            cleanup.remove_sockets(self.run_dir)
        failed = {c.name for c in self.children if c.proc and c.exitcode not in CLEAN_EXITS} | set(killed)
        if early and not self.signal:
            failed.add(early)
        failed = sorted(failed)
        if self.signal:
            outcome, code = f"stopped by {signal.Signals(self.signal).name}", 128 + self.signal
        elif failed:
            outcome, code = "failed: " + ", ".join(failed), 1
        else:
            outcome, code = "completed", 0
        self.log.info("run_finished", outcome=outcome, exitcode=code, failed=failed,
                      logs=str(self.run_dir / "logs"))
        return code

    def _reap(self, child: Child) -> bool:
        """Record a child's exit once; True if it has exited."""
        if child.exitcode is None and child.proc.poll() is not None:
            child.exitcode = child.proc.returncode
            self.log.info("process_exited", name=child.name, child_pid=child.proc.pid, exitcode=child.exitcode,
                          runtime_s=time.monotonic() - child.started_at)
        return child.exitcode is not None

    def watch(self) -> str | None:
        """Until training ends or a signal comes. Returns the child that ended before the trainer
        finished (a failure, whatever its exit code), or None.

        A child exiting cleanly just before the trainer is the normal end: the trainer's `stop`
        reaches the others while it is still writing its summary. So a clean exit is only held
        against the run if the trainer has not finished within the grace period.
        """
        clean_exit: tuple[str, float] | None = None  # (name, deadline)
        heartbeat = eventlog.Heartbeat(self.log, self.cfg.supervisor.heartbeat_s)
        while self.signal is None:
            heartbeat.beat(running=[c.name for c in self.children if c.exitcode is None])
            for child in self.children:
                if not self._reap(child):
                    continue
                if child.name == "trainer":
                    return None if child.exitcode == 0 else child.name
                if child.exitcode != 0:
                    return child.name
                clean_exit = clean_exit or (child.name, time.monotonic() + self.cfg.supervisor.stop_grace_s)
            if clean_exit and time.monotonic() > clean_exit[1]:
                return clean_exit[0]
            time.sleep(POLL_S)
        return None

    def stop_all(self) -> list[str]:
        """Stop every child still running; returns those that had to be killed."""
        trainer_done = any(c.name == "trainer" and c.exitcode == 0 for c in self.children)
        if not trainer_done or self.signal:  # else the trainer's control `stop` is already on its way
            self._signal_all(signal.SIGTERM)
        if not self._wait_all():
            self._signal_all(signal.SIGTERM)
            self._wait_all()
        killed = []
        for child in self.children:
            if child.proc and not self._reap(child):
                child.proc.kill()
                child.proc.wait()
                self._reap(child)
                killed.append(child.name)
        return killed

    def _wait_all(self) -> bool:
        deadline = time.monotonic() + self.cfg.supervisor.stop_grace_s
        while not all(self._reap(c) for c in self.children if c.proc):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc and child.exitcode is None and child.proc.poll() is None:
                child.proc.send_signal(sig)
