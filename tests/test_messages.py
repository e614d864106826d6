"""The message history in a real SQLite file: ids, pages, waiting DMs, retention."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from authchat.store import schema
from authchat.config import Config
from authchat.store import Store
from authchat.store.messages import (
    MAX_PAGE,
    MAX_ROW_MESSAGES,
    DirectMessage,
    MessageLog,
    BatchItem,
    RoomMessages,
)

TS = "2026-11-28T10:00:00.000Z"
NO_TEXT: Any = None  # what a NOT NULL column refuses


def says(log: MessageLog, sender: str, *texts: str, ts: str = TS) -> list[int]:
    return log.append(ts, [RoomMessages(sender, texts)])


@pytest.fixture
def ids(store: Store) -> dict[str, int]:
    """alice, bob and carol's account ids, by lower-cased name."""
    return {name: store.create_user(name, "correct horse battery staple", actor="test").id
            for name in ("alice", "bob", "carol")}


def dm(ids: dict[str, int], sender: str, recipient: str, text: str,
       delivered: bool = True) -> DirectMessage:
    return DirectMessage(sender, ids[sender.lower()], recipient, ids[recipient.lower()], text,
                         delivered)


def test_ids_are_assigned_in_order_and_never_reused(store: Store) -> None:
    log = MessageLog(store)
    assert log.last_id() == 0
    first = says(log, "alice", "one", "two", "three")
    assert first == [1, 2, 3] and log.last_id() == 3
    log.purge_before("9999", actor="test")  # everything, the newest included
    assert log.room_page() == ([], False)
    # A new connection, as after a restart: the sequence goes on, never back.
    fresh = Store(store.path, hasher=store.hasher, policy=store.policy)
    again = MessageLog(fresh)
    assert again.last_id() == 3 and says(again, "bob", "four") == [4]
    fresh.close()


def test_a_batch_is_all_or_nothing(store: Store, ids: dict[str, int]) -> None:
    log = MessageLog(store)
    says(log, "alice", "kept")
    broken: list[list[BatchItem]] = [
        [RoomMessages("bob", ["fine", NO_TEXT])],
        # The room's row is written before the DM's fails: it is rolled back too.
        [RoomMessages("bob", ["fine"]), dm(ids, "bob", "alice", NO_TEXT)],
    ]
    for batch in broken:
        with pytest.raises(Exception):  # a NULL text is never stored
            log.append(TS, batch)
        assert [m.text for m in log.room_page()[0]] == ["kept"]
    assert says(log, "alice", "next") == [2]  # no id was used up by either


def test_room_messages_and_dms_share_one_sequence_in_order(store: Store,
                                                           ids: dict[str, int]) -> None:
    log = MessageLog(store)
    given = log.append(TS, [RoomMessages("alice", ["room 1"]), RoomMessages("bob", ["room 2"]),
                            dm(ids, "alice", "bob", "to bob"),
                            RoomMessages("carol", ["room 3"])])
    given += log.append("2026-11-28T10:00:01.000Z", [RoomMessages("carol", ["room 4"])])
    assert given == [1, 2, 3, 4, 5]
    room, _ = log.room_page()
    assert [(m.id, m.sender, m.text) for m in room] == [
        (1, "alice", "room 1"), (2, "bob", "room 2"), (4, "carol", "room 3"),
        (5, "carol", "room 4")]
    assert room[-1].ts == "2026-11-28T10:00:01.000Z"
    assert [(m.id, m.text) for m in log.dm_page(ids["bob"], "alice")[0]] == [(3, "to bob")]
    assert [m.id for m in log.since()] == given
    assert [m.text for m in log.room_page(before=4, limit=2)[0]] == ["room 1", "room 2"]


def migrated_up_to(config: Config, version: int) -> Store:
    """A store whose database has only the migrations up to `version`."""
    store = Store.from_config(config)
    with store.transaction() as conn:
        for migration in schema.known_migrations():
            if migration.version <= version:
                schema.apply(conn, migration, TS)
    return store


def add_old_user(store: Store, name: str, created_at: str) -> int:
    with store.transaction() as conn:
        cursor = conn.execute("INSERT INTO users (username, password_hash, created_at, "
                              "updated_at) VALUES (?, 'x', ?, ?)", (name, created_at, created_at))
    return int(cursor.lastrowid or 0)


