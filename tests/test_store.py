from __future__ import annotations

import stat
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authchat.config import Config, load_config
from authchat.errors import (
    AccountDisabled,
    BadCredentials,
    InvalidPassword,
    InvalidUsername,
    NoSuchInvite,
    NoSuchUser,
    PasswordChanged,
    RegistrationClosed,
    SchemaError,
    UsernameTaken,
)
from authchat.passwords import PasswordHasher, PasswordPolicy
from authchat.store import Store, schema, sqlite
from authchat.store.schema import known_migrations
from authchat.usernames import USERNAME_PATTERN, skeleton

from conftest import GOOD_PASSWORD, TEST_COST

OTHER_PASSWORD = "an entirely different phrase"


def tables(store: Store) -> set[str]:
    rows = store.connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


def test_migrations_from_empty_and_rerun(config: Config) -> None:
    store = Store.from_config(config)
    assert store.schema_version() == 0
    assert [m.version for m in store.pending_migrations()] == [m.version for m in known_migrations()]
    applied = store.migrate()
    assert [m.version for m in applied] == [1, 2, 3, 4, 5, 6, 7]
    assert {"users", "invites", "audit_log", "schema_migrations", "room_batches",
            "direct_messages", "message_ids", "session_tokens"} <= tables(store)
    assert store.migrate() == []
    assert store.pending_migrations() == []
    assert store.schema_version() == 7
    rows = store.connection().execute("SELECT version, name FROM schema_migrations").fetchall()
    assert [tuple(r) for r in rows] == [(1, "initial"), (2, "password_version"),
                                        (3, "messages"), (4, "room_batches"),
                                        (5, "account_ids"), (6, "name_skeletons"),
                                        (7, "session_tokens")]


def test_concurrent_migrations_apply_once(config: Config) -> None:
    stores = [Store.from_config(config) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def migrate(store: Store) -> None:
        barrier.wait()
        try:
            store.migrate()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    count = stores[0].connection().execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    assert count == len(known_migrations())  # each applied once


def test_newer_schema_is_refused(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    with pytest.raises(SchemaError, match="newer"):
        store.ensure_schema()
    with pytest.raises(SchemaError):
        store.migrate()
    assert store.schema_version() == 999  # nothing was downgraded


def test_files_are_private_and_pragmas_set(config: Config) -> None:
    store = Store.from_config(config)
    store.migrate()
    assert stat.S_IMODE(config.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.database_path.stat().st_mode) == 0o600
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 5000,
                               "foreign_keys": 1}


def test_usernames_are_unique_case_insensitively(store: Store) -> None:
    store.create_user("Alice", GOOD_PASSWORD, actor="test")
    for name in ("alice", "ALICE", "aLiCe"):
        with pytest.raises(UsernameTaken):
            store.create_user(name, OTHER_PASSWORD, actor="test")
    assert store.get_user("ALICE").username == "Alice"  # display form as registered
    assert store.authenticate("alice", GOOD_PASSWORD).username == "Alice"
    assert [u.username for u in store.list_users()] == ["Alice"]


def test_the_store_runs_on_a_sqlite_with_the_wal_reset_fix(store: Store) -> None:
    # 3.7.0 to 3.51.2 can damage a WAL database that two processes write at
    # once, as the server and the admin CLI do; apsw brings its own SQLite.
    assert sqlite.sqlite_version_info >= (3, 51, 3)
    version = store.connection().execute("SELECT sqlite_version()").one()[0]
    assert version == sqlite.sqlite_version


@pytest.mark.parametrize("look_alike", ["aIice", "a_lice", "AL1CE", "alice.", "a-l-i-c-e"])
def test_a_name_that_looks_like_an_account_is_taken(store: Store, look_alike: str) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    with pytest.raises(UsernameTaken, match="looks too much like one that is taken"):
        store.create_user(look_alike, GOOD_PASSWORD, actor="register")
    with pytest.raises(UsernameTaken, match="looks too much like"):  # operators too
        store.create_user(look_alike, GOOD_PASSWORD, actor="cli:op", allow_reserved=True)
    assert [u.username for u in store.list_users()] == ["alice"]
    store.delete_user("alice", actor="cli:op")
    assert store.create_user(look_alike, GOOD_PASSWORD, actor="register")  # free again


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.from_regex(USERNAME_PATTERN, fullmatch=True), min_size=1,
                      max_size=20, unique_by=str.lower))
