"""The room in memory: order, presence, routing, bounded queues."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from authchat import protocol
from authchat.room import BLOCK_FRAMES, Feed, Outbox, Room


ACCOUNT_IDS: dict[str, int] = {}


@dataclass(eq=False)
class FakeMember:
    """A member whose output is read back from a real Outbox, as its writer would."""

    username: str
    role: str = "user"
    outbox: Outbox = field(default_factory=lambda: Outbox(limit_bytes=1 << 20))
    received: list[dict[str, Any]] = field(default_factory=list)
    account_id: int = field(init=False)

    def __post_init__(self) -> None:  # one account to a name, as in the store
        self.account_id = ACCOUNT_IDS.setdefault(self.username.lower(), len(ACCOUNT_IDS) + 1)

    def deliver(self, data: bytes) -> None:
        assert self.outbox.put(data)

    @property
    def frames(self) -> list[dict[str, Any]]:
        data, _ = self.outbox.take()
        self.received += [json.loads(line) for line in data.splitlines()]
        return self.received

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


def welcome(member: FakeMember) -> Any:
    return lambda names: protocol.encode_event(
        protocol.Welcome(member.username, member.role, tuple(names)))


def enter(room: Room, *members: FakeMember) -> None:
    for member in members:
        assert room.enter(member, welcome(member))


def test_welcome_comes_first_and_lists_who_is_online() -> None:
    room = Room(5)
    alice, bob = FakeMember("alice"), FakeMember("Bob")
    enter(room, alice, bob)
    assert bob.frames[0] == {"type": "welcome", "username": "Bob", "role": "user",
                             "users": ["alice", "Bob"]}
    assert alice.frames[1] == {"type": "join", "username": "Bob", "role": "user"}
    assert bob.types() == ["welcome"]  # no join for yourself


def test_presence_only_for_first_and_last_session() -> None:
    room = Room(5)
    alice, bob1, bob2 = FakeMember("alice"), FakeMember("bob"), FakeMember("bob")
    enter(room, alice, bob1, bob2)
    assert alice.types() == ["welcome", "join"]
    room.leave(bob1, "quit")
    assert alice.types() == ["welcome", "join"]
    room.leave(bob2, "kicked")
    assert alice.frames[-1] == {"type": "leave", "username": "bob", "reason": "kicked"}
    assert room.leave(bob2, "quit") is False  # leaving twice is harmless


def test_session_limit_per_account() -> None:
    room = Room(2)
    sessions = [FakeMember("alice") for _ in range(3)]
    assert room.enter(sessions[0], welcome(sessions[0]))
    assert room.enter(sessions[1], welcome(sessions[1]))
    assert not room.enter(sessions[2], welcome(sessions[2]))
    assert sessions[2].frames == []
    assert len(room.sessions_of("ALICE")) == 2


def test_say_reaches_everyone_in_one_order_with_increasing_ids() -> None:
    room = Room(5)
    members = [FakeMember(f"user{i}") for i in range(5)]
    enter(room, *members)

    def talk(member: FakeMember) -> None:
        for n in range(100):
            room.say(member, f"{member.username} {n}")

    threads = [threading.Thread(target=talk, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    streams = [[f for f in m.frames if f["type"] == "message"] for m in members]
    assert all(stream == streams[0] for stream in streams)
    assert [f["id"] for f in streams[0]] == list(range(1, 501))


def test_direct_messages_go_to_both_sides_only() -> None:
    room = Room(5)
    alice1, alice2, bob, carol = (FakeMember(n) for n in ("alice", "alice", "Bob", "carol"))
    enter(room, alice1, alice2, bob, carol)
    msg_id = room.direct(alice1, "bob", "psst")
    dm = {"type": "dm", "id": msg_id, "from": "alice", "to": "Bob", "text": "psst"}
    for member in (alice1, alice2, bob):
        assert {k: v for k, v in member.frames[-1].items() if k != "ts"} == dm
    assert "dm" not in carol.types()
    assert room.direct(alice1, "nobody", "hi") is None


def test_who_lists_accounts_once_sorted() -> None:
    room = Room(5)
    enter(room, FakeMember("bob"), FakeMember("Alice", role="admin"), FakeMember("bob"))
    assert room.who() == [{"username": "Alice", "role": "admin"},
                          {"username": "bob", "role": "user"}]


def test_outbox_is_bounded_and_drains_in_one_write() -> None:
    outbox = Outbox(limit_bytes=10)
    assert outbox.put(b"12345") and outbox.put(b"6789")
    assert not outbox.put(b"ab")  # would pass the limit: the caller evicts
    assert outbox.take() == (b"123456789", False)
    assert outbox.put(b"ab")


def test_outbox_close_sends_the_final_frame_last_once() -> None:
    outbox = Outbox(limit_bytes=100)
    outbox.put(b"pending")
    assert outbox.close(b"bye")
    assert not outbox.close(b"again")
    assert outbox.put(b"late")  # dropped quietly: the session is ending
    assert outbox.take() == (b"pendingbye", True)
    assert outbox.take() == (b"", True)


def test_outbox_discard_drops_what_a_slow_client_never_read() -> None:
    feed, outbox = Feed(), Outbox(limit_bytes=100)
    outbox.follow(feed)
    feed.append(b"broadcast ")
    outbox.put(b"old news")
    outbox.close(b"slow_consumer", discard=True)
    feed.append(b"after the end ")
    assert outbox.take() == (b"slow_consumer", True)
    # It holds nothing of the feed any more, however much more is said.
    for _ in range(BLOCK_FRAMES * 2):
        feed.append(b"later ")
    assert outbox.backlog_bytes() == 0
    assert outbox.take() == (b"", True)


def test_a_closed_outbox_lets_go_of_the_feed_once_taken() -> None:
    feed, outbox = Feed(), Outbox(limit_bytes=1 << 20)
    outbox.follow(feed)
    feed.append(b"one ")
    outbox.close(b"bye")
    feed.append(b"two ")
    assert outbox.take() == (b"one bye", True)
    for _ in range(BLOCK_FRAMES * 2):
        feed.append(b"later ")
    assert outbox.backlog_bytes() == 0


def test_outbox_interleaves_the_feed_and_its_own_frames_in_order() -> None:
    feed, outbox = Feed(), Outbox(limit_bytes=1 << 20)
    feed.append(b"before joining;")
    outbox.follow(feed)
    outbox.put(b"welcome;")
    for n in range(BLOCK_FRAMES * 2 + 10):  # across several blocks
        feed.append(b"m%d;" % n)
        if n % 100 == 0:
            outbox.put(b"reply%d;" % n)
    outbox.close(b"bye;")
    feed.append(b"after the close;")
    data, done = outbox.take()
    expected = [b"welcome"]
    for n in range(BLOCK_FRAMES * 2 + 10):
        expected.append(b"m%d" % n)
        if n % 100 == 0:
            expected.append(b"reply%d" % n)
    assert data.split(b";")[:-1] == expected + [b"bye"] and done


def test_outbox_backlog_counts_the_unsent_feed() -> None:
    feed, outbox = Feed(), Outbox(limit_bytes=10)
    outbox.follow(feed)
    feed.append(b"123456")
    assert outbox.backlog_bytes() == 6
    assert not outbox.put(b"abcde")  # 6 behind in the feed + 5 would pass 10
    assert outbox.take() == (b"123456", False)
    assert outbox.backlog_bytes() == 0 and outbox.put(b"abcde")


def test_outbox_wakes_its_writer() -> None:
    woken = threading.Event()
    outbox = Outbox(limit_bytes=100, wake=woken.set)
    outbox.put(b"hello")
    assert woken.is_set()
    woken.clear()
    outbox.close()
    assert woken.is_set()
