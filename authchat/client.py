"""The client library: connect with TLS trust, log in, chat, survive drops.

`open_link()` makes one connection: TCP, TLS with the trust rules below, and
the server's `hello`. `login()` / `register()` run the handshake on it.
`Chat` is a logged-in session for a user interface: a reader thread turns
server frames into calls of `on_event`, answers the server's pings, pairs
replies with requests, and, if allowed, reconnects with backoff after a drop,
logging in again with the password it was given.

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

Both transports let the reader thread and a sending thread share one
connection safely. No UI, no click, no store here.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import commands, protocol
from .errors import AuthchatError, ErrorCode
from .passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_FLOOR, PasswordPolicy
from .protocol import FrameDecoder, ProtocolError
from .roster import dm_peer
from .sanitize import escape
from .tls import KnownServer, KnownServers, client_context, default_known_servers, \
    certificate_names, fingerprint, is_self_signed, normalize_fingerprint, same_fingerprint, \
    self_signed_problem
from .transport import PlainTransport, TLSTransport, TransportClosed, is_loopback

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 30.0
MAX_FRAME_BYTES = 1024 * 1024  # the server's frames are small; this only bounds a rogue one
SILENCE_S = 75.0
BACKOFF_START_S = 1.0
OLDER_PAGE = 50  # messages `older` asks for at a time
BACKOFF_MAX_S = 30.0

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
# After these the run is over: reconnecting would only repeat them.
FINAL_CODES = {ErrorCode.KICKED, ErrorCode.ACCOUNT_DISABLED, ErrorCode.BAD_CREDENTIALS}

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

    def __init__(self, frame: dict[str, Any]) -> None:
        self.frame = frame
        self.code_text = str(frame.get("code", ""))
        self.retry_after = frame.get("retry_after")
        super().__init__(describe_error(frame))


def describe_error(frame: dict[str, Any]) -> str:
    """One sentence for an error frame: our words for the code, the server's detail."""
    code = str(frame.get("code", ""))
    detail = str(frame.get("message", ""))
    known = ERROR_TEXT.get(ErrorCode(code)) if code in ErrorCode._value2member_map_ else None
    text = known or detail or code or "unknown error"
    if known and detail and detail.lower().rstrip(".") not in known:
        text += f" ({detail.rstrip('.')})"
    if isinstance(frame.get("retry_after"), (int, float)):
        text += f"; retry in {frame['retry_after']:.0f} s"
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
    """One open connection to a server, after its `hello`."""

    def __init__(self, transport: PlainTransport, fingerprint: str | None) -> None:
        self.transport = transport
        self.fingerprint = fingerprint
        self._decoder = FrameDecoder(MAX_FRAME_BYTES)
        self.hello: dict[str, Any] = {}

    def send(self, frame: dict[str, Any]) -> None:
        self.transport.sendall(protocol.encode(frame))

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None once the server has closed the connection.

        Raises:
            TimeoutError: nothing complete arrived within `timeout`.
            ClientError: the server sent something that is not a frame.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                line = self._decoder.next_line()
                if line is not None:
                    if not line.strip():
                        continue
                    frame = protocol.decode_frame(line)
                    if isinstance(frame.get("type"), str):
                        return frame
                    raise ClientError("the server sent a frame without a type")
            except ProtocolError as e:
                raise ClientError(f"the server sent something unreadable: {e}") from None
            data = self.transport.recv(deadline)
            if not data:
                return None
            self._decoder.receive_data(data)

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
        hello = link.read(options.timeout)
    except (OSError, TimeoutError) as e:
        link.close()
        raise ClientError(f"{host}:{port} did not greet us: {e}") from None
    if hello is None or hello.get("type") != "hello":
        link.close()
        if hello is not None and hello.get("type") == "error":
            raise ServerError(hello)
        raise ClientError(f"{host}:{port} is not an authchat server")
    link.hello = hello
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


