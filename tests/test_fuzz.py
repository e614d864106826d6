"""Property-based tests of the sans-I/O protocol: whatever bytes arrive, split
wherever the network splits them, the decoder and the handshake state machine
answer only with documented errors and never accept more than the frame limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from authchat import protocol
from authchat.errors import ErrorCode
from authchat.protocol import (
    ACCEPTS,
    MAX_AUTH_FAILURES,
    MAX_PREAUTH_FRAMES,
    FrameDecoder,
    ProtocolError,
    Request,
    ServerProtocol,
    State,
    Violation,
)

from helpers import DOCUMENTED_CODES  # a violation with any other code is a bug

REQUEST_TYPES = {cls.__name__.lower(): cls for cls in Request.__subclasses__()}
SMALL_LIMIT = 256  # a low frame limit, so that examples reach it often

# A noisy shared machine: examples are judged by what they do, not how fast.
fuzz_settings = settings(max_examples=300, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
# Frames that look like requests, with fields of every type and content.
frame_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(REQUEST_TYPES) + ["fly", ""]) | json_scalars},
    optional={key: json_values | st.text() for key in
              ("id", "username", "password", "text", "to", "old", "new", "reason", "invite")})
frame_lines = frame_objects.map(lambda frame: json.dumps(frame).encode())
# Bytes a client might send: garbage, near-JSON and real frames, in any order.
chunks = st.lists(
    st.binary(max_size=64)
    | frame_lines.map(lambda line: line + b"\n")
    | st.sampled_from([b"\n", b"\r\n", b"{", b"[" * 2000, b"\xff\xfe", b"\xc0\xaf", b"NaN"]),
    max_size=12)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def drain(proto: ServerProtocol, pieces: list[bytes]) -> list[protocol.Event]:
    found = []
    for piece in pieces:
        proto.receive_data(piece)
        while (event := proto.next_event()) is not None:
            found.append(event)
    return found


def check_event(event: protocol.Event) -> None:
    """A well-formed event: a validated request, or a violation with a documented code."""
    if isinstance(event, Violation):
        assert event.code in DOCUMENTED_CODES, event
        assert isinstance(event.message, str) and event.message
    else:
        assert isinstance(event, Request), event


def test_the_documented_codes_were_found() -> None:
    assert {"bad_frame", "frame_too_large", "auth_required", "server_shutdown"} <= DOCUMENTED_CODES
    assert {code.value for code in ErrorCode} <= DOCUMENTED_CODES


@fuzz_settings
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_split_anywhere_give_only_documented_events(data: bytes,
                                                             cuts: list[int]) -> None:
    for state in (State.AWAIT_AUTH, State.CHAT):
        proto = ServerProtocol(max_frame_bytes=SMALL_LIMIT)
        if state is State.CHAT:
            proto.authenticated()
        for event in drain(proto, split_at(data, cuts)):
            check_event(event)


@fuzz_settings
@given(pieces=chunks, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_split_points_never_change_the_events(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    whole = drain(_chatting(SMALL_LIMIT), [data])
    assert drain(_chatting(SMALL_LIMIT), split_at(data, cuts)) == whole
    for event in whole:
        check_event(event)


def _chatting(limit: int) -> ServerProtocol:
    proto = ServerProtocol(max_frame_bytes=limit)
    proto.authenticated()
    return proto


@fuzz_settings
@given(pieces=chunks, limit=st.integers(min_value=1, max_value=SMALL_LIMIT))
def test_no_line_over_the_limit_is_ever_accepted(pieces: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=limit)
    for piece in pieces:
        decoder.receive_data(piece)
        try:
            while (line := decoder.next_line()) is not None:
                assert len(line) <= limit
        except ProtocolError as e:
            assert e.code is ErrorCode.FRAME_TOO_LARGE and e.fatal
            return  # the framing is lost; the connection closes here
        # An unfinished line is held only up to the limit (plus the last read).
        assert decoder.buffered <= limit + len(piece)


@fuzz_settings
@given(pieces=chunks)
def test_a_fatal_violation_is_the_last_event(pieces: list[bytes]) -> None:
    proto = ServerProtocol(max_frame_bytes=SMALL_LIMIT)
    found = drain(proto, pieces)
    fatal = [i for i, event in enumerate(found) if isinstance(event, Violation) and event.fatal]
    if fatal:
        assert fatal == [len(found) - 1] and proto.state is State.CLOSED
        assert drain(proto, [b'{"type":"ping"}\n']) == []


@fuzz_settings
@given(frame=st.dictionaries(st.text(), json_values, max_size=6))
def test_encoding_a_frame_and_decoding_it_round_trips(frame: dict[str, Any]) -> None:
    line = protocol.encode(frame)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one frame is one line
    if depth(frame) <= protocol.MAX_NESTING:
        assert protocol.decode_frame(line[:-1]) == frame
    else:  # deeper than any frame of the protocol: refused before it is decoded
        with pytest.raises(ProtocolError, match="nests deeper"):
            protocol.decode_frame(line[:-1])


def depth(value: Any) -> int:
    """How deeply lists and dicts nest in `value`, counted the obvious way."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@fuzz_settings
