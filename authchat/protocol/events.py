"""Server events (server -> client): one frozen dataclass per frame the server
sends, each with the one encoder the server uses (`to_frame`) and the one
parser a client uses (`parse_event`).

A parsed event has fields of the types below, so client code never
re-checks them (Rule 2, for the other side). A frame of a type this version
does not know comes out as `UnknownEvent`, which clients ignore: a newer
server may send more. A known type with a missing or mistyped field is a
`ProtocolError` (bad_frame): the server is not speaking this protocol.
Fields a frame carries beyond the ones below are ignored, as the server
ignores unknown request fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import ErrorCode
from .framing import Frame, ProtocolError, encode, json_string
from .requests import RequestId

PROTOCOL_VERSION = 1

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """What every server event has once a client has parsed it: the frame as
    it came, for a client that shows frames as they are (scripting mode's
    --json), unknown fields and all. None on an event built to be sent."""

    received: Frame | None = field(default=None, kw_only=True, compare=False, repr=False)


def _with_re(frame: Frame, re_: RequestId) -> Frame:
    if re_ is not None:
        frame["re"] = re_
    return frame


@dataclass(frozen=True)
class Hello(Received):
    """The server's greeting, first on every connection: who it is and its rules."""

    server: str
    registration: str  # "open", "invite" or "closed"
    tls: bool
    min_password_length: int | None  # None from a server older than the field
    protocol: int = PROTOCOL_VERSION

    def to_frame(self) -> Frame:
        frame: Frame = {"type": "hello", "protocol": self.protocol, "server": self.server,
                        "registration": self.registration, "tls": self.tls}
        if self.min_password_length is not None:
            frame["min_password_length"] = self.min_password_length
        return frame


@dataclass(frozen=True)
class Welcome(Received):
    """Logged in (or registered and logged in), with who is online; and, if
    the login asked for one, a session token to `resume` with and when it
    expires."""

    username: str
    role: str
    users: tuple[str, ...]
    re: RequestId = None
    token: str | None = field(default=None, repr=False)  # a credential: never in a log
    token_expires: str | None = None

    def to_frame(self) -> Frame:
        frame: Frame = {"type": "welcome", "username": self.username, "role": self.role,
                        "users": list(self.users)}
        if self.token is not None:
            frame["token"] = self.token
            frame["token_expires"] = self.token_expires
        return _with_re(frame, self.re)


@dataclass(frozen=True)
class ErrorReply(Received):
    """A refusal, or the reason the server ends the connection. `code` is one
    of `ErrorCode`'s on a server of this version (a string: a newer server may
    send others); `re` names the request it answers, if any."""

    code: str
    message: str
    re: RequestId = None
    retry_after: float | None = None  # seconds, to a millisecond

    def __post_init__(self) -> None:
        if self.retry_after is not None:  # what the wire can carry
            object.__setattr__(self, "retry_after", round(float(self.retry_after), 3))

    @property
    def known_code(self) -> ErrorCode | None:
        """The code, if this version knows it."""
        return ErrorCode(self.code) if self.code in ErrorCode._value2member_map_ else None

    def to_frame(self) -> Frame:
        frame = _with_re({"type": "error", "code": str(self.code), "message": self.message},
                         self.re)
        if self.retry_after is not None:
            frame["retry_after"] = self.retry_after
        return frame


@dataclass(frozen=True)
class Ok(Received):
    """A request done. For a message or DM: its id, and whether a DM waits
    for its recipient to log in (`queued`)."""

    re: RequestId = None
    message: int | None = None
    queued: bool = False

    def to_frame(self) -> Frame:
        frame: Frame = {"type": "ok"}
        if self.message is not None:
            frame["message"] = self.message
        if self.queued:
            frame["queued"] = True
        return _with_re(frame, self.re)