def probe(options: ClientOptions, confirm: Confirm | None = None) -> dict[str, Any]:
    """The server's `hello`, from a connection opened only to learn it and then
    closed: whether the server is there and trusted, and its rules, all settled
    before a person is asked for a password (the server gives a login only a
    few seconds; a person may need more).

    Raises:
        TrustError, ClientError: as `open_link`.
    """
    link = open_link(options, confirm)
    try:
        link.send({"type": "quit"})
    except OSError:
        pass  # it was only a question; the answer came
    finally:
        link.close()
    return link.hello


def password_policy(hello: dict[str, Any]) -> PasswordPolicy:
    """The rules the server's `hello` says a new password must meet."""
    length = hello.get("min_password_length")
    if not isinstance(length, int) or isinstance(length, bool):
        length = MIN_PASSWORD_FLOOR  # an older server: only what every server holds
    return PasswordPolicy(min(max(length, MIN_PASSWORD_FLOOR), MAX_PASSWORD_LENGTH))


def registration_problem(hello: dict[str, Any], invite: str | None) -> str | None:
    """Why this server will refuse to register an account, as far as its
    `hello` tells; None if it may accept one."""
    mode = hello.get("registration")
    if mode == "closed":
        return ERROR_TEXT[ErrorCode.REGISTRATION_CLOSED]
    if mode == "invite" and not invite:
        return ("the server accepts new accounts only with an invite: pass --invite TOKEN "
                "(an admin makes one with `authchat invites create`)")
    return None


