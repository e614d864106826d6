"""The soak's load: one worker process's stayers and churners, for as long as the clock runs.

Stayers log in before the clock starts and stay to the end; a few of them
send at a steady rate. Churners log in, stay a random while and leave (half
of the time with `quit`, half by dropping the connection), over and over,
until the clock stops. Then every sender says an end marker that names how
many messages it sent, and each stayer reads until it has every sender's.

Each stayer checks its room as it reads (`RoomView`): message ids must run on
one by one, with no gap, duplicate or step back, and each sender's sequence
numbers too; a digest of the whole sequence lets the parent check that every
stayer saw the same one. A churner checks each of its sessions the same way,
from the first message that session saw.

Unlike the fan-out load, every client parses as it reads: at a steady, modest
rate the generator keeps up, and keeping ten minutes of traffic to check
afterwards would take gigabytes.

Every loop here is bounded: by the clock plus the drain time, and by counts.
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
import selectors
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .drivers import Driver, make_driver
from .loadgen import Client, Plan, connect, connect_all, flush, raise_open_files_limit

# The room's message frame, as the server assembles it (protocol.message_template):
# the id, then the text, which starts "P<sender>:<seq>:<send time>Q~" for a
# message and "E<sender>:<messages sent>Q~" for a sender's end marker.
MESSAGE = re.compile(
    rb'"type":"message","id":(\d+),"from":"[^"]*","text":"([PE])(\d+):(\d+)(?::(\d+))?Q~')
RECV_BYTES = 262144
_RECEIVE_BUFFER = memoryview(bytearray(RECV_BYTES))
LATENCY_SAMPLE = 100       # keep the latency of messages whose id is a multiple of this
QUIT_FRAME = b'{"type":"quit"}\n'
IDLE_WAIT_S = 0.05         # the longest the loop sleeps: the churn timers' resolution


@dataclass
class SoakPlan:
    connection: Plan     # clients: this worker's stayers; senders: every sender, anywhere;
                         # rate: per sender; messages: most any sender may send
    churners: list[int]  # this worker's churners
    seconds: float       # the clock: sending and churning stop then
    drain_s: float       # after it, how long to wait for every end marker
    seed: int
    online_s: tuple[float, float]   # a churner's stay, drawn uniformly from this range
    offline_s: tuple[float, float]  # and its time away


class RoomView:
    """One session's room, checked message by message as it arrives."""

    def __init__(self, joined_late: bool) -> None:
        self.joined_late = joined_late  # a churner: its senders' sequences start anywhere
        self.first_id: int | None = None
        self.next_id: int | None = None
        self.delivered = 0
        self.missing: set[int] = set()
        self.duplicates = 0
        self.reordered = 0
        self.sender_errors = 0
        self.sender_next: dict[int, int] = {}
        self.ends: dict[int, int] = {}  # sender: the count its end marker announced
        self._digest = hashlib.blake2b(digest_size=16)

    def add(self, msg_id: int, end: bool, sender: int, number: int) -> None:
        """One message: `number` is its sequence number, or for an end marker the count."""
        if self.next_id is None:
            self.first_id = self.next_id = msg_id
        if msg_id < self.next_id:
            if msg_id in self.missing:  # it came late: in the room, but out of order
                self.missing.discard(msg_id)
                self.reordered += 1
                self.delivered += 1
            else:
                self.duplicates += 1
            return
        self.missing.update(range(self.next_id, msg_id))
        self.next_id = msg_id + 1
        self.delivered += 1
        self._digest.update(b"%d %d %d %d\n" % (msg_id, end, sender, number))
        if end:
            self.ends[sender] = number
        else:
            self._check_sender(sender, number)

    def _check_sender(self, sender: int, seq: int) -> None:
        expected = self.sender_next.get(sender, None if self.joined_late else 0)
        if expected is not None and seq != expected:
            self.sender_errors += 1
        self.sender_next[sender] = max(seq + 1, expected or 0)

    @property
    def errors(self) -> int:
        return len(self.missing) + self.duplicates + self.reordered + self.sender_errors

    def summary(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "gaps": len(self.missing),
                "duplicates": self.duplicates, "reordered": self.reordered,
                "sender_errors": self.sender_errors, "first_id": self.first_id,
                "last_id": None if self.next_id is None else self.next_id - 1,
                "ends": len(self.ends), "digest": self._digest.hexdigest()}


class Stayer:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.view = RoomView(joined_late=False)
        self.sent = 0  # messages said, if it is a sender
        self.dropped = False


