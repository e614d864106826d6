"""A logged-in session for a user interface, that survives drops.

`probe()` learns a server's `hello` (and settles trust) before a person is
asked for a password; `login()` / `register()` run the handshake on a Link.
`Chat` is the session: a reader thread turns server events into calls of
`on_event`, answers the server's pings, pairs replies with requests, and, if
allowed, reconnects with backoff after a drop, logging in again with the
password it was given, and showing nothing twice.

No UI, no click, no store here.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import ErrorCode
from ..passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_FLOOR, PasswordPolicy
from ..protocol import (
    DirectMessage,
    ErrorReply,
    Hello,
    History,
    HistoryPage,
    Login,
    Message,
    Ok,
    Passwd,
    Ping,
    Pong,
    Quit,
    Register,
    Request,
    ServerEvent,
    ServerPing,
    Welcome,
)
from .link import (
    ERROR_TEXT,
    ClientError,
    ClientOptions,
    Confirm,
    Link,
    ServerError,
    TrustError,
    describe_error,
    open_link,
)
from .roster import dm_peer

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 15.0
BACKOFF_START_S = 1.0
OLDER_PAGE = 50  # messages `older` asks for at a time
BACKOFF_MAX_S = 30.0

# After these the run is over: reconnecting would only repeat them.
FINAL_CODES = {ErrorCode.KICKED, ErrorCode.ACCOUNT_DISABLED, ErrorCode.BAD_CREDENTIALS}


def probe(options: ClientOptions, confirm: Confirm | None = None) -> Hello:
    """The server's `hello`, from a connection opened only to learn it and then
    closed: whether the server is there and trusted, and its rules, all settled
    before a person is asked for a password (the server gives a login only a
    few seconds; a person may need more).

    Raises:
        TrustError, ClientError: as `open_link`.
    """
    link = open_link(options, confirm)
    try:
        link.send(Quit(None))
    except OSError:
        pass  # it was only a question; the answer came
    finally:
        link.close()
    return link.hello


def password_policy(hello: Hello) -> PasswordPolicy:
    """The rules the server's `hello` says a new password must meet."""
    length = hello.min_password_length
    if length is None:
        length = MIN_PASSWORD_FLOOR  # an older server: only what every server holds
    return PasswordPolicy(min(max(length, MIN_PASSWORD_FLOOR), MAX_PASSWORD_LENGTH))


def registration_problem(hello: Hello, invite: str | None) -> str | None:
    """Why this server will refuse to register an account, as far as its
    `hello` tells; None if it may accept one."""
    mode = hello.registration
    if mode == "closed":
        return ERROR_TEXT[ErrorCode.REGISTRATION_CLOSED]
    if mode == "invite" and not invite:
        return ("the server accepts new accounts only with an invite: pass --invite TOKEN "
                "(an admin makes one with `authchat invites create`)")
    return None


def _authenticate(link: Link, request: Login | Register, timeout: float) -> Welcome:
    link.send(request)
    while True:
        reply = link.read(timeout)
        if reply is None:
            raise ClientError("the server closed the connection during login")
        if isinstance(reply, Welcome):
            return reply
        if isinstance(reply, ErrorReply):
            raise ServerError(reply)


def login(link: Link, username: str, password: str,
          timeout: float = REPLY_TIMEOUT_S) -> Welcome:
    """Log in; returns the welcome. Raises ServerError with the server's reason."""
    return _authenticate(link, Login(None, username, password), timeout)


def register(link: Link, username: str, password: str, invite: str | None = None,
             timeout: float = REPLY_TIMEOUT_S) -> Welcome:
    """Create the account and log in; returns the welcome.

    The password is checked against the rules of the server's `hello` before
    it is sent, so that it is refused in the same words as `users add` uses.

    Raises:
        InvalidPassword: the password breaks those rules.
        ServerError: the server refused (`registration_closed`, `username_taken`, …).
    """
    password_policy(link.hello).check(password, username)
    return _authenticate(link, Register(None, username, password, invite or None), timeout)


# -- a session that survives drops ---------------------------------------------------

@dataclass(frozen=True)
class Notice:
    """Something the client itself has to say: `lost`, `reconnecting`, `back`,
    `missed` (more was said while away than the server gives back), `ended`.

    An `ended` that the server's error caused carries that error, so that
    scripting mode can print it; front ends show only the notice.
    """

    kind: str
    text: str
    reply: ErrorReply | None = field(default=None, compare=False)


Event = ServerEvent | Notice


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: ServerEvent | None = None