@given(line=st.binary(max_size=512) | frame_lines)
def test_a_decoded_frame_re_encodes_to_an_equal_frame(line: bytes) -> None:
    try:
        frame = protocol.decode_frame(line)
    except ProtocolError as e:
        assert e.code is ErrorCode.BAD_FRAME
        return
    assert protocol.decode_frame(protocol.encode(frame)[:-1]) == frame


@fuzz_settings
@given(frame=frame_objects)
def test_accepted_requests_hold_only_valid_fields(frame: dict[str, Any]) -> None:
    try:
        request = protocol.parse_request(frame, max_text_length=2000)
    except ProtocolError as e:
        assert e.code.value in DOCUMENTED_CODES
        return
    assert type(request) is REQUEST_TYPES[frame["type"]]
    for name, value in vars(request).items():
        if isinstance(value, str) and name not in ("password", "invite", "old", "new"):
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", value), name
            value.encode("utf-8")  # no lone surrogate reaches the room or the store


class Handshake(RuleBasedStateMachine):
    """The connection's state table, driven by arbitrary frames and auth outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.proto = ServerProtocol()
        self.preauth_frames = 0
        self.failures = 0
        self.closed = False

    @rule(line=frame_lines | st.binary(max_size=80).filter(lambda b: b"\n" not in b))
    def send_frame(self, line: bytes) -> None:
        counted = self.proto.state is State.AWAIT_AUTH and bool(line.strip())
        found = drain(self.proto, [line + b"\n"])
        if self.closed:
            assert found == []
            return
        if counted:
            self.preauth_frames += 1
        for event in found:
            check_event(event)
            if isinstance(event, Request):
                kind = type(event).__name__.lower()
                assert kind in ACCEPTS[self.proto.state], (kind, self.proto.state)
            elif event.fatal:
                self.closed = True
        if self.preauth_frames > MAX_PREAUTH_FRAMES and not self.authenticated:
            assert self.proto.state is State.CLOSED

    @property
    def authenticated(self) -> bool:
        return self.proto.state is State.CHAT

    @precondition(lambda self: self.proto.state is State.AWAIT_AUTH)
    @rule()
    def log_in(self) -> None:
        self.proto.authenticated()

    @precondition(lambda self: self.proto.state is State.AWAIT_AUTH)
    @rule()
    def fail_to_log_in(self) -> None:
        self.failures += 1
        closes = self.proto.auth_failed()
        assert closes == (self.failures >= MAX_AUTH_FAILURES)
        self.closed = self.closed or closes

    @invariant()
    def closed_means_closed(self) -> None:
        assert (self.proto.state is State.CLOSED) == self.closed


Handshake.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
TestHandshake = Handshake.TestCase
