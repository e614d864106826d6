"""Wire protocol v1, sans-I/O: bytes in, requests out; frames in, bytes out.

Theory of operation
-------------------
A frame is one JSON object per line (UTF-8, ending in "\\n"; "\\r\\n" is
accepted). `FrameDecoder` cuts the byte stream into lines and never buffers
more than `max_frame_bytes` of an unfinished one: past that the framing is
lost and the only answer is `frame_too_large` and a close.

`ServerProtocol` is the server's side of one connection. It turns frames into
validated, frozen request objects and enforces the state table below; what it
cannot accept comes out as a `Violation` event carrying the wire error code,
never as an exception, so the caller has one loop:

    proto.receive_data(data)
    while (event := proto.next_event()) is not None:
        ...  # a request to carry out, or a Violation to answer

Rule 1: nothing here does I/O, reads a clock or touches the store; the server
owns those. Rule 2: every request that reaches the server has passed
validation here, so server code never re-checks field types.

The state table (`ACCEPTS`): before authentication only register, login, ping
and quit are accepted (anything else known is `auth_required`); after it, the
chat requests. `ServerProtocol.authenticated()` is the only way from one state
to the other.

This module imports no socket, ssl, threading, sqlite3, bcrypt or click.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from .errors import ErrorCode

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024
MAX_ID_LENGTH = 64
MAX_NAME_FIELD = 64        # longer than any valid username; longer is bad_request
MAX_SECRET_FIELD = 4096    # a password or invite; the policy's own bound is lower
MAX_REASON_LENGTH = 200
MAX_AUTH_FAILURES = 3      # failed register/login attempts before the connection closes
MAX_PREAUTH_FRAMES = 10    # frames a client may send before it has logged in
MAX_SAFE_INTEGER = 2**53 - 1
MAX_HISTORY_PAGE = 200     # messages in one `history` answer
# The deepest frame either side sends is a history page (object > list >
# object). json's decoder recurses once per level, and deep enough input
# overflows the C stack before any RecursionError on some interpreters
# (3.13 among them), so deeper frames are refused before they are decoded.
MAX_NESTING = 3

# C0 and C1 controls, DEL and lone surrogates are refused in any text; a
# message may still contain newlines and tabs.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class State(Enum):
    AWAIT_AUTH = "await_auth"
    CHAT = "chat"
    CLOSED = "closed"


# -- requests (client -> server) ---------------------------------------------

RequestId = str | int | None


@dataclass(frozen=True)
class Request:
    id: RequestId


@dataclass(frozen=True)
class Register(Request):
    username: str
    password: str
    invite: str | None


@dataclass(frozen=True)
class Login(Request):
    username: str
    password: str


@dataclass(frozen=True)
class Ping(Request):
    pass


@dataclass(frozen=True)
class Pong(Request):
    pass


@dataclass(frozen=True)
class Quit(Request):
    pass


@dataclass(frozen=True)
class Who(Request):
    pass


@dataclass(frozen=True)
class Say(Request):
    text: str


@dataclass(frozen=True)
class Dm(Request):
    to: str
    text: str


@dataclass(frozen=True)
class History(Request):
    """Older messages: the room's, or (`with_user`) the DMs with one person."""

    before: int | None
    limit: int
    with_user: str | None


@dataclass(frozen=True)
class Passwd(Request):
    old: str
    new: str


@dataclass(frozen=True)
class Kick(Request):
    username: str
    reason: str


@dataclass(frozen=True)
class Ban(Request):
    username: str
    reason: str


@dataclass(frozen=True)
class Violation:
    """A frame the server must refuse: answer with `code`; close if `fatal`."""

    code: ErrorCode
    message: str
    re: RequestId = None
    fatal: bool = False


Event = Request | Violation

