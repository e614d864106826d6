"""The load generator: worker processes, each driving many clients through one selector.

A worker connects and logs in its share of the clients (blocking, untimed),
reports ready, waits for "go", then runs the measured phase without threads:
senders write tagged messages, every client reads, and each delivery is
checked against the sender's sequence (a gap is a loss, a step back a
reorder). Every message carries `P<sender>:<seq>:<monotonic ns>Q~`, so the
same checks and the latency measurement work for every protocol driver.

To keep the generator from being the bottleneck, no client parses JSON or
IRC, and while the clock runs most clients only count markers (bytes.count,
in C) and keep what they received; the per-message checks run on it after
the clock stops. The few clients whose deliveries pace the senders (each
sender's witness) and, in paced runs, every client parse as they go.

Every loop here is bounded: by message counts, and by the plan's deadline.
The parent's side of a worker process is here too: start_workers,
wait_ready and join_workers, which the soak (soakload.py) shares.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .drivers import MARKER_END as MARKER_END_TEXT
from .drivers import Driver, make_driver
from .tlswire import TlsWire

MARKER = re.compile(rb"P(\d+):(\d+):(\d+)Q~")
MARKER_END = MARKER_END_TEXT.encode()
RECV_BYTES = 262144
_RECEIVE_BUFFER = memoryview(bytearray(RECV_BYTES))  # reused: no 256 KiB allocation per read
FAN_OUT_LATENCY_SAMPLE = 64
SETUP_THREADS = 64  # fan-out keeps one latency in 64; paced runs keep all


@dataclass
class Plan:
    driver: str
    host: str
    port: int
    clients: list[int]            # global client numbers this worker drives
    senders: list[int]            # global numbers of the clients that send (any worker)
    messages: int                 # per sender
    in_flight: int = 64
    rate: float | None = None     # messages per second per sender; None: as fast as allowed
    payload_bytes: int = 100
    tls: bool = False
    password: str = ""
    deadline_s: float = 120.0
    idle: bool = False            # connect and hold only (the connections scenario)
    setup_threads: int = 4        # clients connecting at once (untimed): see servers.py
    extra: dict[str, Any] = field(default_factory=dict)


class Client:
    """One non-blocking client connection in the measured phase."""

    def __init__(self, number: int, sock: Any, driver: Driver, inbuf: bytes = b"") -> None:
        self.number = number
        self.sock = sock
        self.tls = isinstance(sock, TlsWire)
        self.driver = driver
        self.inbuf = inbuf  # received, not yet looked at: the rest of the handshake's read
        self.outbuf = bytearray()
        self.received = 0
        self.next_seq: dict[int, int] = {}
        self.lost = 0
        self.reordered = 0
        self.parse_now = True        # False: count now, check after the clock stops
        self.kept: list[bytes] = []  # what a counting client received, for the checks


@functools.cache
def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # benchmarking our own server on loopback
    return context


def connect(plan: Plan, number: int, driver: Driver) -> Client:
    """A connected, logged-in client, on a socket or a TlsWire that behaves like one."""
    sock = socket.create_connection((plan.host, plan.port), timeout=30)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire: Any = sock
        if plan.tls:
            wire = TlsWire(sock, _client_context(), plan.host)
        rest = driver.handshake(wire, number)
    except BaseException:
        sock.close()  # a failed login must not leave its socket to the garbage collector
        raise
    return Client(number, wire, driver, rest)


def connect_all(plan: Plan, numbers: list[int], driver: Driver) -> list[Client]:
    """Clients `numbers`, `plan.setup_threads` of them connecting at once."""
    with ThreadPoolExecutor(plan.setup_threads) as pool:
        return list(pool.map(lambda n: connect(plan, n, driver), numbers))


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_workers(body: Callable[[Any, Connection], None],
                  plans: list[Any]) -> tuple[list[Connection], list[BaseProcess]]:
    """A spawned process per plan, running `body(plan, pipe)`; returns the parent's
    ends of the pipes, and the processes."""
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    procs: list[BaseProcess] = []
    for plan in plans:
        parent, child = context.Pipe()
        proc = context.Process(target=body, args=(plan, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    return pipes, procs


def wait_ready(pipes: list[Connection], timeout_s: float) -> list[dict[str, Any]]:
    """Each worker's ready report. Raises RuntimeError if one failed or never answered."""
    reports = []
    for pipe in pipes:
        if not pipe.poll(timeout_s):
            raise RuntimeError("a load worker never got ready")
        report = pipe.recv()
        if "error" in report:
            raise RuntimeError(report["error"])
        reports.append(report)
    return reports


def join_workers(procs: list[BaseProcess]) -> None:
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def run_worker(plan: Plan, pipe: Connection) -> None:
    """The body of one worker process: set up, report, run on "go", report results."""
    raise_open_files_limit()
    driver = make_driver(plan)
    try:
        clients = connect_all(plan, plan.clients, driver)
    except Exception as e:  # report, so the parent does not wait for nothing
        pipe.send({"error": f"setup failed: {e!r}"})
        return
    pipe.send({"ready": len(clients)})
    message = pipe.recv()
    if message != "go":
        return
    result = _measure(plan, clients) if not plan.idle else _hold(plan, clients, pipe)
    pipe.send(result)
    for client in clients:
        client.sock.close()


def _hold(plan: Plan, clients: list[Client], pipe: Connection) -> dict[str, Any]:
    """Keep idle connections open until the parent says stop (bounded by the deadline)."""
    pipe.send({"holding": len(clients)})
    pipe.poll(plan.deadline_s)
    return {"held": len(clients), "worker_cpu_s": 0.0}


