"""Both sides of the protocol without a socket: every server event and every
request survives encode -> bytes -> parse unchanged, and a client's parser
refuses what is not a frame of this protocol."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authchat import protocol
from authchat.errors import ErrorCode
from authchat.protocol import (
    ClientProtocol,
    DirectMessage,
    ErrorReply,
    Hello,
    HistoryPage,
    Join,
    Leave,
    Message,
    Ok,
    OnlineUser,
    PongReply,
    ProtocolError,
    ServerPing,
    ServerProtocol,
    UnknownEvent,
    Welcome,
    WhoList,
)

MAX_TEXT = 2000

# What the server can put in a frame: any text but lone surrogates, which
# have no UTF-8 (the server refuses them in everything it is sent).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# What the server validates before relaying: no control characters.
field_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=64)
ids = st.integers(0, protocol.MAX_SAFE_INTEGER)
request_ids = st.none() | st.integers(-protocol.MAX_SAFE_INTEGER, protocol.MAX_SAFE_INTEGER) \
    | field_text
timestamps = st.datetimes().map(lambda moment: protocol.timestamp(moment))

messages = st.builds(Message, ids, field_text, any_text, timestamps, st.booleans())
direct_messages = st.builds(DirectMessage, ids, field_text, field_text, any_text, timestamps,
                            st.booleans())
server_events = st.one_of(
    st.builds(Hello, any_text, st.sampled_from(["open", "invite", "closed"]), st.booleans(),
              st.none() | st.integers(8, 1024), st.integers(1, 9)),
    st.builds(Welcome, field_text, st.sampled_from(["user", "admin"]),
              st.lists(field_text, max_size=5).map(tuple), request_ids),
    st.builds(ErrorReply, st.sampled_from(list(ErrorCode)) | field_text, any_text, request_ids,
              st.none() | st.floats(0, 86400, allow_nan=False)),
    st.builds(Ok, request_ids, st.none() | ids, st.booleans()),
    messages,
    direct_messages,
    st.builds(HistoryPage, st.lists(messages | direct_messages, max_size=4).map(tuple),
              st.booleans(), request_ids),
    st.builds(Join, field_text, st.sampled_from(["user", "admin"])),
    st.builds(Leave, field_text, field_text),
    st.builds(WhoList, st.lists(st.builds(OnlineUser, field_text, field_text),
                                max_size=4).map(tuple), request_ids),
    st.builds(PongReply, request_ids),
    st.just(ServerPing()),
)


def parsed(data: bytes, chunk: int = 0) -> list[protocol.ServerEvent]:
    """What a client's protocol makes of `data`, fed `chunk` bytes at a time (all at once: 0)."""
    proto = ClientProtocol()
    found = []
    for start in range(0, len(data), chunk or len(data) or 1):
        proto.receive_data(data[start:start + (chunk or len(data))])
        while (event := proto.next_event()) is not None:
            found.append(event)
    return found


@settings(max_examples=300)
@given(server_events, st.integers(0, 7))
def test_every_server_event_round_trips(event: protocol.OutgoingEvent, chunk: int) -> None:
    data = protocol.encode_event(event)
    assert data.count(b"\n") == 1
    assert parsed(data + b"\r\n" + data, chunk) == [event, event]  # a blank line is no frame


# A request as a client builds it, valid as the server requires (text
# stripped, within the limits), for the state the server accepts it in.
stripped = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                   max_size=60).map(str.strip).filter(bool)
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64)
secrets = st.text(st.characters(blacklist_categories=("Cs",)), max_size=100)
login_requests = st.one_of(
    st.builds(protocol.Login, request_ids, names, secrets),
    st.builds(protocol.Register, request_ids, names, secrets, st.none() | secrets),
)
chat_requests = st.one_of(
    st.builds(protocol.Say, request_ids, stripped),
    st.builds(protocol.Dm, request_ids, names, stripped),
    st.builds(protocol.History, request_ids, st.none() | st.integers(1, protocol.MAX_SAFE_INTEGER),
              st.integers(1, protocol.MAX_HISTORY_PAGE), st.none() | names),
    st.builds(protocol.Passwd, request_ids, secrets, secrets),
    st.builds(protocol.Kick, request_ids, names, stripped | st.just("")),
    st.builds(protocol.Ban, request_ids, names, st.just("")),
    st.builds(protocol.Who, request_ids),
    st.builds(protocol.Ping, request_ids),
    st.builds(protocol.Pong, request_ids),
    st.builds(protocol.Quit, request_ids),
)


def served(request: protocol.Request, logged_in: bool) -> list[protocol.Event]:
    proto = ServerProtocol(max_text_length=MAX_TEXT)
    if logged_in:
        proto.authenticated()
    proto.receive_data(ClientProtocol.send(request))
    found = []
    while (event := proto.next_event()) is not None:
        found.append(event)
    return found


@settings(max_examples=300)
@given(login_requests)
def test_every_login_request_round_trips(request: protocol.Request) -> None:
    assert served(request, logged_in=False) == [request]


@settings(max_examples=300)
@given(chat_requests)
def test_every_chat_request_round_trips(request: protocol.Request) -> None:
    assert served(request, logged_in=True) == [request]


def test_a_newer_servers_frame_is_passed_on_as_unknown() -> None:
    (event,) = parsed(b'{"type":"typing","username":"bob"}\n')
    assert isinstance(event, UnknownEvent) and event.kind == "typing"
    # A newer reply type still names the request it answers.
    (reply,) = parsed(b'{"type":"receipt","re":"c7"}\n')
    assert isinstance(reply, UnknownEvent) and reply.re == "c7"


def test_fields_a_newer_server_adds_are_ignored() -> None:
    line = b'{"type":"join","username":"bob","role":"user","away":true}'
    (event,) = parsed(line + b"\n")
    assert event == Join("bob", "user")
    assert isinstance(event, Join) and event.received == json.loads(line)  # kept as it came


def test_an_older_servers_join_says_no_role() -> None:
    (event,) = parsed(b'{"type":"join","username":"bob"}\n')
    assert event == Join("bob", "")


def test_an_older_servers_hello_has_no_password_rule() -> None:
    (event,) = parsed(b'{"type":"hello","protocol":1,"server":"authchat/0.0.9",'
                      b'"registration":"open","tls":true}\n')
    assert isinstance(event, Hello) and event.min_password_length is None


@pytest.mark.parametrize("line, complaint", [
    (b'{"type":"message","id":"7","from":"a","text":"t","ts":"x"}', "'id' must be a whole number"),
    (b'{"type":"message","id":true,"from":"a","text":"t","ts":"x"}', "'id' must be a whole number"),
    (b'{"type":"welcome","username":"a","role":"user","users":[1]}', "list of strings"),
    (b'{"type":"history","messages":[{"type":"join"}],"more":false}', "only messages and DMs"),
    (b'{"type":"error","message":"no code"}', "'code' must be a string"),
    (b'{"type":"error","code":"x","retry_after":true}', "'retry_after' must be a number"),
    (b'{"no":"type"}', "without a type"),
    (b'[1,2]', "not a JSON object"),
])
def test_a_malformed_server_frame_is_a_protocol_error(line: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(complaint)) as caught:
        parsed(line + b"\n")
    assert caught.value.code is ErrorCode.BAD_FRAME


def test_a_server_line_past_the_clients_bound_is_refused() -> None:
    proto = ClientProtocol(max_frame_bytes=64)
    proto.receive_data(b'{"type":"message","text":"' + b"x" * 100)
    with pytest.raises(ProtocolError) as caught:
        proto.next_event()
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
