from __future__ import annotations

import unicodedata

import pytest

from authchat.errors import InvalidPassword
from authchat.passwords import (
    MAX_PASSWORD_LENGTH,
    SCHEME,
    PasswordHasher,
    PasswordPolicy,
    common_passwords,
)

from conftest import GOOD_PASSWORD, TEST_COST

policy = PasswordPolicy(min_length=15)
hasher = PasswordHasher(TEST_COST)


def test_length_is_counted_in_code_points_after_nfkc() -> None:
    policy.check("\ufb01" * 8, "zed")  # 8 ligatures "fi" are 16 code points after NFKC
    with pytest.raises(InvalidPassword, match="at least 15"):
        policy.check("\ufb01" * 7, "zed")  # 14 after NFKC, though 21 bytes


def test_fourteen_rejected_fifteen_accepted() -> None:
    with pytest.raises(InvalidPassword):
        policy.check("x" * 13 + "é", "zed")          # 14 code points, 15 bytes
    policy.check("🔥" * 15, "zed")                    # 15 emoji: 60 bytes
    policy.check("four words with spaces", "zed")     # spaces are fine


def test_upper_bound_1024_code_points() -> None:
    policy.check("é" * MAX_PASSWORD_LENGTH, "zed")
    with pytest.raises(InvalidPassword, match="at most 1024"):
        policy.check("é" * (MAX_PASSWORD_LENGTH + 1), "zed")


def test_minimum_is_configurable_but_never_below_8() -> None:
    PasswordPolicy(min_length=8).check("xkcd-9-horse", "zed")
    with pytest.raises(ValueError):
        PasswordPolicy(min_length=7)


def test_common_passwords_are_rejected_case_insensitively() -> None:
    assert len(common_passwords()) >= 10_000
    long_common = sorted(p for p in common_passwords() if len(p) >= 15)[0]
    with pytest.raises(InvalidPassword, match="too common"):
        policy.check(long_common.upper(), "zed")
    with pytest.raises(InvalidPassword, match="too common"):
        PasswordPolicy(min_length=8).check("Password1", "zed")


def test_password_may_not_contain_the_username() -> None:
    with pytest.raises(InvalidPassword, match="username"):
        policy.check("my name is ALICE and that is ok", "alice")
    with pytest.raises(InvalidPassword):
        policy.check("authchat is the best chat", "zed")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(InvalidPassword):
        policy.check("\ud800" * 20, "zed")


def test_hash_carries_scheme_tag_and_cost() -> None:
    stored = hasher.hash(GOOD_PASSWORD)
    assert stored.startswith(f"{SCHEME}:$2b$04$")
    assert GOOD_PASSWORD not in stored
    assert hasher.verify(GOOD_PASSWORD, stored)
    assert not hasher.verify(GOOD_PASSWORD + " ", stored)


def test_200_character_password_round_trip_without_truncation() -> None:
    password = "long passphrase " * 12 + "endx1234"
    assert len(password) == 200
    stored = hasher.hash(password)
    assert hasher.verify(password, stored)
    # bcrypt alone would only see the first 72 bytes: changing the end must fail
    assert not hasher.verify(password[:72], stored)
    assert not hasher.verify(password[:-1] + "5", stored)


def test_1024_code_point_password_round_trip() -> None:
    password = "🔥é" * 512
    stored = hasher.hash(password)
    assert hasher.verify(password, stored)
    assert not hasher.verify(password[:-1], stored)


def test_nfkc_normalisation_makes_equivalent_forms_equal() -> None:
    nfd = unicodedata.normalize("NFD", "café crème brûlée au lait")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    stored = hasher.hash(nfd)
    assert hasher.verify(nfc, stored)
    fullwidth = "ｃｏｒｒｅｃｔ ｈｏｒｓｅ ｂａｔｔｅｒｙ"
    assert hasher.verify("correct horse battery", hasher.hash(fullwidth))


def test_malformed_or_missing_hash_verifies_false() -> None:
    for stored in (None, "", "plain", f"{SCHEME}:$2b$04$short", "md5:abc"):
        assert not hasher.verify(GOOD_PASSWORD, stored)


def test_needs_rehash_for_lower_cost_or_other_scheme() -> None:
    stored = hasher.hash(GOOD_PASSWORD)
    assert not hasher.needs_rehash(stored)
    assert PasswordHasher(TEST_COST + 1).needs_rehash(stored)
    assert not PasswordHasher(TEST_COST - 0).needs_rehash(stored)
    assert hasher.needs_rehash("legacy:" + stored.partition(":")[2])
