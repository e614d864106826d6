"""Scripting mode: lines in, events out, for bots, pipes and tests.

Each stdin line is sent as a message or slash command, one at a time: the
next is sent only when the server has answered the last, so lines arrive in
order, a rate limit is waited out (the server says how long) rather than
lost, and at end of input everything sent has been echoed back. Received
events are printed one per line, or as raw protocol frames with --json.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from ..errors import ErrorCode
from ..protocol import ErrorReply, Ok, ServerEvent, UnknownEvent
from ..sanitize import escape, escape_json
from .commands import HELP, Local, Mistake, Send, parse
from .display import plain, render
from .link import ClientError, describe_error
from .session import Chat, Event, Notice

EXIT_OK = 0
EXIT_FAILED = 1        # a line was refused, or the server ended the session
EXIT_CONNECTION_LOST = 3
MAX_RATE_LIMIT_WAITS = 20
ENDED_POLL_S = 0.2


def complain(text: str) -> None:
    """One line on stderr; server-supplied text in it cannot drive the terminal."""
    print(f"authchat: {escape(text)}", file=sys.stderr, flush=True)


class Printer:
    """Prints events from the reader thread and the main thread, a line at a time."""

    def __init__(self, out: TextIO, as_json: bool, me: str) -> None:
        self.out = out
        self.as_json = as_json
        self.me = me  # whose messages are "own"
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Notice) and event.kind == "ended":
            if not (self.as_json and event.reply is not None):
                return  # `run` says why on stderr, once
            event = event.reply  # the server's own words, as it sent them
        elif isinstance(event, Notice) and self.as_json:
            complain(event.text)
            return
        line = _as_json(event) if self.as_json and not isinstance(event, Notice) \
            else plain(render(event, self.me))
        if line:
            with self._lock:
                self.out.write(line + "\n")
                self.out.flush()


def _as_json(event: ServerEvent) -> str:
    """The event as the frame the server sent, unknown fields and all: one
    line, safe for a terminal."""
    if isinstance(event, UnknownEvent):
        frame = event.frame
    else:
        frame = event.received if event.received is not None else event.to_frame()
    return escape_json(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))


def _lines_until_ended(stream: Iterable[str], chat: Chat) -> Iterator[str]:
    """The input's lines, stopping early if the session ends while we wait for one.

    A thread reads the input so that a server that ends the session (a kick,
    a drop) ends the run even while the input stays open and silent.
    """
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    while not chat.ended.is_set():
        try:
            line = lines.get(timeout=ENDED_POLL_S)
        except queue.Empty:
            continue
        if line is None:
            return
        yield line


def run(chat: Chat, stream: Iterable[str], printer: Printer) -> int:
    """Send every line; the exit status says how it went."""
    failures = 0
    for line in _lines_until_ended(stream, chat):
        command = parse(line)
        if command is None:
            continue
        if isinstance(command, Mistake):
            complain(command.hint)
            failures += 1
        elif isinstance(command, Local):
            if command.name == "quit":
                break
            if command.name == "help":
                printer.out.write(HELP + "\n")
            elif command.name == "history":
                failures += not _older(chat, printer)
            else:
                complain("/passwd needs the interactive client")
                failures += 1
        elif not _send(chat, command, printer):
            failures += 1
    if chat.ended.is_set():
        lost = chat.end_reason == "connection lost"
        complain(str(chat.end_reason))
        return EXIT_CONNECTION_LOST if lost else EXIT_FAILED
    chat.close()
    return EXIT_OK if failures == 0 else EXIT_FAILED


def _older(chat: Chat, printer: Printer) -> bool:
    """Print the page of room messages before the oldest seen; False if refused."""
    try:
        reply = chat.older()
    except ClientError as e:
        complain(str(e))
        return False
    printer(reply)
    return not isinstance(reply, ErrorReply)


def _send(chat: Chat, command: Send, printer: Printer) -> bool:
    """Send one request, waiting out rate limits; False if it was refused or lost."""
    for _ in range(MAX_RATE_LIMIT_WAITS):
        try:
            reply = chat.request(command.request)
        except ClientError as e:
            complain(str(e))
            return False
        if isinstance(reply, ErrorReply) and reply.code == ErrorCode.RATE_LIMITED:
            time.sleep(reply.retry_after or 1.0)
            continue
        if isinstance(reply, ErrorReply):
            if printer.as_json:
                printer(reply)
            else:
                complain(describe_error(reply))
            return False
        if not isinstance(reply, Ok):  # who: the reply is the answer to show
            printer(reply)
        return True
    complain("still rate limited; giving up on a line")
    return False