class Chat:
    """A logged-in session for a user interface.

    `on_event` is called from the reader thread with each server event (pings
    are answered, not passed on) and with Notices about the connection.
    `welcome` and `hello` are the server's, on the link in use, once `start`
    has returned.
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
        self._welcome: Welcome | None = None
        self._hello: Hello | None = None
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
    def welcome(self) -> Welcome:
        if self._welcome is None:
            raise RuntimeError("not logged in yet: call start()")
        return self._welcome

    @property
    def hello(self) -> Hello:
        if self._hello is None:
            raise RuntimeError("not connected yet: call start()")
        return self._hello

    @property
    def fingerprint(self) -> str | None:
        return self._link.fingerprint if self._link else None

    def start(self) -> Welcome:
        """Connect and log in (registering first if asked); returns the welcome.

        Raises:
            ClientError: the first connection failed; nothing is running.
        """
        self._link, self._welcome = self._connect(first=True)
        self._reader = threading.Thread(target=self._read_loop, name="chat-reader", daemon=True)
        self._reader.start()
        return self._welcome

    def _connect(self, first: bool = False) -> tuple[Link, Welcome]:
        link = open_link(self.options, self.confirm if first else None)
        self._hello = link.hello
        try:
            if first and self.register_first:
                try:
                    return link, register(link, self.username, self._password, self.invite)
                except ServerError as e:
                    if e.reply.code != ErrorCode.USERNAME_TAKEN or not self.login_if_taken:
                        raise
            welcome = login(link, self.username, self._password)
            self.username = welcome.username
            return link, welcome
        except BaseException:
            link.close()
            raise

    def request(self, request: Request, timeout: float = REPLY_TIMEOUT_S) -> ServerEvent:
        """Send a request and wait for its direct reply (ok, error, who, pong, history).

        Raises:
            ClientError: not connected, or no reply in time.
        """
        request_id = f"c{next(self._ids)}"
        pending = _Pending()
        with self._pending_lock:
            self._pending[request_id] = pending
        try:
            self.send(replace(request, id=request_id))
            if not pending.done.wait(timeout):
                raise ClientError("the server did not answer in time")
            if pending.reply is None:
                raise ClientError("the connection was lost before the server answered")
            return pending.reply
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)

    def older(self, with_user: str | None = None, limit: int = OLDER_PAGE) -> ServerEvent:
        """The page before the oldest message this session has seen: the room's,
        or the DMs with `with_user`. Returns the server's reply (a HistoryPage,
        or an ErrorReply); each call goes one page further back."""
        before = self._oldest.get((with_user or "").casefold())
        reply = self.request(History(None, before, limit, with_user))
        if isinstance(reply, HistoryPage):
            for said in reply.messages:
                self._note_oldest(said)
        return reply

    def _note_oldest(self, said: Message | DirectMessage) -> None:
        """Remember the oldest message seen, per conversation, for `older`."""
        key = "" if isinstance(said, Message) else dm_peer(said, self.username).casefold()
        if said.id < self._oldest.get(key, said.id + 1):
            self._oldest[key] = said.id

    def change_password(self, old: str, new: str) -> ServerEvent:
        """Change this account's password; returns the server's reply.

        After an `ok`, the new password is the one used to log in again
        after a drop (the old one would be refused).

        Raises:
            InvalidPassword: `new` breaks the server's rules (its hello's);
                nothing was sent.
            ClientError: as `request`.
        """
        password_policy(self.hello).check(new, self.username)
        reply = self.request(Passwd(None, old, new))
        if isinstance(reply, Ok):
            self._password = new
        return reply

    def send(self, request: Request) -> None:
        link = self._link
        if link is None:
            raise ClientError("not connected; reconnecting")
        try:
            link.send(request)
        except OSError as e:
            raise ClientError(f"sending failed: {e.strerror or e}") from None

    def close(self) -> None:
        """Say goodbye and stop; no reconnecting after this."""
        self._stop.set()
        link = self._link
        if link is not None:
            try:
                link.send(Quit(None))
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

    def _pump(self) -> ErrorReply | None:
        """Deliver events until the link drops; the server's error if it
        ended the session for good."""
        link = self._link
        assert link is not None
        pinged = False
        try:
            while True:
                try:
                    event = link.read(self.options.silence_s)
                except TimeoutError:
                    if pinged:
                        break  # no answer either: the link is dead, though TCP does not know
                    link.send(Ping(None))
                    pinged = True
                    continue
                if event is None:
                    break
                pinged = False
                final = self._handle(link, event)
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

    def _handle(self, link: Link, event: ServerEvent) -> ErrorReply | None:
        if isinstance(event, ServerPing):
            link.send(Pong(None))
            return None
        re_ = getattr(event, "re", None)  # replies carry the id of their request
        if isinstance(re_, str):
            with self._pending_lock:
                pending = self._pending.get(re_)
            if pending is not None:
                pending.reply = event
                pending.done.set()
                return None
        # A reply that came after its request gave up waiting is no verdict on
        # the session: a late `bad_credentials` is a wrong old password.
        if isinstance(event, ErrorReply) and event.code in FINAL_CODES and event.re is None:
            return event  # said once, by the notice that the session ended
        if isinstance(event, Message) and not self._is_news(event):
            return None
        if isinstance(event, (Message, DirectMessage)):
            self._note_oldest(event)
        self.on_event(event)
        return None

    def _is_news(self, message: Message) -> bool:
        """False for a room message this session has shown already (given
        again after a reconnect); says so if the replay leaves a gap.

        This rests on the protocol's promise that ids only ever increase,
        across restarts too (a server put back to an older copy of its
        database would break it: its new messages would look seen)."""
        msg_id, replayed = message.id, message.history
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
                self._link, welcome = self._connect()
            except ServerError as e:
                if e.reply.code in FINAL_CODES:
                    self._end(str(e), e.reply)
                    return False
                if e.reply.retry_after is not None:
                    delay = max(delay, e.reply.retry_after)
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
                self._welcome = welcome
                self._first_replay_after_reconnect = True
                self.on_event(Notice("back", "reconnected"))
                self.on_event(welcome)
                return True
            delay = min(BACKOFF_MAX_S, delay * 2) * random.uniform(0.9, 1.1)
        return False

    def _fail_pending(self) -> None:
        with self._pending_lock:
            for pending in self._pending.values():
                pending.done.set()

    def _end(self, reason: str, reply: ErrorReply | None = None) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            if not self._closing:  # a goodbye the user asked for needs no notice
                self.on_event(Notice("ended", reason, reply))
            self.ended.set()
