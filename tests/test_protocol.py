"""The wire protocol without sockets: bytes in, events out."""

from __future__ import annotations

import json

import pytest

from authchat import protocol
from authchat.errors import ErrorCode
from authchat.protocol import (
    FrameDecoder,
    Login,
    Ping,
    ProtocolError,
    Register,
    Say,
    ServerProtocol,
    State,
    Violation,
)


def events(proto: ServerProtocol, data: bytes) -> list[protocol.Event]:
    proto.receive_data(data)
    found = []
    while (event := proto.next_event()) is not None:
        found.append(event)
    return found


def logged_in_protocol(**kwargs: int) -> ServerProtocol:
    proto = ServerProtocol(**kwargs)
    proto.authenticated()
    return proto


def test_frames_split_at_every_byte_boundary() -> None:
    data = b'{"type":"login","username":"alice","password":"p w","id":1}\r\n{"type":"ping"}\n'
    for cut in range(len(data) + 1):
        proto = ServerProtocol()
        got = events(proto, data[:cut]) + events(proto, data[cut:])
        assert got == [Login(1, "alice", "p w"), Ping(None)], cut


def test_one_byte_at_a_time() -> None:
    proto = ServerProtocol()
    got = []
    for byte in b'{"type":"ping","id":"a"}\n\n\n{"type":"quit"}\n':
        got += events(proto, bytes([byte]))
    assert [type(e).__name__ for e in got] == ["Ping", "Quit"]  # blank lines are ignored


def test_frame_size_limit_is_exact() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    decoder.receive_data(b"x" * 100 + b"\n")
    assert decoder.next_line() == b"x" * 100
    decoder.receive_data(b"y" * 100 + b"\r\n")  # the \r is not counted
    assert decoder.next_line() == b"y" * 100
    decoder.receive_data(b"z" * 101 + b"\n")
    with pytest.raises(ProtocolError) as info:
        decoder.next_line()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE and info.value.fatal


def test_unterminated_line_never_buffers_past_the_limit() -> None:
    proto = ServerProtocol(max_frame_bytes=1024)
    assert events(proto, b"x" * 1024) == []
    (violation,) = events(proto, b"x")
    assert violation == Violation(ErrorCode.FRAME_TOO_LARGE, "frame longer than 1024 bytes",
                                  None, True)
    assert proto.state is State.CLOSED
    assert events(proto, b'{"type":"ping"}\n') == []  # nothing after a fatal error


@pytest.mark.parametrize("line, code", [
    (b"\xff\xfe", ErrorCode.BAD_FRAME),
    (b"\xc0\xaf", ErrorCode.BAD_FRAME),
    (b"{", ErrorCode.BAD_FRAME),
    (b"[" * 16_000, ErrorCode.BAD_FRAME),
    (b"[]", ErrorCode.BAD_FRAME),
    (b'"ping"', ErrorCode.BAD_FRAME),
    (b'{"type":"say","text":NaN}', ErrorCode.BAD_FRAME),
    (b'{"type":"say","text":Infinity}', ErrorCode.BAD_FRAME),
    (b'{"type":"say","text":' + b"1" * 5000 + b"}", ErrorCode.BAD_FRAME),
    (b'{"type":null}', ErrorCode.BAD_REQUEST),
    (b'{"type":"fly"}', ErrorCode.UNKNOWN_TYPE),
    (b'{"type":"say","text":"a\\u0000b"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"say","text":"\\u009b31m"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"say","text":"\\udc00"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"say","text":""}', ErrorCode.BAD_REQUEST),
    (b'{"type":"say","text":["a"]}', ErrorCode.BAD_REQUEST),
    (b'{"type":"dm","text":"hi"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"dm","to":"bo\\nb","text":"hi"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"kick","username":"bob","reason":5}', ErrorCode.BAD_REQUEST),
    (b'{"type":"passwd","old":"a"}', ErrorCode.BAD_REQUEST),
    (b'{"type":"ping","id":true}', ErrorCode.BAD_REQUEST),
    (b'{"type":"ping","id":1.5}', ErrorCode.BAD_REQUEST),
    (b'{"type":"ping","id":9007199254740992}', ErrorCode.BAD_REQUEST),
    (b'{"type":"ping","id":"' + b"i" * 65 + b'"}', ErrorCode.BAD_REQUEST),
])
def test_bad_frames_are_violations_not_exceptions(line: bytes, code: ErrorCode) -> None:
    proto = logged_in_protocol()
    (violation,) = events(proto, line + b"\n")
    assert isinstance(violation, Violation) and violation.code is code
    assert not violation.fatal and proto.state is State.CHAT
    assert events(proto, b'{"type":"ping"}\n') == [Ping(None)]