@dataclass(frozen=True)
class Message(Received):
    """A message to the room. `history` marks one given back from the past
    (on joining, or in a history page), not said just now."""

    id: int
    sender: str
    text: str
    ts: str
    history: bool = False

    def to_frame(self) -> Frame:
        frame: Frame = {"type": "message", "id": self.id, "from": self.sender,
                        "text": self.text, "ts": self.ts}
        if self.history:
            frame["history"] = True
        return frame


@dataclass(frozen=True)
class DirectMessage(Received):
    """A direct message, to its recipient's sessions and its sender's."""

    id: int
    sender: str
    to: str
    text: str
    ts: str
    history: bool = False

    def to_frame(self) -> Frame:
        frame: Frame = {"type": "dm", "id": self.id, "from": self.sender, "to": self.to,
                        "text": self.text, "ts": self.ts}
        if self.history:
            frame["history"] = True
        return frame


Said = Message | DirectMessage


def message_template(sender: str, text: str, ts: str) -> tuple[bytes, bytes]:
    """Message(ID, sender, text, ts)'s encoded frame as the bytes before and
    after ID, so that a batch is encoded once for any ids."""
    tail = f',"from":{json_string(sender)},"text":{json_string(text)},"ts":{json_string(ts)}}}\n'
    return b'{"type":"message","id":', tail.encode("utf-8")


@dataclass(frozen=True)
class HistoryPage(Received):
    """Older messages, oldest first; `more` if there are older still."""

    messages: tuple[Said, ...]
    more: bool
    re: RequestId = None

    def to_frame(self) -> Frame:
        return _with_re({"type": "history", "messages": [m.to_frame() for m in self.messages],
                         "more": self.more}, self.re)


@dataclass(frozen=True)
class Join(Received):
    """An account's first session entered the room."""

    username: str
    role: str  # "" from a server older than the field (before 2026-11-28): not known

    def to_frame(self) -> Frame:
        return {"type": "join", "username": self.username, "role": self.role}


@dataclass(frozen=True)
class Leave(Received):
    """An account's last session left the room, and why (quit, kicked, …)."""

    username: str
    reason: str

    def to_frame(self) -> Frame:
        return {"type": "leave", "username": self.username, "reason": self.reason}


@dataclass(frozen=True)
class OnlineUser:
    """One person online, in a `who` answer."""

    username: str
    role: str


@dataclass(frozen=True)
class WhoList(Received):
    """Who is online, in name order."""

    users: tuple[OnlineUser, ...]
    re: RequestId = None

    def to_frame(self) -> Frame:
        users = [{"username": m.username, "role": m.role} for m in self.users]
        return _with_re({"type": "who", "users": users}, self.re)


@dataclass(frozen=True)
class PongReply(Received):
    """The answer to a client's ping."""

    re: RequestId = None

    def to_frame(self) -> Frame:
        return _with_re({"type": "pong"}, self.re)


@dataclass(frozen=True)
class ServerPing(Received):
    """The server asks whether the client is still there: answer with a pong."""

    def to_frame(self) -> Frame:
        return {"type": "ping"}


@dataclass(frozen=True)
class UnknownEvent:
    """A frame of a type this version does not know; never sent by this server.
    `re`, if it names a request, lets a client pair a newer server's new reply
    with what it asked."""

    kind: str
    frame: Frame = field(compare=False, repr=False)
    re: RequestId = None


# What the server sends, and what a client may receive (a newer server's too).
OutgoingEvent = (Hello | Welcome | ErrorReply | Ok | Message | DirectMessage | HistoryPage
                 | Join | Leave | WhoList | PongReply | ServerPing)
ServerEvent = OutgoingEvent | UnknownEvent


def encode_event(event: OutgoingEvent) -> bytes:
    """An event on the wire: the server's one way to write a frame."""
    return encode(event.to_frame())


# -- parsing (the client's side) ---------------------------------------------

def _bad(kind: str, key: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME, f"the server's '{kind}' frame: '{key}' {what}")


_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
          list: "a list"}


def _required(frame: Frame, key: str, kind: type[T]) -> T:
    """`frame[key]`, which must be a `kind` (a bool is no number here)."""
    value = frame.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # JSON has one kind of number: 1 is 1.0
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _bad(str(frame.get("type")), key, f"must be {_KINDS[kind]}")
    return value


