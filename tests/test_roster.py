"""Who is online, as the client works it out from the server's frames."""

from __future__ import annotations

from authchat.client.roster import Roster, dm_peer


def test_presence_frames_keep_the_list() -> None:
    roster = Roster()
    assert roster.apply({"type": "welcome", "username": "alice", "users": ["bob", "alice"]})
    assert roster.names() == ["alice", "bob"]
    assert roster.apply({"type": "join", "username": "Carol"})
    assert not roster.apply({"type": "join", "username": "carol"})  # same person, any case
    assert roster.names() == ["alice", "bob", "Carol"] and "CAROL" in roster
    assert roster.apply({"type": "leave", "username": "BOB", "reason": "quit"})
    assert not roster.apply({"type": "leave", "username": "bob", "reason": "quit"})
    assert not roster.apply({"type": "message", "from": "dave", "text": "hi"})
    assert roster.names() == ["alice", "Carol"] and len(roster) == 2


def test_roles_come_from_who_and_survive_a_new_welcome() -> None:
    roster = Roster()
    roster.apply({"type": "welcome", "users": ["alice", "root"]})
    assert not roster.roles_known()
    roster.apply({"type": "who", "users": [{"username": "alice", "role": "user"},
                                           {"username": "root", "role": "admin"}]})
    assert roster.roles_known() and roster.role("ROOT") == "admin"
    roster.apply({"type": "join", "username": "bob", "role": "user"})
    roster.apply({"type": "join", "username": "old-server-client"})  # no role said
    assert not roster.roles_known() and roster.role("bob") == "user"
    # After a reconnect the welcome lists names only; roles already learnt stay.
    assert roster.apply({"type": "welcome", "users": ["root", "alice"]})
    assert roster.role("root") == "admin" and "bob" not in roster
    assert roster.roles_known()


def test_odd_frames_change_nothing() -> None:
    roster = Roster()
    roster.apply({"type": "welcome", "users": ["alice"]})
    assert not roster.apply({"type": "join"})
    assert not roster.apply({"type": "who", "users": ["not a dict", {"role": "admin"},
                                                      {"username": "alice", "role": ""}]})
    assert roster.names() == ["alice"]
    assert roster.apply({"type": "welcome", "users": 7}) and roster.names() == []


def test_the_other_person_in_a_direct_message() -> None:
    mine = {"type": "dm", "from": "Alice", "to": "bob", "text": "hi"}
    theirs = {"type": "dm", "from": "bob", "to": "alice", "text": "hi"}
    assert dm_peer(mine, "alice") == "bob" and dm_peer(theirs, "alice") == "bob"
