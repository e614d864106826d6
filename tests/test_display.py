"""How events read on a terminal, and what typed lines mean."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from authchat.client import Notice
from authchat.client.commands import Local, Mistake, Send, parse
from authchat.client.display import plain, render
from authchat.client.script import Printer
from authchat.protocol import Message, ProtocolError, ServerEvent, parse_event
from authchat.sanitize import escape, escape_json


def event(frame: dict[str, Any]) -> ServerEvent:
    """The event a client gets from this frame: through the protocol's own parser."""
    return parse_event(frame)


def message(sender: str, text: str) -> Message:
    return Message(1, sender, text, "2026-11-24T10:00:00.000Z")


def sent(line: str, talking_to: str | None = None) -> dict[str, Any] | None:
    """The frame that a typed line sends, as it goes on the wire; None if it sends none."""
    command = parse(line, talking_to)
    return command.request.to_frame() if isinstance(command, Send) else None


def test_no_escape_sequence_reaches_the_terminal() -> None:
    hostile = message("mallory\x1b[2J", "\x1b]0;pwned\x07 \u202eevil\u202c \x9b31m")
    line = plain(render(hostile, "alice"))
    assert not any(ch in line for ch in "\x1b\x07\x9b\u202e\u202c")
    assert "\\x1b]0;pwned\\x07" in line and "\\u202eevil" in line


# Zero-width and other invisible characters: text holding them looks like
# text without them (a name, a link, a command to copy) but is not.
INVISIBLE = "\u00ad\u180e\u200b\u2060\u2061\u2062\u2063\u2064\u206a\ufeff"
JOINERS = "\u200c\u200d"


def test_invisible_characters_are_shown_as_escapes() -> None:
    text = "pay" + "pal ".join(INVISIBLE)
    line = plain(render(message("bob", text), "alice"))
    assert not any(ch in line for ch in INVISIBLE), ascii(line)
    assert "pay\\xadpal" in line and "\\u200bpal" in line and "\\ufeff" in line
    out = io.StringIO()
    Printer(out, as_json=True, me="alice")(message("bob", text))  # `connect --json`
    assert not any(ch in out.getvalue() for ch in INVISIBLE)
    assert json.loads(out.getvalue())["text"] == text


def test_emoji_sequences_and_joined_spellings_stay_whole_in_messages() -> None:
    woman_at_a_laptop = "\U0001f469\u200d\U0001f4bb"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want", with a ZWNJ
    line = plain(render(message("bob", f"{woman_at_a_laptop} {persian}"), "alice"))
    assert woman_at_a_laptop in line and persian in line
    # A line of its own, such as a name or a log line, still shows them.
    assert escape(f"bob{JOINERS}") == "bob\\u200c\\u200d"


def test_multi_line_messages_stay_readable() -> None:
    line = plain(render(message("bob", "first\nsecond"), "alice"))
    first, second = line.split("\n")
    assert first.endswith("<bob> first")
    assert second.strip() == "second" and second.index("s") == first.index("f")


def test_own_messages_dms_presence_and_notices_look_different() -> None:
    own = render(message("Alice", "mine"), "alice")
    other = render(message("bob", "theirs"), "alice")
    assert ("class:own", "<Alice> ") in own and ("class:sender", "<bob> ") in other
    dm = render(event({"type": "dm", "id": 2, "from": "bob", "to": "alice", "text": "psst",
                       "ts": "2026-11-24T10:00:00Z"}), "alice")
    assert dm[1] == ("class:dm", "[bob -> alice] ")
    assert render(event({"type": "join", "username": "bob", "role": "user"}), "alice") == [
        ("class:presence", "--> bob joined")]
    assert render(event({"type": "leave", "username": "bob", "reason": "quit"}), "alice") == [
        ("class:presence", "<-- bob left (quit)")]
    assert render(Notice("lost", "connection lost"), "alice") == [
        ("class:notice", "*** connection lost")]
    error = plain(render(event({"type": "error", "code": "kicked",
                                "message": "kicked by root"}), "a"))
    assert error == "!!! you were removed from the server (kicked by root)"
    assert render(event({"type": "something_new"}), "alice") == []


