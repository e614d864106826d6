"""Fair turns at a few slots: the server's places to run bcrypt.

`FairSlots(slots, max_waiting, per_key)` lets `slots` holders in at once.
A key (a client's address) may have at most `per_key` places, waiting or
holding, and at most `max_waiting` wait in all; past either limit a waiter
is refused at once rather than queued, so neither one address nor everybody
together can make the line long. When the line is full, an address with
fewer places takes the place of the newest waiter of the address with the
most, so a few addresses keeping it full cannot keep everyone else out.
Waiters are served round-robin by key (limits.RoundRobin), not in arrival
order: an address with requests waiting gets one turn a round like every
other, so however hard it pushes, another address waits for at most one of
its hashes a round.

No sockets and no SQL: it is tested with threads alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .limits import RoundRobin


class _Ticket:
    """A waiter's place in line: `granted` once a slot is handed to it,
    `displaced` if it had to make room for an address with fewer places."""

    __slots__ = ("granted", "displaced")

    def __init__(self) -> None:
        self.granted = False
        self.displaced = False


class FairSlots:
    """At most `slots` holders at once, handed out in turn by key."""

    def __init__(self, slots: int, max_waiting: int, per_key: int) -> None:
        self.per_key = per_key
        self.max_waiting = max_waiting
        self._free = slots
        self._line: RoundRobin[_Ticket] = RoundRobin()
        self._places: dict[str, int] = {}  # per key: waiting or holding
        self._changed = threading.Condition(threading.Lock())

    @contextmanager
    def turn(self, key: str, deadline: float) -> Iterator[bool]:
        """`with slots.turn(key, deadline) as ok:` ok is True while holding a
        slot; False if refused, or if `deadline` (time.monotonic()) came first."""
        held = self.acquire(key, deadline)
        try:
            yield held
        finally:
            if held:
                self.release(key)

    def acquire(self, key: str, deadline: float) -> bool:
        with self._changed:
            if self._places.get(key, 0) >= self.per_key:
                return False
            if len(self._line) >= self.max_waiting and not self._make_room_for(key):
                return False
            self._places[key] = self._places.get(key, 0) + 1
            if self._free and not self._line:
                self._free -= 1
                return True
            ticket = _Ticket()
            self._line.push(key, ticket)
            while not ticket.granted:
                if ticket.displaced:
                    return False  # its place went to another address, which left it
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._line.remove(key, ticket)
                    self._leave(key)
                    return False
                self._changed.wait(remaining)
            return True

    def _make_room_for(self, key: str) -> bool:
        """The line is full: take the newest waiter of the address with the most
        places, if it has more than this one would, so that a few addresses
        filling the line cannot keep every other one out of it."""
        in_line = set(self._line.keys())
        crowded = max((k for k in self._places if k in in_line), key=self._places.__getitem__)
        if self._places[crowded] <= self._places.get(key, 0) + 1:
            return False
        ticket = self._line.pop_newest(crowded)
        ticket.displaced = True
        self._leave(crowded)
        self._changed.notify_all()  # its waiter is among them
        return True

    def release(self, key: str) -> None:
        with self._changed:
            self._leave(key)
            self._free += 1
            ticket = self._line.pop()
            if ticket is not None:
                ticket.granted = True
                self._free -= 1
                self._changed.notify_all()  # the ticket's waiter is among them

    def waiting(self) -> int:
        with self._changed:
            return len(self._line)

    def _leave(self, key: str) -> None:
        left = self._places[key] - 1
        if left:
            self._places[key] = left
        else:
            del self._places[key]
