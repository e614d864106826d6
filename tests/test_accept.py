"""The accept loop tells accept()'s errors apart, and keeps serving after each."""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

import pytest

from authchat import server as server_module
from authchat.config import Config
from authchat.server import ACCEPT_BACKOFF_S, Server
from authchat.store import Store


class _FailingListener:
    def __init__(self, code: int) -> None:
        self.code = code

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(("code", "backs_off", "level", "in_full"), [
    (errno.EMFILE, True, logging.ERROR, False),         # out of descriptors: shed load
    (errno.ENOBUFS, True, logging.ERROR, False),
    (errno.ECONNABORTED, False, logging.DEBUG, False),  # that client's alone: the next one now
    (errno.EINVAL, True, logging.ERROR, True),          # unknown: logged with its traceback
])
def test_accept_errors_are_told_apart_and_the_loop_goes_on(
        config: Config, store: Store, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, code: int, backs_off: bool, level: int,
        in_full: bool) -> None:
    server = Server(config, store)
    server._listener = _FailingListener(code)  # never started: only accept() is called
    slept: list[float] = []
    monkeypatch.setattr(server_module.time, "sleep", slept.append)
    with caplog.at_level(logging.DEBUG, logger="authchat.server"):
        server._accept_one()  # returns, rather than raising: the loop calls it again
    assert slept == ([ACCEPT_BACKOFF_S] if backs_off else [])
    (record,) = [r for r in caplog.records if r.name == "authchat.server"]
    assert record.levelno == level
    assert (record.exc_info is not None) == in_full
