"""The room in memory: order, presence, routing, bounded queues."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from authchat import protocol
from authchat.room import Outbox, Room


@dataclass(eq=False)
class FakeMember:
    """A member whose deliveries are recorded; the room's side of a session."""

    username: str
    role: str = "user"
    frames: list[dict[str, Any]] = field(default_factory=list)

    def deliver(self, data: bytes) -> None:
        self.frames.append(json.loads(data))

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


def welcome(member: FakeMember) -> Any:
    return lambda names: protocol.encode(protocol.welcome(member.username, member.role, names))


def enter(room: Room, *members: FakeMember) -> None:
    for member in members:
        assert room.enter(member, welcome(member))


def test_welcome_comes_first_and_lists_who_is_online() -> None:
    room = Room(5)
    alice, bob = FakeMember("alice"), FakeMember("Bob")
    enter(room, alice, bob)
    assert bob.frames[0] == {"type": "welcome", "username": "Bob", "role": "user",
                             "users": ["alice", "Bob"]}
    assert alice.frames[1] == {"type": "join", "username": "Bob"}
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


def test_outbox_discard_drops_what_a_slow_client_never_read() -> None:
    outbox = Outbox(limit_bytes=100)
    outbox.put(b"old news")
    outbox.close(b"slow_consumer", discard=True)
    assert outbox.take() == (b"slow_consumer", True)


def test_outbox_take_waits_for_data() -> None:
    outbox = Outbox(limit_bytes=100)
    got: list[tuple[bytes, bool]] = []
    reader = threading.Thread(target=lambda: got.append(outbox.take(timeout=10)))
    reader.start()
    outbox.put(b"hello")
    reader.join(10)
    assert got == [(b"hello", False)]
