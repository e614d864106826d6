"""Requests (client -> server): frozen dataclasses, the server's validation of
each frame into one, and the frame a client sends for one.

Validation is Rule 2 of the package: a request that comes out of
`parse_request` has fields of the right types, lengths and characters, so
server code never re-checks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ErrorCode
from .framing import Frame, ProtocolError

MAX_ID_LENGTH = 64
MAX_NAME_FIELD = 64        # longer than any valid username; longer is bad_request
MAX_SECRET_FIELD = 4096    # a password or invite; the policy's own bound is lower
MAX_REASON_LENGTH = 200
MAX_SAFE_INTEGER = 2**53 - 1
MAX_HISTORY_PAGE = 200     # messages in one `history` answer
MAX_TOKEN_FIELD = 128      # a session token is 43 characters; longer is bad_request

# C0 and C1 controls, DEL and lone surrogates are refused in any text; a
# message may still contain newlines and tabs.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


RequestId = str | int | None


@dataclass(frozen=True)
class Request:
    """A client's request. The server gets it from `parse_request`, validated;
    a client builds it and sends `to_frame()`. A credential in one is left
    out of its repr, so that no log or traceback shows it."""

    type: ClassVar[str]
    id: RequestId

    def to_frame(self) -> Frame:
        """The request as its frame: fields under their wire names, in order,
        with what is unset (None) left out."""
        frame: Frame = {"type": self.type}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name != "id" and value is not None:
                frame[_WIRE_NAMES.get(spec.name, spec.name)] = value
        if self.id is not None:
            frame["id"] = self.id
        return frame


_WIRE_NAMES = {"with_user": "with"}  # attribute -> frame key, where they differ


@dataclass(frozen=True)
class Register(Request):
    """`session`: also give a session token, to `resume` with later."""

    type: ClassVar[str] = "register"
    username: str
    password: str = field(repr=False)
    invite: str | None = field(repr=False)
    session: bool | None = None


@dataclass(frozen=True)
class Login(Request):
    """`session`: also give a session token, to `resume` with later."""

    type: ClassVar[str] = "login"
    username: str
    password: str = field(repr=False)
    session: bool | None = None


@dataclass(frozen=True)
class Resume(Request):
    """Log in with a session token instead of a password."""

    type: ClassVar[str] = "resume"
    token: str = field(repr=False)


@dataclass(frozen=True)
class Logout(Request):
    """End the session and the session token it came in with."""

    type: ClassVar[str] = "logout"


@dataclass(frozen=True)
class Ping(Request):
    type: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Pong(Request):
    type: ClassVar[str] = "pong"


@dataclass(frozen=True)
class Quit(Request):
    type: ClassVar[str] = "quit"


@dataclass(frozen=True)
class Who(Request):
    type: ClassVar[str] = "who"


@dataclass(frozen=True)
class Say(Request):
    type: ClassVar[str] = "say"
    text: str


@dataclass(frozen=True)
class Dm(Request):
    type: ClassVar[str] = "dm"
    to: str
    text: str


@dataclass(frozen=True)
class History(Request):
    """Older messages: the room's, or (`with_user`) the DMs with one person."""

    type: ClassVar[str] = "history"
    before: int | None
    limit: int
    with_user: str | None


@dataclass(frozen=True)
class Passwd(Request):
    type: ClassVar[str] = "passwd"
    old: str = field(repr=False)
    new: str = field(repr=False)


@dataclass(frozen=True)
class Kick(Request):
    type: ClassVar[str] = "kick"
    username: str
    reason: str


@dataclass(frozen=True)
class Ban(Request):
    type: ClassVar[str] = "ban"
    username: str
    reason: str


def request_id(frame: Frame) -> RequestId:
    """The frame's "id", if it is a usable one (a short string or a safe integer)."""
    value = frame.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_LENGTH \
            and not _FORBIDDEN_IN_FIELD.search(value):
        return value
    return None


def _string(frame: Frame, key: str, limit: int, *, optional: bool = False,
            secret: bool = False) -> Any:
    """A string field; secrets may hold any character (the password policy decides)."""
    value = frame.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{key}' must be a string")
    if len(value) > limit:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{key}' is longer than {limit} characters")
    if not secret and _FORBIDDEN_IN_FIELD.search(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{key}' contains control characters")
    return value


def _flag(frame: Frame, key: str) -> bool | None:
    """An optional true/false field; absent is None, so that it is not sent back."""
    value = frame.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'{key}' must be true or false")
    return value or None


def _count(frame: Frame, key: str, low: int, high: int,
           default: int | None) -> Any:
    """An optional whole-number field from `low` to `high`."""
    value = frame.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"'{key}' must be a whole number from {low} to {high}")
    return value


def clean_text(value: object, max_length: int) -> str:
    """A message text as the room will carry it: stripped, checked, bounded.

    Raises:
        ProtocolError: bad_request (not a string, empty, control characters)
            or text_too_long.
    """
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'text' must be a string")
    text = value.strip()
    if not text:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'text' is empty")
    if _FORBIDDEN_IN_TEXT.search(text):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'text' contains control characters")
    if len(text) > max_length:
        raise ProtocolError(ErrorCode.TEXT_TOO_LONG,
                            f"text is longer than {max_length} characters")
    return text


def _reason(frame: Frame) -> str:
    reason = _string(frame, "reason", MAX_REASON_LENGTH, optional=True)
    return (reason or "").strip()


def parse_request(frame: Frame, max_text_length: int) -> Request:
    """Turn a decoded frame into a request object; unknown fields are ignored.

    Raises:
        ProtocolError: unknown_type, bad_request or text_too_long.
    """
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame has no string 'type'")
    rid = request_id(frame)
    if "id" in frame and rid is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'id' must be a short string or an integer")
    if kind == "register":
        return Register(rid, _string(frame, "username", MAX_NAME_FIELD),
                        _string(frame, "password", MAX_SECRET_FIELD, secret=True),
                        _string(frame, "invite", MAX_SECRET_FIELD, optional=True, secret=True),
                        _flag(frame, "session"))
    if kind == "login":
        return Login(rid, _string(frame, "username", MAX_NAME_FIELD),
                     _string(frame, "password", MAX_SECRET_FIELD, secret=True),
                     _flag(frame, "session"))
    if kind == "resume":
        return Resume(rid, _string(frame, "token", MAX_TOKEN_FIELD, secret=True))
    if kind == "say":
        return Say(rid, clean_text(frame.get("text"), max_text_length))
    if kind == "dm":
        return Dm(rid, _string(frame, "to", MAX_NAME_FIELD),
                  clean_text(frame.get("text"), max_text_length))
    if kind == "history":
        return History(rid, _count(frame, "before", 1, MAX_SAFE_INTEGER, None),
                       _count(frame, "limit", 1, MAX_HISTORY_PAGE, MAX_HISTORY_PAGE),
                       _string(frame, "with", MAX_NAME_FIELD, optional=True))
    if kind == "passwd":
        return Passwd(rid, _string(frame, "old", MAX_SECRET_FIELD, secret=True),
                      _string(frame, "new", MAX_SECRET_FIELD, secret=True))
    if kind in ("kick", "ban"):
        cls = Kick if kind == "kick" else Ban
        return cls(rid, _string(frame, "username", MAX_NAME_FIELD), _reason(frame))
    simple = {"ping": Ping, "pong": Pong, "quit": Quit, "who": Who, "logout": Logout}
    if kind in simple:
        return simple[kind](rid)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")
