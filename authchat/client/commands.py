"""What a typed line means: a message to the room, or a slash command.

Shared by the interactive screen, scripting mode and the desktop client, so
`/dm bob hi` does the same in all three. A line starting with `//` sends the
rest, one slash removed, as a message, as in irssi. What is to be sent is
a protocol request, so no front end builds a frame by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import Ban, Dm, Kick, Request, Say, Who

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

    request: Request


@dataclass(frozen=True)
class Local:
    """A command the client handles itself: help, passwd, quit."""

    name: str


@dataclass(frozen=True)
class Mistake:
    """A line that cannot be sent as typed; `hint` says why."""

    hint: str


Command = Send | Local | Mistake | None

MODERATION: dict[str, type[Kick] | type[Ban]] = {"kick": Kick, "ban": Ban}  # admins' actions


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
    return Send(Dm(None, talking_to, text) if talking_to else Say(None, text))


def _slash_command(text: str) -> Command:
    name, _, rest = text[1:].partition(" ")
    name, rest = name.lower(), rest.strip()
    if name in ("help", "quit", "passwd", "history"):
        return Local(name)
    if name == "who":
        return Send(Who(None))
    if name in ("dm", "msg"):
        user, _, message = rest.partition(" ")
        if not user or not message.strip():
            return Mistake(f"usage: /{name} USER TEXT")
        return Send(Dm(None, user, message))
    if name in ("kick", "ban"):
        user, _, reason = rest.partition(" ")
        if not user:
            return Mistake(f"usage: /{name} USER [REASON]")
        return Send(MODERATION[name](None, user, reason.strip()))
    return Mistake(f"unknown command /{name}; /help lists the commands "
                   "(start a message with // to send a leading /)")
