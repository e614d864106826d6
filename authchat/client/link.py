"""One connection to a server: TCP, TLS with the trust rules, the server's `hello`.

`open_link()` makes it; `Link` sends requests and reads the server's events
back, typed (through a `ClientProtocol`), safely from a reader thread and a
sending thread at once (both transports allow that).

TLS trust, safe by default: a certificate that verifies against the system
CAs (or `cafile`) is accepted, and the server is noted in the known-servers
file as one an authority vouched for. Otherwise the SHA-256 fingerprint must
match `fingerprint`, or the one pinned for this host:port in that file, or,
only for a self-signed certificate on a server no authority vouched for, the
user must confirm it (trust on first use), after which it is pinned. Every
other failure is refused with its reason and never prompted for: another
name, an expired certificate, an authority this computer does not trust, a
changed fingerprint, and a self-signed certificate where an authority vouched
before. Passwords are never sent in plaintext to a host that is not loopback
unless `insecure` is set.

No UI, no click, no store here.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AuthchatError, ErrorCode
from ..protocol import ClientProtocol, ErrorReply, Hello, ProtocolError, Request, ServerEvent
from ..sanitize import escape
from ..tls import (
    KnownServer,
    KnownServers,
    certificate_names,
    client_context,
    default_known_servers,
    fingerprint,
    is_self_signed,
    normalize_fingerprint,
    same_fingerprint,
    self_signed_problem,
)
from ..transport import SEND_TIMEOUT_S, PlainTransport, TLSTransport, TransportClosed, is_loopback

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
SILENCE_S = 75.0

# What a person reads for each error code the server may send.
ERROR_TEXT = {
    ErrorCode.BAD_CREDENTIALS: "wrong username or password",
    ErrorCode.USERNAME_TAKEN: "that username is taken",
    ErrorCode.INVALID_USERNAME: "that username is not allowed",
    ErrorCode.INVALID_PASSWORD: "that password is not allowed",
    ErrorCode.REGISTRATION_CLOSED: "the server does not accept new accounts",
    ErrorCode.ACCOUNT_DISABLED: "this account is disabled",
    ErrorCode.RATE_LIMITED: "too many attempts; wait and try again",
    ErrorCode.TOO_MANY_CONNECTIONS: "the server has too many connections",
    ErrorCode.HANDSHAKE_TIMEOUT: "the server gave up waiting for the login",
    ErrorCode.SLOW_CONSUMER: "the connection fell too far behind",
    ErrorCode.FORBIDDEN: "only admins may do that",
    ErrorCode.NO_SUCH_USER: "no such user online",
    ErrorCode.TEXT_TOO_LONG: "that message is too long",
    ErrorCode.KICKED: "you were removed from the server",
    ErrorCode.TOO_MANY_SESSIONS: "this account has too many sessions open",
    ErrorCode.SERVER_ERROR: "the server had an internal error",
    ErrorCode.SERVER_SHUTDOWN: "the server is shutting down",
}
# OpenSSL's verification results (X509_V_ERR_* in openssl/x509_vfy.h) that
# get their own answer; the rest "do not verify".
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18  # the only one trust on first use is offered for
NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH


class ClientError(AuthchatError):
    """The connection could not be made or used."""


class TrustError(ClientError):
    """The server's certificate is not trusted."""


class ServerError(ClientError):
    """The server answered with an error frame."""

    def __init__(self, reply: ErrorReply) -> None:
        self.reply = reply
        super().__init__(describe_error(reply))


def describe_error(reply: ErrorReply) -> str:
    """One sentence for an error: our words for the code, the server's detail."""
    detail = reply.message
    known = ERROR_TEXT.get(reply.known_code) if reply.known_code else None
    text = known or detail or reply.code or "unknown error"
    if known and detail and detail.lower().rstrip(".") not in known:
        text += f" ({detail.rstrip('.')})"
    if reply.retry_after is not None:
        text += f"; retry in {reply.retry_after:.0f} s"
    return escape(text)  # the server's words may reach a terminal


@dataclass(frozen=True)
class ClientOptions:
    host: str = "127.0.0.1"
    port: int = 5555
    tls: bool = True
    cafile: str | None = None
    fingerprint: str | None = None
    insecure: bool = False
    known_servers: Path = field(default_factory=default_known_servers)
    timeout: float = CONNECT_TIMEOUT_S
    # Silence from the server after which a session pings it, and, as long
    # again without an answer, counts the link as lost (a laptop that slept,
    # a network that changed): the server itself pings after 60 s.
    silence_s: float = SILENCE_S


Confirm = Callable[[str, str], bool]  # (host:port, fingerprint) -> trust it?


