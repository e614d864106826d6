"""One client connection, from accept to close, and the session it becomes.

`Connection.run` is the thread of one connection, shaped like socketserver's
setup / handle / finish: the TLS handshake, then the login handshake (only
this thread writes until then), then the chat loop, in which this thread only
reads, and one of the server's writer threads (writers.py) sends what the
session's Outbox holds. Every request is answered here; the room does the
fan-out.

A connection sees its server only as a `Host`, the narrow interface below,
and leaves to admission.py who may log in, register or hash, and when.

A failure in one connection is logged and closes that connection only.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from . import __version__, protocol
from .admission import Admission, Refusal
from .config import Config
from .errors import (
    AccountDisabled,
    AuthchatError,
    BadCredentials,
    ErrorCode,
    NoSuchUser,
    PasswordChanged,
    RegistrationClosed,
    ShuttingDown,
    UsernameTaken,
)
from .journal import Journal, history_event, waiting_frames
from .limits import TokenBucket, ip_key
from .protocol import (
    Ban,
    Dm,
    ErrorReply,
    Hello,
    History,
    HistoryPage,
    Kick,
    Login,
    Logout,
    Ok,
    OnlineUser,
    OutgoingEvent,
    Passwd,
    Ping,
    Pong,
    PongReply,
    Quit,
    Register,
    Request,
    Resume,
    Say,
    ServerPing,
    ServerProtocol,
    Violation,
    Welcome,
    Who,
    WhoList,
    encode_event,
)
from .room import Outbox, Room
from .sanitize import escape, redacted
from .store import DatabaseError, Store, User
from .store.messages import StoredMessage
from .transport import (
    LINGER_S,
    SEND_TIMEOUT_S,
    TLS_HANDSHAKE_MAX_S,
    PlainTransport,
    TLSTransport,
    TransportClosed,
)
from .writers import WriterPool

log = logging.getLogger(__name__)
T = TypeVar("T")

SEND_BUFFER_BYTES = 256 * 1024
EVICTION_GRACE_S = 2.0         # how long an ended session may take to flush before a hard close
INTERNAL_ERROR = "internal error"
BUSY_RETRY_S = 1.0             # when a login finds bcrypt's line full: try again this soon


class Host(Protocol):
    """What a connection needs of the server that accepted it: all it may
    touch of it. The server satisfies it structurally, and this module never
    imports the server."""

    @property
    def config(self) -> Config: ...

    @property
    def tls_context(self) -> ssl.SSLContext | None: ...

    @property
    def stopping(self) -> threading.Event: ...

    @property
    def store(self) -> Store: ...

    @property
    def room(self) -> Room[Session]: ...

    @property
    def journal(self) -> Journal[Session] | None: ...

    @property
    def writers(self) -> WriterPool: ...

    @property
    def admission(self) -> Admission[Connection]: ...

    def off_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work` on one of the server's few worker threads, for bcrypt
        and SQLite, and wait for its result."""
        ...


