"""Logging set-up, and escaping for anything a user controls.

One event, one line: text that came from a client (usernames, reasons) may
hold newlines, terminal escapes or bidi controls, so every message is
escaped before it is written, and a forged "INFO admin login ok" line can
never appear in the log. Passwords, hashes and tokens are never passed to
the logger at all.
"""

from __future__ import annotations

import logging
import re

from .config import Config

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# C0/C1 controls, DEL, line/paragraph separators and bidi embedding/override/isolate.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def escape(text: str) -> str:
    """`text` with every unsafe character written as a \\x, \\u escape."""
    return _UNSAFE.sub(lambda m: _escape_char(m.group()), text)


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class OneLineFormatter(logging.Formatter):
    """Escapes the message itself, whatever the caller passed in."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)


def setup_logging(config: Config) -> None:
    """Configure the root logger once, from the [logging] section."""
    handler: logging.Handler
    if config.logging.file:
        handler = logging.FileHandler(config.logging.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.logging.level)
