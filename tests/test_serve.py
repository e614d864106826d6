"""`authchat serve` as a real process: start-up, SIGTERM, shutdown."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from authchat.tls import CERT_FILENAME

from conftest import GOOD_PASSWORD, Runner
from helpers import Client, ServerProcess


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
