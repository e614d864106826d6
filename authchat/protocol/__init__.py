"""Wire protocol v1, sans-I/O, for both sides: bytes in, typed events out.

Theory of operation
-------------------
A frame is one JSON object per line (framing.py). Every frame a client sends
is a request (requests.py), every frame the server sends an event
(events.py): frozen dataclasses, each with one encoder (`to_frame`) and one
parser, so both sides read and write the same shapes. Each side drives one
protocol object per connection (state.py), h11-style:

    proto.receive_data(data)
    while (event := proto.next_event()) is not None:
        ...

`ServerProtocol` gives validated requests and enforces the handshake's state
table; what it cannot accept comes out as a `Violation` carrying the wire
error code, never as an exception, so the server has one loop.
`ClientProtocol` gives typed server events, and raises `ProtocolError` for a
server that does not speak this protocol (there is nothing to answer it).

Rule 1: nothing here does I/O, reads a clock (but `timestamp`, the format's
own helper, which timestamps.py owns and this package re-exports) or touches
the store; the server and the clients own those.
Rule 2: every request that reaches the server, and every event that reaches
a client, has passed validation here, so neither re-checks field types.

This package imports no socket, ssl, threading, sqlite3, bcrypt or click.
"""

from ..timestamps import timestamp  # re-exported: the form every `ts` field carries
from .events import (
    PROTOCOL_VERSION,
    DirectMessage,
    ErrorReply,
    Hello,
    HistoryPage,
    Join,
    Leave,
    Message,
    Ok,
    OnlineUser,
    OutgoingEvent,
    PongReply,
    Received,
    Said,
    ServerEvent,
    ServerPing,
    UnknownEvent,
    Welcome,
    WhoList,
    encode_event,
    message_template,
    parse_event,
)
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_NESTING,
    Frame,
    FrameDecoder,
    ProtocolError,
    decode_frame,
    encode,
    nests_deeper_than,
)
from .requests import (
    MAX_HISTORY_PAGE,
    MAX_ID_LENGTH,
    MAX_NAME_FIELD,
    MAX_REASON_LENGTH,
    MAX_SAFE_INTEGER,
    MAX_SECRET_FIELD,
    MAX_TOKEN_FIELD,
    Ban,
    Dm,
    History,
    Kick,
    Login,
    Logout,
    Passwd,
    Ping,
    Pong,
    Quit,
    Register,
    Request,
    RequestId,
    Resume,
    Say,
    Who,
    clean_text,
    parse_request,
    request_id,
)
from .state import (
    ACCEPTS,
    KNOWN_TYPES,
    MAX_AUTH_FAILURES,
    MAX_PREAUTH_FRAMES,
    MAX_SERVER_FRAME_BYTES,
    ClientProtocol,
    Event,
    ServerProtocol,
    State,
    Violation,
)

__all__ = [
    "ACCEPTS",
    "DEFAULT_MAX_FRAME_BYTES",
    "KNOWN_TYPES",
    "MAX_AUTH_FAILURES",
    "MAX_HISTORY_PAGE",
    "MAX_ID_LENGTH",
    "MAX_NAME_FIELD",
    "MAX_NESTING",
    "MAX_PREAUTH_FRAMES",
    "MAX_REASON_LENGTH",
    "MAX_SAFE_INTEGER",
    "MAX_SECRET_FIELD",
    "MAX_SERVER_FRAME_BYTES",
    "MAX_TOKEN_FIELD",
    "PROTOCOL_VERSION",
    "Ban",
    "ClientProtocol",
    "DirectMessage",
    "Dm",
    "ErrorReply",
    "Event",
    "Frame",
    "FrameDecoder",
    "Hello",
    "History",
    "HistoryPage",
    "Join",
    "Kick",
    "Leave",
    "Login",
    "Logout",
    "Message",
    "Ok",
    "OnlineUser",
    "OutgoingEvent",
    "Passwd",
    "Ping",
    "Pong",
    "PongReply",
    "ProtocolError",
    "Quit",
    "Received",
    "Register",
    "Request",
    "RequestId",
    "Resume",
    "Said",
    "Say",
    "ServerEvent",
    "ServerPing",
    "ServerProtocol",
    "State",
    "UnknownEvent",
    "Violation",
    "Welcome",
    "Who",
    "WhoList",
    "clean_text",
    "decode_frame",
    "encode",
    "encode_event",
    "message_template",
    "nests_deeper_than",
    "parse_event",
    "parse_request",
    "request_id",
    "timestamp",
]
