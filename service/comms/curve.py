"""Transport security: with `transport.kind = "tcp"`, every socket of a run speaks ZeroMQ CURVE, always.

- A binding socket is a CURVE server (the run's server secret key); a connecting socket is a CURVE
  client that knows the server's public key and holds the run's client key pair. Traffic is
  encrypted, and a client only completes a handshake with a holder of the server secret.
- Each binding process runs a ZAP handler (ZeroMQ RFC 27) that admits the run's client public key
  and nothing else. A peer with no keys, a wrong server key or an unknown client key is refused
  during the handshake, before any of its bytes reach the process's message decoder, and logged as
  `peer_refused`, at most one line a second for each socket and reason (ZeroMQ reconnects every
  100 ms, so a refused peer retries in a loop); a line's `refusals` counts the ones it stands for.
- Keys live in `<run_dir>/keys/` as ZeroMQ certificates (zmq.auth's text format; `server.key` and
  `client.key` are the public halves, `*.key_secret` hold both halves and are mode 0600 in a 0700
  directory). `prepare` generates them for a tcp run; `hotprune keys DIR` makes a set to copy to
  several hosts.

ipc needs none of this: its sockets are files in the run's private (0700) directory. So a tcp run's
node-local sockets (a relay's to its node's workers, always ipc) speak no CURVE either.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import NamedTuple

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from hotprune.config import Config, ConfigError

KEYS = "keys"  # <run_dir>/keys/
SERVER, CLIENT = "server", "client"
MECHANISMS = {zmq.NULL: "NULL", zmq.CURVE: "CURVE"}  # the two a socket of a run can have
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's ZAP handler (RFC 27)
POLL_MS = 100  # the gatekeeper's poll: how soon it watches a socket bound after it started
REFUSAL_LINE_S = 1.0  # at most one peer_refused line per socket and reason this often
# Handshakes that fail before ZAP is asked (the server never learns a client key); an unknown
# client key is refused by the ZAP handler itself, which also knows the peer's address.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "peer does not speak CURVE (no keys)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "handshake does not decrypt (wrong server key)",
}


def keys_dir(run_dir: Path) -> Path:
    return run_dir / KEYS


class KeySet(NamedTuple):
    """The run's two key pairs, z85-encoded (what ZeroMQ's socket options take)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def generate(directory: Path) -> Path:
    """A fresh server and client key pair in `directory`, which must not exist yet (made 0700)."""
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        raise ConfigError(f"{directory} already exists; keys go into a new directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}") from None
    directory.chmod(0o700)  # mkdir's mode is cut by the umask
    for name in (SERVER, CLIENT):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)  # written with the umask's mode, inside a directory only we can enter
        os.chmod(public, 0o644)  # and under umask 000 writable by anyone
    return directory


def load(directory: Path) -> KeySet:
    """The key set in `directory`; a missing, unreadable, exposed or malformed file is a ConfigError."""
    server, client = (_key_pair(directory / f"{name}.key_secret") for name in (SERVER, CLIENT))
    return KeySet(*server, *client)


