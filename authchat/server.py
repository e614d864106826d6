"""The chat server: listener, accept loop, refusals, housekeeping, shutdown.

Methods for the caller: `Server(config, store)`, `start()`, `address`,
`shutdown()`. Connections see the server only as connection.py's `Host`;
who may come in and what they may try is admission.py's.

Threads:
  - the accept loop, which only counts and admits: TLS handshakes and any
    other slow work happen in the connection's own thread. When the pool of
    connections not logged in yet is full it makes room by waking the
    oldest, whose own thread then says why and closes it;
  - one thread per connection (connection.py), reading: it runs the TLS
    handshake, the login/register handshake under one absolute deadline,
    then the chat loop;
  - WRITER_THREADS writer threads (writers.py) that send every session's
    output through non-blocking sockets;
  - one housekeeping thread: live revocation of accounts changed by the admin
    CLI (via PRAGMA data_version), forced closes of ended sessions whose
    client stopped reading, and giving freed memory back (memory.py);
  - as many "auth" worker threads as hashing slots, where login,
    registration, password changes and moderation run bcrypt and their SQL
    (`off_thread`), each worker on its own long-lived SQLite connection.
bcrypt takes turns at a few slots (slots.py), fairly between addresses, and
never runs under a lock that other sessions need; a connection thread waits
for its worker. The server holds no SQL: the Store does.
"""

from __future__ import annotations

import errno
import logging
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any, TypeVar

from . import protocol
from .admission import Admission, Refusal
from .config import Config
from .connection import Connection, Session
from .errors import CannotListen, ConfigError, ShuttingDown
from .journal import Journal
from .memory import release_free_memory
from .room import Room
from .store import Store
from .tls import server_context
from .transport import LINGER_S, SEND_TIMEOUT_S, TLS_HANDSHAKE_MAX_S, TLSTransport, is_loopback
from .writers import WriterPool

log = logging.getLogger(__name__)
T = TypeVar("T")

HOUSEKEEPING_INTERVAL_S = 0.5
# A trim of a 500 MB heap spread over 40 threads' arenas took 20 ms here, with
# the GIL released; the server's heap is a fifth of that at 500 clients.
RELEASE_MEMORY_INTERVAL_S = 10.0
ACCEPT_POLL_S = 0.5
ACCEPT_BACKOFF_S = 0.1
WRITER_THREADS = 2             # 1 measured no better at 10 clients: docs/benchmarks.md
REFUSAL_THREADS = 16           # TLS refusals in flight at once; past that, just close
# accept() errors that mean the process or the machine is out of a resource:
# they pass as connections close, so the loop backs off and tries again
# (trio's ACCEPT_CAPACITY_ERRNOS).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# accept() errors that belong to the one connection it was taking: Linux
# passes a new socket's pending network error on from accept() (see
# accept(2)), and a firewall may refuse it. That connection is gone; the next
# is served at once. The list is trio's SocketListener's; some are not on
# every platform.
ACCEPT_PER_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")
    if hasattr(errno, name))


