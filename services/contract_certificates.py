"""Where EV contract certificates come from (ISO 15118 CertificateInstallation / Update,
OCPP 2.0.1 M01 / M02 Get15118EVCertificate).

The CSMS does not decode the EXI stream: it hands it to a :class:`ContractCertificateProvider`
(a mobility operator's or a Plug & Charge ecosystem's service) and relays its EXI answer.
The built-in :class:`HttpContractCertificateProvider` POSTs JSON to
``contract_certificate_provider_url``::

    {"exiRequest": "<base64 EXI>", "iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef",
     "action": "Install"}

and expects ``200`` with ``{"exiResponse": "<base64 EXI>"}``, optionally with an OAuth2
bearer token (client credentials, ``contract_certificate_provider_oauth2``). Operators plug
their own in with ``contract_certificate_provider = "module:factory"``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import httpx
import msgspec
import structlog

from services.outbound_auth import ClientCredentials, OAuth2TokenProvider, TokenFetchFailed

__all__ = [
    "ContractCertificateProvider",
    "HttpContractCertificateProvider",
    "ProviderFailed",
    "parse_credentials",
]

_log = structlog.get_logger("services.contract_certificates")

MAX_EXI = 5600
"""Longest exiResponse a Get15118EVCertificateResponse may carry."""


class ProviderFailed(Exception):
    """The provider could not give an answer; the message says why (it reaches the station
    as statusInfo's additionalInfo, so it names no secret)."""


@runtime_checkable
class ContractCertificateProvider(Protocol):
    """Turns an EV's CertificateInstallationReq / CertificateUpdateReq into the answer."""

    async def get(self, exi_request: str, iso15118_schema_version: str, action: str) -> str:
        """The base64 EXI response for the EV; raises :class:`ProviderFailed`."""
        ...


def parse_credentials(raw: dict[str, str] | None) -> ClientCredentials | None:
    """``contract_certificate_provider_oauth2`` as client credentials (token_url, client_id,
    client_secret, optional scope / audience / auth_method); ValueError naming what is wrong."""
    if not raw:
        return None
    try:
        return msgspec.convert(raw, ClientCredentials)
    except msgspec.ValidationError as exc:
        raise ValueError(f"contract_certificate_provider_oauth2: {exc}") from exc


class HttpContractCertificateProvider:
    """POSTs the request to ``url`` (JSON as in the module docstring), ``timeout`` seconds
    all in all; with ``credentials``, as an OAuth2 client (a 401 drops the token and tries
    once more with a new one)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        credentials: ClientCredentials | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.credentials = credentials
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),  # rare calls, nothing to close
        )
        self._tokens = OAuth2TokenProvider(self._client) if credentials else None

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def get(self, exi_request: str, iso15118_schema_version: str, action: str) -> str:
        body = {
            "exiRequest": exi_request,
            "iso15118SchemaVersion": iso15118_schema_version,
            "action": action,
        }
        response = await self._post(body)
        if response.status_code == 401 and self._tokens is not None:
            response = await self._post(body, retry=True)
        if response.status_code != 200:
            _log.warning(
                "contract certificate provider refused", url=self.url, status=response.status_code
            )
            raise ProviderFailed(f"provider answered HTTP {response.status_code}")
        try:
            answer: Any = response.json()
            exi = answer["exiResponse"]
        except (ValueError, KeyError, TypeError):
            raise ProviderFailed("provider answered without an exiResponse") from None
        if not isinstance(exi, str) or not exi or len(exi) > MAX_EXI:
            raise ProviderFailed("provider answered an unusable exiResponse")
        return exi

    async def _post(self, body: dict[str, str], *, retry: bool = False) -> httpx.Response:
        headers = {"Accept": "application/json"}
        token = None
        if self._tokens is not None and self.credentials is not None:
            try:
                token = await self._tokens.token(self.credentials)
            except TokenFetchFailed as exc:
                _log.warning("contract certificate provider token failed", error=str(exc))
                raise ProviderFailed("provider access token unavailable") from exc
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self._client.post(
                self.url, json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            _log.warning("contract certificate provider unreachable", url=self.url, error=str(exc))
            raise ProviderFailed("provider unreachable") from exc
        if (
            response.status_code == 401
            and not retry
            and token is not None
            and self._tokens is not None
            and self.credentials is not None
        ):
            self._tokens.invalidate(self.credentials, token)
        return response
