"""OCPP 1.6 (security extension) CertificateSigned answer: the station took (or refused)
the certificate the CSMS signed for it."""

from __future__ import annotations

from manager.common import certificates
from manager.context import ResultContext

ACTION = "CertificateSigned"


async def handle_result(ctx: ResultContext) -> None:
    """Record the certificate sent (serial, type, not-after, fingerprint) and the answer."""
    await certificates.certificate_signed_result(ctx)
