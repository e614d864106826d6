"""Hostile clients against `authchat serve` as a real process.

Each test attacks the server the way a bad client on a network would, and
checks two things: the attacker gets only what the protocol documents (an
error frame, a close), and everyone else is unaffected. The server runs as
its own process so its memory, threads and descriptors can be read from /proc.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import GOOD_PASSWORD, cli_env
from helpers import (
    DOCUMENTED_CODES,
    Client,
    ServerProcess,
    add_users,
    eventually,
    login_reply,
    proc_status,
    thread_cpu_ticks,
)

OTHER_PASSWORD = "an entirely different phrase"
# What must never reach a client: a traceback, an SQL error, a path on the server.
LEAKS = re.compile(r"Traceback|sqlite|File \"|\.py\b|(?<![\w.])/(?:usr|home|tmp|var|etc)/")


def serve(home: Path, **limits: object) -> ServerProcess:
    """The server on loopback without TLS, with some [limits] set through the environment.

    A lower-case key is a [limits] key; an upper-case one names any setting,
    after the AUTHCHAT_ prefix (AUTH_BCRYPT_COST=8).
    """
    env = {f"AUTHCHAT_{key}" if key.isupper() else f"AUTHCHAT_LIMITS_{key.upper()}": str(value)
           for key, value in limits.items()}
    return ServerProcess(home, "--no-tls", **env)


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.kill()


def source(n: int) -> str:
    """The nth loopback source address, so one test can be many client IPs."""
    return f"127.0.{n // 250}.{n % 250 + 2}"


def chat_round_trip(sender: Client, receiver: Client, text: str) -> None:
    """`sender` says `text` and `receiver` sees it, skipping whatever else arrives."""
    sender.send({"type": "say", "text": text})
    while True:
        frame = receiver.recv(skip=("join", "leave"))
        if frame["type"] == "message" and frame["text"] == text:
            return


def check_reply(line: bytes) -> None:
    """A line a misbehaving client got back: one JSON frame, nothing leaked."""
    frame = json.loads(line)
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), line
    if frame["type"] == "error":
        assert frame["code"] in DOCUMENTED_CODES, line
        assert not LEAKS.search(frame["message"]), line


def settled(server: ServerProcess, baseline: dict[str, int]) -> bool:
    """No thread or descriptor more than at the baseline."""
    now = proc_status(server.pid)
    return now["threads"] <= baseline["threads"] and now["fds"] <= baseline["fds"]


# -- protocol fuzzing against the live server ---------------------------------------------

SEED_FRAMES = [
    {"type": "register", "username": "fuzzer", "password": OTHER_PASSWORD, "id": 1},
    {"type": "login", "username": "fuzz", "password": GOOD_PASSWORD, "id": "a"},
    {"type": "ping", "id": 2},
    {"type": "say", "text": "hello there", "id": 3},
    {"type": "dm", "to": "alice", "text": "psst"},
    {"type": "who"},
    {"type": "kick", "username": "alice", "reason": "because"},
    {"type": "ban", "username": "bob"},
    {"type": "passwd", "old": OTHER_PASSWORD, "new": GOOD_PASSWORD + "!"},  # old is wrong
    {"type": "pong"},
]
EDGE_VALUES = [None, True, -0, 2**53, -(2**63), 10**400, 1e308, "", "\ud800", "\u202e",
               "\x1b[2J", "a\nb", "x" * 5000, [], {}, [[[[[]]]]], "\u0000", "NaN"]
NOISE = [b"\x00", b"\xff", b"\xc0\xaf", b"\n", b"\r", b"{", b"[" * 3000, b'"', b"\\u0000",
         b"\\ud800", b"NaN", b"1e999", b"9" * 5000]


def mutate(rng: random.Random) -> bytes:
    """One frame, valid or broken in a random way."""
    frame = dict(rng.choice(SEED_FRAMES))
    how = rng.randrange(6)
    if how == 0:  # a field with a value at the edges
        frame[rng.choice([*frame, "id", "text", "type"])] = rng.choice(EDGE_VALUES)
        return json.dumps(frame).encode() + b"\n"
    line = bytearray(json.dumps(frame).encode())
    if how == 1:  # flipped bytes
        for _ in range(rng.randint(1, 4)):
            line[rng.randrange(len(line))] = rng.randrange(256)
    elif how == 2:  # noise spliced in
        at = rng.randrange(len(line))
        line[at:at] = rng.choice(NOISE)
    elif how == 3:  # cut short
        del line[rng.randrange(len(line)):]
    elif how == 4:  # a piece repeated
        at = rng.randrange(len(line))
        line[at:at] = line[at:at + rng.randint(1, 40)] * rng.randint(2, 50)
    return bytes(line) + b"\n"  # how == 5: left valid


def fuzz_connection(client: Client, rng: random.Random, replies: list[bytes]) -> None:
    """Send mutated frames on one connection; keep every line the server answers."""
    try:
        for _ in range(rng.randint(1, 15)):
            client.send(mutate(rng))
        client.send(b'{"type":"ping","id":"end"}\n')
        while line := client.recv_line():  # until the pong or a close
            replies.append(line)
            if b'"re":"end"' in line:
                break
    except (ConnectionError, TimeoutError, EOFError):
        pass  # the server may close on a fatal frame while we still write
    finally:
        client.close()


@pytest.mark.slow
def test_fuzzed_frames_leave_the_server_serving_others(home: Path,
                                                       started: list[ServerProcess]) -> None:
    add_users(home, "alice", "bob", "fuzz")
    # One hashing slot: its worker thread and SQLite connection start with
    # the first login, so the counts below are the server's steady state.
    # The mutated logins fail on "fuzz" too: the throttle would then turn
    # away the fuzzers' own logins, which is not what this test is about.
    server = serve(home, messages_per_second=10000, message_burst=10000,
                   max_sessions_per_user=50, failed_logins_per_ip_per_minute=100_000,
                   failed_logins_per_account=100_000, AUTH_MAX_CONCURRENT_HASHES=1)
    started.append(server)
    alice, bob = Client(server.address), Client(server.address)
    alice.login("alice")
    bob.login("bob")
    baseline = proc_status(server.pid)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    replies: list[bytes] = []
    for round_ in range(20):
        clients = [Client(server.address, source_ip=source(round_ * 20 + i), timeout=5)
                   for i in range(20)]
        for client in clients[:10]:  # half of them fuzz the chat, half the handshake
            client.login("fuzz")
        workers = [threading.Thread(target=fuzz_connection,
                                    args=(client, random.Random(rng.random()), replies))
                   for client in clients]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        chat_round_trip(alice, bob, f"still here {round_}")  # others are served throughout
    assert len(replies) > 400 * 2, f"seed {seed}: the fuzz reached too little"
    for line in replies:
        check_reply(line)
    assert any(b'"bad_frame"' in line for line in replies), seed
    assert any(b'"bad_request"' in line for line in replies), seed
    assert server.proc.poll() is None
    assert eventually(lambda: settled(server, baseline), timeout=10), \
        (proc_status(server.pid), baseline)
    chat_round_trip(bob, alice, "the end")
    assert b"Traceback" not in server.log and b"internal failure" not in server.log, seed


# -- slowloris -----------------------------------------------------------------------------

def test_slowloris_connections_are_cut_at_the_handshake_deadline(
        home: Path, started: list[ServerProcess]) -> None:
    add_users(home, "alice", "bob")
    server = serve(home, handshake_timeout_s=2)
    started.append(server)
    trickle = b'{"type":"login","username":"alice","password":"' + b"x" * 200
    opened = time.monotonic()
    lorises = [Client(server.address, source_ip=source(i), timeout=10) for i in range(40)]
    for loris in lorises:
        loris.hello()
    sent = 0
    closed_after: dict[int, float] = {}
    while len(closed_after) < len(lorises) and time.monotonic() - opened < 10:
        # one byte each per round; a readable socket is the server's answer
        for i, loris in enumerate(lorises):
            if i not in closed_after:
                try:
                    loris.sock.send(trickle[sent:sent + 1])
                except OSError:
                    closed_after[i] = time.monotonic() - opened
        sent += 1
        for i, loris in enumerate(lorises):
            if i in closed_after:
                continue
            loris.sock.settimeout(0.005)
            try:
                line = loris.recv_line()
            except TimeoutError:
                continue
            assert not line or json.loads(line)["code"] == "handshake_timeout", line
            closed_after[i] = time.monotonic() - opened
        if sent == 5:  # meanwhile, a real user logs in and chats at once
            started_login = time.monotonic()
            alice, bob = Client(server.address), Client(server.address)
            alice.login("alice")
            bob.login("bob")
            chat_round_trip(alice, bob, "the room works")
            assert time.monotonic() - started_login < 1.5
    assert len(closed_after) == len(lorises)
    assert min(closed_after.values()) >= 1.9  # not before the deadline...
    assert max(closed_after.values()) < 4.5   # ...and not long after it
    chat_round_trip(bob, alice, "and still works")


# -- a client that never reads -----------------------------------------------------------

def test_a_client_that_never_reads_is_evicted_and_costs_bounded_memory(
        home: Path, started: list[ServerProcess]) -> None:
    queue_bytes = 64 * 1024
    add_users(home, "alice", "bob", "sloth")
    server = serve(home, outbound_queue_bytes=queue_bytes, messages_per_second=10000,
                   message_burst=10000)
    started.append(server)
    sloth = Client(server.address, rcvbuf=4096)
    sloth.login("sloth")  # and never reads again
    alice, bob = Client(server.address), Client(server.address)
    alice.login("alice")
    bob.login("bob")
    before = proc_status(server.pid)
    text = "x" * 2000
    ids: list[int] = []
    leaves: list[dict[str, Any]] = []
    for batch in range(150):  # 3,000 messages of 2 KB: a hundred times sloth's queue
        alice.send(b"".join(b'{"type":"say","text":"%s"}\n' % text.encode() for _ in range(20)))
        while len(ids) < (batch + 1) * 20:
            frame = bob.recv(skip=("join",))
            if frame["type"] == "leave":
                leaves.append(frame)
            else:
                ids.append(frame["id"])
        for _ in range(20):
            alice.expect("message")  # alice reads her echoes, or she would be the slow one
    peak = proc_status(server.pid)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # bob missed nothing, in order
    if not leaves:  # evicted, but the cut may come a moment later
        leaves.append(bob.recv(timeout=10))
    assert leaves == [{"type": "leave", "username": "sloth", "reason": "slow_consumer"}]
    # What sloth holds is bounded by its queue; a server that kept every
    # message for it would have grown by the whole 6 MB and more.
    assert peak["rss_kib"] - before["rss_kib"] < 4 * queue_bytes // 1024 + 2048, (before, peak)
    chat_round_trip(alice, bob, "after")
    sloth.expect_closed()


# -- connection flood ------------------------------------------------------------------------

def test_a_connection_flood_is_refused_and_sessions_go_on(home: Path,
                                                          started: list[ServerProcess]) -> None:
    max_clients, per_ip = 40, 16
    add_users(home, "alice", "bob")
    # Here the flood holds its connections open without logging in: the caps
    # on those alone, and on opening them fast, have tests of their own.
    server = serve(home, max_clients=max_clients, max_connections_per_ip=per_ip,
                   max_unauthenticated_per_ip=per_ip, connections_per_ip_per_minute=1000)
    started.append(server)
    alice, bob = Client(server.address), Client(server.address)
    alice.login("alice")
    bob.login("bob")
    baseline = proc_status(server.pid)
    flood, answers = [], []
    for n in range(100):  # one address past its limit, then many past the total
        client = Client(server.address, source_ip=source(0 if n < 30 else n), timeout=5)
        flood.append(client)
        first = client.recv()
        answers.append(first.get("code", first["type"]))  # hello, or the refusal's code
        if n % 10 == 0:
            chat_round_trip(alice, bob, f"during the flood {n}")
    assert answers[:per_ip] == ["hello"] * per_ip
    assert answers[per_ip:30] == ["too_many_connections"] * (30 - per_ip)
    # 2 sessions and 16 from the first address are in; the total allows 22 more
    room_left = max_clients - 2 - per_ip
    assert answers[30:30 + room_left] == ["hello"] * room_left
    assert set(answers[30 + room_left:]) == {"too_many_connections"}
    assert proc_status(server.pid)["threads"] <= 2 * max_clients + 10
    flood[per_ip].expect_closed()
    flood[-1].expect_closed()
    for client in flood:
        client.close()
    assert eventually(lambda: settled(server, baseline), timeout=10), \
        (proc_status(server.pid), baseline)
    carol = Client(server.address, source_ip=source(0))
    carol.hello()  # the address may connect again
    chat_round_trip(bob, alice, "after the flood")


# -- login brute force -------------------------------------------------------------------------

class Attempt:
    """One wrong-password login on a fresh connection, and what came back."""

    def __init__(self, address: tuple[str, int], source_ip: str, username: str) -> None:
        reply = login_reply(address, username, OTHER_PASSWORD, source_ip)
        self.at, self.username = time.monotonic(), username
        self.code, self.retry_after = reply["code"], reply.get("retry_after")


@pytest.mark.slow
def test_a_login_brute_force_is_throttled_and_bcrypt_stays_within_its_slots(
        home: Path, started: list[ServerProcess]) -> None:
    """200 wrong passwords from 40 addresses, half on one account, half sprayed
    over unknown names. bcrypt runs at cost 8 here (set through configuration,
    like cost 4 elsewhere) so that its CPU time can be told from the rest; the
    account's hourly allowance is 30, so that 100 guesses spend it."""
    add_users(home, "alice", "bob")
    allowance = 30
    # Five of the workers below use one address at a time: let them all connect.
    server = serve(home, AUTH_BCRYPT_COST=8, failed_logins_per_account_per_hour=allowance,
                   max_unauthenticated_per_ip=5)
    started.append(server)
    Client(server.address).login("alice")  # where the owner usually logs in from
    slots = os.cpu_count() or 1  # max_concurrent_hashes = 0: one per core
    attempts: list[Attempt] = []
    halfway, stop = threading.Event(), threading.Event()

    def attacker(worker: int) -> None:
        for k in range(20):
            n = worker * 20 + k
            name = "alice" if n % 2 == 0 else f"spray{n}"
            attempts.append(Attempt(server.address, source(10 + n % 40), name))
            if len(attempts) >= 100:
                halfway.set()
            stop.wait(0.25)  # the attack's pace

    before = thread_cpu_ticks(server.pid)
    workers = [threading.Thread(target=attacker, args=(w,)) for w in range(10)]
    for worker in workers:
        worker.start()
    assert halfway.wait(30)
    bob = Client(server.address)  # meanwhile a real user, from another address
    bob.login("bob")
    for worker in workers:
        worker.join(60)
    after = thread_cpu_ticks(server.pid)

    assert len(attempts) == 200
    assert {a.code for a in attempts} <= {"bad_credentials", "rate_limited"}
    on_alice = sorted((a for a in attempts if a.username == "alice"), key=lambda a: a.at)
    checked = [a for a in on_alice if a.code == "bad_credentials"]
    waits = [a.retry_after for a in on_alice if a.code == "rate_limited"]
    # Each address guessed 5 times, within its own free guesses; together they
    # spent the account's allowance, and the other 70 got rate_limited without
    # a hash, told to wait for the next one (3600 / 30 s).
    assert allowance <= len(checked) <= allowance + 1, [a.code for a in on_alice]
    assert min(waits) > 0 and max(waits) > 60, waits
    # Every hash ran on the hashing threads: at most one per core at a time.
    used = sorted((after[tid] - before.get(tid, 0) for tid in after), reverse=True)
    assert sum(used) >= 50, used  # the storm did hash (10 ms ticks)
    assert sum(used[:slots]) >= 0.75 * sum(used), used

    # Even the right password waits where the account has not logged in from...
    stranger = login_reply(server.address, "alice", source_ip=source(99))
    assert stranger["code"] == "rate_limited", stranger
    # ...but the owner, where they logged in before, gets in at once: no lockout.
    alice = Client(server.address)
    alice.login("alice")
    chat_round_trip(alice, bob, "we are in")


