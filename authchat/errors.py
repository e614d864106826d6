"""Error codes and the domain exceptions that carry them.

`ErrorCode` values are the wire codes of docs/protocol.md: stable strings that
clients switch on, never renumbered or reused. Every domain error derives from
`AuthchatError` and carries one of them in `.code`, so the server can turn any
of them into an `error` frame and the CLI into one line on stderr, each in one
place. This module imports nothing from authchat.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    BAD_REQUEST = "bad_request"
    AUTH_REQUIRED = "auth_required"
    BAD_CREDENTIALS = "bad_credentials"
    USERNAME_TAKEN = "username_taken"
    INVALID_USERNAME = "invalid_username"
    INVALID_PASSWORD = "invalid_password"
    REGISTRATION_CLOSED = "registration_closed"
    ACCOUNT_DISABLED = "account_disabled"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    SLOW_CONSUMER = "slow_consumer"
    FORBIDDEN = "forbidden"
    NO_SUCH_USER = "no_such_user"
    TEXT_TOO_LONG = "text_too_long"
    KICKED = "kicked"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SERVER_ERROR = "server_error"
    SERVER_SHUTDOWN = "server_shutdown"


class AuthchatError(Exception):
    """Something went wrong."""

    code: ErrorCode = ErrorCode.SERVER_ERROR

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class InvalidUsername(AuthchatError):
    """Invalid username."""

    code = ErrorCode.INVALID_USERNAME


class UsernameTaken(AuthchatError):
    """That username is already taken."""

    code = ErrorCode.USERNAME_TAKEN


class InvalidPassword(AuthchatError):
    """That password is not allowed."""

    code = ErrorCode.INVALID_PASSWORD


class BadCredentials(AuthchatError):
    """Wrong username or password."""

    code = ErrorCode.BAD_CREDENTIALS

    def __init__(self, message: str | None = None, *, account_exists: bool = False) -> None:
        super().__init__(message)
        # Whether the name was an account's: for the server's log alone, which
        # may name an account but must not write out a name that is none (it
        # is often a password typed into the wrong field). Never sent.
        self.account_exists = account_exists


class AccountDisabled(AuthchatError):
    """This account is disabled."""

    code = ErrorCode.ACCOUNT_DISABLED


class PasswordChanged(AuthchatError):
    """Your password was changed; log in again."""

    code = ErrorCode.KICKED


class NoSuchUser(AuthchatError):
    """No such user."""

    code = ErrorCode.NO_SUCH_USER


class RegistrationClosed(AuthchatError):
    """Registration is closed."""

    code = ErrorCode.REGISTRATION_CLOSED


class NoSuchInvite(AuthchatError):
    """No such invite."""

    code = ErrorCode.BAD_REQUEST


class ConfigError(AuthchatError):
    """Invalid configuration."""


class CannotListen(AuthchatError):
    """The server cannot listen on its address."""


class ShuttingDown(AuthchatError):
    """The server is shutting down."""

    code = ErrorCode.SERVER_SHUTDOWN


class SchemaError(AuthchatError):
    """The database schema cannot be used by this version of authchat."""


class StorageError(AuthchatError):
    """The database could not complete the operation."""


class StoreBusy(AuthchatError):
    """The database stayed busy; nothing was changed, try again."""
