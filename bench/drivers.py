"""Protocol drivers: the same workload spoken as authchat, IRC, or the toy's bare lines."""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loadgen import Plan

CHANNEL = "#bench"
HANDSHAKE_LINES_MAX = 10_000
LOGIN_ATTEMPTS = 3  # a connection may fail 3 logins; rate_limited ones among them


def account(number: int) -> str:
    """Client number `number`'s username (authchat) or nick (IRC): valid in both."""
    return f"bench{number}"


MARKER_END = "Q~"  # counted with bytes.count() while the clock runs


def _payload(sender: int, seq: int, t_ns: int, size: int) -> str:
    marker = f"P{sender}:{seq}:{t_ns}{MARKER_END}"
    return marker + "x" * max(0, size - len(marker))


class LineReader:
    """Blocking line reads for the untimed handshake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


class Driver:
    echoes_own = True  # does a sender receive its own messages?

    def handshake(self, sock: socket.socket, number: int) -> bytes:
        """Log client `number` in; returns what the server sent after the last line read."""
        return b""

    def message(self, sender: int, seq: int, t_ns: int, size: int) -> bytes:
        return (_payload(sender, seq, t_ns, size) + "\n").encode()

    def keepalive(self, lines: bytes) -> bytes | None:
        return None


class ToyDriver(Driver):
    """The toy: bare lines, broadcast to everyone including the sender.

    The toy has no handshake, and its thread for a new client joins the room
    some time after connect() returns; a line of our own coming back is the
    proof that we are in.
    """

    def handshake(self, sock: socket.socket, number: int) -> bytes:
        reader = LineReader(sock)
        hello = f"hello from {account(number)}".encode()
        sock.sendall(hello + b"\n")
        for _ in range(HANDSHAKE_LINES_MAX):
            if reader.line() == hello:
                return reader.buffer
        raise ConnectionError("never saw our own hello come back")


class AuthchatDriver(Driver):
    def __init__(self, password: str) -> None:
        self.password = password

    def handshake(self, sock: socket.socket, number: int) -> bytes:
        reader = LineReader(sock)
        json.loads(reader.line())  # hello
        login = {"type": "login", "username": account(number), "password": self.password}
        for _ in range(LOGIN_ATTEMPTS):
            sock.sendall(json.dumps(login).encode() + b"\n")
            frame = json.loads(reader.line())
            if frame["type"] == "welcome":
                return reader.buffer  # room traffic may follow the welcome in one read
            if frame.get("code") != "rate_limited":  # the server's bcrypt queue is full
                break
            time.sleep(float(frame.get("retry_after", 1.0)))  # as the server asked
        raise ConnectionError(f"login of {account(number)} failed: {frame}")

    def message(self, sender: int, seq: int, t_ns: int, size: int) -> bytes:
        return b'{"type":"say","text":"' + _payload(sender, seq, t_ns, size).encode() + b'"}\n'

    def keepalive(self, lines: bytes) -> bytes | None:
        return b'{"type":"pong"}\n' if b'"type":"ping"' in lines else None


class IrcDriver(Driver):
    """NICK/USER, JOIN one channel, PRIVMSG to it; IRC does not echo to the sender."""

    echoes_own = False

    def handshake(self, sock: socket.socket, number: int) -> bytes:
        reader = LineReader(sock)
        nick = account(number)
        sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        self._until(sock, reader, b"001")
        sock.sendall(f"JOIN {CHANNEL}\r\n".encode())
        self._until(sock, reader, b"366")  # end of the channel's name list
        return reader.buffer

    def _until(self, sock: socket.socket, reader: LineReader, code: bytes) -> None:
        """Read until the server's reply `code` (a numeric such as b"001")."""
        for _ in range(HANDSHAKE_LINES_MAX):
            line = reader.line()
            words = line.split(b" ", 2)
            command = words[1] if line.startswith(b":") and len(words) > 1 else words[0]
            if command == b"PING":
                sock.sendall(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")
            elif command == code:
                return
            elif command == b"ERROR" or command.startswith((b"4", b"5")):
                raise ConnectionError(line.decode(errors="replace"))
        raise ConnectionError(f"never saw {code!r}")

    def message(self, sender: int, seq: int, t_ns: int, size: int) -> bytes:
        return f"PRIVMSG {CHANNEL} :{_payload(sender, seq, t_ns, size)}\r\n".encode()

    def keepalive(self, lines: bytes) -> bytes | None:
        replies = [b"PONG" + line[4:].rstrip(b"\r") + b"\r\n"
                   for line in lines.split(b"\n") if line.startswith(b"PING")]
        return b"".join(replies) or None


def make_driver(plan: Plan) -> Driver:
    if plan.driver == "authchat":
        return AuthchatDriver(plan.password)
    if plan.driver == "irc":
        return IrcDriver()
    return ToyDriver()
