"""Admission of station connections (gateway.admission): every rule, as a table."""

from __future__ import annotations

import base64
import dataclasses
import functools
from http import HTTPStatus

import msgspec
import pytest

from csms.credentials import hash_password, password_from_authorization_key, verify_password
from gateway.admission import (
    Admission,
    CertificateIdentity,
    ListenerPolicy,
    UnknownStations,
    admit,
    parse_basic_auth,
    select_version,
)
from services.models import StationRecord

STATION = "CS001"
PASSWORD = "s3cret-Passw0rd-for-CS001"
KEY_16 = "00112233445566778899AABBCCDDEEFF0A0B0C0D"  # 1.6 AuthorizationKey, 20 octets

HASH = hash_password(PASSWORD)
KEY_HASH = hash_password(password_from_authorization_key(KEY_16))
NEW_PASSWORD = "rotated-Passw0rd-for-CS001"
NEW_HASH = hash_password(NEW_PASSWORD)


@functools.cache
def _verify(password: str, encoded: str) -> bool:
    """The real verifier, memoised so the table does not pay scrypt per row."""
    return verify_password(password, encoded)


PLAIN = ListenerPolicy(frozenset({1}), tls=False)
PLAIN_FIRST_TRY = ListenerPolicy(frozenset({1}), tls=False, first_try=True)
TLS_2 = ListenerPolicy(frozenset({2}), tls=True)
TLS_23 = ListenerPolicy(frozenset({2, 3}), tls=True)
TLS_3 = ListenerPolicy(frozenset({3}), tls=True)


def record(profile: int, **fields: object) -> StationRecord:
    base = StationRecord(
        station_id=STATION,
        security_profile=profile,
        password_hash=HASH if profile in (1, 2) else None,
    )
    return msgspec.structs.replace(base, **fields)


CERT = CertificateIdentity(common_name=STATION, verified=True)
CERT_SAN = CertificateIdentity(common_name="device-42", san_dns=("cs001",), verified=True)
CERT_OTHER = CertificateIdentity(common_name="CS002", san_dns=("CS002",), verified=True)
CERT_UNVERIFIED = CertificateIdentity(common_name=STATION, verified=False)
CREDS = (STATION, PASSWORD)
NEW_CREDS = (STATION, NEW_PASSWORD)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    listener: ListenerPolicy
    record: StationRecord | None
    status: HTTPStatus
    profile: int
    reason: str
    credentials: tuple[str, str] | None = None
    certificate: CertificateIdentity | None = None
    version: str | None = "ocpp2.0.1"
    unknown: UnknownStations = "reject"
    pending: bool = False


