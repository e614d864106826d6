"""Resumable sessions over the wire: a login that asks gets a session token,
`resume` logs in with it and no password, `logout` ends it, and a token is
guarded like a password (throttled, never logged)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import GOOD_PASSWORD
from helpers import Client, add_user, logged_in

OTHER_PASSWORD = "an entirely different phrase"


def token_login(server: Any, name: str = "alice") -> tuple[Client, dict[str, Any]]:
    """A logged-in client that asked for a session token, and its welcome."""
    client = Client(server.address)
    client.hello()
    client.send({"type": "login", "username": name, "password": GOOD_PASSWORD,
                 "session": True, "id": 1})
    return client, client.expect("welcome", username=name, re=1)


def resume_reply(server: Any, token: Any, rid: Any = 2) -> dict[str, Any]:
    """Connect, try one resume, and hang up: the server's reply (an address
    the throttle holds back is refused before its hello)."""
    client = Client(server.address)
    try:
        first = client.recv()
        if first["type"] != "hello":
            return first
        client.send({"type": "resume", "token": token, "id": rid})
        return client.recv(skip=("join", "leave"))
    finally:
        client.close()


def test_a_login_that_asks_gets_a_token_that_logs_in_without_the_password(
        servers: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="authchat")
    server = servers()
    add_user(server, "alice")
    first, welcome = token_login(server)
    token = welcome["token"]
    assert len(token) >= 43
    expires = datetime.fromisoformat(welcome["token_expires"])
    assert abs(expires - datetime.now(UTC) - timedelta(days=30)) < timedelta(minutes=1)
    again = Client(server.address)
    again.hello()
    again.send({"type": "resume", "token": token, "id": "r"})
    back = again.expect("welcome", username="alice", role="user", re="r")
    assert "token" not in back  # it has one: the one it came in with
    again.send({"type": "say", "text": "back without a password", "id": 3})
    again.expect("message", text="back without a password")
    again.expect("ok", re=3)
    first.expect("message", text="back without a password")
    assert token not in caplog.text  # a credential: never in the log
    assert token.encode() not in server.store.path.read_bytes()


def test_a_login_that_does_not_ask_gets_no_token(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client = Client(server.address)
    assert "token" not in client.login("alice")
    assert server.store.connection().execute(
        "SELECT count(*) FROM session_tokens").fetchone()[0] == 0


def test_registration_that_asks_gets_a_token_too(servers: Any) -> None:
    server = servers()
    client = Client(server.address)
    client.hello()
    client.send({"type": "register", "username": "carol",
                 "password": GOOD_PASSWORD, "session": True})
    token = client.expect("welcome", username="carol")["token"]
    assert resume_reply(server, token)["type"] == "welcome"


def test_a_server_with_tokens_off_gives_none(servers: Any) -> None:
    server = servers(auth__session_token_days=0)
    add_user(server, "alice")
    _, welcome = token_login(server)
    assert "token" not in welcome and "token_expires" not in welcome


def test_bad_tokens_are_refused_like_bad_passwords_and_close_after_three(
        servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    token_login(server)
    client = Client(server.address)
    client.hello()
    for n, bogus in enumerate(("x" * 43, "", "\u00e9" * 43)):
        client.send({"type": "resume", "token": bogus, "id": n})
        error = client.expect_error("bad_credentials", re=n)
        assert "log in with the password" in error["message"]
    client.expect_closed()
    assert resume_reply(server, "x" * 129)["code"] == "bad_request"
    assert resume_reply(server, 12345)["code"] == "bad_request"


def test_token_guesses_are_throttled_per_address(servers: Any) -> None:
    server = servers(limits__failed_logins_per_ip_per_minute=3)
    add_user(server, "alice")
    _, welcome = token_login(server)
    codes = [resume_reply(server, f"guess-{n}" * 6)["code"] for n in range(3)]
    assert codes == ["bad_credentials"] * 3
    # the address now waits, even with the right token
    assert resume_reply(server, welcome["token"])["code"] == "rate_limited"


def test_logout_ends_the_session_and_its_token(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client, welcome = token_login(server)
    other, _ = token_login(server)
    client.send({"type": "logout", "id": 9})
    client.expect("ok", re=9)
    client.expect_closed()
    assert resume_reply(server, welcome["token"])["code"] == "bad_credentials"
    other.send({"type": "ping", "id": 1})  # the other session, and its token, stay
    other.expect("pong", re=1)


def test_a_password_change_ends_every_token_of_the_account(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    add_user(server, "bob")
    client, welcome = token_login(server)
    _, bobs = token_login(server, "bob")
    client.send({"type": "passwd", "old": GOOD_PASSWORD, "new": OTHER_PASSWORD,
                 "id": 5})
    client.expect("ok", re=5)
    assert resume_reply(server, welcome["token"])["code"] == "bad_credentials"
    assert resume_reply(server, bobs["token"])["type"] == "welcome"


def test_a_ban_ends_the_banned_accounts_tokens(servers: Any) -> None:
    server = servers()
    add_user(server, "root", role="admin")
    add_user(server, "alice")
    admin = logged_in(server, "root")
    _, welcome = token_login(server)
    admin.send({"type": "ban", "username": "alice", "id": 1})
    admin.expect("ok", re=1)
    assert resume_reply(server, welcome["token"])["code"] == "bad_credentials"


def test_resume_and_logout_each_only_in_their_state(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    client, welcome = token_login(server)
    client.send({"type": "resume", "token": welcome["token"], "id": 2})
    client.expect_error("bad_request", re=2)
    fresh = Client(server.address)
    fresh.hello()
    fresh.send({"type": "logout", "id": 3})
    fresh.expect_error("auth_required", re=3)


def test_a_resume_past_the_session_limit_is_refused(servers: Any) -> None:
    server = servers(limits__max_sessions_per_user=1)
    add_user(server, "alice")
    _, welcome = token_login(server)
    assert resume_reply(server, welcome["token"])["code"] == "too_many_sessions"