def _key_pair(path: Path) -> tuple[bytes, bytes]:
    hint = "make a key set with `hotprune keys DIR` and copy it into the run directory's keys/"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        public, secret = zmq.auth.load_certificate(path)
    except FileNotFoundError:
        raise ConfigError(f"CURVE key file {path} is missing; {hint}") from None
    except ValueError:  # load_certificate found no public key
        raise ConfigError(f"CURVE key file {path} is malformed: no public-key line") from None
    except OSError as exc:
        raise ConfigError(f"CURVE key file {path} cannot be read: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"CURVE key file {path} is readable by others (mode {mode:04o}); chmod 600 it")
    if secret is None:
        raise ConfigError(f"CURVE key file {path} is malformed: no secret-key line")
    try:
        matches = zmq.curve_public(secret) == public
    except ValueError:  # not 40 characters of z85
        matches = False
    if not matches:
        raise ConfigError(f"CURVE key file {path} is malformed: its secret key is not the secret of its public key")
    return public, secret


class RefusalLog:
    """`peer_refused` lines, at most one per socket and reason every `every_s`: a peer that retries
    in a loop, or many peers, cannot flood the log. Each line says how many refusals it stands for
    (itself and those held back since the previous line of its kind); `close` writes what is held."""

    def __init__(self, log, every_s: float = REFUSAL_LINE_S):
        self.log, self.every_s = log, every_s
        self.held: dict[tuple[str, str], tuple[float, int, dict]] = {}  # kind -> (quiet until, held, last fields)

    def refused(self, socket: str, reason: str, **fields) -> None:
        kind, now = (socket, reason), time.monotonic()
        quiet_until, held, _ = self.held.get(kind, (0.0, 0, {}))
        if now < quiet_until:
            self.held[kind] = (quiet_until, held + 1, fields)
            return
        self.log.warning("peer_refused", socket=socket, reason=reason, **fields, refusals=held + 1)
        self.held[kind] = (now + self.every_s, 0, fields)

    def close(self) -> None:
        for (socket, reason), (_, held, fields) in self.held.items():
            if held:
                self.log.warning("peer_refused", socket=socket, reason=reason, **fields, refusals=held)
        self.held.clear()


class Gatekeeper(threading.Thread):
    """A binding process's ZAP handler, and the watch on its CURVE servers' failed handshakes.

    Its sockets are made with zmq.Socket, not ctx.socket: the roles end with ctx.destroy(), which
    closes the sockets it knows of from the main thread, and a socket must not be closed under the
    thread using it. Untracked, they see the context terminate (ContextTerminated) and the thread
    closes them itself, which lets the termination finish.
    """

    def __init__(self, ctx: zmq.Context, allowed: set[bytes], log):
        super().__init__(name="gatekeeper", daemon=True)
        self.ctx, self.allowed = ctx, allowed
        self.refusals = RefusalLog(log)
        self.zap = zmq.Socket(ctx, zmq.REP)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)  # before any CURVE server binds: without a handler libzmq admits any key
        self.watched: queue.SimpleQueue[tuple[zmq.Socket, str]] = queue.SimpleQueue()

    def watch(self, sock: zmq.Socket, name: str) -> None:
        """Report `sock`'s failed handshakes (call before it binds)."""
        address = f"inproc://gatekeeper-monitor-{name}"
        sock.monitor(address, HANDSHAKE_FAILURES)
        monitor = zmq.Socket(self.ctx, zmq.PAIR)
        monitor.linger = 0
        monitor.connect(address)
        self.watched.put((monitor, name))  # handed over to the thread, which alone uses it from now on

    def run(self) -> None:
        poller, names = zmq.Poller(), {}
        poller.register(self.zap, zmq.POLLIN)
        try:
            while True:
                while not self.watched.empty():
                    monitor, name = self.watched.get()
                    poller.register(monitor, zmq.POLLIN)
                    names[monitor] = name
                for sock, _ in poller.poll(POLL_MS):
                    if sock is self.zap:
                        self._answer(self.zap.recv_multipart())
                    else:
                        self._handshake_failed(names[sock], parse_monitor_message(sock.recv_multipart()))
        except zmq.ContextTerminated:  # the process is ending
            pass
        finally:
            handed_over = []  # not watched yet, closed all the same
            while not self.watched.empty():
                handed_over.append(self.watched.get()[0])
            for sock in [self.zap, *names, *handed_over]:
                sock.close(linger=0)
            self.refusals.close()

    def _answer(self, request: list[bytes]) -> None:
        """ZAP: version, request id, domain (the socket's name), peer address, identity, mechanism,
        credentials (CURVE: the client's public key). Admit the run's client key only."""
        _, request_id, domain, address, _, mechanism, *credentials = request
        key = credentials[0] if mechanism == b"CURVE" and len(credentials) == 1 else None
        admitted = key is not None and key in self.allowed
        status = [b"200", b"OK"] if admitted else [b"400", b"unknown client key"]
        self.zap.send_multipart([b"1.0", request_id, *status, b"", b""])
        if not admitted:
            self.refusals.refused(domain.decode(errors="replace"), "unknown client key",
                                  peer=address.decode(errors="replace"), mechanism=mechanism.decode(errors="replace"),
                                  client_key=z85.encode(key).decode() if key else None)

    def _handshake_failed(self, name: str, event: dict) -> None:
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            reason = PROTOCOL_REASONS.get(event["value"], f"protocol error 0x{event['value']:x}")
        else:
            reason = f"handshake broke off: {os.strerror(event['value'])}"  # e.g. a retrying peer hung up first
        self.refusals.refused(name, reason, peer=None, mechanism=None)


class SocketSecurity:
    """How this process binds and connects its sockets: CURVE on tcp, as they are on ipc. Each
    socket opened is logged as `socket_opened` with the mechanism read back from the socket."""

    def __init__(self, cfg: Config, ctx: zmq.Context, log):
        self.ctx, self.log = ctx, log
        self.endpoints = cfg.endpoints()
        self.keys = load(keys_dir(cfg.run_dir)) if cfg.transport.kind == "tcp" else None
        self.gatekeeper: Gatekeeper | None = None

    def bind(self, sock: zmq.Socket, endpoint: str, name: str | None = None) -> None:
        """Bind `sock` to one of the run's endpoints, or to a node-local one given its `name`."""
        name = name or self._name(endpoint)
        if self._curve(endpoint):
            if self.gatekeeper is None:
                self.gatekeeper = Gatekeeper(self.ctx, {z85.decode(self.keys.client_public)}, self.log)
                self.gatekeeper.start()
            sock.curve_secretkey = self.keys.server_secret
            sock.curve_server = True
            sock.zap_domain = name.encode()  # names the socket in the ZAP request
            self.gatekeeper.watch(sock, name)
        sock.bind(endpoint)
        self._opened(sock, name, endpoint, "bind")

    def connect(self, sock: zmq.Socket, endpoint: str, name: str | None = None) -> None:
        if self._curve(endpoint):
            sock.curve_serverkey = self.keys.server_public
            sock.curve_publickey = self.keys.client_public
            sock.curve_secretkey = self.keys.client_secret
        sock.connect(endpoint)
        self._opened(sock, name or self._name(endpoint), endpoint, "connect")

    def _curve(self, endpoint: str) -> bool:
        return self.keys is not None and endpoint.startswith("tcp://")

    def _name(self, endpoint: str) -> str:
        return self.endpoints._fields[self.endpoints.index(endpoint)]

    def _opened(self, sock: zmq.Socket, name: str, endpoint: str, side: str) -> None:
        self.log.info("socket_opened", socket=name, endpoint=endpoint, side=side,
                      mechanism=MECHANISMS[sock.mechanism], curve_server=bool(sock.curve_server))
