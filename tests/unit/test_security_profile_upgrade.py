"""Security-profile upgrade, the pure parts: when admission says a pending upgrade is reached,
the registry rules that record and raise it, and how a requested profile is read."""

from __future__ import annotations

import msgspec
import pytest

from csms.credentials import hash_password
from csms.envelope import ConnectionEvent, ConnectionEventKind, decode_event, encode
from gateway.admission import CertificateIdentity, ListenerPolicy, admit
from manager.security_profile_results import parse_profile
from services import rules
from services.models import StationCredentials, StationRecord

STATION = "CS001"
PASSWORD = "upgrade-Passw0rd-for-CS001"
HASH = hash_password(PASSWORD)
CREDS = (STATION, PASSWORD)
PLAIN = ListenerPolicy(frozenset({1}), tls=False)
TLS_23 = ListenerPolicy(frozenset({2, 3}), tls=True)
CERT = CertificateIdentity(common_name=STATION, verified=True)


def record(profile: int, pending: int | None) -> StationRecord:
    return StationRecord(
        station_id=STATION,
        security_profile=profile,
        pending_security_profile=pending,
        password_hash=HASH,
    )


@pytest.mark.parametrize(
    ("registered", "pending", "listener", "certificate", "reached"),
    [
        (1, 2, TLS_23, None, 2),  # TLS + Basic auth: profile 2 reached
        (1, 2, TLS_23, CERT, 2),  # profile 3 meets an upgrade to 2 too
        (1, 3, TLS_23, None, 0),  # profile 2 does not meet an upgrade to 3
        (1, 2, PLAIN, None, 0),  # still on the old network profile: admitted, nothing reached
        (1, None, TLS_23, None, 0),  # nothing pending
        (2, 3, TLS_23, CERT, 3),
    ],
)
def test_admission_reports_a_reached_upgrade(
    registered: int,
    pending: int | None,
    listener: ListenerPolicy,
    certificate: CertificateIdentity | None,
    reached: int,
) -> None:
    admission = admit(
        STATION,
        "ocpp2.0.1",
        listener,
        record(registered, pending),
        credentials=None if certificate else CREDS,
        certificate=certificate,
    )
    assert admission.accepted, admission.reason
    assert admission.reached_security_profile == reached


def test_a_refused_connection_reaches_nothing() -> None:
    admission = admit(
        STATION, "ocpp2.0.1", TLS_23, record(1, 2), credentials=(STATION, "wrong-password")
    )
    assert not admission.accepted
    assert admission.reached_security_profile == 0


def test_after_the_raise_the_old_profile_is_a_downgrade() -> None:
    raised = rules.with_security_profile_reached(record(1, 2), 2)
    assert raised is not None
    admission = admit(STATION, "ocpp2.0.1", PLAIN, raised, credentials=CREDS)
    assert not admission.accepted
    assert admission.http_status == 403
    assert "downgrade refused" in admission.reason


def test_rules_only_raise() -> None:
    assert rules.with_pending_security_profile(None, 2) is None
    assert rules.with_pending_security_profile(record(2, None), 2) is None
    assert rules.with_pending_security_profile(record(2, None), 1) is None
    pending = rules.with_pending_security_profile(record(1, None), 3)
    assert pending is not None and pending.pending_security_profile == 3
    with pytest.raises(ValueError, match="security profile"):
        rules.with_pending_security_profile(record(1, None), 0)
    assert rules.with_security_profile_reached(record(1, None), 3) is None
    assert rules.with_security_profile_reached(record(1, 3), 2) is None
    raised = rules.with_security_profile_reached(record(1, 3), 3)
    assert raised == msgspec.structs.replace(
        record(1, 3), security_profile=3, pending_security_profile=None
    )


def test_operator_profile_at_or_above_the_upgrade_settles_it() -> None:
    settled = rules.with_credentials(record(1, 2), STATION, StationCredentials(security_profile=3))
    assert (settled.security_profile, settled.pending_security_profile) == (3, None)
    kept = rules.with_credentials(record(1, 3), STATION, StationCredentials(security_profile=2))
    assert kept.pending_security_profile == 3
    untouched = rules.with_credentials(
        record(1, 2), STATION, StationCredentials(password_hash=None)
    )
    assert untouched.pending_security_profile == 2


def test_records_and_events_without_the_new_fields_still_load() -> None:
    old = msgspec.json.encode({"station_id": STATION, "security_profile": 1})
    loaded = msgspec.json.decode(old, type=StationRecord)
    assert loaded.pending_security_profile is None
    event = ConnectionEvent(
        kind=ConnectionEventKind.CONNECTED,
        station=STATION,
        version="ocpp1.6",
        gateway="g",
        connection="c",
    )
    assert b"security_profile_reached" not in encode(event)
    reached = msgspec.structs.replace(event, security_profile_reached=2)
    assert decode_event(encode(reached)).security_profile_reached == 2


@pytest.mark.parametrize(
    ("value", "profile"),
    [
        ("2", 2),
        (" 3 ", 3),
        (1, 1),
        ("0", None),
        ("4", None),
        ("two", None),
        (True, None),
        (None, None),
    ],
)
def test_requested_profile(value: object, profile: int | None) -> None:
    assert parse_profile(value) == profile