class Session:
    """An authenticated client: what the room sees of a connection."""

    def __init__(self, connection: Connection, user: User) -> None:
        assert connection.transport is not None
        self.connection = connection
        self.transport = connection.transport
        self.reader_done = connection.reader_done
        self.finished = threading.Event()  # its writer is done with it
        self._username = user.username
        # The account, by id: a name can pass to a new account once the old one
        # is deleted, and nothing of the old one's may go with it.
        self.account_id = user.id
        self.role = user.role
        # The password this session logged in with; a change made elsewhere ends it.
        self.password_version = user.password_version
        # The version this session's own change would write, while it is made.
        self.password_version_changing_to: int | None = None
        limits = connection.host.config.limits
        self.outbox = Outbox(limits.outbound_queue_bytes)
        self.end_reason: str | None = None
        self.close_by: float | None = None
        self.bucket = TokenBucket(limits.messages_per_second, limits.message_burst,
                                  time.monotonic())
        # The session token this session came in with or was given, for its
        # logout to end; a credential, kept in memory only.
        self.token = connection.session_token

    @property
    def username(self) -> str:
        return self._username

    def deliver(self, data: bytes) -> None:
        if not self.outbox.put(data):
            self.evict()

    def evict(self) -> None:
        log.info("evicting %s from %s: outbound queue full", escape(self.username),
                 self.connection.ip)
        self.end(ErrorCode.SLOW_CONSUMER, "you fell too far behind", "slow_consumer",
                 discard=True)

    def follow_account(self, user: User | None) -> None:
        """Apply the account as it is now (None: deleted): a disabled or
        deleted account loses the session, a changed password ends it unless
        this session is the one changing it, a new role applies at once."""
        if user is None or user.disabled:
            self.end_for_account_gone()
        elif self.password_is_stale(user.password_version):
            self.end_for_password_change()
        elif user.role != self.role:
            self.role = user.role
            log.info("role of %s is now %s", escape(self.username), user.role)

    def password_is_stale(self, current_version: int) -> bool:
        """Whether the account's password has changed since this session last
        knew it, other than by its own change in progress."""
        # Read in the opposite order to the one the change writes them in
        # (version, then changing_to cleared): read the other way round,
        # housekeeping could see the old version and no change in progress.
        changing_to = self.password_version_changing_to
        return current_version > self.password_version and current_version != changing_to

    def end_for_account_gone(self) -> None:
        """Disabled or deleted: a deleted account's sessions are ended as a
        disabled one's are."""
        self.end(ErrorCode.ACCOUNT_DISABLED, "this account is disabled", "disabled")

    def end_for_password_change(self) -> None:
        self.end(ErrorCode.KICKED, "your password was changed; log in again",
                 "password_changed")

    def reply(self, event: OutgoingEvent) -> None:
        self.deliver(encode_event(event))

    def end(self, code: ErrorCode | None, message: str, reason: str,
            discard: bool = False) -> None:
        """End the session once: `code` is the last frame the client gets."""
        final = encode_event(ErrorReply(code, message)) if code is not None else None
        if self.outbox.close(final, discard=discard):
            self.end_reason = reason
            self.close_by = time.monotonic() + EVICTION_GRACE_S