OK = HTTPStatus.SWITCHING_PROTOCOLS
CASES = [
    # Profile 1: Basic over plain ws.
    Case("p1 ok", PLAIN, record(1), OK, 1, "password verified", CREDS),
    Case("p1 wrong password", PLAIN, record(1), HTTPStatus.UNAUTHORIZED, 1, "wrong password",
         (STATION, "not-the-password-at-all")),
    Case("p1 no credentials", PLAIN, record(1), HTTPStatus.UNAUTHORIZED, 0, "no Basic auth"),
    Case("username is another station", PLAIN, record(1), HTTPStatus.FORBIDDEN, 1,
         "username is not the station id", ("CS002", PASSWORD)),
    Case("no password provisioned", PLAIN, record(1, password_hash=None),
         HTTPStatus.UNAUTHORIZED, 1, "no password provisioned", CREDS),
    # A rotation in flight: the pending password is accepted besides the current one.
    Case("p1 pending password", PLAIN, record(1, pending_password_hash=NEW_HASH), OK, 1,
         "password verified (rotation pending)", NEW_CREDS),
    Case("p1 current password while pending", PLAIN, record(1, pending_password_hash=NEW_HASH),
         OK, 1, "Basic auth password verified", CREDS),
    Case("p1 wrong password while pending", PLAIN, record(1, pending_password_hash=NEW_HASH),
         HTTPStatus.UNAUTHORIZED, 1, "wrong password", (STATION, "not-the-password-at-all")),
    Case("p1 pending 1.6 key as hex text", PLAIN, record(1, pending_password_hash=KEY_HASH), OK,
         1, "rotation pending", (STATION, KEY_16), version="ocpp1.6"),
    Case("p1 only a pending password", PLAIN,
         record(1, password_hash=None, pending_password_hash=NEW_HASH), OK, 1,
         "rotation pending", NEW_CREDS),
    Case("p2 pending password", TLS_23, record(2, pending_password_hash=NEW_HASH), OK, 2,
         "rotation pending", NEW_CREDS),
    Case("pending password is no downgrade", PLAIN, record(2, pending_password_hash=NEW_HASH),
         HTTPStatus.FORBIDDEN, 1, "downgrade refused", NEW_CREDS),
    Case("p0 record on a normal listener", PLAIN, record(0), HTTPStatus.UNAUTHORIZED, 0,
         "no Basic auth"),
    Case("certificate ignored on plain listener", PLAIN, record(1), OK, 1, "password verified",
         CREDS, CERT),
    # Unknown stations.
    Case("unknown refused", PLAIN, None, HTTPStatus.NOT_FOUND, 1, "unknown station", CREDS),
    Case("unknown refused without credentials", TLS_23, None, HTTPStatus.NOT_FOUND, 0,
         "unknown station"),
    Case("unknown pending", PLAIN, None, OK, 0, "as Pending", CREDS, unknown="pending",
         pending=True),
    Case("unknown pending, no credentials", PLAIN, None, OK, 0, "as Pending", unknown="pending",
         pending=True),
    Case("unknown pending, own certificate", TLS_23, None, OK, 3, "as Pending",
         certificate=CERT, unknown="pending", pending=True),
    Case("unknown pending, certificate of another station", TLS_23, None, HTTPStatus.FORBIDDEN,
         3, "not issued", certificate=CERT_OTHER, unknown="pending"),
    Case("unknown pending, username of another station", PLAIN, None, HTTPStatus.FORBIDDEN, 1,
         "username", ("CS002", PASSWORD), unknown="pending"),
    Case("unknown accept, no credentials", PLAIN, None, OK, 0, "unknown_stations = accept",
         unknown="accept"),
    Case("unknown accept, certificate of another station", TLS_23, None, HTTPStatus.FORBIDDEN,
         3, "not issued", certificate=CERT_OTHER, unknown="accept"),
    # A record the fleet wrote for a station admitted while unknown is not a provisioning.
    Case("unprovisioned record, accept policy", PLAIN, record(0, known=False), OK, 0,
         "unknown_stations = accept", unknown="accept"),
    Case("unprovisioned record, pending policy", PLAIN, record(0, known=False), OK, 0,
         "as Pending", unknown="pending", pending=True),
    Case("unprovisioned record, reject policy", PLAIN, record(0, known=False),
         HTTPStatus.NOT_FOUND, 0, "unknown station"),
    # Profile 2: Basic over TLS.
    Case("p2 ok", TLS_23, record(2), OK, 2, "password verified", CREDS),
    Case("p2 wrong password", TLS_23, record(2), HTTPStatus.UNAUTHORIZED, 2, "wrong password",
         (STATION, PASSWORD + "x")),
    Case("p2 station on plain listener: downgrade", PLAIN, record(2), HTTPStatus.FORBIDDEN, 1,
         "downgrade", CREDS),
    Case("p2 station on plain listener, no credentials: no challenge", PLAIN, record(2),
         HTTPStatus.FORBIDDEN, 0, "requires security profile 2"),
    Case("p1 station over TLS: upgrade accepted", TLS_23, record(1), OK, 2, "password verified",
         CREDS),
    Case("p2 station with its own certificate: upgrade accepted", TLS_23, record(2), OK, 3,
         "certificate verified", certificate=CERT),
    Case("certificate of another station beats a valid password", TLS_23, record(2),
         HTTPStatus.FORBIDDEN, 3, "not issued", CREDS, CERT_OTHER),
    Case("certificate ignored where profile 3 is not served", TLS_2, record(2), OK, 2,
         "password verified", CREDS, CERT_OTHER),
    # Profile 3: client certificate.
    Case("p3 ok", TLS_3, record(3), OK, 3, "certificate verified", certificate=CERT),
    Case("p3 ok on a 2+3 listener", TLS_23, record(3), OK, 3, "certificate verified",
         certificate=CERT),
    Case("p3 SAN dNSName, case-insensitive", TLS_23, record(3), OK, 3, "certificate verified",
         certificate=CERT_SAN),
    Case("p3 station presenting only Basic: downgrade", TLS_23, record(3, password_hash=HASH),
         HTTPStatus.FORBIDDEN, 2, "downgrade", CREDS),
    Case("p3 station presenting nothing", TLS_23, record(3), HTTPStatus.FORBIDDEN, 0,
         "client certificate required"),
    Case("p3 certificate CN mismatch", TLS_23, record(3), HTTPStatus.FORBIDDEN, 3, "not issued",
         certificate=CERT_OTHER),
    Case("p3 unverified certificate", TLS_23, record(3), HTTPStatus.FORBIDDEN, 3, "not verified",
         certificate=CERT_UNVERIFIED),
    Case("unverified certificate refused even with valid Basic", TLS_23, record(2),
         HTTPStatus.FORBIDDEN, 3, "not verified", CREDS, CERT_UNVERIFIED),
    Case("p3 certificate_identity overrides the id", TLS_3, record(3, certificate_identity="SN-9"),
         OK, 3, "certificate verified",
         certificate=CertificateIdentity(common_name="SN-9", verified=True)),
    Case("p3 certificate_identity set: the id alone is not enough", TLS_3,
         record(3, certificate_identity="SN-9"), HTTPStatus.FORBIDDEN, 3, "not issued",
         certificate=CERT),
    Case("Basic on a profile-3-only listener", TLS_3, record(1), HTTPStatus.FORBIDDEN, 2,
         "requires a client certificate", CREDS),
    # OCPP versions allowed for the station.
    Case("version not allowed", PLAIN, record(1, allowed_versions=["ocpp1.6"]),
         HTTPStatus.FORBIDDEN, 1, "ocpp2.0.1 not allowed", CREDS),
    Case("version allowed", PLAIN, record(1, allowed_versions=["ocpp1.6"]), OK, 1,
         "password verified", CREDS, version="ocpp1.6"),
    Case("no version negotiated, versions restricted", PLAIN,
         record(1, allowed_versions=["ocpp1.6"]), HTTPStatus.FORBIDDEN, 1, "none not allowed",
         CREDS, version=None),
    Case("version checked only after authentication", PLAIN,
         record(1, allowed_versions=["ocpp1.6"]), HTTPStatus.UNAUTHORIZED, 1, "wrong password",
         (STATION, "wrong-wrong-wrong-wrong")),
    # First-try mode (loopback only; enforced by the caller).
    Case("first-try admits unknown without credentials", PLAIN_FIRST_TRY, None, OK, 0,
         "first-try"),
    Case("first-try admits unknown with credentials", PLAIN_FIRST_TRY, None, OK, 0,
         "first-try", CREDS),
    Case("first-try admits p0 station", PLAIN_FIRST_TRY, record(0), OK, 0, "first-try"),
    Case("first-try keeps the pending policy", PLAIN_FIRST_TRY, None, OK, 0, "as Pending",
         unknown="pending", pending=True),
    Case("first-try still checks versions", PLAIN_FIRST_TRY,
         record(0, allowed_versions=["ocpp1.6"]), HTTPStatus.FORBIDDEN, 0, "not allowed"),
    Case("first-try still challenges a p1 station", PLAIN_FIRST_TRY, record(1),
         HTTPStatus.UNAUTHORIZED, 0, "no Basic auth"),
    Case("first-try still verifies a p1 password", PLAIN_FIRST_TRY, record(1),
         HTTPStatus.UNAUTHORIZED, 1, "wrong password", (STATION, "x" * 20)),
    Case("first-try does not lower a p2 station", PLAIN_FIRST_TRY, record(2),
         HTTPStatus.FORBIDDEN, 0, "requires security profile 2"),
    # OCPP 1.6 AuthorizationKey: octets expected, hex text tolerated.
    Case("1.6 key octets", PLAIN, record(1, password_hash=KEY_HASH), OK, 1, "verified",
         (STATION, password_from_authorization_key(KEY_16)), version="ocpp1.6"),
    Case("1.6 key sent as hex text", PLAIN, record(1, password_hash=KEY_HASH), OK, 1, "verified",
         (STATION, KEY_16), version="ocpp1.6"),
    Case("1.6 key sent as lower-case hex text", PLAIN, record(1, password_hash=KEY_HASH), OK, 1,
         "verified", (STATION, KEY_16.lower()), version="ocpp1.6"),
    Case("hex leniency is 1.6 only", PLAIN, record(1, password_hash=KEY_HASH),
         HTTPStatus.UNAUTHORIZED, 1, "wrong password", (STATION, KEY_16), version="ocpp2.0.1"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_admission_rules(case: Case) -> None:
    result = admit(
        STATION,
        case.version,
        case.listener,
        case.record,
        unknown=case.unknown,
        credentials=case.credentials,
        certificate=case.certificate,
        verify=_verify,
    )
    assert result.http_status == case.status, result.reason
    assert result.accepted is (case.status == OK)
    assert result.profile == case.profile
    assert case.reason in result.reason
    assert result.pending is case.pending
    assert result.known is (case.record is not None and case.record.known)
    assert PASSWORD not in result.reason and KEY_16 not in result.reason
    assert NEW_PASSWORD not in result.reason
    if case.status == HTTPStatus.UNAUTHORIZED:
        assert result.headers == (("WWW-Authenticate", 'Basic realm="OCPP", charset="UTF-8"'),)
    else:
        assert result.headers == ()


@pytest.mark.parametrize(
    ("fields", "proven"),
    [
        ({"pending_password_hash": NEW_HASH}, NEW_HASH),
        # The answer to an earlier rotation was lost; a newer one is pending.
        ({"pending_password_hash": KEY_HASH, "unsettled_password_hashes": [NEW_HASH]}, NEW_HASH),
        ({}, None),
    ],
)
def test_login_with_a_rotated_password_proves_it(
    fields: dict[str, object], proven: str | None
) -> None:
    credentials = NEW_CREDS if proven else CREDS
    result = admit(
        STATION,
        "ocpp2.0.1",
        PLAIN,
        record(1, **fields),
        unknown="reject",
        credentials=credentials,
        verify=_verify,
    )
    assert result.accepted
    assert result.proven_password_hash == proven


def test_a_refused_rotation_does_not_lock_out_a_station_using_an_unsettled_one() -> None:
    stale = record(1, unsettled_password_hashes=[NEW_HASH])
    result = admit(
        STATION, "ocpp2.0.1", PLAIN, stale, unknown="reject", credentials=NEW_CREDS, verify=_verify
    )
    assert result.accepted and "answer was lost" in result.reason
    wrong = admit(
        STATION,
        "ocpp2.0.1",
        PLAIN,
        stale,
        unknown="reject",
        credentials=(STATION, "not-the-password-1234"),
        verify=_verify,
    )
    assert wrong.http_status == HTTPStatus.UNAUTHORIZED


def test_default_verifier_is_scrypt() -> None:
    assert admit(STATION, "ocpp2.0.1", PLAIN, record(1), credentials=CREDS).accepted
    assert not admit(STATION, "ocpp2.0.1", PLAIN, record(1), credentials=(STATION, "x")).accepted


def test_verifier_not_called_when_the_decision_needs_no_password() -> None:
    calls: list[str] = []

    def verify(password: str, encoded: str) -> bool:
        calls.append(password)
        return True

    admit(STATION, None, PLAIN, record(2), credentials=CREDS, verify=verify)  # downgrade
    admit(STATION, None, PLAIN, record(1), credentials=("CS002", PASSWORD), verify=verify)
    admit(STATION, None, PLAIN, None, credentials=CREDS, verify=verify)  # unknown
    assert calls == []


def test_admission_is_a_value() -> None:
    result = admit(STATION, None, PLAIN, None)
    assert isinstance(result, Admission)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.accepted = True  # type: ignore[misc]


def test_custom_realm_in_challenge() -> None:
    listener = ListenerPolicy(frozenset({1}), tls=False, realm="CSMS")
    result = admit(STATION, None, listener, record(1))
    assert result.headers == (("WWW-Authenticate", 'Basic realm="CSMS", charset="UTF-8"'),)


@pytest.mark.parametrize(
    ("profiles", "tls", "message"),
    [
        ({1}, True, "plain listener"),
        ({2}, False, "need TLS"),
        ({3}, False, "need TLS"),
        ({4}, True, "1, 2 and 3"),
        (set(), False, "at least one"),
    ],
)
def test_listener_policy_validation(profiles: set[int], tls: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ListenerPolicy(frozenset(profiles), tls=tls)


def test_listener_policy_basic_profile() -> None:
    assert PLAIN.basic_profile == 1
    assert TLS_23.basic_profile == 2
    assert TLS_3.basic_profile is None
    assert ListenerPolicy({2, 3}, tls=True).profiles == frozenset({2, 3})  # type: ignore[arg-type]


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_basic(b"CS001:secret"), ("CS001", "secret")),
        (_basic(b"CS001:pass:with:colons"), ("CS001", "pass:with:colons")),
        (_basic(b"CS001:"), ("CS001", "")),
        (_basic("Station-Ä:pässword".encode()), ("Station-Ä", "pässword")),
        ("basic " + base64.b64encode(b"CS001:secret").decode(), ("CS001", "secret")),
        ("BASIC   " + base64.b64encode(b"CS001:secret").decode() + "  ", ("CS001", "secret")),
        ("Basic " + base64.b64encode(b"CS001:secre").decode().rstrip("="), ("CS001", "secre")),
        (None, None),
        ("", None),
        ("Basic", None),
        ("Basic ", None),
        ("Bearer abc.def", None),
        ("Digest username=CS001", None),
        ("Basic !!!not-base64!!!", None),
        ("Basic " + base64.b64encode(b"no colon here").decode(), None),
        ("Basic abc def", None),
        ("Basic " + "A" * 5000, None),
    ],
)
def test_parse_basic_auth(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_basic_auth(header) == expected


def test_parse_basic_auth_keeps_non_utf8_octets() -> None:
    octets = bytes.fromhex(KEY_16)
    parsed = parse_basic_auth(_basic(b"CS001:" + octets))
    assert parsed is not None
    assert parsed[1].encode("utf-8", "surrogateescape") == octets
    assert parsed[1] == password_from_authorization_key(KEY_16)


@pytest.mark.parametrize(
    ("offered", "allowed", "expected"),
    [
        (["ocpp2.0.1", "ocpp1.6"], [], "ocpp2.0.1"),
        (["ocpp2.0.1", "ocpp1.6"], ["ocpp1.6"], "ocpp1.6"),
        (["ocpp1.6", "ocpp2.0.1"], [], "ocpp1.6"),
        (["ocpp2.0.1"], ["ocpp1.6"], None),
        (["ocpp1.5"], [], None),
        ([], [], None),
    ],
)
def test_select_version(offered: list[str], allowed: list[str], expected: str | None) -> None:
    assert select_version(offered, ("ocpp2.0.1", "ocpp1.6"), allowed) == expected
