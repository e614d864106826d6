"""The terminal client against the real server: register, connect, trust, scripts."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from authchat.client import Chat, ClientError, ClientOptions, Notice, ServerError, \
    TrustError, describe_error, open_link
from authchat.errors import InvalidPassword
from authchat.protocol import (
    ErrorReply,
    Message,
    Ok,
    Passwd,
    Say,
    UnknownEvent,
    Who,
    WhoList,
    parse_event,
)
from authchat.tls import CERT_FILENAME, KnownServers

from conftest import GOOD_PASSWORD, cli_env
from helpers import CertificateAuthority, Client, ServerProcess, add_user, eventually, \
    logged_in, run_in_pty, start_server

OTHER_PASSWORD = "an entirely different phrase"


@pytest.fixture
def tls_server(servers: Any) -> Any:
    server = servers(tls__enabled=True, limits__registrations_per_ip_per_hour=100)
    add_user(server, "alice")
    add_user(server, "bob")
    return server


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """A client's environment: its own config directory, so known servers start empty."""
    return cli_env(tmp_path / "client-home", XDG_CONFIG_HOME=str(tmp_path / "xdg"))


def known_servers_file(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "authchat" / "known_servers"


def authchat(env: dict[str, str], *args: str, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authchat", *args], input=input, text=True,
                          capture_output=True, env=env, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def target(server: Any, *extra: str) -> list[str]:
    """--port and --fingerprint for a server: trusted the way a careful script would."""
    return ["--port", str(server.address[1]), "--fingerprint", server.fingerprint, *extra]


def script_client(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`authchat connect ARGS` in scripting mode, its stdin held open by the test."""
    return subprocess.Popen([sys.executable, "-m", "authchat", "connect", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# -- register ---------------------------------------------------------------------

def test_server_words_cannot_drive_the_terminal() -> None:
    frame = {"type": "error", "code": "kicked", "message": "bye\x1b]0;pwned\x07\x1b[2J"}
    reply = parse_event(frame)
    assert isinstance(reply, ErrorReply)
    for text in (describe_error(reply), str(ServerError(reply))):
        assert "\x1b" not in text and "\x07" not in text
        assert "bye" in text and "\\x1b" in text  # shown, written as an escape


def test_register_over_the_network(tls_server: Any, client_env: dict[str, str]) -> None:
    result = authchat(client_env, "register", "carol", *target(tls_server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\n")
    port = tls_server.address[1]
    assert (result.returncode, result.stdout) == (0, f"registered carol on 127.0.0.1:{port}\n")
    assert tls_server.store.authenticate("carol", GOOD_PASSWORD)


@pytest.mark.parametrize("name, password, fragment", [
    ("ALICE", GOOD_PASSWORD, "that username is taken"),
    ("carol", "too short", "Error: password must be at least 15 characters"),
    ("admin", GOOD_PASSWORD, "that username is not allowed"),
])
def test_register_errors_are_one_clear_line(tls_server: Any, client_env: dict[str, str],
                                            name: str, password: str, fragment: str) -> None:
    result = authchat(client_env, "register", name, *target(tls_server, "--password-stdin"),
                      input=password + "\n")
    one_line_error(result, fragment)


def test_register_when_registration_is_closed(servers: Any, client_env: dict[str, str]) -> None:
    server = servers(tls__enabled=True, server__registration="closed")
    result = authchat(client_env, "register", "carol", *target(server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\n")
    one_line_error(result, "the server does not accept new accounts")


def test_a_new_password_is_checked_with_the_servers_rules_before_it_is_sent(
        servers: Any, client_env: dict[str, str]) -> None:
    server = servers(tls__enabled=True, auth__min_password_length=40)
    result = authchat(client_env, "register", "carol", *target(server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\n")
    # The words of `users add`, with the length this server's hello gave: the
    # server's own refusal would read "that password is not allowed (…)".
    assert result.stderr == "Error: password must be at least 40 characters\n"
    assert result.returncode == 1


def test_register_asks_for_trust_then_a_password_until_it_meets_the_rules(
        tmp_path: Path, client_env: dict[str, str]) -> None:
    server = start_server(tmp_path / "server", tls__enabled=True)
    good, short = GOOD_PASSWORD.encode() + b"\r", b"too short\r"
    try:
        status, screen = run_in_pty(["register", "dave", "--port", str(server.address[1])],
                                    client_env, [
            (b"remember it? [y/N]: ", b"y\r"),
            (b"Password: ", short),  # refused here, before anything is sent...
            (b"Password: ", good), (b"confirmation: ", good)])  # ...and asked again
        assert status == 0, screen
        assert "Error: password must be at least 15 characters" in screen
        assert screen.index("remember it?") < screen.index("Password: ")
        assert "registered dave" in screen
        assert server.store.authenticate("dave", GOOD_PASSWORD)
    finally:
        server.shutdown()


def test_nothing_is_asked_before_the_server_answers_and_accepts_accounts(
        servers: Any, client_env: dict[str, str], tls_server: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as nobody:  # a port where no one answers
        closed_port = nobody.getsockname()[1]
    status, screen = run_in_pty(["connect", "alice", "--port", str(closed_port)], client_env,
                                [(b"Password: ", GOOD_PASSWORD.encode() + b"\r")])
    assert status == 1 and "cannot connect to 127.0.0.1:" in screen, screen
    assert "Password" not in screen
    invited = servers(tls__enabled=True, server__registration="invite")
    status, screen = run_in_pty(["register", "carol", *target(invited)], client_env,
                                [(b"Password: ", GOOD_PASSWORD.encode() + b"\r")])
    assert status == 1 and "only with an invite: pass --invite" in screen, screen
    assert "Password" not in screen


def test_trusting_slowly_does_not_cost_the_login(servers: Any, tmp_path: Path) -> None:
    """The server gives a login half a second here; the person at the trust
    question takes until the server has no connection of theirs left open."""
    server = servers(tls__enabled=True, limits__handshake_timeout_s=0.5)
    add_user(server, "alice")
    held_while_asking: list[int] = []

    def slow_person(where: str, seen: str) -> bool:
        assert eventually(lambda: server.connection_count() == 0, timeout=10)
        held_while_asking.append(server.connection_count())
        return True

    chat = Chat(ClientOptions(port=server.address[1], known_servers=tmp_path / "known"),
                "alice", GOOD_PASSWORD, lambda event: None, confirm=slow_person)
    try:
        assert chat.start().username == "alice"
    finally:
        chat.close()
    assert held_while_asking == [0]
    assert KnownServers(tmp_path / "known").get("127.0.0.1", server.address[1]) == \
        server.fingerprint


# -- trust ------------------------------------------------------------------------

def test_scripts_never_trust_silently(tls_server: Any, client_env: dict[str, str],
                                      tmp_path: Path) -> None:
    result = authchat(client_env, "connect", "alice", "--port", str(tls_server.address[1]),
                      "--password-stdin", input=GOOD_PASSWORD + "\n")
    one_line_error(result, f"SHA-256 fingerprint {tls_server.fingerprint}")
    assert "--fingerprint" in result.stderr
    assert not known_servers_file(tmp_path).exists()


def test_cafile_verifies_the_server(tls_server: Any, client_env: dict[str, str]) -> None:
    cafile = tls_server.config.data_dir / CERT_FILENAME
    result = authchat(client_env, "connect", "alice", "--port", str(tls_server.address[1]),
                      "--cafile", str(cafile), "--password-stdin",
                      input=GOOD_PASSWORD + "\nvia cafile\n")
    assert result.returncode == 0, result.stderr
    assert "<alice> via cafile" in result.stdout


def test_insecure_is_loud(tls_server: Any, client_env: dict[str, str]) -> None:
    result = authchat(client_env, "connect", "alice", "--port", str(tls_server.address[1]),
                      "--insecure", "--password-stdin", input=GOOD_PASSWORD + "\nhi\n")
    assert result.returncode == 0 and "WARNING: --insecure" in result.stderr


def test_trust_on_first_use_then_pinned_then_changed(tmp_path: Path,
                                                     client_env: dict[str, str]) -> None:
    server = start_server(tmp_path / "server", tls__enabled=True)
    try:
        add_user(server, "alice")
        port = server.address[1]
        password = GOOD_PASSWORD.encode() + b"\r"
        status, screen = run_in_pty(["register", "dave", "--port", str(port)], client_env, [
            (b"remember it? [y/N]: ", b"y\r"),
            (b"Password: ", password), (b"confirmation: ", password)])
        assert status == 0, screen
        assert server.fingerprint in screen and "registered dave" in screen
        # Trust is settled before the password is asked for (the login clock runs).
        assert screen.index("remember it?") < screen.index("Password: ")
        pinned = KnownServers(known_servers_file(tmp_path)).get("127.0.0.1", port)
        assert pinned == server.fingerprint
        # pinned: a script now connects without any trust flag
        result = authchat(client_env, "connect", "dave", "--port", str(port),
                          "--password-stdin", input=GOOD_PASSWORD + "\npinned\n")
        assert result.returncode == 0 and "<dave> pinned" in result.stdout, result.stderr
    finally:
        server.shutdown()
    # the same address now presents another certificate
    other = start_server(tmp_path / "impostor", tls__enabled=True, server__port=port)
    try:
        assert other.fingerprint != pinned
        result = authchat(client_env, "connect", "dave", "--port", str(port),
                          "--password-stdin", input=GOOD_PASSWORD + "\n")
        one_line_error(result, "HAS CHANGED")
        assert other.fingerprint in result.stderr and pinned in result.stderr
        status, screen = run_in_pty(["connect", "dave", "--port", str(port)], client_env, [
            (b"Password: ", GOOD_PASSWORD.encode() + b"\r")])
        assert status != 0 and "HAS CHANGED" in screen and "[y/N]" not in screen
        assert "Password" not in screen  # refused before a password was asked for
    finally:
        other.shutdown()


def test_refusing_to_trust(tls_server: Any, client_env: dict[str, str], tmp_path: Path) -> None:
    status, screen = run_in_pty(["connect", "alice", "--port", str(tls_server.address[1])],
                                client_env, [(b"remember it? [y/N]: ", b"n\r"),
                                             (b"Password: ", GOOD_PASSWORD.encode() + b"\r")])
    assert status == 1 and "not trusting" in screen
    assert "Password" not in screen  # no password is asked for a server not trusted
    assert not known_servers_file(tmp_path).exists()


class Asked:
    """A confirm callback that records being asked, and says no."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def __call__(self, where: str, seen: str) -> bool:
        self.asked.append((where, seen))
        return False


@pytest.fixture
def authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CertificateAuthority:
    """A CA of this test's own, which this process trusts as it does the system's."""
    ca = CertificateAuthority(tmp_path / "ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cafile))  # OpenSSL's system CA file
    return ca


def ca_signed_server(home: Path, cert: tuple[Path, Path], port: int = 0) -> Any:
    return start_server(home, tls__enabled=True, tls__cert=str(cert[0]), tls__key=str(cert[1]),
                        server__port=port)


# Certificates that fail verification for a reason of their own: (names on the
# certificate, the host connected to, what the refusal says).
REFUSED = {
    "another name": (("chat.example.org",), "localhost", "issued for another name"),
    "another address": (("chat.example.org",), "127.0.0.1", "issued for another name"),
    "expired": (("localhost", "127.0.0.1"), "127.0.0.1", "has expired"),
    "unknown authority": (("localhost", "127.0.0.1"), "127.0.0.1", "does not verify"),
}


@pytest.mark.parametrize("via", ["system CAs", "cafile"])
@pytest.mark.parametrize("case", REFUSED)
def test_only_a_self_signed_certificate_is_offered_for_trust(
        authority: CertificateAuthority, tmp_path: Path, via: str, case: str) -> None:
    """Another name, an expired certificate, an authority nobody trusts: refused
    with the reason, never turned into a question."""
    names, host, fragment = REFUSED[case]
    issuer = CertificateAuthority(tmp_path / "other-ca") if case == "unknown authority" \
        else authority
    server = ca_signed_server(tmp_path / "server",
                              issuer.issue("leaf", *names, expired=case == "expired"))
    known = tmp_path / "known_servers"
    options = ClientOptions(host=host, port=server.address[1], known_servers=known,
                            cafile=str(authority.cafile) if via == "cafile" else None)
    asked = Asked()
    try:
        with pytest.raises(TrustError, match=fragment) as refused:
            open_link(options, asked)
    finally:
        server.shutdown()
    assert asked.asked == [] and not known.exists()
    assert "Connection refused" in str(refused.value)


@pytest.mark.parametrize("case", ["another name", "another address", "expired"])
def test_a_self_signed_certificate_for_another_name_or_expired_is_refused_too(
        tmp_path: Path, case: str) -> None:
    """OpenSSL says only "self-signed" of these: the name and the dates are the
    client's to check before it asks anything."""
    names, host, fragment = REFUSED[case]
    if case != "expired":  # it says which names to use, and the way round them
        fragment = "self-signed and was issued for chat.example.org.*--fingerprint"
    server = ca_signed_server(tmp_path / "server", CertificateAuthority(tmp_path / "ca").issue(
        "leaf", *names, expired=case == "expired", self_signed=True))
    known = tmp_path / "known_servers"
    asked = Asked()
    try:
        with pytest.raises(TrustError, match=fragment):
            open_link(ClientOptions(host=host, port=server.address[1], known_servers=known),
                      asked)
        # The same server with a good certificate of its own is asked about.
        good = ca_signed_server(tmp_path / "good", CertificateAuthority(tmp_path / "ca2").issue(
            "leaf", "localhost", "127.0.0.1", self_signed=True))
        good_port = good.address[1]
        with pytest.raises(TrustError, match="not trusting"):
            open_link(ClientOptions(host="127.0.0.1", port=good_port, known_servers=known),
                      asked)
        good.shutdown()
    finally:
        server.shutdown()
    assert [where for where, _ in asked.asked] == [f"127.0.0.1:{good_port}"]


def test_the_certificate_a_cafile_vouched_for_is_accepted_later_without_it(
        tmp_path: Path) -> None:
    """The server's own self-signed certificate, once given as --cafile, is
    the certificate an authority vouched for there: no question, no alarm."""
    home = tmp_path / "server"
    server = start_server(home, tls__enabled=True)
    known = tmp_path / "known_servers"
    port = server.address[1]
    try:
        first = open_link(ClientOptions(port=port, cafile=str(home / CERT_FILENAME),
                                        known_servers=known), Asked())
        first.close()
        asked = Asked()
        again = open_link(ClientOptions(port=port, known_servers=known), asked)
        again.close()
    finally:
        server.shutdown()
    assert asked.asked == [] and again.fingerprint == first.fingerprint == server.fingerprint


@pytest.mark.parametrize("later", ["system CAs", "cafile"])
def test_a_server_an_authority_vouched_for_is_remembered_and_self_signed_there_is_a_change(
        authority: CertificateAuthority, tmp_path: Path, later: str) -> None:
    known = tmp_path / "known_servers"
    server = ca_signed_server(tmp_path / "server", authority.issue("leaf", "127.0.0.1"))
    port = server.address[1]
    try:
        first = ClientOptions(port=port, cafile=str(authority.cafile), known_servers=known)
        link = open_link(first, Asked())
        vouched_for = link.fingerprint
        link.close()
    finally:
        server.shutdown()
    assert known.read_text() == f"127.0.0.1:{port} ca {vouched_for}\n"
    assert KnownServers(known).get("127.0.0.1", port) is None  # noted, not pinned
    # The same address, now with a self-signed certificate (authchat's own).
    impostor = start_server(tmp_path / "impostor", tls__enabled=True, server__port=port)
    asked = Asked()
    try:
        options = ClientOptions(port=port, known_servers=known,
                                cafile=str(authority.cafile) if later == "cafile" else None)
        with pytest.raises(TrustError, match="HAS CHANGED") as refused:
            open_link(options, asked)
    finally:
        impostor.shutdown()
    assert asked.asked == []
    assert impostor.fingerprint in str(refused.value) and "self-signed" in str(refused.value)
    assert known.read_text() == f"127.0.0.1:{port} ca {vouched_for}\n"


def test_register_and_connect_follow_the_same_trust_rules(
        authority: CertificateAuthority, tmp_path: Path, client_env: dict[str, str]) -> None:
    env = {**client_env, "SSL_CERT_FILE": str(authority.cafile)}
    password = GOOD_PASSWORD.encode() + b"\r"
    server = ca_signed_server(tmp_path / "server", authority.issue("leaf", "127.0.0.1"))
    port = server.address[1]
    try:
        status, screen = run_in_pty(["register", "dave", "--port", str(port)], env, [
            (b"Password: ", password), (b"confirmation: ", password)])
        assert status == 0 and "registered dave" in screen, screen
    finally:
        server.shutdown()
    impostor = start_server(tmp_path / "impostor", tls__enabled=True, server__port=port)
    try:
        # A trust question is answered, should one come, so that the test fails, not hangs.
        status, screen = run_in_pty(["connect", "dave", "--port", str(port)], env, [
            (b"[y/N]: ", b"n\r"), (b"Password: ", password)])
        assert status != 0 and "HAS CHANGED" in screen and "[y/N]" not in screen, screen
        assert "Password" not in screen, screen
    finally:
        impostor.shutdown()
    expired = ca_signed_server(tmp_path / "expired",
                               authority.issue("old", "localhost", expired=True), port)
    try:
        status, screen = run_in_pty(["register", "erin", "--port", str(port),
                                     "--host", "localhost"], env, [
            (b"[y/N]: ", b"n\r"), (b"Password: ", password), (b"confirmation: ", password)])
        assert status != 0 and "has expired" in screen and "[y/N]" not in screen, screen
        assert "Password" not in screen, screen
    finally:
        expired.shutdown()


def test_no_password_in_plaintext_to_a_remote_host(client_env: dict[str, str]) -> None:
    # Refused before any connection is attempted, so no traffic leaves the machine.
    result = authchat(client_env, "connect", "alice", "--no-tls", "--host", "chat.example.invalid",
                      "--password-stdin", input=GOOD_PASSWORD + "\n")
    one_line_error(result, "refusing to send a password unencrypted to chat.example.invalid")


# -- connect ------------------------------------------------------------------------

def test_wrong_password(tls_server: Any, client_env: dict[str, str]) -> None:
    result = authchat(client_env, "connect", "alice", *target(tls_server, "--password-stdin"),
                      input=OTHER_PASSWORD + "\nhello\n")
    one_line_error(result, "wrong username or password")


def test_connect_register_creates_the_account_first(tls_server: Any,
                                                   client_env: dict[str, str]) -> None:
    for _ in range(2):  # the second time the account exists and it just logs in
        result = authchat(client_env, "connect", "erin", "--register",
                          *target(tls_server, "--password-stdin"),
                          input=GOOD_PASSWORD + "\nhi from erin\n")
        assert result.returncode == 0, result.stderr
        assert "<erin> hi from erin" in result.stdout


def test_scripting_round_trip_between_two_clients(tls_server: Any,
                                                  client_env: dict[str, str]) -> None:
    bob = script_client(client_env, "bob", *target(tls_server, "--password-stdin"))
    assert bob.stdin is not None and bob.stdout is not None
    bob.stdin.write(GOOD_PASSWORD + "\n/who\n")
    bob.stdin.flush()
    assert "online (1): bob" in bob.stdout.readline()  # bob is in the room
    result = authchat(client_env, "connect", "alice", *target(tls_server, "--password-stdin"),
                      input=GOOD_PASSWORD + "hello bob\n/dm bob just you\n".join(["\n", ""]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("<alice> hello bob")
    assert lines[1].endswith("[alice -> bob] just you")
    out, err = bob.communicate("thanks alice\n", timeout=30)  # then end of input
    assert bob.returncode == 0, err
    seen = out.splitlines()
    assert seen[0] == "--> alice joined"
    assert seen[1].endswith("<alice> hello bob") and seen[2].endswith("[alice -> bob] just you")
    assert seen[3] == "<-- alice left (quit)"
    assert seen[4].endswith("<bob> thanks alice")


def test_json_prints_raw_frames(tls_server: Any, client_env: dict[str, str]) -> None:
    result = authchat(client_env, "connect", "alice", "--json",
                      *target(tls_server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\nraw\n/who\n/dm nobody hi\n")
    assert result.returncode == 1  # the DM to nobody failed
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert frames[0]["type"] == "message" and frames[0]["text"] == "raw"
    assert frames[1]["type"] == "who"
    assert frames[2]["type"] == "error" and frames[2]["code"] == "no_such_user"


def test_many_lines_are_sent_in_order_despite_the_rate_limit(
        tls_server: Any, client_env: dict[str, str]) -> None:
    lines = [f"line {n}" for n in range(14)]  # past the burst of 10
    result = authchat(client_env, "connect", "alice", *target(tls_server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\n" + "\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert [line.split("> ", 1)[1] for line in result.stdout.splitlines()] == lines


def test_kicked_ends_a_script_with_the_reason(servers: Any, client_env: dict[str, str]) -> None:
    server = servers(tls__enabled=True)
    add_user(server, "alice")
    add_user(server, "root", role="admin")
    alice = script_client(client_env, "alice", *target(server, "--password-stdin"))
    assert alice.stdin is not None and alice.stdout is not None
    alice.stdin.write(GOOD_PASSWORD + "\n/who\n")
    alice.stdin.flush()
    alice.stdout.readline()
    admin = Client(server.address, cafile=server.config.data_dir / CERT_FILENAME)
    admin.login("root")
    admin.send({"type": "kick", "username": "alice", "reason": "testing"})
    admin.expect("ok")
    alice.wait(timeout=30)  # it ends by itself, its input still open
    err = alice.stderr.read() if alice.stderr else ""
    out = alice.stdout.read()
    alice.stdin.close()
    assert alice.returncode == 1 and "removed from the server (kicked by root: testing)" in err
    assert err.count("kicked by root: testing") == 1, err  # said once, where errors go
    assert "kicked by root" not in out, out


def test_json_mode_ends_with_the_servers_own_frame(servers: Any,
                                                   client_env: dict[str, str]) -> None:
    server = servers(tls__enabled=True)
    add_user(server, "alice")
    add_user(server, "root", role="admin")
    alice = script_client(client_env, "alice", "--json", *target(server, "--password-stdin"))
    assert alice.stdin is not None and alice.stdout is not None
    alice.stdin.write(GOOD_PASSWORD + "\n/who\n")
    alice.stdin.flush()
    assert json.loads(alice.stdout.readline())["type"] == "who"
    admin = Client(server.address, cafile=server.config.data_dir / CERT_FILENAME)
    admin.login("root")
    admin.send({"type": "kick", "username": "alice", "reason": "testing"})
    admin.expect("ok")
    alice.wait(timeout=30)
    frames = [json.loads(line) for line in alice.stdout.read().splitlines()]
    err = alice.stderr.read() if alice.stderr else ""
    alice.stdin.close()
    assert [f for f in frames if f.get("type") == "error"] == [
        {"type": "error", "code": "kicked", "message": "kicked by root: testing"}]
    assert alice.returncode == 1 and err.count("kicked by root: testing") == 1, err


# -- reconnecting ---------------------------------------------------------------------

def test_reconnects_after_a_server_restart(tmp_path: Path, run_cli: Any, home: Path) -> None:
    run_cli("users", "add", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    server = ServerProcess(home, "--no-tls")
    port = server.address[1]
    events: list[Any] = []
    changed = threading.Condition()

    def on_event(event: Any) -> None:
        with changed:
            events.append(event)
            changed.notify_all()

    def wait_for(predicate: Any, timeout: float = 20) -> None:
        with changed:
            assert changed.wait_for(lambda: any(predicate(e) for e in events), timeout), events

    options = ClientOptions(port=port, tls=False, known_servers=tmp_path / "known")
    chat = Chat(options, "alice", GOOD_PASSWORD, on_event)
    try:
        chat.start()
        assert server.terminate() == 0
        wait_for(lambda e: isinstance(e, ErrorReply) and e.code == "server_shutdown")
        wait_for(lambda e: isinstance(e, Notice) and e.kind == "reconnecting")
        server = ServerProcess(home, "--no-tls", "--port", str(port))
        wait_for(lambda e: isinstance(e, Notice) and e.kind == "back")
        assert isinstance(chat.request(Say(None, "back again")), Ok)
        wait_for(lambda e: isinstance(e, Message) and e.text == "back again")
        assert not chat.ended.is_set()
    finally:
        chat.close()
        server.kill()


def test_after_a_reconnect_only_what_was_not_shown_is_shown(tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home, history__on_join=3)
    add_user(server, "alice")
    add_user(server, "bob")
    port = server.address[1]

    def bob_says(on: Any, *texts: str) -> None:
        bob = logged_in(on, "bob")
        for text in texts:
            bob.send({"type": "say", "text": text})
            while not (frame := bob.recv()).get("text") == text or frame.get("history"):
                pass  # what bob is given at login
        bob.close()

    bob_says(server, "one", "two")
    events: list[Any] = []
    arrived = threading.Condition()

    def on_event(event: Any) -> None:
        with arrived:
            events.append(event)
            arrived.notify_all()

    def wait_for(wanted: Any) -> None:
        with arrived:
            assert arrived.wait_for(lambda: any(wanted(e) for e in events), 20), events

    def said(text: str) -> Any:
        return lambda e: isinstance(e, Message) and e.text == text

    chat = Chat(ClientOptions(port=port, tls=False, known_servers=tmp_path / "known"),
                "alice", GOOD_PASSWORD, on_event)
    try:
        chat.start()
        wait_for(said("two"))
        server.shutdown()
        # A restart with nothing said meanwhile: the server gives "one" and
        # "two" again, and they are not shown again.
        server = start_server(home, history__on_join=3, server__port=port)
        wait_for(is_notice("back"))
        bob_says(server, "three")
        wait_for(said("three"))
        # More is said while alice is away than the server gives back (3),
        # on a server started while `port` is still taken, so not on it.
        elsewhere = start_server(home, history__on_join=3)
        server.shutdown()
        bob_says(elsewhere, "four", "five", "six", "seven")
        elsewhere.shutdown()
        server = start_server(home, history__on_join=3, server__port=port)
        wait_for(said("seven"))
    finally:
        chat.close()
        server.shutdown()
    texts = [e.text for e in events if isinstance(e, Message)]
    assert texts == ["one", "two", "three", "five", "six", "seven"]
    missed = [e for e in events if isinstance(e, Notice) and e.kind == "missed"]
    assert len(missed) == 1 and "only the last messages" in missed[0].text
    # The notice comes before what the server gave back, after the reconnect.
    assert events.index(missed[0]) < next(n for n, e in enumerate(events) if said("five")(e))


def test_a_drop_ends_a_script_with_status_3(run_cli: Any, home: Path,
                                           client_env: dict[str, str]) -> None:
    run_cli("users", "add", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    server = ServerProcess(home, "--no-tls")
    try:
        alice = script_client(client_env, "alice", "--no-tls", "--port",
                              str(server.address[1]), "--password-stdin")
        assert alice.stdin is not None and alice.stdout is not None
        alice.stdin.write(GOOD_PASSWORD + "\n/who\n")
        alice.stdin.flush()
        alice.stdout.readline()
        assert server.terminate() == 0
        alice.wait(timeout=30)  # no reconnecting in a script, even with input still open
        err = alice.stderr.read() if alice.stderr else ""
        alice.stdin.close()
        assert alice.returncode == 3, err
        assert "connection lost" in err
    finally:
        server.kill()


def test_a_reconnect_after_a_password_change_uses_the_new_password(tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home)
    add_user(server, "alice")
    port = server.address[1]
    chat, events = alice_chat(tmp_path, port)
    try:
        chat.start()
        new = "a different and longer passphrase"
        refused = chat.change_password("not the old one", new)
        assert isinstance(refused, ErrorReply) and refused.code == "bad_credentials"
        assert isinstance(chat.change_password(GOOD_PASSWORD, new), Ok)
        server.shutdown()
        server = start_server(home, server__port=port)
        next_event(events, is_notice("back"))  # logged in again, with the new password
        assert isinstance(chat.request(Who(None)), WhoList)
    finally:
        chat.close()
        server.shutdown()


def alice_chat(tmp_path: Path, port: int, **options: Any) -> tuple[Chat, queue.SimpleQueue[Any]]:
    """alice's Chat, not yet started (plain TCP unless `options` say otherwise),
    and the queue its events arrive in."""
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    settings = ClientOptions(port=port, known_servers=tmp_path / "known",
                             **{"tls": False, **options})
    return Chat(settings, "alice", GOOD_PASSWORD, events.put), events


def next_event(events: queue.SimpleQueue[Any], wanted: Any, timeout: float = 20) -> Any:
    """The first event `wanted(event)` accepts; fails on an ended session before it."""
    while True:
        event = events.get(timeout=timeout)
        if wanted(event):
            return event
        assert not (isinstance(event, Notice) and event.kind == "ended"), event


def is_notice(kind: str) -> Any:
    return lambda event: isinstance(event, Notice) and event.kind == kind


class ScriptedServer:
    """A listening socket on loopback that plays a server by hand, frame by frame."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.peer: socket.socket | None = None
        self.reader: Any = None

    def accept(self) -> None:
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(20)
        self.reader = self.peer.makefile("rb")

    def send(self, frame: dict[str, Any]) -> None:
        assert self.peer is not None
        self.peer.sendall(json.dumps(frame).encode() + b"\n")

    def recv(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return json.loads(line) if line else None

    def greet_and_welcome(self) -> None:
        self.send({"type": "hello", "protocol": 1, "server": "scripted", "registration": "open",
                   "tls": False})
        assert (self.recv() or {}).get("type") == "login"
        self.send({"type": "welcome", "username": "alice", "role": "user", "users": ["alice"]})

    def let_in(self) -> None:
        self.accept()
        self.greet_and_welcome()

    def close(self) -> None:
        for sock in (self.peer, self.listener):
            if sock is not None:
                sock.close()


def start_against(scripted: ScriptedServer, chat: Chat) -> None:
    """Start `chat` while the scripted server lets it in."""
    starting = threading.Thread(target=chat.start)
    starting.start()
    scripted.let_in()
    starting.join(10)


def test_a_silent_link_is_pinged_then_counted_as_lost(tmp_path: Path) -> None:
    server = ScriptedServer()
    chat, events = alice_chat(tmp_path, server.port, silence_s=0.3)
    try:
        server_side = threading.Thread(target=server.let_in, daemon=True)
        server_side.start()
        chat.start()
        server_side.join(10)
        assert server.recv() == {"type": "ping"}  # silence: the client asks
        next_event(events, is_notice("lost"))     # no answer: the link is dead
        next_event(events, is_notice("reconnecting"))
    finally:
        chat.close()
        server.close()


def test_closing_while_a_reconnect_logs_in_leaves_no_session(tmp_path: Path) -> None:
    home = tmp_path / "server"
    real = start_server(home)
    add_user(real, "alice")
    port = real.address[1]
    chat, events = alice_chat(tmp_path, port)
    chat.start()
    real.shutdown()
    scripted = ScriptedServer(port)  # the reconnect will reach this one
    closer = threading.Thread(target=chat.close)
    try:
        next_event(events, is_notice("reconnecting"))
        scripted.accept()  # the reconnect is in progress, waiting for a hello
        closer.start()
        assert eventually(lambda: chat._closing)  # close() found no link to close
        scripted.greet_and_welcome()  # ...and then the login succeeds after all
        assert scripted.recv() in (None, {"type": "quit"})  # which the client ends
        closer.join(10)
        assert chat.ended.is_set() and chat._link is None
    finally:
        scripted.close()


def test_a_changed_certificate_at_reconnect_ends_the_session_with_why(tmp_path: Path) -> None:
    first = start_server(tmp_path / "first", tls__enabled=True)
    add_user(first, "alice")
    port = first.address[1]
    chat, events = alice_chat(tmp_path, port, tls=True, fingerprint=first.fingerprint)
    chat.start()
    first.shutdown()
    impostor = start_server(tmp_path / "impostor", tls__enabled=True, server__port=port)
    add_user(impostor, "alice")
    try:
        ended = events.get(timeout=20)
        while not (isinstance(ended, Notice) and ended.kind == "ended"):
            ended = events.get(timeout=20)
        assert "HAS CHANGED" in ended.text and impostor.fingerprint in ended.text
    finally:
        chat.close()
        impostor.shutdown()


def test_a_host_that_is_not_a_name_and_an_unreadable_known_servers_file(
        tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="is not a host name or address"):
        open_link(ClientOptions(host="chat..example.org", known_servers=tmp_path / "k"))
    broken = tmp_path / "known_servers"
    broken.write_bytes(b"\xff\xfe not text\n")
    with pytest.raises(ClientError, match="cannot read the known-servers file"):
        open_link(ClientOptions(port=1, known_servers=broken))


def test_scripts_see_history_at_login_and_page_further(servers: Any,
                                                       client_env: dict[str, str]) -> None:
    server = servers(tls__enabled=True, history__on_join=2)
    add_user(server, "alice")
    add_user(server, "bob")
    said = authchat(client_env, "connect", "alice", *target(server, "--password-stdin"),
                    input=GOOD_PASSWORD + "\n" + "".join(f"m{n}\n" for n in range(5)))
    assert said.returncode == 0, said.stderr
    result = authchat(client_env, "connect", "bob", *target(server, "--password-stdin"),
                      input=GOOD_PASSWORD + "\n/history\n/history\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    texts = [line.split("<alice> ")[1] if "<alice> " in line else line for line in lines]
    assert texts == ["m3", "m4",                      # shown at login
                     "m0", "m1", "m2", "*** that is the first message",
                     "*** no older messages"]


def test_a_new_password_that_breaks_the_rules_is_not_sent(servers: Any, tmp_path: Path) -> None:
    server = servers(auth__min_password_length=20)
    add_user(server, "alice")
    chat, _ = alice_chat(tmp_path, server.address[1])
    try:
        chat.start()
        with pytest.raises(InvalidPassword, match="at least 20 characters"):
            chat.change_password(GOOD_PASSWORD, "sixteen chars ok")
        assert not any(e.action == "user.passwd" for e in server.store.audit_entries(50))
        assert server.store.authenticate("alice", GOOD_PASSWORD)
    finally:
        chat.close()


def test_a_reply_of_a_type_this_client_does_not_know_still_answers_its_request(
        tmp_path: Path) -> None:
    scripted = ScriptedServer()
    chat, _ = alice_chat(tmp_path, scripted.port)
    try:
        start_against(scripted, chat)
        answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        asking = threading.Thread(target=lambda: answers.put(chat.request(Who(None))))
        asking.start()
        request = scripted.recv() or {}
        scripted.send({"type": "who_v2", "people": ["alice"], "re": request.get("id")})
        asking.join(10)
        reply = answers.get(timeout=10)
        assert isinstance(reply, UnknownEvent) and reply.kind == "who_v2"
    finally:
        chat.close()
        scripted.close()


def test_a_refusal_that_comes_after_its_request_gave_up_does_not_end_the_session(
        tmp_path: Path) -> None:
    scripted = ScriptedServer()
    chat, events = alice_chat(tmp_path, scripted.port)
    try:
        start_against(scripted, chat)
        with pytest.raises(ClientError, match="did not answer in time"):
            chat.request(Passwd(None, "wrong", OTHER_PASSWORD), timeout=0.2)
        request = scripted.recv() or {}
        # The answer to that request comes late: a wrong old password.
        scripted.send({"type": "error", "code": "bad_credentials",
                       "message": "wrong password", "re": request.get("id")})
        scripted.send({"type": "message", "id": 7, "from": "bob", "text": "still here",
                       "ts": "2026-12-04T10:00:00.000Z"})
        next_event(events, lambda e: isinstance(e, Message) and e.text == "still here")
        assert not chat.ended.is_set()
    finally:
        chat.close()
        scripted.close()
