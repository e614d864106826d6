"""Every example in docs/protocol.md, replayed against a real TLS server.

A transcript line is `name> FRAME` (client `name` sends it; text that is not
JSON is sent as it is), `name< FRAME` (the next frame `name` receives must
equal it) or `name< (closed)`. Values that cannot be fixed in a document are
checked by shape: `ts` is an ISO-8601 UTC time, `server` names authchat.
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
    cafile = server.config.data_dir / CERT_FILENAME
    for line in transcript.strip().splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a transcript line: {line!r}"
        name, direction, body = match.groups()
        if name not in clients:
            clients[name] = Client(server.address, cafile=cafile)
        client = clients[name]
        if direction == ">":
            client.send(body.encode() + b"\n")
        elif body == "(closed)":
            client.expect_closed()
            client.close()
        else:
            assert_matches(client.recv(), json.loads(body), line)


def assert_matches(got: dict[str, Any], expected: dict[str, Any], line: str) -> None:
    assert set(got) == set(expected), f"{line}\n got {got}"
    for key, value in expected.items():
        if key == "ts":
            assert TIMESTAMP.fullmatch(got[key]), got
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
