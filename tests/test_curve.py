"""tcp speaks CURVE: keys, the handshake that refuses every peer without the run's keys, and the logs of it.

The unit tests use real sockets in this process; the slow ones run the real service and attack it.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from hotprune.protocol.codec import Encoder
from hotprune import eventlog
from hotprune.runs import rundir
from hotprune.comms import curve
from hotprune.config import ConfigError, load_config
from hotprune.comms.curve import RefusalLog, SocketSecurity
from tests.servicekit import (HOTPRUNE, assert_clean, events, free_base_port, hotprune, logged, of, settings,
                              wait_for)

NO_KEYS = "peer does not speak CURVE (no keys)"
WRONG_SERVER_KEY = "handshake does not decrypt (wrong server key)"
UNKNOWN_CLIENT = "unknown client key"


def tcp(*extra: str) -> list[str]:
    return ["transport.kind=tcp", f"transport.base_port={free_base_port()}", *extra]


def client(ctx: zmq.Context, kind: int, endpoint: str, server_public: bytes | None = None,
           pair: tuple[bytes, bytes] | None = None) -> zmq.Socket:
    """A socket as an outsider makes it: no keys at all, or the keys it is given."""
    sock = ctx.socket(kind)
    sock.linger = 0
    if server_public:
        sock.curve_serverkey = server_public
        sock.curve_publickey, sock.curve_secretkey = pair or zmq.curve_keypair()
    if kind == zmq.SUB:
        sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def refused(lines: list[dict]) -> dict[str, set[str]]:
    """Each socket's reasons for refusing peers."""
    reasons: dict[str, set[str]] = {}
    for line in of(lines, "peer_refused"):
        reasons.setdefault(line["socket"], set()).add(line["reason"])
    return reasons


def no_keys(reasons: set[str]) -> bool:
    """A peer without keys was refused: on the mismatch, or it hung up first, having seen it."""
    return bool(reasons) and all(r == NO_KEYS or r.startswith("handshake broke off") for r in reasons)


# --- keys -------------------------------------------------------------------------------------


def test_generated_keys_are_private_and_load_as_two_distinct_matching_pairs(tmp_path):
    directory = curve.generate(tmp_path / "deep" / "keys")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [
        "client.key", "client.key_secret", "server.key", "server.key_secret"]
    for secret in directory.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    keys = curve.load(directory)
    assert zmq.curve_public(keys.server_secret) == keys.server_public
    assert zmq.curve_public(keys.client_secret) == keys.client_public
    assert keys.server_public != keys.client_public
    assert curve.load(curve.generate(tmp_path / "other")) != keys  # fresh every time
    assert f'public-key = "{keys.server_public.decode()}"' in (directory / "server.key").read_text()  # text, no pickle


def test_keys_never_go_into_an_existing_directory(tmp_path):
    (tmp_path / "keys").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        curve.generate(tmp_path / "keys")


def _replace_secret(text: str, secret: str) -> str:
    return "\n".join(f'    secret-key = "{secret}"' if "secret-key" in line else line for line in text.splitlines())


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), "is missing; make a key set with `hotprune keys DIR`"),
    (lambda p: (p.unlink(), p.mkdir()), "cannot be read: Is a directory"),
    (lambda p: p.chmod(0o644), "is readable by others (mode 0644); chmod 600 it"),
    (lambda p: p.write_text("not a certificate\n"), "malformed: no public-key line"),
    (lambda p: p.write_text("\n".join(l for l in p.read_text().splitlines() if "secret-key" not in l)),
     "malformed: no secret-key line"),
    (lambda p: p.write_text(_replace_secret(p.read_text(), "tooshort")), "malformed: its secret key is not"),
    (lambda p: p.write_text(_replace_secret(p.read_text(), zmq.curve_keypair()[1].decode())),
     "malformed: its secret key is not the secret of its public key"),
])
def test_a_bad_key_file_is_one_clear_line(tmp_path, damage, message):
    directory = curve.generate(tmp_path / "keys")
    damage(directory / "client.key_secret")
    with pytest.raises(ConfigError) as info:
        curve.load(directory)
    assert message in str(info.value) and "client.key_secret" in str(info.value) and "\n" not in str(info.value)