class Connection:
    """One client connection, from accept to close, run in its own thread."""

    def __init__(self, host: Host, sock: socket.socket, ip: str) -> None:
        self.host = host
        self.sock = sock
        self.ip = ip
        self.accepted_at = time.monotonic()
        self.authenticated = False
        self.session: Session | None = None
        self.transport: PlainTransport | None = None
        limits = host.config.limits
        self.protocol = ServerProtocol(limits.max_frame_bytes, limits.max_text_length)
        self.reader_done = threading.Event()
        self._welcome_re: protocol.RequestId = None
        # The session token the login gave (with its expiry), or the one it
        # resumed with: set on the worker thread that checked it, read here
        # after that check has returned.
        self.session_token: str | None = None
        self._issued_token: tuple[str, str] | None = None
        # Set under the admission's lock: evicted to make room before login; or
        # not to be, since its login is being checked.
        self.evicted = False
        self.checking = False
        self._wake_lock = threading.Lock()  # a wake-up never reaches a closed socket
        self._closed = False

    # -- lifecycle: setup, handle, finish ----------------------------------------

    def run(self) -> None:
        self.host.admission.track(self)
        log.info("connection from %s", self.ip)
        try:
            self._setup()
            user = self._handshake()
            if user is not None:
                self._chat(user)
        except (OSError, TimeoutError) as e:
            log.debug("connection from %s ended: %s", self.ip, e)
        except Exception:  # last resort: one client's crash must not touch the others
            log.exception("connection from %s failed", self.ip)
        finally:
            self._finish()

    def _setup(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A fixed send buffer turns off the kernel's autotuning, which would
        # let a client that never reads park up to 4 MiB in kernel memory on
        # top of its outbound queue.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        context = self.host.tls_context
        if context is None:
            self.transport = PlainTransport(self.sock, SEND_TIMEOUT_S)
        else:
            self.transport = TLSTransport(self.sock, SEND_TIMEOUT_S, context)
            deadline = min(self._handshake_deadline, time.monotonic() + TLS_HANDSHAKE_MAX_S)
            try:
                self.transport.handshake(deadline)
            except (ssl.SSLError, TimeoutError, TransportClosed) as e:
                log.info("TLS handshake with %s failed: %s", self.ip, e)
                raise TransportClosed("TLS handshake failed") from None

    def _finish(self) -> None:
        self.reader_done.set()
        session = self.session
        if session is not None:
            log.info("%s left (%s)", escape(session.username), session.end_reason)
        with self._wake_lock:
            self._closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
        self.host.admission.release(self)
        if session is not None:
            # Cut the cycles an ended session sits in: it and this connection
            # refer to each other, and its outbox holds the writer's wake-up
            # callback, which refers to it. Left to the garbage collector's
            # next full pass, every ended session keeps its socket and TLS state
            # till then: under churn, tens of megabytes (docs/benchmarks.md, Soak).
            session.outbox.wake = _nothing
            self.session = None

    @property
    def _handshake_deadline(self) -> float:
        return self.accepted_at + self.host.config.limits.handshake_timeout_s

    def stop_for_shutdown(self) -> None:
        """Called from the shutdown thread: end this connection with server_shutdown."""
        if self.session is not None:
            self.session.end(ErrorCode.SERVER_SHUTDOWN, "the server is shutting down",
                             "server_shutdown")
        elif self.transport is not None:
            self.transport.wake_reader()  # the reader sends the error itself

    def evict(self) -> None:
        """Called from the accept loop: end this connection, not logged in yet,
        to make room. Only its own thread writes to it (SECURITY.md C4), so it
        is only woken here, and it sends too_many_connections itself."""
        self.evicted = True
        with self._wake_lock:
            if not self._closed:  # else its descriptor may be someone else's now
                try:
                    self.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def transport_shutdown(self) -> None:
        if self.transport is not None:
            self.transport.shutdown()

    # -- before login -------------------------------------------------------

    def _send_now(self, event: OutgoingEvent) -> None:
        """Write directly: only before login, when this thread is the only writer."""
        assert self.transport is not None and self.session is None
        self.transport.sendall(encode_event(event))

    def _fail(self, code: ErrorCode, message: str, re_: protocol.RequestId = None,
              retry_after: float | None = None) -> None:
        """Send a fatal error before login, then close gracefully."""
        self._send_now(ErrorReply(code, message, re_, retry_after))
        self._linger()

    def _linger(self) -> None:
        """Let the peer read what we sent: half-close, drain briefly, then close."""
        assert self.transport is not None
        self.transport.finish_sending()
        deadline = time.monotonic() + LINGER_S
        try:
            while self.transport.recv(deadline):
                pass
        except (OSError, TimeoutError):
            pass

    def _handshake(self) -> User | None:
        cfg = self.host.config
        self._send_now(Hello(f"authchat/{__version__}", cfg.server.registration,
                              self.host.tls_context is not None,
                              cfg.auth.min_password_length))
        assert self.transport is not None
        while True:
            try:
                data = self.transport.recv(self._handshake_deadline)
            except TimeoutError:
                self._fail(ErrorCode.HANDSHAKE_TIMEOUT, "log in within "
                           f"{cfg.limits.handshake_timeout_s:g} seconds")
                return None
            if self.evicted:
                self._fail_evicted()
                return None
            if self.host.stopping.is_set():
                self._fail(ErrorCode.SERVER_SHUTDOWN, "the server is shutting down")
                return None
            if not data:
                return None
            self.protocol.receive_data(data)
            while (event := self.protocol.next_event()) is not None:
                outcome = self._handshake_event(event)
                if outcome is not None:
                    return outcome if isinstance(outcome, User) else None

    def _handshake_event(self, event: protocol.Event) -> User | bool | None:
        """Handle one event before login: a User once in, False to close, None to go on."""
        if isinstance(event, Violation):
            if event.fatal:
                self._fail(event.code, event.message, event.re)
                return False
            self._send_now(ErrorReply(event.code, event.message, event.re))
            return None
        if isinstance(event, Ping):
            self._send_now(PongReply(event.id))
            return None
        if isinstance(event, Quit):
            self._linger()
            return False
        assert isinstance(event, (Login, Register, Resume))
        if isinstance(event, Login) and self._sessions_full_here(event.username):
            # what room.enter would say after the hash: no bcrypt for it
            self._fail(ErrorCode.TOO_MANY_SESSIONS, "too many sessions for this account",
                       event.id)
            return False
        if not self.host.admission.start_checking(self):
            self._fail_evicted()
            return False
        user = self._authenticate(event)
        if user is not None:  # not evicted from here until it is in the room
            self._welcome_re = event.id
            return user
        self.host.admission.stop_checking(self)
        if self.protocol.auth_failed():
            log.info("closing %s after %d failed logins", self.ip, protocol.MAX_AUTH_FAILURES)
            self._linger()
            return False
        return None

    def _sessions_full_here(self, username: str) -> bool:
        """Whether the account has its maximum of sessions, one of them from
        this address: a login from here would be refused after its hash.

        Said to that address alone, which already knows the account is in
        use; anyone else learns only after the password is checked, so it
        tells no stranger that the account exists.
        """
        room = self.host.room
        sessions = room.sessions_of(username)
        if len(sessions) < room.max_sessions_per_user:
            return False
        key = ip_key(self.ip)
        return any(ip_key(s.connection.ip) == key for s in sessions)

    def _fail_evicted(self) -> None:
        self._fail(ErrorCode.TOO_MANY_CONNECTIONS, "the server is full; try again")

    def _authenticate(self, request: Login | Register | Resume) -> User | None:
        """Log in, register or resume; on failure the client has its error and
        None comes back."""
        outcome = self._attempt(request)
        if isinstance(outcome, User):
            return outcome
        refusal = outcome
        self._send_now(ErrorReply(refusal.code, refusal.message, request.id,
                                      refusal.retry_after))
        who = "a session token" if isinstance(request, Resume) \
            else _name_for_log(request.username, refusal.names_an_account)
        log.info("%s failed from %s: %s (%s)", type(request).__name__.lower(), self.ip,
                 refusal.code, who)
        return None

    def _attempt(self, request: Login | Register | Resume) -> User | Refusal:
        """A registration or a login, throttled, then checked in turn; a
        resume, throttled like a login, then checked without a hash.

        Registrations in flight count against the address's hourly limit, or
        a burst sent at once would all get through.
        """
        admission = self.host.admission
        if isinstance(request, Resume):
            with admission.resume_attempt(self.ip) as wait:
                if wait > 0:
                    return Refusal(ErrorCode.RATE_LIMITED, "too many failed logins; try later",
                                   wait)
                return self._check(request)
        if isinstance(request, Register):
            refusal = self._registration_refusal(request)
            if refusal is not None:
                return refusal
            attempt = admission.registration_attempt(self.ip)
            throttled = "too many registrations; try later"
        else:
            attempt = admission.login_attempt(self.ip, request.username)
            throttled = "too many failed logins; try later"
        return self._in_turn(attempt, throttled, "the server is busy; try again",
                             self._handshake_deadline, lambda: self._check(request))

    def _in_turn(self, attempt: AbstractContextManager[float], throttled: str, busy: str,
                 deadline: float, work: Callable[[], T]) -> T | Refusal:
        """Throttle, then hash: run `work` once `attempt` (a login or
        registration throttle) lets it through and bcrypt has a turn for this
        address by `deadline`; otherwise why not, with the message given."""
        with attempt as wait:
            if wait > 0:
                return Refusal(ErrorCode.RATE_LIMITED, throttled, wait)
            with self.host.admission.hashing(deadline, self.ip) as got_slot:
                if not got_slot:
                    return Refusal(ErrorCode.RATE_LIMITED, busy, BUSY_RETRY_S)
                return work()

    def _check(self, request: Login | Register | Resume) -> User | Refusal:
        """Check the credentials on an auth thread; a failure as the client's refusal."""
        try:
            return self.host.off_thread(self._check_credentials, request)
        except AuthchatError as e:
            return Refusal(e.code, _public_message(e), names_an_account=_names_account(e))
        except Exception:  # last resort: answer, and keep serving others
            log.exception("%s from %s failed", type(request).__name__, self.ip)
            return Refusal(ErrorCode.SERVER_ERROR, INTERNAL_ERROR)

    def _registration_refusal(self, request: Register) -> Refusal | None:
        """The refusals of a registration that the mode alone decides."""
        mode = self.host.config.server.registration
        if mode == "closed" or (mode == "invite" and request.invite is None):
            return Refusal(ErrorCode.REGISTRATION_CLOSED,
                           "registration needs an invite" if mode == "invite"
                           else "registration is closed")
        return None

    def _check_credentials(self, request: Login | Register | Resume) -> User:
        host, store = self.host, self.host.store
        if isinstance(request, Resume):
            return self._check_token(request)
        try:
            if isinstance(request, Register):
                invite = request.invite if host.config.server.registration == "invite" else None
                user = store.create_user(request.username, request.password, actor="register",
                                         invite=invite)
                host.admission.registered(self.ip)
                log.info("registered %s from %s", escape(user.username), self.ip)
                self._issue_token_if_asked(request, user)
                return user
            user = store.authenticate(request.username, request.password)
        except AuthchatError as e:
            if isinstance(request, Login):
                host.admission.auth_failed(self.ip, request.username)
            elif isinstance(e, RegistrationClosed):
                # A bad invite is a guess too, but at the invite, not at the
                # account it names: charged to the address alone, or anyone
                # could spend an account's allowance through registrations,
                # which no account throttle holds back.
                host.admission.auth_failed(self.ip, None)
            elif isinstance(e, UsernameTaken):
                # probing for names spends the address's registrations
                host.admission.registered(self.ip)
            raise
        host.admission.auth_succeeded(self.ip, user.username)
        log.info("login %s from %s", escape(user.username), self.ip)
        self._issue_token_if_asked(request, user)
        return user

    def _check_token(self, request: Resume) -> User:
        """A resume: the token's account, or BadCredentials, charged to the
        address (a token names no account to charge)."""
        try:
            user = self.host.store.resume(request.token)
        except BadCredentials:
            self.host.admission.auth_failed(self.ip, None)
            raise
        self.host.admission.auth_succeeded(self.ip, user.username)
        self.session_token = request.token
        log.info("login %s from %s with a session token", escape(user.username), self.ip)
        return user

    def _issue_token_if_asked(self, request: Login | Register, user: User) -> None:
        """A session token for a password login that asked for one, if the
        server gives them. A failure here fails the login: the client asked
        for a token and must not be told it is in without one."""
        auth = self.host.config.auth
        if not request.session or auth.session_token_days <= 0:
            return
        token, expires = self.host.store.issue_token(
            user, lifetime=timedelta(days=auth.session_token_days),
            keep=auth.session_tokens_per_user)
        self.session_token = token
        self._issued_token = (token, expires)

    # -- in the room ------------------------------------------------------------

    def _chat(self, user: User) -> None:
        session = Session(self, user)
        self._end_sessions_of_a_former_holder(user)
        waiting = self._waiting_dms(user)
        token, expires = self._issued_token or (None, None)
        self._issued_token = None
        admitted = self.host.room.enter(
            session, lambda names: encode_event(
                Welcome(user.username, user.role, tuple(names), self._welcome_re,
                        token, expires)),
            waiting_frames(waiting))
        if admitted and waiting:
            self._given(waiting)
        self.protocol.authenticated()
        self.authenticated = True
        self.host.admission.mark_authenticated(self)
        if not admitted:
            if token is not None:  # never given: it must not outlive this refusal
                self._revoke_token(token)
            self._fail(ErrorCode.TOO_MANY_SESSIONS, "too many sessions for this account")
            return
        self.session = session
        self.host.writers.add(session)
        self._catch_up_with_the_account(session)
        try:
            self._read_loop(session)
        finally:
            self.reader_done.set()
            session.end(None, "", "disconnect")
            self.host.room.leave(session, session.end_reason or "disconnect")
            # The writer flushes, half-closes and lingers; close only after it
            # lets go of the socket, so its descriptor cannot be reused under it.
            if not session.finished.wait(EVICTION_GRACE_S + SEND_TIMEOUT_S + LINGER_S):
                log.warning("writer never finished with %s", escape(session.username))
                self.transport_shutdown()
                session.finished.wait(EVICTION_GRACE_S)

    def _end_sessions_of_a_former_holder(self, user: User) -> None:
        """Sessions under this name that belong to another account belong to
        a deleted one (names are unique among accounts): end them before this
        one enters, so that nothing meant for either reaches the other."""
        for member in self.host.room.sessions_of(user.username):
            if member.account_id != user.id:
                member.end_for_account_gone()

    def _catch_up_with_the_account(self, session: Session) -> None:
        """Apply the account as it is now to this session, where housekeeping
        may have passed a change by: one made between a login's check and its
        entering the room, or while this session was changing its password."""
        try:
            current = self.host.off_thread(self.host.store.users_by_id,
                                             {session.account_id})
        except ShuttingDown:
            return  # the session ends anyway, told why
        except (AuthchatError, DatabaseError) as e:
            log.warning("could not re-read the account of %s: %s", escape(session.username), e)
            return
        session.follow_account(current.get(session.account_id))

    def _waiting_dms(self, user: User) -> list[StoredMessage]:
        """DMs kept for this account; none if the database cannot say now (they
        stay kept, for the next login)."""
        journal = self.host.journal
        if journal is None:
            return []
        try:
            return self.host.off_thread(journal.waiting_for, user.id)
        except ShuttingDown:
            return []  # kept for the next login
        except AuthchatError as e:
            log.warning("could not read the DMs kept for %s: %s", escape(user.username), e)
            return []

    def _given(self, waiting: list[StoredMessage]) -> None:
        """Kept DMs are now in the session's queue: at most once from here on (a
        crash before they are sent loses them; if this fails, they come again)."""
        assert self.host.journal is not None
        try:
            self.host.off_thread(self.host.journal.log.mark_delivered,
                                   [m.id for m in waiting])
        except ShuttingDown:
            pass  # given again at the next login, as the docstring says
        except AuthchatError as e:
            log.warning("could not mark %d kept DMs as given: %s", len(waiting), e)

    def _read_loop(self, session: Session) -> None:
        assert self.transport is not None
        limits = self.host.config.limits
        last_heard = time.monotonic()
        pinged = False
        self._handle_received(session)  # requests that came in the same read as the login
        while not session.outbox.closed:
            wait = limits.ping_timeout_s if pinged else limits.ping_interval_s
            try:
                data = self.transport.recv(last_heard + wait)
            except TimeoutError:
                if pinged:
                    session.end(None, "", "timeout")
                    return
                session.reply(ServerPing())
                pinged = True
                continue
            if not data:
                return
            last_heard, pinged = time.monotonic(), False
            self.protocol.receive_data(data)
            self._handle_received(session)

    def _handle_received(self, session: Session) -> None:
        """Carry out every complete request received so far."""
        says: list[Say] = []
        while not session.outbox.closed and (event := self.protocol.next_event()):
            # A run of messages enters the room in one go. One with an id
            # is said alone: its ok must follow its own message directly.
            if isinstance(event, Say) and event.id is None:
                if self._take_token(session, event, says):
                    says.append(event)
                continue
            self._say_all(session, says)
            self._chat_event(session, event)
        self._say_all(session, says)

    def _take_token(self, session: Session, event: Request, says: list[Say]) -> bool:
        """Take a token for `event`; when there is none, say `says` first and push back."""
        wait = session.bucket.take(time.monotonic())
        if wait <= 0:
            return True
        self._say_all(session, says)
        session.reply(ErrorReply(ErrorCode.RATE_LIMITED, "slow down", event.id, wait))
        time.sleep(wait)  # back-pressure: read no more from a flooder until it may send
        return False

    def _say_all(self, session: Session, says: list[Say]) -> None:
        """Broadcast `says` (then empty it): one commit, one room lock and one
        wake-up for all."""
        if says:
            texts = [say.text for say in says]
            says.clear()
            try:
                self._say(session, texts)
            except AuthchatError as e:  # not stored, so not sent: the sender must know
                session.reply(ErrorReply(e.code, _public_message(e)))

    def _say(self, session: Session, texts: list[str]) -> list[int]:
        """Store (with history on) and broadcast; the messages' ids."""
        journal = self.host.journal
        if journal is None:
            return self.host.room.say_many(session, texts)
        return journal.say(session, texts)

    def _chat_event(self, session: Session, event: protocol.Event) -> None:
        if isinstance(event, Violation):
            if event.fatal:
                session.end(event.code, event.message, "disconnect")
            else:
                session.reply(ErrorReply(event.code, event.message, event.re))
            return
        if isinstance(event, Pong) or not self._take_token(session, event, []):
            return
        try:
            self._dispatch(session, event)
        except AuthchatError as e:
            session.reply(ErrorReply(e.code, _public_message(e), event.id))
        except Exception:
            log.exception("request from %s failed", escape(session.username))
            session.reply(ErrorReply(ErrorCode.SERVER_ERROR, INTERNAL_ERROR, event.id))

    def _dispatch(self, session: Session, request: Request) -> None:
        room = self.host.room
        if isinstance(request, Say):
            msg_id = self._say(session, [request.text])[0]
            if request.id is not None:
                session.reply(Ok(request.id, message=msg_id))
        elif isinstance(request, Dm):
            self._direct(session, request)
        elif isinstance(request, History):
            session.reply(self._history(session, request))
        elif isinstance(request, Who):
            online = tuple(OnlineUser(u["username"], u["role"]) for u in room.who())
            session.reply(WhoList(online, request.id))
        elif isinstance(request, Ping):
            session.reply(PongReply(request.id))
        elif isinstance(request, Quit):
            if request.id is not None:
                session.reply(Ok(request.id))
            session.end(None, "", "quit")
        elif isinstance(request, Logout):
            self._logout(session, request)
        elif isinstance(request, Passwd):
            self._change_password(session, request)
        elif isinstance(request, (Kick, Ban)):
            self._moderate(session, request)

    def _logout(self, session: Session, request: Logout) -> None:
        """End the session and its token; if the token cannot be ended now,
        the client is told so and stays in, to try again."""
        if session.token is not None:
            self.host.off_thread(self.host.store.revoke_token, session.token)
            session.token = None
        if request.id is not None:
            session.reply(Ok(request.id))
        session.end(None, "", "logout")

    def _revoke_token(self, token: str) -> None:
        try:
            self.host.off_thread(self.host.store.revoke_token, token)
        except (AuthchatError, DatabaseError) as e:
            log.warning("could not end an unused session token: %s", e)

    def _direct(self, session: Session, request: Dm) -> None:
        journal = self.host.journal
        if journal is None:  # no history: only someone online can be written to
            dm_id = self.host.room.direct(session, request.to, request.text)
            if dm_id is None:
                raise NoSuchUser(f"{request.to[:64]} is not online")
            ok = Ok(request.id, message=dm_id)
        else:
            sent = journal.direct(session, request.to, request.text)
            ok = Ok(request.id, message=sent.id, queued=sent.queued)
        if request.id is not None:
            session.reply(ok)

    def _history(self, session: Session, request: History) -> HistoryPage:
        """A page of older messages: the room's, or the DMs with one person."""
        journal = self.host.journal
        if journal is None:
            return HistoryPage((), False, request.id)
        if request.with_user is None:
            page, more = self.host.off_thread(journal.log.room_page, request.before,
                                                request.limit)
        else:
            page, more = self.host.off_thread(journal.log.dm_page, session.account_id,
                                                request.with_user, request.before,
                                                request.limit)
        return HistoryPage(tuple(history_event(m) for m in page), more, request.id)

    def _change_password(self, session: Session, request: Passwd) -> None:
        """A guess at the old password counts like a login's: a session left
        open somewhere must not be a way to guess the password faster."""
        deadline = time.monotonic() + self.host.config.limits.handshake_timeout_s
        changed = self._in_turn(
            self.host.admission.login_attempt(self.ip, session.username),
            "too many failed attempts; try later", "the server is busy", deadline,
            lambda: self._set_password_of(session, request))
        if isinstance(changed, Refusal):
            session.reply(ErrorReply(changed.code, changed.message, request.id,
                                     changed.retry_after))
        elif changed:
            log.info("%s changed their password", escape(session.username))
            session.reply(Ok(request.id))

    def _set_password_of(self, session: Session, request: Passwd) -> bool:
        """Make the change; False if the session has ended, its password changed
        elsewhere. Other failures are raised for the caller to answer."""
        host = self.host
        session.password_version_changing_to = session.password_version + 1
        changed = False
        try:
            user = host.off_thread(self._set_password, session, request)
            session.password_version = user.password_version
            changed = True
        except PasswordChanged:
            session.end_for_password_change()
            return False
        finally:
            session.password_version_changing_to = None
            if not changed:
                # Housekeeping let pass a change to the version this session
                # was about to write; if that change was not this session's,
                # the session must end now.
                self._catch_up_with_the_account(session)
        return True

    def _set_password(self, session: Session, request: Passwd) -> User:
        host, store = self.host, self.host.store
        try:
            user = store.change_password(session.account_id, request.old, request.new,
                                         known_version=session.password_version,
                                         actor=f"user:{session.username}")
        except BadCredentials:
            host.admission.auth_failed(self.ip, session.username)
            raise
        host.admission.auth_succeeded(self.ip, session.username)
        return user

    def _moderate(self, session: Session, request: Kick | Ban) -> None:
        host, store = self.host, self.host.store
        # the role as it is now, not at login
        try:
            actor: User | None = host.off_thread(store.get_user_by_id, session.account_id)
        except NoSuchUser:
            actor = None
        if actor is None or actor.role != "admin" or actor.disabled:
            session.reply(ErrorReply(ErrorCode.FORBIDDEN, "admins only", request.id))
            return
        if request.username.lower() == session.username.lower():
            session.reply(ErrorReply(ErrorCode.BAD_REQUEST, "you cannot do that to "
                                         "yourself", request.id))
            return
        targets = host.room.sessions_of(request.username)
        if isinstance(request, Ban):
            host.off_thread(lambda: store.set_disabled(request.username, True,
                                                         actor=f"user:{session.username}"))
        elif not targets:
            raise NoSuchUser(f"{request.username[:64]} is not online")
        verb = "banned" if isinstance(request, Ban) else "kicked"
        note = f"{verb} by {session.username}" + (f": {request.reason}" if request.reason else "")
        # ok first: the target's leave must not overtake it in the admin's stream
        session.reply(Ok(request.id))
        for target in targets:
            target.end(ErrorCode.KICKED, note, "kicked")
        log.info("%s %s %s (%s)", escape(session.username), verb, escape(request.username),
                 escape(request.reason))


def _nothing() -> None:
    pass


def _names_account(error: AuthchatError) -> bool:
    """Whether a failed login or registration was for a name an account has."""
    if isinstance(error, BadCredentials):
        return error.account_exists
    return isinstance(error, (AccountDisabled, UsernameTaken))


def _name_for_log(name: str, names_an_account: bool) -> str:
    """An account's name as it is; any other name only as a keyed hash."""
    return f"user {escape(name[:64])}" if names_an_account else f"unknown user {redacted(name)}"


def _public_message(error: AuthchatError) -> str:
    """What a client may read: never the details of an internal failure."""
    if error.code is ErrorCode.SERVER_ERROR:
        log.error("internal failure: %s", error)
        return INTERNAL_ERROR
    return error.message


