"""The real server on an ephemeral loopback port, driven over real sockets."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authchat import __version__
from authchat.errors import BadCredentials, ShuttingDown

from conftest import GOOD_PASSWORD, Runner
from helpers import Client, add_user, add_users, eventually, logged_in, login_reply, \
    start_server

OTHER_PASSWORD = "an entirely different phrase"


# -- hello and the handshake ----------------------------------------------------

def test_hello(servers: Any) -> None:
    server = servers()
    hello = Client(server.address).recv()
    assert hello == {"type": "hello", "protocol": 1, "server": f"authchat/{__version__}",
                     "registration": "open", "tls": False,
                     "min_password_length": 15}


def test_register_then_login(servers: Any) -> None:
    server = servers()
    client = Client(server.address)
    client.hello()
    client.send({"type": "register", "username": "Alice", "password": GOOD_PASSWORD, "id": 1})
    assert client.recv() == {"type": "welcome", "username": "Alice", "role": "user",
                             "users": ["Alice"], "re": 1}
    client.close()
    again = Client(server.address)
    again.hello()
    again.send({"type": "login", "username": "ALICE", "password": GOOD_PASSWORD})
    welcome = again.expect("welcome", username="Alice", role="user")
    assert "re" not in welcome
    assert server.store.get_user("alice").last_login_at is not None


def test_bad_credentials_are_identical_for_unknown_user_and_wrong_password(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    replies = []
    for name, password in (("alice", OTHER_PASSWORD), ("nobody", GOOD_PASSWORD)):
        client = Client(server.address)
        client.hello()
        client.send({"type": "login", "username": name, "password": password, "id": "x"})
        replies.append(client.recv_line())
    assert replies[0] == replies[1]
    assert b'"code":"bad_credentials"' in replies[0] and b'"re":"x"' in replies[0]


def test_unknown_user_costs_the_same_bcrypt_as_a_wrong_password(servers: Any) -> None:
    # At cost 8 a hash takes milliseconds, so skipping it for unknown users
    # would make their replies many times faster; attempts are interleaved so
    # machine noise hits both sides alike.
    server = servers(auth__bcrypt_cost=8, limits__failed_logins_per_account=1000,
                     limits__failed_logins_per_ip_per_minute=1000,
                     limits__connections_per_ip_per_minute=1000)
    add_user(server, "alice")
    timings: dict[str, list[float]] = {"alice": [], "nobody": []}
    for _ in range(15):
        for name in timings:
            client = Client(server.address)
            client.hello()
            started = time.perf_counter()
            client.send({"type": "login", "username": name, "password": OTHER_PASSWORD})
            client.expect_error("bad_credentials")
            timings[name].append(time.perf_counter() - started)
            client.close()
    wrong, unknown = (sorted(t)[len(t) // 2] for t in timings.values())
    assert 0.5 < unknown / wrong < 2.0, (unknown, wrong)


def test_disabled_account_is_told_only_after_the_right_password(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    server.store.set_disabled("alice", True, actor="test")
    client = Client(server.address)
    client.hello()
    client.send({"type": "login", "username": "alice", "password": OTHER_PASSWORD})
    client.expect_error("bad_credentials")
    client.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    client.expect_error("account_disabled")


def test_three_failed_attempts_close_the_connection(servers: Any) -> None:
    server = servers()
    client = Client(server.address)
    client.hello()
    for _ in range(3):
        client.send({"type": "login", "username": "ghost", "password": OTHER_PASSWORD})
        client.expect_error("bad_credentials")
    client.expect_closed()


def test_handshake_timeout(servers: Any) -> None:
    server = servers(limits__handshake_timeout_s=0.5)
    client = Client(server.address)
    client.hello()
    client.send(b'{"type":"ping"}\n')  # activity does not extend the deadline
    client.expect("pong")
    started = time.monotonic()
    client.expect_error("handshake_timeout")
    client.expect_closed()
    assert time.monotonic() - started < 5


def test_requests_sent_together_with_the_login_are_carried_out(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client = Client(server.address)
    client.hello()
    client.send(b"".join(protocol_line(frame) for frame in (
        {"type": "login", "username": "alice", "password": GOOD_PASSWORD},
        {"type": "say", "text": "in the same packet"}, {"type": "ping", "id": "p"})))
    client.expect("welcome")
    client.expect("message", text="in the same packet")
    client.expect("pong", re="p")


def protocol_line(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode() + b"\n"


def test_before_login_only_the_handshake_is_accepted(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    watcher = logged_in(server, "alice")
    client = Client(server.address)
    client.hello()
    for frame in ({"type": "say", "text": "hi"}, {"type": "who"},
                  {"type": "dm", "to": "alice", "text": "hi"}):
        client.send({**frame, "id": 7})
        client.expect_error("auth_required", re=7)
    client.send({"type": "ping", "id": "p"})
    client.expect("pong", re="p")
    client.send({"type": "quit"})
    client.expect_closed()
    watcher.send({"type": "who"})
    assert watcher.expect("who")["users"] == [{"username": "alice", "role": "user"}]


def test_too_many_frames_before_login(servers: Any) -> None:
    server = servers()
    client = Client(server.address)
    client.hello()
    for _ in range(10):
        client.send({"type": "ping"})
        client.expect("pong")
    client.send({"type": "ping"})
    client.expect_error("auth_required")
    client.expect_closed()


# -- framing and errors -------------------------------------------------------------

@pytest.mark.parametrize("line, code", [
    (b"\xff\xfe\n", "bad_frame"),
    (b"\xc0\xaf\n", "bad_frame"),
    (b"not json\n", "bad_frame"),
    (b"[1, 2]\n", "bad_frame"),
    (b"null\n", "bad_frame"),
    (b"[" * 10000 + b"\n", "bad_frame"),
    (b'{"type":"say","text":NaN}\n', "bad_frame"),
    (b'{"type":"say","text":' + b"9" * 5000 + b"}\n", "bad_frame"),
    (b'{"text":"no type"}\n', "bad_request"),
    (b'{"type":42}\n', "bad_request"),
    (b'{"type":"teleport"}\n', "unknown_type"),
    (b'{"type":"say"}\n', "bad_request"),
    (b'{"type":"say","text":42}\n', "bad_request"),
    (b'{"type":"say","text":"   "}\n', "bad_request"),
    (b'{"type":"say","text":"\\u001b[2J"}\n', "bad_request"),
    (b'{"type":"say","text":"\\ud800"}\n', "bad_request"),
    (b'{"type":"dm","to":"bob"}\n', "bad_request"),
    (b'{"type":"say","text":"hi","id":{"a":1}}\n', "bad_request"),
    (b'{"type":"login","username":"x","password":"y"}\n', "bad_request"),
])
def test_bad_frames_get_an_error_and_the_connection_goes_on(servers: Any, line: bytes,
                                                            code: str) -> None:
    server = servers()
    add_user(server, "alice")
    client = logged_in(server, "alice")
    client.send(line)
    client.expect_error(code)
    client.send({"type": "say", "text": "still here"})
    client.expect("message", text="still here")


def test_frame_at_the_limit_is_read_and_one_byte_more_closes(servers: Any) -> None:
    server = servers(limits__max_frame_bytes=1024)
    add_user(server, "alice")
    client = logged_in(server, "alice")
    padding = 1024 - len(b'{"type":"ping","pad":""}')
    client.send(b'{"type":"ping","pad":"' + b"x" * padding + b'"}\r\n')  # \r\n is accepted
    client.expect("pong")
    client.send(b'{"type":"ping","pad":"' + b"x" * (padding + 1) + b'"}\n')
    client.expect_error("frame_too_large")
    client.expect_closed()


def test_endless_line_without_newline_is_cut_off(servers: Any) -> None:
    server = servers()
    client = Client(server.address)
    client.hello()
    try:
        for _ in range(64):  # 1 MiB, far past the 16 KiB limit
            client.send(b"x" * 16384)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before we finish writing
    client.expect_error("frame_too_large")


def test_request_ids_come_back_as_re(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client = logged_in(server, "alice")
    client.send({"type": "ping", "id": 12})
    client.expect("pong", re=12)
    client.send({"type": "who", "id": "w1"})
    client.expect("who", re="w1")
    client.send({"type": "say", "text": "hi", "id": "s1"})
    message = client.expect("message")
    assert "re" not in message
    client.expect("ok", re="s1", message=message["id"])
    client.send({"type": "teleport", "id": 5})
    client.expect_error("unknown_type", re=5)
    client.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD, "id": 6})
    client.expect_error("bad_request", re=6)  # already logged in


# -- the room -----------------------------------------------------------------------

def test_say_reaches_everyone_including_the_sender(servers: Any) -> None:
    server = servers()
    for name in ("alice", "bob"):
        add_user(server, name)
    alice, bob = logged_in(server, "alice"), logged_in(server, "bob")
    alice.expect("join", skip=(), username="bob")
    alice.send({"type": "say", "text": "  hello\tworld\nline two  ", "from": "admin"})
    for client in (alice, bob):
        message = client.expect("message", **{"from": "alice"}, text="hello\tworld\nline two")
        assert isinstance(message["id"], int)
        assert message["ts"].endswith("Z") and "T" in message["ts"]


def test_text_limits(servers: Any) -> None:
    server = servers(limits__max_text_length=10)
    add_user(server, "alice")
    client = logged_in(server, "alice")
    client.send({"type": "say", "text": "é" * 10})
    client.expect("message", text="é" * 10)
    client.send({"type": "say", "text": "é" * 11, "id": 1})
    client.expect_error("text_too_long", re=1)


def test_direct_messages(servers: Any) -> None:
    server = servers()
    for name in ("alice", "Bob", "carol"):
        add_user(server, name)
    alice, alice2 = logged_in(server, "alice"), logged_in(server, "alice")
    bob, carol = logged_in(server, "Bob"), logged_in(server, "carol")
    alice.send({"type": "dm", "to": "bob", "text": "psst", "id": 1})
    for client in (alice, alice2, bob):
        frame = client.expect("dm", **{"from": "alice", "to": "Bob", "text": "psst"})
    alice.expect("ok", re=1, message=frame["id"])
    carol.send({"type": "ping"})
    carol.expect("pong")  # carol saw nothing before her pong
    alice.send({"type": "dm", "to": "nobody", "text": "hello?", "id": 2})
    alice.expect_error("no_such_user", re=2)


def test_who_and_presence(servers: Any) -> None:
    server = servers()
    add_user(server, "alice", role="admin")
    add_user(server, "bob")
    alice = logged_in(server, "alice")
    bob = Client(server.address)
    assert bob.login("bob")["users"] == ["alice", "bob"]
    alice.expect("join", skip=(), username="bob")
    bob2 = logged_in(server, "bob")  # a second session: no second join
    bob2.close()
    assert eventually(lambda: len(server.room.sessions_of("bob")) == 1)
    bob.send({"type": "who"})
    assert bob.expect("who")["users"] == [{"username": "alice", "role": "admin"},
                                          {"username": "bob", "role": "user"}]
    bob.send({"type": "quit"})
    bob.expect_closed()
    assert alice.recv() == {"type": "leave", "username": "bob", "reason": "quit"}


def test_leave_reason_disconnect(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    add_user(server, "bob")
    alice, bob = logged_in(server, "alice"), logged_in(server, "bob")
    alice.expect("join", skip=(), username="bob")
    bob.close()
    assert alice.recv() == {"type": "leave", "username": "bob", "reason": "disconnect"}


def test_sessions_per_account_limit(servers: Any) -> None:
    server = servers(limits__max_sessions_per_user=2)
    add_user(server, "alice")
    held = [logged_in(server, "alice"), logged_in(server, "alice")]
    third = Client(server.address)
    third.hello()
    third.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    third.expect_error("too_many_sessions")
    third.expect_closed()
    held[0].send({"type": "ping"})
    held[0].expect("pong")


def test_a_login_past_the_session_limit_is_refused_before_its_hash(servers: Any) -> None:
    server = servers(limits__max_sessions_per_user=2)
    add_user(server, "alice")
    held = [logged_in(server, "alice", source_ip="127.0.0.2") for _ in range(2)]
    # Refused before the password is checked, so a wrong one gets it too; but
    # only where those sessions are, which knows the account is in use...
    here = login_reply(server.address, "alice", OTHER_PASSWORD, "127.0.0.2")
    assert here["code"] == "too_many_sessions"
    # ...while anyone elsewhere learns nothing without the password.
    elsewhere = login_reply(server.address, "alice", OTHER_PASSWORD, "127.0.0.3")
    assert elsewhere["code"] == "bad_credentials"
    right = login_reply(server.address, "alice", source_ip="127.0.0.3")
    assert right["code"] == "too_many_sessions"  # room.enter's own check, after the hash
    held[0].send({"type": "ping", "id": 1})
    held[0].expect("pong", re=1)


def test_logins_looping_from_one_address_do_not_crowd_out_another(servers: Any) -> None:
    # One hash at a time, and slow enough (cost 8) that the line is where time
    # goes; the hog's connections are not limited here, only its hashes.
    server = servers(auth__max_concurrent_hashes=1, auth__bcrypt_cost=8,
                     limits__max_sessions_per_user=100, limits__max_connections_per_ip=100,
                     limits__max_unauthenticated_per_ip=100,
                     limits__connections_per_ip_per_minute=1_000_000)
    add_user(server, "alice")
    add_user(server, "bob")
    stop = threading.Event()
    hog_codes: list[str] = []

    def hog() -> None:
        while not stop.is_set():
            reply = login_reply(server.address, "alice", source_ip="127.0.0.2")
            hog_codes.append(reply.get("code", "welcome"))

    hogs = [threading.Thread(target=hog) for _ in range(12)]
    for thread in hogs:
        thread.start()
    try:
        # the hog has its share of the line, and is told so for the rest
        assert eventually(lambda: "rate_limited" in hog_codes)
        replies = [login_reply(server.address, "bob", source_ip="127.0.0.3")
                   for _ in range(5)]
        served_meanwhile = hog_codes.count("welcome")
    finally:
        stop.set()
        for thread in hogs:
            thread.join(30)
    assert [reply["type"] for reply in replies] == ["welcome"] * 5
    assert served_meanwhile > 0 and set(hog_codes) == {"welcome", "rate_limited"}


def test_passwd(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client = logged_in(server, "alice")
    client.send({"type": "passwd", "old": OTHER_PASSWORD, "new": OTHER_PASSWORD + "!", "id": 1})
    client.expect_error("bad_credentials", re=1)
    client.send({"type": "passwd", "old": GOOD_PASSWORD, "new": "short", "id": 2})
    client.expect_error("invalid_password", re=2)
    client.send({"type": "passwd", "old": GOOD_PASSWORD, "new": OTHER_PASSWORD, "id": 3})
    client.expect("ok", re=3)
    assert server.store.authenticate("alice", OTHER_PASSWORD)
    assert server.store.audit_entries()[-1].action == "user.passwd"


def test_guessing_the_old_password_is_throttled_like_logins(servers: Any) -> None:
    server = servers(limits__failed_logins_per_account=2)
    add_user(server, "alice")
    client = logged_in(server, "alice")
    codes = []
    for n in range(3):
        client.send({"type": "passwd", "old": f"guess number {n}", "new": OTHER_PASSWORD,
                     "id": n})
        codes.append(client.expect("error", re=n)["code"])
    assert codes == ["bad_credentials", "bad_credentials", "rate_limited"]
    other = Client(server.address)  # the account's logins wait too
    other.hello()
    other.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    assert other.expect_error("rate_limited")["retry_after"] > 0


def test_ping_from_the_server_and_idle_timeout(servers: Any) -> None:
    server = servers(limits__ping_interval_s=0.5, limits__ping_timeout_s=2.0)
    add_user(server, "alice")
    add_user(server, "bob")
    alice, bob = logged_in(server, "alice"), logged_in(server, "bob")
    alice.expect("join", skip=(), username="bob")
    alice.expect("ping")  # alice does not answer: she is dropped
    while True:  # bob answers every ping and stays
        frame = bob.recv()
        if frame["type"] != "ping":
            break
        bob.send({"type": "pong"})
    assert frame == {"type": "leave", "username": "alice", "reason": "timeout"}
    bob.send({"type": "ping"})
    bob.expect("pong", skip=("ping",))


# -- registration -----------------------------------------------------------------

def register(client: Client, name: str, password: str = GOOD_PASSWORD,
             **extra: Any) -> dict[str, Any]:
    client.send({"type": "register", "username": name, "password": password, **extra})
    return client.recv()


def test_registration_errors(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client = Client(server.address)
    client.hello()
    assert register(client, "ALICE")["code"] == "username_taken"
    assert register(client, "aIice") == {"type": "error", "code": "username_taken",
                                         "message": "that username looks too much like one "
                                                    "that is taken"}
    assert register(client, "admin")["code"] == "invalid_username"
    client2 = Client(server.address)
    client2.hello()
    assert register(client2, "bob", "too short")["code"] == "invalid_password"
    assert register(client2, "Ｂob")["code"] == "invalid_username"


def test_registration_closed_and_invite_modes(servers: Any) -> None:
    closed = servers(server__registration="closed")
    client = Client(closed.address)
    assert client.hello()["registration"] == "closed"
    assert register(client, "bob")["code"] == "registration_closed"

    invite = servers(server__registration="invite")
    _, token = invite.store.create_invite(actor="test", expires_in=None)
    client = Client(invite.address)
    assert client.hello()["registration"] == "invite"
    assert register(client, "bob")["code"] == "registration_closed"
    assert register(client, "bob", invite="wrong")["code"] == "registration_closed"
    assert register(client, "bob", invite=token)["type"] == "welcome"


def test_a_bogus_invite_says_nothing_about_the_name(servers: Any) -> None:
    server = servers(server__registration="invite")
    add_user(server, "alice")
    client = Client(server.address)
    client.hello()
    replies = [register(client, name, invite="bogus") for name in ("alice", "bob")]
    assert replies[0] == replies[1]
    assert replies[0]["code"] == "registration_closed"


def test_bogus_invites_naming_an_account_do_not_spend_its_login_allowance(
        servers: Any) -> None:
    server = servers(server__registration="invite",
                     limits__failed_logins_per_account_per_hour=3)
    add_user(server, "alice")
    for n in range(2, 7):  # more than the account's allowance, from many addresses
        client = Client(server.address, source_ip=f"127.0.0.{n}")
        client.hello()
        assert register(client, "alice", invite="bogus")["code"] == "registration_closed"
        client.close()
    owner = Client(server.address, source_ip="127.0.0.20")
    owner.login("alice")  # from an address she has never used


# -- limits -----------------------------------------------------------------------

def test_message_rate_limit(servers: Any) -> None:
    server = servers(limits__message_burst=3, limits__messages_per_second=2.0)
    add_user(server, "alice")
    client = logged_in(server, "alice")
    for n in range(4):
        client.send({"type": "say", "text": f"m{n}", "id": n})
    for n in range(3):
        client.expect("message", text=f"m{n}")
        client.expect("ok", re=n)
    error = client.expect_error("rate_limited", re=3)
    assert 0 < error["retry_after"] <= 0.5


def test_failed_logins_on_one_account_are_throttled(servers: Any) -> None:
    server = servers(limits__failed_logins_per_account=2)
    add_user(server, "alice")
    outcomes = []
    for _ in range(2):
        client = Client(server.address)
        client.hello()
        client.send({"type": "login", "username": "alice", "password": OTHER_PASSWORD})
        outcomes.append(client.recv()["code"])
    client = Client(server.address)
    client.hello()
    client.send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    error = client.recv()
    assert outcomes == ["bad_credentials"] * 2
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 1
    # a name that does not exist is throttled the same way
    outcomes = []
    for _ in range(3):
        client = Client(server.address)
        client.hello()
        client.send({"type": "login", "username": "zed", "password": OTHER_PASSWORD})
        outcomes.append(client.recv()["code"])
    assert outcomes == ["bad_credentials", "bad_credentials", "rate_limited"]


def test_guesses_from_one_address_do_not_lock_the_owner_out_elsewhere(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    codes = [login_reply(server.address, "alice", OTHER_PASSWORD, "127.0.0.2")["code"]
             for _ in range(8)]
    assert codes == ["bad_credentials"] * 5 + ["rate_limited"] * 3  # that address waits...
    reply = login_reply(server.address, "alice", source_ip="127.0.0.3")
    assert reply["type"] == "welcome", reply  # ...the owner, elsewhere, does not


def test_an_address_that_logged_in_before_gets_past_the_hourly_limit(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    logged_in(server, "alice").close()  # the owner's usual address, 127.0.0.1
    # 100 wrong guesses, the account's hourly allowance, from 20 addresses:
    # 5 each, so that no address is held up by its own delay
    codes = {login_reply(server.address, "alice", OTHER_PASSWORD, f"127.0.3.{n % 20 + 1}")["code"]
             for n in range(100)}
    assert codes == {"bad_credentials"}
    refused = login_reply(server.address, "alice", source_ip="127.0.4.1")
    assert refused["code"] == "rate_limited" and 0 < refused["retry_after"] <= 36
    reply = login_reply(server.address, "alice")
    assert reply["type"] == "welcome", reply


def test_guesses_sent_at_once_get_no_more_than_the_hourly_allowance(servers: Any) -> None:
    server = servers(auth__max_concurrent_hashes=16,  # every guess could be checked at once
                     limits__failed_logins_per_account_per_hour=5)
    add_user(server, "alice")
    clients = [Client(server.address, source_ip=f"127.0.0.{10 + n}") for n in range(16)]
    for client in clients:
        client.hello()
    start = threading.Barrier(len(clients))

    def guess(client: Client) -> None:
        start.wait()
        client.send({"type": "login", "username": "alice", "password": OTHER_PASSWORD})

    threads = [threading.Thread(target=guess, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    codes = sorted(client.recv()["code"] for client in clients)
    assert codes == ["bad_credentials"] * 5 + ["rate_limited"] * 11


def test_failed_logins_from_one_address_are_throttled(servers: Any) -> None:
    server = servers(limits__failed_logins_per_ip_per_minute=3)
    add_user(server, "alice")
    for name in ("u1", "u2", "u3"):
        client = Client(server.address, source_ip="127.0.0.2")
        client.hello()
        client.send({"type": "login", "username": name, "password": OTHER_PASSWORD})
        client.expect_error("bad_credentials")
    refused = Client(server.address, source_ip="127.0.0.2")
    error = refused.expect_error("rate_limited")
    assert error["retry_after"] > 0
    refused.expect_closed()
    assert logged_in(server, "alice", source_ip="127.0.0.3")  # another address is unaffected


def test_registrations_per_address(servers: Any) -> None:
    server = servers(limits__registrations_per_ip_per_hour=1)
    client = Client(server.address)
    client.hello()
    assert register(client, "bob")["type"] == "welcome"
    other = Client(server.address)
    other.hello()
    error = register(other, "carol")
    assert error["code"] == "rate_limited" and error["retry_after"] > 3000


def test_registrations_sent_at_once_get_no_more_than_the_limit(servers: Any) -> None:
    # every one could be checked at once
    server = servers(auth__max_concurrent_hashes=16, auth__max_hashes_per_ip=16,
                     limits__max_unauthenticated_per_ip=16)
    clients = [Client(server.address, source_ip="127.0.0.2") for _ in range(16)]
    for client in clients:
        client.hello()
    start = threading.Barrier(len(clients))

    def send_registration(n: int, client: Client) -> None:
        start.wait()
        client.send({"type": "register", "username": f"user{n}", "password": GOOD_PASSWORD})

    threads = [threading.Thread(target=send_registration, args=pair)
               for pair in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    outcomes = sorted(client.recv().get("code", "welcome") for client in clients)
    assert outcomes == ["rate_limited"] * 11 + ["welcome"] * 5
    assert len(server.store.list_users()) == 5


def test_connection_limits(servers: Any) -> None:
    server = servers(limits__max_connections_per_ip=2, limits__max_clients=3)
    held = [Client(server.address, source_ip="127.0.0.2") for _ in range(2)]
    for client in held:
        client.hello()
    Client(server.address, source_ip="127.0.0.2").expect_error("too_many_connections")
    third = Client(server.address, source_ip="127.0.0.3")
    third.hello()  # another address still gets in...
    Client(server.address, source_ip="127.0.0.4").expect_error("too_many_connections")  # ...until full
    held[0].close()
    assert eventually(lambda: server.connection_count() == 2)  # noticed in its own thread
    Client(server.address, source_ip="127.0.0.4").hello()


def test_a_full_pre_login_pool_makes_room_by_closing_its_oldest(servers: Any) -> None:
    server = servers()  # 64 connections not logged in, 4 from each address
    add_user(server, "alice")
    idle = []
    for n in range(16):
        for _ in range(4):
            client = Client(server.address, source_ip=f"127.0.5.{n + 1}")
            client.hello()
            idle.append(client)
    alice = logged_in(server, "alice", source_ip="127.0.6.1")  # comes in, and logs in
    idle[0].expect_error("too_many_connections", message="the server is full; try again")
    idle[0].expect_closed()
    idle[1].send({"type": "ping", "id": 1})  # only the oldest made room
    idle[1].expect("pong", re=1)
    alice.send({"type": "ping", "id": 2})
    alice.expect("pong", re=2)


def test_an_address_may_have_four_connections_not_logged_in(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    waiting = [Client(server.address, source_ip="127.0.0.2") for _ in range(4)]
    for client in waiting:
        client.hello()
    fifth = Client(server.address, source_ip="127.0.0.2")
    fifth.expect_error("too_many_connections")
    fifth.expect_closed()
    Client(server.address, source_ip="127.0.0.3").hello()  # another address is not held up
    waiting[0].send({"type": "login", "username": "alice", "password": GOOD_PASSWORD})
    waiting[0].expect("welcome")  # logged in: it no longer counts
    Client(server.address, source_ip="127.0.0.2").hello()


def test_new_connections_from_one_address_are_rate_limited(servers: Any) -> None:
    server = servers()  # 30 at once, then one every 2 s
    started, admitted = time.monotonic(), 0
    while admitted < 100:
        client = Client(server.address, source_ip="127.0.0.2")
        first = client.recv()
        if first["type"] != "hello":
            break
        admitted += 1
        client.close()
        assert eventually(lambda: server.connection_count() == 0)  # none is held open
    # the burst, and at most one more for every 2 s the loop took
    assert 30 <= admitted <= 30 + (time.monotonic() - started) / 2, admitted
    assert first["code"] == "rate_limited" and 0 < first["retry_after"] <= 2, first
    client.expect_closed()
    Client(server.address, source_ip="127.0.0.3").hello()  # another address is not held up


# -- admin moderation and live revocation ----------------------------------------------

def test_kick_and_ban(servers: Any) -> None:
    server = servers()
    add_user(server, "root", role="admin")
    for name in ("bob", "carol"):
        add_user(server, name)
    admin, bob, carol = (logged_in(server, n) for n in ("root", "bob", "carol"))
    bob.send({"type": "kick", "username": "carol", "id": 1})
    bob.expect_error("forbidden", re=1)
    admin.send({"type": "kick", "username": "nobody", "id": 2})
    admin.expect_error("no_such_user", re=2)
    admin.send({"type": "kick", "username": "carol", "reason": "spam", "id": 3})
    error = carol.expect_error("kicked")
    assert "spam" in error["message"]
    carol.expect_closed()
    admin.expect("ok", re=3)
    assert bob.recv() == {"type": "leave", "username": "carol", "reason": "kicked"}
    admin.send({"type": "ban", "username": "bob", "reason": "more spam", "id": 4})
    bob.expect_error("kicked")
    bob.expect_closed()
    assert server.store.get_user("bob").disabled
    ban = server.store.audit_entries()[-1]
    assert (ban.actor, ban.action, ban.target) == ("user:root", "user.disable", "bob")


def wait_for_frame(client: Client, kind: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = client.recv(timeout=max(0.01, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame


def test_cli_disable_ends_live_sessions(servers: Any, run_cli: Runner) -> None:
    server = servers()
    for name in ("alice", "bob"):
        add_user(server, name)
    alice, bob = logged_in(server, "alice"), logged_in(server, "bob")
    alice.expect("join", skip=(), username="bob")
    run_cli("users", "disable", "bob", check=True)
    leave = wait_for_frame(alice, "leave", timeout=2.0)  # the promise: within 2 s
    bob.expect_error("account_disabled")
    assert leave == {"type": "leave", "username": "bob", "reason": "disabled"}
    run_cli("users", "delete", "alice", "--yes", check=True)
    alice.expect_error("account_disabled")


def test_cli_demotion_takes_effect(servers: Any, run_cli: Runner) -> None:
    server = servers()
    add_user(server, "root", role="admin")
    add_user(server, "bob")
    admin = logged_in(server, "root")
    run_cli("users", "role", "root", "user", check=True)
    admin.send({"type": "kick", "username": "bob", "id": 1})
    admin.expect_error("forbidden", re=1)
    assert eventually(lambda: {"username": "root", "role": "user"} in server.room.who(), 2.0)


def test_a_password_change_ends_the_other_sessions(servers: Any, run_cli: Runner) -> None:
    server = servers()
    for name in ("alice", "bob"):
        add_user(server, name)
    bob = logged_in(server, "bob")
    here, elsewhere = logged_in(server, "alice"), logged_in(server, "alice")
    here.send({"type": "passwd", "old": GOOD_PASSWORD, "new": OTHER_PASSWORD, "id": 1})
    here.expect("ok", re=1)
    started = time.monotonic()
    elsewhere.expect_error("kicked", skip=("join", "leave", "message"))
    elsewhere.expect_closed()
    assert time.monotonic() - started < 2.0
    here.send({"type": "say", "text": "still in", "id": 2})  # the session that changed it
    here.expect("message", skip=("join", "leave", "ok"), text="still in")
    # An admin's change ends them all, and the room sees why.
    run_cli("users", "passwd", "alice", "--password-stdin", input=GOOD_PASSWORD + "\n",
            check=True)
    here.expect_error("kicked", skip=("join", "leave", "message", "ok"))
    leave = wait_for_frame(bob, "leave", timeout=2.0)
    assert leave == {"type": "leave", "username": "alice", "reason": "password_changed"}


class PasswdLoop(threading.Thread):
    """A session that knows the password and keeps setting it again, as an
    attacker holding a stolen session might to undo an admin's reset."""

    def __init__(self, client: Client, password: str) -> None:
        super().__init__(daemon=True)
        self.client, self.password = client, password
        self.started_looping = threading.Event()
        self.ended_with: dict[str, Any] | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 20
        for n in itertools.count():
            if time.monotonic() > deadline:
                return
            self.client.send({"type": "passwd", "old": self.password, "new": self.password,
                              "id": n})
            try:
                reply = self.client.recv(skip=("join", "leave", "message"))
            except (EOFError, OSError):
                return
            if reply.get("re") != n:  # not the answer to a passwd: the session's end
                self.ended_with = reply
                return
            self.started_looping.set()


