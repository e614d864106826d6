"""Who is online, as the client works it out from the server's frames."""

from __future__ import annotations

from typing import Any

import pytest

from authchat.client.roster import Roster, dm_peer
from authchat.protocol import DirectMessage, ProtocolError, ServerEvent, parse_event


def event(frame: dict[str, Any]) -> ServerEvent:
    """The event a client gets from this frame: through the protocol's own parser."""
    return parse_event(frame)


def test_presence_frames_keep_the_list() -> None:
    roster = Roster()
    assert roster.apply(event({"type": "welcome", "username": "alice", "role": "user",
                               "users": ["bob", "alice"]}))
    assert roster.names() == ["alice", "bob"]
    assert roster.apply(event({"type": "join", "username": "Carol", "role": "user"}))
    # the same person, any case
    assert not roster.apply(event({"type": "join", "username": "carol", "role": "user"}))
    assert roster.names() == ["alice", "bob", "Carol"] and "CAROL" in roster
    assert roster.apply(event({"type": "leave", "username": "BOB", "reason": "quit"}))
    assert not roster.apply(event({"type": "leave", "username": "bob", "reason": "quit"}))
    assert not roster.apply(event({"type": "message", "id": 1, "from": "dave", "text": "hi",
                                   "ts": "2026-11-24T10:00:00Z"}))
    assert roster.names() == ["alice", "Carol"] and len(roster) == 2


def welcome(*users: str) -> ServerEvent:
    return event({"type": "welcome", "username": "alice", "role": "user", "users": list(users)})


def test_roles_come_from_who_and_survive_a_new_welcome() -> None:
    roster = Roster()
    roster.apply(welcome("alice", "root"))
    assert not roster.roles_known()
    roster.apply(event({"type": "who", "users": [{"username": "alice", "role": "user"},
                                                  {"username": "root", "role": "admin"}]}))
    assert roster.roles_known() and roster.role("ROOT") == "admin"
    roster.apply(event({"type": "join", "username": "bob", "role": "user"}))
    roster.apply(event({"type": "join", "username": "old-server-client"}))  # no role said
    assert not roster.roles_known() and roster.role("bob") == "user"
    # After a reconnect the welcome lists names only; roles already learnt stay.
    assert roster.apply(welcome("root", "alice"))
    assert roster.role("root") == "admin" and "bob" not in roster
    assert roster.roles_known()


def test_odd_frames_change_nothing() -> None:
    roster = Roster()
    roster.apply(welcome("alice"))
    # Frames of a known type but the wrong shape never reach the roster: the
    # protocol refuses them (and the link ends, as with a server that does
    # not speak the protocol).
    for odd in ({"type": "join"},
                {"type": "who", "users": ["not a dict", {"role": "admin"}]},
                {"type": "who", "users": [{"role": "admin"}]},
                {"type": "welcome", "username": "alice", "role": "user", "users": 7}):
        with pytest.raises(ProtocolError):
            event(odd)
    assert not roster.apply(event({"type": "who", "users": [{"username": "alice",
                                                             "role": ""}]}))
    assert not roster.apply(event({"type": "something_new", "users": ["mallory"]}))
    assert roster.names() == ["alice"]
    assert roster.apply(welcome()) and roster.names() == []


def test_the_other_person_in_a_direct_message() -> None:
    mine = DirectMessage(1, "Alice", "bob", "hi", "2026-11-24T10:00:00Z")
    theirs = DirectMessage(2, "bob", "alice", "hi", "2026-11-24T10:00:00Z")
    assert dm_peer(mine, "alice") == "bob" and dm_peer(theirs, "alice") == "bob"
