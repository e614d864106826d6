"""What a typed line means: a message to the room, or a slash command.

Shared by the interactive screen, scripting mode and the desktop client, so
`/dm bob hi` does the same in all three. A line starting with `//` sends the
rest, one slash removed, as a message, as in irssi. The request builders
below are the only place a front end learns how a request frame looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HELP = """\
commands:
  /who                   who is online
  /dm USER TEXT          a direct message (also /msg)
  /history               older messages (in a private conversation: that one's)
  /passwd                change your password
  /quit                  leave (also Ctrl-D)
  /kick USER [REASON]    admins: end someone's sessions
  /ban USER [REASON]     admins: kick and disable the account
  //text                 send a message that starts with /
anything else is a message to the room"""


@dataclass(frozen=True)
class Send:
    """A request to send to the server."""

    frame: dict[str, Any]


@dataclass(frozen=True)
class Local:
    """A command the client handles itself: help, passwd, quit."""

    name: str


@dataclass(frozen=True)
class Mistake:
    """A line that cannot be sent as typed; `hint` says why."""

    hint: str


Command = Send | Local | Mistake | None


def say(text: str) -> dict[str, Any]:
    return {"type": "say", "text": text}


def direct(to: str, text: str) -> dict[str, Any]:
    return {"type": "dm", "to": to, "text": text}


def moderate(action: str, username: str, reason: str = "") -> dict[str, Any]:
    """An admin's `kick` or `ban` of `username`."""
    if action not in ("kick", "ban"):
        raise ValueError(f"not a moderation action: {action!r}")
    return {"type": action, "username": username, "reason": reason}


def change_password(old: str, new: str) -> dict[str, Any]:
    return {"type": "passwd", "old": old, "new": new}


def who() -> dict[str, Any]:
    return {"type": "who"}


def history(before: int | None = None, limit: int = 200,
            with_user: str | None = None) -> dict[str, Any]:
    """A page of older messages: the room's, or the DMs with `with_user`."""
    frame: dict[str, Any] = {"type": "history", "limit": limit}
    if before is not None:
        frame["before"] = before
    if with_user is not None:
        frame["with"] = with_user
    return frame


def parse(line: str, talking_to: str | None = None) -> Command:
    """What to do with one typed line (None: nothing, it was blank).

    `talking_to` is the user whose private conversation the line was typed
    in, if any: plain text then goes to them rather than to the room.
    """
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("//"):
        text = text[1:]
    elif text.startswith("/"):
        return _slash_command(text)
    return Send(direct(talking_to, text) if talking_to else say(text))


def _slash_command(text: str) -> Command:
    name, _, rest = text[1:].partition(" ")
    name, rest = name.lower(), rest.strip()
    if name in ("help", "quit", "passwd", "history"):
        return Local(name)
    if name == "who":
        return Send(who())
    if name in ("dm", "msg"):
        user, _, message = rest.partition(" ")
        if not user or not message.strip():
            return Mistake(f"usage: /{name} USER TEXT")
        return Send(direct(user, message))
    if name in ("kick", "ban"):
        user, _, reason = rest.partition(" ")
        if not user:
            return Mistake(f"usage: /{name} USER [REASON]")
        return Send(moderate(name, user, reason.strip()))
    return Mistake(f"unknown command /{name}; /help lists the commands "
                   "(start a message with // to send a leading /)")
