"""Abuse limits with the clock passed in: no waiting."""

from __future__ import annotations

import pytest

from authchat.limits import (
    ConnectionCounter,
    KeyedRate,
    KnownLogins,
    LoginThrottle,
    LRUTable,
    RoundRobin,
    TokenBucket,
    WindowLimit,
    ip_key,
)


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0  # refills, but never past the burst
    assert [bucket.take(10.0) for _ in range(3)][-1] > 0


def test_per_pair_delay_doubles_and_success_resets() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5)
    now = 0.0
    for _ in range(5):
        assert throttle.wait_for("1.2.3.4", "Alice", now) == 0.0
        throttle.failure("1.2.3.4", "alice", now)
    assert throttle.wait_for("1.2.3.4", "ALICE", now) == 1.0  # any case
    throttle.failure("1.2.3.4", "alice", now + 1)
    assert throttle.wait_for("1.2.3.4", "alice", now + 1) == 2.0
    throttle.failure("1.2.3.4", "alice", now + 3)
    assert throttle.wait_for("1.2.3.4", "alice", now + 3) == 4.0
    for n in range(30):
        throttle.failure("1.2.3.4", "alice", 100.0 + n)
    assert throttle.wait_for("1.2.3.4", "alice", 129.0) == 300.0  # capped
    throttle.success("1.2.3.4", "alice", 129.0)
    assert throttle.wait_for("1.2.3.4", "alice", 129.0) == 0.0


def test_a_guess_at_no_account_counts_against_the_address_alone() -> None:
    throttle = LoginThrottle(per_ip_per_minute=3, per_pair_free=5)
    for n in range(3):
        assert throttle.begin("1.2.3.4", None, float(n)) == 0.0
        throttle.failure("1.2.3.4", None, float(n))
        throttle.end("1.2.3.4", None, float(n))
    assert throttle.wait_for("1.2.3.4", None, 2.5) > 0  # the address waits
    assert throttle.wait_for("5.6.7.8", "alice", 2.5) == 0.0
    assert throttle.tracked() == (1, 0, 0)  # no account, no pair was charged


def test_guesses_from_one_address_do_not_hold_up_the_owner_elsewhere() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5)
    for n in range(8):
        throttle.failure("127.0.0.2", "alice", float(n))
    assert throttle.wait_for("127.0.0.2", "alice", 8.0) > 0
    assert throttle.wait_for("127.0.0.3", "alice", 8.0) == 0.0


def test_the_hourly_allowance_of_an_account_is_shared_by_all_addresses() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5, per_account_per_hour=100)
    for n in range(100):  # 20 addresses, 5 guesses each: none of them is delayed itself
        throttle.failure(f"10.0.{n % 20}.1", "alice", 0.0)
    assert throttle.wait_for("10.9.9.9", "alice", 0.0) == 36.0  # one every 3600/100 s
    assert throttle.wait_for("10.9.9.9", "alice", 36.0) == 0.0
    throttle.failure("10.9.9.9", "alice", 36.0)
    assert throttle.wait_for("10.9.9.8", "alice", 36.0) == 36.0
    assert throttle.wait_for("10.9.9.8", "bob", 36.0) == 0.0


def test_an_address_that_logged_in_before_passes_the_hourly_allowance_not_its_own_delay(
) -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5, per_account_per_hour=10,
                             remember_s=30 * 86_400.0)
    throttle.success("192.0.2.1", "alice", 0.0)  # the owner's usual address
    for n in range(10):
        throttle.failure(f"10.0.{n}.1", "alice", 100.0)
    assert throttle.wait_for("10.9.9.9", "alice", 100.0) == 360.0
    assert throttle.wait_for("192.0.2.1", "Alice", 100.0) == 0.0
    assert throttle.begin("192.0.2.1", "alice", 100.0) == 0.0
    throttle.success("192.0.2.1", "alice", 100.0)
    throttle.end("192.0.2.1", "alice", 100.0)
    for _ in range(5):  # someone behind the owner's address guessing
        throttle.failure("192.0.2.1", "alice", 200.0)
    assert throttle.wait_for("192.0.2.1", "alice", 200.0) == 1.0
    later = 100.0 + 30 * 86_400.0  # the last login was 30 days ago: forgotten
    for n in range(10):
        throttle.failure(f"10.0.{n}.1", "alice", later)
    assert throttle.wait_for("192.0.2.1", "alice", later) == 360.0