class Server:
    """A threaded chat server on one listening socket."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        history = config.history
        self.room: Room[Session] = Room(config.limits.max_sessions_per_user,
                                        history_on_join=history.on_join if history.enabled else 0)
        # With history on, every message is stored before the room sees it.
        self.journal: Journal[Session] | None = \
            Journal(store, self.room) if history.enabled else None
        self.writers = WriterPool(self.room.feed, WRITER_THREADS, SEND_TIMEOUT_S, LINGER_S)
        self.room.on_broadcast = self.writers.wake_all
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.tls_context: ssl.SSLContext | None = None
        self.fingerprint: str | None = None
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _threads
        self.admission: Admission[Connection] = Admission(config.limits, config.auth)
        # bcrypt and SQLite run deep in the C stack; a resident page of stack
        # stays resident, so they run here, on a few threads, and the
        # thousands of connection threads keep shallow stacks (see
        # docs/benchmarks.md, connections).
        self._off_thread = ThreadPoolExecutor(self.admission.hash_slots,
                                              thread_name_prefix="auth")
        self._refusals = threading.BoundedSemaphore(REFUSAL_THREADS)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Migrate, bind, and start accepting in background threads.

        Raises:
            ConfigError: plaintext on a public address without allow_plaintext,
                or unusable TLS files.
            CannotListen: the address cannot be bound (in use, not this
                machine's, a privileged port).
        """
        cfg = self.config
        if not cfg.tls.enabled and not is_loopback(cfg.server.host) \
                and not cfg.server.allow_plaintext:
            raise ConfigError(f"refusing plaintext on {cfg.server.host}: passwords would cross "
                              "the network readable; enable TLS or set allow_plaintext = true")
        self.store.ensure_schema()
        self.store.check_health()
        log.info("database %s, schema version %d", self.store.path, self.store.schema_version())
        self.store.hasher.prepare()
        if cfg.tls.enabled:
            self.tls_context, self.fingerprint = server_context(cfg)
        _raise_open_files_limit()
        self._listener = _listen(cfg.server.host, cfg.server.port)
        if self.journal is not None:
            self.room.remember(self.journal.recent_room_messages(cfg.history.on_join))
            self.spawn(self.journal.run, "journal")
        self.spawn(self._accept_loop, "accept")
        self.spawn(self._housekeeping_loop, "housekeeping")
        self.writers.start(self.spawn)
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
        self.writers.stop()  # they end once every session is finished
        self._off_thread.shutdown(wait=False, cancel_futures=True)
        for conn in self.admission.connections():
            conn.stop_for_shutdown()
        if self.journal is not None:
            self.journal.stop()  # what was handed in is still stored and sent
        started = time.monotonic()
        self._join_threads(started + timeout / 2)
        for conn in self.admission.connections():  # stragglers that would not flush: cut them off
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

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()  # first: a thread that failed to start must never be joined
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
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
        except OSError as e:
            _accept_failed(e)
            return
        ip = address[0]
        conn = Connection(self, sock, ip)
        refusal = self.admission.admit(conn)
        if refusal is not None:
            log.info("refused connection from %s: %s", ip, refusal.code)
            self._refuse(sock, refusal)
            return
        try:
            self.spawn(conn.run, f"conn-{ip}-{address[1]}")
        except RuntimeError as e:  # can't start new thread
            log.error("cannot start a connection thread: %s", e)
            self.admission.release(conn)
            sock.close()

    def _refuse(self, sock: socket.socket, refusal: Refusal) -> None:
        frame = protocol.encode_event(protocol.ErrorReply(
            refusal.code, refusal.message, retry_after=refusal.retry_after))
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
        self.spawn(lambda: self._refuse_over_tls(sock, frame), "refuse")

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

    # -- what connections use of the server (connection.Host) ---------------------

    def off_thread(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work` on one of a few worker threads and wait for its result.

        For bcrypt and SQLite. Connection threads never open an SQLite
        connection themselves, so the server holds one per worker however
        many sessions come and go. bcrypt runs under a `hashing` slot: at
        most `slots` hashes at once, so a worker is free within one hash.
        """
        # shutdown() refuses new work and cancels what waits: a connection
        # caught between is told, like any other refusal.
        try:
            future = self._off_thread.submit(work, *args)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if self.stopping.is_set():
                raise ShuttingDown() from None
            raise
        try:
            return future.result()
        except CancelledError:
            raise ShuttingDown() from None

    def connection_count(self) -> int:
        return self.admission.connection_count()

    # -- housekeeping -------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        last_version = self.store.data_version()
        last_release = time.monotonic()
        last_prune = 0.0  # the first tick prunes what piled up while the server was down
        while not self.stopping.wait(HOUSEKEEPING_INTERVAL_S):
            try:
                version = self.store.data_version()
                if version != last_version:
                    last_version = version
                    self._apply_account_changes()
                self._force_overdue_closes()
                if time.monotonic() - last_release > RELEASE_MEMORY_INTERVAL_S:
                    last_release = time.monotonic()
                    release_free_memory()
                if time.monotonic() - last_prune > self.config.history.prune_interval_s:
                    last_prune = time.monotonic()
                    self._prune_history()
            except Exception:  # last resort: housekeeping must not die
                log.exception("housekeeping failed")

    def _prune_history(self) -> None:
        """Retention, in short batches: the journal writes between them."""
        history = self.config.history
        if self.journal is None or not (history.keep_days or history.max_messages):
            return
        pruned = self.journal.log.prune(keep_days=history.keep_days,
                                        max_messages=history.max_messages)
        if pruned:
            log.info("history: %d messages past retention removed", pruned)

    def _apply_account_changes(self) -> None:
        """Make account changes take effect on live sessions: a disabled or
        deleted account loses them all, a changed password all but the one
        that changed it, a new role applies at once."""
        members = self.room.members()
        current = self.store.users_by_id({m.account_id for m in members})
        for member in members:
            member.follow_account(current.get(member.account_id))

    def _force_overdue_closes(self) -> None:
        now = time.monotonic()
        for member in self.room.members():
            if member.close_by is not None and now > member.close_by:
                member.connection.transport_shutdown()


def _accept_failed(error: OSError) -> None:
    """Keep the accept loop serving whatever accept() raised: never spin, never die."""
    if error.errno in ACCEPT_CAPACITY_ERRNOS:  # shed load until connections close
        log.error("accept failed: %s", error)
        time.sleep(ACCEPT_BACKOFF_S)
    elif error.errno in ACCEPT_PER_CONNECTION_ERRNOS:
        log.debug("a connection failed as it was accepted: %s", error)
    else:
        # Our bug or the listener's: said in full. It may well come back at
        # once, so back off as for capacity rather than spin on it.
        log.error("accept failed unexpectedly; retrying in %g s", ACCEPT_BACKOFF_S,
                  exc_info=error)
        time.sleep(ACCEPT_BACKOFF_S)


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port.

    Raises:
        CannotListen: saying why in one line; create_server's own message
            quotes the address as a Python tuple.
    """
    try:
        return socket.create_server((host, port), backlog=1024, family=_family(host))
    except OSError as e:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # create_server re-raises bind's error with the address folded into
        # its text; the reason alone is in bind's own error, kept as context.
        cause = e.__context__ if isinstance(e.__context__, OSError) else e
        raise CannotListen(f"cannot listen on {where}: {cause.strerror or cause}") from None


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
