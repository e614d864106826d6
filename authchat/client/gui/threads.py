"""Between the network threads and the Tk thread.

Two rules, each from a way the window can die:

- Tk may only be called from the thread running its main loop, and that
  thread must never wait on the network. So network calls run on the Worker
  thread, and what comes back is put in the Mailbox, which the Tk thread
  drains (Inbox) a bounded batch per turn of its event loop.
- No other thread may hold a reference to anything of Tk's, not even
  indirectly through a callback: when the last reference to a Tk interpreter,
  variable or font goes away on another thread, Tcl aborts the process. So
  what crosses is plain data: the Mailbox carries tuples, the Worker gets
  callables over Chat objects, and the callbacks for its answers wait in Jobs,
  on the Tk side, under a number.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import tkinter as tk
from collections.abc import Callable
from typing import Any

from ...errors import AuthchatError

log = logging.getLogger(__name__)

POLL_MS = 15            # how often the Tk thread looks for work from the network
WORK_PER_TICK = 100     # then it redraws and reads keys before taking more

Item = tuple[Any, ...]  # (kind, *details)


class Mailbox:
    """Plain data for the Tk thread, posted from any thread, taken in order."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()

    def post(self, *item: Any) -> None:
        self._items.put(item)

    def take(self) -> Item | None:
        try:
            return self._items.get_nowait()
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._items.empty()


class Worker:
    """One thread for network calls, done in order; answers go to the mailbox.

    It holds only the mailbox and its jobs (numbers and callables over Chat
    objects), never anything of Tk's.
    """

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox
        self._jobs: queue.SimpleQueue[tuple[int, Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="gui-network", daemon=True)
        self.thread.start()

    def run(self, number: int, call: Callable[[], Any]) -> None:
        self._jobs.put((number, call))

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            number, call = job
            try:
                result = call()
            except Exception as e:  # the thread must outlive any one failure
                if not isinstance(e, (AuthchatError, OSError)):
                    log.error("a network call failed unexpectedly", exc_info=True)
                self._mailbox.post("failed", number, e)
            else:
                self._mailbox.post("done", number, result)
            del job, call  # nothing of this job lingers on this thread

    def stop(self) -> None:
        self._jobs.put(None)


class Answer:
    """A yes or no that a worker thread waits for and the Tk thread gives."""

    def __init__(self) -> None:
        self._given = threading.Event()
        self.value = False

    def give(self, value: bool) -> None:
        self.value = value
        self._given.set()

    def wait(self, abandoned: threading.Event) -> bool:
        while not self._given.wait(0.2):
            if abandoned.is_set():
                return False
        return self.value


class Inbox:
    """The Tk side of the mailbox: drained with after(), at most `per_tick` items
    a turn, each given to the handler registered for its kind."""

    def __init__(self, root: tk.Misc, mailbox: Mailbox, per_tick: int = WORK_PER_TICK) -> None:
        self._root = root
        self._mailbox = mailbox
        self._per_tick = per_tick
        self.handlers: dict[str, Callable[..., None]] = {}
        self._timer = root.after(POLL_MS, self._drain)

    def _drain(self) -> None:
        try:
            for _ in range(self._per_tick):
                item = self._mailbox.take()
                if item is None:
                    break
                self.handlers[item[0]](*item[1:])
        finally:
            more = not self._mailbox.empty()
            self._timer = self._root.after(1 if more else POLL_MS, self._drain)

    def stop(self) -> None:
        """No more draining; what is left is dropped with the window."""
        self._root.after_cancel(self._timer)


class Jobs:
    """Network calls for the Tk thread: run on the worker, answered here."""

    def __init__(self, inbox: Inbox, worker: Worker) -> None:
        self._worker = worker
        self._numbers = itertools.count(1)
        self._waiting: dict[int, tuple[Callable[[Any], None], Callable[[Exception], None]]] = {}
        inbox.handlers["done"] = self._done
        inbox.handlers["failed"] = self._failed

    def run(self, call: Callable[[], Any], done: Callable[[Any], None],
            failed: Callable[[Exception], None]) -> None:
        """Run `call` off the Tk thread; then `done(result)` or `failed(error)` on it.

        `call` must not hold anything of Tk's (see the module docstring).
        """
        number = next(self._numbers)
        self._waiting[number] = (done, failed)
        self._worker.run(number, call)

    def _done(self, number: int, result: Any) -> None:
        self._waiting.pop(number)[0](result)

    def _failed(self, number: int, error: Exception) -> None:
        self._waiting.pop(number)[1](error)
