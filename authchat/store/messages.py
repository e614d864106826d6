"""The message history: room messages and direct messages, in the store's file.

Writes come in batches (`append`), one transaction each, so that a server
can commit many messages with one sync of the disk; SQLite assigns the ids,
and AUTOINCREMENT keeps them strictly increasing across restarts and purges.
Reads are pages in id order. Pruning deletes in bounded batches, each its
own short transaction, so that it never holds the write lock long enough to
stall the messages being written meanwhile.

Names, not account ids: a deleted account's messages stay, under its name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from datetime import UTC, datetime, timedelta

from . import Store, _audit

MAX_PAGE = 200
PRUNE_BATCH = 1000
WRITER_CACHE_KIB = 256
_COLUMNS = "id, ts, sender, recipient, text"


class NewMessage(NamedTuple):
    """A message accepted, not yet stored: `recipient` None for the room.

    A tuple in the INSERT's column order, so a batch goes to SQLite as it is.
    """

    ts: str
    sender: str
    text: str
    recipient: str | None = None
    delivered: bool = True  # False: a DM for someone with no session, kept for them


@dataclass(frozen=True)
class StoredMessage:
    id: int
    ts: str
    sender: str
    recipient: str | None
    text: str


class MessageLog:
    """Room messages and DMs in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def prepare_writer(self) -> None:
        """Open this thread's connection for appending.

        A writer that only appends needs a small page cache: SQLite's default
        is 2 MiB a connection, which it would fill with pages it never reads.
        """
        self.store.connection().execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")

    def append(self, messages: Sequence[NewMessage]) -> list[int]:
        """Store `messages` in one transaction, in order; returns their ids.

        The ids are consecutive: the transaction holds the write lock, so no
        other insert comes between, and AUTOINCREMENT gives each row the
        highest id yet plus one.

        Raises:
            StoreBusy, StorageError: nothing was stored.
        """
        if not messages:
            return []
        with self.store.transaction() as conn:
            conn.executemany("INSERT INTO messages (ts, sender, text, recipient, delivered) "
                             "VALUES (?, ?, ?, ?, ?)", messages)
            last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - len(messages) + 1, last + 1))

    def last_id(self) -> int:
        """The highest id ever given (deleted rows included); 0 before the first."""
        row = self.store.connection().execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return int(row[0]) if row else 0

    def room_page(self, before: int | None = None,
                  limit: int = MAX_PAGE) -> tuple[list[StoredMessage], bool]:
        """Up to `limit` room messages older than `before` (None: the newest),
        oldest first, and whether there are older ones still."""
        return self._page("recipient IS NULL", (), before, limit)

    def dm_page(self, account: str, other: str, before: int | None = None,
                limit: int = MAX_PAGE) -> tuple[list[StoredMessage], bool]:
        """The same for the direct messages between `account` and `other`, both ways."""
        return self._page("((sender = ? AND recipient = ?) OR (sender = ? AND recipient = ?))",
                          (account, other, other, account), before, limit)

    def _page(self, where: str, args: tuple[str, ...], before: int | None,
              limit: int) -> tuple[list[StoredMessage], bool]:
        limit = max(1, min(limit, MAX_PAGE))
        bound = "" if before is None else " AND id < ?"
        rows = self.store.connection().execute(
            f"SELECT {_COLUMNS} FROM messages WHERE {where}{bound} ORDER BY id DESC LIMIT ?",
            (*args, *(() if before is None else (before,)), limit + 1)).fetchall()
        more = len(rows) > limit
        return [_message(row) for row in reversed(rows[:limit])], more

    def waiting_for(self, recipient: str) -> list[StoredMessage]:
        """The DMs kept for `recipient` while they had no session, oldest first."""
        rows = self.store.connection().execute(
            f"SELECT {_COLUMNS} FROM messages WHERE recipient = ? AND delivered = 0 "
            "ORDER BY id", (recipient,)).fetchall()
        return [_message(row) for row in rows]

    def mark_delivered(self, ids: Sequence[int]) -> None:
        self._set_delivered(ids, True)

    def mark_waiting(self, ids: Sequence[int]) -> None:
        """DMs whose recipient turned out to have no session: keep them for their login."""
        self._set_delivered(ids, False)

    def _set_delivered(self, ids: Sequence[int], delivered: bool) -> None:
        with self.store.transaction() as conn:
            conn.executemany("UPDATE messages SET delivered = ? WHERE id = ?",
                             [(int(delivered), i) for i in ids])

    def since(self, ts: str | None = None) -> Iterator[StoredMessage]:
        """Every message from `ts` on (None: all), oldest first, read in pages."""
        after = 0
        conn = self.store.connection()
        while True:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id > ? AND ts >= ? ORDER BY id LIMIT ?",
                (after, ts or "", PRUNE_BATCH)).fetchall()
            if not rows:
                return
            yield from (_message(row) for row in rows)
            after = rows[-1]["id"]

    def purge_before(self, ts: str, *, actor: str) -> int:
        """Delete every message older than `ts`, audit-logged; returns how many.

        One transaction, so the purge and its audit row are there, or neither.
        """
        with self.store.transaction() as conn:
            deleted = conn.execute("DELETE FROM messages WHERE ts < ?", (ts,)).rowcount
            _audit(conn, actor, "history.purge", "messages",
                   {"before": ts, "deleted": deleted})
        return deleted

    def prune(self, *, keep_days: float, max_messages: int, now: datetime | None = None,
              batch: int = PRUNE_BATCH) -> int:
        """Apply the retention rules (0 turns one off); returns how many went.

        Deletes at most `batch` rows a transaction, oldest first, so that
        writers wait at most one short batch.
        """
        total = 0
        cutoff = timestamp((now or datetime.now(UTC)) - timedelta(days=keep_days)) \
            if keep_days > 0 else ""
        while True:
            with self.store.transaction() as conn:
                last = _prune_bound(conn, cutoff, max_messages)
                if last is None:
                    return total
                deleted = conn.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id <= ? "
                    "ORDER BY id LIMIT ?)", (last, batch)).rowcount
            total += deleted
            if deleted < batch:
                return total


def _prune_bound(conn: sqlite3.Connection, cutoff: str, max_messages: int) -> int | None:
    """The highest id the rules let go, or None if nothing is due."""
    bounds = []
    if cutoff:
        # From the oldest up to the first young message: it reads only what goes.
        row = conn.execute("SELECT id FROM messages WHERE ts >= ? ORDER BY id LIMIT 1",
                           (cutoff,)).fetchone()
        newest_old = conn.execute("SELECT max(id) FROM messages WHERE id < ?",
                                  (row[0] if row else 2**63 - 1,)).fetchone()[0]
        if newest_old is not None:
            bounds.append(int(newest_old))
    if max_messages > 0:
        # Ids are dense (never reused, only the oldest deleted), so the newest
        # max_messages are those above this: found without reading the table.
        newest = conn.execute("SELECT max(id) FROM messages").fetchone()[0]
        if newest is not None and newest > max_messages:
            bounds.append(int(newest) - max_messages)
    return max(bounds) if bounds else None


def timestamp(moment: datetime) -> str:
    """As messages carry it (ISO-8601 UTC, milliseconds), so that text order is time order."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _message(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(row["id"], row["ts"], row["sender"], row["recipient"], row["text"])