def _measure(plan: Plan, clients: list[Client]) -> dict[str, Any]:
    driver = clients[0].driver
    senders = set(plan.senders)
    mine = [c for c in clients if c.number in senders]
    expected_each = {c.number: len(plan.senders) * plan.messages
                     - (plan.messages if c.number in senders and not driver.echoes_own else 0)
                     for c in clients}
    # Whose deliveries tell a sender how many of its messages are through: its
    # own echo, or (IRC echoes nothing) another client here, a listener if any.
    others = sorted(clients, key=lambda w: w.number in senders)
    witness = {c.number: c for c in mine} if driver.echoes_own else \
        {c.number: next(w for w in others if w is not c) for c in mine}
    sent = {c.number: 0 for c in mine}
    acked = {c.number: 0 for c in mine}
    latencies: list[int] = []
    if not interval_ns_of(plan):
        for client in clients:
            client.parse_now = client in witness.values()
    selector = selectors.DefaultSelector()
    for client in clients:
        client.sock.setblocking(False)
        selector.register(client.sock, selectors.EVENT_READ, client)
    start = time.monotonic_ns()
    cpu_before = time.process_time()
    deadline = time.monotonic() + plan.deadline_s
    interval_ns = interval_ns_of(plan)
    pending = sum(expected_each.values())
    while pending > 0 and time.monotonic() < deadline:
        now = time.monotonic_ns()
        for sender in mine:
            n = sender.number
            while sent[n] < plan.messages and sent[n] - acked[n] < plan.in_flight and \
                    (not interval_ns or start + sent[n] * interval_ns <= now):
                sender.outbuf += driver.message(n, sent[n], time.monotonic_ns(),
                                                plan.payload_bytes)
                sent[n] += 1
            flush(sender)
        for key, _ in selector.select(timeout=0.001 if interval_ns else 0.01):
            client = key.data
            got = _read(client, latencies, 1 if interval_ns else FAN_OUT_LATENCY_SAMPLE)
            pending -= got
            flush(client)  # keep-alive replies
            for n, w in witness.items():
                if w is client:
                    acked[n] = client.next_seq.get(n, 0)
        for sender in mine:
            flush(sender)
    elapsed = (time.monotonic_ns() - start) / 1e9
    cpu_s = time.process_time() - cpu_before
    for client in clients:  # the clock has stopped: check what was only counted
        if not client.parse_now:
            client.received = 0
            _check(client, b"".join(client.kept), [], 0, 1)
            client.kept.clear()
    return {
        "received": sum(c.received for c in clients),
        "expected": sum(expected_each.values()),
        "lost": sum(c.lost for c in clients) + sum(
            max(0, expected_each[c.number] - c.received) for c in clients),
        "reordered": sum(c.reordered for c in clients),
        "elapsed_s": elapsed,
        "latencies_ns": latencies,
        "timed_out": pending > 0,
        "worker_cpu_s": cpu_s,
    }


def flush(client: Client) -> None:
    """Send what `client` has queued, as far as its socket takes it now."""
    if not client.outbuf and not (client.tls and client.sock.has_unsent()):
        return
    try:
        sent = client.sock.send(client.outbuf)
    except BlockingIOError:
        return
    del client.outbuf[:sent]


def interval_ns_of(plan: Plan) -> int:
    """Nanoseconds between one sender's messages; 0 for as fast as allowed."""
    return int(1e9 / plan.rate) if plan.rate else 0


def _read(client: Client, latencies: list[int], sample_every: int) -> int:
    """Read what is there; returns the number of tagged messages delivered."""
    got = 0
    while True:
        try:
            size = client.sock.recv_into(_RECEIVE_BUFFER)
        except BlockingIOError:
            break
        if not size:
            break
        now = time.monotonic_ns()
        buffer = client.inbuf + _RECEIVE_BUFFER[:size]
        cut = buffer.rfind(b"\n") + 1
        lines, client.inbuf = buffer[:cut], buffer[cut:]
        if client.parse_now:
            got += _check(client, lines, latencies, now, sample_every)
        else:
            count = lines.count(MARKER_END)
            got += count
            client.kept.append(lines)
            if count and (client.received // sample_every) != \
                    ((client.received + count) // sample_every):
                _sample_first(lines, latencies, now)
            client.received += count
        reply = client.driver.keepalive(lines)
        if reply:
            client.outbuf += reply
        if size < RECV_BYTES and not (client.tls and client.sock.pending()):
            break
    return got


def _check(client: Client, lines: bytes, latencies: list[int], now: int,
           sample_every: int) -> int:
    """Check each delivery against its sender's sequence; returns how many were new."""
    got = 0
    for match in MARKER.finditer(lines):
        sender, seq = int(match[1]), int(match[2])
        expected = client.next_seq.get(sender, 0)
        if seq > expected:
            client.lost += seq - expected
        elif seq < expected:
            client.reordered += 1
            continue
        client.next_seq[sender] = seq + 1
        client.received += 1
        got += 1
        if now and client.received % sample_every == 0:
            latencies.append(now - int(match[3]))
    return got


def _sample_first(lines: bytes, latencies: list[int], now: int) -> None:
    """The latency of the first message in a read (fan-out keeps a sample only)."""
    match = MARKER.search(lines)  # the oldest in the read: the sample errs on the slow side
    if match:
        latencies.append(now - int(match[3]))