def test_migration_0006_computes_the_skeleton_as_usernames_does(tmp_path_factory: Any,
                                                               names: list[str]) -> None:
    home = tmp_path_factory.mktemp("home")
    store = Store(home / "authchat.db", hasher=PasswordHasher(TEST_COST),
                  policy=PasswordPolicy(15))
    with store.transaction() as conn:
        for migration in known_migrations():
            if migration.version <= 5:
                schema.apply(conn, migration, "2026-12-01T00:00:00Z")
        conn.executemany("INSERT INTO users (username, password_hash, created_at, updated_at)"
                         " VALUES (?, 'x', 'then', 'then')", [(name,) for name in names])
    store.migrate()
    rows = store.connection().execute("SELECT username, name_skeleton FROM users")
    assert {row["username"]: row["name_skeleton"] for row in rows} == \
        {name: skeleton(name) for name in names}
    store.close()


def test_the_constraint_itself_refuses_case_variants(store: Store) -> None:
    # Not just a check in Python: the database refuses it too.
    store.create_user("Alice", GOOD_PASSWORD, actor="test")
    with pytest.raises(sqlite.IntegrityError, match="UNIQUE"):
        with store.transaction() as conn:
            conn.execute("INSERT INTO users (username, password_hash, created_at, updated_at,"
                         " name_skeleton) VALUES ('ALICE', 'x', 'now', 'now', 'alice')")


def test_an_older_servers_writes_fail_loudly_on_a_migrated_file(store: Store) -> None:
    """What a server from before migrations 0005 and 0006 would write, still
    running on the file: refused, not stored where nothing reads it."""
    for insert in ("INSERT INTO users (username, password_hash, created_at, updated_at)"
                   " VALUES ('bob', 'x', 'now', 'now')",
                   "INSERT INTO direct_messages (id, ts, sender, recipient, text, delivered)"
                   " VALUES (1, 'now', 'alice', 'bob', 'hi', 0)"):
        with pytest.raises(sqlite.IntegrityError, match="older than the database"):
            with store.transaction() as conn:
                conn.execute(insert)


def test_create_user_validates_before_writing(store: Store) -> None:
    with pytest.raises(InvalidUsername):
        store.create_user("al ice", GOOD_PASSWORD, actor="test")
    with pytest.raises(InvalidUsername, match="reserved"):
        store.create_user("admin", GOOD_PASSWORD, actor="test")
    with pytest.raises(InvalidPassword):
        store.create_user("alice", "short", actor="test")
    assert store.list_users() == [] and store.audit_entries() == []
    assert store.create_user("admin", GOOD_PASSWORD, actor="cli", allow_reserved=True).role == "user"


def test_password_is_never_stored_in_clear(store: Store, config: Config) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    assert store.password_hash("alice").startswith("bcrypt-sha256:$2b$04$")
    store.close()
    for path in config.data_dir.iterdir():
        assert GOOD_PASSWORD.encode() not in path.read_bytes()


def test_authentication_outcomes(store: Store) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    user = store.authenticate("alice", GOOD_PASSWORD)
    assert user.last_login_at is not None
    with pytest.raises(BadCredentials) as wrong:
        store.authenticate("alice", OTHER_PASSWORD)
    with pytest.raises(BadCredentials) as unknown:
        store.authenticate("nobody", GOOD_PASSWORD)
    assert (wrong.value.code, str(wrong.value)) == (unknown.value.code, str(unknown.value))
    store.set_disabled("alice", True, actor="test")
    with pytest.raises(BadCredentials):  # wrong password says nothing about the account
        store.authenticate("alice", OTHER_PASSWORD)
    with pytest.raises(AccountDisabled):  # only after the right one
        store.authenticate("alice", GOOD_PASSWORD)
    store.set_disabled("alice", False, actor="test")
    assert store.authenticate("alice", GOOD_PASSWORD).username == "alice"


