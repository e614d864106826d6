"""Password policy, hashing and verification: the one place that touches secrets.

Policy follows NIST SP 800-63B-4: NFKC-normalised, length counted in code
points (at least `min_length`, at most 1024), any characters, no composition
rules, never truncated, and refused when common or containing the username.

Hashing: bcrypt only reads 72 bytes (bcrypt 5 raises ValueError past them),
so the normalised password is first HMAC-SHA256'd, keyed with the bcrypt salt,
and base64'd to 44 bytes (the scheme passlib calls bcrypt_sha256 v2). Keying
with the salt means a leaked hash cannot be matched against an unsalted
SHA-256 list ("password shucking"). Stored hashes carry a scheme tag so the
scheme can change later without breaking existing accounts.

No SQL and no sockets here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import threading
import unicodedata
from dataclasses import dataclass

import bcrypt

from .errors import InvalidPassword

SCHEME = "bcrypt-sha256"
MAX_PASSWORD_LENGTH = 1024
MIN_PASSWORD_FLOOR = 8
_BCRYPT_SALT_LENGTH = 29  # "$2b$12$" + 22 characters of salt


def normalize_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of zxcvbn's maintained list, lower-cased."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    return frozenset(p.casefold() for p in FREQUENCY_LISTS["passwords"])


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 15

    def __post_init__(self) -> None:
        if not MIN_PASSWORD_FLOOR <= self.min_length <= MAX_PASSWORD_LENGTH:
            raise ValueError(f"min_length must be {MIN_PASSWORD_FLOOR}..{MAX_PASSWORD_LENGTH}")

    def check(self, password: str, username: str) -> None:
        """Accept `password` for `username`, or raise InvalidPassword saying why."""
        normalized = normalize_password(password)
        if len(normalized) < self.min_length:
            raise InvalidPassword(f"password must be at least {self.min_length} characters")
        if len(normalized) > MAX_PASSWORD_LENGTH:
            raise InvalidPassword(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in normalized):
            raise InvalidPassword("password contains invalid characters")
        folded = normalized.casefold()
        if username and username.casefold() in folded:
            raise InvalidPassword("password must not contain the username")
        if "authchat" in folded:
            raise InvalidPassword("password must not contain the server's name")
        if folded in common_passwords():
            raise InvalidPassword("password is too common; choose another")


def _prehash(password: str, salt: bytes) -> bytes:
    # surrogatepass: a login attempt carrying a lone surrogate must fail like
    # any wrong password, not raise; registration refuses such passwords.
    message = normalize_password(password).encode("utf-8", "surrogatepass")
    return base64.b64encode(hmac.new(salt, message, hashlib.sha256).digest())


class PasswordHasher:
    """Hash and verify with one configured bcrypt cost. Safe to share between threads."""

    def __init__(self, cost: int) -> None:
        self.cost = cost
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(rounds=self.cost)
        return f"{SCHEME}:" + bcrypt.hashpw(_prehash(password, salt), salt).decode("ascii")

    def verify(self, password: str, stored: str | None) -> bool:
        """True if `password` matches `stored`.

        Spends one bcrypt at the configured cost even when there is nothing to
        compare against (unknown user, malformed hash), so the time taken does
        not reveal which usernames exist.
        """
        scheme, _, inner = (stored or "").partition(":")
        if scheme == SCHEME:
            try:
                digest = inner.encode("ascii")
                matched = bcrypt.checkpw(_prehash(password, digest[:_BCRYPT_SALT_LENGTH]), digest)
            except ValueError:
                pass  # malformed stored hash: fall through to the dummy
            else:
                if not matched and _cost_of(inner) < self.cost:
                    # A hash from before the cost was raised is checked faster than
                    # the dummy; top up, or the answer's speed tells the name exists.
                    self.verify_dummy(password)
                return matched
        self.verify_dummy(password)
        return False

    def prepare(self) -> None:
        """Make the dummy hash now, so the first unknown-user login is not slower."""
        self._dummy_hash()

    def verify_dummy(self, password: str) -> None:
        dummy = self._dummy_hash().partition(":")[2].encode("ascii")
        bcrypt.checkpw(_prehash(password, dummy[:_BCRYPT_SALT_LENGTH]), dummy)

    def needs_rehash(self, stored: str) -> bool:
        scheme, _, inner = stored.partition(":")
        return scheme != SCHEME or _cost_of(inner) < self.cost

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self.hash("not a password of anyone")
            return self._dummy


def _cost_of(bcrypt_hash: str) -> int:
    try:
        return int(bcrypt_hash.split("$")[2])
    except (IndexError, ValueError):
        return 0
