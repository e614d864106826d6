"""The username rule: one place decides what a valid, registrable name is.

Names are ASCII only, so letters from other scripts that look like Latin ones
cannot impersonate anyone; uniqueness is case-insensitive (the store enforces
it with a constraint) and the display form is the one registered.
"""

from __future__ import annotations

import re

from .errors import InvalidUsername

USERNAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{2,31}")
USERNAME_RULE = (
    "a username is 3-32 ASCII letters, digits, '_', '.' or '-', starting with a letter"
)

# Names a stranger could use to pose as the operator or the server itself.
RESERVED_USERNAMES = frozenset({
    "admin", "administrator", "root", "system", "server", "authchat",
    "moderator", "operator", "everyone", "here", "channel", "support",
})


def validate_username(name: object, *, allow_reserved: bool = False) -> str:
    """Return `name` if it may be registered.

    Reserved names are refused for self-registration; an operator may still
    create one from the admin CLI (`allow_reserved=True`).

    Raises:
        InvalidUsername: with a message that says the rule.
    """
    if not isinstance(name, str) or not USERNAME_PATTERN.fullmatch(name):
        raise InvalidUsername(f"invalid username: {USERNAME_RULE}")
    if not allow_reserved and name.lower() in RESERVED_USERNAMES:
        raise InvalidUsername(f"the username {name!r} is reserved")
    return name
