"""The chat window: conversations in tabs, who is online, the input box, the status bar.

The room is the first tab; a private conversation gets a tab of its own when
someone writes to us or we double-click their name. A tab that is not in
front counts its unread messages in its title. Enter sends, Shift-Enter starts
a new line, and slash commands work as in the terminal client. A line the
server refuses is put back in the input box, so nothing typed is lost. While
the link is down (reconnecting, or the session ended) the list of who is
online is empty, since the window no longer hears who comes and goes.
"""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from functools import partial
from tkinter import ttk
from typing import TypeVar

from ...protocol import (
    DirectMessage,
    ErrorReply,
    HistoryPage,
    Join,
    Leave,
    Message,
    Ok,
    Request,
    ServerEvent,
    Welcome,
    Who,
    WhoList,
)
from ...sanitize import escape
from ..commands import HELP, MODERATION, Local, Mistake, Send, parse
from ..display import CONNECTION_STATE, render
from ..link import describe_error
from ..roster import Roster, dm_peer
from ..session import Chat, Event, Notice
from .threads import Jobs
from .widgets import TONES, Conversation, Dialog, StatusBar, Timed, alert

T = TypeVar("T")
R = TypeVar("R")
FINGERPRINT_PAIRS_SHOWN = 8  # of 32, in the status bar; the security dialog has all


