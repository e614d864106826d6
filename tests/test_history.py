"""Message history against the real server: nothing said is lost.

Scrollback on login, paging to the first message, DMs kept for someone
offline, retention, restarts and kill -9, with real sockets and real SQLite.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from authchat.store import Store
from authchat.store.messages import DirectMessage, MessageLog, RoomMessages

from conftest import GOOD_PASSWORD, Runner
from helpers import Client, ServerProcess, add_user, add_users, eventually, logged_in, \
    server_config, start_server


def say_all(client: Client, texts: list[str]) -> list[int]:
    """Say each text with an id and wait for its ok; the messages' ids."""
    ids = []
    for n, text in enumerate(texts):
        client.send({"type": "say", "text": text, "id": f"s{n}"})
        ids.append(client.expect("ok", skip=("join", "leave", "message"), re=f"s{n}")["message"])
    return ids


def login_and_history(server: Any, name: str) -> tuple[Client, dict[str, Any], list[dict[str, Any]]]:
    """Log in; the welcome and the history frames that follow it."""
    client = Client(server.address)
    welcome = client.login(name)
    shown = []
    client.send({"type": "ping", "id": "end-of-history"})
    while (frame := client.recv(skip=("join", "leave")))["type"] != "pong":
        shown.append(frame)
    return client, welcome, shown


def page_all(client: Client, **query: Any) -> list[dict[str, Any]]:
    """Every message `history` gives, paging back from the newest."""
    found: list[dict[str, Any]] = []
    before = None
    for n in range(1000):
        request = {"type": "history", "id": f"h{n}", **query}
        if before is not None:
            request["before"] = before
        client.send(request)
        page = client.expect("history", skip=("join", "leave", "message", "dm"), re=f"h{n}")
        found[:0] = page["messages"]
        if not page["more"]:
            return found
        before = page["messages"][0]["id"]
    raise AssertionError("history never ended")


def test_history_on_login_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, history__on_join=3)
    add_user(server, "alice")
    add_user(server, "bob")
    alice = logged_in(server, "alice")
    said = say_all(alice, ["one", "two", "three", "four"])
    alice.close()
    port = server.address[1]
    server.shutdown()

    server = start_server(home, history__on_join=3, server__port=port)
    try:
        bob, welcome, shown = login_and_history(server, "bob")
        assert welcome["users"] == ["bob"]
        assert [(f["type"], f["id"], f["text"], f.get("history")) for f in shown] == [
            ("message", said[1], "two", True), ("message", said[2], "three", True),
            ("message", said[3], "four", True)]
        assert all(f["from"] == "alice" for f in shown)
        # Ids go on from where they were, across the restart.
        assert say_all(bob, ["five"]) == [said[-1] + 1]
        bob.close()
    finally:
        server.shutdown()


def test_the_join_boundary_has_no_gap_and_no_duplicate(servers: Any) -> None:
    server = servers(history__on_join=50, limits__messages_per_second=10_000,
                     limits__message_burst=10_000)
    add_user(server, "alice")
    add_user(server, "bob")
    alice = logged_in(server, "alice")
    stop = threading.Event()
    sent: list[int] = []

    def talk() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            alice.send({"type": "say", "text": f"m{n}"})
            n += 1
            sent.append(n)
            time.sleep(0.001)  # pacing only: the test waits on frames, not on this

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        assert eventually(lambda: len(sent) > 200)
        bob = Client(server.address)
        bob.login("bob")
        seen: list[dict[str, Any]] = []
        while len([f for f in seen if not f.get("history")]) < 100:
            seen.append(bob.expect("message"))
    finally:
        stop.set()
        talker.join(10)
    history = [f for f in seen if f.get("history")]
    live = [f for f in seen if not f.get("history")]
    assert len(history) == 50 and seen[:50] == history  # history first, then live
    ids = [f["id"] for f in seen]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a gap or a repeat at the boundary"
    assert live[0]["id"] == history[-1]["id"] + 1
    bob.close()
    alice.close()