def test_an_admin_reset_wins_over_a_session_resetting_the_old_password(
        servers: Any, run_cli: Runner) -> None:
    # At a real cost each passwd takes long enough (two hashes) for the
    # admin's commit to land while one is being checked, as it would in use.
    server = servers(auth__bcrypt_cost=10, limits__failed_logins_per_account=1000,
                     limits__failed_logins_per_ip_per_minute=1000)
    add_user(server, "alice")
    known = GOOD_PASSWORD
    for round_ in range(3):
        session = Client(server.address)
        session.login("alice", known)
        attacker = PasswdLoop(session, known)
        attacker.start()
        assert attacker.started_looping.wait(10)
        reset = f"the admin chose round {round_} words"
        run_cli("users", "passwd", "alice", "--password-stdin", input=reset + "\n", check=True)
        attacker.join(10)
        assert attacker.ended_with is not None and attacker.ended_with["code"] == "kicked", \
            attacker.ended_with
        assert server.store.authenticate("alice", reset)
        with pytest.raises(BadCredentials):
            server.store.authenticate("alice", known)
        known = reset


def test_a_login_checked_across_an_admin_reset_does_not_outlive_it(
        servers: Any, run_cli: Runner) -> None:
    # Logins with the old password, always one being hashed, while the admin
    # resets it: one checked against the old hash but recorded after the
    # reset must not become a session that knows only the new password.
    server = servers(auth__bcrypt_cost=10, limits__max_sessions_per_user=1000,
                     limits__failed_logins_per_account=1000,
                     limits__failed_logins_per_ip_per_minute=1000)
    add_user(server, "alice")
    for round_ in range(3):
        old = GOOD_PASSWORD if round_ == 0 else f"the admin chose round {round_ - 1} words"
        stop, welcomed = threading.Event(), []

        def log_in_again_and_again(source: str) -> None:
            for _ in range(200):
                if stop.is_set():
                    return
                client = Client(server.address, source_ip=source)
                client.hello()
                client.send({"type": "login", "username": "alice", "password": old})
                if client.recv()["type"] == "welcome":
                    welcomed.append(client)
                else:
                    client.close()

        loops = [threading.Thread(target=log_in_again_and_again, args=(f"127.0.0.{n}",))
                 for n in (2, 3)]
        for loop in loops:
            loop.start()
        assert eventually(lambda: len(welcomed) >= 2, 10)
        reset = f"the admin chose round {round_} words"
        run_cli("users", "passwd", "alice", "--password-stdin", input=reset + "\n", check=True)
        stop.set()
        for loop in loops:
            loop.join(10)
        for client in welcomed:  # every one of them: kicked, however late it came in
            client.expect_error("kicked", skip=("join", "leave"))
            client.close()