def test_room_history_written_before_batches_is_carried_over(config: Config) -> None:
    """A database with messages stored a row each (migration 0003) keeps them all."""
    store = migrated_up_to(config, 3)
    bob = add_old_user(store, "bob", "2026-01-01T00:00:00Z")
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO messages (ts, sender, recipient, text, delivered) VALUES (?, ?, ?, ?, ?)",
            [(TS, "alice", None, "old room", 1), (TS, "alice", "bob", "old dm", 0),
             (TS, "bob", None, "élan \U0001f600 [\"quoted\"]", 1),
             (TS, "bob", None, "purged", 1)])
        conn.execute("DELETE FROM messages WHERE text = 'purged'")  # id 4 was given all the same
    assert [m.version for m in store.migrate()] == [4, 5, 6, 7]
    log = MessageLog(store)
    assert [(m.id, m.sender, m.text) for m in log.room_page()[0]] == [
        (1, "alice", "old room"), (3, "bob", "élan \U0001f600 [\"quoted\"]")]
    assert [m.text for m in log.waiting_for(bob)] == ["old dm"]
    assert log.last_id() == 4 and says(log, "carol", "new") == [5]


def test_dms_written_before_account_ids_go_to_the_accounts_that_were_there(
        config: Config) -> None:
    """Migration 0005: a DM belongs to the account that had the name when it
    was sent; one to or from an earlier holder of the name belongs to nobody,
    and one still waiting for an account that is gone is dropped."""
    store = migrated_up_to(config, 4)
    alice = add_old_user(store, "alice", "2026-01-01T00:00:00Z")
    dave = add_old_user(store, "dave", "2026-11-28T09:00:00Z")  # a new dave, since 9:00
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO direct_messages (id, ts, sender, recipient, text, delivered) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(1, "2026-11-27T10:00:00.000Z", "alice", "dave", "to the old dave", 0),
             (2, "2026-11-27T10:00:01.000Z", "dave", "alice", "from the old dave", 1),
             (3, "2026-11-28T09:30:00.000Z", "alice", "dave", "to the new dave", 0),
             (4, "2026-11-28T09:30:01.000Z", "ghost", "alice", "from a deleted ghost", 1),
             (5, "2026-11-28T09:30:02.000Z", "alice", "ghost", "to a deleted ghost", 0)])
        conn.execute("UPDATE message_ids SET last_id = 5")
    assert [m.version for m in store.migrate()] == [5, 6, 7]
    log = MessageLog(store)
    assert [m.text for m in log.waiting_for(dave)] == ["to the new dave"]
    assert [m.text for m in log.dm_page(alice, "dave")[0]] == ["to the new dave"]
    assert [m.text for m in log.since()] == [  # the export keeps what anyone may read
        "from the old dave", "to the new dave", "from a deleted ghost"]
    assert [u.id for u in store.list_users()] == [alice, dave]


def test_a_deleted_accounts_dms_never_reach_the_next_holder_of_its_name(
        store: Store, ids: dict[str, int]) -> None:
    log = MessageLog(store)
    dave = store.create_user("dave", "correct horse battery staple", actor="test")
    log.append(TS, [dm({**ids, "dave": dave.id}, "bob", "dave", "waiting for dave", False),
                    dm({**ids, "dave": dave.id}, "dave", "bob", "dave's reply")])
    store.delete_user("dave", actor="cli:op")
    assert store.audit_entries()[-1].detail == {"role": "user", "waiting_dms_dropped": 1}
    # The newest account was deleted: its id must not come back with the name.
    stranger = store.create_user("dave", "another horse battery staple", actor="register")
    assert stranger.id > dave.id
    assert log.waiting_for(stranger.id) == []
    assert log.dm_page(stranger.id, "bob") == ([], False)
    assert log.dm_page(ids["bob"], "dave") == ([], False)
    assert [m.text for m in log.since()] == ["dave's reply"]  # kept, under its name


def test_room_pages_go_back_to_the_first_message(store: Store, ids: dict[str, int]) -> None:
    log = MessageLog(store)
    given = says(log, "alice", *[f"m{n}" for n in range(450)])
    log.append(TS, [dm(ids, "alice", "bob", "private")])  # not the room's
    newest, more = log.room_page(limit=50)
    assert [m.text for m in newest] == [f"m{n}" for n in range(400, 450)] and more
    seen, before = list(newest), newest[0].id
    while more:
        page, more = log.room_page(before=before, limit=1000)  # capped at MAX_PAGE
        assert 0 < len(page) <= MAX_PAGE
        seen[:0], before = page, page[0].id
    assert [m.id for m in seen] == given


