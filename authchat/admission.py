"""Admission and throttling: who may come in, guess a password, register or hash, and when.

Owns, behind one lock, the counts of connections (in total, per address, and
of those not logged in yet), the pre-login pool and its eviction, the login
throttle, the registration limit, and bcrypt's fair turns (slots.py). The
limits themselves are plain objects in limits.py; this module holds them
under its lock and in the order a connection meets them.

It knows a connection only as an `Admittee`, and never reads or writes a
socket: a connection evicted to make room is only told so (`evict`), and
sends its own refusal from its own thread (SECURITY.md C4).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .config import AuthConfig, LimitsConfig
from .errors import ErrorCode
from .limits import DAY_S, HOUR_S, ConnectionCounter, KeyedRate, LoginThrottle, WindowLimit, ip_key
from .slots import FairSlots

log = logging.getLogger(__name__)

HASH_QUEUE_PER_SLOT = 4        # bcrypt waiters allowed per concurrent hash


@dataclass
class Refusal:
    """Why a connection, login or registration is turned away: what its client is told."""

    code: ErrorCode
    message: str
    retry_after: float | None = None
    names_an_account: bool = False  # the name tried is an account's: the log may show it


class Admittee(Protocol):
    """What admission needs of a connection. `checking` and `evicted` are
    written under the admission's lock."""

    @property
    def ip(self) -> str: ...

    checking: bool  # its login is being checked: not to be evicted

    @property
    def evicted(self) -> bool: ...

    def evict(self) -> None:
        """Make it end, with too_many_connections, from its own thread."""


C = TypeVar("C", bound=Admittee)


