"""The desktop client's one window: the connect form, then the chat view, and
the worker thread and mailbox between them and the network (the package's
docstring says why it is built this way)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import logging
import threading
import tkinter as tk
from collections.abc import Iterator
from functools import partial
from tkinter import ttk
from typing import Any

from ...errors import ErrorCode, InvalidPassword
from ...protocol import Welcome
from ...sanitize import escape
from ..link import ClientOptions, ServerError, TrustError
from ..session import Chat, Event
from .chat_window import ChatView
from .threads import WORK_PER_TICK, Answer, Inbox, Jobs, Mailbox, Worker
from .widgets import ConnectForm, Dialog, Login, NoDisplay, alert

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0  # for goodbyes to go out when the window closes


class App:
    """The whole desktop client in one window: the connect form, then the chat view."""

    def __init__(self, root: tk.Tk, options: ClientOptions, username: str = "", *,
                 reconnect: bool = True, work_per_tick: int = WORK_PER_TICK) -> None:
        self.root = root
        self.options = options
        self.reconnect = reconnect
        self.closed = threading.Event()
        self.mailbox = Mailbox()
        self.worker = Worker(self.mailbox)
        self.inbox = Inbox(root, self.mailbox, work_per_tick)  # the benchmark varies it
        self.inbox.handlers.update(event=self._network_event, trust=self._ask_trust)
        self.jobs = Jobs(self.inbox, self.worker)
        self.chat: Chat | None = None
        self.view: ChatView | None = None
        self.form: ConnectForm | None = None
        self._numbers = itertools.count(1)
        self._chat_number = 0
        self._connecting: tuple[int, Chat] | None = None
        self._early: list[Event] = []  # what the reader said before the view was up
        self._closers: list[threading.Thread] = []
        _look(root)
        root.title("authchat")
        root.protocol("WM_DELETE_WINDOW", self.quit)
        root.report_callback_exception = self._report
        self._menu()
        self._show_form(username)

    def _menu(self) -> None:
        bar = tk.Menu(self.root)
        menu = tk.Menu(bar, tearoff=False)
        menu.add_command(label="Change password…", command=lambda: self._in_view(
            ChatView.change_password))
        menu.add_command(label="Close conversation", accelerator="Ctrl+W",
                         command=lambda: self._in_view(ChatView.close_current))
        menu.add_command(label="Log out", command=self.log_out)
        menu.add_separator()
        menu.add_command(label="Quit", accelerator="Ctrl+Q", command=self.quit)
        bar.add_cascade(label="Chat", menu=menu)
        self.root.configure(menu=bar)
        self.root.bind("<Control-q>", lambda _: self.quit())
        self.root.bind("<Control-w>", lambda _: self._in_view(ChatView.close_current))

    def _in_view(self, action: Any) -> None:
        if self.view is not None:
            action(self.view)

    def _show_form(self, username: str) -> None:
        self.root.title("authchat")
        self.form = ConnectForm(self.root, self.options, username, self.connect)
        self.form.pack(expand=True)

    # -- logging in ----------------------------------------------------------

    def connect(self, login: Login) -> None:
        """Start logging in on the worker; the form waits, the window does not."""
        if self.form is None or self._connecting is not None:
            return
        self.options = _options_for(self.options, login)
        number = next(self._numbers)
        # Only the mailbox, an Event and plain values go to other threads.
        chat = Chat(self.options, login.username, login.password,
                    partial(self.mailbox.post, "event", number),
                    confirm=partial(_confirm_trust, self.mailbox, self.closed),
                    reconnect=self.reconnect, register_first=login.create, login_if_taken=False)
        self._connecting, self._early = (number, chat), []
        self.form.busy(f"Connecting to {escape(login.host)}:{login.port}…")
        self.jobs.run(chat.start, partial(self._logged_in, number, chat),
                      partial(self._not_logged_in, number))

    def _ask_trust(self, where: str, seen: str, answer: Answer) -> None:
        Dialog(self.root, "Trust this server?",
               f"The server {escape(where)} presents a self-signed certificate, which no "
               "authority vouches for. Its SHA-256 fingerprint is below. Check it with the "
               "server's operator (the server logs it when it starts). If you trust it, it is "
               "remembered, and a different certificate from this server will be refused.",
               ["Cancel", "Trust"], lambda button, _: answer.give(button == "Trust"),
               detail=seen, tone="warning")

    def _logged_in(self, number: int, chat: Chat, welcome: Welcome) -> None:
        self._connecting = None
        if self.form is not None:
            self.form.destroy()
            self.form = None
        self.chat, self._chat_number = chat, number
        self.view = ChatView(self.root, chat, self.jobs, log_out=self.log_out, quit=self.quit)
        self.view.pack(fill="both", expand=True)
        title = f"authchat: {escape(chat.username)} @ {escape(chat.options.host)}"
        # Until the input box is mapped it cannot hold the focus, and a key
        # typed meanwhile is lost: the window says it is logged in only once
        # the box is shown and focused, so what is typed after the new title
        # appears reaches it.
        self.view.entry.bind("<Map>", partial(self._chat_shown, self.view, title))
        for event in [welcome, *self._early]:
            self.view.show(event)
        self._early = []

    def _chat_shown(self, view: ChatView, title: str, _event: object) -> None:
        view.entry.unbind("<Map>")
        view.entry.focus_set()
        self.root.title(title)

    def _not_logged_in(self, number: int, error: Exception) -> None:
        self._connecting = None
        if self.form is None:
            return
        self.form.busy(None)
        if isinstance(error, ServerError) and error.reply.code == ErrorCode.BAD_CREDENTIALS:
            self.form.forget_password()
        alert(self.root, _failure_title(error), escape(str(error)))

    # -- while logged in -----------------------------------------------------

    def _network_event(self, number: int, event: Event) -> None:
        if self._connecting is not None and number == self._connecting[0]:
            self._early.append(event)
        elif number == self._chat_number and self.view is not None:
            self.view.show(event)

    def log_out(self) -> None:
        """Back to the connect form, filled in as before but for the password."""
        chat, self.chat = self.chat, None
        if chat is None:
            return
        self._close_in_background(chat)
        self._chat_number = 0
        if self.view is not None:
            self.view.destroy()
            self.view = None
        self._show_form(chat.username)

    def quit(self) -> None:
        self.closed.set()  # a trust question still open is answered "no"
        if self._connecting is not None:
            # Its login is on the worker; the worker is serial, so this goodbye
            # comes after it, whichever way the login went.
            self.jobs.run(self._connecting[1].close, _ignore, _ignore)
            self._connecting = None
        if self.chat is not None:
            self._close_in_background(self.chat)
            self.chat = None
        self.worker.stop()
        self.inbox.stop()
        self.root.destroy()

    def _close_in_background(self, chat: Chat) -> None:
        closer = threading.Thread(target=chat.close, name="gui-close", daemon=True)
        closer.start()
        self._closers.append(closer)

    def wait_closed(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Let the goodbyes of closed sessions go out (after the window is gone)."""
        for thread in [*self._closers, self.worker.thread]:
            thread.join(timeout)

    def _report(self, kind: type[BaseException], error: BaseException, tb: Any) -> None:
        # Our bug, not the user's: keep the window alive and say so once.
        log.error("internal error in the desktop client", exc_info=(kind, error, tb))
        if self.view is not None:
            self.view.show_status("internal error: see the log", "error")


