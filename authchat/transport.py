"""Byte transports over one accepted socket: plaintext, or TLS through memory BIOs.

Until login one thread does everything, with blocking sends. In the room a
connection has two threads: its reader, and one of the server's writer
threads (writers.py), which drives the socket non-blocking after
`go_async()`: `send` sends as far as the socket takes the bytes now and keeps
the rest, in order, for `send_unsent` to try again.

OpenSSL's SSL objects must not be used from two threads at once (SECURITY.md
C4), so TLS is not done by an SSLSocket: `TLSTransport` drives an
`ssl.SSLObject` over two `MemoryBIO`s under one lock, while both threads do
plain-socket I/O outside it. A second lock keeps encrypted records in order on
the wire; after `go_async` only the writer sends, and records the reader makes
(TLS housekeeping such as a key update) join the same unsent queue.

Reads wait with poll() against a deadline of their own, so the socket's
timeout is left to bound writes: a client that stops reading cannot hold a
writer forever. How long either side waits to send, hand-shake and linger is
set here, once, for both.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

RECV_BYTES = 65536
# How long a transport waits, on either side of a connection:
SEND_TIMEOUT_S = 30.0       # for a peer to take any of what is sent: past it, cut off
TLS_HANDSHAKE_MAX_S = 5.0   # for a server-side TLS handshake, inside any deadline of its own
LINGER_S = 1.0              # for the peer to hang up once we have half-closed


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine: plaintext there crosses no network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TransportClosed(ConnectionError):
    """The peer or the server closed the connection."""


def wait_readable(sock: socket.socket, deadline: float | None) -> None:
    """Block until `sock` is readable.

    Raises:
        TimeoutError: `deadline` (a time.monotonic() value) passed first.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    while True:
        if deadline is None:
            timeout_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed while waiting for data")
            timeout_ms = max(1, int(remaining * 1000))
        if poller.poll(timeout_ms):
            return


class PlainTransport:
    tls = False

    def __init__(self, sock: socket.socket, send_timeout: float) -> None:
        self.sock = sock
        sock.settimeout(send_timeout)
        # sendall may take several send() calls; two threads sending at once
        # (a client's pong and its typed line) must not interleave bytes.
        self._send_lock = threading.Lock()
        self._unsent = bytearray()  # after go_async: bytes the socket has not taken yet
        self._on_output: Callable[[], None] | None = None

    def handshake(self, deadline: float) -> None:
        pass

    def recv(self, deadline: float | None) -> bytes:
        """Some bytes, or b"" at end of stream."""
        return self._recv_raw(deadline)

    def _recv_raw(self, deadline: float | None) -> bytes:
        while True:
            wait_readable(self.sock, deadline)
            try:
                return self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue  # a spurious wake-up of a non-blocking socket

    def sendall(self, data: bytes) -> None:
        """Blocking send: only before go_async()."""
        with self._send_lock:
            self.sock.sendall(data)

    # -- the writer thread's side, after go_async() -----------------------------

    def go_async(self, on_output: Callable[[], None]) -> None:
        """Hand sending to a writer thread: the socket turns non-blocking, and
        `on_output` is called when the reader side has queued bytes to send."""
        self._on_output = on_output
        self.sock.setblocking(False)

    def send(self, data: bytes) -> int:
        """Send `data` after anything unsent, as far as the socket takes it now;
        returns the bytes still waiting. Raises OSError if the peer is gone."""
        with self._send_lock:
            if self._unsent:
                self._unsent += data
                return self._send_unsent_locked()
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._unsent += data[sent:]
            return len(self._unsent)

    def send_unsent(self) -> int:
        """Send what the socket takes now; returns the bytes still waiting.

        Raises:
            OSError: the peer is gone.
        """
        with self._send_lock:
            return self._send_unsent_locked()

    def _send_unsent_locked(self) -> int:
        if self._unsent:
            try:
                sent = self.sock.send(self._unsent)
            except BlockingIOError:
                sent = 0
            del self._unsent[:sent]  # cheap: bytearray drops a prefix in place
        return len(self._unsent)

    def unsent_bytes(self) -> int:
        return len(self._unsent)

    def enqueue_close(self) -> None:
        """Queue whatever must precede end of stream (TLS: close_notify)."""

    def finish_async(self) -> None:
        """All is sent: let the peer see end of stream."""
        _quiet(self.sock.shutdown, socket.SHUT_WR)

    def finish_sending(self) -> None:
        """Nothing more will be sent: let the peer see end of stream after the data."""
        _quiet(self.sock.shutdown, socket.SHUT_WR)

    def shutdown(self) -> None:
        """Wake any thread blocked on this connection; safe from any thread, twice."""
        _quiet(self.sock.shutdown, socket.SHUT_RDWR)

    def wake_reader(self) -> None:
        _quiet(self.sock.shutdown, socket.SHUT_RD)

    def close(self) -> None:
        self._on_output = None  # the writer's callback: it refers back to the session
        _quiet(self.sock.close)