class Admission(Generic[C]):
    """Counts connections in and out, and throttles what they try meanwhile."""

    def __init__(self, limits: LimitsConfig, auth: AuthConfig) -> None:
        self.limits = limits
        self._lock = threading.Lock()  # guards the counters, throttles and _connections
        self._connections: set[C] = set()
        self._counter = ConnectionCounter()
        # Connections not logged in yet, oldest first (dicts keep insertion
        # order), and how many there are from each address.
        self._pre_login: dict[C, None] = {}
        self._pre_login_counter = ConnectionCounter()
        self._connect_rate = KeyedRate(limits.connections_per_ip_per_minute)
        self._throttle = LoginThrottle(limits.failed_logins_per_ip_per_minute,
                                       limits.failed_logins_per_account,
                                       limits.failed_logins_per_account_per_hour,
                                       limits.remember_logins_days * DAY_S)
        self._registrations = WindowLimit(limits.registrations_per_ip_per_hour, HOUR_S)
        self.hash_slots = auth.max_concurrent_hashes or os.cpu_count() or 1
        self._hash_slots = FairSlots(self.hash_slots, self.hash_slots * HASH_QUEUE_PER_SLOT,
                                     auth.max_hashes_per_ip)

    # -- connections in and out ------------------------------------------------

    def admit(self, conn: C) -> Refusal | None:
        """Count a new connection in, or say why not. A full pre-login pool
        makes room by evicting its oldest member instead of refusing: idle
        connections from a few addresses must not keep everyone else out."""
        key = ip_key(conn.ip)
        with self._lock:
            refusal = self._refusal(key, time.monotonic())
            if refusal is None and \
                    self._pre_login_counter.total >= self.limits.max_unauthenticated:
                refusal = self._evict_oldest_pre_login()
            if refusal is not None:
                return refusal
            self._counter.add(key)
            self._pre_login_counter.add(key)
            self._pre_login[conn] = None
        return None

    def _refusal(self, key: str, now: float) -> Refusal | None:
        """Why a new connection from `key` may not come in; with the lock held.
        Every attempt counts against the address's connection rate."""
        limits = self.limits
        wait = self._throttle.wait_for(key, None, now)
        if wait > 0:
            return Refusal(ErrorCode.RATE_LIMITED, "too many failed logins; try later", wait)
        wait = self._connect_rate.take(key, now)
        if wait > 0:
            return Refusal(ErrorCode.RATE_LIMITED, "too many new connections; try later", wait)
        if self._counter.total >= limits.max_clients:
            return Refusal(ErrorCode.TOO_MANY_CONNECTIONS, "the server is full")
        if self._counter.count(key) >= limits.max_connections_per_ip:
            return Refusal(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from your address")
        if self._pre_login_counter.count(key) >= limits.max_unauthenticated_per_ip:
            return Refusal(ErrorCode.TOO_MANY_CONNECTIONS,
                           "too many connections from your address not logged in yet")
        return None

    def _evict_oldest_pre_login(self) -> Refusal | None:
        """Make room in the pre-login pool; with the lock held. A connection
        whose login is being checked is passed over: it is about to leave the
        pool anyway, and evicting it would waste its hash."""
        for conn in self._pre_login:
            if not conn.checking:
                log.info("evicting a connection from %s that has not logged in, to make room",
                         conn.ip)
                self._leave_pre_login(conn)
                conn.evict()
                return None
        return Refusal(ErrorCode.TOO_MANY_CONNECTIONS, "the server is full")

    def _leave_pre_login(self, conn: C) -> None:
        """Take `conn` out of the pre-login pool if it is there; with the lock held."""
        if conn in self._pre_login:
            del self._pre_login[conn]
            self._pre_login_counter.remove(ip_key(conn.ip))

    def track(self, conn: C) -> None:
        """`conn`'s thread has started: shutdown will find it."""
        with self._lock:
            self._connections.add(conn)

    def start_checking(self, conn: C) -> bool:
        """`conn`'s login or registration is about to be checked: until it
        fails (`stop_checking`) or logs in, it is not evicted. False if it
        has been already."""
        with self._lock:
            conn.checking = not conn.evicted
            return conn.checking

    def stop_checking(self, conn: C) -> None:
        with self._lock:
            conn.checking = False

    def mark_authenticated(self, conn: C) -> None:
        with self._lock:
            self._leave_pre_login(conn)

    def release(self, conn: C) -> None:
        """`conn` is closed (or never started): count it out."""
        with self._lock:
            self._connections.discard(conn)
            self._counter.remove(ip_key(conn.ip))
            self._leave_pre_login(conn)

    def connections(self) -> list[C]:
        """The connections whose threads run now."""
        with self._lock:
            return list(self._connections)

    def connection_count(self) -> int:
        with self._lock:
            return self._counter.total

    # -- what connections try --------------------------------------------------

    @contextmanager
    def login_attempt(self, ip: str, username: str | None) -> Iterator[float]:
        """`with admission.login_attempt(ip, name) as wait:` seconds to wait first;
        at 0.0 the guess counts as in flight until the block ends, by which
        time `auth_failed` or `auth_succeeded` has recorded its outcome."""
        with self._lock:
            wait = self._throttle.begin(ip_key(ip), username, time.monotonic())
        try:
            yield wait
        finally:
            if wait <= 0.0:
                with self._lock:
                    self._throttle.end(ip_key(ip), username, time.monotonic())

    def resume_attempt(self, ip: str) -> AbstractContextManager[float]:
        """As `login_attempt`, for a session token: a guess at no account in
        particular, so it counts against the address alone; a failed one is
        `auth_failed(ip, None)`."""
        return self.login_attempt(ip, None)

    def auth_failed(self, ip: str, username: str | None) -> None:
        with self._lock:
            self._throttle.failure(ip_key(ip), username, time.monotonic())

    def auth_succeeded(self, ip: str, username: str) -> None:
        with self._lock:
            self._throttle.success(ip_key(ip), username, time.monotonic())

    @contextmanager
    def registration_attempt(self, ip: str) -> Iterator[float]:
        """`with admission.registration_attempt(ip) as wait:` as login_attempt: at
        0.0 the registration counts against the address until the block ends,
        by which time `registered` has recorded it if it should count."""
        with self._lock:
            wait = self._registrations.begin(ip_key(ip), time.monotonic())
        try:
            yield wait
        finally:
            if wait <= 0.0:
                with self._lock:
                    self._registrations.end(ip_key(ip))

    def registered(self, ip: str) -> None:
        with self._lock:
            self._registrations.record(ip_key(ip), time.monotonic())

    def hashing(self, deadline: float, ip: str) -> AbstractContextManager[bool]:
        """`with admission.hashing(deadline, ip) as ok:` a turn at bcrypt for the
        address, or False at once (it has its share waiting, or the line is
        full) or at the deadline."""
        return self._hash_slots.turn(ip_key(ip), deadline)
