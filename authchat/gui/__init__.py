"""The desktop client, on tkinter: a connect form, then the chat window.

Theory of operation. Tk may only be touched from the thread that runs its
main loop, and that thread must never wait on the network, or the window
freezes. So:

- every network call (connect, log in, each request) runs on one worker
  thread, in order;
- everything the network produces (server frames and connection notices from
  the Chat's reader thread, the worker's answers) comes back to the Tk thread
  as work on one queue, which the Tk thread drains with `after()`, a bounded
  batch per tick, so that a flood of messages still leaves it time to redraw
  and to read keys;
- dialogs never run a nested event loop: their answer is a callback, so the
  network keeps flowing while one is open (and a test can press its buttons).

UI only: connecting, the trust rules, reconnecting and the protocol are
client.py's; what a typed line means and how a request looks are
commands.py's; how an event reads is display.py's; who is online is
roster.py's.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import tkinter as tk
import tkinter.font as tkfont
from functools import partial
from tkinter import ttk
from typing import Any

from ..client import Chat, ClientOptions, Event, ServerError, TrustError
from ..sanitize import escape
from .chat_window import ChatView
from .widgets import WORK_PER_TICK, Answer, ConnectForm, Dialog, Inbox, Login, NoDisplay, \
    Worker, alert

__all__ = ["App", "NoDisplay", "run"]

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
        self.inbox = Inbox(root, work_per_tick)  # the benchmark varies the batch
        self.worker = Worker(self.inbox)
        self.chat: Chat | None = None
        self.view: ChatView | None = None
        self.form: ConnectForm | None = None
        self._connecting: Chat | None = None
        self._early: list[Event] = []  # what the reader said before the view was up
        self._closers: list[threading.Thread] = []
        self._fonts = _look(root)  # named fonts live only as long as their objects
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
        assert self.form is not None
        self.options = dataclasses.replace(self.options, host=login.host, port=login.port,
                                           tls=login.tls)
        chat = Chat(self.options, login.username, login.password, lambda _: None,
                    confirm=self._confirm_trust, reconnect=self.reconnect,
                    register_first=login.create, login_if_taken=False)
        chat.on_event = partial(self._from_network, chat)
        self._connecting, self._early = chat, []
        self.form.busy(f"Connecting to {escape(login.host)}:{login.port}…")
        self.worker.run(partial(self._start, chat), partial(self._logged_in, chat),
                        partial(self._not_logged_in, chat))

    def _start(self, chat: Chat) -> dict[str, Any]:
        """Log in (on the worker); a session the window closed meanwhile says goodbye."""
        welcome = chat.start()
        if self.closed.is_set():
            chat.close()
        return welcome

    def _confirm_trust(self, where: str, seen: str) -> bool:
        """Trust on first use, asked in a dialog; runs on the worker thread."""
        answer = Answer()
        self.inbox.put(partial(self._ask_trust, where, seen, answer))
        return answer.wait(self.closed)

    def _ask_trust(self, where: str, seen: str, answer: Answer) -> None:
        Dialog(self.root, "Trust this server?",
               f"The server {escape(where)} presents a certificate that no authority vouches "
               "for. Its SHA-256 fingerprint is below. Check it with the server's operator "
               "(the server logs it when it starts). If you trust it, it is remembered, and a "
               "different certificate from this server will be refused.",
               ["Cancel", "Trust"], lambda button, _: answer.give(button == "Trust"),
               detail=seen, tone="warning")

    def _logged_in(self, chat: Chat, _: object) -> None:
        if chat is not self._connecting:  # the window closed meanwhile
            self._close_in_background(chat)
            return
        self._connecting = None
        if self.form is not None:
            _discard(self.form)
            self.form = None
        self.chat = chat
        self.view = ChatView(self.root, chat, self.worker, log_out=self.log_out, quit=self.quit)
        self.view.pack(fill="both", expand=True)
        self.root.title(f"authchat: {escape(chat.username)} @ {escape(chat.options.host)}")
        for event in [chat.welcome, *self._early]:
            self.view.show(event)
        self._early = []

    def _not_logged_in(self, chat: Chat, error: Exception) -> None:
        if chat is not self._connecting or self.form is None:
            return
        self._connecting = None
        self.form.busy(None)
        title = "Could not log in" if isinstance(error, ServerError) else \
            "Server not trusted" if isinstance(error, TrustError) else "Could not connect"
        alert(self.root, title, escape(str(error)))

    # -- while logged in -----------------------------------------------------

    def _from_network(self, chat: Chat, event: Event) -> None:
        """Called on the Chat's reader thread: hand the event to the Tk thread."""
        self.inbox.put(partial(self._network_event, chat, event))

    def _network_event(self, chat: Chat, event: Event) -> None:
        if chat is self._connecting:
            self._early.append(event)
        elif chat is self.chat and self.view is not None:
            self.view.show(event)

    def log_out(self) -> None:
        """Back to the connect form, filled in as before but for the password."""
        chat, self.chat = self.chat, None
        if chat is None:
            return
        self._close_in_background(chat)
        if self.view is not None:
            _discard(self.view)
            self.view = None
        self._show_form(chat.username)

    def quit(self) -> None:
        self.closed.set()
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
        for closer in self._closers:
            closer.join(timeout)

    def _report(self, kind: type[BaseException], error: BaseException, tb: Any) -> None:
        # Our bug, not the user's: keep the window alive and say so once.
        log.error("internal error in the desktop client", exc_info=(kind, error, tb))
        if self.view is not None:
            self.view.status.configure(text="internal error: see the log")


def _discard(widget: tk.Misc) -> None:
    """Destroy a widget and collect its Python side here, on the Tk thread.

    Tk objects must die on the thread that made them: a Tcl variable or
    interpreter freed by a garbage collection that happens to run on a
    network thread aborts the process. So garbage that holds them is
    collected at once, where it is safe.
    """
    widget.destroy()
    gc.collect()


def _look(root: tk.Tk) -> list[tkfont.Font]:
    """A clean theme, and the fonts the text tags name (keep them: they are
    deleted with their Python objects)."""
    style = ttk.Style(root)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    root.configure(background=style.lookup("TFrame", "background"))
    base = tkfont.nametofont("TkDefaultFont").actual()
    fixed = tkfont.nametofont("TkFixedFont").actual()
    root.geometry("960x620")
    root.minsize(640, 420)
    return [tkfont.Font(root, name="AuthchatHeading", family=base["family"],
                        size=base["size"] + 4, weight="bold"),
            tkfont.Font(root, name="AuthchatBold", family=fixed["family"],
                        size=fixed["size"], weight="bold"),
            tkfont.Font(root, name="AuthchatItalic", family=fixed["family"],
                        size=fixed["size"], slant="italic")]


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
    del app, root
    gc.collect()  # the window's objects die here, on the Tk thread (see _discard)
    return 0
