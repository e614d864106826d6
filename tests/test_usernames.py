from __future__ import annotations

import pytest

from authchat.errors import InvalidUsername
from authchat.usernames import validate_username


@pytest.mark.parametrize("name", ["Alice", "bob", "a.b-c_d", "Z99", "x" * 32])
def test_valid(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", [
    "ab", "x" * 33, "1alice", "_alice", "al ice", "alice\n", "alice\u200b",
    "\u202eecila", "Ａｌｉｃｅ", "аlice", "\u212aelvin", "", None, 42, "alice!",
])
def test_invalid(name: object) -> None:
    with pytest.raises(InvalidUsername, match="3-32 ASCII"):
        validate_username(name)


@pytest.mark.parametrize("name", ["admin", "ROOT", "System", "server", "authchat", "everyone"])
def test_reserved_names_cannot_be_self_registered(name: str) -> None:
    with pytest.raises(InvalidUsername, match="reserved"):
        validate_username(name)
    assert validate_username(name, allow_reserved=True) == name