def _authenticate(link: Link, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
    link.send(frame)
    while True:
        reply = link.read(timeout)
        if reply is None:
            raise ClientError("the server closed the connection during login")
        if reply.get("type") == "welcome":
            return reply
        if reply.get("type") == "error":
            raise ServerError(reply)


def login(link: Link, username: str, password: str,
          timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """Log in; returns the welcome frame. Raises ServerError with the server's reason."""
    return _authenticate(link, {"type": "login", "username": username, "password": password},
                         timeout)


def register(link: Link, username: str, password: str, invite: str | None = None,
             timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """Create the account and log in; returns the welcome frame.

    The password is checked against the rules of the server's `hello` before
    it is sent, so that it is refused in the same words as `users add` uses.

    Raises:
        InvalidPassword: the password breaks those rules.
        ServerError: the server refused (`registration_closed`, `username_taken`, …).
    """
    password_policy(link.hello).check(password, username)
    frame = {"type": "register", "username": username, "password": password}
    if invite:
        frame["invite"] = invite
    return _authenticate(link, frame, timeout)


# -- a session that survives drops ---------------------------------------------------

@dataclass(frozen=True)
class Notice:
    """Something the client itself has to say: `lost`, `reconnecting`, `back`,
    `missed` (more was said while away than the server gives back), `ended`.

    An `ended` that the server's error frame caused carries that frame, so that
    scripting mode can print it; front ends show only the notice.
    """

    kind: str
    text: str
    frame: dict[str, Any] | None = field(default=None, compare=False)


Event = dict[str, Any] | Notice


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None


class Chat:
    """A logged-in session for a user interface.

    `on_event` is called from the reader thread with each server frame (pings
    are answered, not passed on) and with Notices about the connection.
    """

    def __init__(self, options: ClientOptions, username: str, password: str,
                 on_event: Callable[[Event], None], *, confirm: Confirm | None = None,
                 reconnect: bool = True, register_first: bool = False,
                 login_if_taken: bool = True, invite: str | None = None) -> None:
        self.options = options
        self.username = username
        self._password = password
        self.on_event = on_event
        self.confirm = confirm
        self.reconnect = reconnect
        self.register_first = register_first
        self.login_if_taken = login_if_taken  # registering a name that exists: log in instead?
        self.invite = invite
        self.welcome: dict[str, Any] = {}
        self.hello: dict[str, Any] = {}  # the server's, on the link in use
        self.ended = threading.Event()
        self.end_reason: str | None = None
        self._link: Link | None = None
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._oldest: dict[str, int] = {}  # conversation ("" the room) -> oldest id seen
        # The newest room message shown: after a reconnect the server gives the
        # last ones again, and only those after it are news.
        self._newest_in_room = 0
        self._first_replay_after_reconnect = False
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def _closing(self) -> bool:
        return self._stop.is_set()

    @property
    def fingerprint(self) -> str | None:
        return self._link.fingerprint if self._link else None

    def start(self) -> dict[str, Any]:
        """Connect and log in (registering first if asked); returns the welcome.

        Raises:
            ClientError: the first connection failed; nothing is running.
        """
        self._link, self.welcome = self._connect(first=True)
        self._reader = threading.Thread(target=self._read_loop, name="chat-reader", daemon=True)
        self._reader.start()
        return self.welcome

    def _connect(self, first: bool = False) -> tuple[Link, dict[str, Any]]:
        link = open_link(self.options, self.confirm if first else None)
        self.hello = link.hello
        try:
            if first and self.register_first:
                try:
                    return link, register(link, self.username, self._password, self.invite)
                except ServerError as e:
                    if e.code_text != ErrorCode.USERNAME_TAKEN or not self.login_if_taken:
                        raise
            welcome = login(link, self.username, self._password)
            self.username = welcome.get("username", self.username)
            return link, welcome
        except BaseException:
            link.close()
            raise

    def request(self, frame: dict[str, Any], timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Send a request and wait for its direct reply (ok, error, who, pong).

        Raises:
            ClientError: not connected, or no reply in time.
        """
        request_id = f"c{next(self._ids)}"
        pending = _Pending()
        with self._pending_lock:
            self._pending[request_id] = pending
        try:
            self.send({**frame, "id": request_id})
            if not pending.done.wait(timeout):
                raise ClientError("the server did not answer in time")
            if pending.reply is None:
                raise ClientError("the connection was lost before the server answered")
            return pending.reply
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)

    def older(self, with_user: str | None = None, limit: int = OLDER_PAGE) -> dict[str, Any]:
        """The page before the oldest message this session has seen: the room's,
        or the DMs with `with_user`. Returns the server's reply (a `history`
        frame, or an error); each call goes one page further back."""
        reply = self.request(commands.history(self._oldest.get((with_user or "").casefold()),
                                              limit, with_user))
        if reply.get("type") == "history":
            messages = reply.get("messages")
            for frame in messages if isinstance(messages, list) else []:
                if isinstance(frame, dict):
                    self._note_oldest(frame)
        return reply

    def _note_oldest(self, frame: dict[str, Any]) -> None:
        """Remember the oldest message seen, per conversation, for `older`."""
        msg_id = frame.get("id")
        if not isinstance(msg_id, int) or isinstance(msg_id, bool):
            return
        key = "" if frame.get("type") == "message" else dm_peer(frame, self.username).casefold()
        if msg_id < self._oldest.get(key, msg_id + 1):
            self._oldest[key] = msg_id

    def change_password(self, old: str, new: str) -> dict[str, Any]:
        """Change this account's password; returns the server's reply.

        After an `ok`, the new password is the one used to log in again
        after a drop (the old one would be refused).

        Raises:
            InvalidPassword: `new` breaks the server's rules (its hello's);
                nothing was sent.
            ClientError: as `request`.
        """
        password_policy(self.hello).check(new, self.username)
        reply = self.request(commands.change_password(old, new))
        if reply.get("type") == "ok":
            self._password = new
        return reply

    def send(self, frame: dict[str, Any]) -> None:
        link = self._link
        if link is None:
            raise ClientError("not connected; reconnecting")
        try:
            link.send(frame)
        except OSError as e:
            raise ClientError(f"sending failed: {e.strerror or e}") from None

    def close(self) -> None:
        """Say goodbye and stop; no reconnecting after this."""
        self._stop.set()
        link = self._link
        if link is not None:
            try:
                link.send({"type": "quit"})
            except OSError:
                pass
            link.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)

    # -- the reader thread ----------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            final = self._pump()
            self._fail_pending()
            if self._closing:
                self._end("closed")
                return
            if final is not None:  # the server told us why, and it is final
                self._end(describe_error(final), final)
                return
            if not self.reconnect or not self._reconnect():
                self._end("connection lost")
                return

    def _pump(self) -> dict[str, Any] | None:
        """Deliver frames until the link drops; the server's error frame if it
        ended the session for good."""
        link = self._link
        assert link is not None
        pinged = False
        try:
            while True:
                try:
                    frame = link.read(self.options.silence_s)
                except TimeoutError:
                    if pinged:
                        break  # no answer either: the link is dead, though TCP does not know
                    link.send(protocol.ping())
                    pinged = True
                    continue
                if frame is None:
                    break
                pinged = False
                final = self._handle(link, frame)
                if final is not None:
                    return final
        except (OSError, ClientError, TimeoutError):
            pass
        finally:
            self._link = None
            link.close()
        if not self._closing:
            self.on_event(Notice("lost", "connection lost"))
        return None

    def _handle(self, link: Link, frame: dict[str, Any]) -> dict[str, Any] | None:
        kind = frame.get("type")
        if kind == "ping":
            link.send(protocol.pong())
            return None
        re_ = frame.get("re")
        if isinstance(re_, str):
            with self._pending_lock:
                pending = self._pending.get(re_)
            if pending is not None:
                pending.reply = frame
                pending.done.set()
                return None
        # A reply that came after its request gave up waiting is no verdict on
        # the session: a late `bad_credentials` is a wrong old password.
        if kind == "error" and frame.get("code") in FINAL_CODES and "re" not in frame:
            return frame  # said once, by the notice that the session ended
        if kind == "message" and not self._is_news(frame):
            return None
        if kind in ("message", "dm"):
            self._note_oldest(frame)
        self.on_event(frame)
        return None

    def _is_news(self, frame: dict[str, Any]) -> bool:
        """False for a room message this session has shown already (given
        again after a reconnect); says so if the replay leaves a gap.

        This rests on the protocol's promise that ids only ever increase,
        across restarts too (a server put back to an older copy of its
        database would break it: its new messages would look seen)."""
        msg_id = frame.get("id")
        if not isinstance(msg_id, int) or isinstance(msg_id, bool):
            return True
        replayed = frame.get("history") is True
        if replayed and self._first_replay_after_reconnect:
            self._first_replay_after_reconnect = False
            if msg_id > self._newest_in_room > 0:  # nothing shown is among the ones given
                self.on_event(Notice("missed", "more was said while you were away than the "
                                               "server gives back: only the last messages "
                                               "follow"))
        if replayed and msg_id <= self._newest_in_room:
            return False
        self._newest_in_room = max(self._newest_in_room, msg_id)
        return True

    def _reconnect(self) -> bool:
        delay = BACKOFF_START_S
        while not self._closing:
            self.on_event(Notice("reconnecting", f"reconnecting in {delay:.0f} s"))
            if self._stop.wait(delay):
                return False
            try:
                self._link, self.welcome = self._connect()
            except ServerError as e:
                if e.code_text in FINAL_CODES:
                    self._end(str(e), e.frame)
                    return False
                if isinstance(e.retry_after, (int, float)):
                    delay = max(delay, float(e.retry_after))
            except TrustError as e:  # a changed certificate: say why, never retry it
                self._end(str(e))
                return False
            except (ClientError, OSError, TimeoutError) as e:
                log.debug("reconnect failed: %s", e)
            else:
                if self._closing:  # close() came while we connected: it saw no link
                    self._link.close()
                    self._link = None
                    return False
                self._first_replay_after_reconnect = True
                self.on_event(Notice("back", "reconnected"))
                self.on_event(self.welcome)
                return True
            delay = min(BACKOFF_MAX_S, delay * 2) * random.uniform(0.9, 1.1)
        return False

    def _fail_pending(self) -> None:
        with self._pending_lock:
            for pending in self._pending.values():
                pending.done.set()

    def _end(self, reason: str, frame: dict[str, Any] | None = None) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            if not self._closing:  # a goodbye the user asked for needs no notice
                self.on_event(Notice("ended", reason, frame))
            self.ended.set()
