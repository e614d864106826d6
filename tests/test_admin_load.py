"""Admin commands against a busy, running server: no lock errors, no stalls,
every disable or delete reaches the right live sessions quickly, and with
the server and the CLI writing one database at once for 30 s, the file stays
sound and keeps every write either acknowledged."""

from __future__ import annotations

import itertools
import selectors
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authchat.store import Store
from authchat.store.messages import MessageLog

from conftest import GOOD_PASSWORD, Runner
from helpers import Client, ServerProcess, add_users, server_config

CHATTERS = 100
ADMIN_LOOPS = 2
DURATION_S = 30.0
MESSAGES_PER_S = 20           # the room's steady traffic, from random chatters
PROBE_INTERVAL_S = 0.02
STALL_LIMIT_S = 0.1           # the server may never stall longer for admin work
REVOCATION_LIMIT_S = 2.0      # a committed disable or delete ends live sessions within
NEW_PASSWORD = "a brand new passphrase here"


class Room:
    """CHATTERS logged-in clients on one selector: a few say something now and
    then, all read everything; the count each one saw is kept."""

    def __init__(self, address: tuple[str, int], names: list[str]) -> None:
        self.clients = []
        for name in names:
            client = Client(address)
            client.login(name)
            client.sock.setblocking(False)
            self.clients.append(client)
        self.seen = [0] * len(names)
        self.closed: list[str] = []
        self._selector = selectors.DefaultSelector()
        for i, client in enumerate(self.clients):
            self._selector.register(client.sock, selectors.EVENT_READ, i)

    def run(self, until: float) -> None:
        turn = itertools.count()
        next_say = time.monotonic()
        while time.monotonic() < until:
            if time.monotonic() >= next_say:
                n = next(turn)
                sender = self.clients[n % len(self.clients)]
                sender.sock.setblocking(True)
                sender.send({"type": "say", "text": f"tick {n}"})
                sender.sock.setblocking(False)
                next_say += 1 / MESSAGES_PER_S
            for key, _ in self._selector.select(timeout=max(0.0, next_say - time.monotonic())):
                self._read(key.data)

    def _read(self, i: int) -> None:
        try:
            data = self.clients[i].sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.closed.append(f"chatter {i}")
            self._selector.unregister(self.clients[i].sock)
            return
        self.seen[i] += data.count(b'"type":"message"')

    def drain_until_all_saw(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while min(self.seen) < count and time.monotonic() < deadline:
            for key, _ in self._selector.select(timeout=0.1):
                self._read(key.data)


class Probe:
    """Pings the server every PROBE_INTERVAL_S and keeps each round trip."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.client = Client(address)
        self.client.login("probe")
        self.round_trips: list[float] = []

    def run(self, until: float, stop: threading.Event) -> None:
        for n in itertools.count():
            if time.monotonic() >= until:
                return
            started = time.monotonic()
            self.client.send({"type": "ping", "id": n})
            self.client.expect("pong", skip=("message", "join", "leave"), re=n)
            self.round_trips.append(time.monotonic() - started)
            stop.wait(PROBE_INTERVAL_S)  # the probe's own pace


def revoked_within(client: Client, limit: float) -> float:
    """Seconds until `client` is told its account is gone and is closed."""
    started = time.monotonic()
    client.expect_error("account_disabled", skip=("message", "join", "leave"))
    client.expect_closed(limit)
    return time.monotonic() - started


def admin_loop(run_cli: Runner, address: tuple[str, int], loop: int, until: float,
               report: dict[str, list[Any]]) -> None:
    """add, log in, disable, enable, passwd, delete: over and over, checking each."""
    for cycle in itertools.count():
        if time.monotonic() >= until:
            return
        name = f"adm{loop}c{cycle}"

        def cli(*args: str, input: str | None = None) -> None:
            result = run_cli("users", *args, input=input)
            report["runs"].append(result)
            if result.returncode != 0 or "locked" in result.stderr.lower():
                report["failures"].append((args, result.returncode, result.stderr))

        cli("add", name, "--password-stdin", input=GOOD_PASSWORD + "\n")
        victim = Client(address)
        victim.login(name)
        cli("disable", name)
        report["revocations"].append(revoked_within(victim, REVOCATION_LIMIT_S))
        cli("enable", name)
        cli("passwd", name, "--password-stdin", input=NEW_PASSWORD + "\n")
        victim = Client(address)
        victim.login(name, NEW_PASSWORD)
        cli("delete", name, "--yes")
        report["revocations"].append(revoked_within(victim, REVOCATION_LIMIT_S))


@pytest.mark.slow
def test_admin_commands_while_a_hundred_clients_chat(home: Path, run_cli: Runner) -> None:
    names = [f"chat{i:03d}" for i in range(CHATTERS)]
    add_users(home, *names, "probe")
    # The probe asks 50 times a second: more than a session's default rate.
    server = ServerProcess(home, "--no-tls", AUTHCHAT_LIMITS_MAX_CLIENTS="300",
                           AUTHCHAT_LIMITS_MAX_CONNECTIONS_PER_IP="300",
                           AUTHCHAT_LIMITS_CONNECTIONS_PER_IP_PER_MINUTE="1000",
                           AUTHCHAT_LIMITS_MESSAGES_PER_SECOND="100",
                           AUTHCHAT_LIMITS_MESSAGE_BURST="100")
    try:
        room = Room(server.address, names)
        probe = Probe(server.address)
        quiet = threading.Event()
        until = time.monotonic() + DURATION_S
        report: dict[str, list[Any]] = {"runs": [], "failures": [], "revocations": [],
                                        "crashed": []}

        def reporting(work: Callable[..., None], *args: Any) -> threading.Thread:
            """A worker thread whose exception fails the test instead of vanishing."""
            def run() -> None:
                try:
                    work(*args)
                except BaseException as e:
                    report["crashed"].append(repr(e))
            return threading.Thread(target=run)

        workers = [reporting(probe.run, until, quiet)] + [
            reporting(admin_loop, run_cli, server.address, loop, until, report)
            for loop in range(ADMIN_LOOPS)]
        for worker in workers:
            worker.start()
        room.run(until)
        for worker in workers:
            worker.join(DURATION_S + 60)
        said = int(DURATION_S * MESSAGES_PER_S)
        room.drain_until_all_saw(said)
    finally:
        server.kill()

    assert report["crashed"] == [] and report["failures"] == []
    # the probe asked all along (one round trip per 20 ms pause, and then some)
    assert len(probe.round_trips) > DURATION_S / PROBE_INTERVAL_S / 2, len(probe.round_trips)
    assert len(report["runs"]) >= 2 * 6, "too few admin commands ran to judge"
    assert max(report["revocations"]) < REVOCATION_LIMIT_S
    assert room.closed == [], "a chatter lost its session"
    assert min(room.seen) >= said - 1 and max(room.seen) <= said + 1  # nobody lost messages
    worst = max(probe.round_trips)
    print(f"admin commands: {len(report['runs'])}, probe round trips: "
          f"median {statistics.median(probe.round_trips) * 1000:.1f} ms, "
          f"max {worst * 1000:.1f} ms; revocations max {max(report['revocations']):.2f} s")
    assert worst < STALL_LIMIT_S
    assert b"Traceback" not in server.log
    assert_every_acknowledged_write_is_kept(home, report["runs"], max(room.seen))


AUDITED_AS = {"add": "user.create", "disable": "user.disable", "enable": "user.enable",
              "passwd": "user.passwd", "delete": "user.delete"}


def assert_every_acknowledged_write_is_kept(home: Path, runs: list[Any],
                                            delivered: int) -> None:
    """After the server and the admin commands wrote the file at once (and the
    server was killed): the file is sound, every admin command that said it
    succeeded is in the audit log, and every message anyone was given is in
    the history."""
    store = Store.from_config(server_config(home))
    try:
        assert [tuple(r) for r in store.connection().execute("PRAGMA integrity_check")] \
            == [("ok",)]
        audited = Counter((e.action, e.target) for e in store.audit_entries(limit=1_000_000))
        acknowledged = Counter((AUDITED_AS[run.args[4]], run.args[5])
                               for run in runs if run.returncode == 0)
        assert acknowledged - audited == Counter()
        stored = {m.text for m in MessageLog(store).since()}
        assert {f"tick {n}" for n in range(delivered)} <= stored
    finally:
        store.close()
