"""The broadcast room: who is in it, message ids and order, fan-out.

One lock guards the member map and the id counter, so joining, leaving and
every broadcast happen in one global order: all sessions see the same
messages in the same order. A broadcast encodes its frame once and hands the
same bytes to each member's `deliver`, which only appends to a bounded
queue and never blocks; the member's own writer thread does the socket I/O.
A stalled client therefore costs the room nothing but its queue, and the
queue's limit ends it.

No sockets and no SQL here: the room is tested in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from . import protocol


class Member(Protocol):
    """What the room needs of a session."""

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> str: ...

    def deliver(self, data: bytes) -> None:
        """Queue bytes for the client; must not block or call back into the room."""


class Outbox:
    """A session's bounded queue of outgoing bytes, drained by its writer thread."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def put(self, data: bytes) -> bool:
        """Queue `data`; False if it would pass the limit (the caller evicts).

        After close() data is silently dropped: the session is already ending.
        """
        with self._cond:
            if self._closed:
                return True
            if self._size + len(data) > self.limit_bytes:
                return False
            self._chunks.append(data)
            self._size += len(data)
            self._cond.notify()
            return True

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Accept nothing more; `final` goes out last. False if already closed."""
        with self._cond:
            if self._closed:
                return False
            if discard:
                self._chunks.clear()
                self._size = 0
            if final is not None:
                self._chunks.append(final)
                self._size += len(final)
            self._closed = True
            self._cond.notify()
            return True

    def take(self, timeout: float | None = None) -> tuple[bytes, bool]:
        """Everything queued, as one write; and whether the queue is closed and now empty."""
        with self._cond:
            if not self._chunks and not self._closed:
                self._cond.wait(timeout)
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            return data, self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_bytes(self) -> int:
        return self._size


class Room:
    """The one room every authenticated session is in."""

    def __init__(self, max_sessions_per_user: int) -> None:
        self.max_sessions_per_user = max_sessions_per_user
        self._lock = threading.Lock()
        self._members: dict[str, list[Member]] = {}  # lower-cased name -> sessions
        self._last_id = 0
        self.closing = False  # no presence noise while the server shuts down

    def enter(self, member: Member, welcome: Callable[[list[str]], bytes]) -> bool:
        """Admit a session: it gets `welcome(online names)` first, then live traffic.

        Returns False, admitting nothing, if the account has its maximum of sessions.
        """
        key = member.username.lower()
        with self._lock:
            sessions = self._members.setdefault(key, [])
            if len(sessions) >= self.max_sessions_per_user:
                if not sessions:
                    del self._members[key]
                return False
            first = not sessions
            sessions.append(member)
            member.deliver(welcome(self._usernames()))
            if first:
                self._broadcast(protocol.encode(protocol.join(member.username)), skip=member)
            return True

    def leave(self, member: Member, reason: str) -> bool:
        """Remove a session; the room hears `leave` when an account's last one goes."""
        key = member.username.lower()
        with self._lock:
            sessions = self._members.get(key, [])
            if member not in sessions:
                return False
            sessions.remove(member)
            if not sessions:
                del self._members[key]
                if not self.closing:
                    self._broadcast(protocol.encode(protocol.leave(member.username, reason)))
            return True

    def say(self, sender: Member, text: str) -> int:
        """Broadcast a message to every session, the sender's included; returns its id."""
        with self._lock:
            msg_id = self._next_id()
            frame = protocol.message(msg_id, sender.username, text, protocol.timestamp())
            self._broadcast(protocol.encode(frame))
            return msg_id

    def direct(self, sender: Member, to: str, text: str) -> int | None:
        """Send a DM to all of `to`'s sessions and the sender's; None if `to` is offline."""
        with self._lock:
            targets = self._members.get(to.lower())
            if not targets:
                return None
            msg_id = self._next_id()
            frame = protocol.direct_message(msg_id, sender.username, targets[0].username, text,
                                            protocol.timestamp())
            data = protocol.encode(frame)
            receivers = targets + [s for s in self._members.get(sender.username.lower(), [])
                                   if s not in targets]
            for session in receivers:
                session.deliver(data)
            return msg_id

    def who(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"username": sessions[0].username, "role": sessions[0].role}
                    for sessions in sorted(self._members.values(),
                                           key=lambda s: s[0].username.lower())]

    def sessions_of(self, username: str) -> list[Member]:
        with self._lock:
            return list(self._members.get(username.lower(), []))

    def members(self) -> list[Member]:
        with self._lock:
            return [s for sessions in self._members.values() for s in sessions]

    def usernames(self) -> list[str]:
        with self._lock:
            return self._usernames()

    def _usernames(self) -> list[str]:
        return sorted((s[0].username for s in self._members.values()), key=str.lower)

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def _broadcast(self, data: bytes, skip: Member | None = None) -> None:
        for sessions in self._members.values():
            for session in sessions:
                if session is not skip:
                    session.deliver(data)
