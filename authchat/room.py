"""The broadcast room: who is in it, message ids and order, fan-out.

One lock guards the member map and the id counter, so joining, leaving and
every broadcast happen in one global order: all sessions see the same
messages in the same order.

A broadcast costs the same for ten members as for ten thousand: its frame is
encoded once and appended to the room's `Feed`, a shared run of frames that
every member's `Outbox` follows with a cursor of its own. Frames meant for one
session (a welcome, a reply, a DM) go into that session's outbox, stamped
with the feed position they were queued at, so each session still receives
one ordered stream. Writer threads (writers.py) take what is due and do the
socket I/O; a stalled client costs the room nothing but its backlog, and the
backlog's limit ends it.

No sockets and no SQL here: the room is tested in memory.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from . import protocol
from .timestamps import timestamp

BLOCK_FRAMES = 256


class Member(Protocol):
    """What the room needs of a session."""

    @property
    def username(self) -> str: ...

    @property
    def account_id(self) -> int: ...

    @property
    def role(self) -> str: ...

    @property
    def outbox(self) -> Outbox: ...

    def deliver(self, data: bytes) -> None:
        """Queue bytes for this session alone; must not block or call back into the room."""


# The room hands back the members it was given, as their own type: the server
# gets its sessions back from `members()` without downcasting them.
MemberT = TypeVar("MemberT", bound=Member)


class _Block:
    """A run of up to BLOCK_FRAMES feed frames. Blocks nobody follows any more are
    freed by reference counting: the feed needs no trimming."""

    __slots__ = ("first", "frames", "ends", "start_bytes", "next")

    def __init__(self, first: int, start_bytes: int) -> None:
        self.first = first                # feed position of frames[0]
        self.frames: list[bytes] = []
        self.ends: list[int] = []         # feed byte count after each frame
        self.start_bytes = start_bytes
        self.next: _Block | None = None


class Feed:
    """The room's broadcast frames, appended under the room lock and read by writers
    without one: a reader bounds itself by `ends`, which grows after `frames`."""

    def __init__(self) -> None:
        self._tail = _Block(0, 0)
        self.count = 0        # frames ever appended: the position after the last one
        self.total_bytes = 0

    def append(self, data: bytes) -> None:
        tail = self._tail
        if len(tail.frames) == BLOCK_FRAMES:
            new = _Block(self.count, self.total_bytes)
            tail.next = new  # only ever set on a full block
            self._tail = tail = new
        tail.frames.append(data)
        self.total_bytes += len(data)
        tail.ends.append(self.total_bytes)
        self.count += 1

    def end(self) -> tuple[_Block, int]:
        """A cursor at the feed's current end."""
        tail = self._tail
        return tail, len(tail.ends)


