"""The chat server: listener, connections, sessions, limits, shutdown.

Methods for the caller: `Server(config, store)`, `start()`, `address`,
`shutdown()`. Everything else is the server's own.

Threads:
  - the accept loop, which only counts and admits: TLS handshakes and any
    other slow work happen in the connection's own thread;
  - one thread per connection, reading: it runs the TLS handshake, the
    login/register handshake under one absolute deadline, then the chat loop;
  - one writer thread per authenticated session, draining its Outbox;
  - one housekeeping thread: live revocation of accounts changed by the admin
    CLI (via PRAGMA data_version) and forced closes of ended sessions whose
    client stopped reading.
bcrypt runs in connection threads, bounded by a semaphore and never under a
lock that other sessions need. The server holds no SQL: the Store does.
"""

from __future__ import annotations

import logging
import os
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__, protocol
from .config import Config
from .errors import AuthchatError, ConfigError, ErrorCode, NoSuchUser, RegistrationClosed
from .limits import ConnectionCounter, LoginThrottle, TokenBucket, WindowLimit, ip_key
from .logs import escape
from .protocol import (
    Ban,
    Dm,
    Kick,
    Login,
    Passwd,
    Ping,
    Pong,
    Quit,
    Register,
    Request,
    Say,
    ServerProtocol,
    Violation,
    Who,
)
from .room import Outbox, Room
from .store import Store, User
from .tls import server_context
from .transport import PlainTransport, TLSTransport, TransportClosed

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0
SEND_BUFFER_BYTES = 256 * 1024
TLS_HANDSHAKE_MAX_S = 5.0
LINGER_S = 1.0                 # how long a closing connection waits for the peer to hang up
EVICTION_GRACE_S = 2.0         # how long an ended session may take to flush before a hard close
HOUSEKEEPING_INTERVAL_S = 0.5
ACCEPT_POLL_S = 0.5
ACCEPT_BACKOFF_S = 0.1
THREAD_STACK_BYTES = 512 * 1024
REFUSAL_THREADS = 16           # TLS refusals in flight at once; past that, just close
HASH_QUEUE_PER_SLOT = 4        # bcrypt waiters allowed per concurrent hash
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


@dataclass
class Refusal:
    code: ErrorCode
    message: str
    retry_after: float | None = None