def _failure_title(error: Exception) -> str:
    if isinstance(error, InvalidPassword):  # checked here, before it was sent
        return "Could not create the account"
    if isinstance(error, ServerError):
        return "Could not log in"
    return "Server not trusted" if isinstance(error, TrustError) else "Could not connect"


def _options_for(options: ClientOptions, login: Login) -> ClientOptions:
    """The options for what the form says. A fingerprint given on the command
    line pins the server it was given for, not one typed in instead."""
    moved = (login.host, login.port) != (options.host, options.port)
    return dataclasses.replace(options, host=login.host, port=login.port, tls=login.tls,
                               fingerprint=None if moved else options.fingerprint)


def _confirm_trust(mailbox: Mailbox, abandoned: threading.Event, where: str,
                   seen: str) -> bool:
    """Trust on first use, asked in a dialog; runs on the worker thread."""
    answer = Answer()
    mailbox.post("trust", where, seen, answer)
    return answer.wait(abandoned)


def _ignore(_: object) -> None:
    pass


@contextlib.contextmanager
def collected_here() -> Iterator[None]:
    """Let go of a window's objects inside this block, on the Tk thread.

    The window's objects refer to each other, so they die in a garbage
    collection, and the thread that runs it is the one that happens to
    allocate at the time; if it is not the Tk thread, Tcl aborts the process.
    So no collection runs while the last references go, and then one runs here.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if was_enabled:
            gc.enable()


def _look(root: tk.Tk) -> None:
    """A clean theme, and the fonts the text tags name."""
    style = ttk.Style(root)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    root.configure(background=style.lookup("TFrame", "background"))
    base = _font(root, "TkDefaultFont")
    fixed = _font(root, "TkFixedFont")
    root.geometry("960x620")
    root.minsize(640, 420)
    # Made in Tcl, not as tkinter.font.Font objects, which delete their font when
    # they are freed (see collected_here).
    for name, family, size, look in [
            ("AuthchatHeading", base["family"], base["size"] + 4, ["-weight", "bold"]),
            ("AuthchatBold", fixed["family"], fixed["size"], ["-weight", "bold"]),
            ("AuthchatItalic", fixed["family"], fixed["size"], ["-slant", "italic"])]:
        root.tk.call("font", "create", name, "-family", family, "-size", size, *look)


def _font(root: tk.Tk, name: str) -> dict[str, Any]:
    described = root.tk.splitlist(root.tk.call("font", "actual", name))
    pairs = zip(described[::2], described[1::2], strict=True)  # -option value …
    return {str(key).lstrip("-"): value for key, value in pairs}


def run(options: ClientOptions, username: str = "") -> int:
    """Open the window and run until it is closed; returns the exit status.

    Raises:
        NoDisplay: there is no screen to open it on.
    """
    try:
        root = tk.Tk(className="authchat")
    except tk.TclError as e:
        raise NoDisplay(f"cannot open a window: {e}; the terminal client is "
                        "`authchat connect`") from None
    app = App(root, options, username)
    root.mainloop()
    app.wait_closed()
    with collected_here():
        del app, root
    return 0
