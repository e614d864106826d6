"""Log lines: one per event, whatever a user put in their name."""

from __future__ import annotations

import logging

from authchat.logs import FORMAT, OneLineFormatter
from authchat.sanitize import escape


def test_escape_neutralises_control_and_bidi_characters() -> None:
    assert escape("plain é 🔥 \\ \t") == "plain é 🔥 \\ \\x09"
    assert escape("x\nINFO admin login ok") == "x\\x0aINFO admin login ok"
    assert escape("\x1b[2J\u2028\u202eevil\x85") == "\\x1b[2J\\u2028\\u202eevil\\x85"


def test_formatter_keeps_each_event_on_one_line() -> None:
    formatter = OneLineFormatter(FORMAT)
    record = logging.LogRecord("authchat.server", logging.INFO, __file__, 1,
                               "login %s from %s", ("x\r\nINFO forged", "127.0.0.1"), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("login x\\x0d\\x0aINFO forged from 127.0.0.1")
