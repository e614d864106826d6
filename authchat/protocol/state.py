"""Each side's protocol object for one connection: framing, parsing and the
state table, with no I/O. The server's turns bytes into validated requests;
the client's turns bytes into typed server events.

The state table (`ACCEPTS`): before authentication only register, login, resume,
ping and quit are accepted (anything else known is `auth_required`); after it, the
chat requests. `ServerProtocol.authenticated()` is the only way from one state
to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import ErrorCode
from .events import ServerEvent, parse_event
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    ProtocolError,
    decode_frame,
    encode,
)
from .requests import Request, RequestId, parse_request, request_id

MAX_AUTH_FAILURES = 3      # failed register/login/resume attempts before the connection closes
MAX_PREAUTH_FRAMES = 10    # frames a client may send before it has logged in
# What a client holds of one server frame: they are small, this only bounds a rogue one.
MAX_SERVER_FRAME_BYTES = 1024 * 1024


class State(Enum):
    AWAIT_AUTH = "await_auth"
    CHAT = "chat"
    CLOSED = "closed"


@dataclass(frozen=True)
class Violation:
    """A frame the server must refuse: answer with `code`; close if `fatal`."""

    code: ErrorCode
    message: str
    re: RequestId = None
    fatal: bool = False


Event = Request | Violation

ACCEPTS: dict[State, frozenset[str]] = {
    State.AWAIT_AUTH: frozenset({"register", "login", "resume", "ping", "quit"}),
    State.CHAT: frozenset({"say", "dm", "who", "ping", "pong", "passwd", "quit", "logout",
                           "kick", "ban", "history"}),
    State.CLOSED: frozenset(),
}
KNOWN_TYPES = ACCEPTS[State.AWAIT_AUTH] | ACCEPTS[State.CHAT]


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
        frame: Frame = {}
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
        """Count a failed register/login/resume; True once the connection must close."""
        self._auth_failures += 1
        if self._auth_failures >= MAX_AUTH_FAILURES:
            self.state = State.CLOSED
            return True
        return False


# -- the client's side of a connection ---------------------------------------

class ClientProtocol:
    """Framing and parsing of what a server sends, for one connection:

        proto.receive_data(data)
        while (event := proto.next_event()) is not None:
            ...  # a typed server event

    and `send(request)` for the bytes of a request.
    """

    def __init__(self, max_frame_bytes: int = MAX_SERVER_FRAME_BYTES) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> ServerEvent | None:
        """The next server event, or None when more data is needed.

        Raises:
            ProtocolError: the server sent a line that is not a frame of this
                protocol (too long, not JSON, a known type malformed).
        """
        while (line := self._decoder.next_line()) is not None:
            if line.strip():  # blank lines are keep-alives, not frames
                return parse_event(decode_frame(line))
        return None

    @staticmethod
    def send(request: Request) -> bytes:
        return encode(request.to_frame())
