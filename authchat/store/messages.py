"""The message history: room messages and direct messages, in the store's file.

Writes come in batches (`append`), one transaction each, so that a server
can commit many messages with one sync of the disk. The room's messages of
a batch go into one row of `room_batches` as a JSON list (a few rows when DMs
come between them, or past MAX_ROW_MESSAGES), because a row a message cost
SQLite 6.4 µs a message, a fifth and more of the server's broadcast
throughput (migration 0004); DMs stay a row each in `direct_messages`, where
they are paged per pair of people and marked as given. Both take their ids
from one counter in the same transaction, so ids are strictly increasing
across restarts and purges, and consecutive within a batch.

Reads are pages in id order. Pruning deletes in bounded batches, each its
own short transaction, so that it never holds the write lock long enough to
stall the messages being written meanwhile.

DMs belong to accounts: each carries its sender's and recipient's account
ids (migration 0005), and conversations and waiting DMs are found by those,
so a name that passes to a new account brings none of the old one's DMs.
Names are kept too, as they were when the message was sent: a deleted
account's messages stay, under its name, in the history and in exports.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from ..timestamps import timestamp  # the form messages carry: text order is time order
from . import Store, audit
from .sqlite import Connection, Row

MAX_PAGE = 200
PRUNE_BATCH = 1000  # DMs, and room messages, a pruning transaction deletes, about
# A room row holds at most this many messages, so that reading one for a page
# or cutting one for retention stays small whatever the commit's size.
MAX_ROW_MESSAGES = 256
ROWS_A_READ = max(1, PRUNE_BATCH // MAX_ROW_MESSAGES)  # room rows an export reads at once
WRITER_CACHE_KIB = 256
_DM_COLUMNS = "id, ts, sender, recipient, text"
_BATCH_COLUMNS = "last_id, first_id, ts, messages"
NO_ID = 2**63 - 1  # above every id: a page with no upper bound, a table with no oldest
# A page of one conversation: the newest of each direction, each a range of
# the pair index read from the top, then the newest of both. (One query with
# OR read the whole conversation below `before` and sorted it.) The second
# direction is left out for DMs to oneself, which the first has already.
_DM_DIRECTION = (f"SELECT {_DM_COLUMNS} FROM direct_messages WHERE sender_id = {{}} "
                 "AND recipient_id = {} AND id < :before ORDER BY id DESC LIMIT :count")
_OTHER_ID = "(SELECT id FROM users WHERE username = :other)"
_DM_PAGE = (f"SELECT * FROM ({_DM_DIRECTION.format(':me', _OTHER_ID)}) UNION ALL "
            f"SELECT * FROM ({_DM_DIRECTION.format(_OTHER_ID, ':me')}) "
            f"WHERE :me IS NOT {_OTHER_ID} ORDER BY id DESC LIMIT :count")


class RoomMessages(NamedTuple):
    """One sender's messages to the room, accepted, not yet stored; in order."""

    sender: str
    texts: Sequence[str]


class DirectMessage(NamedTuple):
    """A DM accepted, not yet stored: between two accounts, by name and id."""

    sender: str
    sender_id: int
    recipient: str
    recipient_id: int
    text: str
    delivered: bool = True  # False: kept for someone with no session, till their login