@pytest.mark.parametrize("line", [
    b"[" * 8000,
    b'{"type":"say","text":"hi","x":[[[1]]]}',
    b'{"type":"ping","x":{"y":{"z":{}}}}',
])
def test_frames_nested_deeper_than_any_valid_one_are_refused_before_decoding(
        line: bytes) -> None:
    [violation] = events(logged_in_protocol(), line + b"\n")
    assert violation == Violation(ErrorCode.BAD_FRAME, "frame nests deeper than 3 levels")


def test_nesting_counts_brackets_outside_strings_only() -> None:
    text = '[[[{{{ \\" [[[[ \\\\'
    frame = json.dumps({"type": "say", "text": text}).encode()
    assert events(logged_in_protocol(), frame + b"\n") == [Say(None, text.strip())]
    history_page = b'{"type":"history","messages":[{"type":"message","id":1}],"more":false}'
    assert not protocol.nests_deeper_than(history_page, protocol.MAX_NESTING)
    assert protocol.nests_deeper_than(b'{"a":[{"b":[]}]}', 3)
    # Quotes and backslashes however they fall: escaped quotes to the end, a
    # string left open, a backslash last.
    assert protocol.nests_deeper_than(b'[[[["' + b'\\"' * 8000, 3)
    assert not protocol.nests_deeper_than(b'[[["' + b'\\"' * 8000 + b"[[[[", 3)
    assert not protocol.nests_deeper_than(b'[["[[[[[[\\', 3)
    assert protocol.nests_deeper_than(b'["\\\\"[[[', 3)  # an escaped backslash leaves the quote after it to close the string


def test_violations_carry_the_request_id_when_there_is_one() -> None:
    proto = logged_in_protocol()
    (violation,) = events(proto, b'{"type":"fly","id":"x1"}\n')
    assert violation.re == "x1"


def test_text_is_stripped_and_bounded_in_code_points() -> None:
    proto = logged_in_protocol(max_text_length=5)
    assert events(proto, '{"type":"say","text":"  é\\té\\n "}\n'.encode()) == [Say(None, "é\té")]
    assert events(proto, '{"type":"say","text":"ééééé"}\n'.encode()) == [Say(None, "ééééé")]
    (too_long,) = events(proto, '{"type":"say","text":"éééééé"}\n'.encode())
    assert too_long.code is ErrorCode.TEXT_TOO_LONG


def test_passwords_may_hold_any_character() -> None:
    proto = ServerProtocol()
    frame = {"type": "register", "username": "alice", "password": "tab\there\u202e"}
    assert events(proto, protocol.encode(frame)) == [
        Register(None, "alice", "tab\there\u202e", None)]