def test_login_rehashes_a_lower_cost_hash(store: Store, config: Config, tmp_path: Path) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    old_hash = store.password_hash("alice")
    stronger = load_config(None, env={"AUTHCHAT_HOME": str(config.data_dir),
                                      "AUTHCHAT_AUTH_BCRYPT_COST": str(TEST_COST + 1)})
    upgraded = Store.from_config(stronger)
    upgraded.authenticate("alice", GOOD_PASSWORD)
    new_hash = upgraded.password_hash("alice")
    assert new_hash != old_hash and new_hash.startswith("bcrypt-sha256:$2b$05$")
    assert store.authenticate("alice", GOOD_PASSWORD)  # still the same password
    upgraded.authenticate("alice", GOOD_PASSWORD)
    assert upgraded.password_hash("alice") == new_hash  # no rehash once up to date
    with pytest.raises(BadCredentials):
        upgraded.authenticate("alice", OTHER_PASSWORD)


def test_an_own_password_change_is_written_only_over_the_version_it_checked(
        store: Store) -> None:
    alice = store.create_user("alice", GOOD_PASSWORD, actor="test")
    store.set_password("alice", OTHER_PASSWORD, actor="cli:op")  # an admin's reset
    with pytest.raises(PasswordChanged):  # checked against the version before it
        store.change_password(alice.id, GOOD_PASSWORD, "a phrase the session wants",
                              known_version=alice.password_version, actor="user:alice")
    assert store.authenticate("alice", OTHER_PASSWORD).password_version == 1
    with pytest.raises(BadCredentials):
        store.change_password(alice.id, GOOD_PASSWORD, "a phrase the session wants",
                              known_version=1, actor="user:alice")
    changed = store.change_password(alice.id, OTHER_PASSWORD, "a phrase the session wants",
                                    known_version=1, actor="user:alice")
    assert changed.password_version == 2
    assert [e.actor for e in store.audit_entries()][-2:] == ["cli:op", "user:alice"]


def test_a_password_change_is_not_a_login(store: Store) -> None:
    alice = store.create_user("alice", GOOD_PASSWORD, actor="test")
    changed = store.change_password(alice.id, GOOD_PASSWORD, OTHER_PASSWORD,
                                    known_version=alice.password_version, actor="user:alice")
    assert (changed.password_version, changed.last_login_at) == (1, None)
    reset = store.set_password("alice", "a third phrase, for her", actor="cli:op")
    assert (reset.password_version, reset.last_login_at) == (2, None)
    assert store.get_user("alice").last_login_at is None
    assert [e.action for e in store.audit_entries()] == ["user.create", "user.passwd",
                                                         "user.passwd"]
    assert store.authenticate("alice", "a third phrase, for her").last_login_at is not None


def test_every_account_change_is_audited(store: Store) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="cli:op")
    store.set_password("alice", OTHER_PASSWORD, actor="cli:op")
    store.set_role("alice", "admin", actor="cli:op")
    store.set_disabled("alice", True, actor="cli:op")
    store.set_disabled("alice", True, actor="cli:op")  # no change: no row
    store.set_disabled("alice", False, actor="cli:op")
    store.delete_user("alice", actor="cli:op")
    entries = store.audit_entries()
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("cli:op", "user.create", "alice"), ("cli:op", "user.passwd", "alice"),
        ("cli:op", "user.role", "alice"), ("cli:op", "user.disable", "alice"),
        ("cli:op", "user.enable", "alice"), ("cli:op", "user.delete", "alice")]
    assert entries[2].detail == {"role": "admin"}
    assert all(e.ts.endswith("Z") for e in entries)
    assert [e.action for e in store.audit_entries(limit=2)] == ["user.enable", "user.delete"]


def test_audit_log_is_append_only(store: Store) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="test")
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(sqlite.IntegrityError, match="append-only"):
            with store.transaction() as conn:
                conn.execute(statement)
    assert len(store.audit_entries()) == 1


def test_changes_to_unknown_users_fail_cleanly(store: Store) -> None:
    for change in (lambda: store.set_role("ghost", "admin", actor="t"),
                   lambda: store.set_disabled("ghost", True, actor="t"),
                   lambda: store.set_password("ghost", GOOD_PASSWORD, actor="t"),
                   lambda: store.delete_user("ghost", actor="t"),
                   lambda: store.get_user("ghost")):
        with pytest.raises(NoSuchUser):
            change()
    assert store.audit_entries() == []