def test_a_rehash_at_a_new_cost_is_not_a_password_change(tmp_path: Path, servers: Any) -> None:
    add_users(tmp_path / "home", "alice", "bob")  # hashed at the test cost, 4
    server = servers(auth__bcrypt_cost=5)  # the first login rehashes at 5
    first = logged_in(server, "alice")
    second = logged_in(server, "alice")
    bob = logged_in(server, "bob")
    server.store.set_role("bob", "admin", actor="test")
    # Once the role has reached bob's session, housekeeping has seen the rehash too.
    assert eventually(lambda: {"username": "bob", "role": "admin"} in server.room.who(), 5.0)
    for client in (first, second, bob):
        client.send({"type": "ping", "id": "p"})
        client.expect("pong", skip=("join", "leave"), re="p")


# -- order and slow consumers -----------------------------------------------------------

@pytest.mark.slow
def test_every_receiver_sees_the_same_order(servers: Any) -> None:
    clients_n, messages_n = 50, 20
    server = servers(limits__max_connections_per_ip=100, limits__max_unauthenticated=100,
                     limits__connections_per_ip_per_minute=1000,
                     limits__messages_per_second=1000.0, limits__message_burst=1000)
    names = [f"user{i}" for i in range(clients_n)]
    for name in names:
        add_user(server, name)
    clients = [logged_in(server, name) for name in names]
    received: dict[str, list[tuple[int, str, str]]] = {}

    def read_all(name: str, client: Client) -> None:
        got = received.setdefault(name, [])
        while len(got) < clients_n * messages_n:
            frame = client.recv(skip=("join", "leave", "ok"))
            got.append((frame["id"], frame["from"], frame["text"]))

    readers = [threading.Thread(target=read_all, args=(n, c)) for n, c in zip(names, clients)]
    for thread in readers:
        thread.start()
    for name, client in zip(names, clients):
        client.send(b"".join(
            f'{{"type":"say","text":"{name} {n}"}}\n'.encode() for n in range(messages_n)))
    for thread in readers:
        thread.join(60)
    first = received[names[0]]
    assert len(first) == clients_n * messages_n
    ids = [m[0] for m in first]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[-1] - ids[0] == len(ids) - 1  # no gaps
    for name in names:
        assert received[name] == first, name
        own = [int(text.split()[1]) for _, sender, text in first if sender == name]
        assert own == list(range(messages_n))


