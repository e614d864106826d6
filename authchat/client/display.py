"""How chat events look as lines of text: shared by every front end.

`render(event, me)` turns a server frame or a client Notice into styled
fragments, `(style class, text)` pairs as prompt_toolkit prints them (the
desktop client maps each class to a text tag); `plain(fragments)` is the same
line without styles, for scripts. Everything
that came from another user goes through `sanitize`, so no message can move
the cursor, retitle the terminal or reverse the text around it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .link import describe_error
from .session import Event, Notice
from ..sanitize import escape, escape_keeping_newlines

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


def _name(frame: dict[str, Any], key: str) -> str:
    return escape(str(frame.get(key, "?")))


def _text(frame: dict[str, Any], indent: int) -> str:
    """Message text; continuation lines are indented under the first."""
    lines = escape_keeping_newlines(str(frame.get("text", ""))).split("\n")
    return ("\n" + " " * indent).join(lines)


def render(event: Event, me: str) -> Fragments:
    if isinstance(event, Notice):
        style = "class:error" if event.kind == "ended" else "class:notice"
        return [(style, f"*** {escape(event.text)}")]
    kind = event.get("type")
    renderer = _RENDERERS.get(str(kind))
    if renderer is None:
        return []  # frames this client does not know are ignored, as the protocol asks
    fragments = renderer(event, me)
    if event.get("history") is True:  # from before: dimmed, whoever said it
        fragments = [("class:history", text) for _, text in fragments]
    return fragments


def _message(frame: dict[str, Any], me: str) -> Fragments:
    time_text = local_time(frame.get("ts")) + " "
    sender = _name(frame, "from")
    style = "class:own" if sender.lower() == me.lower() else "class:sender"
    prefix = f"<{sender}> "
    return [("class:time", time_text), (style, prefix),
            ("", _text(frame, len(time_text) + len(prefix)))]


def _direct(frame: dict[str, Any], me: str) -> Fragments:
    time_text = local_time(frame.get("ts")) + " "
    sender, to = _name(frame, "from"), _name(frame, "to")
    prefix = f"[{sender} -> {to}] "
    return [("class:time", time_text), ("class:dm", prefix),
            ("class:dm", _text(frame, len(time_text) + len(prefix)))]


def _join(frame: dict[str, Any], me: str) -> Fragments:
    return [("class:presence", f"--> {_name(frame, 'username')} joined")]


def _leave(frame: dict[str, Any], me: str) -> Fragments:
    reason = escape(str(frame.get("reason", "")))
    return [("class:presence", f"<-- {_name(frame, 'username')} left ({reason})")]


def _error(frame: dict[str, Any], me: str) -> Fragments:
    return [("class:error", f"!!! {escape(describe_error(frame))}")]


def _users(frame: dict[str, Any]) -> list[Any]:
    return _list(frame.get("users"))


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []  # a broken server's frame: nothing


def _welcome(frame: dict[str, Any], me: str) -> Fragments:
    users = ", ".join(escape(str(u)) for u in _users(frame))
    return [("class:notice", f"*** logged in as {_name(frame, 'username')} "
                             f"({escape(str(frame.get('role', '')))}); online: {users}")]


def _who(frame: dict[str, Any], me: str) -> Fragments:
    people = []
    for user in _users(frame):
        name = escape(str(user.get("username", "?"))) if isinstance(user, dict) else "?"
        admin = isinstance(user, dict) and user.get("role") == "admin"
        people.append(f"{name} (admin)" if admin else name)
    return [("class:notice", f"*** online ({len(people)}): {', '.join(people)}")]


def _history(frame: dict[str, Any], me: str) -> Fragments:
    """A page of older messages: one line each, then what is left."""
    messages = [m for m in _list(frame.get("messages")) if isinstance(m, dict)]
    lines = [render(m, me) for m in messages]
    more = frame.get("more") is True
    end = "*** older messages remain: /history again" if more else \
        "*** that is the first message"
    if not messages:
        end = "*** no older messages"
    fragments: Fragments = []
    for line in lines:
        fragments += [*line, ("", "\n")]
    return [*fragments, ("class:notice", end)]


_RENDERERS = {
    "message": _message, "dm": _direct, "join": _join, "leave": _leave,
    "error": _error, "welcome": _welcome, "who": _who, "history": _history,
}


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)