def test_known_logins_are_kept_for_a_while_and_a_few_per_account() -> None:
    known = KnownLogins(keep_s=10.0, per_account=2)
    for n, ip in enumerate(("a", "b", "c")):
        known.remember("alice", ip, float(n))
    assert [known.knows("alice", ip, 2.0) for ip in "abc"] == [False, True, True]
    known.remember("bob", "a", 2.0)  # another account's addresses are its own
    assert known.knows("alice", "b", 2.0) and not known.knows("bob", "b", 2.0)
    assert known.knows("alice", "c", 11.9) and not known.knows("alice", "c", 12.0)
    capped = KnownLogins(keep_s=10.0, capacity=2)
    for name in ("u1", "u2", "u3"):
        capped.remember(name, "a", 0.0)
    assert len(capped) == 2 and not capped.knows("u1", "a", 0.0)


def test_per_address_penalty_grows_to_ten_minutes() -> None:
    throttle = LoginThrottle(per_ip_per_minute=3, per_pair_free=1000)
    now, penalties = 0.0, []
    for _ in range(12):
        for name in ("a", "b", "c"):
            throttle.failure("10.0.0.1", name, now)
        penalties.append(throttle.wait_for("10.0.0.1", None, now))
        now += 1000
    assert penalties[:4] == [1.0, 2.0, 4.0, 8.0] and penalties[-1] == 600.0
    assert throttle.wait_for("10.0.0.2", None, now) == 0.0
    assert throttle.wait_for("10.0.0.1", "a", now) == 0.0  # penalty served


def test_failures_older_than_a_minute_do_not_count() -> None:
    throttle = LoginThrottle(per_ip_per_minute=3, per_pair_free=1000)
    throttle.failure("10.0.0.1", "a", 0.0)
    throttle.failure("10.0.0.1", "b", 30.0)
    throttle.failure("10.0.0.1", "c", 61.0)
    assert throttle.wait_for("10.0.0.1", None, 61.0) == 0.0


def test_window_limit() -> None:
    limit = WindowLimit(limit=2, window=3600.0)
    limit.record("k", 0.0)
    limit.record("k", 10.0)
    assert limit.wait_for("k", 20.0) == 3580.0
    assert limit.wait_for("other", 20.0) == 0.0
    assert limit.wait_for("k", 3600.0) == 0.0


def test_window_limit_counts_attempts_in_flight() -> None:
    limit = WindowLimit(limit=2, window=3600.0)
    assert [limit.begin("k", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    limit.record("k", 0.0)  # one counts (an account was made)...
    limit.end("k")
    limit.end("k")  # ...the other does not (a refused password)
    assert limit.begin("k", 1.0) == 0.0
    limit.record("k", 1.0)
    limit.end("k")
    assert limit.wait_for("k", 1.0) == 3599.0
    assert limit.begin("other", 1.0) == 0.0


def test_round_robin_gives_each_key_one_turn_a_round() -> None:
    line: RoundRobin[str] = RoundRobin()
    for key, item in [("hog", "h1"), ("hog", "h2"), ("hog", "h3"), ("b", "b1"), ("c", "c1"),
                      ("b", "b2")]:
        line.push(key, item)
    line.remove("hog", "h2")  # a waiter that gave up
    assert len(line) == 5
    assert [line.pop() for _ in range(6)] == ["h1", "b1", "c1", "h3", "b2", None]
    assert len(line) == 0


def test_new_connections_come_in_a_burst_then_at_a_rate_per_key() -> None:
    rate = KeyedRate(per_minute=30)
    assert [rate.take("a", 0.0) for _ in range(30)] == [0.0] * 30
    assert rate.take("a", 0.0) == 2.0  # one every 60/30 s
    assert rate.take("b", 0.0) == 0.0
    assert rate.take("a", 2.0) == 0.0
    assert rate.take("a", 2.0) == 2.0


def test_tables_are_capped() -> None:
    table: LRUTable[int] = LRUTable(capacity=3)
    for n in range(5):
        table.put(str(n), n)
    assert len(table) == 3 and table.get("0") is None and table.get("4") == 4


def test_ipv6_is_counted_per_64() -> None:
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert ip_key("127.0.0.2") == "127.0.0.2"


def test_connection_counter() -> None:
    counter = ConnectionCounter()
    counter.add("a")
    counter.add("a")
    counter.add("b")
    assert (counter.total, counter.count("a"), counter.count("c")) == (3, 2, 0)
    counter.remove("a")
    counter.remove("a")
    assert (counter.total, counter.count("a")) == (1, 0)


def test_guesses_in_flight_count_until_their_outcome_is_known() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5)
    # seven guesses at once: the five free ones go, the rest must wait for them
    waits = [throttle.begin("10.0.0.1", "alice", 0.0) for _ in range(7)]
    assert waits == [0.0] * 5 + [1.0, 1.0]
    for _ in range(5):
        throttle.failure("10.0.0.1", "alice", 0.0)
        throttle.end("10.0.0.1", "alice", 0.0)
    assert throttle.begin("10.0.0.1", "Alice", 0.5) == 0.5  # the usual delay now
    assert throttle.begin("10.0.0.1", "alice", 1.0) == 0.0  # one guess goes...
    assert throttle.begin("10.0.0.1", "alice", 1.0) == 1.0  # ...and only one at a time
    assert throttle.begin("10.0.0.2", "alice", 1.0) == 0.0  # elsewhere, nothing is spent


def test_guesses_in_flight_count_against_the_hourly_allowance() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=5, per_account_per_hour=5)
    waits = [throttle.begin(f"10.0.0.{i}", "alice", 0.0) for i in range(7)]
    assert waits == [0.0] * 5 + [1.0, 1.0]
    for i in range(5):
        throttle.failure(f"10.0.0.{i}", "alice", 0.0)
        throttle.end(f"10.0.0.{i}", "alice", 0.0)
    assert throttle.begin("10.0.0.9", "alice", 0.0) == 720.0  # one every 3600/5 s
    assert throttle.begin("10.0.0.9", "alice", 720.0) == 0.0  # one guess goes...
    assert throttle.begin("10.0.0.8", "alice", 720.0) == 1.0  # ...and only one at a time