def _optional(frame: Frame, key: str, kind: type[T]) -> T | None:
    """`frame[key]` as `_required` has it, or None if the frame leaves it out."""
    return None if frame.get(key) is None else _required(frame, key, kind)


def _flag(frame: Frame, key: str) -> bool:
    return _optional(frame, key, bool) or False


def _re(frame: Frame) -> RequestId:
    """The request id a reply names; one no request of ours can have is none."""
    value = frame.get("re")
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _strings(frame: Frame, key: str) -> tuple[str, ...]:
    values = _required(frame, key, list)
    if not all(isinstance(v, str) for v in values):
        raise _bad(str(frame["type"]), key, "must be a list of strings")
    return tuple(values)


def _objects(frame: Frame, key: str) -> list[Frame]:
    values = _required(frame, key, list)
    if not all(isinstance(v, dict) for v in values):
        raise _bad(str(frame["type"]), key, "must be a list of objects")
    return values


def _hello(f: Frame) -> Hello:
    return Hello(_required(f, "server", str), _required(f, "registration", str),
                 _required(f, "tls", bool), _optional(f, "min_password_length", int),
                 _required(f, "protocol", int))


def _welcome(f: Frame) -> Welcome:
    return Welcome(_required(f, "username", str), _required(f, "role", str), _strings(f, "users"),
                   _re(f), _optional(f, "token", str), _optional(f, "token_expires", str))


def _error(f: Frame) -> ErrorReply:
    return ErrorReply(_required(f, "code", str), (_optional(f, "message", str) or ""), _re(f),
                      _optional(f, "retry_after", float))


def _ok(f: Frame) -> Ok:
    return Ok(_re(f), _optional(f, "message", int), _flag(f, "queued"))


def _message(f: Frame) -> Message:
    return Message(_required(f, "id", int), _required(f, "from", str), _required(f, "text", str),
                   _required(f, "ts", str), _flag(f, "history"))


def _direct(f: Frame) -> DirectMessage:
    return DirectMessage(_required(f, "id", int), _required(f, "from", str),
                         _required(f, "to", str), _required(f, "text", str),
                         _required(f, "ts", str), _flag(f, "history"))


def _said(f: Frame) -> Said:
    if f.get("type") == "dm":
        return _direct(f)
    if f.get("type") == "message":
        return _message(f)
    raise _bad("history", "messages", "must hold only messages and DMs")


def _history(f: Frame) -> HistoryPage:
    return HistoryPage(tuple(_said(m) for m in _objects(f, "messages")),
                       _required(f, "more", bool), _re(f))


def _who(f: Frame) -> WhoList:
    return WhoList(tuple(OnlineUser(_required(u, "username", str), _required(u, "role", str))
                         for u in _objects(f, "users")), _re(f))


_PARSERS: dict[str, Callable[[Frame], OutgoingEvent]] = {
    "hello": _hello,
    "welcome": _welcome,
    "error": _error,
    "ok": _ok,
    "message": _message,
    "dm": _direct,
    "history": _history,
    "join": lambda f: Join(_required(f, "username", str), (_optional(f, "role", str) or "")),
    "leave": lambda f: Leave(_required(f, "username", str), (_optional(f, "reason", str) or "")),
    "who": _who,
    "pong": lambda f: PongReply(_re(f)),
    "ping": lambda f: ServerPing(),
}


def parse_event(frame: Frame) -> ServerEvent:
    """The server event a decoded frame carries.

    Raises:
        ProtocolError: bad_frame, for a frame with no string type, or a known
            type with a field missing or of the wrong type.
    """
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "the server sent a frame without a type")
    parse = _PARSERS.get(kind)
    if parse is None:
        return UnknownEvent(kind, frame, _re(frame))
    event = parse(frame)
    # Frozen, and not yet seen by anyone: set once, here, as __post_init__ would.
    object.__setattr__(event, "received", frame)
    return event
