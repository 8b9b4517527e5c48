"""Station password hashing, checking and generation (csms.credentials)."""

from __future__ import annotations

import base64
import string

import pytest

from csms import credentials
from csms.credentials import (
    authorization_key,
    check_password,
    generate_password,
    hash_password,
    needs_rehash,
    password_from_authorization_key,
    verify_password,
)

PASSWORD = "Correct-Horse-Battery-9"


@pytest.fixture(scope="module")
def encoded() -> str:
    return hash_password(PASSWORD)


def test_hash_is_self_describing_and_salted(encoded: str) -> None:
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert PASSWORD not in encoded
    assert hash_password(PASSWORD) != encoded  # fresh salt each time


def test_verify_accepts_the_password_only(encoded: str) -> None:
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "x", encoded)
    assert not verify_password(PASSWORD.lower(), encoded)
    assert not verify_password("", encoded)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain-text-password",
        "scrypt$16384$8$1$salt",  # too few fields
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$abc$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$999$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$not base64!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",  # digest too short
        "scrypt$16384$8$1$AA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # salt too short
    ],
)
def test_verify_never_raises_on_malformed_hashes(bad: str) -> None:
    assert verify_password(PASSWORD, bad) is False
    assert needs_rehash(bad) is True


def test_verify_rejects_non_str_and_unencodable_input(encoded: str) -> None:
    assert verify_password(PASSWORD, None) is False  # type: ignore[arg-type]
    assert verify_password(None, encoded) is False  # type: ignore[arg-type]
    assert verify_password("\ud800", encoded) is False  # lone surrogate: not encodable


def test_needs_rehash_when_parameters_change(encoded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not needs_rehash(encoded)
    monkeypatch.setattr(credentials, "_N", 2**15)
    assert needs_rehash(encoded)
    assert verify_password(PASSWORD, encoded)  # old hashes still verify


def test_cheaper_stored_parameters_still_verify() -> None:
    # A hash made with other (bounded) parameters verifies and asks to be rehashed.
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**10, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    encoded = f"scrypt$1024$8$1${b64(salt).decode()}${b64(digest).decode()}"
    assert verify_password(PASSWORD, encoded)
    assert needs_rehash(encoded)


def test_non_utf8_octets_round_trip() -> None:
    # A 1.6 AuthorizationKey may decode to octets that are not UTF-8.
    key = "0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF"
    password = password_from_authorization_key(key)
    assert password.encode("utf-8", "surrogateescape") == bytes.fromhex(key)
    encoded = hash_password(password)
    assert verify_password(password, encoded)
    assert not verify_password(key, encoded)
    assert authorization_key(password) == key


@pytest.mark.parametrize(
    ("requested", "version", "expected"),
    [
        (24, "ocpp2.0.1", 24),
        (1, "ocpp2.0.1", 16),
        (100, "ocpp2.0.1", 40),
        (24, "ocpp1.6", 20),
        (1, "ocpp1.6", 16),
        (18, "ocpp1.6", 18),
    ],
)
def test_generated_length_is_clamped_to_the_spec(
    requested: int, version: str, expected: int
) -> None:
    password = generate_password(requested, version=version)
    assert len(password) == expected
    check_password(password, version=version)


def test_generated_passwords_are_letters_and_digits_and_random() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    allowed = set(string.ascii_letters + string.digits)
    assert all(set(password) <= allowed for password in passwords)


@pytest.mark.parametrize(
    ("password", "version", "message"),
    [
        ("short", "ocpp2.0.1", "16-40 characters"),
        ("x" * 41, "ocpp2.0.1", "16-40 characters"),
        ("sixteen-chars-ok!", "ocpp2.0.1", "allows"),
        ("x" * 15, "ocpp1.6", "16-20 octets"),
        ("x" * 21, "ocpp1.6", "16-20 octets"),
    ],
)
def test_check_password_explains_without_echoing(password: str, version: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_password(password, version=version)
    assert password not in str(info.value)


def test_check_password_accepts_the_password_string_alphabet() -> None:
    check_password("a-Z_0=9:+|@.*abcdef", version="ocpp2.0.1")


def test_authorization_key_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="hexadecimal"):
        password_from_authorization_key("not hex at all, sorry!")
    with pytest.raises(ValueError, match="octets"):
        password_from_authorization_key("00112233")
    with pytest.raises(ValueError, match="octets"):
        authorization_key("x" * 24)
