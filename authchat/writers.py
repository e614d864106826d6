"""The writer threads: a few threads write every session's output.

A thread per session would mean thousands of threads waking for every
message and fighting over the GIL; at a thousand clients that convoy let
the server deliver under 5,000 frames a second (docs/benchmarks.md). Here a
fixed number of writer threads each own a share of the sessions and drive
their sockets non-blocking through a selector:

  - a broadcast only pokes the writers; on waking, a writer gives each of
    its sessions everything due since its last write, as one send (one TLS
    write), so under load many frames share one system call;
  - a session whose socket is full waits for the selector to say it is
    writable, while its backlog stays in the room's feed, where the outbound
    queue limit can see it: past the limit the session is evicted
    (slow_consumer), and a socket that takes nothing for `send_timeout`
    seconds is cut off;
  - once a closed session's last bytes are out, the writer half-closes it
    and waits up to `linger` seconds for the client to hang up first.

A writer never blocks on a socket and never takes the room's lock. Only it
sends on its sessions' sockets (the reader thread only receives), and TLS
state is shared under the transport's lock (SECURITY.md C4).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .room import Feed, Outbox
from .transport import PlainTransport

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5        # how often an idle writer looks at its timers anyway
LINGER_POLL_S = 0.05     # while sessions linger: how soon a hang-up is noticed
COALESCE_S = 0.001       # under load, passes at most this often: see _coalesce


class Writable(Protocol):
    """What a writer needs of a session."""

    outbox: Outbox
    transport: PlainTransport
    reader_done: threading.Event  # the client hung up or the reader ended
    finished: threading.Event     # set by the writer: it will not touch the session again

    def evict(self) -> None:
        """The session fell too far behind: end it (slow_consumer)."""


class WriterPool:
    def __init__(self, feed: Feed, threads: int, send_timeout: float, linger: float) -> None:
        self._writers = [_Writer(feed, send_timeout, linger) for _ in range(threads)]
        self._next = 0
        self._lock = threading.Lock()

    def start(self, spawn: Callable[[Callable[[], None], str], threading.Thread]) -> None:
        for number, writer in enumerate(self._writers):
            spawn(writer.run, f"writer-{number}")

    def add(self, session: Writable) -> None:
        """Hand `session`'s output to a writer, from now until it is finished."""
        with self._lock:
            writer = self._writers[self._next % len(self._writers)]
            self._next += 1
        writer.add(session)

    def wake_all(self) -> None:
        """The feed has grown: called for every broadcast, so it must be cheap."""
        for writer in self._writers:
            writer.poke()

    def stop(self) -> None:
        """Let the writers end once their sessions are finished."""
        for writer in self._writers:
            writer.stop()


