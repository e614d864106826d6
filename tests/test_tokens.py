"""Session tokens in the store: issued after a password login, a login without
a hash, and ended by every change that must end them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from authchat.errors import BadCredentials
from authchat.store import Store

from conftest import GOOD_PASSWORD

OTHER_PASSWORD = "an entirely different phrase"
MONTH = timedelta(days=30)


def issue(store: Store, username: str = "alice", keep: int = 20) -> str:
    user = store.authenticate(username, GOOD_PASSWORD)
    token, _ = store.issue_token(user, lifetime=MONTH, keep=keep)
    return token


def refused(store: Store, token: str) -> bool:
    try:
        store.resume(token)
    except BadCredentials:
        return True
    return False


@pytest.fixture
def alice(store: Store) -> Store:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    store.create_user("bob", GOOD_PASSWORD, actor="test")
    return store


def test_a_token_logs_its_account_in_and_is_kept_only_as_a_hash(alice: Store) -> None:
    token = issue(alice)
    assert len(token) >= 43  # 256 bits, URL-safe
    user = alice.resume(token)
    assert user.username == "alice" and user.password_version == 0
    assert token != issue(alice)  # every login its own
    rows = alice.connection().execute("SELECT * FROM session_tokens").fetchall()
    assert rows and not any(token in str(tuple(row)) for row in rows)
    assert token.encode() not in alice.path.read_bytes()


def test_bogus_and_overlong_tokens_are_refused_alike(alice: Store) -> None:
    issue(alice)
    for bogus in ("", "x" * 43, "x" * 10_000, "\udcff"):
        assert refused(alice, bogus)


def test_every_password_change_ends_the_accounts_tokens(alice: Store) -> None:
    own, reset, bobs = issue(alice), issue(alice), issue(alice, "bob")
    user = alice.get_user("alice")
    alice.change_password(user.id, GOOD_PASSWORD, OTHER_PASSWORD, known_version=0,
                          actor="alice")
    assert refused(alice, own) and refused(alice, reset)
    assert alice.resume(bobs).username == "bob"  # another account's stay
    after_change = alice.issue_token(alice.authenticate("alice", OTHER_PASSWORD),
                                     lifetime=MONTH, keep=20)[0]
    alice.set_password("alice", GOOD_PASSWORD, actor="root")
    assert refused(alice, after_change)
    details = [e.detail for e in alice.audit_entries(10) if e.action == "user.passwd"]
    assert details == [{"session_tokens_ended": 2}, {"session_tokens_ended": 1}]  # in order


def test_a_token_issued_after_its_password_changed_is_born_revoked(alice: Store) -> None:
    checked = alice.authenticate("alice", GOOD_PASSWORD)  # then a reset, while it was issued
    alice.set_password("alice", OTHER_PASSWORD, actor="root")
    token, _ = alice.issue_token(checked, lifetime=MONTH, keep=20)
    assert refused(alice, token)


def test_disable_and_delete_end_tokens_and_enable_does_not_bring_them_back(
        alice: Store) -> None:
    token = issue(alice)
    alice.set_disabled("alice", True, actor="root")
    assert refused(alice, token)
    alice.set_disabled("alice", False, actor="root")
    assert refused(alice, token)
    disable = next(e for e in alice.audit_entries(10) if e.action == "user.disable")
    assert disable.detail == {"session_tokens_ended": 1}
    bobs = issue(alice, "bob")
    alice.delete_user("bob", actor="root")
    assert refused(alice, bobs)
    alice.create_user("bob", GOOD_PASSWORD, actor="test")  # the name, a new account
    assert refused(alice, bobs)
    assert alice.connection().execute("SELECT count(*) FROM session_tokens").one()[0] == 0


def test_revoking_an_accounts_tokens_is_audited_and_logout_ends_one(alice: Store) -> None:
    first, second, bobs = issue(alice), issue(alice), issue(alice, "bob")
    assert alice.revoke_token(first) and not alice.revoke_token(first)
    assert refused(alice, first) and alice.resume(second).username == "alice"
    assert alice.revoke_tokens("alice", actor="root") == 1
    assert refused(alice, second) and alice.resume(bobs).username == "bob"
    entry = alice.audit_entries(1)[0]
    assert (entry.actor, entry.action, entry.target, entry.detail) == (
        "root", "user.sessions_revoke", "alice", {"session_tokens_ended": 1})
    assert alice.revoke_tokens("alice", actor="root") == 0
    assert alice.audit_entries(1)[0].id == entry.id  # nothing ended, nothing to record


def test_tokens_expire_and_an_account_keeps_only_its_newest(alice: Store) -> None:
    user = alice.authenticate("alice", GOOD_PASSWORD)
    expired, _ = alice.issue_token(user, lifetime=timedelta(0), keep=20)
    assert refused(alice, expired)
    tokens = [issue(alice, keep=3) for _ in range(5)]
    assert [refused(alice, t) for t in tokens] == [True, True, False, False, False]
    count = alice.connection().execute(
        "SELECT count(*) FROM session_tokens WHERE account_id = ?", (user.id,)).one()[0]
    assert count == 3  # the expired one went too
