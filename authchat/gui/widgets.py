"""The desktop client's parts: the Tk-thread plumbing, dialogs, the connect
form and a conversation's scrolling list. See the package docstring for why
the plumbing looks the way it does.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import tkinter as tk
from collections.abc import Callable, Sequence
from functools import partial
from tkinter import ttk
from typing import Any, TypeVar

from ..client import ClientOptions
from ..display import Fragments
from ..errors import AuthchatError
from ..sanitize import escape

POLL_MS = 15              # how often the Tk thread looks for work from the network
WORK_PER_TICK = 100       # then it redraws and reads keys before taking more
SCROLLBACK_LINES = 10_000  # per conversation; the oldest lines go first

# display.py's style classes as text tags.
TAGS: dict[str, dict[str, Any]] = {
    "time": {"foreground": "#6e7781"},
    "sender": {"font": "AuthchatBold"},
    "own": {"foreground": "#1a7f37", "font": "AuthchatBold"},
    "dm": {"foreground": "#8250df"},
    "presence": {"foreground": "#6e7781", "font": "AuthchatItalic"},
    "notice": {"foreground": "#9a6700"},
    "error": {"foreground": "#cf222e", "font": "AuthchatBold"},
    "history": {"foreground": "#6e7781"},
}
TONES = {"info": "", "warning": "#9a6700", "error": "#cf222e"}

T = TypeVar("T")
Answered = Callable[[str | None, list[str]], None]  # (button or None, field values)


class NoDisplay(AuthchatError):
    """There is no screen to open a window on."""


class Inbox:
    """Work for the Tk thread, handed in from any thread and done in order."""

    def __init__(self, root: tk.Misc, per_tick: int = WORK_PER_TICK) -> None:
        self._root = root
        self._per_tick = per_tick
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timer = root.after(POLL_MS, self._drain)

    def put(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def _drain(self) -> None:
        try:
            for _ in range(self._per_tick):
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                work()
        finally:
            more = not self._work.empty()
            self._timer = self._root.after(1 if more else POLL_MS, self._drain)

    def stop(self) -> None:
        """No more draining; what is left is dropped with the window."""
        self._root.after_cancel(self._timer)


class Worker:
    """One thread for network calls, done in order; answers go back through the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="gui-network", daemon=True).start()

    def run(self, call: Callable[[], T], done: Callable[[T], None],
            failed: Callable[[Exception], None]) -> None:
        def job() -> None:
            try:
                result = call()
            except (AuthchatError, OSError) as e:
                self._inbox.put(partial(failed, e))
            else:
                self._inbox.put(partial(done, result))
        self._jobs.put(job)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

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


class Timed(tk.Misc):
    """A widget whose pending after() callbacks are cancelled when it is destroyed
    (one left behind would fire into a deleted Tcl command and print an error)."""

    _timers: set[str]

    def later(self, delay_ms: int | None, callback: Callable[[], None]) -> str:
        """Run `callback` after `delay_ms`, or when the loop is next idle (None)."""
        timers = self.__dict__.setdefault("_timers", set())
        ident = ""

        def fire() -> None:
            timers.discard(ident)
            callback()

        ident = self.after_idle(fire) if delay_ms is None else self.after(delay_ms, fire)
        timers.add(ident)
        return ident

    def destroy(self) -> None:
        for ident in self.__dict__.pop("_timers", set()):
            self.after_cancel(ident)
        super().destroy()


class Dialog(Timed, tk.Toplevel):
    """A small window over the main one: a message, maybe fields, and buttons.

    Return presses the default button, Escape or closing the window answers
    None. Copyable `detail` text (a fingerprint) sits in a read-only field.
    """

    def __init__(self, parent: tk.Misc, title: str, message: str, buttons: Sequence[str],
                 on_answer: Answered | None = None, *, fields: Sequence[tuple[str, bool]] = (),
                 detail: str = "", default: int = 0, tone: str = "info") -> None:
        super().__init__(parent)
        self.title(title)
        self.transient(parent.winfo_toplevel())
        self.resizable(False, False)
        self._on_answer = on_answer
        body = ttk.Frame(self, padding=16)
        body.pack(fill="both", expand=True)
        self.message = ttk.Label(body, text=message, wraplength=480, justify="left",
                                 foreground=TONES[tone])
        self.message.pack(anchor="w")
        if detail:
            shown = ttk.Entry(body, width=len(detail), font="TkFixedFont")
            shown.insert(0, detail)
            shown.configure(state="readonly")
            shown.pack(fill="x", pady=(10, 0))
        self.entries = [self._field(body, label, secret) for label, secret in fields]
        row = ttk.Frame(body)
        row.pack(anchor="e", pady=(16, 0))
        self.buttons = {label: ttk.Button(row, text=label, command=partial(self.answer, label))
                        for label in buttons}
        for button in self.buttons.values():
            button.pack(side="left", padx=(8, 0))
        self.bind("<Return>", lambda _: self.answer(buttons[default]))
        self.bind("<KP_Enter>", lambda _: self.answer(buttons[default]))
        self.bind("<Escape>", lambda _: self.answer(None))
        self.protocol("WM_DELETE_WINDOW", lambda: self.answer(None))
        (self.entries[0] if self.entries else self.buttons[buttons[default]]).focus_set()
        self.later(None, self._hold_focus)

    @staticmethod
    def _field(body: ttk.Frame, label: str, secret: bool) -> ttk.Entry:
        ttk.Label(body, text=label).pack(anchor="w", pady=(10, 2))
        entry = ttk.Entry(body, width=40, show="•" if secret else "")
        entry.pack(fill="x")
        return entry

    def _hold_focus(self) -> None:
        try:
            self.grab_set()  # input goes here until it is answered
        except tk.TclError:
            pass  # not mapped yet, or already gone: it still works, only not modal

    def answer(self, button: str | None) -> None:
        values = [entry.get() for entry in self.entries]
        self.grab_release()
        self.destroy()
        if self._on_answer is not None:
            self._on_answer(button, values)


