"""UTC timestamps as authchat writes them: the two text forms, and only those.

`timestamp` is the form every `ts` field of the protocol carries, and the
message history stores: to the millisecond, so that text order is time order.
`utc_now` and `to_seconds` are the store's form for when accounts, invites
and audit rows changed: to the second.

Imports nothing from authchat, so protocol and store can both use it.
"""

from __future__ import annotations

from datetime import UTC, datetime

_SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds, as every `ts` field carries it."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    """Now, ISO-8601 UTC to the second."""
    return to_seconds(datetime.now(UTC))


def to_seconds(moment: datetime) -> str:
    """`moment` (a UTC time) as ISO-8601 to the second."""
    return moment.strftime(_SECONDS_FORMAT)