def test_a_tcp_run_directory_gets_its_own_keys_and_an_ipc_one_none(tmp_path):
    def prepared(run_id, *extra):
        return rundir.prepare(load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path))}", f"run_id={run_id}",
                                                     *extra]))

    one, two = prepared("one", *tcp()), prepared("two", *tcp())
    assert curve.load(one / "keys") != curve.load(two / "keys")
    assert not (prepared("ipc") / "keys").exists()


def test_a_key_set_copied_in_before_the_run_directory_is_prepared_is_kept(tmp_path):
    shared = curve.load(curve.generate(tmp_path / "shared"))
    shutil.copytree(tmp_path / "shared", tmp_path / "runs" / "multi" / "keys")
    run_dir = rundir.prepare(load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path / 'runs'))}",
                                                    "run_id=multi", *tcp()]))
    assert curve.load(run_dir / "keys") == shared


# --- the handshake, in this process -----------------------------------------------------------


def test_only_the_runs_client_key_gets_through_and_every_other_peer_is_logged(tmp_path):
    """One outsider per server socket, so each refusal is known to be its. A peer without keys is
    refused on a mechanism mismatch, or it notices the mismatch first and hangs up mid-handshake."""
    cfg = load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path))}", "run_id=gate", *tcp()])
    run_dir = rundir.prepare(cfg)
    keys, ep = curve.load(run_dir / "keys"), cfg.endpoints()
    server_ctx, client_ctx = zmq.Context(), zmq.Context()
    log = eventlog.setup(run_dir, cfg.run_id, "trainer")
    server = SocketSecurity(cfg, server_ctx, log)
    pulls = {}
    for name in ("masks", "snapshots", "trajectories"):
        pulls[name] = server_ctx.socket(zmq.PULL)
        server.bind(pulls[name], getattr(ep, name))
    stranger = zmq.curve_keypair()
    try:
        outsiders = [client(client_ctx, zmq.PUSH, ep.masks),
                     client(client_ctx, zmq.PUSH, ep.snapshots, keys.server_public, stranger),
                     client(client_ctx, zmq.PUSH, ep.trajectories, zmq.curve_keypair()[0],
                            (keys.client_public, keys.client_secret))]
        for sock in outsiders:
            sock.send(b"outsider")
        insider = client_ctx.socket(zmq.PUSH)
        SocketSecurity(cfg, client_ctx, log).connect(insider, ep.trajectories)
        insider.send(b"insider")
        assert pulls["trajectories"].poll(10_000) and pulls["trajectories"].recv() == b"insider"
        wait_for(lambda: {r["socket"] for r in logged(run_dir, "trainer", "peer_refused")} == set(pulls),
                 timeout=10, what="a refusal on each socket")
        assert not any(pull.poll(300) for pull in pulls.values())  # none of the outsiders got a message in
    finally:
        server_ctx.destroy(linger=0)  # also ends the gatekeeper thread: a hang here is a bug
        client_ctx.destroy(linger=0)
    assert not server.gatekeeper.is_alive()
    lines = events(run_dir, "trainer")
    assert [(o["socket"], o["side"], o["mechanism"], o["curve_server"]) for o in of(lines, "socket_opened")] == [
        ("masks", "bind", "CURVE", True), ("snapshots", "bind", "CURVE", True), ("trajectories", "bind", "CURVE", True),
        ("trajectories", "connect", "CURVE", False)]
    reasons = refused(lines)
    assert no_keys(reasons["masks"])
    assert reasons["snapshots"] == {UNKNOWN_CLIENT} and reasons["trajectories"] == {WRONG_SERVER_KEY}
    [unknown] = [r for r in of(lines, "peer_refused") if r["socket"] == "snapshots"]  # it gives up after one
    assert unknown["peer"] == "127.0.0.1" and unknown["mechanism"] == "CURVE" and unknown["refusals"] == 1
    assert unknown["client_key"] == stranger[0].decode() != keys.client_public.decode()
    # the wrong server key's client retries every 100 ms: a few lines, standing for all its refusals
    retries = [r["refusals"] for r in of(lines, "peer_refused") if r["socket"] == "trajectories"]
    assert sum(retries) > len(retries) >= 1