def alert(parent: tk.Misc, title: str, message: str, tone: str = "error") -> Dialog:
    return Dialog(parent, title, message, ["OK"], tone=tone)


@dataclasses.dataclass(frozen=True)
class Login:
    host: str
    port: int
    username: str
    password: str
    create: bool
    tls: bool


class ConnectForm(ttk.Frame):
    """Server, account and password; hands a Login to `submit`."""

    def __init__(self, parent: tk.Misc, options: ClientOptions, username: str,
                 submit: Callable[[Login], None]) -> None:
        super().__init__(parent, padding=32)
        self._submit_to = submit
        self.host = tk.StringVar(self, options.host)
        self.port = tk.StringVar(self, str(options.port))
        self.username = tk.StringVar(self, username)
        self.password = tk.StringVar(self)
        self.create = tk.BooleanVar(self, False)
        self.tls = tk.BooleanVar(self, options.tls)
        ttk.Label(self, text="Connect to an authchat server", font="AuthchatHeading").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 16))
        self.entries = {label: self._row(row, label, variable, secret)
                        for row, (label, variable, secret) in enumerate([
                            ("Server", self.host, False), ("Port", self.port, False),
                            ("Username", self.username, False),
                            ("Password", self.password, True)], start=1)}
        ttk.Checkbutton(self, text="Create a new account", variable=self.create,
                        command=self._name_button).grid(row=5, column=1, sticky="w", pady=(8, 0))
        ttk.Checkbutton(self, text="Encrypt the connection (TLS)", variable=self.tls).grid(
            row=6, column=1, sticky="w")
        self.button = ttk.Button(self, text="Log in", command=self.submit, default="active")
        self.button.grid(row=7, column=1, sticky="e", pady=(16, 0))
        self.hint = ttk.Label(self, text="", foreground=TONES["error"], wraplength=360)
        self.hint.grid(row=8, column=0, columnspan=2, sticky="w", pady=(12, 0))
        first_empty = next((e for e in self.entries.values() if not e.get()), None)
        (first_empty or self.entries["Password"]).focus_set()

    def _row(self, row: int, label: str, variable: tk.StringVar, secret: bool) -> ttk.Entry:
        ttk.Label(self, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=3)
        entry = ttk.Entry(self, textvariable=variable, width=32, show="•" if secret else "")
        entry.grid(row=row, column=1, sticky="we", pady=3)
        entry.bind("<Return>", lambda _: self.submit())
        entry.bind("<KP_Enter>", lambda _: self.submit())
        return entry

    def _name_button(self) -> None:
        self.button.configure(text="Create account" if self.create.get() else "Log in")

    def submit(self) -> None:
        port = self.port.get().strip()
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            self.hint.configure(text="The port is a number from 1 to 65535.")
        elif not self.host.get().strip() or not self.username.get().strip():
            self.hint.configure(text="Fill in the server and your username.")
        elif not self.password.get():
            self.hint.configure(text="Type your password.")
        else:
            self._submit_to(Login(self.host.get().strip(), int(port), self.username.get().strip(),
                                  self.password.get(), self.create.get(), self.tls.get()))

    def busy(self, text: str | None) -> None:
        """Lock the form while `text` says what is happening; None unlocks it."""
        state = ["disabled"] if text is not None else ["!disabled"]
        for widget in [*self.entries.values(), self.button]:
            widget.state(state)
        self.hint.configure(text=text or "", foreground=TONES["info"])
        if text is None:
            self.entries["Password"].focus_set()


class Conversation(Timed, ttk.Frame):
    """One scrolling list of lines: the room, or private messages with one person."""

    def __init__(self, parent: tk.Misc, peer: str | None) -> None:
        super().__init__(parent)
        self.peer = peer  # None for the room
        self.title = f"@{escape(peer)}" if peer else "# room"
        self.unread = 0
        self._settling = False
        self._following = True
        self.text = tk.Text(self, wrap="word", state="disabled", font="TkFixedFont",
                            relief="flat", padx=8, pady=6, width=72, height=22, takefocus=0)
        scrollbar = ttk.Scrollbar(self, command=self.text.yview)
        self.text.configure(yscrollcommand=scrollbar.set)
        scrollbar.pack(side="right", fill="y")
        self.text.pack(side="left", fill="both", expand=True)
        for tag, look in TAGS.items():
            self.text.tag_configure(tag, **look)

    def add(self, fragments: Fragments) -> None:
        if not fragments:
            return
        if not self._settling:
            # Asking where the view is, or moving it, lays the text out again: once
            # per line that is most of the cost of a flood. So it is done once per
            # batch, when the event loop is next idle.
            self._following = self.text.yview()[1] >= 1.0  # reading older lines?
            self._settling = True
            self.later(None, self._settle)
        self.text.configure(state="normal")
        for style, text in fragments:
            self.text.insert("end", text, (style.removeprefix("class:"),) if style else ())
        self.text.insert("end", "\n")
        self.text.configure(state="disabled")

    def _settle(self) -> None:
        self._settling = False
        lines = int(self.text.index("end-1c").split(".")[0]) - 1
        if lines > SCROLLBACK_LINES:
            self.text.configure(state="normal")
            self.text.delete("1.0", f"{lines - SCROLLBACK_LINES + 1}.0")
            self.text.configure(state="disabled")
        if self._following:
            self.text.see("end")

    def note(self, text: str, style: str = "class:notice") -> None:
        self.add([(style, text)])

    def contents(self) -> str:
        return self.text.get("1.0", "end-1c")