class Outbox:
    """One session's output: the feed from where it joined, plus its own frames.

    `take` is for the session's writer alone; the rest is safe from any thread.
    `wake` is called whenever there is something new to take.
    """

    def __init__(self, limit_bytes: int, wake: Callable[[], None] = lambda: None) -> None:
        self.limit_bytes = limit_bytes
        self.wake = wake
        self._lock = threading.Lock()
        self._own: deque[tuple[int, bytes]] = deque()  # (feed position, frame)
        self._own_bytes = 0
        self._feed: Feed | None = None
        # (block, index): one attribute, so other threads read a consistent pair
        self._cursor: tuple[_Block, int] | None = None
        self._stop_at: int | None = None  # feed position where a closed outbox stops
        self._final: bytes | None = None
        self._discard = False
        self._closed = False

    def follow(self, feed: Feed) -> None:
        """Receive `feed` from its current end on; call under the feed's lock."""
        self._feed = feed
        self._cursor = feed.end()

    def put(self, data: bytes) -> bool:
        """Queue `data` for this session; False if the backlog would pass the limit.

        After close() data is silently dropped: the session is already ending.
        """
        with self._lock:
            if self._closed:
                return True
            if self.backlog_bytes() + len(data) > self.limit_bytes:
                return False
            self._own.append((self._feed.count if self._feed else 0, data))
            self._own_bytes += len(data)
        self.wake()
        return True

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Take nothing more; `final` goes out last. False if already closed.

        With `discard`, whatever the client has not been sent yet is dropped.
        """
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._final = final
            self._stop_at = self._feed.count if self._feed else 0
            if discard:
                self._own.clear()
                self._own_bytes = 0
                self._discard = True
        self.wake()
        return True

    def take(self) -> tuple[bytes, bool]:
        """Everything due, as one write; and whether the outbox is closed and now empty."""
        if not self._own and not self._closed:
            # The common case, without the lock: only the feed has news. A frame
            # put meanwhile calls wake(), so the writer comes back for it.
            parts: list[bytes] = []
            self._read_to(None, parts)
            return b"".join(parts), False
        with self._lock:
            own = list(self._own)
            self._own.clear()
            self._own_bytes = 0
            closed, final = self._closed, self._final
            if closed:
                self._final = None
        parts = []
        stop = self._stop_at if closed else None
        if not (closed and self._discard):
            for position, data in own:
                self._read_to(position, parts)
                parts.append(data)
            self._read_to(stop, parts)
        if closed:
            # Nothing past `stop` is ever sent: let go of the feed, or this
            # cursor would keep every frame said after it alive.
            self._cursor = None
        if final is not None:
            parts.append(final)
        return b"".join(parts), closed

    def backlog_bytes(self) -> int:
        """Bytes due but not yet taken: the session's share of the feed plus its own."""
        return self._own_bytes + self._feed_lag()

    @property
    def closed(self) -> bool:
        return self._closed

    def _feed_lag(self) -> int:
        cursor, feed = self._cursor, self._feed
        if cursor is None or feed is None:
            return 0
        block, index = cursor
        done = block.ends[index - 1] if index else block.start_bytes
        return feed.total_bytes - done

    def _read_to(self, stop: int | None, parts: list[bytes]) -> None:
        """Append feed frames from the cursor up to position `stop` (None: the end)."""
        if self._cursor is None:
            return
        block, index = self._cursor
        while True:
            following = block.next  # read first: a block with a next one is full
            available = len(block.ends)
            if stop is not None:
                available = min(available, stop - block.first)
            if index < available:
                parts.extend(block.frames[index:available])
                index = available
            if following is None or index < len(block.ends) or \
                    (stop is not None and following.first >= stop):
                break
            block, index = following, 0
        self._cursor = block, index


