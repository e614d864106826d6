"""Every example in docs/protocol.md, replayed against a real TLS server.

A transcript line is `name> FRAME` (client `name` sends it; text that is not
JSON is sent as it is), `name< FRAME` (the next frame `name` receives must
equal it) or `name< (closed)`. Values that cannot be fixed in a document are
checked by shape: `ts` and `token_expires` are ISO-8601 UTC times, `server`
names authchat, and a session token shown as "<token>" is 43 URL-safe
characters, which later lines send back where they show "<token>".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from authchat import protocol
from authchat.errors import ErrorCode
from authchat.tls import CERT_FILENAME

from helpers import Client, add_user, start_server

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TRANSCRIPTS = re.findall(r"```transcript\n(.*?)```", DOC.read_text("utf-8"), re.S)
LINE = re.compile(r"(\w+)([<>]) (.*)")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
TOKEN_PLACEHOLDER = "<token>"


def test_the_document_has_examples() -> None:
    assert len(TRANSCRIPTS) >= 6


@pytest.mark.parametrize("transcript", TRANSCRIPTS,
                         ids=[f"example{n + 1}" for n in range(len(TRANSCRIPTS))])
def test_example(tmp_path: Path, transcript: str) -> None:
    server = start_server(tmp_path / "home", tls__enabled=True)
    try:
        add_user(server, "alice")
        add_user(server, "bob")
        add_user(server, "root", role="admin")
        replay(server, transcript)
    finally:
        server.shutdown()


def replay(server: Any, transcript: str) -> None:
    clients: dict[str, Client] = {}
    seen: dict[str, str] = {}  # the session token a welcome gave, to send back
    cafile = server.config.data_dir / CERT_FILENAME
    for line in transcript.strip().splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a transcript line: {line!r}"
        name, direction, body = match.groups()
        if name not in clients:
            clients[name] = Client(server.address, cafile=cafile)
        client = clients[name]
        if direction == ">":
            if TOKEN_PLACEHOLDER in body:
                body = body.replace(TOKEN_PLACEHOLDER, seen["token"])
            client.send(body.encode() + b"\n")
        elif body == "(closed)":
            client.expect_closed()
            client.close()
        else:
            assert_matches(client.recv(), json.loads(body), line, seen)


def assert_matches(got: dict[str, Any], expected: dict[str, Any], line: str,
                   seen: dict[str, str] | None = None) -> None:
    assert set(got) == set(expected), f"{line}\n got {got}"
    for key, value in expected.items():
        if key == "ts":
            assert TIMESTAMP.fullmatch(got[key]), got
        elif key == "token_expires":
            assert SECONDS.fullmatch(got[key]), got
        elif key == "token" and value == TOKEN_PLACEHOLDER:
            assert TOKEN.fullmatch(got[key]), got
            if seen is not None:
                seen["token"] = got[key]
        elif key == "server":
            assert got[key].startswith("authchat/"), got
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            assert isinstance(got[key], list) and len(got[key]) == len(value), got
            for got_item, item in zip(got[key], value):  # a history page's messages
                assert_matches(got_item, item, line)
        else:
            assert got[key] == value, f"{line}\n got {got}"


def test_every_error_code_is_documented() -> None:
    text = DOC.read_text("utf-8")
    for code in ErrorCode:
        assert f"| `{code}` |" in text, code


def test_documented_frame_builders_match_the_code() -> None:
    hello = protocol.Hello("authchat/0.1.0", "open", True, 15).to_frame()
    assert json.dumps(hello, separators=(",", ":")) in DOC.read_text("utf-8")
