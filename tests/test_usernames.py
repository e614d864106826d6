from __future__ import annotations

import pytest

from authchat.errors import InvalidUsername
from authchat.usernames import skeleton, validate_username


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


@pytest.mark.parametrize("name, shape", [
    ("alice", "alice"), ("aIice", "alice"), ("ALICE", "alice"), ("a_l.i-c_e", "alice"),
    ("r00t", "root"), ("Administrat0r", "administrator"), ("modern", "modem"),
    ("vvalter", "walter"), ("b1ll", "blll"), ("bill", "blll"),
])
def test_a_skeleton_is_what_a_name_looks_like(name: str, shape: str) -> None:
    assert skeleton(name) == skeleton(shape) == skeleton(name.upper())


@pytest.mark.parametrize("name", ["admin_", "Administrat0r", "r00t", "ADM1N", "r-o-o-t",
                                  "sys.tem", "Operat0r", "Server_", "supp0rt"])
def test_names_that_look_like_reserved_ones_are_reserved(name: str) -> None:
    with pytest.raises(InvalidUsername, match="reserved"):
        validate_username(name)
    assert validate_username(name, allow_reserved=True) == name


@pytest.mark.parametrize("name", ["sistem", "evervone", "admins", "rooted", "admiral"])
def test_names_only_near_a_reserved_one_are_not(name: str) -> None:
    assert validate_username(name) == name