BatchItem = RoomMessages | DirectMessage


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

    # -- writing --------------------------------------------------------------

    def append(self, ts: str, batch: Sequence[BatchItem]) -> list[int]:
        """Store `batch` with the time `ts`, in one transaction, in order;
        returns the ids of its messages.

        The ids are consecutive: the transaction holds the write lock, so no
        other writer takes ids between. Room messages next to each other in
        `batch` share a row (up to MAX_ROW_MESSAGES).

        Raises:
            StoreBusy, StorageError: nothing was stored.
            TypeError: a name or text is not a string; nothing was stored.
        """
        count = sum(len(m.texts) if type(m) is RoomMessages else 1 for m in batch)
        if not count:
            return []
        with self.store.transaction() as conn:
            first = _take_ids(conn, count)
            next_id = first
            for room, run in itertools.groupby(batch, key=_is_room):
                if room:
                    next_id += _insert_room_batch(conn, next_id, ts,
                                                  cast(Iterator[RoomMessages], run))
                else:
                    next_id += _insert_dms(conn, next_id, ts, cast(Iterator[DirectMessage], run))
        return list(range(first, next_id))

    def mark_delivered(self, ids: Sequence[int]) -> None:
        self._set_delivered(ids, True)

    def mark_waiting(self, ids: Sequence[int]) -> None:
        """DMs whose recipient turned out to have no session: keep them for their login."""
        self._set_delivered(ids, False)

    def _set_delivered(self, ids: Sequence[int], delivered: bool) -> None:
        with self.store.transaction() as conn:
            conn.executemany("UPDATE direct_messages SET delivered = ? WHERE id = ?",
                             [(int(delivered), i) for i in ids])

    # -- reading --------------------------------------------------------------

    def last_id(self) -> int:
        """The highest id ever given (deleted messages included); 0 before the first."""
        return _last_id(self.store.connection())

    def room_page(self, before: int | None = None,
                  limit: int = MAX_PAGE) -> tuple[list[StoredMessage], bool]:
        """Up to `limit` room messages older than `before` (None: the newest),
        oldest first, and whether there are older ones still."""
        limit = _page_size(limit)
        newest_first = _room_newest_first(self.store.connection(), _below(before), limit + 1)
        return list(reversed(newest_first[:limit])), len(newest_first) > limit

    def dm_page(self, account_id: int, other: str, before: int | None = None,
                limit: int = MAX_PAGE) -> tuple[list[StoredMessage], bool]:
        """The same for the direct messages between an account and the account
        now named `other`, both ways (none if no account has that name)."""
        limit = _page_size(limit)
        rows = self.store.connection().execute(
            _DM_PAGE, {"me": account_id, "other": other, "before": _below(before),
                       "count": limit + 1}).fetchall()
        return [_dm(row) for row in reversed(rows[:limit])], len(rows) > limit

    def waiting_for(self, recipient_id: int) -> list[StoredMessage]:
        """The DMs kept for an account while it had no session, oldest first."""
        rows = self.store.connection().execute(
            f"SELECT {_DM_COLUMNS} FROM direct_messages WHERE recipient_id = ? "
            "AND delivered = 0 ORDER BY id", (recipient_id,)).fetchall()
        return [_dm(row) for row in rows]

    def since(self, ts: str | None = None) -> Iterator[StoredMessage]:
        """Every message from `ts` on (None: all), oldest first, read in pages."""
        conn = self.store.connection()
        return heapq.merge(_room_since(conn, ts or ""), _dms_since(conn, ts or ""),
                           key=lambda m: m.id)

    # -- deleting -------------------------------------------------------------

    def purge_before(self, ts: str, *, actor: str) -> int:
        """Delete every message older than `ts`, audit-logged; returns how many.

        One transaction, so the purge and its audit row are there, or neither.
        """
        with self.store.transaction() as conn:
            room = conn.execute("SELECT coalesce(sum(last_id - first_id + 1), 0) "
                                "FROM room_batches WHERE ts < ?", (ts,)).one()[0]
            conn.execute("DELETE FROM room_batches WHERE ts < ?", (ts,))
            dms = conn.execute("DELETE FROM direct_messages WHERE ts < ?", (ts,)).rowcount
            deleted = int(room) + dms
            audit(conn, actor, "history.purge", "messages",
                  {"before": ts, "deleted": deleted})
        return deleted

    def prune(self, *, keep_days: float, max_messages: int, now: datetime | None = None,
              batch: int = PRUNE_BATCH) -> int:
        """Apply the retention rules (0 turns one off); returns how many went.

        Each transaction deletes the oldest DMs and room rows, about `batch`
        of each, reading only what it deletes, so that writers wait at most
        one short batch.
        """
        total = 0
        cutoff = timestamp((now or datetime.now(UTC)) - timedelta(days=keep_days)) \
            if keep_days > 0 else ""
        while True:
            with self.store.transaction() as conn:
                last = _prune_bound(conn, cutoff, max_messages)
                if last is None:
                    return total
                dms = _prune_dms(conn, last, batch)
                room = _prune_room(conn, last, batch)
            total += dms + room
            if dms < batch and room < batch:
                return total