class Server:
    """A threaded chat server on one listening socket."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.room = Room(config.limits.max_sessions_per_user)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.tls_context: ssl.SSLContext | None = None
        self.fingerprint: str | None = None
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards the counters, throttles and _connections
        self._connections: set[Connection] = set()
        self._counter = ConnectionCounter()
        self._unauthenticated = 0
        self._throttle = LoginThrottle(config.limits.failed_logins_per_ip_per_minute,
                                       config.limits.failed_logins_per_account)
        self._registrations = WindowLimit(config.limits.registrations_per_ip_per_hour, 3600.0)
        slots = config.auth.max_concurrent_hashes or os.cpu_count() or 1
        self._hash_slots = threading.BoundedSemaphore(slots)
        self._hash_queue = threading.BoundedSemaphore(slots * (1 + HASH_QUEUE_PER_SLOT))
        self._refusals = threading.BoundedSemaphore(REFUSAL_THREADS)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Migrate, bind, and start accepting in background threads.

        Raises:
            ConfigError: plaintext on a public address without allow_plaintext,
                or unusable TLS files.
            OSError: the address cannot be bound.
        """
        cfg = self.config
        if not cfg.tls.enabled and cfg.server.host not in LOOPBACK_HOSTS \
                and not cfg.server.allow_plaintext:
            raise ConfigError(f"refusing plaintext on {cfg.server.host}: passwords would cross "
                              "the network readable; enable TLS or set allow_plaintext = true")
        self.store.ensure_schema()
        self.store.quick_check()
        if cfg.tls.enabled:
            self.tls_context, self.fingerprint = server_context(cfg)
        _raise_open_files_limit()
        threading.stack_size(THREAD_STACK_BYTES)
        self._listener = socket.create_server((cfg.server.host, cfg.server.port), backlog=1024,
                                              family=_family(cfg.server.host))
        self._spawn(self._accept_loop, "accept")
        self._spawn(self._housekeeping_loop, "housekeeping")
        host, port = self.address
        log.info("listening on %s port %d, TLS %s, registration %s", host, port,
                 f"on (SHA-256 fingerprint {self.fingerprint})" if self.fingerprint else "OFF",
                 cfg.server.registration)
        self.ready.set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "start() first"
        host, port = self._listener.getsockname()[:2]
        return host, port

    def shutdown(self, timeout: float = 4.0) -> None:
        """Stop accepting, tell every client `server_shutdown`, close, join threads."""
        if self.stopping.is_set():
            return
        log.info("shutting down")
        self.stopping.set()
        self.room.closing = True
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.stop_for_shutdown()
        started = time.monotonic()
        self._join_threads(started + timeout / 2)
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # stragglers that would not flush: cut them off
            conn.transport_shutdown()
        self._join_threads(started + timeout)
        if self._listener is not None:
            self._listener.close()
        lingering = [t.name for t in self._threads if t.is_alive()]
        if lingering:
            log.warning("threads still running at shutdown: %s", ", ".join(lingering[:10]))
        self.store.close()

    def _join_threads(self, deadline: float) -> None:
        with self._lock:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    # -- accepting ----------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        self._listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self.stopping.is_set():
                if selector.select(ACCEPT_POLL_S):
                    self._accept_one()

    def _accept_one(self) -> None:
        assert self._listener is not None
        try:
            sock, address = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # EMFILE and friends: shed load, never spin or die
            log.error("accept failed: %s", e)
            time.sleep(ACCEPT_BACKOFF_S)
            return
        ip = address[0]
        refusal = self._admit(ip)
        if refusal is not None:
            log.info("refused connection from %s: %s", ip, refusal.code)
            self._refuse(sock, refusal)
            return
        conn = Connection(self, sock, ip)
        try:
            self._spawn(conn.run, f"conn-{ip}-{address[1]}")
        except RuntimeError as e:  # can't start new thread
            log.error("cannot start a connection thread: %s", e)
            self._release(conn)
            sock.close()

    def _admit(self, ip: str) -> Refusal | None:
        limits = self.config.limits
        key = ip_key(ip)
        with self._lock:
            wait = self._throttle.wait_for(key, None, time.monotonic())
            if wait > 0:
                return Refusal(ErrorCode.RATE_LIMITED, "too many failed logins; try later", wait)
            if self._counter.total >= limits.max_clients \
                    or self._unauthenticated >= limits.max_unauthenticated:
                return Refusal(ErrorCode.TOO_MANY_CONNECTIONS, "the server is full")
            if self._counter.count(key) >= limits.max_connections_per_ip:
                return Refusal(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from your address")
            self._counter.add(key)
            self._unauthenticated += 1
        return None

    def _refuse(self, sock: socket.socket, refusal: Refusal) -> None:
        frame = protocol.encode(protocol.error(refusal.code, refusal.message,
                                               retry_after=refusal.retry_after))
        if self.tls_context is None:
            try:  # best effort, never blocking the accept loop
                sock.setblocking(False)
                sock.send(frame)
            except OSError:
                pass
            sock.close()
            return
        # Over TLS the refusal needs a handshake, which must not run here.
        if not self._refusals.acquire(blocking=False):
            sock.close()
            return
        self._spawn(lambda: self._refuse_over_tls(sock, frame), "refuse")

    def _refuse_over_tls(self, sock: socket.socket, frame: bytes) -> None:
        assert self.tls_context is not None
        transport = TLSTransport(sock, TLS_HANDSHAKE_MAX_S, self.tls_context)
        try:
            transport.handshake(time.monotonic() + TLS_HANDSHAKE_MAX_S)
            transport.sendall(frame)
            transport.finish_sending()
        except (OSError, TimeoutError):
            pass
        finally:
            transport.close()
            self._refusals.release()

    # -- bookkeeping used by connections ----------------------------------------

    def _register(self, conn: Connection) -> None:
        with self._lock:
            self._connections.add(conn)

    def _authenticated(self) -> None:
        with self._lock:
            self._unauthenticated -= 1

    def _release(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            self._counter.remove(ip_key(conn.ip))
            if not conn.authenticated:
                self._unauthenticated -= 1

    def auth_wait(self, ip: str, username: str) -> float:
        with self._lock:
            return self._throttle.wait_for(ip_key(ip), username, time.monotonic())

    def auth_failed(self, ip: str, username: str) -> None:
        with self._lock:
            self._throttle.failure(ip_key(ip), username, time.monotonic())

    def auth_succeeded(self, ip: str, username: str) -> None:
        with self._lock:
            self._throttle.success(ip_key(ip), username)

    def registration_wait(self, ip: str) -> float:
        with self._lock:
            return self._registrations.wait_for(ip_key(ip), time.monotonic())

    def registered(self, ip: str) -> None:
        with self._lock:
            self._registrations.record(ip_key(ip), time.monotonic())

    def hashing(self, deadline: float) -> _HashSlot:
        return _HashSlot(self._hash_slots, self._hash_queue, deadline)

    def connection_count(self) -> int:
        with self._lock:
            return self._counter.total

    # -- housekeeping -------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        last_version = self.store.data_version()
        while not self.stopping.wait(HOUSEKEEPING_INTERVAL_S):
            try:
                version = self.store.data_version()
                if version != last_version:
                    last_version = version
                    self._apply_account_changes()
                self._force_overdue_closes()
            except Exception:  # last resort: housekeeping must not die
                log.exception("housekeeping failed")

    def _apply_account_changes(self) -> None:
        """Make admin-CLI changes to online accounts take effect on their sessions."""
        members = self.room.members()
        current = self.store.lookup_users({m.username for m in members})
        for member in members:
            assert isinstance(member, Session)
            user = current.get(member.username.lower())
            if user is None or user.disabled:
                member.end(ErrorCode.ACCOUNT_DISABLED, "your account has been disabled",
                           "disabled")
            elif user.role != member.role:
                member.role = user.role
                log.info("role of %s is now %s", escape(member.username), user.role)

    def _force_overdue_closes(self) -> None:
        now = time.monotonic()
        for member in self.room.members():
            assert isinstance(member, Session)
            if member.close_by is not None and now > member.close_by:
                member.connection.transport_shutdown()


class _HashSlot:
    """A bounded place in line for bcrypt: `with server.hashing(deadline) as ok:`."""

    def __init__(self, slots: threading.BoundedSemaphore, queue: threading.BoundedSemaphore,
                 deadline: float) -> None:
        self._slots = slots
        self._queue = queue
        self._deadline = deadline
        self._held = False
        self._queued = False

    def __enter__(self) -> bool:
        self._queued = self._queue.acquire(blocking=False)
        if self._queued:
            wait = self._deadline - time.monotonic()
            self._held = wait > 0 and self._slots.acquire(timeout=wait)
        return self._held

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._slots.release()
        if self._queued:
            self._queue.release()


class Session:
    """An authenticated client: what the room sees of a connection."""

    def __init__(self, connection: Connection, user: User) -> None:
        self.connection = connection
        self._username = user.username
        self.role = user.role
        limits = connection.server.config.limits
        self.outbox = Outbox(limits.outbound_queue_bytes)
        self.end_reason: str | None = None
        self.close_by: float | None = None
        self.bucket = TokenBucket(limits.messages_per_second, limits.message_burst,
                                  time.monotonic())

    @property
    def username(self) -> str:
        return self._username

    def deliver(self, data: bytes) -> None:
        if not self.outbox.put(data):
            log.info("evicting %s from %s: outbound queue full", escape(self.username),
                     self.connection.ip)
            self.end(ErrorCode.SLOW_CONSUMER, "you fell too far behind", "slow_consumer",
                     discard=True)

    def reply(self, frame: dict[str, Any]) -> None:
        self.deliver(protocol.encode(frame))

    def end(self, code: ErrorCode | None, message: str, reason: str,
            discard: bool = False) -> None:
        """End the session once: `code` is the last frame the client gets."""
        final = protocol.encode(protocol.error(code, message)) if code is not None else None
        if self.outbox.close(final, discard=discard):
            self.end_reason = reason
            self.close_by = time.monotonic() + EVICTION_GRACE_S


class Connection:
    """One client connection, from accept to close, run in its own thread."""

    def __init__(self, server: Server, sock: socket.socket, ip: str) -> None:
        self.server = server
        self.sock = sock
        self.ip = ip
        self.accepted_at = time.monotonic()
        self.authenticated = False
        self.session: Session | None = None
        self.transport: PlainTransport | None = None
        limits = server.config.limits
        self.protocol = ServerProtocol(limits.max_frame_bytes, limits.max_text_length)
        self._reader_done = threading.Event()
        self._welcome_re: protocol.RequestId = None

    # -- lifecycle: setup, handle, finish ----------------------------------------

    def run(self) -> None:
        self.server._register(self)
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
        context = self.server.tls_context
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
        self._reader_done.set()
        session = self.session
        if session is not None:
            log.info("%s left (%s)", escape(session.username), session.end_reason)
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
        self.server._release(self)

    @property
    def _handshake_deadline(self) -> float:
        return self.accepted_at + self.server.config.limits.handshake_timeout_s

    def stop_for_shutdown(self) -> None:
        """Called from the shutdown thread: end this connection with server_shutdown."""
        if self.session is not None:
            self.session.end(ErrorCode.SERVER_SHUTDOWN, "the server is shutting down",
                             "server_shutdown")
        elif self.transport is not None:
            self.transport.wake_reader()  # the reader sends the error itself

    def transport_shutdown(self) -> None:
        if self.transport is not None:
            self.transport.shutdown()

    # -- before login -------------------------------------------------------

    def _send_now(self, frame: dict[str, Any]) -> None:
        """Write directly: only before login, when this thread is the only writer."""
        assert self.transport is not None and self.session is None
        self.transport.sendall(protocol.encode(frame))

    def _fail(self, code: ErrorCode, message: str, re_: protocol.RequestId = None,
              retry_after: float | None = None) -> None:
        """Send a fatal error before login, then close gracefully."""
        self._send_now(protocol.error(code, message, re_, retry_after))
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
        cfg = self.server.config
        self._send_now(protocol.hello(f"authchat/{__version__}", cfg.server.registration,
                                      self.server.tls_context is not None))
        assert self.transport is not None
        while True:
            try:
                data = self.transport.recv(self._handshake_deadline)
            except TimeoutError:
                self._fail(ErrorCode.HANDSHAKE_TIMEOUT, "log in within "
                           f"{cfg.limits.handshake_timeout_s:g} seconds")
                return None
            if self.server.stopping.is_set():
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
            self._send_now(protocol.error(event.code, event.message, event.re))
            return None
        if isinstance(event, Ping):
            self._send_now(protocol.pong(event.id))
            return None
        if isinstance(event, Quit):
            self._linger()
            return False
        assert isinstance(event, (Login, Register))
        user = self._authenticate(event)
        if user is not None:
            self._welcome_re = event.id
            return user
        if self.protocol.auth_failed():
            log.info("closing %s after %d failed logins", self.ip, protocol.MAX_AUTH_FAILURES)
            self._linger()
            return False
        return None

    def _authenticate(self, request: Login | Register) -> User | None:
        """Log in or register; on failure the client has its error and None comes back."""
        server, name = self.server, request.username
        refusal = self._precheck(request)
        if refusal is None:
            with server.hashing(self._handshake_deadline) as got_slot:
                if not got_slot:
                    refusal = Refusal(ErrorCode.RATE_LIMITED, "the server is busy; try again", 1.0)
                else:
                    try:
                        return self._check_credentials(request)
                    except AuthchatError as e:
                        refusal = Refusal(e.code, e.message)
        self._send_now(protocol.error(refusal.code, refusal.message, request.id,
                                      refusal.retry_after))
        log.info("%s failed from %s: %s (user %s)", type(request).__name__.lower(), self.ip,
                 refusal.code, escape(name[:64]))
        return None

    def _precheck(self, request: Login | Register) -> Refusal | None:
        """The refusals that need no password hash."""
        server, mode = self.server, self.server.config.server.registration
        if isinstance(request, Register):
            if mode == "closed" or (mode == "invite" and request.invite is None):
                return Refusal(ErrorCode.REGISTRATION_CLOSED,
                               "registration needs an invite" if mode == "invite"
                               else "registration is closed")
            wait = server.registration_wait(self.ip)
            if wait > 0:
                return Refusal(ErrorCode.RATE_LIMITED, "too many registrations; try later", wait)
            return None
        wait = server.auth_wait(self.ip, request.username)
        if wait > 0:
            return Refusal(ErrorCode.RATE_LIMITED, "too many failed logins; try later", wait)
        return None

    def _check_credentials(self, request: Login | Register) -> User:
        server, store = self.server, self.server.store
        try:
            if isinstance(request, Register):
                invite = request.invite if server.config.server.registration == "invite" else None
                user = store.create_user(request.username, request.password, actor="register",
                                         invite=invite)
                server.registered(self.ip)
                log.info("registered %s from %s", escape(user.username), self.ip)
                return user
            user = store.authenticate(request.username, request.password)
        except AuthchatError as e:
            if isinstance(request, Login) or isinstance(e, RegistrationClosed):
                server.auth_failed(self.ip, request.username)
            raise
        finally:
            store.release_connection()
        server.auth_succeeded(self.ip, user.username)
        log.info("login %s from %s", escape(user.username), self.ip)
        return user

    # -- in the room ------------------------------------------------------------

    def _chat(self, user: User) -> None:
        session = Session(self, user)
        admitted = self.server.room.enter(
            session, lambda names: protocol.encode(
                protocol.welcome(user.username, user.role, names, self._welcome_re)))
        self.protocol.authenticated()
        self.authenticated = True
        self.server._authenticated()
        if not admitted:
            self._fail(ErrorCode.TOO_MANY_SESSIONS, "too many sessions for this account")
            return
        self.session = session
        writer = self.server._spawn(self._write_loop, f"writer-{user.username}")
        try:
            self._read_loop(session)
        finally:
            self._reader_done.set()
            session.end(None, "", "disconnect")
            self.server.room.leave(session, session.end_reason or "disconnect")
            writer.join(EVICTION_GRACE_S + SEND_TIMEOUT_S)

    def _read_loop(self, session: Session) -> None:
        assert self.transport is not None
        limits = self.server.config.limits
        last_heard = time.monotonic()
        pinged = False
        while not session.outbox.closed:
            wait = limits.ping_timeout_s if pinged else limits.ping_interval_s
            try:
                data = self.transport.recv(last_heard + wait)
            except TimeoutError:
                if pinged:
                    session.end(None, "", "timeout")
                    return
                session.reply(protocol.ping())
                pinged = True
                continue
            if not data:
                return
            last_heard, pinged = time.monotonic(), False
            self.protocol.receive_data(data)
            while not session.outbox.closed and (event := self.protocol.next_event()):
                self._chat_event(session, event)

    def _chat_event(self, session: Session, event: protocol.Event) -> None:
        if isinstance(event, Violation):
            if event.fatal:
                session.end(event.code, event.message, "disconnect")
            else:
                session.reply(protocol.error(event.code, event.message, event.re))
            return
        if isinstance(event, Pong):
            return
        wait = session.bucket.take(time.monotonic())
        if wait > 0:
            session.reply(protocol.error(ErrorCode.RATE_LIMITED, "slow down", event.id, wait))
            time.sleep(wait)  # back-pressure: read no more from a flooder until it may send
            return
        try:
            self._dispatch(session, event)
        except AuthchatError as e:
            session.reply(protocol.error(e.code, e.message, event.id))
        except Exception:
            log.exception("request from %s failed", escape(session.username))
            session.reply(protocol.error(ErrorCode.SERVER_ERROR, "internal error", event.id))

    def _dispatch(self, session: Session, request: Request) -> None:
        room = self.server.room
        if isinstance(request, Say):
            msg_id = room.say(session, request.text)
            if request.id is not None:
                session.reply(protocol.ok(request.id, message=msg_id))
        elif isinstance(request, Dm):
            msg_id = room.direct(session, request.to, request.text)
            if msg_id is None:
                raise NoSuchUser(f"{request.to[:64]} is not online")
            if request.id is not None:
                session.reply(protocol.ok(request.id, message=msg_id))
        elif isinstance(request, Who):
            session.reply(protocol.who(room.who(), request.id))
        elif isinstance(request, Ping):
            session.reply(protocol.pong(request.id))
        elif isinstance(request, Quit):
            if request.id is not None:
                session.reply(protocol.ok(request.id))
            session.end(None, "", "quit")
        elif isinstance(request, Passwd):
            self._change_password(session, request)
        elif isinstance(request, (Kick, Ban)):
            self._moderate(session, request)

    def _change_password(self, session: Session, request: Passwd) -> None:
        store = self.server.store
        deadline = time.monotonic() + self.server.config.limits.handshake_timeout_s
        try:
            with self.server.hashing(deadline) as got_slot:
                if not got_slot:
                    session.reply(protocol.error(ErrorCode.RATE_LIMITED, "the server is busy",
                                                 request.id, 1.0))
                    return
                store.authenticate(session.username, request.old)
                store.set_password(session.username, request.new,
                                   actor=f"user:{session.username}")
        finally:
            store.release_connection()
        log.info("%s changed their password", escape(session.username))
        session.reply(protocol.ok(request.id))

    def _moderate(self, session: Session, request: Kick | Ban) -> None:
        store = self.server.store
        try:
            actor = store.get_user(session.username)  # the role as it is now, not at login
            if actor.role != "admin" or actor.disabled:
                session.reply(protocol.error(ErrorCode.FORBIDDEN, "admins only", request.id))
                return
            if request.username.lower() == session.username.lower():
                session.reply(protocol.error(ErrorCode.BAD_REQUEST, "you cannot do that to "
                                             "yourself", request.id))
                return
            targets = self.server.room.sessions_of(request.username)
            if isinstance(request, Ban):
                store.set_disabled(request.username, True, actor=f"user:{session.username}")
            elif not targets:
                raise NoSuchUser(f"{request.username[:64]} is not online")
        finally:
            store.release_connection()
        verb = "banned" if isinstance(request, Ban) else "kicked"
        note = f"{verb} by {session.username}" + (f": {request.reason}" if request.reason else "")
        for target in targets:
            assert isinstance(target, Session)
            target.end(ErrorCode.KICKED, note, "kicked")
        log.info("%s %s %s (%s)", escape(session.username), verb, escape(request.username),
                 escape(request.reason))
        session.reply(protocol.ok(request.id))

    def _write_loop(self) -> None:
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        try:
            while True:
                data, done = session.outbox.take()
                if data:
                    transport.sendall(data)
                if done:
                    break
            transport.finish_sending()
            self._reader_done.wait(LINGER_S)  # let a polite client hang up first
        except OSError:
            pass  # the peer is gone; the reader will notice too
        finally:
            transport.shutdown()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _raise_open_files_limit() -> None:
    """Each client costs a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit from %d: %s", soft, e)