class Room(Generic[MemberT]):
    """The one room every authenticated session is in, of members of one type."""

    def __init__(self, max_sessions_per_user: int,
                 on_broadcast: Callable[[], None] = lambda: None, history_on_join: int = 0) -> None:
        self.max_sessions_per_user = max_sessions_per_user
        self.on_broadcast = on_broadcast  # tells the writers the feed has grown
        self.feed = Feed()
        self._lock = threading.Lock()
        self._members: dict[str, list[MemberT]] = {}  # lower-cased name -> sessions
        self._last_id = 0
        # The newest room messages, (id, sender, text, ts), for a session that
        # enters: kept here, under the lock that orders the feed, so that what
        # it is shown and what it then receives live meet without a gap.
        self._recent: deque[tuple[int, str, str, str]] = deque(maxlen=history_on_join)
        self.closing = False  # no presence noise while the server shuts down

    def remember(self, messages: list[tuple[int, str, str, str]]) -> None:
        """Start the recent messages with these (id, sender, text, ts), oldest
        first: the history a restarted server shows."""
        with self._lock:
            self._recent.extend(messages)
            if messages:
                self._last_id = max(self._last_id, messages[-1][0])

    def enter(self, member: MemberT, welcome: Callable[[list[str]], bytes],
              waiting: list[bytes] | None = None) -> bool:
        """Admit a session: it gets `welcome(online names)` first, then the
        recent room messages marked as history, then `waiting` (DMs kept for
        it), then live traffic.

        Returns False, admitting nothing, if the account has its maximum of sessions.
        """
        key = member.username.lower()
        with self._lock:
            sessions = self._members.setdefault(key, [])
            # Sessions of a deleted account that had this name may linger until
            # they are ended: they do not count against the new one.
            own = [s for s in sessions if s.account_id == member.account_id]
            if len(own) >= self.max_sessions_per_user:
                if not sessions:
                    del self._members[key]
                return False
            first = not sessions
            sessions.append(member)
            if first:  # before following the feed: nobody is told of their own join
                self._broadcast(protocol.encode_event(protocol.Join(member.username, member.role)))
            member.outbox.follow(self.feed)
            member.deliver(welcome(self._usernames()))
            for msg_id, sender, text, ts in self._recent:
                member.deliver(protocol.encode_event(
                    protocol.Message(msg_id, sender, text, ts, history=True)))
            for data in waiting or ():
                member.deliver(data)
            return True

    def leave(self, member: MemberT, reason: str) -> bool:
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
                    self._broadcast(protocol.encode_event(protocol.Leave(member.username, reason)))
            return True

    def say(self, sender: MemberT, text: str) -> int:
        """Broadcast a message to every session, the sender's included; returns its id."""
        return self.say_many(sender, [text])[0]

    def say_many(self, sender: MemberT, texts: list[str]) -> list[int]:
        """Broadcast messages in order, numbered by the room; returns their ids.

        For a server keeping no history; the journal numbers stored messages
        and gives them to say_stored.
        """
        ts = timestamp()
        templates = _templates(sender.username, texts, ts)
        with self._lock:
            first = self._last_id + 1
            self._append(sender.username, texts, first, templates, ts)
        self.on_broadcast()
        return list(range(first, first + len(texts)))

    def say_stored(self, runs: Sequence[tuple[MemberT, list[str], int]], ts: str) -> None:
        """Broadcast stored messages: runs of (sender, texts, id of the first),
        in id order, all with the time `ts`; one lock and one wake-up for all.

        The frames are encoded before the lock is taken, with only the id left
        to splice in under it, so the lock every sender needs is held briefly.
        """
        encoded = [(sender.username, texts, first, _templates(sender.username, texts, ts))
                   for sender, texts, first in runs]
        with self._lock:
            for name, texts, first, templates in encoded:
                self._append(name, texts, first, templates, ts)
        self.on_broadcast()

    def _append(self, sender: str, texts: list[str], first: int,
                templates: list[tuple[bytes, bytes]], ts: str) -> None:
        """Put messages on the feed and among the recent ones; with the lock held."""
        for msg_id, (head, tail), text in zip(itertools.count(first), templates, texts):
            self.feed.append(head + str(msg_id).encode() + tail)
            self._recent.append((msg_id, sender, text, ts))
        self._last_id = max(self._last_id, first + len(texts) - 1)

    def online_account(self, username: str) -> tuple[str, int] | None:
        """How an online account spells its name, and its id; None if it has
        no session."""
        with self._lock:
            sessions = self._members.get(username.lower())
            return (sessions[-1].username, sessions[-1].account_id) if sessions else None

    def direct(self, sender: MemberT, to: str, text: str, msg_id: int | None = None,
               ts: str | None = None) -> int | None:
        """Send a DM to all of `to`'s sessions and the sender's; None if `to` is offline.

        `msg_id` and `ts` are the stored DM's (the journal's); without them the
        room numbers it, as say_many does.
        """
        with self._lock:
            targets = self._members.get(to.lower())
            if not targets:
                return None
            msg_id = self._next_id() if msg_id is None else msg_id
            data = protocol.encode_event(protocol.DirectMessage(
                msg_id, sender.username, targets[0].username, text, ts or timestamp()))
            receivers = targets + [s for s in self._members.get(sender.username.lower(), [])
                                   if s not in targets]
            for session in receivers:
                session.deliver(data)
            return msg_id

    def to_account(self, username: str, data: bytes) -> None:
        """Queue bytes for every session of one account (none: nothing happens)."""
        with self._lock:
            for session in self._members.get(username.lower(), []):
                session.deliver(data)

    def who(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"username": sessions[0].username, "role": sessions[0].role}
                    for sessions in sorted(self._members.values(),
                                           key=lambda s: s[0].username.lower())]

    def sessions_of(self, username: str) -> list[MemberT]:
        with self._lock:
            return list(self._members.get(username.lower(), []))

    def members(self) -> list[MemberT]:
        with self._lock:
            return [s for sessions in self._members.values() for s in sessions]

    def _usernames(self) -> list[str]:
        return sorted((s[0].username for s in self._members.values()), key=str.lower)

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def _broadcast(self, data: bytes) -> None:
        self.feed.append(data)
        self.on_broadcast()


def _templates(sender: str, texts: list[str], ts: str) -> list[tuple[bytes, bytes]]:
    return [protocol.message_template(sender, text, ts) for text in texts]