class TLSTransport(PlainTransport):
    tls = True

    def __init__(self, sock: socket.socket, send_timeout: float, context: ssl.SSLContext,
                 server_hostname: str | None = None) -> None:
        """A server-side transport, or a client one when `server_hostname` is given."""
        super().__init__(sock, send_timeout)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_hostname is None,
                                     server_hostname=server_hostname)
        self._tls_lock = threading.Lock()  # guards _tls and both BIOs; after _send_lock

    def handshake(self, deadline: float) -> None:
        """Run the TLS handshake; raises ssl.SSLError, TimeoutError or TransportClosed."""
        while True:
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._flush()
            if done:
                return
            self._feed(deadline, during_handshake=True)

    @property
    def version(self) -> str | None:
        return self._tls.version()

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate in DER form, once the handshake is done."""
        return self._tls.getpeercert(binary_form=True)

    def recv(self, deadline: float | None) -> bytes:
        while True:
            with self._tls_lock:
                try:
                    data: bytes | None = self._tls.read(RECV_BYTES)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""  # close_notify, or the peer just went away
                housekeeping = self._outgoing.pending > 0
            if housekeeping:
                self._flush()
            if data is not None:
                return data
            if not self._feed(deadline):
                return b""

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            with self._tls_lock:
                self._tls.write(data)
                records = self._outgoing.read()
            self.sock.sendall(records)

    def send(self, data: bytes) -> int:
        with self._send_lock:
            with self._tls_lock:
                self._tls.write(data)
                self._unsent += self._outgoing.read()
            return self._send_unsent_locked()

    def enqueue_close(self) -> None:
        with self._send_lock:
            self._unsent += self._close_notify()

    def finish_sending(self) -> None:
        with self._send_lock:
            _quiet(self.sock.sendall, self._close_notify())
        super().finish_sending()

    def _close_notify(self) -> bytes:
        """Our close_notify record; call holding _send_lock."""
        with self._tls_lock:
            try:
                self._tls.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # the peer's close_notify is not needed to send ours
            return self._outgoing.read()

    def _feed(self, deadline: float | None, during_handshake: bool = False) -> bool:
        """Pass received records to TLS; False at end of stream.

        End of stream is not fed to the TLS object: after an unexpected EOF
        OpenSSL refuses to write, and the server may still owe the peer a
        last frame (server_shutdown after wake_reader(), for one).
        """
        raw = self._recv_raw(deadline)
        if not raw:
            if during_handshake:
                raise TransportClosed("connection closed during the TLS handshake")
            return False
        with self._tls_lock:
            self._incoming.write(raw)
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                records = self._outgoing.read()
            if records and self._on_output is None:
                self.sock.sendall(records)
            elif records:
                self._unsent += records  # the writer thread sends them, in order
        if records and self._on_output is not None:
            self._on_output()


def _quiet(call: object, *args: object) -> None:
    """Run a socket call whose failure means only that the socket is already gone."""
    try:
        call(*args)  # type: ignore[operator]
    except OSError:
        pass
