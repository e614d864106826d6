"""Abuse limits as plain objects: token buckets, login throttles, counters,
and the round-robin line that hands out bcrypt's turns.

Every method takes the current time (`now`, seconds from a monotonic clock)
instead of reading a clock, so each rule can be tested without waiting. None
of these classes lock: admission.py calls them under its own lock. Every table
keyed by IP address or account is capped (least recently used entries go), so
an attacker with many addresses cannot grow memory without bound.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

MAX_TRACKED_KEYS = 65_536
IP_PENALTY_CAP_S = 600.0
ACCOUNT_DELAY_CAP_S = 300.0
WINDOW_S = 60.0
HOUR_S = 3600.0
DAY_S = 86_400.0
KNOWN_ADDRESSES_PER_ACCOUNT = 16
IN_FLIGHT_RETRY_S = 1.0   # when guesses still being checked may use up what is left

V = TypeVar("V")


def ip_key(address: str) -> str:
    """The unit limits count by: the address itself, or its /64 for IPv6,
    since one IPv6 host usually holds a whole /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LRUTable(Generic[V]):
    """A dict that forgets its least recently used keys past `capacity`."""

    def __init__(self, capacity: int = MAX_TRACKED_KEYS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class KeyedRate:
    """Events per key: `per_minute` at once, then one every 60 / per_minute
    seconds (a token bucket for each key)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: LRUTable[TokenBucket] = LRUTable()

    def take(self, key: str, now: float) -> float:
        """Count an event: 0.0 if it may happen now, else the seconds until one may."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_minute / WINDOW_S, self.per_minute, now)
            self._buckets.put(key, bucket)
        return bucket.take(now)


class _IpRecord:
    __slots__ = ("failures", "penalties", "blocked_until", "in_flight")

    def __init__(self) -> None:
        self.failures: deque[float] = deque()
        self.penalties = 0
        self.blocked_until = 0.0
        self.in_flight = 0


class _PairRecord:
    """One account's failures from one address."""

    __slots__ = ("consecutive", "last_failure", "in_flight")

    def __init__(self) -> None:
        self.consecutive = 0
        self.last_failure = 0.0
        self.in_flight = 0


class _AccountRecord:
    """One account's failures from everywhere, as a bucket of allowed failures."""

    __slots__ = ("allowance", "updated", "in_flight")

    def __init__(self, allowance: float, now: float) -> None:
        self.allowance = allowance
        self.updated = now
        self.in_flight = 0


class KnownLogins:
    """The addresses each account has logged in from lately.

    A pair is forgotten `keep_s` after its last success. An account keeps at
    most `per_account` addresses (its least recent go first), so logging in
    to one account from ever more addresses pushes out only that account's
    own; and at most `capacity` accounts are kept.
    """

    def __init__(self, keep_s: float, per_account: int = KNOWN_ADDRESSES_PER_ACCOUNT,
                 capacity: int = MAX_TRACKED_KEYS) -> None:
        self.keep_s = keep_s
        self.per_account = per_account
        self._accounts: LRUTable[dict[str, float]] = LRUTable(capacity)

    def remember(self, account: str, ip: str, now: float) -> None:
        addresses = self._accounts.get(account) or {}
        addresses.pop(ip, None)  # to the end: a dict keeps insertion order
        addresses[ip] = now
        while len(addresses) > self.per_account:
            del addresses[next(iter(addresses))]
        self._accounts.put(account, addresses)

    def knows(self, account: str, ip: str, now: float) -> bool:
        addresses = self._accounts.get(account)
        if addresses is None or ip not in addresses:
            return False
        if now - addresses[ip] < self.keep_s:
            return True
        del addresses[ip]
        return False

    def __len__(self) -> int:
        return len(self._accounts)


class LoginThrottle:
    """Online-guessing throttles: per address, per account and address, per account.

    Per address: `per_ip_per_minute` failures within a minute earn a wait of
    1 s, then 2, 4 … up to 10 minutes; an hour after the last wait ends the
    doubling starts again from 1 s.

    Per account and address: after `per_pair_free` consecutive failures on
    an account from one address, each further try from there must wait
    2^(n - free) seconds, up to 5 minutes; a success from there resets it.
    Keyed by address too, so that someone guessing from elsewhere delays
    only themselves, never the owner.

    Per account, from all addresses: `per_account_per_hour` failures at
    once, then one more every 3600 / per_account_per_hour seconds (a token
    bucket: a wait, never a lockout), so many addresses together get no
    more than that. Addresses the account has logged in from within
    `remember_s` are let past this one (not past their own delay): an
    attack spread over many addresses holds up the owner only where they
    have never logged in.

    Accounts are keyed by the lower-cased name whether or not it exists, so
    the throttle itself reveals nothing. An address's failures stay until
    they age out, since one good login says nothing of the other guesses
    from that address.

    Guesses being checked count as failures until they are known (`begin`,
    then `end`): otherwise guesses sent at once would all pass the check
    before the first one failed. Once a pair's free guesses are spent it
    has at most one guess in flight, and so has an account whose hourly
    allowance is spent; an address that has failed recently may not have
    more in flight than it has failures left.
    """

    def __init__(self, per_ip_per_minute: int, per_pair_free: int,
                 per_account_per_hour: int = 100, remember_s: float = 30 * DAY_S) -> None:
        self.per_ip_per_minute = per_ip_per_minute
        self.per_pair_free = per_pair_free
        self.per_account_per_hour = per_account_per_hour
        self._ips: LRUTable[_IpRecord] = LRUTable()
        self._pairs: LRUTable[_PairRecord] = LRUTable()
        self._accounts: LRUTable[_AccountRecord] = LRUTable()
        self.known = KnownLogins(remember_s)

    def wait_for(self, ip: str, account: str | None, now: float) -> float:
        """Seconds before this address may try this account again (0.0: now)."""
        wait = 0.0
        ip_record = self._ips.get(ip)
        if ip_record is not None:
            wait = max(wait, ip_record.blocked_until - now)
        if account is not None:
            account = account.lower()
            pair = self._pairs.get((account, ip))
            if pair is not None:
                wait = max(wait, self._pair_wait(pair, now))
            record = self._accounts.get(account)
            if record is not None and not self.known.knows(account, ip, now):
                wait = max(wait, self._account_wait(record, now))
        return max(wait, 0.0)

    def _pair_wait(self, record: _PairRecord, now: float) -> float:
        if record.consecutive + record.in_flight < self.per_pair_free:
            return 0.0
        wait = 0.0
        if record.consecutive >= self.per_pair_free:
            delay = min(ACCOUNT_DELAY_CAP_S, 2.0 ** (record.consecutive - self.per_pair_free))
            wait = record.last_failure + delay - now
        if record.in_flight:
            wait = max(wait, IN_FLIGHT_RETRY_S)
        return wait

    def _account_wait(self, record: _AccountRecord, now: float) -> float:
        allowance = self._allowance(record, now)
        if allowance - record.in_flight >= 1:
            return 0.0
        if allowance >= 1:  # only guesses still being checked stand in the way
            return IN_FLIGHT_RETRY_S
        return (1 - allowance) * HOUR_S / self.per_account_per_hour

    def _allowance(self, record: _AccountRecord, now: float) -> float:
        """The failures the account may still take now: its bucket, refilled."""
        refill = (now - record.updated) * self.per_account_per_hour / HOUR_S
        return min(float(self.per_account_per_hour), record.allowance + refill)

    def _address_in_flight_wait(self, ip: str, now: float) -> float:
        """Only once an address has failed: a shared address logging in at once is fine."""
        record = self._ips.get(ip)
        if record is None or not record.in_flight or not record.failures:
            return 0.0
        recent = sum(1 for t in record.failures if t > now - WINDOW_S)
        if recent and recent + record.in_flight >= self.per_ip_per_minute:
            return IN_FLIGHT_RETRY_S
        return 0.0

    def begin(self, ip: str, account: str | None, now: float) -> float:
        """`wait_for`, and when that is 0.0, hold a guess in flight until `end`.
        A guess at no account (a session token) counts against the address alone."""
        wait = max(self.wait_for(ip, account, now), self._address_in_flight_wait(ip, now))
        if wait <= 0.0:
            ip_record = self._ips.get(ip) or _IpRecord()
            ip_record.in_flight += 1
            self._ips.put(ip, ip_record)
            if account is None:
                return wait
            account = account.lower()
            pair = self._pairs.get((account, ip)) or _PairRecord()
            pair.in_flight += 1
            self._pairs.put((account, ip), pair)
            record = self._account_record(account, now)
            record.in_flight += 1
        return wait

    def _account_record(self, account: str, now: float) -> _AccountRecord:
        record = self._accounts.get(account)
        if record is None:
            record = _AccountRecord(float(self.per_account_per_hour), now)
            self._accounts.put(account, record)
        return record

    def end(self, ip: str, account: str | None, now: float) -> None:
        """The guess `begin` let through is known: its failure or success is recorded.

        A record left with nothing to remember goes, so that the tables hold
        only addresses and accounts with failures, not everyone who logs in.
        """
        ip_record = self._ips.get(ip)
        if ip_record is not None:
            ip_record.in_flight = max(0, ip_record.in_flight - 1)
            _forget_old_failures(ip_record, now)
            if not (ip_record.in_flight or ip_record.failures
                    or _penalty_remembered(ip_record, now)):
                self._ips.pop(ip)
        if account is None:
            return
        account = account.lower()
        pair = self._pairs.get((account, ip))
        if pair is not None:
            pair.in_flight = max(0, pair.in_flight - 1)
            if not (pair.in_flight or pair.consecutive):
                self._pairs.pop((account, ip))
        record = self._accounts.get(account)
        if record is not None:
            record.in_flight = max(0, record.in_flight - 1)
            if not record.in_flight and self._allowance(record, now) >= self.per_account_per_hour:
                self._accounts.pop(account)

    def tracked(self) -> tuple[int, int, int]:
        """How many addresses, (account, address) pairs and accounts the
        throttle remembers failures of."""
        return len(self._ips), len(self._pairs), len(self._accounts)

    def failure(self, ip: str, account: str | None, now: float) -> None:
        record = self._ips.get(ip) or _IpRecord()
        if not _penalty_remembered(record, now):
            record.penalties = 0  # a long spell of good behaviour is forgiven
        record.failures.append(now)
        _forget_old_failures(record, now)
        if len(record.failures) >= self.per_ip_per_minute:
            record.blocked_until = now + min(IP_PENALTY_CAP_S, 2.0 ** record.penalties)
            record.penalties += 1
            record.failures.clear()
        self._ips.put(ip, record)
        if account is not None:
            account = account.lower()
            pair = self._pairs.get((account, ip)) or _PairRecord()
            pair.consecutive += 1
            pair.last_failure = now
            self._pairs.put((account, ip), pair)
            account_record = self._account_record(account, now)
            account_record.allowance = max(0.0, self._allowance(account_record, now) - 1)
            account_record.updated = now

    def success(self, ip: str, account: str, now: float) -> None:
        """The right password from `ip`: its pair starts afresh, and the
        address is known to the account from now on. The account's hourly
        allowance is not refilled: the owner's logins must not hand an
        attacker elsewhere a fresh hundred guesses."""
        account = account.lower()
        self.known.remember(account, ip, now)
        pair = self._pairs.get((account, ip))
        if pair is None:
            return
        if pair.in_flight:  # other guesses are still being checked: keep counting them
            pair.consecutive = 0
        else:
            self._pairs.pop((account, ip))


def _forget_old_failures(record: _IpRecord, now: float) -> None:
    while record.failures and record.failures[0] <= now - WINDOW_S:
        record.failures.popleft()


def _penalty_remembered(record: _IpRecord, now: float) -> bool:
    """Whether the next penalty doubles the last: for an hour after it ends."""
    return record.penalties > 0 and now - record.blocked_until < HOUR_S


class _Window:
    __slots__ = ("events", "in_flight")

    def __init__(self) -> None:
        self.events: deque[float] = deque()
        self.in_flight = 0


class WindowLimit:
    """At most `limit` events per key within `window` seconds.

    Attempts still being made count until they end (`begin`, then `end`), as
    LoginThrottle's guesses do: otherwise attempts sent at once would all
    pass the check before the first one was recorded.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._records: LRUTable[_Window] = LRUTable()

    def wait_for(self, key: str, now: float) -> float:
        record = self._records.get(key)
        if record is None:
            return 0.0
        events = record.events
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window - now
        if len(events) + record.in_flight >= self.limit:
            return IN_FLIGHT_RETRY_S
        return 0.0

    def begin(self, key: str, now: float) -> float:
        """`wait_for`, and when that is 0.0, count an attempt in flight until `end`."""
        wait = self.wait_for(key, now)
        if wait <= 0.0:
            record = self._records.get(key) or _Window()
            record.in_flight += 1
            self._records.put(key, record)
        return wait

    def end(self, key: str) -> None:
        """The attempt `begin` let through is over: `record` has counted it, or not."""
        record = self._records.get(key)
        if record is not None:
            record.in_flight = max(0, record.in_flight - 1)
            if not (record.in_flight or record.events):
                self._records.pop(key)

    def record(self, key: str, now: float) -> None:
        record = self._records.get(key) or _Window()
        record.events.append(now)
        self._records.put(key, record)


class ConnectionCounter:
    """How many connections there are, in total and per address."""

    def __init__(self) -> None:
        self.total = 0
        self._per_key: dict[str, int] = {}

    def count(self, key: str) -> int:
        return self._per_key.get(key, 0)

    def add(self, key: str) -> None:
        self.total += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1

    def remove(self, key: str) -> None:
        self.total -= 1
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]


class RoundRobin(Generic[V]):
    """Items queued by key and taken a key at a time: one item of the key at
    the front, then that key goes to the back. A key with many items waiting
    gets one turn a round, like every other key waiting, so it cannot push
    the others back by more than one item each."""

    def __init__(self) -> None:
        self._queues: OrderedDict[Hashable, deque[V]] = OrderedDict()
        self._count = 0

    def push(self, key: Hashable, item: V) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()  # a new key waits a whole round
        queue.append(item)
        self._count += 1

    def pop(self) -> V | None:
        """The next item in turn, or None if nothing waits."""
        if not self._queues:
            return None
        key, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        if queue:
            self._queues.move_to_end(key)
        else:
            del self._queues[key]
        self._count -= 1
        return item

    def keys(self) -> list[Hashable]:
        """The keys with items waiting."""
        return list(self._queues)

    def pop_newest(self, key: Hashable) -> V:
        """Take the newest item of `key` out of the line; its key keeps its place."""
        queue = self._queues[key]
        item = queue.pop()
        self._count -= 1
        if not queue:
            del self._queues[key]
        return item

    def remove(self, key: Hashable, item: V) -> None:
        """Take `item` out of its line (its waiter gave up); its key keeps its place."""
        queue = self._queues[key]
        queue.remove(item)
        self._count -= 1
        if not queue:
            del self._queues[key]

    def __len__(self) -> int:
        return self._count
