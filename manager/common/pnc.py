"""ISO 15118 Plug & Charge, shared by both versions: 2.0.1 Authorize with contract data
(C07), GetCertificateStatus (M06) and Get15118EVCertificate (M01/M02), and the same three
plus SignCertificate wrapped in a 1.6 DataTransfer (OCA application note "Using ISO 15118
Plug & Charge with OCPP 1.6": vendorId ``org.openchargealliance.iso15118pnc``, messageId =
the 2.0.1 action, ``data`` = the JSON of the 2.0.1 request, answered with the JSON of the
2.0.1 response; :mod:`services.pnc` has the wrapping).

The contract decides ``certificateStatus``; the idToken (the eMAID) is still decided by the
token store like any other, and a contract that is not Accepted makes it not Accepted
either: expired -> Expired, cancelled -> Blocked, anything else (revoked: C07.FR.16; a
chain whose validity cannot be established, OCSP responder down: C07.FR.17) -> Invalid.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import ocpp_schemas
from manager.common import authorization, certificates, events
from manager.context import CallContext
from ocpp_schemas import Direction, SchemaViolation
from services.certificates import V2G_CERTIFICATE
from services.contract_certificates import ProviderFailed
from services.data_transfer import VendorAnswer
from services.models import Authorization, AuthorizationStatus
from services.pnc import PNC_VENDOR_ID, CertificateStatus, OcspRequestData, der_base64

__all__ = [
    "PNC_VENDOR_ID",
    "WRAPPED_HANDLERS",
    "authorize",
    "certificate_status",
    "data_transfer_16",
    "ev_certificate",
    "sign_certificate",
]

V201 = "ocpp2.0.1"

# C07.FR.16: a revoked chain is answered CertificateRevoked with idTokenInfo.status Invalid,
# the default below.
_CONTRACT_TOKEN_STATUS = {
    CertificateStatus.CONTRACT_CANCELLED: AuthorizationStatus.BLOCKED,
    CertificateStatus.CERTIFICATE_EXPIRED: AuthorizationStatus.EXPIRED,
}


def _token_decision(decision: Authorization, contract: CertificateStatus) -> Authorization:
    if (
        contract is CertificateStatus.ACCEPTED
        or decision.status is not AuthorizationStatus.ACCEPTED
    ):
        return decision
    status = _CONTRACT_TOKEN_STATUS.get(contract, AuthorizationStatus.INVALID)
    return Authorization(status=status, expiry=None, group_id=decision.group_id)


async def authorize(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A 2.0.1 AuthorizeResponse; ``certificateStatus`` only when the request carried a
    contract certificate or its OCSP request data."""
    token = payload["idToken"]
    decision = await authorization.authorize(ctx, token["idToken"], token["type"])
    certificate = payload.get("certificate")
    hash_data = payload.get("iso15118CertificateHashData") or []
    contract: CertificateStatus | None = None
    if certificate or hash_data:
        contract = await ctx.services.pnc.verifier.verify_contract(
            certificate, [OcspRequestData.from_wire(item) for item in hash_data]
        )
        decision = _token_decision(decision, contract)
    ctx.log.info(
        "authorize",
        id_token=token["idToken"],
        token_type=token["type"],
        status=decision.status.value,
        certificate_status=contract.value if contract is not None else None,
    )
    await events.authorization_refused(ctx, decision, token["idToken"], token["type"])
    response: dict[str, Any] = {"idTokenInfo": authorization.id_token_info(decision)}
    if contract is not None:
        response["certificateStatus"] = contract.value
    return response


async def certificate_status(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The CSMS as OCSP proxy for a station that cannot reach the responder itself."""
    request = OcspRequestData.from_wire(payload["ocspRequestData"])
    der = await ctx.services.pnc.verifier.certificate_status(request)
    ctx.log.info("certificate_status", serial=request.serial_number, answered=der is not None)
    if der is None:
        return {
            "status": "Failed",
            "statusInfo": {"reasonCode": "OcspUnavailable", "additionalInfo": "no OCSP answer"},
        }
    return {"status": "Accepted", "ocspResult": der_base64(der)}


async def ev_certificate(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Relay the EV's EXI request to the contract-certificate provider."""
    provider = ctx.services.pnc.provider
    if provider is None:
        return _ev_failed("NoProvider", "no contract certificate provider is configured")
    try:
        exi = await provider.get(
            payload["exiRequest"], payload["iso15118SchemaVersion"], payload["action"]
        )
    except ProviderFailed as exc:
        return _ev_failed("ProviderFailed", str(exc))
    ctx.log.info("ev_certificate", action=payload["action"], answered=True)
    return {"status": "Accepted", "exiResponse": exi}


def _ev_failed(reason: str, info: str) -> dict[str, Any]:
    return {
        "status": "Failed",
        "exiResponse": "",
        "statusInfo": {"reasonCode": reason, "additionalInfo": info[:512]},
    }


async def sign_certificate(ctx: CallContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The wrapped SignCertificate: the same CSR checks and signer as 2.0.1's (A02/A03);
    the chain follows in a wrapped CertificateSigned. Without ``certificateType`` it is the
    V2G certificate's CSR: the note's SignCertificate serves ISO 15118, the charge point
    certificate has the security extension's own SignCertificate."""
    certificate_type = payload.get("certificateType") or V2G_CERTIFICATE
    decision = await certificates.sign_certificate(
        ctx, payload["csr"], certificate_type, wrapped=True
    )
    answer: dict[str, Any] = {"status": decision.status}
    if decision.reason_code is not None:
        info = {"reasonCode": decision.reason_code}
        if decision.reason:
            info["additionalInfo"] = decision.reason[:512]
        answer["statusInfo"] = info
    return answer


_Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]
WRAPPED_HANDLERS: dict[str, _Handler] = {
    "Authorize": authorize,
    "GetCertificateStatus": certificate_status,
    "Get15118EVCertificate": ev_certificate,
    "SignCertificate": sign_certificate,
}
"""The wrapped station-to-CSMS messages of the application note, each handled as in 2.0.1."""


async def data_transfer_16(ctx: CallContext, message_id: str | None, data: Any) -> VendorAnswer:
    """A 1.6 DataTransfer of the PnC vendor: the 2.0.1 request in ``data``, checked against
    the 2.0.1 schema (Rejected when it does not parse or fit), answered with the 2.0.1
    response as JSON text. A messageId that is not a station-to-CSMS message of the
    application note is UnknownMessageId."""
    handler = WRAPPED_HANDLERS.get(message_id or "")
    if handler is None:
        return VendorAnswer(status="UnknownMessageId")
    assert message_id is not None
    try:
        request = json.loads(data) if isinstance(data, str) else None
        ocpp_schemas.validate(V201, message_id, Direction.REQUEST, request)
    except (ValueError, SchemaViolation) as exc:
        ctx.log.info("pnc data transfer rejected", message_id=message_id, error=str(exc)[:200])
        return VendorAnswer(status="Rejected")
    assert isinstance(request, dict)
    response = await handler(ctx, request)
    ocpp_schemas.validate(V201, message_id, Direction.RESPONSE, response)
    return VendorAnswer(status="Accepted", data=json.dumps(response, separators=(",", ":")))