ACCEPTS: dict[State, frozenset[str]] = {
    State.AWAIT_AUTH: frozenset({"register", "login", "ping", "quit"}),
    State.CHAT: frozenset({"say", "dm", "who", "ping", "pong", "passwd", "quit", "kick", "ban",
                           "history"}),
    State.CLOSED: frozenset(),
}
KNOWN_TYPES = ACCEPTS[State.AWAIT_AUTH] | ACCEPTS[State.CHAT]


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow."""

    def __init__(self, code: ErrorCode, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


# -- framing -------------------------------------------------------------------

class FrameDecoder:
    """Cuts a byte stream into lines, holding at most `max_frame_bytes` of one."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no newline

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line without its line ending, or None if more data is needed.

        Raises:
            ProtocolError: frame_too_large (fatal) once a line passes the limit.
        """
        newline = self._buffer.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_frame_bytes:
                raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                    f"frame longer than {self.max_frame_bytes} bytes", fatal=True)
            return None
        line = bytes(self._buffer[:newline])
        del self._buffer[:newline + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                f"frame longer than {self.max_frame_bytes} bytes", fatal=True)
        return line

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# A JSON string, escapes included, or an unterminated one to the end of the
# line. Possessive, so a match never gives back what it took, and every quote
# starts one, so a failed match never starts over at the next quote: the
# scan is linear however the quotes and backslashes fall. (A pattern that
# could fail took half a second on 16 KiB of escaped quotes.) An
# unterminated string hides no nesting: json stops there too.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nests_deeper_than(line: bytes, limit: int) -> bool:
    """Whether `line`'s arrays and objects nest more than `limit` deep, found
    in time linear in its length; brackets inside strings do not count."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False  # the usual frame: too few brackets to nest that deep
    depth = 0
    for byte in _JSON_STRING.sub(b"", line).translate(None, _NOT_A_BRACKET):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for every frame: json.loads and json.dumps with
# any option build a new one per call, a fifth of the server's time at load.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def decode_frame(line: bytes) -> dict[str, Any]:
    """Parse one line into a JSON object.

    Raises:
        ProtocolError: bad_frame for anything that is not a UTF-8 JSON object.
    """
    if nests_deeper_than(line, MAX_NESTING):
        raise ProtocolError(ErrorCode.BAD_FRAME,
                            f"frame nests deeper than {MAX_NESTING} levels")
    try:
        text = line.decode("utf-8")
        frame = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid UTF-8") from None
    except (ValueError, RecursionError):
        # RecursionError: json raises it, not ValueError, on nesting too deep
        # for the interpreter's limit (a second line of defence after the scan)
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame is not a JSON object")
    return frame


def encode(frame: dict[str, Any]) -> bytes:
    """One frame on the wire: compact JSON and a newline."""
    return _ENCODER.encode(frame).encode("utf-8") + b"\n"


# -- request validation -------------------------------------------------------

def request_id(frame: dict[str, Any]) -> RequestId:
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


