"""The store: every SQL statement authchat runs lives in this package.

This module has the connections, transactions and migrations, and the
accounts, invites, session tokens and audit log; `messages.py` has the
message history, `tokens.py` the session tokens' statements.

Threading model. A server thread and admin commands in other processes may
all use one database file at once, so:
  - WAL mode, so readers never wait for the writer;
  - one SQLite connection per thread (thread-local; apsw, see sqlite.py), in
    autocommit mode, and an explicit `BEGIN IMMEDIATE` for every write, so a
    transaction takes the write lock before reading and the busy timeout
    applies (a deferred transaction that upgrades to a write gets
    SQLITE_BUSY with no wait);
  - bcrypt never runs inside a transaction: it is slow by design, and the
    write lock is shared by every process.
Each account change and its audit row are written in the same transaction,
so either both are there or neither is.

No sockets, no click, no printing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..config import Config, ensure_private_dir
from ..errors import (
    AccountDisabled,
    BadCredentials,
    NoSuchInvite,
    NoSuchUser,
    PasswordChanged,
    RegistrationClosed,
    SchemaError,
    StorageError,
    StoreBusy,
    UsernameTaken,
)
from ..passwords import PasswordHasher, PasswordPolicy
from ..timestamps import to_seconds, utc_now
from ..usernames import skeleton, validate_username
from . import schema, sqlite, tokens
from .schema import Migration

log = logging.getLogger(__name__)

# What SQLite raises when a read fails: for the few callers that must catch it.
DatabaseError = sqlite.Error

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 3
SQLITE_WAL_RESET_FIXED = (3, 51, 3)
ROLES = ("user", "admin")
MAX_TOKEN_LENGTH = 128  # a session token is 43 characters; longer is no token of ours
SESSION_ENDED = "the session token is unknown, expired or revoked; log in with the password"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    disabled: bool
    created_at: str
    updated_at: str
    last_login_at: str | None
    password_version: int  # counts password changes


@dataclass(frozen=True)
class Invite:
    id: int
    role: str
    max_uses: int
    uses: int
    expires_at: str | None
    revoked_at: str | None
    created_at: str
    created_by: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class Store:
    """Accounts, invites, session tokens and the audit log in one SQLite file."""

    def __init__(self, path: Path, *, hasher: PasswordHasher, policy: PasswordPolicy) -> None:
        self.path = Path(path)
        self.hasher = hasher
        self.policy = policy
        self._local = threading.local()
        self._connections: list[sqlite.Connection] = []
        self._connections_lock = threading.Lock()
        self._create_file()

    @classmethod
    def from_config(cls, config: Config) -> Store:
        return cls(
            config.database_path,
            hasher=PasswordHasher(config.auth.bcrypt_cost),
            policy=PasswordPolicy(config.auth.min_password_length),
        )

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- connections and transactions ------------------------------------

    def _create_file(self) -> None:
        """Create the database file readable by its owner only, before SQLite does."""
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)

    def connection(self) -> sqlite.Connection:
        """This thread's connection, opened on first use; each is used by its
        own thread alone (close() may close them all)."""
        conn: sqlite.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite.connect(self.path, BUSY_TIMEOUT_MS)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite.Connection]:
        """A write transaction: commits on success, rolls back on any exception.

        Raises:
            StoreBusy: the write lock stayed taken through the busy timeout
                and a few jittered retries; nothing was written.
            StorageError: SQLite could not write (disk full, I/O error);
                nothing was written.
        """
        conn = self.connection()
        _begin_immediate(conn)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # SQLite may already have rolled back (disk full)
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite.Error) and not isinstance(e, sqlite.IntegrityError):
                raise StorageError(f"database error: {e}") from e
            raise

    def pragmas(self) -> dict[str, Any]:
        conn = self.connection()
        return {name: conn.execute(f"PRAGMA {name}").one()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}

    def data_version(self) -> int:
        """Changes when any other connection (another thread or process) commits."""
        return int(self.connection().execute("PRAGMA data_version").one()[0])

    def check_health(self) -> None:
        """Check the file at start-up.

        Raises:
            SchemaError: SQLite's quick_check finds the file damaged.
        """
        if sqlite.sqlite_version_info < SQLITE_WAL_RESET_FIXED:
            # Server and admin CLI are exactly the concurrent writers the bug needs.
            # The apsw that pyproject.toml asks for has a fixed SQLite: only an
            # install that got round that requirement can see this.
            log.warning("SQLite %s has the WAL-reset bug fixed in 3.51.3; a database written "
                        "by the server and the admin CLI at once could be damaged. Install "
                        "apsw 3.51.3 or newer", sqlite.sqlite_version)
        result = self.connection().execute("PRAGMA quick_check").one()[0]
        if result != "ok":
            raise SchemaError(f"database {self.path} is damaged: {result}")

    # -- migrations -------------------------------------------------------

    def schema_version(self) -> int:
        return schema.version(self.connection())

    def pending_migrations(self) -> list[Migration]:
        return schema.pending(self.connection())

    def migrate(self) -> list[Migration]:
        """Apply every pending migration, each in its own transaction.

        Safe to run from several processes at once: each re-reads the version
        after taking the write lock, so a migration is applied exactly once.

        Raises:
            SchemaError: the database is newer than this code knows.
        """
        applied = []
        for migration in schema.known_migrations():
            with self.transaction() as conn:
                if schema.apply(conn, migration, utc_now()):
                    applied.append(migration)
                    log.info("applied migration %04d_%s", migration.version, migration.name)
        return applied

    def ensure_schema(self) -> None:
        """Refuse a database newer than this code, and bring an older one up to date."""
        if self.pending_migrations():
            self.migrate()

    # -- users ------------------------------------------------------------

    def create_user(self, username: str, password: str, *, actor: str, role: str = "user",
                    invite: str | None = None, allow_reserved: bool = False) -> User:
        """Create an account, redeeming `invite` (which then sets the role) if given.

        An unusable invite is refused before anything else is looked at: the
        reply must not say whether the name is taken to someone who may not
        register, nor cost a bcrypt.

        Raises:
            RegistrationClosed: the invite is unknown, used up, expired or revoked.
            InvalidUsername, InvalidPassword: the name or password breaks the policy.
            UsernameTaken: the name exists in any letter case, or one that looks
                like it (usernames.skeleton).
        """
        if invite is not None and not _invite_usable(self.connection(), invite, utc_now()):
            raise RegistrationClosed(INVITE_UNUSABLE)
        validate_username(username, allow_reserved=allow_reserved)
        _check_role(role)
        self.policy.check(password, username)
        shape = skeleton(username)
        _refuse_taken(self.connection(), username, shape)  # before the hash: it costs none
        password_hash = self.hasher.hash(password)  # outside the transaction: slow
        now = utc_now()
        with self.transaction() as conn:
            # Again under the write lock, so that the check and the insert are
            # one step: no other process can add a look-alike in between.
            _refuse_taken(conn, username, shape)
            detail: dict[str, Any] = {}
            if invite is not None:
                detail["invite"], role = _redeem_invite(conn, invite, now)
            try:
                cursor = conn.execute(
                    "INSERT INTO users (username, password_hash, role, created_at, updated_at,"
                    " name_skeleton) VALUES (?, ?, ?, ?, ?, ?)",
                    (username, password_hash, role, now, now, shape))
            except sqlite.IntegrityError:
                raise UsernameTaken() from None
            audit(conn, actor, "user.create", username, {"role": role, **detail})
            return self._user_by_id(conn, cursor.lastrowid)

    def authenticate(self, username: str, password: str) -> User:
        """Check a login, spending one bcrypt whether or not the user exists.

        A hash made with an outdated scheme or a lower cost than configured is
        replaced on success, and the last-login time recorded.

        Raises:
            BadCredentials: unknown user or wrong password, indistinguishably.
            AccountDisabled: only after a correct password.
        """
        row = None
        if isinstance(username, str) and len(username) <= 64:
            row = self.connection().execute(
                f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE username = ?",
                (username,)).fetchone()
        if not self.hasher.verify(password, row["password_hash"] if row else None):
            raise BadCredentials(account_exists=row is not None)
        assert row is not None
        if row["disabled"]:
            raise AccountDisabled()
        new_hash = None
        if self.hasher.needs_rehash(row["password_hash"]):
            new_hash = self.hasher.hash(password)
        try:
            return self._record_login(row["id"], row["password_version"], new_hash, utc_now())
        except NoSuchUser:  # deleted, or its password changed, while we were hashing
            raise BadCredentials(account_exists=True) from None
        except StorageError as e:
            # The password was right; a full disk should not lock everyone out.
            log.warning("could not record the login of user id %d: %s", row["id"], e)
            return _user(row)

    def _record_login(self, user_id: int, verified_version: int, new_hash: str | None,
                      now: str) -> User:
        """Record a login checked against the password of `verified_version`,
        only if that is still the account's password: one changed while the
        hash was checked (an admin's reset) must not let the old one in, with
        a session that would know only the new version. A rehash keeps the
        version, so logins at the same time all go through.

        Raises:
            NoSuchUser: the account is gone, or its password changed meanwhile.
        """
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET last_login_at = ?, password_hash = coalesce(?, password_hash)"
                " WHERE id = ? AND password_version = ?",
                (now, new_hash, user_id, verified_version))
            if cursor.rowcount == 0:
                raise NoSuchUser()
            return self._user_by_id(conn, user_id)

    def get_user(self, username: str) -> User:
        row = self.connection().execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise NoSuchUser(f"no such user: {username}")
        return _user(row)

    def get_user_by_id(self, user_id: int) -> User:
        return self._user_by_id(self.connection(), user_id)

    def list_users(self) -> list[User]:
        rows = self.connection().execute(
            f"SELECT {_USER_COLUMNS} FROM users ORDER BY username COLLATE NOCASE")
        return [_user(row) for row in rows]

    def lookup_users(self, usernames: set[str]) -> dict[str, User]:
        """The accounts that exist among `usernames`, keyed by lower-cased name."""
        return {user.username.lower(): user for user in self._users_in("username", usernames)}

    def users_by_id(self, user_ids: set[int]) -> dict[int, User]:
        """The accounts that still exist among `user_ids`."""
        return {user.id: user for user in self._users_in("id", user_ids)}

    def _users_in(self, column: str, values: set[Any]) -> Iterator[User]:
        ordered = sorted(values)
        for start in range(0, len(ordered), 500):  # stay under SQLite's variable limit
            chunk = ordered[start:start + 500]
            yield from map(_user, self.connection().execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE {column} IN "
                f"({', '.join('?' * len(chunk))})", chunk))

    def password_hash(self, username: str) -> str:
        """The stored hash, for tests and `db` diagnostics; never logged."""
        row = self.connection().execute(
            "SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            raise NoSuchUser(f"no such user: {username}")
        return str(row["password_hash"])

    def change_password(self, user_id: int, old: str, new: str, *, known_version: int,
                        actor: str) -> User:
        """A user's own change: `old` must be the password of `known_version`,
        and the change is written only if that is still the current version.

        The check and the write are one compare-and-swap on password_version,
        so a change made meanwhile (an admin's reset) is never overwritten by
        one checked against the password it replaced.

        Raises:
            PasswordChanged: the password is no longer that of `known_version`;
                nothing was written.
            BadCredentials: `old` is wrong.
            InvalidPassword: `new` breaks the policy.
        """
        row = self.connection().execute(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE id = ?",
            (user_id,)).fetchone()
        if row is None or row["password_version"] != known_version:
            raise PasswordChanged()
        self.policy.check(new, row["username"])  # first: it costs no hash
        if not self.hasher.verify(old, row["password_hash"]):
            raise BadCredentials()
        password_hash = self.hasher.hash(new)  # outside the transaction: slow
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE users SET password_hash = ?, password_version = password_version + 1,"
                " updated_at = ? WHERE id = ? AND password_version = ?",
                (password_hash, utc_now(), user_id, known_version))
            if cursor.rowcount == 0:
                raise PasswordChanged()
            ended = tokens.revoke_all(conn, user_id)
            audit(conn, actor, "user.passwd", row["username"], _tokens_ended(ended))
            return self._user_by_id(conn, user_id)

    def set_password(self, username: str, password: str, *, actor: str) -> User:
        """An operator's reset: whatever the password was, it is now this one."""
        user = self.get_user(username)
        self.policy.check(password, user.username)
        password_hash = self.hasher.hash(password)
        with self.transaction() as conn:
            before = self._user_by_name(conn, username)
            conn.execute("UPDATE users SET password_hash = ?, password_version = "
                         "password_version + 1, updated_at = ? WHERE id = ?",
                         (password_hash, utc_now(), before.id))
            ended = tokens.revoke_all(conn, before.id)
            audit(conn, actor, "user.passwd", before.username, _tokens_ended(ended))
            return self._user_by_id(conn, before.id)

    def set_role(self, username: str, role: str, *, actor: str) -> User:
        _check_role(role)
        return self._update_user(username, actor, "user.role", {"role": role}, role=role)

    def set_disabled(self, username: str, disabled: bool, *, actor: str) -> User:
        """Disable (ending the account's session tokens too) or enable an account."""
        action = "user.disable" if disabled else "user.enable"
        return self._update_user(username, actor, action, {}, end_tokens=disabled,
                                 disabled=int(disabled))

    def delete_user(self, username: str, *, actor: str) -> User:
        """Delete an account; the DMs still waiting for it go with it, since
        nobody will ever be given them (its sent and received DMs stay, under
        its name, in the history and exports)."""
        with self.transaction() as conn:
            user = self._user_by_name(conn, username)
            tokens.revoke_all(conn, user.id)
            conn.execute("DELETE FROM users WHERE id = ?", (user.id,))
            dropped = conn.execute("DELETE FROM direct_messages WHERE recipient_id = ? "
                                   "AND delivered = 0", (user.id,)).rowcount
            audit(conn, actor, "user.delete", user.username,
                   {"role": user.role, **({"waiting_dms_dropped": dropped} if dropped else {})})
        return user

    def _update_user(self, username: str, actor: str, action: str, detail: dict[str, Any],
                     *, end_tokens: bool = False, **changes: Any) -> User:
        """Apply `changes` and audit them, or change nothing if the values are
        already so; with `end_tokens`, a change ends the account's session tokens."""
        with self.transaction() as conn:
            before = self._user_by_name(conn, username)
            assignments = ", ".join(f"{column} = ?" for column in changes)
            cursor = conn.execute(
                f"UPDATE users SET {assignments}, updated_at = ? WHERE id = ? AND NOT "
                f"({' AND '.join(f'{column} IS ?' for column in changes)})",
                (*changes.values(), utc_now(), before.id, *changes.values()))
            if cursor.rowcount:
                ended = tokens.revoke_all(conn, before.id) if end_tokens else 0
                audit(conn, actor, action, before.username, {**detail, **_tokens_ended(ended)})
            return self._user_by_id(conn, before.id)

    def _user_by_name(self, conn: sqlite.Connection, username: str) -> User:
        row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?",
                           (username,)).fetchone()
        if row is None:
            raise NoSuchUser(f"no such user: {username}")
        return _user(row)

    def _user_by_id(self, conn: sqlite.Connection, user_id: int | None) -> User:
        row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise NoSuchUser()
        return _user(row)

    # -- session tokens ---------------------------------------------------

    def issue_token(self, user: User, *, lifetime: timedelta, keep: int) -> tuple[str, str]:
        """A session token for `user`, who has just logged in with its password,
        and when it expires. It is bound to the password that login checked: if
        that has changed since, the token is born revoked. The account keeps
        at most `keep` tokens, the newest.

        Raises:
            NoSuchUser: the account was deleted meanwhile.
        """
        token = tokens.new_token()
        with self.transaction() as conn:
            self._user_by_id(conn, user.id)
            expires_at = tokens.insert(conn, token, user.id, user.password_version, lifetime,
                                       keep)
        return token, expires_at

    def resume(self, token: str) -> User:
        """The account a session token logs in, without a hash. A read only: a
        storm of reconnects costs no commits.

        Raises:
            BadCredentials: the token is unknown, expired or revoked, or its
                account's password changed or the account is disabled, alike.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise BadCredentials(SESSION_ENDED)
        row = tokens.account_of(self.connection(), token, utc_now(), _USER_COLUMNS)
        if row is None:
            raise BadCredentials(SESSION_ENDED)
        return _user(row)

    def revoke_token(self, token: str) -> bool:
        """End one session token (its client logged out); whether it was known."""
        with self.transaction() as conn:
            return tokens.revoke(conn, token)

    def revoke_tokens(self, username: str, *, actor: str) -> int:
        """End every session token of the account (`users sessions revoke`),
        audited if there were any; how many there were."""
        with self.transaction() as conn:
            user = self._user_by_name(conn, username)
            ended = tokens.revoke_all(conn, user.id)
            if ended:
                audit(conn, actor, "user.sessions_revoke", user.username, _tokens_ended(ended))
            return ended

    # -- invites ----------------------------------------------------------

    def create_invite(self, *, actor: str, uses: int = 1, expires_in: timedelta | None,
                      role: str = "user") -> tuple[Invite, str]:
        """Create an invite; returns it with its token, which is stored only as a hash."""
        _check_role(role)
        if uses < 1:
            raise ValueError("uses must be at least 1")
        token = secrets.token_urlsafe(24)
        created = datetime.now(UTC)
        expires = to_seconds(created + expires_in) if expires_in is not None else None
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO invites (token_hash, role, max_uses, expires_at, created_at,"
                " created_by) VALUES (?, ?, ?, ?, ?, ?)",
                (tokens.token_hash(token), role, uses, expires, to_seconds(created), actor))
            invite_id = cursor.lastrowid
            audit(conn, actor, "invite.create", f"invite:{invite_id}",
                   {"role": role, "uses": uses, "expires_at": expires})
            row = conn.execute(f"SELECT {_INVITE_COLUMNS} FROM invites WHERE id = ?",
                               (invite_id,)).one()
        return Invite(**row), token

    def list_invites(self) -> list[Invite]:
        rows = self.connection().execute(f"SELECT {_INVITE_COLUMNS} FROM invites ORDER BY id")
        return [Invite(**row) for row in rows]

    def revoke_invite(self, invite_id: int, *, actor: str) -> None:
        with self.transaction() as conn:
            cursor = conn.execute("UPDATE invites SET revoked_at = ? WHERE id = ?"
                                  " AND revoked_at IS NULL", (utc_now(), invite_id))
            if cursor.rowcount == 0:
                if conn.execute("SELECT 1 FROM invites WHERE id = ?", (invite_id,)).fetchone():
                    return  # already revoked: nothing changes, nothing to audit
                raise NoSuchInvite(f"no such invite: {invite_id}")
            audit(conn, actor, "invite.revoke", f"invite:{invite_id}", {})

    # -- audit log --------------------------------------------------------

    def audit_entries(self, limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` entries, oldest first."""
        rows = self.connection().execute(
            "SELECT * FROM (SELECT id, ts, actor, action, target, detail FROM audit_log"
            " ORDER BY id DESC LIMIT ?) ORDER BY id", (limit,))
        return [AuditEntry(row["id"], row["ts"], row["actor"], row["action"], row["target"],
                           json.loads(row["detail"])) for row in rows]


_USER_COLUMNS = ("id, username, role, disabled, created_at, updated_at, last_login_at, "
                 "password_version")
_INVITE_COLUMNS = "id, role, max_uses, uses, expires_at, revoked_at, created_at, created_by"


def _user(row: sqlite.Row) -> User:
    return User(row["id"], row["username"], row["role"], bool(row["disabled"]),
                row["created_at"], row["updated_at"], row["last_login_at"],
                row["password_version"])


def _tokens_ended(count: int) -> dict[str, Any]:
    """An audit detail for the session tokens a change ended, if it ended any."""
    return {"session_tokens_ended": count} if count else {}


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")


def _refuse_taken(conn: sqlite.Connection, username: str, shape: str) -> None:
    """Raise UsernameTaken if an account has this name or one that looks like it."""
    row = conn.execute("SELECT username FROM users WHERE username = ? OR name_skeleton = ?"
                       " LIMIT 1", (username, shape)).fetchone()
    if row is None:
        return
    if row["username"].lower() == username.lower():
        raise UsernameTaken()
    raise UsernameTaken("that username looks too much like one that is taken")


_USABLE_INVITE = ("token_hash = ? AND revoked_at IS NULL AND uses < max_uses"
                  " AND (expires_at IS NULL OR expires_at > ?)")
INVITE_UNUSABLE = "invite is invalid, used up or expired"


def _invite_usable(conn: sqlite.Connection, token: str, now: str) -> bool:
    """Whether the invite could be redeemed now: a read, so it decides nothing
    (`_redeem_invite` does, atomically); it only turns away early what must fail."""
    return conn.execute(f"SELECT 1 FROM invites WHERE {_USABLE_INVITE}",
                        (tokens.token_hash(token), now)).fetchone() is not None


def _redeem_invite(conn: sqlite.Connection, token: str, now: str) -> tuple[int, str]:
    """Use up one use of an invite inside the caller's transaction.

    The single conditional UPDATE is what makes redemption atomic: of two
    concurrent redemptions of a last use, only one matches the WHERE clause.
    """
    token_hash = tokens.token_hash(token)
    cursor = conn.execute(f"UPDATE invites SET uses = uses + 1 WHERE {_USABLE_INVITE}",
                          (token_hash, now))
    if cursor.rowcount == 0:
        raise RegistrationClosed(INVITE_UNUSABLE)
    row = conn.execute("SELECT id, role FROM invites WHERE token_hash = ?", (token_hash,)).one()
    return row["id"], row["role"]


def audit(conn: sqlite.Connection, actor: str, action: str, target: str,
          detail: dict[str, Any]) -> None:
    """Write one audit row in the caller's transaction (`Store.transaction`),
    so that the change it records and the row commit together, or neither.
    For every module of the store; the log is read with `Store.audit_entries`."""
    conn.execute("INSERT INTO audit_log (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                 (utc_now(), actor, action, target, json.dumps(detail, sort_keys=True)))


def _begin_immediate(conn: sqlite.Connection) -> None:
    # The busy timeout already waits for the lock; these retries only cover
    # the rare case where it runs out under heavy contention.
    for attempt in range(BUSY_RETRIES + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite.BUSY_ERRORS:
            if attempt == BUSY_RETRIES:
                raise StoreBusy() from None
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))


def _enable_wal(conn: sqlite.Connection) -> None:
    """Switch to WAL (a lasting property of the file) unless it is on already.

    The switch needs a moment of exclusive access, and SQLite reports a
    conflict with another connection doing the same without waiting on the
    busy timeout, so a few processes opening a new database at once retry.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").one()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite.BUSY_ERRORS:
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))
