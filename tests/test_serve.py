"""`authchat serve` as a real process: start-up, SIGTERM, shutdown."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from authchat.store import sqlite
from authchat.store.schema import known_migrations
from authchat.tls import CERT_FILENAME

from conftest import GOOD_PASSWORD, Runner, assert_one_line_error, cli_env
from helpers import Client, ServerProcess

OTHER_PASSWORD = "an entirely different phrase"


@pytest.mark.slow
def test_sigterm_tells_everyone_and_exits_zero(run_cli: Runner, home: Path) -> None:
    for name in ("alice", "bob"):
        run_cli("users", "add", name, "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    server = ServerProcess(home)  # the embedded default: SQLite and TLS, no config file
    try:
        assert b"TLS on (SHA-256 fingerprint" in server.log
        assert b"registration open" in server.log
        cert = home / CERT_FILENAME
        clients = [Client(server.address, cafile=cert) for _ in range(3)]
        clients[0].login("alice")
        clients[1].login("bob")
        clients[2].hello()  # still in the handshake
        started = time.monotonic()
        status = server.terminate()
        assert status == 0, server.log.decode(errors="replace")
        assert time.monotonic() - started < 5
        for client in clients:
            client.expect_error("server_shutdown")
            client.expect_closed()
    finally:
        server.kill()
    assert b"Traceback" not in server.log
    assert GOOD_PASSWORD.encode() not in server.log
    assert b"WAL-reset" not in server.log  # the SQLite under the store has the fix


@pytest.mark.slow
def test_a_full_disk_fails_registration_generically_and_loses_nothing(
        run_cli: Runner, home: Path) -> None:
    run_cli("users", "add", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    limit = sum(p.stat().st_size for p in home.iterdir()) + 160 * 1024
    server = ServerProcess(home, "--no-tls", max_file_bytes=limit,
                           AUTHCHAT_LIMITS_REGISTRATIONS_PER_IP_PER_HOUR="1000",
                           AUTHCHAT_LIMITS_CONNECTIONS_PER_IP_PER_MINUTE="1000")
    welcomed, failure = [], None
    try:
        alice = Client(server.address)
        alice.login("alice")
        for n in range(500):
            client = Client(server.address)
            client.hello()
            client.send({"type": "register", "username": f"user{n}", "password": GOOD_PASSWORD})
            reply = client.recv()
            client.close()
            if reply["type"] == "welcome":
                welcomed.append(f"user{n}")
            else:
                failure = reply
                break
        assert failure == {"type": "error", "code": "server_error", "message": "internal error"}
        # The server stays up. A message goes out only if it could be stored
        # (history promises nothing seen is lost): it is refused and its sender
        # told, or, if the log still had room, it is sent, and kept.
        alice.send({"type": "say", "text": "stored, or not sent", "id": "s"})
        presence = ("join", "leave")  # of the users registered above
        reply = alice.recv(skip=presence)
        if reply["type"] == "message":
            sent = reply["id"]
            assert alice.recv(skip=presence) == {"type": "ok", "re": "s", "message": sent}
        else:
            sent = None
            assert reply == {"type": "error", "code": "server_error",
                             "message": "internal error", "re": "s"}
        alice.send({"type": "ping", "id": "p"})
        assert alice.recv(skip=presence) == {"type": "pong", "re": "p"}
        again = Client(server.address)
        again.login("alice")  # logging in needs no free space
        assert server.terminate() == 0
    finally:
        server.kill()
    assert b"internal failure: database error" in server.log
    assert welcomed
    from authchat.store import Store
    from authchat.store.messages import MessageLog
    from helpers import server_config

    store = Store.from_config(server_config(home))
    assert store.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = {u.username for u in store.list_users()}
    assert set(welcomed) <= names  # every acknowledged registration is there
    assert len(names) == len(welcomed) + 1
    stored = [m.text for m in MessageLog(store).room_page()[0]]
    assert stored == (["stored, or not sent"] if sent is not None else [])


def test_serve_takes_config_after_the_subcommand_and_names_its_database(
        home: Path, tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[server]\nregistration = "closed"\n'
                      '[storage]\ndata_dir = "site-data"\n')
    server = ServerProcess(home, "--no-tls", "--config", str(config))
    try:
        assert b"registration closed" in server.log
        database = tmp_path / "site-data" / "authchat.db"
        version = max(m.version for m in known_migrations())
        assert f"INFO authchat.server: database {database}, schema version {version}\n" \
            in server.log.decode()
        assert server.terminate() == 0
    finally:
        server.kill()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_port_in_use_is_one_readable_line(run_cli: Runner, home: Path, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as taken:
        try:
            taken.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} here")
        taken.listen()
        port = taken.getsockname()[1]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # at WARNING, the start-up's INFO lines are left out and nothing else may be said
        result = run_cli("serve", "--no-tls", "--host", host, "--port", str(port),
                         env=cli_env(home, AUTHCHAT_LOGGING_LEVEL="WARNING"))
    assert_one_line_error(result, 1, f"cannot listen on {where}: Address already in use")


def test_a_password_change_over_the_protocol_is_not_shown_as_a_login(
        run_cli: Runner, home: Path) -> None:
    run_cli("users", "add", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    server = ServerProcess(home, "--no-tls")
    try:
        client = Client(server.address)
        client.login("alice")
        # Move the login's time back, so that any write of it by the change shows.
        conn = sqlite.connect(home / "authchat.db", busy_timeout_ms=5000)
        conn.execute("UPDATE users SET last_login_at = '2000-01-01T00:00:00Z'")
        conn.close()
        client.send({"type": "passwd", "old": GOOD_PASSWORD, "new": OTHER_PASSWORD, "id": 1})
        client.expect("ok", re=1)
        assert server.terminate() == 0
    finally:
        server.kill()
    shown = json.loads(run_cli("users", "show", "alice", "--json", check=True).stdout)
    assert shown["last_login_at"] == "2000-01-01T00:00:00Z"
    assert shown["updated_at"] >= shown["created_at"]
    assert "last_login_at: 2000-01-01T00:00:00Z\n" in run_cli("users", "show", "alice").stdout


def test_a_deeply_nested_frame_is_refused_and_the_server_lives_on(home: Path) -> None:
    # On Python 3.13 this frame once overflowed a connection thread's stack and
    # killed the process: json's decoder recursed before the depth was checked.
    server = ServerProcess(home, "--no-tls")
    try:
        client = Client(server.address)
        client.hello()
        client.send(b"[" * 8000 + b"\n")
        client.expect_error("bad_frame", message="frame nests deeper than 3 levels")
        client.send({"type": "ping", "id": "p"})
        client.expect("pong", re="p")
        assert server.proc.poll() is None
        assert server.terminate() == 0
    finally:
        server.kill()


def test_a_name_that_is_no_account_is_never_logged_as_typed(run_cli: Runner,
                                                             home: Path) -> None:
    run_cli("users", "add", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    server = ServerProcess(home, "--no-tls")
    typed_into_the_wrong_field = "my own secret words"
    try:
        for name in (typed_into_the_wrong_field, typed_into_the_wrong_field, "alice"):
            client = Client(server.address)
            client.hello()
            client.send({"type": "login", "username": name, "password": "a wrong password"})
            client.expect_error("bad_credentials")
            client.close()
        assert server.terminate() == 0
    finally:
        server.kill()
    log = server.log.decode()
    assert typed_into_the_wrong_field not in log
    assert "login failed from 127.0.0.1: bad_credentials (user alice)" in log
    unknown = re.findall(r"bad_credentials \(unknown user (#[0-9a-f]{8})\)", log)
    assert len(unknown) == 2 and unknown[0] == unknown[1]  # one name, one hash