def test_ipc_sockets_stay_without_curve(tmp_path):
    cfg = load_config(overrides=[f"runs_dir={json.dumps(str(tmp_path))}", "run_id=plain"])
    run_dir = rundir.prepare(cfg)
    ctx = zmq.Context()
    security = SocketSecurity(cfg, ctx, eventlog.setup(run_dir, cfg.run_id, "trainer"))
    try:
        pull = ctx.socket(zmq.PULL)
        security.bind(pull, cfg.endpoints().trajectories)
        assert pull.mechanism == zmq.NULL and security.gatekeeper is None
    finally:
        ctx.destroy(linger=0)
    [opened] = of(events(run_dir, "trainer"), "socket_opened")
    assert opened["mechanism"] == "NULL" and opened["endpoint"].startswith("ipc://")


class Lines:
    """Collects what a RefusalLog writes."""

    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append({"event": event, **fields})


def test_refusals_are_rate_limited_per_socket_and_reason_and_all_counted():
    out = Lines()
    refused = RefusalLog(out, every_s=60)
    for _ in range(1000):
        refused.refused("snapshots", NO_KEYS, peer=None, mechanism=None)
    refused.refused("masks", NO_KEYS, peer=None, mechanism=None)
    refused.refused("snapshots", UNKNOWN_CLIENT, peer="10.0.0.7", mechanism="CURVE")
    assert [(line["socket"], line["reason"], line["refusals"]) for line in out.lines] == [
        ("snapshots", NO_KEYS, 1), ("masks", NO_KEYS, 1), ("snapshots", UNKNOWN_CLIENT, 1)]
    refused.close()  # what was held back is written, counted
    assert [(line["socket"], line["refusals"]) for line in out.lines[3:]] == [("snapshots", 999)]
    assert sum(line["refusals"] for line in out.lines) == 1002


def test_after_the_quiet_interval_the_next_refusal_is_a_line_again():
    out = Lines()
    refused = RefusalLog(out, every_s=0.05)
    refused.refused("weights", NO_KEYS, peer=None, mechanism=None)
    refused.refused("weights", NO_KEYS, peer=None, mechanism=None)
    time.sleep(0.1)
    refused.refused("weights", NO_KEYS, peer=None, mechanism=None)
    assert [line["refusals"] for line in out.lines] == [1, 2]


# --- the real service -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tcp_run_completes_with_every_socket_curve(tmp_path):
    result = hotprune("run", *settings(tmp_path, "curve", "epochs=6", *tcp()))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "curve"
    [summary] = of(events(run_dir, "trainer"), "summary")
    assert summary["completed"] and summary["epochs"] == 6
    opened = {}
    for name in ("trainer", "compressor", "worker-0", "worker-1"):
        lines = events(run_dir, name)
        assert not of(lines, "peer_refused"), name  # the run's own processes are all admitted
        opened[name] = sorted((o["socket"], o["side"], o["mechanism"], o["curve_server"])
                              for o in of(lines, "socket_opened"))
    assert opened["trainer"] == [("credits", "bind", "CURVE", True), ("masks", "bind", "CURVE", True),
                                 ("snapshots", "bind", "CURVE", True), ("trajectories", "bind", "CURVE", True)]
    assert opened["compressor"] == [("masks", "connect", "CURVE", False), ("snapshots", "connect", "CURVE", False),
                                    ("versions", "bind", "CURVE", True), ("weights", "bind", "CURVE", True)]
    assert opened["worker-0"] == opened["worker-1"] == [("credits", "connect", "CURVE", False),
                                                        ("trajectories", "connect", "CURVE", False),
                                                        ("weights", "connect", "CURVE", False)]
    assert stat.S_IMODE((run_dir / "keys").stat().st_mode) == 0o700
    assert_clean(run_dir)


