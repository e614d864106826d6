"""The interactive chat screen, on prompt_toolkit.

The input line stays at the bottom and is never garbled: events from the
reader thread are printed with print_formatted_text, which prompt_toolkit
draws above a running prompt (it hands the drawing to the prompt's own event
loop). Up/down walk the history of this run; /quit, or Ctrl-D on an empty
line, leaves. Ctrl-C does not quit, as in irssi and WeeChat: it keeps what is
typed and says how to leave (a second Ctrl-C straight after leaves too). A bottom bar shows who
you are, where, and whether the connection is up.

UI only: connecting, reconnecting and the protocol are link.py's and session.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import Application
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.styles import Style

from ..errors import AuthchatError
from ..protocol import ErrorReply, Ok, Request, ServerEvent
from .commands import HELP, Local, Mistake, Send, parse
from .display import CONNECTION_STATE, STYLE, render
from .session import Chat, Event, Notice

style = Style.from_dict(STYLE | {"bottom-toolbar": "noreverse #aaaaaa bg:#222222"})

HOW_TO_LEAVE = "*** to leave, type /quit or press Ctrl-D on an empty line (or Ctrl-C again)"
SECOND_INTERRUPT_S = 2.0  # a Ctrl-C this soon after the first one leaves


class Screen:
    """The terminal front end of one Chat."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.session: PromptSession[str] = PromptSession(history=InMemoryHistory(),
                                                         key_bindings=self._keys())
        self.status = "connected"
        self._interrupted_at = -SECOND_INTERRUPT_S

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()
        keys.add("c-c")(self._interrupt)
        return keys

    def _interrupt(self, event: KeyPressEvent) -> None:
        """Ctrl-C: a line half typed is not thrown away by a reflex; say how to leave."""
        now = time.monotonic()
        if now - self._interrupted_at < SECOND_INTERRUPT_S:
            event.app.exit(exception=KeyboardInterrupt())
            return
        self._interrupted_at = now
        self.note(HOW_TO_LEAVE)

    def show(self, event: Event) -> None:
        """Print one event above the prompt; safe from any thread."""
        if isinstance(event, Notice):
            self.status = CONNECTION_STATE.get(event.kind, self.status)
        fragments = render(event, self.chat.username)
        if fragments:
            print_formatted_text(FormattedText(fragments), style=style)
        if isinstance(event, Notice) and event.kind == "ended":
            self._leave_prompt()

    def note(self, text: str, style_class: str = "class:notice") -> None:
        print_formatted_text(FormattedText([(style_class, text)]), style=style)

    def _leave_prompt(self) -> None:
        app: Application[Any] = self.session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))

    def _toolbar(self) -> str:
        options = self.chat.options
        security = f"TLS {(self.chat.fingerprint or '')[:17]}…" if options.tls else "NO TLS"
        return (f" {self.chat.username} @ {options.host}:{options.port}  {security}  "
                f"[{self.status}]   /help for commands")

    def run(self) -> int:
        """Read and act on lines until the user leaves or the session ends."""
        self.show(self.chat.welcome)
        while not self.chat.ended.is_set():
            try:
                line = self.session.prompt("> ", style=style, bottom_toolbar=self._toolbar,
                                           refresh_interval=1.0)
            except (EOFError, KeyboardInterrupt):
                break
            try:
                if not self._act(line):
                    break
            except KeyboardInterrupt:  # while waiting for an answer: the same as at the prompt
                self._interrupted_at = time.monotonic()
                self.note(HOW_TO_LEAVE)
        ended = self.chat.ended.is_set()
        self.chat.close()
        return 1 if ended else 0

    def _act(self, line: str) -> bool:
        """Carry out one typed line; False to leave."""
        command = parse(line)
        if isinstance(command, Mistake):
            self.note(command.hint, "class:error")
        elif isinstance(command, Local):
            if command.name == "quit":
                return False
            if command.name == "help":
                self.note(HELP)
            elif command.name == "history":
                self._answer(self.chat.older)
            else:
                self._change_password()
        elif isinstance(command, Send):
            self._request(command.request)
        return True

    def _request(self, request: Request) -> bool:
        """Send; show the answer unless it is a plain ok. True if the server agreed."""
        return self._answer(lambda: self.chat.request(request))

    def _answer(self, ask: Callable[[], ServerEvent]) -> bool:
        try:
            reply = ask()
        except AuthchatError as e:  # not sent (InvalidPassword), or no answer (ClientError)
            self.note(f"!!! {e}", "class:error")
            return False
        if not isinstance(reply, Ok):  # errors, and who's answer
            self.show(reply)
        return not isinstance(reply, ErrorReply)

    def _change_password(self) -> None:
        # A session of its own, so no password lands in the up/down history.
        secret: PromptSession[str] = PromptSession()
        try:
            old = secret.prompt("current password: ", is_password=True)
            new = secret.prompt("new password: ", is_password=True)
            again = secret.prompt("new password again: ", is_password=True)
        except (EOFError, KeyboardInterrupt):
            self.note("password not changed")
            return
        if new != again:
            self.note("the new passwords do not match; password not changed", "class:error")
        elif self._answer(lambda: self.chat.change_password(old, new)):
            self.note("password changed")


def run(chat: Chat) -> int:
    return Screen(chat).run()