def test_invites_set_role_and_count_uses(store: Store) -> None:
    invite, token = store.create_invite(actor="cli:op", uses=2, expires_in=timedelta(days=7),
                                        role="admin")
    assert (invite.uses, invite.max_uses, invite.role) == (0, 2, "admin")
    assert store.create_user("alice", GOOD_PASSWORD, actor="net", invite=token).role == "admin"
    assert store.create_user("bob", GOOD_PASSWORD, actor="net", invite=token).role == "admin"
    with pytest.raises(RegistrationClosed):
        store.create_user("carol", GOOD_PASSWORD, actor="net", invite=token)
    assert store.list_invites()[0].uses == 2
    create = [e for e in store.audit_entries() if e.action == "user.create"]
    assert create[0].detail == {"role": "admin", "invite": invite.id}


def test_expired_revoked_and_bogus_invites(store: Store) -> None:
    _, expired = store.create_invite(actor="t", expires_in=timedelta(seconds=-1))
    revoked_invite, revoked = store.create_invite(actor="t", expires_in=None)
    store.revoke_invite(revoked_invite.id, actor="t")
    for token in (expired, revoked, "not-a-token"):
        with pytest.raises(RegistrationClosed):
            store.create_user("alice", GOOD_PASSWORD, actor="net", invite=token)
    with pytest.raises(NoSuchInvite):
        store.revoke_invite(999, actor="t")
    assert store.list_users() == []
    assert [e.action for e in store.audit_entries()] == [
        "invite.create", "invite.create", "invite.revoke"]


def test_a_bogus_invite_is_refused_before_the_name_is_looked_up_or_hashed(
        store: Store, config: Config) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="t")
    # A hasher bcrypt refuses to run (cost 3 is below its minimum): any hash
    # raises ValueError, so getting RegistrationClosed shows none was tried.
    unable_to_hash = Store(config.database_path, hasher=PasswordHasher(3),
                           policy=PasswordPolicy())
    try:
        for name in ("alice", "bob"):  # taken or not: the same refusal
            with pytest.raises(RegistrationClosed):
                unable_to_hash.create_user(name, GOOD_PASSWORD, actor="net", invite="bogus")
    finally:
        unable_to_hash.close()
    assert [u.username for u in store.list_users()] == ["alice"]


def test_failed_registration_does_not_use_up_the_invite(store: Store) -> None:
    store.create_user("alice", GOOD_PASSWORD, actor="t")
    _, token = store.create_invite(actor="t", expires_in=None)
    with pytest.raises(UsernameTaken):
        store.create_user("ALICE", GOOD_PASSWORD, actor="net", invite=token)
    assert store.list_invites()[0].uses == 0
    store.create_user("bob", GOOD_PASSWORD, actor="net", invite=token)


def test_invite_token_is_stored_only_as_a_hash(store: Store, config: Config) -> None:
    _, token = store.create_invite(actor="t", expires_in=None)
    store.close()
    assert token.encode() not in config.database_path.read_bytes()


def test_concurrent_redemptions_of_a_single_use_invite(config: Config) -> None:
    first = Store.from_config(config)
    first.migrate()
    _, token = first.create_invite(actor="t", uses=1, expires_in=None)
    contenders = 8
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []

    def redeem(i: int) -> None:
        store = Store.from_config(config)  # its own connection, as another process would have
        barrier.wait()
        try:
            store.create_user(f"user{i}", GOOD_PASSWORD, actor="net", invite=token)
            outcomes.append("ok")
        except RegistrationClosed:
            outcomes.append("closed")

    threads = [threading.Thread(target=redeem, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["closed"] * (contenders - 1) + ["ok"]
    assert len(first.list_users()) == 1
    assert first.list_invites()[0].uses == 1


def test_many_threads_writing_at_once(store: Store) -> None:
    def add(worker: int) -> None:
        for n in range(25):
            store.create_user(f"w{worker}n{n}", GOOD_PASSWORD, actor="t")
            store.set_role(f"w{worker}n{n}", "admin", actor="t")

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(store.list_users()) == 200
    assert len(store.audit_entries(limit=1000)) == 400