# -- the SQL, a statement or two each ------------------------------------------

def _take_ids(conn: Connection, count: int) -> int:
    """Reserve `count` ids in the caller's write transaction; returns the first."""
    conn.execute("UPDATE message_ids SET last_id = last_id + ?", (count,))
    return _last_id(conn) - count + 1


def _last_id(conn: Connection) -> int:
    return int(conn.execute("SELECT last_id FROM message_ids").one()[0])


def _is_room(message: BatchItem) -> bool:
    return type(message) is RoomMessages


def _insert_dms(conn: Connection, first_id: int, ts: str,
                dms: Iterable[DirectMessage]) -> int:
    rows = [(first_id + n, ts, m.sender, m.recipient, m.text, m.delivered, m.sender_id,
             m.recipient_id) for n, m in enumerate(dms)]
    _check_strings(itertools.chain.from_iterable(row[2:5] for row in rows))
    if not all(type(row[6]) is int and type(row[7]) is int for row in rows):
        raise TypeError("a DM's account ids must be integers")
    conn.executemany("INSERT INTO direct_messages (id, ts, sender, recipient, text, delivered,"
                     " sender_id, recipient_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def _insert_room_batch(conn: Connection, first_id: int, ts: str,
                       runs: Iterable[RoomMessages]) -> int:
    pairs = [[run.sender, text] for run in runs for text in run.texts]
    # JSON would take a None that a NOT NULL column would have refused.
    _check_strings(itertools.chain.from_iterable(pairs))
    rows = [(start + len(chunk) - 1, start, ts, json.dumps(chunk, ensure_ascii=False))
            for start, chunk in _chunks(first_id, pairs)]
    conn.executemany(f"INSERT INTO room_batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?)", rows)
    return len(pairs)


def _chunks(first_id: int, pairs: list[list[str]]) -> Iterator[tuple[int, list[list[str]]]]:
    """(first id, messages) of each row a run of room messages is stored in."""
    for start in range(0, len(pairs), MAX_ROW_MESSAGES):
        yield first_id + start, pairs[start:start + MAX_ROW_MESSAGES]


def _check_strings(values: Iterable[object]) -> None:
    if not set(map(type, values)) <= {str}:
        raise TypeError("a message's names and text must be strings")


def _room_messages(row: Row) -> list[StoredMessage]:
    """A room_batches row's messages, oldest first."""
    first, ts = row["first_id"], row["ts"]
    return [StoredMessage(first + n, ts, sender, None, text)
            for n, (sender, text) in enumerate(json.loads(row["messages"]))]


def _room_newest_first(conn: Connection, before: int,
                       count: int) -> list[StoredMessage]:
    """Up to `count` room messages older than `before`, newest first.

    Rows are read one at a time, from the one holding `before - 1` down, so a
    page reads only the rows it shows.
    """
    # The rows below `before`, and the one it falls inside, if any: found
    # by the primary key alone.
    inside = conn.execute("SELECT last_id, first_id FROM room_batches WHERE last_id >= ? "
                          "ORDER BY last_id LIMIT 1", (before,)).fetchone()
    upper = inside[0] + 1 if inside and inside[1] < before else before
    found: list[StoredMessage] = []
    cursor = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM room_batches WHERE last_id < ? "
                          "ORDER BY last_id DESC", (upper,))
    try:
        for row in cursor:
            found += [m for m in reversed(_room_messages(row)) if m.id < before]
            if len(found) >= count:
                break
    finally:
        cursor.close()  # an open read would hold back the WAL's checkpoints
    return found[:count]


def _room_since(conn: Connection, ts: str) -> Iterator[StoredMessage]:
    after = 0
    while rows := conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM room_batches WHERE last_id > ? AND ts >= ? "
            "ORDER BY last_id LIMIT ?", (after, ts, ROWS_A_READ)).fetchall():
        for row in rows:
            yield from _room_messages(row)
        after = rows[-1]["last_id"]