@pytest.mark.slow
def test_peers_without_the_runs_keys_get_nothing_in_and_nothing_out_and_the_run_completes(tmp_path):
    run = subprocess.Popen([HOTPRUNE, "run", *settings(tmp_path, "attack", "epochs=40", *tcp())],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "attack"
    ctx = zmq.Context()
    try:
        wait_for(lambda: logged(run_dir, "trainer", "epoch"), timeout=90, what="the first epoch")
        keys = curve.load(run_dir / "keys")
        ep = load_config(run_dir / "config.toml").endpoints()
        own = (keys.client_public, keys.client_secret)
        listeners = {
            "no keys": client(ctx, zmq.SUB, ep.snapshots),
            "a wrong client key": client(ctx, zmq.SUB, ep.snapshots, keys.server_public),
            "no keys, on weights": client(ctx, zmq.SUB, ep.weights),
            "the run's keys (an insider)": client(ctx, zmq.SUB, ep.snapshots, keys.server_public, own),
        }
        forged = Encoder("attack", "intruder")
        senders = [client(ctx, zmq.PUSH, ep.trajectories), client(ctx, zmq.PUSH, ep.masks),
                   client(ctx, zmq.PUSH, ep.trajectories, zmq.curve_keypair()[0], own)]
        for sock, kind in zip(senders, ["trajectory", "masks", "trajectory"]):
            sock.send_multipart(forged.encode(kind, {"version": 1}))
        insider = client(ctx, zmq.PUSH, ep.trajectories, keys.server_public, own)
        insider.send_multipart([b"\x00 garbage from a keyed peer"])  # the insider case: the decoder's job
        received = dict.fromkeys(listeners, 0)
        poller = zmq.Poller()
        for sock in listeners.values():
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                sock.recv_multipart()
                received[next(k for k, s in listeners.items() if s is sock)] += 1
        out, err = run.communicate(timeout=180)
    finally:
        run.kill()
        ctx.destroy(linger=0)
    assert received["the run's keys (an insider)"] >= 3  # snapshots were flowing the whole time
    assert [received[k] for k in ("no keys", "a wrong client key", "no keys, on weights")] == [0, 0, 0]
    assert run.returncode == 0, err
    trainer, compressor = events(run_dir, "trainer"), events(run_dir, "compressor")
    assert len(of(trainer, "epoch")) == 40
    # Only the insider's garbage reached a decoder; every forged message died at the handshake.
    [rejected] = of(trainer, "message_rejected")
    assert "not msgpack" in rejected["reason"]
    reasons = refused(trainer)
    assert UNKNOWN_CLIENT in reasons["snapshots"] and WRONG_SERVER_KEY in reasons["trajectories"]
    assert no_keys(reasons["masks"]) and no_keys(refused(compressor)["weights"])
    assert set(refused(compressor)) == {"weights"} and set(reasons) == {"snapshots", "trajectories", "masks"}
    assert all(line["level"] == "warning" for line in of(trainer, "peer_refused"))
    assert_clean(run_dir)


@pytest.mark.slow
def test_hotprune_keys_makes_a_set_a_run_can_use_and_refuses_to_overwrite(tmp_path):
    made = hotprune("keys", str(tmp_path / "shared"), timeout=60)
    assert made.returncode == 0, made.stderr
    assert Path(made.stdout.strip()) == tmp_path / "shared"
    shared = curve.load(tmp_path / "shared")
    again = hotprune("keys", str(tmp_path / "shared"), timeout=60)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert curve.load(tmp_path / "shared") == shared  # untouched

    # The multi-host recipe of docs/operations.md: the set copied (modes kept) into the run directory first.
    shutil.copytree(tmp_path / "shared", tmp_path / "runs" / "multi" / "keys")
    init = hotprune("init", *settings(tmp_path, "multi", *tcp()), timeout=60)
    assert init.returncode == 0, init.stderr
    assert curve.load(Path(init.stdout.strip()) / "keys") == shared

    # A process started against a damaged set fails at start with one line.
    secret = tmp_path / "runs" / "multi" / "keys" / "server.key_secret"
    secret.write_text(secret.read_text().replace("secret-key", "secret-kez"))
    trainer = hotprune("trainer", "--run-dir", init.stdout.strip(), timeout=60)
    assert trainer.returncode == 2 and trainer.stderr.strip().count("\n") == 0
    assert "server.key_secret is malformed: no secret-key line" in trainer.stderr
