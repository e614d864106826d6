"""TLS on by default: real handshakes, the self-signed certificate, refusals."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authchat.errors import ConfigError
from authchat.tls import CERT_FILENAME, KEY_FILENAME, KnownServer, KnownServers, fingerprint

from conftest import GOOD_PASSWORD
from helpers import CertificateAuthority, Client, add_user, start_server


@pytest.fixture
def tls_server(servers: Any) -> Any:
    return servers(tls__enabled=True, limits__max_connections_per_ip=64,
                   limits__max_unauthenticated=64, limits__max_unauthenticated_per_ip=64,
                   limits__message_burst=100)


def cert_of(server: Any) -> Path:
    return server.config.data_dir / CERT_FILENAME


def test_tls_login_and_chat(tls_server: Any) -> None:
    add_user(tls_server, "alice")
    add_user(tls_server, "bob")
    alice = Client(tls_server.address, cafile=cert_of(tls_server))
    assert alice.hello()["tls"] is True
    alice.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    alice.expect("welcome")
    bob = Client(tls_server.address, cafile=cert_of(tls_server))
    bob.login("bob")
    bob.send({"type": "say", "text": "over TLS"})
    alice.expect("message", text="over TLS")
    assert bob.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_self_signed_certificate_is_private_and_reused(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    with caplog.at_level(logging.INFO, logger="authchat.tls"):
        first = start_server(home, tls__enabled=True)
    fp = first.fingerprint
    first.shutdown()
    # the log names the file a client can be given as --cafile
    assert f"generated a self-signed TLS certificate {home / CERT_FILENAME} " \
        f"(key {home / KEY_FILENAME})" in caplog.text
    assert stat.S_IMODE((home / KEY_FILENAME).stat().st_mode) == 0o600
    assert fp == fingerprint((home / CERT_FILENAME).read_bytes())
    second = start_server(home, tls__enabled=True)
    assert second.fingerprint == fp
    # what a client sees is that same certificate
    client = Client(second.address, cafile=home / CERT_FILENAME)
    assert fingerprint(client.sock.getpeercert(binary_form=True)) == fp
    second.shutdown()


def test_trusting_the_self_signed_certificate_vouches_for_that_server_only(
        tmp_path: Path) -> None:
    """Whoever adds the generated certificate to a trust store (as --cafile
    does) trusts this server, not any name its key could sign for."""
    home = tmp_path / "home"
    start_server(home, tls__enabled=True).shutdown()  # generates the pair
    generated = home / CERT_FILENAME
    server_key = CertificateAuthority.from_pair(tmp_path / "forged", generated,
                                                home / KEY_FILENAME)
    cert, key = server_key.issue("bank", "bank.example")
    impostor = start_server(tmp_path / "impostor", tls__enabled=True, tls__cert=str(cert),
                            tls__key=str(key))
    trusting = ssl.create_default_context(cafile=str(generated))
    try:
        with socket.create_connection(impostor.address, timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                trusting.wrap_socket(raw, server_hostname="bank.example")
    finally:
        impostor.shutdown()
    # ...and still vouches for the server itself, under this Python's defaults.
    server = start_server(home, tls__enabled=True)
    try:
        with socket.create_connection(server.address, timeout=5) as raw:
            trusting.wrap_socket(raw, server_hostname="localhost").close()
    finally:
        server.shutdown()


def test_the_known_servers_file_holds_pins_and_servers_an_authority_vouched_for(
        tmp_path: Path) -> None:
    fp, other = fingerprint(b"one"), fingerprint(b"two")
    path = tmp_path / "known_servers"
    path.write_text(f"# a comment\n\nchat.example:5555 {fp}\n[::1]:5555 ca {other}\n"
                    f"chat.example:5555 ca {other}\nchat.example:6666 four fields here\n")
    known = KnownServers(path)
    assert known.lookup("chat.example", 5555) == KnownServer(pin=fp)  # the first line counts
    assert known.get("chat.example", 5555) == fp  # a line as older versions wrote it
    assert known.lookup("::1", 5555) == KnownServer(vouched=True, vouched_fingerprint=other)
    assert known.get("::1", 5555) is None  # noted, not pinned
    assert known.lookup("chat.example", 6666) is None
    known.remember_vouched("new.example", 1, other.replace(":", "").lower())
    known.remember("::1", 7, fp)
    assert path.read_text().endswith(f"new.example:1 ca {other}\n[::1]:7 {fp}\n")


def test_a_pin_added_to_a_file_edited_by_hand_keeps_both_lines(tmp_path: Path) -> None:
    fp, other = fingerprint(b"one"), fingerprint(b"two")
    path = tmp_path / "known_servers"
    path.write_text(f"a.example:5555 {fp}")  # saved by an editor without a last newline
    known = KnownServers(path)
    known.remember("b.example", 5555, other)
    assert known.get("a.example", 5555) == fp
    assert known.get("b.example", 5555) == other


def test_shared_key_file_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", tls__enabled=True)
    server.shutdown()
    key = tmp_path / "home" / KEY_FILENAME
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="readable by other users"):
        start_server(tmp_path / "home", tls__enabled=True)


def test_plaintext_on_a_public_address_needs_allow_plaintext(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_plaintext"):
        start_server(tmp_path / "home", server__host="0.0.0.0")
    # Any loopback address crosses no network, so plaintext there needs no opt-in.
    server = start_server(tmp_path / "home", server__host="127.0.0.2")
    try:
        assert server.address[0] == "127.0.0.2"
    finally:
        server.shutdown()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(tls_server: Any, version: ssl.TLSVersion) -> None:
    context = ssl.create_default_context(cafile=str(cert_of(tls_server)))
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = version
    with socket.create_connection(tls_server.address, timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw, server_hostname="localhost")


def test_cbc_cipher_is_refused(tls_server: Any) -> None:
    context = ssl.create_default_context(cafile=str(cert_of(tls_server)))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")
    with socket.create_connection(tls_server.address, timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw, server_hostname="localhost")


def test_silent_and_garbage_clients_cost_only_their_own_connection(tls_server: Any) -> None:
    add_user(tls_server, "alice")
    silent = [socket.create_connection(tls_server.address, timeout=5) for _ in range(20)]
    garbage = socket.create_connection(tls_server.address, timeout=5)
    garbage.sendall(b'{"type":"login","username":"x","password":"y"}\n' * 10)
    started = time.monotonic()
    alice = Client(tls_server.address, cafile=cert_of(tls_server))
    alice.login("alice")
    # Had the accept loop waited on those handshakes, this login would have
    # waited out their 5 s handshake deadline.
    assert time.monotonic() - started < 4
    garbage.settimeout(5)
    while garbage.recv(4096):  # the server hangs up on it
        pass
    alice.send({"type": "ping"})
    alice.expect("pong")
    for sock in silent:
        sock.close()


def test_an_evicted_tls_connection_is_told_by_its_own_thread(servers: Any) -> None:
    """The accept loop only wakes the connection it evicts; its own thread
    writes the error (SECURITY.md C4), so it arrives whole through TLS."""
    server = servers(tls__enabled=True, limits__max_unauthenticated=2)
    add_user(server, "alice")
    idle = [Client(server.address, cafile=cert_of(server), source_ip="127.0.0.2")
            for _ in range(2)]
    for client in idle:
        client.hello()
    alice = Client(server.address, cafile=cert_of(server), source_ip="127.0.0.3")
    alice.login("alice")
    idle[0].expect_error("too_many_connections")
    idle[0].expect_closed()
    idle[1].send({"type": "ping", "id": 1})
    idle[1].expect("pong", re=1)


def test_tls_fan_out_loses_nothing(tls_server: Any) -> None:
    """Reader and writer threads share each TLS connection (SECURITY.md C4)."""
    names = [f"user{i}" for i in range(16)]
    for name in names:
        add_user(tls_server, name)
    clients = [Client(tls_server.address, cafile=cert_of(tls_server)) for _ in names]
    for name, client in zip(names, clients):
        client.login(name)
    per_sender, senders = 25, 8
    expected = per_sender * senders
    counts: dict[str, int] = {}

    burst = b"".join(b'{"type":"say","text":"hello over tls"}\n' for _ in range(per_sender))

    def read(name: str, client: Client, sends: bool) -> None:
        # Each test client's SSLSocket is used by this thread alone (C4 holds
        # for the test's side too): a sender sends its burst, then reads.
        if sends:
            client.send(burst)
        ids = []
        while len(ids) < expected:
            ids.append(client.recv(skip=("join", "leave"))["id"])
        assert ids == sorted(ids)
        counts[name] = len(ids)

    readers = [threading.Thread(target=read, args=(name, client, i < senders))
               for i, (name, client) in enumerate(zip(names, clients))]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(60)
    assert counts == {name: expected for name in names}
