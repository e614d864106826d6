"""The desktop client's parts: timers that die with their widget, dialogs, the
connect form, a status bar and a conversation's scrolling list.

None of them owns a Python tk.Variable, Font or Image: those call Tcl when
they are freed, and the garbage collector may free them on any thread
(see threads.py for why that must not happen).
"""

from __future__ import annotations

import dataclasses
import tkinter as tk
from collections.abc import Callable, Sequence
from functools import partial
from tkinter import ttk
from typing import Any, Literal

from ...errors import AuthchatError
from ...sanitize import escape
from ..display import Fragments
from ..link import ClientOptions

SCROLLBACK_LINES = 10_000  # per conversation; the oldest lines go first
LONGEST_MESSAGE_SHOWN = 2000  # characters of server text in a dialog

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

Answered = Callable[[str | None, list[str]], None]  # (button or None, field values)


class NoDisplay(AuthchatError):
    """There is no screen to open a window on."""


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


class Dialog(tk.Toplevel):
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
        if len(message) > LONGEST_MESSAGE_SHOWN:  # a server's words, kept to a screenful
            message = message[:LONGEST_MESSAGE_SHOWN] + "…"
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
        self.bind("<Map>", lambda _: self._hold_focus())

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
            pass  # another application holds a grab: it still works, only not modal

    def answer(self, button: str | None) -> None:
        values = [entry.get() for entry in self.entries]
        self.grab_release()
        self.destroy()
        if self._on_answer is not None:
            self._on_answer(button, values)


def alert(parent: tk.Misc, title: str, message: str, tone: str = "error") -> Dialog:
    return Dialog(parent, title, message, ["OK"], tone=tone)


class StatusBar(ttk.Frame):
    """A line of labels along the bottom that fits any width the window has.

    Labels are added most important first. When their texts do not all fit,
    the least important gives way first: it is cut after a whole character and
    ends in "…", or left out. So no text is cut off by the window's edge, in
    the middle of a letter, with nothing to say that it goes on.
    """

    PADDING_X = 8
    GAP = 16  # between labels

    def __init__(self, parent: tk.Misc) -> None:
        super().__init__(parent, relief="sunken", padding=(self.PADDING_X, 2))
        self._parts: list[tuple[ttk.Label, str]] = []  # (label, its whole text)
        self._frame_px = 0  # what a label adds to its text's width: its border
        self.bind("<Configure>", lambda _: self._fit())

    def add(self, side: Literal["left", "right"], **options: Any) -> ttk.Label:
        label = ttk.Label(self, font="TkDefaultFont", **options)
        self._frame_px = label.winfo_reqwidth()  # with no text yet
        label.pack(side=side, padx=(0, self.GAP) if side == "left" else (self.GAP, 0))
        self._parts.append((label, ""))
        return label

    def say(self, label: ttk.Label, text: str, **options: Any) -> None:
        """Show `text` in `label` (or as much as fits), with other label options."""
        self._parts = [(part, text if part is label else whole) for part, whole in self._parts]
        label.configure(**options)
        self._fit()

    def _fit(self) -> None:
        width = self.winfo_width()
        room = width - 2 * self.PADDING_X
        for label, whole in self._parts:
            # Width 1 is not laid out yet: a <Configure> follows, with the width.
            shown = whole if width <= 1 else self._cut(label, whole, room - self.GAP)
            label.configure(text=shown)
            if shown:
                room -= self._width(label, shown) + self.GAP

    def _cut(self, label: ttk.Label, text: str, room: int) -> str:
        """`text` if it fits in `room` pixels, else its longest start that fits with
        "…" after it, else nothing."""
        if self._width(label, text) <= room:
            return text
        fits, too_long = 0, len(text)
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if self._width(label, text[:middle] + "…") <= room:
                fits = middle
            else:
                too_long = middle
        cut = text[:fits].rstrip()
        return cut + "…" if cut and self._width(label, cut + "…") <= room else ""

    def _width(self, label: ttk.Label, text: str) -> int:
        return int(self.tk.call("font", "measure", label.cget("font"), text)) + self._frame_px


@dataclasses.dataclass(frozen=True)
class Login:
    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    create: bool
    tls: bool


