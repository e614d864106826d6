"""Messages are stored, then broadcast: the group commit between sessions and the room.

Theory of operation. A session thread that has messages to say (or a DM)
hands them to the journal and waits. The journal's one thread takes
everything handed in meanwhile, stores it in one transaction (one sync of
the disk for the lot), and only then gives it to the room, in id order, and
wakes the waiting threads with the ids. So:

- nothing anyone has seen can be lost in a crash: a message reaches the room
  only once it is committed (the loss window is zero; a crash loses only
  messages whose senders got no `ok`);
- ids come from the database, strictly increasing across restarts;
- the cost of a sync is shared by every message that arrived while the last
  one ran, so throughput holds up under load while latency grows by about
  one sync.

DMs take the same road. One to a user who exists but has no session is
stored as waiting, and given to them at their next login, after the
history; the sender gets it as queued. One to a name no account has is
refused with no_such_user. The room and the store never meet: this module
is where they are put in order.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic

from . import protocol
from .errors import AuthchatError, NoSuchUser, ShuttingDown, StorageError
from .room import MemberT, Room
from .sanitize import escape
from .store import DatabaseError, Store
from .store.messages import BatchItem, DirectMessage, MessageLog, RoomMessages, StoredMessage
from .timestamps import timestamp

log = logging.getLogger(__name__)

MAX_BATCH = 2000  # messages in one transaction; the rest wait for the next


@dataclass
class _Entry(Generic[MemberT]):
    """One session's hand-in: a run of room messages, or one DM."""

    sender: MemberT
    texts: list[str]
    to: str | None = None  # a DM's addressee, as typed
    done: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)
    queued: bool = False
    error: AuthchatError | None = None


@dataclass(frozen=True)
class DirectResult:
    id: int
    queued: bool  # the recipient had no session: it waits for their next login