def test_paging_back_to_the_very_first_message(servers: Any) -> None:
    server = servers(history__on_join=10, limits__messages_per_second=10_000,
                     limits__message_burst=10_000)
    add_user(server, "alice")
    alice = logged_in(server, "alice")
    said = say_all(alice, [f"m{n}" for n in range(450)])
    alice.send({"type": "dm", "to": "alice", "text": "a note to self", "id": "d"})
    alice.expect("ok", skip=("dm",), re="d")
    everything = page_all(alice)
    assert [f["id"] for f in everything] == said  # the room's, not the DM
    assert all(f["history"] and f["type"] == "message" for f in everything)
    alice.send({"type": "history", "limit": 201, "id": "x"})
    alice.expect_error("bad_request", re="x")
    alice.close()


def test_a_dm_to_someone_offline_arrives_once_at_their_login(servers: Any) -> None:
    server = servers()
    add_user(server, "alice")
    add_user(server, "bob")
    alice = logged_in(server, "alice")
    alice.send({"type": "dm", "to": "BOB", "text": "while you were out", "id": 1})
    echo = alice.expect("dm")  # the sender sees their own DM, as for one delivered live
    assert (echo["to"], echo["text"]) == ("bob", "while you were out")
    ok = alice.expect("ok", re=1)
    assert ok == {"type": "ok", "re": 1, "message": echo["id"], "queued": True}
    alice.send({"type": "dm", "to": "nobody-here", "text": "hello?", "id": 2})
    alice.expect_error("no_such_user", re=2)

    bob, _, shown = login_and_history(server, "bob")
    assert [(f["type"], f["id"], f["from"], f["text"], f["history"]) for f in shown] == [
        ("dm", echo["id"], "alice", "while you were out", True)]
    bob.close()
    again, _, shown = login_and_history(server, "bob")
    assert shown == []  # exactly once
    # The pair's DMs page like the room's.
    assert [f["text"] for f in page_all(again, **{"with": "alice"})] == ["while you were out"]
    assert page_all(again, **{"with": "carol"}) == []
    again.close()
    alice.close()


def test_a_deleted_accounts_dms_do_not_go_to_whoever_registers_the_name(
        servers: Any, run_cli: Runner) -> None:
    server = servers()
    add_user(server, "bob")
    add_user(server, "dave")
    bob = logged_in(server, "bob")
    dave = logged_in(server, "dave")
    bob.send({"type": "dm", "to": "dave", "text": "our secret plan", "id": 1})
    bob.expect("ok", skip=("join", "leave", "dm"), re=1)
    dave.expect("dm", text="our secret plan")
    dave.close()
    bob.send({"type": "dm", "to": "dave", "text": "for dave when he is back", "id": 2})
    assert bob.expect("ok", skip=("join", "leave", "dm"), re=2)["queued"] is True
    run_cli("users", "delete", "dave", "--yes", check=True)

    stranger = Client(server.address)
    stranger.hello()
    stranger.send({"type": "register", "username": "dave", "password": GOOD_PASSWORD})
    stranger.expect("welcome")
    stranger.send({"type": "history", "with": "bob", "id": "h"})
    page = stranger.expect("history", skip=("join", "leave", "message"), re="h")
    assert page["messages"] == []  # no queued DM came before it, and no DM history
    bob.send({"type": "history", "with": "dave", "id": "h"})
    assert bob.expect("history", skip=("join", "leave", "dm"), re="h")["messages"] == []


def test_a_session_follows_its_account_not_its_name(servers: Any, tmp_path: Path) -> None:
    server = servers()
    add_user(server, "dave")
    old = logged_in(server, "dave")
    # Deleted and made again as an admin, both before housekeeping looks.
    admin_cli = Store.from_config(server_config(tmp_path / "home"))
    admin_cli.delete_user("dave", actor="cli:op")
    admin_cli.create_user("dave", GOOD_PASSWORD, actor="cli:op", role="admin")
    admin_cli.close()
    old.expect_error("account_disabled", skip=("join", "leave", "message"))
    old.expect_closed()
    assert eventually(lambda: server.room.who() == [])
    new = logged_in(server, "dave")
    assert server.room.who() == [{"username": "dave", "role": "admin"}]
    new.close()


def test_retention_prunes_in_the_background(servers: Any) -> None:
    server = servers(history__max_messages=10, history__prune_interval_s=0.1,
                     limits__messages_per_second=10_000, limits__message_burst=10_000)
    add_user(server, "alice")
    alice = logged_in(server, "alice")
    said = say_all(alice, [f"m{n}" for n in range(30)])

    def kept() -> list[int]:
        return [f["id"] for f in page_all(alice)]

    assert eventually(lambda: kept() == said[-10:], timeout=15), kept()
    alice.close()


