"""Log lines: one per event, whatever a user put in their name."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from authchat.config import Config, load_config
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


@contextmanager
def logging_set_up(config: Config) -> Iterator[None]:
    """The root logger as `config` sets it up, and as it was again afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(config)
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved[0], saved[1]


def test_a_log_flood_is_bounded_by_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "authchat.log"
    config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path)}, overrides={
        "logging.file": str(log_file), "logging.file_max_bytes": 4096,
        "logging.file_backups": 2})
    with logging_set_up(config):
        for n in range(2000):  # about 200 KB of failed logins
            logging.getLogger("authchat.connection").info(
                "login failed from 127.0.0.1: bad_credentials (user guess%d)", n)
    files = sorted(p.name for p in tmp_path.glob("authchat.log*"))
    assert files == ["authchat.log", "authchat.log.1", "authchat.log.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.glob("authchat.log*"))
    assert "guess1999" in log_file.read_text()  # the newest events are kept
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.glob("authchat.log*")} == {"0o600"}


def test_a_log_file_is_for_its_owner_only_even_one_made_before(tmp_path: Path) -> None:
    log_file = tmp_path / "authchat.log"
    log_file.write_text("written by an older version\n")
    log_file.chmod(0o644)
    config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path)},
                         overrides={"logging.file": str(log_file)})
    with logging_set_up(config):
        logging.getLogger("authchat.server").info("listening")
    assert log_file.stat().st_mode & 0o777 == 0o600
    assert log_file.read_text().endswith("listening\n")