class Journal(Generic[MemberT]):
    """Group commit of room messages and DMs, on one thread, for a room of MemberT."""

    def __init__(self, store: Store, room: Room[MemberT]) -> None:
        self.store = store
        self.log = MessageLog(store)
        self.room = room
        self._pending: deque[_Entry[MemberT]] = deque()
        self._lock = threading.Condition()
        self._stopping = False

    def run(self) -> None:
        """The journal thread: commit and publish until stopped."""
        self.log.prepare_writer()  # this thread's connection, opened now, for good
        while (batch := self._take()) is not None:
            try:
                self._commit(batch)
            except Exception:  # our bug: the senders must not wait for ever, nor the room
                log.exception("the journal failed on a batch of %d hand-ins", len(batch))
                for entry in batch:
                    if not entry.done.is_set():
                        self._finish(entry, AuthchatError("internal error"))

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    # -- for session threads ------------------------------------------------

    def say(self, sender: MemberT, texts: list[str]) -> list[int]:
        """Store and broadcast `texts`; returns their ids once they are out.

        Raises:
            StorageError, StoreBusy, ShuttingDown: nothing was stored or sent.
        """
        return self._wait(self._hand_in(_Entry(sender, texts))).ids

    def direct(self, sender: MemberT, to: str, text: str) -> DirectResult:
        """Store and send a DM; kept for its recipient if they have no session.

        Raises:
            NoSuchUser: no account has that name.
            StorageError, StoreBusy: nothing was stored or sent.
        """
        entry = self._wait(self._hand_in(_Entry(sender, [text], to)))
        return DirectResult(entry.ids[0], entry.queued)

    def _hand_in(self, entry: _Entry[MemberT]) -> _Entry[MemberT]:
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._pending.append(entry)
            self._lock.notify()
        return entry

    @staticmethod
    def _wait(entry: _Entry[MemberT]) -> _Entry[MemberT]:
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry

    # -- the journal thread ---------------------------------------------------

    def _take(self) -> list[_Entry[MemberT]] | None:
        with self._lock:
            while not self._pending:
                if self._stopping:
                    return None
                self._lock.wait()
            batch: list[_Entry[MemberT]] = []
            count = 0
            while self._pending and (not batch or count + len(self._pending[0].texts)
                                     <= MAX_BATCH):
                entry = self._pending.popleft()
                batch.append(entry)
                count += len(entry.texts)
            return batch

    def _commit(self, batch: list[_Entry[MemberT]]) -> None:
        ts = timestamp()
        stored: list[BatchItem] = []
        live: list[_Entry[MemberT]] = []
        for entry in batch:
            try:
                stored.append(self._to_store(entry))
                live.append(entry)
            except (AuthchatError, DatabaseError) as e:
                self._finish(entry, e if isinstance(e, AuthchatError) else StorageError(str(e)))
        try:
            ids = self.log.append(ts, stored)
        except AuthchatError as e:
            log.error("could not store the messages of %d hand-ins: %s", len(live), e)
            for entry in live:
                self._finish(entry, e)
            return
        position = 0
        for entry in live:
            entry.ids = ids[position:position + len(entry.texts)]
            position += len(entry.texts)
        self._publish(live, ts)

    def _to_store(self, entry: _Entry[MemberT]) -> BatchItem:
        sender = entry.sender
        if entry.to is None:
            return RoomMessages(sender.username, entry.texts)
        online = self.room.online_account(entry.to)
        name, account_id = online or self._account(entry.to)
        entry.to, entry.queued = name, online is None
        return DirectMessage(sender.username, sender.account_id, name, account_id,
                             entry.texts[0], delivered=online is not None)

    def _account(self, name: str) -> tuple[str, int]:
        """How the account spells its name, and its id, for a DM to someone offline."""
        found = self.store.lookup_users({name})
        user = next(iter(found.values()), None)
        if user is None:
            raise NoSuchUser(f"there is no user {name[:64]}")
        return user.username, user.id

    def _publish(self, entries: list[_Entry[MemberT]], ts: str) -> None:
        """Give stored entries to the room in id order, a run of room messages
        in one go and each DM on its own, and tell their senders."""
        for is_room, run in itertools.groupby(entries, key=lambda e: e.to is None):
            published = list(run)
            if is_room:
                self.room.say_stored([(e.sender, e.texts, e.ids[0]) for e in published], ts)
            else:
                for entry in published:
                    self._send_direct(entry, ts)
            for entry in published:
                self._finish(entry)

    def _send_direct(self, entry: _Entry[MemberT], ts: str) -> None:
        assert entry.to is not None
        msg_id, text = entry.ids[0], entry.texts[0]
        frame = protocol.encode_event(protocol.DirectMessage(
            msg_id, entry.sender.username, entry.to, text, ts))
        if entry.queued:  # the recipient gets it at login; the sender sees it now
            self.room.to_account(entry.sender.username, frame)
        elif self.room.direct(entry.sender, entry.to, text, msg_id, ts) is None:
            # They left between the check and now: keep it for them after all.
            self.room.to_account(entry.sender.username, frame)
            entry.queued = True
            try:
                self.log.mark_waiting([msg_id])
            except AuthchatError as e:  # stored all the same: it is in their DM history
                log.error("could not keep DM %d for %s's next login: %s", msg_id,
                          escape(entry.to), e)

    @staticmethod
    def _finish(entry: _Entry[MemberT], error: AuthchatError | None = None) -> None:
        entry.error = error
        entry.done.set()

    # -- logins ---------------------------------------------------------------

    def recent_room_messages(self, count: int) -> list[tuple[int, str, str, str]]:
        """The newest `count` room messages, oldest first, for the room to start with."""
        if count <= 0:
            return []
        page, _ = self.log.room_page(limit=count)
        return [(m.id, m.sender, m.text, m.ts) for m in page]

    def waiting_for(self, account_id: int) -> list[StoredMessage]:
        return self.log.waiting_for(account_id)


def history_event(message: StoredMessage) -> protocol.Said:
    """A stored message as history gives it back: a message or DM, marked."""
    if message.recipient is None:
        return protocol.Message(message.id, message.sender, message.text, message.ts,
                                history=True)
    return protocol.DirectMessage(message.id, message.sender, message.recipient,
                                  message.text, message.ts, history=True)


def waiting_frames(messages: list[StoredMessage]) -> list[bytes]:
    """DMs kept for someone offline, encoded for their login."""
    return [protocol.encode_event(history_event(m)) for m in messages]