# -- hostile text: in the log and on the terminal -------------------------------------------

HOSTILE_TEXTS = ["x\nINFO admin login ok", "\u2028x", "\x1b[2J", "\u202eecila", "a\x9b31mb"]
UNSAFE_ON_A_TERMINAL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def read_until(process: subprocess.Popen[bytes], marker: str, timeout: float = 30) -> str:
    """What `process` prints until `marker` has appeared (read unbuffered, so
    that select sees everything not yet read)."""
    assert process.stdout is not None
    fd, seen, deadline = process.stdout.fileno(), b"", time.monotonic() + timeout
    while marker.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"{marker!r} never came: {seen!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen.decode()


def test_hostile_names_and_text_are_escaped_in_the_log_and_the_terminal(
        home: Path, started: list[ServerProcess]) -> None:
    add_users(home, "mallory", "bob")
    server = serve(home)
    started.append(server)
    port = ["--port", str(server.address[1]), "--no-tls", "--password-stdin"]
    readers = [subprocess.Popen(
        [sys.executable, "-m", "authchat", "connect", "bob", *port, *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=cli_env(home)) for extra in ([], ["--json"])]
    for reader in readers:
        assert reader.stdin is not None
        reader.stdin.write(GOOD_PASSWORD.encode() + b"\n/who\n")
        reader.stdin.flush()
        read_until(reader, "bob")  # in the room
    for name in HOSTILE_TEXTS:  # as usernames: refused, and logged harmlessly
        for kind in ("login", "register"):
            client = Client(server.address)
            client.hello()
            client.send({"type": kind, "username": name, "password": GOOD_PASSWORD})
            assert client.recv()["code"] in {"bad_request", "bad_credentials",
                                             "invalid_username"}
    mallory = Client(server.address)
    mallory.login("mallory")
    text = "line one\nline two \u202eevil\u202c \u2028 end"  # allowed, but not raw on screens
    mallory.send({"type": "say", "text": text})
    mallory.send({"type": "dm", "to": "bob", "text": text})
    mallory.send({"type": "say", "text": "done"})
    outputs = [read_until(reader, "done") + reader.communicate(b"", timeout=30)[0].decode()
               for reader in readers]
    for output in outputs:
        assert "evil" in output and "done" in output
        assert not UNSAFE_ON_A_TERMINAL.search(output), repr(output)
    assert "line one\n" in outputs[0]  # a multi-line message keeps its lines
    assert "\\u202e" in outputs[0] and "\\u2028" in outputs[0]
    json_frames = [json.loads(line) for line in outputs[1].splitlines()]
    assert text in [frame.get("text") for frame in json_frames]  # same text, decoded
    log = server.log.decode()
    assert GOOD_PASSWORD not in log
    for line in log.splitlines():  # one line per event, each the logger's own
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ authchat", line), line
        assert not UNSAFE_ON_A_TERMINAL.search(line), repr(line)