def test_parse_typed_lines() -> None:
    assert sent("hello") == {"type": "say", "text": "hello"}
    assert parse("   ") is None
    assert sent("//etc/motd") == {"type": "say", "text": "/etc/motd"}
    assert sent("/who") == {"type": "who"}
    assert sent("/DM bob hi there") == {"type": "dm", "to": "bob", "text": "hi there"}
    assert sent("/msg bob hi") == {"type": "dm", "to": "bob", "text": "hi"}
    assert sent("/kick bob too loud") == \
        {"type": "kick", "username": "bob", "reason": "too loud"}
    assert sent("/ban bob") == {"type": "ban", "username": "bob", "reason": ""}
    assert parse("/quit") == Local("quit") and parse("/passwd") == Local("passwd")
    assert isinstance(parse("/dm bob"), Mistake)
    unknown = parse("/frobnicate now")
    assert isinstance(unknown, Mistake) and "/help" in unknown.hint


def test_lines_typed_in_a_private_conversation_go_to_that_person() -> None:
    assert sent("hi", talking_to="bob") == {"type": "dm", "to": "bob", "text": "hi"}
    assert sent("//etc", talking_to="bob") == {"type": "dm", "to": "bob", "text": "/etc"}
    assert sent("/who", talking_to="bob") == {"type": "who"}
    assert sent("/dm carol x", talking_to="bob") == {"type": "dm", "to": "carol", "text": "x"}


def test_json_output_escapes_what_a_terminal_would_act_on() -> None:
    frame = {"type": "message", "id": 1, "from": "bob",
             "text": "a\u202eb\u2028c\x9b31m\x7f\ud800\n\t\u200f", "ts": "2026-11-24T10:00:00Z"}
    raw = json.dumps(frame, ensure_ascii=False)
    safe = escape_json(raw)
    assert json.loads(safe) == frame  # the same value, decoded
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u202e\ud800\u200f]", safe)
    out = io.StringIO()
    Printer(out, as_json=True, me="bob")(event(frame))  # what `connect --json` prints
    assert json.loads(out.getvalue()) == frame and "\\u202e" in out.getvalue()


def test_json_output_is_the_frame_as_the_server_sent_it() -> None:
    """Fields this client does not know, and ones the server left out, are
    printed as they came: a script may know a newer server better than we do."""
    frames = [
        {"type": "message", "id": 3, "from": "bob", "text": "hi", "ts": "2026-11-24T10:00:00Z",
         "edited": True},
        {"type": "error", "code": "rate_limited", "retry_after": 5},
        {"type": "leave", "username": "bob"},
        {"type": "typing", "username": "bob"},
    ]
    out = io.StringIO()
    printer = Printer(out, as_json=True, me="alice")
    for frame in frames:
        printer(event(frame))
    assert [json.loads(line) for line in out.getvalue().splitlines()] == frames
    assert '"retry_after":5}' in out.getvalue()  # not re-encoded as 5.0


def test_history_is_dimmed_and_pages_say_what_is_left() -> None:
    old = {**message("bob", "from before").to_frame(), "history": True}
    assert {style for style, _ in render(event(old), "alice")} == {"class:history"}
    page = {"type": "history", "more": True, "messages": [
        message("bob", "first").to_frame(),
        {"type": "dm", "id": 2, "from": "bob", "to": "alice", "text": "psst",
         "ts": "2026-11-24T10:00:00Z", "history": True}]}
    lines = plain(render(event(page), "alice")).split("\n")
    assert lines[0].endswith("<bob> first") and lines[1].endswith("[bob -> alice] psst")
    assert lines[2] == "*** older messages remain: /history again"
    assert plain(render(event({**page, "more": False}), "alice")).endswith(
        "that is the first message")
    assert plain(render(event({"type": "history", "messages": [], "more": False}), "a")) == \
        "*** no older messages"
    # A page that is not one never reaches a front end: the link reads it as
    # a server that does not speak the protocol.
    with pytest.raises(ProtocolError, match="'messages' must be a list"):
        event({"type": "history", "messages": "junk", "more": False})
    assert parse("/history") == Local("history")