class _Writer:
    def __init__(self, feed: Feed, send_timeout: float, linger: float) -> None:
        self.feed = feed
        self.send_timeout = send_timeout
        self.linger = linger
        self._lock = threading.Lock()  # guards _added, _marked, _stopping
        self._added: list[Writable] = []
        self._marked: set[Writable] = set()
        self._stopping = False
        self._poked = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Only the writer's own thread touches what follows.
        self._sessions: set[Writable] = set()
        self._stalled: dict[Writable, tuple[float, int]] = {}  # socket full: (since, fd)
        self._finishing: set[Writable] = set()       # closed: sending the last bytes
        self._lingering: dict[Writable, float] = {}  # half-closed: hard close at
        self._feed_seen = -1
        self._last_pass = 0.0

    # -- from other threads ---------------------------------------------------

    def poke(self) -> None:
        if not self._poked:
            self._poked = True
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # full: a wake-up is pending anyway

    def add(self, session: Writable) -> None:
        def mark() -> None:
            with self._lock:
                self._marked.add(session)
            self.poke()

        session.outbox.wake = mark
        session.transport.go_async(mark)
        with self._lock:
            stopped = self._stopping
            if not stopped:
                self._added.append(session)
        if stopped:  # a login that raced the shutdown: there is nobody left to write
            session.transport.shutdown()
            session.finished.set()
        else:
            self.poke()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self.poke()

    # -- the writer thread ------------------------------------------------------

    def run(self) -> None:
        while True:
            events = self._selector.select(self._timeout())
            self._coalesce()
            # Drain, then clear the flag: a poke between the two finds it still
            # set and sends nothing, but what it announced is read below. The
            # other order would drain a poke's byte and leave its flag set, and
            # the next pokes would all wait for the idle timeout.
            self._drain_wakeups()
            self._poked = False
            with self._lock:
                added, self._added = self._added, []
                due, self._marked = self._marked, set()
                stopping = self._stopping
            self._sessions.update(added)
            due.update(added)
            due.update(key.data for key, _ in events if key.data is not None)
            count = self.feed.count
            if count != self._feed_seen:
                self._feed_seen = count
                due = set(self._sessions)
            now = time.monotonic()
            for session in due:
                if session in self._sessions:
                    try:
                        self._serve(session, now)
                    except Exception:  # last resort: one session's failure ends it alone
                        log.exception("writing to a session failed")
                        session.transport.shutdown()
                        self._drop(session)
            self._check_stalled(now)
            self._check_lingering(now)
            if stopping and not self._sessions:
                break
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _coalesce(self) -> None:
        """Under load, let frames gather for up to COALESCE_S before a pass.

        Every send on loopback or a LAN costs about as much as the bytes it
        carries, so one frame per send caps the room at a few hundred
        thousand deliveries a second. Waiting only when the last pass was
        less than COALESCE_S ago batches frames when they pour in, and adds
        nothing when they trickle: the batching of Nagle's algorithm without
        its 40 ms delay at light load (TCP_NODELAY stays on).
        """
        since = time.monotonic() - self._last_pass
        if since < COALESCE_S:
            time.sleep(COALESCE_S - since)
        self._last_pass = time.monotonic()

    def _timeout(self) -> float:
        if self._lingering:
            return LINGER_POLL_S
        if self._stalled:
            return min(IDLE_WAIT_S, self.send_timeout)
        return IDLE_WAIT_S

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _serve(self, session: Writable, now: float) -> None:
        """Send `session` what is due; never blocks."""
        if session in self._lingering:
            return
        transport = session.transport
        try:
            left = transport.send_unsent() if transport.unsent_bytes() else 0
            # A closed outbox is taken at once, even onto a stalled socket: what
            # is left is bounded (its backlog, or only the last frame when
            # discarded), and taking it frees the room's feed from its cursor.
            if (not left or session.outbox.closed) and session not in self._finishing:
                data, done = session.outbox.take()
                if data:
                    left = transport.send(data)
                if done:
                    self._finishing.add(session)
                    transport.enqueue_close()
                    left = transport.send_unsent()
        except OSError:  # the peer is gone; the reader notices too
            self._drop(session)
            return
        if left:
            self._stall(session, now)
            return
        self._unstall(session)
        if session in self._finishing:
            transport.finish_async()
            self._lingering[session] = now + self.linger

    def _stall(self, session: Writable, now: float) -> None:
        if session not in self._stalled:
            fd = session.transport.sock.fileno()
            self._selector.register(fd, selectors.EVENT_WRITE, session)
            self._stalled[session] = (now, fd)

    def _unstall(self, session: Writable) -> None:
        stalled = self._stalled.pop(session, None)
        if stalled is not None:
            try:
                self._selector.unregister(stalled[1])
            except (KeyError, ValueError, OSError):
                pass  # the socket is already closed

    def _check_stalled(self, now: float) -> None:
        for session, (since, _) in list(self._stalled.items()):
            backlog = session.outbox.backlog_bytes() + session.transport.unsent_bytes()
            if backlog > session.outbox.limit_bytes and not session.outbox.closed:
                session.evict()
            elif now - since > self.send_timeout:
                log.info("cutting off a client that took nothing for %.0f s", self.send_timeout)
                session.transport.shutdown()
                self._drop(session)

    def _check_lingering(self, now: float) -> None:
        for session, close_at in list(self._lingering.items()):
            if session.reader_done.is_set() or now >= close_at:
                session.transport.shutdown()  # wakes a reader still waiting for the client
                self._drop(session)

    def _drop(self, session: Writable) -> None:
        self._unstall(session)
        self._sessions.discard(session)
        self._finishing.discard(session)
        self._lingering.pop(session, None)
        session.finished.set()