class State(enum.Enum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    QUITTING = "quitting"  # said quit: waiting for the server to close


class Churner:
    def __init__(self, number: int) -> None:
        self.number = number
        self.state = State.OFFLINE
        self.due = 0.0  # when the state's time is up
        self.client: Client | None = None
        self.view = RoomView(joined_late=True)
        self.connecting: Future[Client] | None = None


def run_soak_worker(plan: SoakPlan, pipe: Connection) -> None:
    """The body of one soak worker process: set up, report ready, run on "go", report."""
    raise_open_files_limit()
    driver = make_driver(plan.connection)
    try:
        clients = connect_all(plan.connection, plan.connection.clients, driver)
    except Exception as e:  # report, so the parent does not wait for nothing
        pipe.send({"error": f"setup failed: {e!r}"})
        return
    pipe.send({"ready": len(clients)})
    if pipe.recv() == "go":
        pipe.send(_Soak(plan, driver, clients).run())
    else:
        for client in clients:
            client.sock.close()


class _Soak:
    def __init__(self, plan: SoakPlan, driver: Driver, clients: list[Client]) -> None:
        self.plan = plan
        self.load = plan.connection
        self.driver = driver
        self.random = random.Random(plan.seed)
        self.selector = selectors.DefaultSelector()
        self.stayers = [Stayer(c) for c in clients]
        senders = self.load.senders
        mine = [s for s in self.stayers if s.client.number in senders]
        interval = 1 / self.load.rate if self.load.rate else 0.0
        # Senders take turns evenly, so the room's rate is steady, not bursty.
        self.senders = [(s, interval * senders.index(s.client.number) / len(senders))
                        for s in mine]
        self.interval = interval
        self.churners = [Churner(n) for n in plan.churners]
        self.connector = ThreadPoolExecutor(self.load.setup_threads)
        self.unsent: set[Client] = set()
        self.latencies: list[int] = []
        self.counts = dict.fromkeys(("logins", "login_failures", "quits", "drops",
                                     "quit_timeouts", "closed_by_server", "stayers_dropped",
                                     "session_errors"), 0)

    # -- the loop ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for stayer in self.stayers:
            self._watch(stayer.client, stayer)
        start = time.monotonic()
        cpu_before = time.process_time()
        clock_end, hard_end = start + self.plan.seconds, start + self.plan.seconds + \
            self.plan.drain_s
        for churner in self.churners:  # first logins spread over one time away
            churner.due = start + self.random.uniform(*self.plan.offline_s)
        ended = False
        while (now := time.monotonic()) < hard_end:
            clock_running = now < clock_end
            if clock_running:
                self._say_due(start, now)
            elif not ended:
                self._say_ends()
                ended = True
            self._churn(now, clock_running)
            if ended and self._finished():
                break
            for key, _ in self.selector.select(self._wait(start, now, clock_running)):
                self._receive(key.data)
            self._flush_unsent()
        timed_out = not self._finished()
        self._close_all()
        return self._report(timed_out, time.process_time() - cpu_before)

    def _wait(self, start: float, now: float, clock_running: bool) -> float:
        """Seconds until the next send is due, at most IDLE_WAIT_S."""
        wait = IDLE_WAIT_S
        for stayer, offset in self.senders if clock_running else []:
            due = start + offset + stayer.sent * self.interval
            wait = min(wait, due - now)
        return max(0.0, wait)

    def _finished(self) -> bool:
        everyone = len(self.load.senders)
        return all(len(s.view.ends) == everyone for s in self.stayers if not s.dropped) and \
            all(c.state is State.OFFLINE for c in self.churners)

    # -- saying -------------------------------------------------------------------

    def _say_due(self, start: float, now: float) -> None:
        for stayer, offset in self.senders:
            client = stayer.client
            while stayer.sent < self.load.messages and \
                    start + offset + stayer.sent * self.interval <= now:
                client.outbuf += self.driver.message(client.number, stayer.sent,
                                                     time.monotonic_ns(), self.load.payload_bytes)
                stayer.sent += 1
            self._send(client)

    def _say_ends(self) -> None:
        for stayer, _ in self.senders:
            end = b"E%d:%dQ~" % (stayer.client.number, stayer.sent)
            stayer.client.outbuf += b'{"type":"say","text":"' + end + b'"}\n'
            self._send(stayer.client)

    def _send(self, client: Client) -> None:
        try:
            flush(client)
        except OSError:
            return  # the connection is gone: its reader finds out and says so
        if client.outbuf or (client.tls and client.sock.has_unsent()):
            self.unsent.add(client)
        else:
            self.unsent.discard(client)

    def _flush_unsent(self) -> None:
        for client in list(self.unsent):
            self._send(client)

    # -- receiving ----------------------------------------------------------------

    def _watch(self, client: Client, owner: Stayer | Churner) -> None:
        client.sock.setblocking(False)
        self.selector.register(client.sock, selectors.EVENT_READ, owner)
        self._check(owner, _whole_lines(client, b""))  # what came with the welcome

    def _receive(self, owner: Stayer | Churner) -> None:
        client = owner.client
        assert client is not None
        lines, closed = _read(client)
        self._check(owner, lines)
        reply = self.driver.keepalive(lines)
        if reply:
            client.outbuf += reply
            self._send(client)
        if closed:
            self._closed_by_server(owner)

    def _check(self, owner: Stayer | Churner, lines: bytes) -> None:
        view, now = owner.view, time.monotonic_ns()
        sample = isinstance(owner, Stayer)
        for match in MESSAGE.finditer(lines):
            msg_id, end = int(match[1]), match[2] == b"E"
            view.add(msg_id, end, int(match[3]), int(match[4]))
            if sample and not end and msg_id % LATENCY_SAMPLE == 0:
                self.latencies.append(now - int(match[5]))

    def _closed_by_server(self, owner: Stayer | Churner) -> None:
        if isinstance(owner, Stayer):
            self.counts["stayers_dropped"] += 1
            owner.dropped = True
            self._forget(owner.client)
            return
        if owner.state is not State.QUITTING:
            self.counts["closed_by_server"] += 1
        self._go_offline(owner, time.monotonic())

    def _forget(self, client: Client) -> None:
        self.unsent.discard(client)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    # -- churning -------------------------------------------------------------------

    def _churn(self, now: float, clock_running: bool) -> None:
        for churner in self.churners:
            if churner.state is State.CONNECTING:
                self._connected(churner, now, clock_running)
            elif churner.due > now:
                continue
            elif churner.state is State.OFFLINE and clock_running:
                churner.connecting = self.connector.submit(connect, self.load, churner.number,
                                                           self.driver)
                churner.state = State.CONNECTING
            elif churner.state is State.ONLINE:
                self._leave(churner, now)
            elif churner.state is State.QUITTING:
                self.counts["quit_timeouts"] += 1
                self._go_offline(churner, now)
        if not clock_running:  # the clock has stopped: everyone online leaves now
            for churner in self.churners:
                if churner.state is State.ONLINE:
                    self._leave(churner, now)

    def _connected(self, churner: Churner, now: float, clock_running: bool) -> None:
        future = churner.connecting
        assert future is not None
        if not future.done():
            return
        churner.connecting = None
        try:
            client = future.result()
        except Exception:  # refused, timed out, or closed during the handshake
            self.counts["login_failures"] += 1
            churner.state, churner.due = State.OFFLINE, now + self.random.uniform(
                *self.plan.offline_s)
            return
        self.counts["logins"] += 1
        churner.client, churner.view = client, RoomView(joined_late=True)
        churner.state, churner.due = State.ONLINE, now + self.random.uniform(*self.plan.online_s)
        self._watch(client, churner)
        if not clock_running:
            self._leave(churner, now)

    def _leave(self, churner: Churner, now: float) -> None:
        """Quit politely or just drop the connection, at random."""
        client = churner.client
        assert client is not None
        if self.random.random() < 0.5:
            self.counts["drops"] += 1
            self._go_offline(churner, now)
            return
        self.counts["quits"] += 1
        client.outbuf += QUIT_FRAME
        self._send(client)
        # Generous: the server closes at once; only a hung close runs this out.
        churner.state, churner.due = State.QUITTING, now + self.plan.drain_s / 2

    def _go_offline(self, churner: Churner, now: float) -> None:
        if churner.client is not None:
            self._forget(churner.client)
            churner.client = None
        self.counts["session_errors"] += churner.view.errors
        churner.state, churner.due = State.OFFLINE, now + self.random.uniform(
            *self.plan.offline_s)

    # -- the end ----------------------------------------------------------------------

    def _close_all(self) -> None:
        for stayer in self.stayers:
            if not stayer.dropped:
                self._forget(stayer.client)
        for churner in self.churners:
            if churner.client is not None:
                self._forget(churner.client)
        self.connector.shutdown(wait=True, cancel_futures=True)
        for churner in self.churners:  # logins still under way when the drain ran out
            if churner.connecting is not None and churner.connecting.done() and \
                    churner.connecting.exception() is None:
                churner.connecting.result().sock.close()
        self.selector.close()

    def _report(self, timed_out: bool, cpu_s: float) -> dict[str, Any]:
        return {"sent": {stayer.client.number: stayer.sent for stayer, _ in self.senders},
                "stayers": [s.view.summary() for s in self.stayers],
                "churn": self.counts, "latencies_ns": self.latencies,
                "timed_out": timed_out, "worker_cpu_s": cpu_s}


def _read(client: Client) -> tuple[bytes, bool]:
    """The whole lines that have arrived, and whether the server has closed."""
    chunks = []
    closed = False
    while True:
        try:
            size = client.sock.recv_into(_RECEIVE_BUFFER)
        except BlockingIOError:
            break
        except OSError:  # reset
            closed = True
            break
        if not size:
            closed = True
            break
        chunks.append(bytes(_RECEIVE_BUFFER[:size]))
        if size < RECV_BYTES and not (client.tls and client.sock.pending()):
            break
    return _whole_lines(client, b"".join(chunks)), closed


def _whole_lines(client: Client, data: bytes) -> bytes:
    """`client`'s held-back bytes and `data`, up to the last newline; keeps the rest."""
    data = client.inbuf + data
    cut = data.rfind(b"\n") + 1
    client.inbuf = data[cut:]
    return data[:cut]