class ChatView(Timed, ttk.Frame):
    """Everything shown while logged in, for one Chat."""

    def __init__(self, parent: tk.Misc, chat: Chat, jobs: Jobs, *,
                 log_out: Callable[[], None], quit: Callable[[], None]) -> None:
        super().__init__(parent)
        self.chat, self.jobs = chat, jobs
        self._log_out, self._quit = log_out, quit
        self.me = chat.username
        self.role = chat.welcome.role
        self.roster = Roster()
        self.connected = True  # logged in; while not, no one is listed as online
        self.listed: list[str] = []  # the names in the user list, in its order
        self._listing = False
        self.conversations: dict[str, Conversation] = {}
        self._loading: set[Conversation] = set()    # older messages asked for
        self._exhausted: set[Conversation] = set()  # the first message is shown
        self._build()
        self.open_conversation(None)
        self.entry.focus_set()

    # -- layout ----------------------------------------------------------------

    def _build(self) -> None:
        # Packed first, the status bar and the input box keep their height in
        # a short window: the conversations give way.
        self._build_status()
        self._build_input()
        panes = ttk.Panedwindow(self, orient="horizontal")
        self.tabs = ttk.Notebook(panes)
        self.tabs.bind("<<NotebookTabChanged>>", self._tab_changed)
        side = ttk.Frame(panes, padding=(8, 0, 0, 0))
        self.online = ttk.Label(side, text="Online")
        self.online.pack(anchor="w", pady=(2, 4))
        self.users = tk.Listbox(side, activestyle="none", exportselection=False, width=22,
                                relief="flat", highlightthickness=0)
        self.users.pack(fill="both", expand=True)
        self.users.bind("<Double-Button-1>", self._double_click)
        self.users.bind("<Button-3>", self._context_menu)
        self.user_menu = tk.Menu(self.users, tearoff=False)
        panes.add(self.tabs, weight=4)
        panes.add(side, weight=1)
        panes.pack(fill="both", expand=True, padx=8, pady=(8, 4))

    def _build_input(self) -> None:
        row = ttk.Frame(self)
        row.pack(fill="x", side="bottom", padx=8, pady=4)
        self.send_button = ttk.Button(row, text="Send", command=self.send_typed)
        self.send_button.pack(side="right", padx=(8, 0), anchor="n")  # first: the box gives way
        self.entry = tk.Text(row, height=3, wrap="word", undo=True, font="TkFixedFont",
                             relief="solid", borderwidth=1, padx=6, pady=4)
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", self._enter)
        self.entry.bind("<KP_Enter>", self._enter)
        self.entry.bind("<Shift-Return>", self._newline)

    def _build_status(self) -> None:
        # Most important first: how safe the link is, then its state, then who
        # and where (which the title says too), which gives way first.
        self.bar = StatusBar(self)
        self.bar.pack(fill="x", side="bottom")
        self.security = self.bar.add("right", cursor="hand2")
        self.status = self.bar.add("left")
        self.where = self.bar.add("right", cursor="hand2")
        for label in (self.security, self.where):
            label.bind("<Button-1>", lambda _: self.show_security())
        self.show_status("connected", "info")
        self.fingerprint = ""
        self._show_security_state()

    def show_status(self, text: str, tone: str) -> None:
        self.bar.say(self.status, text, foreground=TONES[tone])

    def _show_security_state(self) -> None:
        """Who, where, and how safe, from the link in use now."""
        options = self.chat.options
        self.fingerprint = self.chat.fingerprint or self.fingerprint or "?"
        if not options.tls:
            security, tone = "NOT ENCRYPTED", "error"
        elif options.insecure and not options.fingerprint and not options.cafile:
            security, tone = "TLS, NOT VERIFIED", "error"
        else:
            security, tone = f"TLS, SHA-256 {short_fingerprint(self.fingerprint)}", "info"
        self.bar.say(self.security, security, foreground=TONES[tone])
        self.bar.say(self.where, f"{escape(self.me)} @ {escape(options.host)}:{options.port}")

    def show_security(self) -> Dialog:
        """The whole fingerprint, copyable, to check against the operator's."""
        options = self.chat.options
        where = f"{escape(options.host)}:{options.port}"
        if not options.tls:
            return alert(self, "Connection security", f"The connection to {where} is not "
                         "encrypted: anyone on the network path can read and change it.")
        return Dialog(self, "Connection security", f"The connection to {where} is encrypted "
                      "with TLS. The server's certificate has this SHA-256 fingerprint:",
                      ["OK"], detail=self.fingerprint)

    # -- conversations ---------------------------------------------------------

    def open_conversation(self, peer: str | None) -> Conversation:
        """The conversation with `peer` (None: the room), made if need be."""
        key = peer.casefold() if peer else ""
        conversation = self.conversations.get(key)
        if conversation is None:
            conversation = Conversation(self.tabs, peer)
            conversation.on_top = partial(self.load_older, conversation)
            self.conversations[key] = conversation
            self.tabs.add(conversation, text=conversation.title)
        return conversation

    def load_older(self, conversation: Conversation) -> None:
        """Fetch the page before the oldest message shown, once at a time, until
        there is no more."""
        if conversation in self._loading or conversation in self._exhausted:
            return
        self._loading.add(conversation)
        self.ask(partial(self.chat.older, conversation.peer),
                 partial(self._older_came, conversation),
                 partial(self._older_failed, conversation))

    def _older_came(self, conversation: Conversation, reply: ServerEvent) -> None:
        self._loading.discard(conversation)
        conversation = self._still_open(conversation)
        if not isinstance(reply, HistoryPage):
            conversation.add(render(reply, self.me))
            return
        if not reply.more:
            self._exhausted.add(conversation)
        conversation.prepend(render(reply, self.me))

    def _older_failed(self, conversation: Conversation, error: Exception) -> None:
        self._loading.discard(conversation)
        self._still_open(conversation).note(f"!!! {escape(str(error))}", "class:error")

    def start_dm(self, peer: str) -> None:
        self.tabs.select(self.open_conversation(peer))  # type: ignore[no-untyped-call]
        self.entry.focus_set()

    def current(self) -> Conversation:
        selected = str(self.tabs.select())  # type: ignore[no-untyped-call]
        return next((c for c in self.conversations.values() if str(c) == selected),
                    self.conversations[""])

    def close_current(self) -> None:
        conversation = self.current()
        if conversation.peer is not None:
            del self.conversations[conversation.peer.casefold()]
            self.tabs.forget(conversation)
            conversation.destroy()

    def _arrived(self, conversation: Conversation, fragments: list[tuple[str, str]]) -> None:
        conversation.add(fragments)
        if conversation is not self.current():
            conversation.unread += 1
            self._title(conversation, f"{conversation.title} ({conversation.unread})")

    def _tab_changed(self, _: object) -> None:
        conversation = self.current()
        conversation.unread = 0
        self._title(conversation, conversation.title)

    def _title(self, conversation: Conversation, text: str) -> None:
        self.tabs.tab(conversation, text=text)  # type: ignore[no-untyped-call]

    # -- what the server says --------------------------------------------------

    def show(self, event: Event) -> None:
        """Show one server event or connection notice."""
        if isinstance(event, Notice):
            self._notice(event)
            return
        if self.roster.apply(event):
            self._relist()
        if isinstance(event, Welcome):
            self._welcomed(event)
        fragments = render(event, self.me)
        room = self.conversations[""]
        if isinstance(event, DirectMessage):
            self._arrived(self.open_conversation(dm_peer(event, self.me)), fragments)
        elif isinstance(event, Message):
            self._arrived(room, fragments)
        else:
            room.add(fragments)
            peer = self.conversations.get(event.username.casefold()) \
                if isinstance(event, (Join, Leave)) else None
            if peer is not None:
                peer.add(fragments)
            elif isinstance(event, ErrorReply) and self.current() is not room:
                self.current().add(fragments)

    def _welcomed(self, welcome: Welcome) -> None:
        self.me = welcome.username
        self.role = welcome.role
        self.connected = True
        self._relist()  # who the welcome names
        self.show_status("connected", "info")
        self._show_security_state()  # after a reconnect, the new link's
        self._ask_roles()

    def _notice(self, notice: Notice) -> None:
        if notice.kind not in CONNECTION_STATE:  # news in the room ("missed"), not a state
            self.conversations[""].add(render(notice, self.me))
            return
        state = notice.text if notice.kind == "reconnecting" else CONNECTION_STATE[notice.kind]
        if notice.kind == "ended":
            state = f"disconnected: {notice.text}"
            self.entry.configure(state="disabled")
            self.send_button.state(["disabled"])
            Dialog(self, "Disconnected", escape(notice.text), ["Log in again", "Close"],
                   self._after_end, tone="error")
        self.show_status(escape(state), "info" if notice.kind == "back" else "error")
        if notice.kind != "back":  # the welcome that follows "back" says who is online
            self._not_connected()
        self.conversations[""].add(render(notice, self.me))

    def _after_end(self, button: str | None, _: list[str]) -> None:
        if button == "Log in again":
            self._log_out()

    # -- the user list ---------------------------------------------------------

    def _not_connected(self) -> None:
        """Lost, reconnecting or ended: whoever was online may have left since."""
        self.connected = False
        self.roster = Roster()
        self._list_users()

    def _relist(self) -> None:
        if not self._listing:
            self._listing = True  # once a batch, however many joined: 2,000 at a restart
            self.later(None, self._list_users)

    def _list_users(self) -> None:
        self._listing = False
        self.listed = self.roster.names()
        self.users.delete(0, "end")
        for name in self.listed:
            marks = [m for m, on in (("admin", self.roster.role(name) == "admin"),
                                     ("you", name.casefold() == self.me.casefold())) if on]
            self.users.insert("end", escape(name) + (f" ({', '.join(marks)})" if marks else ""))
        self.online.configure(text=f"Online: {len(self.listed)}" if self.connected
                              else "Online: — (not connected)")

    def _ask_roles(self) -> None:
        """The welcome names who is online; one `who` says who of them are admins
        (joins say it themselves). It costs one request of the rate limit."""
        self.request(Who(None), self._roster_reply, lambda _: None)

    def _roster_reply(self, reply: ServerEvent) -> None:
        # A reply read just before the link dropped can be handed over just
        # after the notice that it did: it no longer says who is online.
        if self.connected and self.roster.apply(reply):
            self._list_users()

    def _name_at(self, y: int) -> str | None:
        index: int = self.users.nearest(y)  # type: ignore[no-untyped-call]
        box = self.users.bbox(index)
        if not 0 <= index < len(self.listed) or not box or not box[1] <= y < box[1] + box[3]:
            return None
        return self.listed[index]

    def _double_click(self, event: tk.Event[tk.Listbox]) -> None:
        name = self._name_at(event.y)
        if name is not None:
            self.start_dm(name)

    def _context_menu(self, event: tk.Event[tk.Listbox]) -> None:
        name = self._name_at(event.y)
        if name is None:
            return
        self.users.selection_clear(0, "end")
        self.users.selection_set(self.listed.index(name))
        menu = self.user_menu
        menu.delete(0, "end")
        menu.add_command(label="Message privately", command=partial(self.start_dm, name))
        if self.role == "admin" and name.casefold() != self.me.casefold():
            menu.add_separator()
            menu.add_command(label="Kick…", command=partial(self.confirm_moderation, "kick", name))
            menu.add_command(label="Ban…", command=partial(self.confirm_moderation, "ban", name))
        menu.tk_popup(event.x_root, event.y_root)

    def confirm_moderation(self, action: str, name: str) -> Dialog:
        shown = escape(name)
        what = {"kick": f"End {shown}'s sessions. They can log in again.",
                "ban": f"End {shown}'s sessions and disable the account, so that it cannot "
                       "log in until an admin enables it again."}[action]
        return Dialog(self, f"{action.title()} {shown}", what, [action.title(), "Cancel"],
                      partial(self._moderate, action, name), tone="warning",
                      fields=[("Reason (optional)", False)])

    def _moderate(self, action: str, name: str, button: str | None, values: list[str]) -> None:
        if button == action.title():
            room = self.conversations[""]
            self.request(MODERATION[action](None, name, values[0].strip()),
                         partial(self._answered, room, ""), partial(self._failed, room, ""))

    # -- what the user types ---------------------------------------------------

    def _enter(self, _: object) -> str:
        self.send_typed()
        return "break"  # no newline: Enter sends

    def _newline(self, _: object) -> str:
        self.entry.insert("insert", "\n")
        return "break"

    def send_typed(self) -> None:
        if self.chat.ended.is_set():  # the server ended the session: nothing goes out
            return
        typed = self.entry.get("1.0", "end-1c")
        conversation = self.current()
        command = parse(typed, talking_to=conversation.peer)
        if command is None:
            return
        self.entry.delete("1.0", "end")
        if isinstance(command, Mistake):
            conversation.note(command.hint, "class:error")
            self._put_back(conversation, typed)
        elif isinstance(command, Local):
            self._local(command.name, conversation)
        elif isinstance(command, Send):
            self.request(command.request, partial(self._answered, conversation, typed),
                         partial(self._failed, conversation, typed))

    def _local(self, name: str, conversation: Conversation) -> None:
        if name == "quit":
            self._quit()
        elif name == "help":
            conversation.note(HELP)
        elif name == "history":
            self._exhausted.discard(conversation)  # asked for: ask the server again
            self.load_older(conversation)
        else:
            self.change_password()

    def request(self, request: Request, done: Callable[[ServerEvent], None],
                failed: Callable[[Exception], None]) -> None:
        self.ask(partial(self.chat.request, request), done, failed)

    def ask(self, call: Callable[[], T], done: Callable[[T], None],
            failed: Callable[[Exception], None]) -> None:
        """Run `call` on the worker; its answer comes back unless this view is gone
        by then (logged out), when there is nowhere left to show it."""
        def if_shown(then: Callable[[R], None], result: R) -> None:
            if self.winfo_exists():
                then(result)
        self.jobs.run(call, partial(if_shown, done), partial(if_shown, failed))

    def _answered(self, conversation: Conversation, typed: str, reply: ServerEvent) -> None:
        conversation = self._still_open(conversation)
        if not isinstance(reply, Ok):
            conversation.add(render(reply, self.me))
        if isinstance(reply, ErrorReply):
            self._put_back(conversation, typed)
        elif isinstance(reply, WhoList):
            self._roster_reply(reply)

    def _failed(self, conversation: Conversation, typed: str, error: Exception) -> None:
        conversation = self._still_open(conversation)
        conversation.note(f"!!! not sent: {escape(str(error))}", "class:error")
        self._put_back(conversation, typed)

    def _still_open(self, conversation: Conversation) -> Conversation:
        """The conversation, or the room if its tab was closed meanwhile."""
        return conversation if conversation.winfo_exists() else self.conversations[""]

    def _put_back(self, conversation: Conversation, typed: str) -> None:
        """A line that did not go out goes back in the input box, or, if something
        new is being typed there, is shown, so that it can be copied."""
        if not typed:
            return
        if self.entry.get("1.0", "end-1c"):
            conversation.note(f"not sent: {escape(typed)}", "class:error")
        else:
            self.entry.insert("1.0", typed)

    # -- password --------------------------------------------------------------

    def change_password(self) -> Dialog:
        return Dialog(self, "Change password", "Your other sessions will be logged out.",
                      ["Change", "Cancel"], self._password_typed,
                      fields=[("Current password", True), ("New password", True),
                              ("New password again", True)])

    def _password_typed(self, button: str | None, values: list[str]) -> None:
        if button != "Change":
            return
        old, new, again = values
        if new != again:
            alert(self, "Password not changed", "The new passwords do not match.")
            return
        self.ask(partial(self.chat.change_password, old, new), self._password_changed,
                 self._password_not_changed)

    def _password_not_changed(self, error: Exception) -> None:
        alert(self, "Password not changed", escape(str(error)))

    def _password_changed(self, reply: ServerEvent) -> None:
        if isinstance(reply, Ok):
            alert(self, "Password changed", "Your password is changed.", tone="info")
        else:
            why = describe_error(reply) if isinstance(reply, ErrorReply) else "unknown error"
            alert(self, "Password not changed", why)


def short_fingerprint(fingerprint: str) -> str:
    """The first hex pairs of a colon-separated fingerprint, and "…" if it goes on."""
    pairs = fingerprint.split(":")
    shown = ":".join(pairs[:FINGERPRINT_PAIRS_SHOWN])
    return shown + "…" if len(pairs) > FINGERPRINT_PAIRS_SHOWN else shown
