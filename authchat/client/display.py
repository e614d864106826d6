"""How chat events look as lines of text: shared by every front end.

`render(event, me)` turns a server event or a client Notice into styled
fragments, `(style class, text)` pairs as prompt_toolkit prints them (the
desktop client maps each class to a text tag); `plain(fragments)` is the same
line without styles, for scripts. Everything
that came from another user goes through `sanitize`, so no message can move
the cursor, retitle the terminal or reverse the text around it.
"""

from __future__ import annotations

from datetime import datetime

from ..protocol import (
    DirectMessage,
    ErrorReply,
    HistoryPage,
    Join,
    Leave,
    Message,
    ServerEvent,
    Welcome,
    WhoList,
)
from ..sanitize import escape, escape_keeping_newlines
from .link import describe_error
from .session import Event, Notice

Fragments = list[tuple[str, str]]

STYLE = {
    "time": "#888888",
    "sender": "bold",
    "own": "bold ansigreen",
    "dm": "ansimagenta",
    "presence": "#888888 italic",
    "notice": "ansiyellow",
    "error": "ansired bold",
    "history": "#888888",
}


# What a connection Notice means for a status line.
CONNECTION_STATE = {"lost": "connection lost", "reconnecting": "reconnecting…",
                    "back": "connected", "ended": "disconnected"}


def local_time(ts: object) -> str:
    """HH:MM:SS in the local time zone, from the server's ISO-8601 UTC `ts`."""
    try:
        moment = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        moment = datetime.now()
    return moment.astimezone().strftime("%H:%M:%S")


def _text(text: str, indent: int) -> str:
    """Message text; continuation lines are indented under the first."""
    lines = escape_keeping_newlines(text).split("\n")
    return ("\n" + " " * indent).join(lines)


def render(event: Event, me: str) -> Fragments:
    if isinstance(event, Notice):
        style = "class:error" if event.kind == "ended" else "class:notice"
        return [(style, f"*** {escape(event.text)}")]
    fragments = _fragments(event, me)
    if isinstance(event, (Message, DirectMessage)) and event.history:
        fragments = [("class:history", text) for _, text in fragments]  # from before: dimmed
    return fragments


def _fragments(event: ServerEvent, me: str) -> Fragments:
    """The line for each event a person sees; none for the rest (hello, ok,
    pong, and types this client does not know, which the protocol says to ignore)."""
    match event:
        case Message():
            return _message(event, me)
        case DirectMessage():
            return _direct(event)
        case Join(username=name):
            return [("class:presence", f"--> {escape(name)} joined")]
        case Leave(username=name, reason=reason):
            return [("class:presence", f"<-- {escape(name)} left ({escape(reason)})")]
        case ErrorReply():
            return [("class:error", f"!!! {escape(describe_error(event))}")]
        case Welcome():
            return _welcome(event)
        case WhoList():
            return _who(event)
        case HistoryPage():
            return _history(event, me)
    return []


def _message(message: Message, me: str) -> Fragments:
    time_text = local_time(message.ts) + " "
    sender = escape(message.sender)
    style = "class:own" if sender.lower() == me.lower() else "class:sender"
    prefix = f"<{sender}> "
    return [("class:time", time_text), (style, prefix),
            ("", _text(message.text, len(time_text) + len(prefix)))]


def _direct(dm: DirectMessage) -> Fragments:
    time_text = local_time(dm.ts) + " "
    prefix = f"[{escape(dm.sender)} -> {escape(dm.to)}] "
    return [("class:time", time_text), ("class:dm", prefix),
            ("class:dm", _text(dm.text, len(time_text) + len(prefix)))]


def _welcome(welcome: Welcome) -> Fragments:
    users = ", ".join(escape(u) for u in welcome.users)
    return [("class:notice", f"*** logged in as {escape(welcome.username)} "
                             f"({escape(welcome.role)}); online: {users}")]


def _who(who: WhoList) -> Fragments:
    people = [f"{escape(u.username)} (admin)" if u.role == "admin" else escape(u.username)
              for u in who.users]
    return [("class:notice", f"*** online ({len(people)}): {', '.join(people)}")]


def _history(page: HistoryPage, me: str) -> Fragments:
    """A page of older messages: one line each, then what is left."""
    end = "*** older messages remain: /history again" if page.more else \
        "*** that is the first message"
    if not page.messages:
        end = "*** no older messages"
    fragments: Fragments = []
    for said in page.messages:
        fragments += [*render(said, me), ("", "\n")]
    return [*fragments, ("class:notice", end)]


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)
