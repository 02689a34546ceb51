"""The supervisor: runs the whole service from one config, restarts what crashes or hangs, and
stops all of it cleanly.

It creates the run directory and the weight store, starts the compressor, the trainer and the
workers (with `relay.local`, a relay too, whose store it also makes: the workers swap from that one;
with --ray, the other nodes' relays and workers through a host on each, hotprune.roles.ray_nodes)
as separate OS processes through their own CLIs (what a user could type), each in its own
session (the terminal's Ctrl-C reaches the supervisor alone, which then stops the children in order),
and watches them:

- A child that exits with a non-zero code, is killed, or stops pinging for `hang_timeout_s` (a frozen
  or deadlocked process; hotprune.roles.liveness) is restarted, after a backoff that doubles with each
  restart, as long as it has had fewer than `max_restarts` restarts within `restart_window_s` (the
  restart intensity of Erlang/OTP supervisors, systemd's StartLimitBurst). A trainer or compressor
  comes back with `--resume`: the trainer from its checkpoint, the compressor with the run's masks.
  Workers re-attach to the store and run its newest version.
- A child that exits with CONFIG_ERROR (2) refused to start as asked (a corrupt checkpoint, a file of
  another run, a config.toml edited under its checkpoint, a peer that never came): restarting it would
  only refuse again, so it is not; the run stops, and the child's own error line says why.
- An exhausted budget, or the end of training, or SIGINT/SIGTERM, stops them all: SIGTERM, a grace
  period, SIGTERM again, another grace period, then SIGKILL. The store is unlinked last.

Exit code: 0 when training completed and every process exited cleanly (with --ray, or went with a node
lost after that: `run_finished.lost`), 1 when a process failed for good (its restarts exhausted, or a
clean exit before training ended), 2 when one refused, 128 + signal number when stopped by a signal.
`hotprune run --resume RUN_DIR` continues a stopped run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hotprune.runs import cleanup, private, rundir, runlog
from hotprune import eventlog
from hotprune.roles import liveness
from hotprune.roles.entry import CONFIG_ERROR, die_with_parent
from hotprune.config import LOCAL_NODE, Config, ConfigError
from hotprune.roles.process import load_run_config
from hotprune.protocol.store_layout import segment_name
from hotprune.comms.weight_store import StoreError, WeightStore

POLL_S = 0.2
# A child that exited by itself, or stopped on our SIGTERM (gracefully, or before its handlers were in).
CLEAN_EXITS = {0, 128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM}
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    resumable: bool = False  # restarted (and started for `run --resume`) with --resume
    proc: subprocess.Popen | None = None
    exitcode: int | None = None
    started_at: float = field(default=0.0)
    listener: liveness.Listener | None = None
    starts: int = 0
    restarts: list[float] = field(default_factory=list)  # when, within the restart window
    restart_at: float | None = None  # a restart waiting out its backoff
    hung: bool = False  # killed by us for not pinging
    lost: bool = False  # gone with its node (--ray: hotprune.roles.ray_nodes), not by an exit of its own

    def launch(self, argv: list[str]):
        """Start it here: (its process, its liveness listener). A RemoteChild starts on its node instead."""
        return launch(argv)


def nodes(cfg: Config) -> list[str | None]:
    """The stores of a run on this machine: the compressor's (None) and, with relay.local, its relay's node."""
    return [None, LOCAL_NODE] if cfg.relay.local else [None]


def role_argv(module: str, run_dir: Path, *extra: str) -> list[str]:
    """How a supervisor (or a node's host, hotprune.roles.ray_nodes) starts a role: its own CLI."""
    return [sys.executable, "-m", module, "--run-dir", str(run_dir), *extra]


def node_children(run_dir: Path, node: str | None, indices) -> list[Child]:
    """A node's processes: its relay (none for the compressor's own store, `node` None) and the workers of
    `indices`, which swap from that node's store."""
    fed = ("--node", node) if node else ()
    relays = [Child(f"relay-{node}", role_argv("hotprune.roles.relay", run_dir, *fed))] if node else []
    return [*relays, *(Child(f"worker-{i}", role_argv("hotprune.workers.inference_worker", run_dir, "--index", str(i),
                                                      *fed)) for i in indices)]


def process_table(cfg: Config, run_dir: Path, indices=None) -> list[Child]:
    """The processes this machine runs: compressor, trainer and the workers of `indices` (all by default;
    with --ray, this machine's share)."""
    return [
        Child("compressor", role_argv("hotprune.roles.compressor", run_dir), resumable=True),
        Child("trainer", role_argv("hotprune.roles.trainer", run_dir), resumable=True),
        *node_children(run_dir, LOCAL_NODE if cfg.relay.local else None,
                       range(cfg.num_workers) if indices is None else indices),
    ]


def failures(children: list[Child], killed: list[str]) -> tuple[set[str], list[str]]:
    """At a run's end: (the children that failed, those lost with their node once training had completed).
    `killed`: those stop_all had to kill. A child waiting out a restart's backoff, or killed by us as hung
    (its restart not yet due), has been dealt with; one whose node was lost after the trainer exited 0,
    even as stop_all was killing it, went with the run's end (its work is done): logged, not held against
    the run."""
    completed = any(c.name == "trainer" and c.exitcode == 0 for c in children)
    ended = [c for c in children if c.starts and c.restart_at is None and not c.hung]
    lost = sorted(c.name for c in ended if completed and c.lost)
    failed = {c.name for c in ended if c.exitcode not in CLEAN_EXITS} | set(killed)
    return failed - set(lost), lost


def launch(argv: list[str], output: int | None = None) -> tuple[subprocess.Popen, liveness.Listener]:
    """A child process in its own session, SIGTERMed if its parent dies, with a liveness pipe to it; its
    stdout and stderr ours, or the descriptor `output`."""
    listener = liveness.Listener()
    env = {**listener.child_env(), eventlog.SUPERVISED: "1"}  # the view draws the console from its log
    proc = subprocess.Popen(argv, preexec_fn=die_with_parent, start_new_session=True, pass_fds=(listener.write_fd,),
                            env=env, stdout=output, stderr=output)
    listener.started()
    return proc, listener


class Supervisor:
    def __init__(self, cfg: Config, run_dir: Path | None = None, ray: str | None = None):
        """A new run (its directory made here), or with `run_dir` one to resume (see `resume`); with `ray`, a
        Ray cluster's address, its workers spread over the cluster's nodes (hotprune.roles.ray_nodes)."""
        self.cfg = cfg
        self.resuming = run_dir is not None
        self.nodes = None
        if ray is not None:
            from hotprune.roles.ray_nodes import RayNodes  # noqa: PLC0415 -- ray: only with --ray

            self.nodes = RayNodes(ray, cfg, resumed=self.resuming)
        self.made_run_dir = not cfg.run_dir.exists()  # a failed start removes the directory only if it made it
        try:
            self.run_dir = run_dir if run_dir is not None else rundir.prepare(
                cfg, workers_here=None if self.nodes is None else len(self.nodes.local))
            # What the stopped run left (its segment and socket files), once nothing can refuse the resume
            # (--ray's checks above): a refused one removes nothing. Before this supervisor's pid file.
            for path in cleanup.clean_run(self.run_dir) if self.resuming else []:
                print(f"hotprune: removed {path}, left by the stopped run", file=sys.stderr)
        except BaseException:
            if self.nodes:
                self.nodes.leave()
            raise
        cleanup.record_supervisor(self.run_dir)
        self.log = eventlog.setup(self.run_dir, cfg.run_id, "supervisor", echo=False)  # hotprune.runs.view draws it
        self.children = process_table(cfg, self.run_dir, None if self.nodes is None else self.nodes.local)
        self.signal: int | None = None
        self.refused: str | None = None  # the child that exited with CONFIG_ERROR

    @classmethod
    def resume(cls, run_dir: Path, ray: str | None = None) -> "Supervisor":
        """Continue a stopped run with its own config, from its trainer checkpoint (a trainer that
        died before its first starts over). A run counts as completed once its supervisor said so:
        one stopped while the trainer waited for its final masks still has them to take up. With `ray`,
        over that cluster's nodes (a run that ran over tcp on this node's Ray address: its config.toml
        says where its processes listen); the other nodes' relays and workers start fresh, as on a restart."""
        run_dir = run_dir.resolve()  # runs/latest is a link: never hand the link to the children
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"{run_dir} is not a hotprune run (no config.toml)")
        private.check(run_dir)  # before anything is removed, written or bound in it
        cfg = load_run_config(run_dir)
        try:
            finished = runlog.load(run_dir).finished
        except runlog.RunError:  # no logs yet
            finished = None
        if finished and finished["outcome"] == "completed":
            raise ConfigError(f"{run_dir} already completed its {cfg.total_epochs} epochs")
        alive = cleanup.run_pids(run_dir)
        if alive:
            raise ConfigError(f"{run_dir} is still running (pid {', '.join(map(str, alive))})")
        rundir.check_resume(cfg)  # every file it reads back, before anything is touched
        return cls(cfg, run_dir, ray)

    def _on_signal(self, signum, frame) -> None:
        self.signal = self.signal or signum

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        stores = []  # made here, so that readers stay attached while a writer restarts
        remote_stores = []  # with --ray: made by each other node's host
        try:
            for node in nodes(self.cfg):
                stores.append(WeightStore.create(segment_name(self.run_dir, node), rundir.store_slot_size(self.cfg)))
            if self.nodes:
                remote, remote_stores = self.nodes.start(self.cfg, self.run_dir)
                self.children += remote
        except (StoreError, ConfigError):
            for store in stores:
                store.close()
                store.unlink()
            if self.nodes:
                self.nodes.stop()
            if not self.resuming:  # a resumed run's directory is its record: nothing to undo
                rundir.discard(self.run_dir, self.made_run_dir)
            raise
        rundir.point_latest(self.run_dir)
        self.log.info("run_started", run_dir=str(self.run_dir), store=stores[0].name,
                      node_stores=[store.name for store in stores[1:]] + remote_stores,
                      config=str(self.run_dir / "config.toml"), resumed=self.resuming)
        early = None
        try:
            for child in self.children:
                self._spawn(child)
            early = self.watch()
        finally:
            killed = self.stop_all()
            if self.nodes:
                self.nodes.stop()  # their logs shipped here, nothing of the run left on them
            for child in self.children:
                if child.listener:
                    child.listener.close()
            for store in stores:
                store.close()
                store.unlink()
            cleanup.remove_sockets(self.run_dir)
        failed, lost = failures(self.children, killed)
        if early and not self.signal:
            failed.add(early)
        failed = sorted(failed)
        if self.signal:
            outcome, code = f"stopped by {signal.Signals(self.signal).name}", 128 + self.signal
        elif self.refused:
            outcome, code = f"refused: {self.refused}", CONFIG_ERROR
        elif failed:
            outcome, code = "failed: " + ", ".join(failed), 1
        else:
            outcome, code = "completed", 0
        self.log.info("run_finished", outcome=outcome, exitcode=code, failed=failed, lost=lost,
                      restarts={c.name: c.starts - 1 for c in self.children if c.starts > 1},
                      logs=str(self.run_dir / "logs"))
        return code

    def _spawn(self, child: Child) -> None:
        resume = child.resumable and (self.resuming or child.starts > 0)
        proc, listener = child.launch(child.argv + ["--resume"] * resume)
        if child.listener:
            child.listener.close()
        child.proc, child.listener, child.exitcode, child.hung, child.restart_at = proc, listener, None, False, None
        child.lost = False
        child.started_at = time.monotonic()
        child.starts += 1
        self.log.info("process_started", name=child.name, child_pid=child.proc.pid, argv=proc.args, start=child.starts)

    def _crashed(self, child: Child) -> bool:
        """A child failed (exited non-zero, was killed, or hung): schedule its restart if the budget
        allows; False when it is exhausted."""
        s, now = self.cfg.supervisor, time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < s.restart_window_s]
        reason = "hung" if child.hung else f"exit {child.exitcode}"
        if len(child.restarts) >= s.max_restarts:
            self.log.error("restart_budget_exhausted", name=child.name, reason=reason, restarts=len(child.restarts),
                           max_restarts=s.max_restarts, window_s=s.restart_window_s)
            return False
        backoff = min(MAX_BACKOFF_S, s.restart_backoff_s * 2 ** len(child.restarts))
        child.restarts.append(now)
        child.restart_at = now + backoff
        self.log.warning("process_restarting", name=child.name, reason=reason, attempt=len(child.restarts),
                         backoff_s=backoff)
        return True

    def _hung(self, child: Child) -> bool:
        """Kill a child silent for hang_timeout_s (start_timeout_s before its first ping: imports and
        set-up take a while on a busy machine); True if it was."""
        s = self.cfg.supervisor
        if not s.hang_timeout_s or child.hung:
            return False
        silent = child.listener.silent_s()
        timeout = s.hang_timeout_s if child.listener.pinged else max(s.hang_timeout_s, s.start_timeout_s)
        if silent <= timeout:
            return False
        self.log.error("process_hung", name=child.name, child_pid=child.proc.pid, silent_s=silent,
                       hang_timeout_s=timeout)
        child.hung = True
        child.proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
        return True

    def _trainer_done(self) -> bool:
        """The trainer exited 0, or said training is over (liveness.DONE): it is on its way out, however
        slowly, and its control `stop` reaches the others."""
        return any(c.name == "trainer" and (c.exitcode == 0 or c.listener and c.listener.done)
                   for c in self.children)

    def _reap(self, child: Child) -> bool:
        """Record a child's exit once; True if it has exited."""
        if child.exitcode is None and child.proc.poll() is not None:
            child.exitcode = child.proc.returncode
            self.log.info("process_exited", name=child.name, child_pid=child.proc.pid, exitcode=child.exitcode,
                          runtime_s=time.monotonic() - child.started_at)
        return child.exitcode is not None

    def watch(self) -> str | None:
        """Until training ends or a signal comes, restarting children that fail. Returns the child
        that failed for good (restarts exhausted, or a clean exit before the trainer finished), or None.

        A child exiting cleanly just before the trainer is the normal end: the trainer's `stop`
        reaches the others while it is still writing its summary. So a clean exit is only held
        against the run if the trainer has not finished within the grace period, and never once the
        trainer has said its training is over (liveness.DONE). A trainer that said so is on its way
        out and no longer pings: its silence is not a hang, and once every other child has stopped,
        stop_all gives it the grace period (then SIGTERM, then SIGKILL) to exit.
        """
        clean_exit: tuple[str, float] | None = None  # (name, deadline)
        heartbeat = eventlog.Heartbeat(self.log, self.cfg.supervisor.heartbeat_s)
        while self.signal is None:
            self._poll_nodes()
            heartbeat.beat(running=[c.name for c in self.children if c.exitcode is None])
            for child in self.children:
                if child.restart_at is not None:
                    if time.monotonic() >= child.restart_at:
                        try:
                            self._spawn(child)
                        except ConfigError as exc:  # with --ray: its node lost, and no other node can host it
                            self.log.error("restart_failed", name=child.name, reason=str(exc))
                            return child.name
                    continue
                if not self._reap(child):
                    if not child.listener.done:
                        self._hung(child)
                    continue
                if child.exitcode == CONFIG_ERROR:  # a refusal, not a crash: it would refuse again
                    self.log.error("process_refused", name=child.name, exitcode=child.exitcode)
                    self.refused = child.name
                    return child.name
                if child.lost and self._trainer_done():  # its node went as the run ends: nothing to restart
                    continue
                if child.exitcode != 0 or child.hung:
                    if not self._crashed(child):
                        return child.name
                    continue
                if child.name == "trainer":
                    return None
                clean_exit = clean_exit or (child.name, time.monotonic() + self.cfg.supervisor.stop_grace_s)
            if self._trainer_done():
                if all(c.exitcode is not None for c in self.children if c.name != "trainer"):
                    return None
            elif clean_exit and time.monotonic() > clean_exit[1]:
                return clean_exit[0]
            time.sleep(POLL_S)
        return None

    def stop_all(self) -> list[str]:
        """Stop every child still running; returns those that had to be killed."""
        if not self._trainer_done() or self.signal:  # else the trainer's control `stop` is already on its way
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
        while True:
            self._poll_nodes()
            if all(self._reap(c) for c in self.children if c.proc):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _poll_nodes(self) -> None:
        """With --ray, the other nodes' children as their hosts last saw them (hotprune.roles.ray_nodes)."""
        if self.nodes:
            self.nodes.poll()

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc and child.exitcode is None and child.proc.poll() is None:
                child.proc.send_signal(sig)