class ConnectForm(ttk.Frame):
    """Server, account and password; hands a Login to `submit`."""

    def __init__(self, parent: tk.Misc, options: ClientOptions, username: str,
                 submit: Callable[[Login], None]) -> None:
        super().__init__(parent, padding=32)
        self._submit_to = submit
        self._busy = False
        ttk.Label(self, text="Connect to an authchat server", font="AuthchatHeading").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 16))
        self.entries = {label: self._row(row, label, value, secret)
                        for row, (label, value, secret) in enumerate([
                            ("Server", options.host, False), ("Port", str(options.port), False),
                            ("Username", username, False), ("Password", "", True)], start=1)}
        self.create = self._box(5, "Create a new account", False)
        self.create.configure(command=self._name_button)
        self.tls = self._box(6, "Encrypt the connection (TLS)", options.tls)
        self.button = ttk.Button(self, text="Log in", command=self.submit, default="active")
        self.button.grid(row=7, column=1, sticky="e", pady=(16, 0))
        self.hint = ttk.Label(self, text="", foreground=TONES["error"], wraplength=360)
        self.hint.grid(row=8, column=0, columnspan=2, sticky="w", pady=(12, 0))
        first_empty = next((e for e in self.entries.values() if not e.get()), None)
        (first_empty or self.entries["Password"]).focus_set()

    def _row(self, row: int, label: str, value: str, secret: bool) -> ttk.Entry:
        ttk.Label(self, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=3)
        entry = ttk.Entry(self, width=32, show="•" if secret else "")
        entry.insert(0, value)
        entry.grid(row=row, column=1, sticky="we", pady=3)
        entry.bind("<Return>", lambda _: self.submit())
        entry.bind("<KP_Enter>", lambda _: self.submit())
        return entry

    def _box(self, row: int, text: str, on: bool) -> ttk.Checkbutton:
        box = ttk.Checkbutton(self, text=text, onvalue=1, offvalue=0)
        # A box draws what its variable holds, and every configure() looks again:
        # left unset, the variable made the box half-ticked ("alternate"). So its
        # variable (a Tcl one named after the box; a tk.Variable is a Python
        # object of Tcl's, see above) is set from the start.
        self.setvar(self._variable(box), "1" if on else "0")
        box.grid(row=row, column=1, sticky="w", pady=(8, 0) if row == 5 else 0)
        return box

    @staticmethod
    def _variable(box: ttk.Checkbutton) -> str:
        return str(box.cget("variable"))

    def value(self, label: str) -> str:
        return str(self.entries[label].get())

    @staticmethod
    def ticked(box: ttk.Checkbutton) -> bool:
        return bool(box.instate(["selected"]))

    def _name_button(self) -> None:
        self.button.configure(text="Create account" if self.ticked(self.create) else "Log in")

    def submit(self) -> None:
        if self._busy:  # Enter pressed again while logging in
            return
        host, port = self.value("Server").strip(), self.value("Port").strip()
        username, password = self.value("Username").strip(), self.value("Password")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            self.hint.configure(text="The port is a number from 1 to 65535.")
        elif not host or not username:
            self.hint.configure(text="Fill in the server and your username.")
        elif not password:
            self.hint.configure(text="Type your password.")
        else:
            self._submit_to(Login(host, int(port), username, password,
                                  self.ticked(self.create), self.ticked(self.tls)))

    def busy(self, text: str | None) -> None:
        """Lock the form while `text` says what is happening; None unlocks it."""
        self._busy = text is not None
        state = ["disabled"] if self._busy else ["!disabled"]
        for widget in [*self.entries.values(), self.button, self.create, self.tls]:
            widget.state(state)
        self.hint.configure(text=text or "", foreground=TONES["info"])
        if not self._busy:
            self.entries["Password"].focus_set()

    def forget_password(self) -> None:
        self.entries["Password"].delete(0, "end")

    def destroy(self) -> None:
        names = [self._variable(box) for box in (self.create, self.tls)]
        super().destroy()
        for name in names:  # global variables outlive their box
            self.tk.call("unset", "-nocomplain", name)


class Conversation(Timed, ttk.Frame):
    """One scrolling list of lines: the room, or private messages with one person."""

    def __init__(self, parent: tk.Misc, peer: str | None) -> None:
        super().__init__(parent)
        self.peer = peer  # None for the room
        self.title = f"@{escape(peer)}" if peer else "# room"
        self.unread = 0
        self._settling = False
        self._following = True
        # Called when the reader scrolls to the top of a list longer than the
        # window: the place to fetch older messages.
        self.on_top: Callable[[], None] | None = None
        self.text = tk.Text(self, wrap="word", state="disabled", font="TkFixedFont",
                            relief="flat", padx=8, pady=6, width=72, height=22, takefocus=0)
        scrollbar = ttk.Scrollbar(self, command=self.text.yview)
        self.text.configure(yscrollcommand=scrollbar.set)
        # Only the reader's own scrolling asks for older messages, not a change
        # of layout (a window being drawn can show the top of a short list).
        for sequence in ("<Button-4>", "<MouseWheel>"):
            self.text.bind(sequence, self._reader_scrolled, add="+")
        for sequence in ("<ButtonRelease-1>", "<B1-Motion>"):
            scrollbar.bind(sequence, self._reader_scrolled, add="+")
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

    def _reader_scrolled(self, _: object) -> None:
        self.later(None, self._check_top)  # once the scroll itself is done

    def _check_top(self) -> None:
        first, last = self.text.yview()
        if first <= 0.0 and last < 1.0 and self.on_top is not None:
            self.on_top()

    def prepend(self, fragments: Fragments) -> None:
        """Older lines, put above the rest; the line being read stays in view."""
        if not fragments:
            return
        anchor = self.text.index("@0,0")
        before = int(self.text.index("end-1c").split(".")[0])
        self.text.configure(state="normal")
        for style, text in reversed([*fragments, ("", "\n")]):
            self.text.insert("1.0", text, (style.removeprefix("class:"),) if style else ())
        self.text.configure(state="disabled")
        added = int(self.text.index("end-1c").split(".")[0]) - before
        self.text.yview(f"{int(anchor.split('.')[0]) + added}.0")

    def note(self, text: str, style: str = "class:notice") -> None:
        self.add([(style, text)])

    def contents(self) -> str:
        return self.text.get("1.0", "end-1c")