def test_a_client_that_never_reads_is_evicted(servers: Any) -> None:
    server = servers(limits__outbound_queue_bytes=64 * 1024, limits__messages_per_second=10000.0,
                     limits__message_burst=10000)
    for name in ("alice", "bob", "sloth"):
        add_user(server, name)
    sloth = logged_in(server, "sloth", rcvbuf=4096)
    sloth.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    alice, bob = logged_in(server, "alice"), logged_in(server, "bob")
    text = "x" * 1000
    seen: list[int] = []
    left: list[dict[str, Any]] = []
    for batch in range(200):  # up to 4 MiB of fan-out: far past sloth's 64 KiB queue
        # batches well under the queue limit, so bob, who reads, always keeps up
        alice.send(b"".join(f'{{"type":"say","text":"{text}"}}\n'.encode() for _ in range(20)))
        for _ in range(20):
            frame = bob.recv(skip=("join",))
            while frame["type"] == "leave":
                left.append(frame)
                frame = bob.recv(skip=("join",))
            assert frame["type"] == "message", frame
            seen.append(frame["id"])
            alice.expect("message")  # alice reads her echoes, or she would be the slow one
        if left:
            break
    if not left:  # evicted, but its connection may take a moment to be cut
        left.append(bob.recv(timeout=10))
    assert left == [{"type": "leave", "username": "sloth", "reason": "slow_consumer"}]
    assert seen == list(range(seen[0], seen[0] + len(seen)))  # bob missed nothing
    alice.send({"type": "say", "text": "after"})
    bob.expect("message", text="after")
    sloth.expect_closed()


def test_work_caught_by_a_shutdown_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    """A connection that asks for database or bcrypt work while the server
    shuts down is told the server is shutting down, which it passes on to its
    client, instead of failing with whatever the thread pool raised."""
    server = start_server(tmp_path / "home")
    server.shutdown()
    with pytest.raises(ShuttingDown) as refused:
        server.off_thread(lambda: None)
    assert refused.value.code == "server_shutdown"