class Link:
    """One open connection to a server; `hello` is its greeting, once `greet` has read it."""

    def __init__(self, transport: PlainTransport, fingerprint: str | None) -> None:
        self.transport = transport
        self.fingerprint = fingerprint
        self._protocol = ClientProtocol()  # its bound on a server's line: a rogue one's
        self._hello: Hello | None = None

    @property
    def hello(self) -> Hello:
        if self._hello is None:
            raise RuntimeError("the server's hello has not been read yet")
        return self._hello

    def send(self, request: Request) -> None:
        self.transport.sendall(self._protocol.send(request))

    def read(self, timeout: float | None = None) -> ServerEvent | None:
        """The next server event, or None once the server has closed the connection.

        Raises:
            TimeoutError: nothing complete arrived within `timeout`.
            ClientError: the server sent something that is not a frame of this protocol.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                event = self._protocol.next_event()
            except ProtocolError as e:
                raise ClientError(f"the server sent something unreadable: {e}") from None
            if event is not None:
                return event
            data = self.transport.recv(deadline)
            if not data:
                return None
            self._protocol.receive_data(data)

    def greet(self, where: str, timeout: float) -> Hello:
        """Read the server's `hello`, the first thing it sends.

        Raises:
            ServerError: the server refused the connection instead (too many, …).
            ClientError: no hello in time, or not an authchat server.
        """
        try:
            event = self.read(timeout)
        except (OSError, TimeoutError) as e:
            raise ClientError(f"{where} did not greet us: {e}") from None
        if isinstance(event, ErrorReply):
            raise ServerError(event)
        if not isinstance(event, Hello):
            raise ClientError(f"{where} is not an authchat server")
        self._hello = event
        return event

    def close(self) -> None:
        self.transport.shutdown()
        self.transport.close()


def open_link(options: ClientOptions, confirm: Confirm | None = None) -> Link:
    """Connect, secure and greet: returns a Link whose `hello` has arrived.

    `confirm` asks a person to trust an unknown self-signed certificate; without
    it (a script) such a certificate is refused.

    Raises:
        TrustError: plaintext to a remote host, or an untrusted certificate.
        ClientError: the server cannot be reached or does not speak authchat.
    """
    host, port = options.host, options.port
    if not options.tls and not is_loopback(host) and not options.insecure:
        raise TrustError(f"refusing to send a password unencrypted to {host}; "
                         "use TLS, or --insecure if you really mean it")
    if not options.tls:
        link = Link(PlainTransport(_connect(options), SEND_TIMEOUT_S), None)
    else:
        link = _open_tls(options, confirm)
    try:
        link.greet(f"{host}:{port}", options.timeout)
    except BaseException:
        link.close()
        raise
    return link


def _connect(options: ClientOptions) -> socket.socket:
    try:
        return socket.create_connection((options.host, options.port), timeout=options.timeout)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ClientError(f"cannot connect to {options.host}:{options.port}: {reason}") from None
    except (UnicodeError, ValueError):  # "chat..example.org": no name can be made of it
        raise ClientError(f"{options.host!r} is not a host name or address") from None


def _handshake(options: ClientOptions, context: ssl.SSLContext) -> TLSTransport:
    transport = TLSTransport(_connect(options), SEND_TIMEOUT_S, context,
                             server_hostname=options.host)
    try:
        transport.handshake(time.monotonic() + options.timeout)
    except BaseException:
        transport.close()
        raise
    return transport


def _open_tls(options: ClientOptions, confirm: Confirm | None) -> Link:
    where = f"{options.host}:{options.port}"
    try:
        if options.cafile or not (options.insecure or options.fingerprint):
            known = _known(options)
            if known is not None and known.pin is not None and not options.cafile:
                return _open_pinned(options, known.pin, where, pinned=True)
            return _open_verified(options, confirm, known)
        if options.fingerprint:
            return _open_pinned(options, options.fingerprint, where, pinned=False)
        transport = _handshake(options, client_context(verify=False))
        return Link(transport, fingerprint(transport.peer_certificate() or b""))
    except (ssl.SSLError, TransportClosed, TimeoutError) as e:
        if isinstance(e, ssl.SSLCertVerificationError):
            raise _unverified(options, e) from None
        raise ClientError(f"TLS with {where} failed: {e}") from None


def _known(options: ClientOptions) -> KnownServer | None:
    try:
        return KnownServers(options.known_servers).lookup(options.host, options.port)
    except (OSError, ValueError) as e:
        raise ClientError(f"cannot read the known-servers file {options.known_servers}: "
                          f"{getattr(e, 'strerror', None) or e}") from None


def _unverified(options: ClientOptions, error: ssl.SSLCertVerificationError) -> TrustError:
    """Why a certificate that failed verification is refused: never a question."""
    if error.verify_code in NAME_MISMATCH:
        return _refused(options, "another name")
    if error.verify_code == CERT_HAS_EXPIRED:
        return _refused(options, "expired")
    if error.verify_code == CERT_NOT_YET_VALID:
        return _refused(options, "not yet valid")
    return TrustError(f"the certificate of {options.host}:{options.port} does not verify: "
                      f"{error.verify_message}. Connection refused; if the server's authority "
                      "is a private one, pass its certificate with --cafile")


def _refused(options: ClientOptions, problem: str) -> TrustError:
    """A certificate for another name, expired or not yet valid, self-signed or not."""
    where = f"{options.host}:{options.port}"
    if problem == "another name":
        return TrustError(f"the certificate of {where} was issued for another name, not "
                          f"{options.host}. Connection refused; connect by the name the "
                          "server's operator gives, or have them fix the certificate")
    if problem == "expired":
        return TrustError(f"the certificate of {where} has expired. Connection refused; the "
                          "server's operator must renew it (or this computer's clock is wrong)")
    return TrustError(f"the certificate of {where} is not valid yet. Connection refused; "
                      "check this computer's clock")


def _open_verified(options: ClientOptions, confirm: Confirm | None,
                   known: KnownServer | None) -> Link:
    """A certificate an authority vouches for, or else a self-signed one to trust on first use."""
    vouched = known is not None and known.vouched
    try:
        transport = _handshake(options, client_context(verify=True, cafile=options.cafile))
    except ssl.SSLCertVerificationError as e:
        # With a cafile the user named the authority: no first use either.
        if e.verify_code != DEPTH_ZERO_SELF_SIGNED_CERT or (options.cafile and not vouched):
            raise
        return _open_self_signed(options, confirm, known)
    seen = fingerprint(transport.peer_certificate() or b"")
    if known is None:
        _note_vouched(options, seen)
    return Link(transport, seen)


def _note_vouched(options: ClientOptions, seen: str) -> None:
    """Note the server, so that a self-signed certificate there later is refused as a change."""
    try:
        KnownServers(options.known_servers).remember_vouched(options.host, options.port, seen)
    except OSError as e:  # the connection is no less safe for it
        log.warning("cannot note %s:%s in %s: %s", options.host, options.port,
                    options.known_servers, e.strerror or e)


def _open_self_signed(options: ClientOptions, confirm: Confirm | None,
                      known: KnownServer | None) -> Link:
    """Trust on first use: offered for a self-signed certificate on a server
    no authority vouched for, valid now and issued for the name connected to;
    pinned once the user trusts it."""
    where = f"{options.host}:{options.port}"
    transport = _handshake(options, client_context(verify=False))
    try:
        der = transport.peer_certificate() or b""
        seen = fingerprint(der)
        if _vouched_before(options, der, known):
            return Link(transport, seen)
    except BaseException:
        transport.close()
        raise
    # A person may take minutes to check a fingerprint with the operator, and
    # the server gives a login only seconds: ask with no connection open, then
    # connect afresh, held to the fingerprint just trusted.
    transport.close()
    _ask_first_use(where, seen, confirm)
    KnownServers(options.known_servers).remember(options.host, options.port, seen)
    return _open_pinned(options, seen, where, pinned=True)


def _vouched_before(options: ClientOptions, der: bytes, known: KnownServer | None) -> bool:
    """True for the very certificate an authority (a --cafile) vouched for
    before; False for one a person may be asked to trust; else TrustError."""
    where = f"{options.host}:{options.port}"
    seen = fingerprint(der)
    if not is_self_signed(der):  # not what the verifying handshake saw: ask nothing
        raise TrustError(f"the certificate of {where} does not verify. Connection refused")
    # OpenSSL stops at "self-signed": the name and the dates are ours to check.
    problem = self_signed_problem(der, options.host)
    if problem == "another name":
        raise TrustError(
            f"the certificate of {where} is self-signed and was issued for "
            f"{', '.join(certificate_names(der)) or 'no name'}, not {options.host}. "
            "Connection refused; connect by one of those names, or pass --fingerprint "
            "with the fingerprint the server's operator gives you")
    if problem is not None:
        raise _refused(options, problem)
    if known is None or not known.vouched:
        return False
    if known.vouched_fingerprint and same_fingerprint(seen, known.vouched_fingerprint):
        return True
    raise _changed(where, f"An authority vouched for it before (as {options.known_servers} "
                          f"notes); now it is self-signed, with fingerprint {seen}")


def _ask_first_use(where: str, seen: str, confirm: Confirm | None) -> None:
    """Raises TrustError unless the user trusts this self-signed certificate."""
    if confirm is None:
        raise TrustError(
            f"{where} has a self-signed certificate, which no authority vouches for, with "
            f"SHA-256 fingerprint {seen}. To trust it, check that fingerprint with the "
            "server's operator and pass --fingerprint, or use --cafile or --insecure")
    if not confirm(where, seen):
        raise TrustError(f"not trusting {where}")


def _open_pinned(options: ClientOptions, expected: str, where: str, *, pinned: bool) -> Link:
    transport = _handshake(options, client_context(verify=False))
    seen = fingerprint(transport.peer_certificate() or b"")
    try:
        matches = same_fingerprint(seen, expected)
    except ValueError:
        transport.close()
        raise TrustError(f"{expected!r} is not a SHA-256 fingerprint") from None
    if not matches:
        transport.close()
        source = f"the fingerprint remembered in {options.known_servers}" if pinned \
            else "the fingerprint you gave"
        raise _changed(where, f"It is {seen}, not {normalize_fingerprint(expected)} ({source})")
    return Link(transport, seen)


def _changed(where: str, detail: str) -> TrustError:
    return TrustError(
        f"WARNING: THE CERTIFICATE OF {where} HAS CHANGED. Someone may be intercepting "
        f"the connection, or the server got a new certificate. {detail}. Connection "
        "refused; if the change is expected, pass --fingerprint or edit the known-servers file")
