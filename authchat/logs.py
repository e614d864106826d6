"""Logging set-up, and escaping for anything a user controls.

One event, one line: text that came from a client (usernames, reasons) may
hold newlines, terminal escapes or bidi controls, so every message is
escaped before it is written, and a forged "INFO admin login ok" line can
never appear in the log. Passwords, hashes and tokens are never passed to
the logger at all.
"""

from __future__ import annotations

import io
import logging
import os
from logging.handlers import RotatingFileHandler

from .config import Config
from .sanitize import escape

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """Escapes the message itself, whatever the caller passed in."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name for it
        record.message = escape(record.message)
        return super().formatMessage(record)


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating log whose files only their owner may read: they hold
    addresses, account names and who did what."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # a file an older version made readable to others, too
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(config: Config) -> None:
    """Configure the root logger once, from the [logging] section."""
    handler: logging.Handler
    if config.logging.file:
        handler = PrivateRotatingFileHandler(config.logging.file, encoding="utf-8",
                                             maxBytes=config.logging.file_max_bytes,
                                             backupCount=config.logging.file_backups)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.logging.level)