def _dms_since(conn: Connection, ts: str) -> Iterator[StoredMessage]:
    after = 0
    while rows := conn.execute(
            f"SELECT {_DM_COLUMNS} FROM direct_messages WHERE id > ? AND ts >= ? "
            "ORDER BY id LIMIT ?", (after, ts, PRUNE_BATCH)).fetchall():
        yield from (_dm(row) for row in rows)
        after = rows[-1]["id"]


def _prune_bound(conn: Connection, cutoff: str, max_messages: int) -> int | None:
    """The highest id the rules let go, or None if nothing is due."""
    bounds = []
    if cutoff:
        # Everything older than the first young message: reading from the
        # oldest, in id order, reads only what goes.
        young = [row[0] for row in (
            conn.execute("SELECT first_id FROM room_batches WHERE ts >= ? "
                         "ORDER BY last_id LIMIT 1", (cutoff,)).fetchone(),
            conn.execute("SELECT id FROM direct_messages WHERE ts >= ? "
                         "ORDER BY id LIMIT 1", (cutoff,)).fetchone()) if row]
        bounds.append((min(young) if young else _last_id(conn) + 1) - 1)
    if max_messages > 0:
        # Ids are dense (never reused, only the oldest deleted), so the newest
        # max_messages are those above this: found without reading the tables.
        bounds.append(_last_id(conn) - max_messages)
    bound = max(bounds, default=0)
    return bound if bound > 0 and _oldest_id(conn) <= bound else None


def _oldest_id(conn: Connection) -> int:
    room = conn.execute("SELECT first_id FROM room_batches ORDER BY last_id LIMIT 1").fetchone()
    dm = conn.execute("SELECT id FROM direct_messages ORDER BY id LIMIT 1").fetchone()
    return min((int(row[0]) for row in (room, dm) if row), default=NO_ID)


def _prune_dms(conn: Connection, bound: int, batch: int) -> int:
    return int(conn.execute(
        "DELETE FROM direct_messages WHERE id IN (SELECT id FROM direct_messages "
        "WHERE id <= ? ORDER BY id LIMIT ?)", (bound, batch)).rowcount)


def _prune_room(conn: Connection, bound: int, batch: int) -> int:
    """Delete the oldest room rows, about `batch` messages, up to id `bound`.

    A row that reaches past the bound loses only its older messages.
    """
    deleted, upto = 0, None
    for last_id, first_id in conn.execute(
            "SELECT last_id, first_id FROM room_batches WHERE last_id <= ? "
            "ORDER BY last_id LIMIT ?", (bound, batch)).fetchall():
        deleted, upto = deleted + last_id - first_id + 1, last_id
        if deleted >= batch:
            break
    if upto is not None:
        conn.execute("DELETE FROM room_batches WHERE last_id <= ?", (upto,))
    if deleted < batch:  # every whole row is gone: cut the one across the bound
        deleted += _cut_room_batch(conn, bound)
    return deleted


def _cut_room_batch(conn: Connection, bound: int) -> int:
    """Drop the messages up to `bound` from the row that also holds newer ones."""
    row = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM room_batches WHERE last_id > ? "
                       "ORDER BY last_id LIMIT 1", (bound,)).fetchone()
    if row is None or row["first_id"] > bound:
        return 0
    gone = bound - int(row["first_id"]) + 1
    kept = json.loads(row["messages"])[gone:]
    conn.execute("UPDATE room_batches SET first_id = ?, messages = ? WHERE last_id = ?",
                 (bound + 1, json.dumps(kept, ensure_ascii=False), row["last_id"]))
    return gone


def _below(before: int | None) -> int:
    """The id a page ends below: None asks for the newest."""
    return NO_ID if before is None else before


def _page_size(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


def _dm(row: Row) -> StoredMessage:
    return StoredMessage(row["id"], row["ts"], row["sender"], row["recipient"], row["text"])
