"""Station passwords (HTTP Basic auth, security profiles 1 and 2): hashing, checking, generating.

Only a slow salted hash of a password is ever stored (scrypt, from :mod:`hashlib`), in a
self-describing string so the cost can be raised later without breaking stored values::

    scrypt$16384$8$1$<salt, base64>$<hash, base64>

Cost: N=2**14, r=8, p=1 needs 16 MiB and roughly 40-80 ms of one core per hash or check.
The gateway checks a password once per connection, so run :func:`verify_password` off the
event loop (``asyncio.to_thread``; hashlib releases the GIL during scrypt) when many stations
reconnect at once.

Passwords are ``str``. OCPP 1.6 stations use the octets of their hex ``AuthorizationKey`` as
the password, which need not be UTF-8: such octets travel as ``str`` decoded with
``surrogateescape`` (see :func:`password_from_authorization_key`), so every octet string
round-trips exactly through :func:`hash_password` and :func:`verify_password`.

Length rules, from the OCPP texts:

- 2.0.1 ``BasicAuthPassword``: a ``passwordString`` of at least 16 characters and at most the
  station's ``BasicAuthPassword`` maxLimit, which is at least 40 (up to 64 in later editions):
  40 is what every station accepts. ``passwordString`` allows ``a-z A-Z 0-9 * - _ = : + | @ .``.
- 1.6 (Security Whitepaper) ``AuthorizationKey``: 16 to 20 octets, sent hex-encoded (at most
  40 hex digits) in ChangeConfiguration.

Generated passwords use letters and digits only: valid in both versions and in HTTP Basic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string

from csms.versions import PasswordStyle, spec

__all__ = [
    "OCPP16_KEY_MAX_BYTES",
    "OCPP16_KEY_MIN_BYTES",
    "OCPP201_PASSWORD_MAX",
    "OCPP201_PASSWORD_MIN",
    "authorization_key",
    "check_password",
    "generate_password",
    "hash_password",
    "is_password_hash",
    "needs_rehash",
    "password_from_authorization_key",
    "verify_password",
]

OCPP201_PASSWORD_MIN = 16
OCPP201_PASSWORD_MAX = 40
OCPP16_KEY_MIN_BYTES = 16
OCPP16_KEY_MAX_BYTES = 20

_PASSWORD_STRING_CHARS = frozenset(string.ascii_letters + string.digits + "*-_=:+|@.")
_GENERATED_CHARS = string.ascii_letters + string.digits

_SCHEME = "scrypt"
_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32

# Bounds on parameters read back from a stored value: a corrupt or hostile value must not
# make a check allocate gigabytes or run for minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16


def _octets(password: str) -> bytes:
    return password.encode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # 128 * r * (n + p) bytes is what scrypt needs; leave headroom for OpenSSL's bookkeeping.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def hash_password(password: str) -> str:
    """Salted scrypt hash of ``password`` in the ``scrypt$N$r$p$salt$hash`` format."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(_octets(password), salt, _N, _R, _P, _HASH_BYTES)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The parameters of a stored hash, or None when it is malformed or out of bounds."""
    if not isinstance(encoded, str):
        return None
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        n, r, p = (int(part, 10) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches the stored ``encoded`` hash.

    Compares in constant time. Never raises: a malformed or unsupported ``encoded`` value
    (or a non-str argument) is simply a mismatch.
    """
    parsed = _parse(encoded)
    if parsed is None or not isinstance(password, str):
        return False
    n, r, p, salt, digest = parsed
    try:
        candidate = _scrypt(_octets(password), salt, n, r, p, len(digest))
    except (ValueError, MemoryError):  # includes UnicodeEncodeError (lone surrogates)
        return False
    return hmac.compare_digest(candidate, digest)


def is_password_hash(value: str) -> bool:
    """True when ``value`` is a stored-hash string this module can check.

    Settings and the registry refuse anything else, so a clear password pasted where a hash
    belongs is an error instead of a secret sitting in a config file or in Redis.
    """
    return _parse(value) is not None


def needs_rehash(encoded: str) -> bool:
    """True when ``encoded`` is malformed or was made with other parameters than today's.

    Rehash after a successful check (the clear password is known only then).
    """
    parsed = _parse(encoded)
    if parsed is None:
        return True
    n, r, p, salt, digest = parsed
    return (n, r, p, len(salt), len(digest)) != (_N, _R, _P, _SALT_BYTES, _HASH_BYTES)


def _is_authorization_key(version: str) -> bool:
    """True for versions whose stations get a 1.6 AuthorizationKey (hex octets)."""
    return spec(version).password is PasswordStyle.AUTHORIZATION_KEY


def _length_range(version: str) -> tuple[int, int]:
    if _is_authorization_key(version):
        return OCPP16_KEY_MIN_BYTES, OCPP16_KEY_MAX_BYTES
    return OCPP201_PASSWORD_MIN, OCPP201_PASSWORD_MAX


def generate_password(length: int = 24, *, version: str = "ocpp2.0.1") -> str:
    """A random password of letters and digits (about 5.95 bits of entropy per character).

    ``length`` is clamped to what ``version`` allows: 16-40 for 2.0.1, 16-20 for 1.6 (whose
    AuthorizationKey carries at most 20 octets).
    """
    low, high = _length_range(version)
    length = min(max(length, low), high)
    return "".join(secrets.choice(_GENERATED_CHARS) for _ in range(length))


def check_password(password: str, *, version: str = "ocpp2.0.1") -> None:
    """Raise ``ValueError`` (saying why, without the password) unless ``password`` is one a
    station of ``version`` can be given: for provisioning, never for admission."""
    low, high = _length_range(version)
    if _is_authorization_key(version):
        size = len(_octets(password))
        if not low <= size <= high:
            raise ValueError(f"an OCPP 1.6 AuthorizationKey has {low}-{high} octets, not {size}")
        return
    if not low <= len(password) <= high:
        raise ValueError(f"a BasicAuthPassword has {low}-{high} characters, not {len(password)}")
    bad = sorted(set(password) - _PASSWORD_STRING_CHARS)
    if bad:
        raise ValueError(
            f"a BasicAuthPassword allows a-z A-Z 0-9 *-_=:+|@. only ({len(bad)} other character(s))"
        )


def authorization_key(password: str) -> str:
    """The OCPP 1.6 ``AuthorizationKey`` value (upper-case hex) that makes a station use
    ``password``; raises ``ValueError`` unless it has 16-20 octets."""
    check_password(password, version="ocpp1.6")
    return _octets(password).hex().upper()


def password_from_authorization_key(key: str) -> str:
    """The password a 1.6 station derives from its hex ``AuthorizationKey`` (the decoded
    octets, as a surrogateescape ``str``); raises ``ValueError`` for bad hex or length."""
    try:
        octets = bytes.fromhex(key)
    except ValueError:
        raise ValueError("an AuthorizationKey is hexadecimal") from None
    password = octets.decode("utf-8", "surrogateescape")
    check_password(password, version="ocpp1.6")
    return password