def _string(frame: dict[str, Any], key: str, limit: int, *, optional: bool = False,
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


def _count(frame: dict[str, Any], key: str, low: int, high: int,
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


def _reason(frame: dict[str, Any]) -> str:
    reason = _string(frame, "reason", MAX_REASON_LENGTH, optional=True)
    return (reason or "").strip()


def parse_request(frame: dict[str, Any], max_text_length: int) -> Request:
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
                        _string(frame, "invite", MAX_SECRET_FIELD, optional=True, secret=True))
    if kind == "login":
        return Login(rid, _string(frame, "username", MAX_NAME_FIELD),
                     _string(frame, "password", MAX_SECRET_FIELD, secret=True))
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
    simple = {"ping": Ping, "pong": Pong, "quit": Quit, "who": Who}
    if kind in simple:
        return simple[kind](rid)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")


# -- the server's side of a connection -------------------------------------

class ServerProtocol:
    """Framing, validation and the handshake state table for one connection."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_text_length: int = 2000) -> None:
        self.state = State.AWAIT_AUTH
        self.max_text_length = max_text_length
        self._decoder = FrameDecoder(max_frame_bytes)
        self._auth_failures = 0
        self._preauth_frames = 0

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> Event | None:
        """The next request or violation, or None when more data is needed."""
        while self.state is not State.CLOSED:
            try:
                line = self._decoder.next_line()
            except ProtocolError as e:
                return self._violation(e, None)
            if line is None:
                return None
            if line.strip():  # blank lines are keep-alives, not frames
                return self._event_for(line)
        return None

    def _event_for(self, line: bytes) -> Event:
        frame: dict[str, Any] = {}
        try:
            if self.state is State.AWAIT_AUTH:
                self._preauth_frames += 1
                if self._preauth_frames > MAX_PREAUTH_FRAMES:
                    raise ProtocolError(ErrorCode.AUTH_REQUIRED,
                                        "too many frames before logging in", fatal=True)
            frame = decode_frame(line)
            kind = frame.get("type")
            if isinstance(kind, str) and kind in KNOWN_TYPES \
                    and kind not in ACCEPTS[self.state]:
                raise self._not_now(kind)
            return parse_request(frame, self.max_text_length)
        except ProtocolError as e:
            return self._violation(e, request_id(frame))

    def _not_now(self, kind: str) -> ProtocolError:
        if self.state is State.AWAIT_AUTH:
            return ProtocolError(ErrorCode.AUTH_REQUIRED, "log in first")
        return ProtocolError(ErrorCode.BAD_REQUEST, f"'{kind}' is only allowed before logging in")

    def _violation(self, error: ProtocolError, rid: RequestId) -> Violation:
        if error.fatal:
            self.state = State.CLOSED
        return Violation(error.code, str(error), rid, error.fatal)

    def authenticated(self) -> None:
        if self.state is not State.AWAIT_AUTH:
            raise RuntimeError(f"authenticated() in state {self.state}")
        self.state = State.CHAT

    def auth_failed(self) -> bool:
        """Count a failed register/login; True once the connection must close."""
        self._auth_failures += 1
        if self._auth_failures >= MAX_AUTH_FAILURES:
            self.state = State.CLOSED
            return True
        return False

    def close(self) -> None:
        self.state = State.CLOSED


# -- server frames (server -> client) -----------------------------------------

def timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds, as every `ts` field carries it."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _with_re(frame: dict[str, Any], re_: RequestId) -> dict[str, Any]:
    if re_ is not None:
        frame["re"] = re_
    return frame


def hello(server: str, registration: str, tls: bool, min_password_length: int) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "server": server,
            "registration": registration, "tls": tls,
            "min_password_length": min_password_length}


def welcome(username: str, role: str, users: list[str], re_: RequestId = None) -> dict[str, Any]:
    return _with_re({"type": "welcome", "username": username, "role": role, "users": users}, re_)


def error(code: ErrorCode, message: str, re_: RequestId = None,
          retry_after: float | None = None) -> dict[str, Any]:
    frame = _with_re({"type": "error", "code": str(code), "message": message}, re_)
    if retry_after is not None:
        frame["retry_after"] = round(retry_after, 3)
    return frame


def ok(re_: RequestId = None, **fields: Any) -> dict[str, Any]:
    return _with_re({"type": "ok", **fields}, re_)


def message(msg_id: int, sender: str, text: str, ts: str) -> dict[str, Any]:
    return {"type": "message", "id": msg_id, "from": sender, "text": text, "ts": ts}


def message_template(sender: str, text: str, ts: str) -> tuple[bytes, bytes]:
    """encode(message(ID, sender, text, ts)) as the bytes before and after ID."""
    quote = _ENCODER.encode  # a str encodes as a JSON string, quotes included
    tail = f',"from":{quote(sender)},"text":{quote(text)},"ts":{quote(ts)}}}\n'
    return b'{"type":"message","id":', tail.encode("utf-8")


def direct_message(msg_id: int, sender: str, to: str, text: str, ts: str) -> dict[str, Any]:
    return {"type": "dm", "id": msg_id, "from": sender, "to": to, "text": text, "ts": ts}


def from_history(frame: dict[str, Any]) -> dict[str, Any]:
    """A message or dm frame as history gives it back: marked, so a client can
    tell it from live traffic."""
    return {**frame, "history": True}


def history(messages: list[dict[str, Any]], more: bool,
            re_: RequestId = None) -> dict[str, Any]:
    return _with_re({"type": "history", "messages": messages, "more": more}, re_)


def join(username: str, role: str) -> dict[str, Any]:
    return {"type": "join", "username": username, "role": role}


def leave(username: str, reason: str) -> dict[str, Any]:
    return {"type": "leave", "username": username, "reason": reason}


def who(users: list[dict[str, str]], re_: RequestId = None) -> dict[str, Any]:
    return _with_re({"type": "who", "users": users}, re_)


def pong(re_: RequestId = None) -> dict[str, Any]:
    return _with_re({"type": "pong"}, re_)


def ping() -> dict[str, Any]:
    return {"type": "ping"}
