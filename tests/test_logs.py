"""Log lines: one per event, whatever a user put in their name."""

from __future__ import annotations

import logging
from pathlib import Path

from authchat.config import load_config
from authchat.logs import FORMAT, OneLineFormatter, setup_logging
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


def test_a_log_flood_is_bounded_by_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "authchat.log"
    config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path)}, overrides={
        "logging.file": str(log_file), "logging.file_max_bytes": 4096,
        "logging.file_backups": 2})
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(config)
        for n in range(2000):  # about 200 KB of failed logins
            logging.getLogger("authchat.connection").info(
                "login failed from 127.0.0.1: bad_credentials (user guess%d)", n)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
    files = sorted(p.name for p in tmp_path.glob("authchat.log*"))
    assert files == ["authchat.log", "authchat.log.1", "authchat.log.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.glob("authchat.log*"))
    assert "guess1999" in log_file.read_text()  # the newest events are kept