def test_a_long_run_is_stored_in_rows_of_bounded_size(store: Store) -> None:
    log = MessageLog(store)
    ids = says(log, "alice", *[f"m{n}" for n in range(2 * MAX_ROW_MESSAGES + 10)])
    rows = store.connection().execute(
        "SELECT first_id, last_id FROM room_batches ORDER BY last_id").fetchall()
    assert [tuple(r) for r in rows] == [
        (1, MAX_ROW_MESSAGES), (MAX_ROW_MESSAGES + 1, 2 * MAX_ROW_MESSAGES),
        (2 * MAX_ROW_MESSAGES + 1, 2 * MAX_ROW_MESSAGES + 10)]
    # A page that starts inside one row and ends in the one before it.
    before = MAX_ROW_MESSAGES + 3
    page, more = log.room_page(before=before, limit=5)
    assert [m.id for m in page] == ids[before - 6:before - 1] and more
    assert [m.text for m in log.since()] == [f"m{n}" for n in range(2 * MAX_ROW_MESSAGES + 10)]


def test_direct_messages_page_between_two_people_only(store: Store,
                                                      ids: dict[str, int]) -> None:
    log = MessageLog(store)
    log.append(TS, [dm(ids, "alice", "bob", "hi bob"),
                    dm(ids, "Bob", "ALICE", "hi alice"),
                    dm(ids, "alice", "carol", "hi carol"),
                    RoomMessages("alice", ["to the room"])])
    assert log.dm_page(ids["alice"], "nobody") == ([], False)
    log.append(TS, [dm(ids, "alice", "alice", "a note to myself")])
    assert [m.text for m in log.dm_page(ids["alice"], "alice")[0]] == ["a note to myself"]
    page, more = log.dm_page(ids["alice"], "BOB")
    assert [(m.sender, m.text) for m in page] == [("alice", "hi bob"), ("Bob", "hi alice")]
    assert not more


def test_dms_kept_for_someone_offline_are_given_once(store: Store,
                                                     ids: dict[str, int]) -> None:
    log = MessageLog(store)
    log.append(TS, [dm(ids, "alice", "bob", "while you were out", delivered=False),
                    dm(ids, "alice", "bob", "seen live"),
                    dm(ids, "carol", "BOB", "and this", delivered=False)])
    waiting = log.waiting_for(ids["bob"])
    assert [m.text for m in waiting] == ["while you were out", "and this"]
    log.mark_delivered([m.id for m in waiting])
    assert log.waiting_for(ids["bob"]) == []


def test_export_reads_everything_since_a_time_in_order(store: Store) -> None:
    log = MessageLog(store)
    says(log, "alice", "old", ts="2026-10-01T00:00:00.000Z")
    says(log, "alice", *[f"new{n}" for n in range(2500)], ts="2026-11-01T00:00:00.000Z")
    assert len(list(log.since())) == 2501
    exported = list(log.since("2026-10-15"))
    assert [m.text for m in exported] == [f"new{n}" for n in range(2500)]


def test_purge_is_audited(store: Store) -> None:
    log = MessageLog(store)
    says(log, "alice", "old", ts="2026-10-01T00:00:00.000Z")
    says(log, "alice", "new", ts="2026-11-01T00:00:00.000Z")
    assert log.purge_before("2026-10-15", actor="admin") == 1
    assert [m.text for m in log.room_page()[0]] == ["new"]
    entry = store.audit_entries(1)[0]
    assert (entry.actor, entry.action) == ("admin", "history.purge")
    assert entry.detail == {"before": "2026-10-15", "deleted": 1}


def test_retention_by_age_and_by_count(store: Store) -> None:
    log = MessageLog(store)
    now = datetime(2026, 11, 28, tzinfo=UTC)
    def at(days_ago: float) -> str:
        moment = now - timedelta(days=days_ago)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    says(log, "alice", *[f"old{n}" for n in range(30)], ts=at(40))
    says(log, "alice", *[f"recent{n}" for n in range(30)], ts=at(1))
    assert log.prune(keep_days=30, max_messages=0, now=now, batch=7) == 30
    assert log.prune(keep_days=30, max_messages=0, now=now) == 0
    assert log.prune(keep_days=0, max_messages=10, now=now, batch=7) == 20
    assert [m.text for m in log.room_page()[0]] == [f"recent{n}" for n in range(20, 30)]
    assert log.prune(keep_days=0, max_messages=0, now=now) == 0  # both rules off


def test_pruning_while_messages_are_written(store: Store) -> None:
    log = MessageLog(store)
    says(log, "alice", *[f"m{n}" for n in range(5000)], ts="2020-01-01T00:00:00.000Z")
    written = []
    today = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def writer() -> None:
        mine = MessageLog(store)  # its own thread, its own connection
        for n in range(20):
            written.extend(says(mine, "bob", f"live{n}", ts=today))

    thread = threading.Thread(target=writer)
    thread.start()
    pruned = log.prune(keep_days=1, max_messages=0, batch=100)
    thread.join(30)
    assert pruned >= 5000 and len(written) == 20
    assert [m.text for m in log.room_page()[0]][-20:] == [f"live{n}" for n in range(20)]