def test_session_requests_and_flag() -> None:
    proto = ServerProtocol()
    token = "t" * 43
    found = events(proto, protocol.encode({"type": "resume", "token": token, "id": 1})
                   + protocol.encode({"type": "login", "username": "a", "password": "b",
                                      "session": True})
                   + protocol.encode({"type": "login", "username": "a", "password": "b",
                                      "session": False})
                   + protocol.encode({"type": "login", "username": "a", "password": "b",
                                      "session": "yes"})
                   + protocol.encode({"type": "resume", "token": "t" * 129}))
    assert found[:3] == [protocol.Resume(1, token), Login(None, "a", "b", True),
                         Login(None, "a", "b", None)]
    assert [v.code for v in found[3:]] == [ErrorCode.BAD_REQUEST] * 2  # type: ignore[union-attr]
    (logout,) = events(logged_in_protocol(), b'{"type":"logout","id":"x"}\n')
    assert logout == protocol.Logout("x")


def test_no_credential_shows_in_a_requests_repr() -> None:
    secrets = ("pass-one", "pass-two", "invite-code", "token-value")
    requests = [Login(1, "alice", secrets[0], True),
                Register(2, "bob", secrets[1], secrets[2]),
                protocol.Passwd(3, secrets[0], secrets[1]),
                protocol.Resume(4, secrets[3])]
    shown = repr(requests)
    assert "alice" in shown and not any(secret in shown for secret in secrets)
    assert requests[0].to_frame()["password"] == secrets[0]  # the wire still has it


def test_state_table_before_login() -> None:
    proto = ServerProtocol()
    for kind in ("say", "dm", "who", "passwd", "kick", "ban", "pong", "logout"):
        (violation,) = events(proto, protocol.encode({"type": kind}))
        assert violation.code is ErrorCode.AUTH_REQUIRED, kind
    (unknown,) = events(proto, b'{"type":"fly"}\n')
    assert unknown.code is ErrorCode.UNKNOWN_TYPE
    assert proto.state is State.AWAIT_AUTH


def test_state_table_after_login() -> None:
    proto = logged_in_protocol()
    for kind in ("login", "register", "resume"):
        (violation,) = events(proto, protocol.encode(
            {"type": kind, "username": "a", "password": "b", "token": "c"}))
        assert violation.code is ErrorCode.BAD_REQUEST
    with pytest.raises(RuntimeError):
        proto.authenticated()  # our bug, not the peer's: raise loudly


def test_three_failed_attempts_close() -> None:
    proto = ServerProtocol()
    assert proto.auth_failed() is False
    assert proto.auth_failed() is False
    assert proto.auth_failed() is True
    assert proto.state is State.CLOSED


def test_at_most_ten_frames_before_login() -> None:
    proto = ServerProtocol()
    assert len(events(proto, b'{"type":"ping"}\n' * 10)) == 10
    (violation,) = events(proto, b'{"type":"ping"}\n')
    assert violation.fatal and violation.code is ErrorCode.AUTH_REQUIRED


def test_encode_round_trips_and_is_one_line() -> None:
    frame = protocol.Message(7, "alice", "line one\nline two \u202e é 🔥",
                             "2026-01-01T00:00:00.000Z").to_frame()
    data = protocol.encode(frame)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == frame
    assert protocol.decode_frame(data.rstrip(b"\n")) == frame


def test_server_frames() -> None:
    assert protocol.ErrorReply(ErrorCode.RATE_LIMITED, "slow", re=3,
                               retry_after=1.23456).to_frame() == {
        "type": "error", "code": "rate_limited", "message": "slow", "re": 3, "retry_after": 1.235}
    assert protocol.Welcome("a", "user", ("a",)).to_frame() == {
        "type": "welcome", "username": "a", "role": "user", "users": ["a"]}
    assert protocol.timestamp().endswith("Z") and len(protocol.timestamp()) == 24


def test_message_template_splices_to_the_encoded_frame() -> None:
    head, tail = protocol.message_template("alice", 'say "hi"\n\u00e9', "2026-11-28T05:00:00.000Z")
    event = protocol.Message(42, "alice", 'say "hi"\n\u00e9', "2026-11-28T05:00:00.000Z")
    assert head + b"42" + tail == protocol.encode_event(event)