@pytest.mark.slow
def test_kill_9_in_a_storm_loses_nothing_anyone_saw(home: Path) -> None:
    add_users(home, "watcher", *[f"talker{n}" for n in range(4)])
    extra = ("--no-tls",)
    env = {"AUTHCHAT_LIMITS_MESSAGES_PER_SECOND": "100000",
           "AUTHCHAT_LIMITS_MESSAGE_BURST": "100000"}
    server = ServerProcess(home, *extra, **env)
    watcher = Client(server.address)
    watcher.login("watcher")
    talkers = [Client(server.address) for _ in range(4)]
    for n, talker in enumerate(talkers):
        talker.login(f"talker{n}")
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        try:
            while True:
                frame = watcher.recv(skip=("join", "leave"))
                if frame["type"] == "message":
                    seen.append(frame)
        except (EOFError, OSError):
            return

    reader = threading.Thread(target=watch)
    reader.start()
    for n, talker in enumerate(talkers):
        talker.sock.sendall(b"".join(
            b'{"type":"say","text":"t%d-%d"}\n' % (n, i) for i in range(3000)))
    assert eventually(lambda: len(seen) > 2000, timeout=30)
    server.kill()  # SIGKILL, mid-storm
    reader.join(10)
    for client in (watcher, *talkers):
        client.close()

    server = ServerProcess(home, *extra, **env)
    try:
        checker = Client(server.address)
        checker.login("watcher")
        stored = {f["id"]: (f["from"], f["text"]) for f in page_all(checker)}
        live = {f["id"]: (f["from"], f["text"]) for f in seen}
        missing = {i: m for i, m in live.items() if stored.get(i) != m}
        assert not missing, f"{len(missing)} messages seen live are not in the history"
        assert len(live) > 2000
        checker.close()
    finally:
        server.terminate()


def test_export_and_purge_from_the_command_line(home: Path, run_cli: Any) -> None:
    add_users(home, "alice")
    store = Store.from_config(server_config(home))
    log = MessageLog(store)
    log.append("2026-10-01T09:00:00.000Z", [RoomMessages("alice", ["old news"])])
    log.append("2026-11-20T09:00:00.000Z", [RoomMessages("alice", ["two\nlines"])])
    bob = store.create_user("bob", GOOD_PASSWORD, actor="test")
    alice = store.get_user("alice")
    log.append("2026-11-21T09:00:00.000Z",
               [DirectMessage("alice", alice.id, "bob", bob.id, "psst")])
    store.close()

    plain = run_cli("history", "export", check=True).stdout.splitlines()
    assert plain == ["2026-10-01T09:00:00.000Z #1 <alice> old news",
                     "2026-11-20T09:00:00.000Z #2 <alice> two\\x0alines",
                     "2026-11-21T09:00:00.000Z #3 <alice -> bob> psst"]
    since = run_cli("history", "export", "--since", "2026-11-01", "--json", check=True)
    rows = [json.loads(line) for line in since.stdout.splitlines()]
    assert [(r["id"], r["recipient"], r["text"]) for r in rows] == [
        (2, None, "two\nlines"), (3, "bob", "psst")]
    bad = run_cli("history", "export", "--since", "last tuesday")  # a usage error, as click has them
    assert bad.returncode == 2 and "'last tuesday' is not a date" in bad.stderr
    assert "Traceback" not in bad.stderr

    purged = run_cli("history", "purge", "--before", "2026-11-01", "--yes", check=True)
    assert purged.stdout == "1 messages deleted\n"
    assert [line.split()[1] for line in run_cli("history", "export").stdout.splitlines()] == [
        "#2", "#3"]
    audit = run_cli("users", "audit", "--json", check=True)
    purges = [e for e in json.loads(audit.stdout) if e["action"] == "history.purge"]
    assert [e["detail"] for e in purges] == [{"before": "2026-11-01T00:00:00.000Z", "deleted": 1}]
    refused = run_cli("history", "purge", "--before", "2026-12-01")  # no --yes, no terminal
    assert refused.returncode == 1 and len(run_cli("history", "export").stdout.splitlines()) == 2
