"""A throwaway ISO 15118 contract PKI (V2G root -> sub-CA -> contract certificates) and a
real HTTP server that answers OCSP requests (``cryptography.x509.ocsp``) and plays a
contract-certificate provider."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

__all__ = ["ContractPki", "Responder", "issue", "pem", "running_responder"]

_DAY = dt.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclasses.dataclass
class _Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(
    subject: str,
    issuer: _Ca | None,
    *,
    ca: bool,
    ocsp_url: str | None = None,
    days: tuple[int, int] = (-1, 365),
) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + days[0] * _DAY)
        .not_valid_after(now + days[1] * _DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return _Ca(builder.sign(signer, hashes.SHA256()), key)


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class ContractPki:
    """Root, sub-CA and contract certificates; ``status`` says what OCSP answers per serial
    (``good``/``revoked``; serials not in it are unknown)."""

    def __init__(self, directory: Path, ocsp_url: str) -> None:
        self.ocsp_url = ocsp_url
        self.root = issue("V2G Root", None, ca=True, days=(-2, 3650))
        self.sub = issue("MO Sub-CA", self.root, ca=True, days=(-2, 1000))
        self.root_file = directory / "v2g_root.pem"
        self.root_file.write_text(pem(self.root.cert))
        self.status: dict[int, str] = {}
        self.foreign_root = issue("Other Root", None, ca=True)

    def contract(self, name: str, status: str = "good", *, expired: bool = False) -> str:
        """A PEM chain (contract, sub-CA) whose contract OCSP answers ``status``."""
        leaf = issue(
            name,
            self.sub,
            ca=False,
            ocsp_url=self.ocsp_url,
            days=(-30, -1) if expired else (-1, 365),
        )
        self.status[leaf.cert.serial_number] = status
        return pem(leaf.cert, self.sub.cert)

    def foreign_contract(self, name: str) -> str:
        """A chain to a root the CSMS does not trust."""
        sub = issue("Foreign Sub-CA", self.foreign_root, ca=True)
        leaf = issue(name, sub, ca=False, ocsp_url=self.ocsp_url)
        return pem(leaf.cert, sub.cert)

    def answer(self, request_der: bytes) -> bytes:
        """The OCSP response for ``request_der``, signed by the sub-CA (it issued the
        contracts), the sub-CA's certificate included."""
        request = ocsp.load_der_ocsp_request(request_der)
        verdict = self.status.get(request.serial_number)
        if verdict is None:
            return ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED
            ).public_bytes(serialization.Encoding.DER)
        now = dt.datetime.now(dt.UTC)
        # A certificate object with the requested serial: the responder answers by identity.
        leaf = self._placeholder(request.serial_number)
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf,
            issuer=self.sub.cert,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.REVOKED
            if verdict == "revoked"
            else ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(minutes=1),
            next_update=now + dt.timedelta(hours=1),
            revocation_time=now - _DAY if verdict == "revoked" else None,
            revocation_reason=x509.ReasonFlags.key_compromise if verdict == "revoked" else None,
        )
        response = (
            builder.responder_id(ocsp.OCSPResponderEncoding.NAME, self.sub.cert)
            .certificates([self.sub.cert])
            .sign(self.sub.key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    def _placeholder(self, serial: int) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_name("x"))
            .issuer_name(self.sub.cert.subject)
            .public_key(self.sub.key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _DAY)
            .not_valid_after(now + _DAY)
            .sign(self.sub.key, hashes.SHA256())
        )


@dataclasses.dataclass
class Responder:
    """What the server saw: OCSP requests answered, provider requests with their headers."""

    url: str
    pki: ContractPki | None = None
    ocsp_hits: int = 0
    provider_requests: list[tuple[dict[str, Any], str | None]] = dataclasses.field(
        default_factory=list
    )
    provider_status: int = 200


@contextmanager
def running_responder() -> Iterator[Responder]:
    """An HTTP server on a free port: POST /ocsp answers OCSP, POST /provider answers
    ``{"exiResponse": "RVhJLXJlc3BvbnNl"}`` (or ``provider_status``)."""
    state: dict[str, Responder] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            responder = state["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/ocsp" and responder.pki is not None:
                responder.ocsp_hits += 1
                self._send(200, responder.pki.answer(body), "application/ocsp-response")
            elif self.path == "/provider":
                responder.provider_requests.append(
                    (json.loads(body), self.headers.get("Authorization"))
                )
                answer = json.dumps({"exiResponse": "RVhJLXJlc3BvbnNl"}).encode()
                self._send(responder.provider_status, answer, "application/json")
            else:
                self._send(404, b"", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Responder(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
