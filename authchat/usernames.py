"""The username rule: one place decides what a valid, registrable name is.

Names are ASCII only, so letters from other scripts that look like Latin ones
cannot impersonate anyone; uniqueness is case-insensitive (the store enforces
it with a constraint) and the display form is the one registered.

Within ASCII some names still look alike: `aIice` and `alice`, `r00t` and
`root`, `admin_` and `admin`. Each name has a skeleton (`skeleton`): lower
case, without `_`, `.` and `-`, with `rn` read as `m`, `vv` as `w`, `1` and
`i` as `l`, and `0` as `o`. No two accounts may share a skeleton (the store
checks it in the transaction that creates the account), and a name whose
skeleton is a reserved name's is reserved too.
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


# (what, as what), applied in this order to the lower-cased name. The
# store's migration 0006 computes the same with SQL replace(), in this order.
LOOK_ALIKES = (("_", ""), (".", ""), ("-", ""), ("rn", "m"), ("vv", "w"),
               ("1", "l"), ("i", "l"), ("0", "o"))


def skeleton(name: str) -> str:
    """What `name` looks like, whatever its case and look-alike letters."""
    shape = name.lower()
    for what, as_what in LOOK_ALIKES:
        shape = shape.replace(what, as_what)
    return shape


_RESERVED_SKELETONS = frozenset(map(skeleton, RESERVED_USERNAMES))


def validate_username(name: object, *, allow_reserved: bool = False) -> str:
    """Return `name` if it may be registered.

    Reserved names are refused for self-registration; an operator may still
    create one from the admin CLI (`allow_reserved=True`).

    Raises:
        InvalidUsername: with a message that says the rule.
    """
    if not isinstance(name, str) or not USERNAME_PATTERN.fullmatch(name):
        raise InvalidUsername(f"invalid username: {USERNAME_RULE}")
    if not allow_reserved and skeleton(name) in _RESERVED_SKELETONS:
        raise InvalidUsername(f"the username {name!r} is reserved")
    return name
