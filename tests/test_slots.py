"""FairSlots with real threads and no sockets: turns by key, caps, deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from authchat.slots import FairSlots

from helpers import eventually

FAR = 60.0  # a deadline no test should reach


def at_once(call: Callable[[], bool]) -> bool:
    """`call()`'s result, which must come without waiting for a slot: it runs
    in a thread that has to finish well before any deadline it was given."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "it waited for a slot"
    return result[0]


def test_waiters_are_served_in_turn_by_key_not_in_arrival_order() -> None:
    slots = FairSlots(slots=1, max_waiting=10, per_key=5)
    assert slots.acquire("holder", time.monotonic() + FAR)
    served: list[str] = []

    def wait_turn(key: str, label: str) -> None:
        with slots.turn(key, time.monotonic() + FAR) as ok:
            assert ok
            served.append(label)

    waiters: list[threading.Thread] = []
    for key, label in [("hog", "h1"), ("hog", "h2"), ("hog", "h3"), ("other", "o1")]:
        waiters.append(threading.Thread(target=wait_turn, args=(key, label)))
        waiters[-1].start()
        assert eventually(lambda: slots.waiting() == len(waiters))  # in line, in this order
    slots.release("holder")
    for thread in waiters:
        thread.join(10)
    assert served == ["h1", "o1", "h2", "h3"]


def test_a_key_past_its_share_and_anyone_past_a_full_line_are_refused_at_once() -> None:
    slots = FairSlots(slots=2, max_waiting=1, per_key=2)
    assert slots.acquire("a", time.monotonic() + FAR)
    assert slots.acquire("a", time.monotonic() + FAR)
    assert at_once(lambda: slots.acquire("a", time.monotonic() + FAR)) is False  # its share
    waiter = threading.Thread(target=slots.acquire, args=("b", time.monotonic() + FAR))
    waiter.start()
    assert eventually(lambda: slots.waiting() == 1)
    assert at_once(lambda: slots.acquire("c", time.monotonic() + FAR)) is False  # line full
    slots.release("a")
    waiter.join(10)
    assert not waiter.is_alive() and slots.waiting() == 0  # b holds the freed slot


def test_a_waiter_whose_deadline_passes_gives_up_its_place() -> None:
    slots = FairSlots(slots=1, max_waiting=4, per_key=1)
    assert slots.acquire("a", time.monotonic() + FAR)
    assert slots.acquire("b", time.monotonic() + 0.05) is False  # its deadline came first
    assert slots.waiting() == 0
    slots.release("a")
    # given back: with a share of one, a place kept would refuse b now
    assert at_once(lambda: slots.acquire("b", time.monotonic() + FAR))


def test_a_full_line_makes_room_for_an_address_with_fewer_places() -> None:
    # Both slots held, and the line filled by two addresses with two waiters
    # each: a third address still gets in line, in the place of the newest
    # waiter of an address with the most places.
    slots = FairSlots(slots=2, max_waiting=4, per_key=2)
    assert slots.acquire("x", time.monotonic() + FAR)
    assert slots.acquire("y", time.monotonic() + FAR)
    outcomes: dict[str, bool] = {}

    def wait_turn(label: str, key: str) -> None:
        outcomes[label] = slots.acquire(key, time.monotonic() + FAR)

    waiters = []
    for label, key in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"), ("c1", "c")]:
        waiters.append(threading.Thread(target=wait_turn, args=(label, key)))
        waiters[-1].start()
        assert eventually(lambda: slots.waiting() == min(len(waiters), 4))
    assert eventually(lambda: outcomes.get("a2") is False)  # told at once, not left waiting
    # Each slot given back goes to the next in turn: a1, b1, c1, then b2.
    for holder, next_in_turn in [("x", "a1"), ("y", "b1"), ("a", "c1"), ("b", "b2")]:
        slots.release(holder)
        assert eventually(lambda: outcomes.get(next_in_turn) is True)
    for thread in waiters:
        thread.join(10)
    assert outcomes == {"a1": True, "a2": False, "b1": True, "b2": True, "c1": True}