def test_guesses_in_flight_count_against_an_address_that_has_failed() -> None:
    throttle = LoginThrottle(per_ip_per_minute=3, per_pair_free=1000)
    # an address with no failures may log in many at once: a shared NAT
    assert [throttle.begin("10.0.0.9", name, 0.0) for name in "abcd"] == [0.0] * 4
    throttle.failure("10.0.0.1", "x", 0.0)
    assert [throttle.begin("10.0.0.1", name, 0.0) for name in "abc"] == [0.0, 0.0, 1.0]
    throttle.end("10.0.0.1", "a", 0.0)  # say "a" was right after all: no failure recorded
    assert throttle.begin("10.0.0.1", "d", 0.0) == 0.0
    assert throttle.wait_for("10.0.0.1", None, 0.0) == 0.0  # new connections are not refused


def test_a_success_keeps_counting_the_other_guesses_in_flight() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=3)
    throttle.failure("10.0.0.1", "alice", 0.0)
    assert throttle.begin("10.0.0.1", "alice", 0.0) == 0.0  # the owner...
    assert throttle.begin("10.0.0.1", "alice", 0.0) == 0.0  # ...and a guess behind the same NAT
    throttle.success("10.0.0.1", "alice", 0.0)
    throttle.end("10.0.0.1", "alice", 0.0)
    # the count starts again, but the guess still being checked is in it
    assert [throttle.begin("10.0.0.1", "alice", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]


def test_retry_after_is_the_delay_when_a_guess_is_in_flight_too() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1000, per_pair_free=1)
    for n in range(4):
        throttle.failure("10.0.0.1", "alice", 0.0)
    assert throttle.begin("10.0.0.1", "alice", 0.0) == 8.0
    assert throttle.begin("10.0.0.1", "alice", 8.0) == 0.0
    assert throttle.begin("10.0.0.1", "alice", 8.0) == 1.0  # one at a time


def test_logins_that_succeed_leave_nothing_behind() -> None:
    throttle = LoginThrottle(per_ip_per_minute=10, per_pair_free=5)
    for n in range(100):
        assert throttle.begin(f"10.0.{n}.1", f"user{n}", 0.0) == 0.0
        throttle.success(f"10.0.{n}.1", f"user{n}", 0.0)
        throttle.end(f"10.0.{n}.1", f"user{n}", 0.0)
    assert throttle.tracked() == (0, 0, 0)
    throttle.begin("10.0.0.1", "alice", 0.0)
    throttle.failure("10.0.0.1", "alice", 0.0)
    throttle.end("10.0.0.1", "alice", 0.0)
    assert throttle.tracked() == (1, 1, 1)  # a failure is remembered...
    throttle.begin("10.0.0.1", "alice", 61.0)
    throttle.success("10.0.0.1", "alice", 61.0)
    throttle.end("10.0.0.1", "alice", 61.0)
    assert throttle.tracked() == (0, 0, 0)  # ...for its minute (and the allowance refilled)


def test_an_address_penalty_is_forgiven_after_a_quiet_hour() -> None:
    throttle = LoginThrottle(per_ip_per_minute=1, per_pair_free=1000)
    throttle.failure("10.0.0.1", "a", 0.0)
    throttle.failure("10.0.0.1", "a", 10.0)
    assert throttle.wait_for("10.0.0.1", None, 10.0) == 2.0  # doubled
    later = 10.0 + 2.0 + 3600.0
    throttle.failure("10.0.0.1", "a", later)
    assert throttle.wait_for("10.0.0.1", None, later) == 1.0  # back to the first step
