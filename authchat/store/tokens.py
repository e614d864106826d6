"""Session tokens: the store's SQL for them, inside the caller's transaction.

A token is 256 random bits, given to the client once; the table keeps only
its SHA-256, which is enough to look it up by (an index on a hash of a
secret this long tells a timing attacker nothing) and useless to anyone who
reads the file. Each row is bound to its account and to the account's
`password_version` at issue, and ends with it: `revoke_all` runs in the
same transaction as every change that must end them (migration 0007).

`Store` owns the transactions and the audit; this module only the
statements, so that the account changes in the package's `__init__` can
end tokens without the store's modules importing each other both ways.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from ..timestamps import to_seconds
from .sqlite import Connection, Row

TOKEN_BYTES = 32  # 256 bits


def new_token() -> str:
    """A fresh token, URL-safe text, for the client alone to keep."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def insert(conn: Connection, token: str, account_id: int, password_version: int,
           lifetime: timedelta, keep: int) -> str:
    """Store `token` for the account, and drop its expired tokens and, past
    `keep`, its oldest: a login loop must not grow the table without bound.
    Returns when the token expires."""
    now = datetime.now(UTC)
    expires_at = to_seconds(now + lifetime)
    conn.execute("DELETE FROM session_tokens WHERE account_id = ? AND expires_at <= ?",
                 (account_id, to_seconds(now)))
    conn.execute("INSERT INTO session_tokens (token_hash, account_id, password_version, "
                 "created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                 (token_hash(token), account_id, password_version, to_seconds(now), expires_at))
    conn.execute("DELETE FROM session_tokens WHERE account_id = ? AND id NOT IN "
                 "(SELECT id FROM session_tokens WHERE account_id = ? "
                 "ORDER BY id DESC LIMIT ?)", (account_id, account_id, keep))
    return expires_at


def account_of(conn: Connection, token: str, now: str, user_columns: str) -> Row | None:
    """The account a token logs in (`user_columns` of its users row), if the
    token is known and unexpired, of the account's current password, and the
    account enabled; else None, whichever it is. One statement: the token and
    the account as of one moment."""
    columns = ", ".join(f"u.{name.strip()}" for name in user_columns.split(","))
    return conn.execute(
        f"SELECT {columns} FROM session_tokens AS t JOIN users AS u ON u.id = t.account_id "
        "WHERE t.token_hash = ? AND t.expires_at > ? AND u.disabled = 0 "
        "AND u.password_version = t.password_version",
        (token_hash(token), now)).fetchone()


def revoke(conn: Connection, token: str) -> bool:
    """End one token (a logout); whether it existed."""
    return conn.execute("DELETE FROM session_tokens WHERE token_hash = ?",
                        (token_hash(token),)).rowcount > 0


def revoke_all(conn: Connection, account_id: int) -> int:
    """End every token of the account; how many there were."""
    return conn.execute("DELETE FROM session_tokens WHERE account_id = ?",
                        (account_id,)).rowcount
