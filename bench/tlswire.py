"""A TLS client connection driven through memory BIOs, for the load generator.

An SSLSocket makes at least two system calls per TLS record it reads (the
header, then the body), so a client receiving many small records spends its
time there and the generator, not the server, sets the pace. Here one recv()
takes in whatever the kernel holds and every record in it is decrypted
without another system call. It offers just the socket methods the load
generator and the drivers use.
"""

from __future__ import annotations

import socket
import ssl

RAW_RECV_BYTES = 262144


class TlsWire:
    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self.raw = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._plain = bytearray()   # decrypted, not yet handed out
        self._unsent = bytearray()  # encrypted, not yet taken by the kernel
        self._eof = False
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self._outgoing.read())
                if not self._take_in():
                    raise ConnectionError("closed during the TLS handshake") from None
        self.raw.sendall(self._outgoing.read())

    def fileno(self) -> int:
        return self.raw.fileno()

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def close(self) -> None:
        self.raw.close()

    def pending(self) -> int:
        return len(self._plain)

    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def sendall(self, data: bytes) -> None:
        """Blocking: only during the untimed handshake."""
        self._tls.write(data)
        self.raw.sendall(self._outgoing.read())

    def send(self, data: bytes | bytearray) -> int:
        """Non-blocking: takes all of `data` once earlier bytes are out, else none."""
        self._send_unsent()
        if self._unsent:
            raise BlockingIOError("earlier records are still waiting")
        if data:
            self._tls.write(data)
            self._unsent += self._outgoing.read()
            self._send_unsent()
        return len(data)

    def recv(self, size: int) -> bytes:
        """Blocking: only during the untimed handshake."""
        while not self._plain and not self._eof:
            self._take_in()
        chunk = bytes(self._plain[:size])
        del self._plain[:size]
        return chunk

    def recv_into(self, buffer: memoryview) -> int:
        """Non-blocking: 0 at end of stream; BlockingIOError when nothing is ready."""
        if not self._plain and not self._eof:
            self._take_in()
            if not self._plain and not self._eof:
                raise BlockingIOError("no whole record yet")
        size = min(len(buffer), len(self._plain))
        buffer[:size] = self._plain[:size]
        del self._plain[:size]
        return size

    def _take_in(self) -> bool:
        """One recv() from the kernel, decrypted; False at end of stream."""
        raw = self.raw.recv(RAW_RECV_BYTES)
        if not raw:
            self._eof = True
            return False
        self._incoming.write(raw)
        while True:
            try:
                chunk = self._tls.read(RAW_RECV_BYTES)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            if not chunk:  # the peer's close_notify: read() says so with b"", not an error
                self._eof = True
                break
            self._plain += chunk
        return True

    def _send_unsent(self) -> None:
        if self._unsent:
            try:
                sent = self.raw.send(self._unsent)
            except BlockingIOError:
                return
            del self._unsent[:sent]
