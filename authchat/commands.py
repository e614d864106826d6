"""What a typed line means: a message to the room, or a slash command.

Shared by the interactive screen and scripting mode, so `/dm bob hi` does the
same in both. A line starting with `//` sends the rest, one slash removed, as
a message, as in irssi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HELP = """\
commands:
  /who                   who is online
  /dm USER TEXT          a direct message (also /msg)
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


def parse(line: str) -> Command:
    """What to do with one typed line (None: nothing, it was blank)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("//"):
        return Send({"type": "say", "text": text[1:]})
    if not text.startswith("/"):
        return Send({"type": "say", "text": text})
    name, _, rest = text[1:].partition(" ")
    name, rest = name.lower(), rest.strip()
    if name in ("help", "quit", "passwd"):
        return Local(name)
    if name == "who":
        return Send({"type": "who"})
    if name in ("dm", "msg"):
        user, _, message = rest.partition(" ")
        if not user or not message.strip():
            return Mistake(f"usage: /{name} USER TEXT")
        return Send({"type": "dm", "to": user, "text": message})
    if name in ("kick", "ban"):
        user, _, reason = rest.partition(" ")
        if not user:
            return Mistake(f"usage: /{name} USER [REASON]")
        return Send({"type": name, "username": user, "reason": reason.strip()})
    return Mistake(f"unknown command /{name}; /help lists the commands "
                   "(start a message with // to send a leading /)")
