"""Settings: one validated model fed by a TOML file, ``CSMS_*`` environment variables and flags.

Precedence, highest first: command-line flags, environment variables, the config file
(``--config`` or ``CSMS_CONFIG``), defaults. Nested values use ``__`` in environment
variables, e.g. ``CSMS_TARIFF__ENERGY_PRICE_PER_KWH=0.39``.

Leaving ``broker_url`` unset selects the in-process bus and leaving ``redis_url`` unset
selects in-memory stores: the embedded default of ``csms run``.
"""

from __future__ import annotations

import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from csms.versions import OcppVersion


class TariffSettings(BaseModel):
    """The built-in tariff: price per kWh, per hour plugged in, per session; one currency."""

    model_config = {"extra": "forbid"}

    energy_price_per_kwh: Decimal = Field(default=Decimal("0.30"), ge=0)
    time_price_per_hour: Decimal = Field(default=Decimal("0.00"), ge=0)
    session_fee: Decimal = Field(default=Decimal("0.00"), ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


TokenType = Literal[
    "Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "NoAuthorization"
]
"""OCPP 2.0.1 IdTokenEnumType."""


class TokenSettings(BaseModel):
    """A token preloaded into the token store (handy for the embedded default and tests)."""

    model_config = {"extra": "forbid"}

    id_token: str = Field(min_length=1, max_length=36)
    status: Literal["Accepted", "Blocked", "Expired", "Invalid"] = "Accepted"
    token_type: TokenType | None = Field(
        default=None, description="2.0.1 idToken type the token must be presented as; unset = any"
    )
    expiry: str | None = Field(
        default=None, description="ISO 8601 date-time after which the token is Expired"
    )
    group_id: str | None = None

    @field_validator("expiry")
    @classmethod
    def _check_expiry(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    "must be an ISO 8601 date-time, e.g. 2030-12-31T23:59:59Z"
                ) from None
        return value


class StationSettings(BaseModel):
    """A station preloaded into the registry: registration and, optionally, credentials.

    Credential fields left unset keep what the registry holds. ``password_hash`` is a hash
    made by ``csms password hash``, never a clear password; it is the station's initial
    password: once the registry holds a hash (set by ``csms station add`` or a rotation the
    station accepted) that one wins, so restarting a process never undoes a rotation.
    """

    # A clear password pasted as password_hash must not be echoed back in the error.
    model_config = {"extra": "forbid", "hide_input_in_errors": True}

    station_id: str = Field(min_length=1, max_length=48)
    registration: Literal["Accepted", "Pending", "Rejected"] = "Accepted"
    security_profile: int | None = Field(default=None, ge=0, le=3)
    password_hash: str | None = None
    certificate_identity: str | None = Field(default=None, min_length=1)
    allowed_versions: list[OcppVersion] | None = None

    @field_validator("password_hash")
    @classmethod
    def _check_password_hash(cls, value: str | None) -> str | None:
        from csms.credentials import is_password_hash

        if value is not None and not is_password_hash(value):
            raise ValueError(
                "must be a password hash made by 'csms password hash' (scrypt$...), "
                "never a clear password"
            )
        return value


# --- Gateway listeners and security (models; the settings are in Settings below) -----------

SecurityProfile = Literal[1, 2, 3]


class ListenerTlsSettings(BaseModel):
    """TLS terminated by the gateway itself: a ``wss://`` listener (profiles 2 and 3)."""

    model_config = {"extra": "forbid"}

    cert_file: str = Field(min_length=1, description="server certificate chain, PEM")
    key_file: str = Field(min_length=1, description="its private key, PEM")
    client_ca_files: list[str] = Field(
        default=[], description="CAs that issue station client certificates (profile 3)"
    )
    ecdsa_cert_file: str | None = Field(
        default=None,
        description="a second server certificate chain (PEM), of the other key type: an ECDSA "
        "one next to an RSA cert_file, so TLS_ECDHE_ECDSA and TLS_RSA suites both negotiate",
    )
    ecdsa_key_file: str | None = Field(default=None, description="its private key, PEM")

    @model_validator(mode="after")
    def _check_ecdsa_pair(self) -> ListenerTlsSettings:
        if bool(self.ecdsa_cert_file) != bool(self.ecdsa_key_file):
            raise ValueError("ecdsa_cert_file and ecdsa_key_file go together")
        return self


class TlsOffloadSettings(BaseModel):
    """A TLS-terminating proxy or load balancer in front of a listener.

    Only connections from ``trusted_proxies`` may say "the station used TLS" (``tls_header``)
    and hand over the station's client certificate (``client_cert_header``); the same headers
    from anyone else are ignored and logged, and the connection counts as plain ``ws://``.
    """

    model_config = {"extra": "forbid"}

    trusted_proxies: list[str] = Field(
        min_length=1, description="source addresses or CIDRs of the proxies, e.g. 10.0.0.0/8"
    )
    tls_header: str = Field(
        default="X-Forwarded-Proto", description="header the proxy sets to say the outside was TLS"
    )
    tls_header_value: str = Field(default="https", description="its value for TLS")
    client_cert_header: str = Field(
        default="X-Forwarded-Client-Cert",
        description="header carrying the verified client certificate: URL-encoded PEM "
        "(nginx $ssl_client_escaped_cert), Envoy XFCC Cert=..., or base64 DER",
    )
    client_ca_files: list[str] = Field(
        default=[],
        description="if set, forwarded certificates must also be issued by one of these CAs "
        "(checked here as well as by the proxy)",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return value

    @field_validator("tls_header", "client_cert_header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch in "-_" for ch in value):
            raise ValueError("must be an HTTP header name")
        return value


class ListenerSettings(BaseModel):
    """One listening socket for stations and the security profiles it serves.

    Plain listeners serve profile 1; ``tls`` listeners profiles 2 and/or 3 (3 needs
    ``tls.client_ca_files``); ``offload`` listeners (plain TCP from a TLS-terminating proxy)
    any of 1-3, decided per connection from the trusted proxy's headers. Left unset,
    ``profiles`` is [1] for plain, [2] for TLS ([2, 3] with client CAs), [2, 3] for offload.
    """

    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=0, le=65535)
    profiles: list[SecurityProfile] | None = None
    tls: ListenerTlsSettings | None = None
    offload: TlsOffloadSettings | None = None

    @model_validator(mode="after")
    def _check_profiles(self) -> ListenerSettings:
        if self.tls is not None and self.offload is not None:
            raise ValueError("a listener terminates TLS itself (tls) or behind a proxy (offload)")
        profiles = self.profiles
        if profiles is None:
            if self.tls is not None:
                profiles = [2, 3] if self.tls.client_ca_files else [2]
            else:
                profiles = [2, 3] if self.offload is not None else [1]
        profiles = sorted(set(profiles))
        if not profiles:
            raise ValueError("a listener serves at least one security profile")
        if self.tls is not None:
            if 1 in profiles:
                raise ValueError("profile 1 is plain ws://: serve it on a listener without tls")
            if 3 in profiles and not self.tls.client_ca_files:
                raise ValueError(
                    "profile 3 needs tls.client_ca_files to verify station certificates"
                )
        elif self.offload is None and profiles != [1]:
            raise ValueError("profiles 2 and 3 need tls (or offload behind a TLS proxy)")
        self.profiles = profiles
        return self


UNSETTABLE_LIMITS = (
    "message_rate",
    "flood_close_after",
    "max_connections_per_address",
    "max_connections",
    "ping_interval",
    "ping_timeout",
)
"""Limits that are off when unset. ``CSMS_MESSAGE_RATE=none`` (or ``off``, or empty) and
``message_rate = "none"`` in TOML unset them."""

UNSET_WORDS = frozenset({"", "none", "off"})

OIDC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""JWT signature algorithms ``api_oidc_algorithms`` may name: public-key ones only, so a
public key can never serve as an HMAC secret, and never ``none``."""


def oidc_url_problem(url: str) -> str | None:
    """Why ``url`` may not be fetched for OIDC keys (None when it may): key sets are fetched
    over https, plain http only from this host (a local identity provider, tests)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return "must be https:// (plain http only for localhost)"
    return None


class Settings(BaseSettings):
    """Every tunable of gateway, manager and services."""

    model_config = SettingsConfigDict(
        env_prefix="CSMS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    # Transport and storage
    broker_url: str | None = Field(
        default=None,
        description="mqtt://user:pass@host:1883 or mqtts://...; unset = in-process bus",
    )
    broker_ca_file: str | None = None
    broker_cert_file: str | None = None
    broker_key_file: str | None = None
    bus_client: Literal["paho", "mqtt5"] = Field(
        default="mqtt5",
        description="MQTT client of gateway, manager and api: mqtt5 = csms.bus.mqtt5_bus (an "
        "asyncio protocol over the mqtt5 codec, ~4x less CPU per message), paho = csms.bus.mqtt "
        "(aiomqtt over paho-mqtt)",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://[user:pass@]host:6379/0 or rediss://...; unset = in-memory stores",
    )
    redis_ca_file: str | None = Field(default=None, description="CA bundle to verify rediss://")
    redis_cert_file: str | None = Field(default=None, description="client certificate (rediss://)")
    redis_key_file: str | None = Field(default=None, description="its private key (rediss://)")
    redis_key_prefix: str = Field(
        default="csms:",
        pattern=r"^[A-Za-z0-9_\-.:]{1,64}$",
        description="prefix of every Redis key; lets several CSMS deployments share one Redis",
    )
    topic_prefix: str = Field(default="cs", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    shared_group: str = Field(default="manager", pattern=r"^[A-Za-z0-9_\-]+$")

    # Gateway
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=9000, ge=0, le=65535)
    path_prefix: str = Field(default="/ocpp", description="stations connect to {prefix}/{id}")
    gateway_id: str | None = Field(default=None, description="instance id; default host-pid")
    max_frame_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024)
    call_timeout: float = Field(
        default=30.0, gt=0, description="station must answer a CSMS call within"
    )
    call_queue_size: int = Field(default=16, ge=1, le=10_000)
    running_cost_interval: float = Field(
        default=60.0,
        ge=0,
        description="seconds of meter time between CostUpdated calls of a running 2.0.1 "
        "transaction (0: one per reading that changes the energy)",
    )
    answer_timeout: float = Field(
        default=20.0, gt=0, description="CSMS must answer a station call within, else InternalError"
    )
    publish_timeout: float = Field(default=3.0, gt=0)
    gateway_heartbeat_interval: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="seconds between a gateway's presence heartbeats; a gateway silent for "
        "three intervals (or whose broker connection dies: MQTT last will) has its stations "
        "marked offline",
    )
    ping_interval: float | None = Field(default=60.0, gt=0)
    ping_timeout: float | None = Field(default=30.0, gt=0)

    # Probes and metrics of csms gateway / csms manager (see docs/operations.md)
    metrics_host: str = Field(
        default="0.0.0.0",
        description="address of the probe server of csms gateway and csms manager "
        "(/health, /ready, /metrics)",
    )
    gateway_metrics_port: int | None = Field(
        default=9101,
        ge=0,
        le=65535,
        description="probe server port of csms gateway; 'none' = off (csms run never starts "
        "one: its operator API has /v1/health, /v1/ready, /v1/metrics)",
    )
    manager_metrics_port: int | None = Field(
        default=9102,
        ge=0,
        le=65535,
        description="probe server port of csms manager; several managers on one host each "
        "need their own (CSMS_MANAGER_METRICS_PORT); 'none' = off",
    )

    # Gateway limits (against hostile or broken clients; see docs/limits.md)
    handshake_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds a client has for the TLS handshake, then again for the WebSocket "
        "upgrade; slower clients are disconnected",
    )
    message_rate: float | None = Field(
        default=20.0,
        gt=0,
        description="messages per second a station may send on average; over it, its Calls "
        "get a GenericError CallError; 'none' = unlimited",
    )
    message_burst: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="messages a station may send at once above message_rate",
    )
    flood_close_after: float | None = Field(
        default=10.0,
        gt=0,
        description="seconds a station may keep exceeding message_rate before it is "
        "disconnected (close code 1008); 'none' = never",
    )
    max_connections_per_address: int | None = Field(
        default=100,
        ge=1,
        description="open connections per source IP (IPv6: per /64); more are refused with "
        "HTTP 429; 'none' = unlimited",
    )
    max_connections: int | None = Field(
        default=15_000,
        ge=1,
        le=1_000_000,
        description="TCP connections one gateway process holds at once (stay below the "
        "open-file limit); more are dropped at accept; 'none' = unlimited",
    )
    max_station_calls: int = Field(
        default=16,
        ge=1,
        le=1_000,
        description="unanswered Calls one station may have at once (OCPP-J allows one; some "
        "stations pipeline); more get an RpcFrameworkError (1.6: FormationViolation) CallError",
    )
    password_check_threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="threads verifying Basic-auth passwords (scrypt, tens of ms of CPU each)",
    )
    max_waiting_password_checks: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="password checks queued or running at once; more logins get HTTP 503 with "
        "Retry-After until the queue drains",
    )

    # Gateway listeners and security (see docs/security.md)
    listeners: list[ListenerSettings] = Field(
        default=[],
        description="where stations connect and the security profiles each listener serves; "
        "empty = one plain profile-1 listener on listen_host:listen_port",
    )
    tls_reload_interval: float = Field(
        default=60.0, gt=0, description="seconds between checks for renewed TLS certificate files"
    )
    unknown_stations: Literal["reject", "pending", "accept"] = Field(
        default="reject",
        description="station ids the registry does not know: reject = refused at the gateway "
        "(HTTP 404); pending = admitted, BootNotification answered Pending until an operator "
        "registers them; accept = admitted and Accepted (labs only: anyone may connect)",
    )
    first_try: bool | None = Field(
        default=None,
        description="admit stations without credentials (unknown ones Accepted); only ever on "
        "when every listener is on loopback; unset = on for `csms run`, off otherwise",
    )

    # Manager
    heartbeat_interval: int = Field(default=300, ge=1, le=86_400)
    pending_retry_interval: int = Field(default=60, ge=1, le=86_400)
    manager_concurrency: int = Field(default=256, ge=1, le=100_000)
    manager_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_\-.]{1,64}$",
        description="stable, unique id of this manager instance (e.g. a StatefulSet pod name); "
        "default host-pid-random. Needed for manager_session_expiry",
    )
    manager_session_expiry: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="seconds the broker keeps a manager's MQTT session after a disconnect, so "
        "messages it had not acknowledged are redelivered when it comes back under the same "
        "manager_id; 0 = clean sessions. Mosquitto also queues new shared-subscription "
        "messages for a disconnected session: keep it short (see docs/operations.md)",
    )
    idempotency_ttl: int = Field(default=3600, ge=1)
    event_retention: int = Field(
        default=100_000,
        ge=1,
        description="state-change events the event log keeps (GET /v1/events, webhooks); "
        "the oldest go first",
    )
    events_to_mqtt: bool = Field(
        default=False,
        description="also publish each state-change event on {topic_prefix}/state/{kind}/"
        "{station} for MQTT consumers",
    )
    call_record_ttl: int = Field(
        default=86_400,
        ge=1,
        description="seconds a CSMS call and its outcome stay readable (GET /v1/calls/{id})",
    )
    message_log: bool = Field(
        default=True,
        description="keep every station's OCPP frames, both directions, for GET "
        "/v1/stations/{id}/messages and csms station log (see docs/events.md)",
    )
    message_log_flush_interval: float = Field(
        default=0.2, gt=0, le=60, description="seconds between the message log's batched writes"
    )
    message_log_max_per_station: int = Field(
        default=1000, ge=1, le=1_000_000, description="message log entries kept per station"
    )
    message_log_max_age: int = Field(
        default=604_800,
        ge=0,
        description="seconds a message log entry is kept at most (0 = only the count bounds it)",
    )
    action_rules_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="seconds each process (manager, api) keeps a station's action rules: a "
        "change applies within this time everywhere (0 = read the store for every call)",
    )
    unknown_tokens: Literal["reject", "accept"] = Field(
        default="reject", description="accept = first-try mode: every unknown idToken is Accepted"
    )

    # Services
    tariff: TariffSettings = TariffSettings()
    tariff_service: str | None = Field(
        default=None, description="module:factory of a TariffService"
    )
    token_store: str | None = Field(default=None, description="module:factory of a TokenStore")
    certificate_signer: str | None = Field(
        default=None,
        description="module:factory of a CertificateSigner (SignCertificate); unset = the "
        "local CA of ca_certificate_file / ca_key_file (see docs/operations.md, Certificates)",
    )
    ca_certificate_file: str | None = Field(
        default=None, description="PEM CA certificate that signs station certificates"
    )
    ca_key_file: str | None = Field(default=None, description="its unencrypted PEM private key")
    certificate_organization: str | None = Field(
        default=None,
        description="the subject O a station's CSR must carry; unset = any organisation",
    )
    certificate_validity_days: int = Field(
        default=365, ge=1, le=3650, description="days a certificate the local CA signs is valid"
    )
    certificate_renew_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="days before an issued certificate expires that its station is asked to "
        "renew it (TriggerMessage)",
    )
    certificate_check_interval: float = Field(
        default=3600.0, gt=0, description="seconds between the managers' certificate expiry checks"
    )
    certificate_signed_delay: float = Field(
        default=0.5,
        ge=0,
        le=30,
        description="seconds between answering SignCertificate and sending CertificateSigned, "
        "so the answer reaches the station first",
    )
    tokens: list[TokenSettings] = []
    stations: list[StationSettings] = []

    # ISO 15118 Plug & Charge and DataTransfer (see docs/operations.md, Plug & Charge)
    v2g_root_certificates: list[str] = Field(
        default=[], description="PEM files of the V2G / mobility operator roots contracts chain to"
    )
    ocsp_timeout: float = Field(
        default=5.0, gt=0, le=60, description="seconds an OCSP request may take"
    )
    ocsp_cache_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="most seconds an OCSP answer is kept (it is never kept past its nextUpdate)",
    )
    pnc_verifier: str | None = Field(
        default=None, description="module:factory of a ContractVerifier (an operator's PKI)"
    )
    contract_certificate_provider_url: str | None = Field(
        default=None, description="where Get15118EVCertificate requests are POSTed"
    )
    contract_certificate_provider_timeout: float = Field(
        default=10.0, gt=0, le=120, description="seconds a provider request may take"
    )
    contract_certificate_provider_oauth2: dict[str, str] | None = Field(
        default=None,
        description="OAuth2 client credentials for the provider: token_url, client_id, "
        "client_secret, optional scope, audience, auth_method",
    )
    contract_certificate_provider: str | None = Field(
        default=None, description="module:factory of a ContractCertificateProvider"
    )
    data_transfer_handlers: dict[str, str] = Field(
        default={}, description="DataTransfer vendorId -> module:factory of its VendorHandler"
    )

    # Operator HTTP API (see docs/api.md)
    api_host: str = Field(default="127.0.0.1", description="address the operator API listens on")
    api_port: int = Field(default=9080, ge=0, le=65535, description="port of the operator API")
    api_admin_key: SecretStr | None = Field(
        default=None,
        description="a key with admin scope, accepted besides the stored keys, so automation "
        "can start a CSMS with a known key (e.g. from 'openssl rand -hex 32'); unset "
        "= only stored keys (csms run in first-try mode prints a generated one)",
    )
    api_oidc_issuer: str | None = Field(
        default=None,
        description="OIDC issuer whose access tokens (JWTs) the API accepts as bearer "
        "tokens, exactly as the tokens' iss says; unset = API keys only",
    )
    api_oidc_audience: str | None = Field(
        default=None, description="audience the tokens must name in aud (needed with the issuer)"
    )
    api_oidc_jwks_url: str | None = Field(
        default=None,
        description="the issuer's key set; unset = jwks_uri of its openid-configuration",
    )
    api_oidc_scope_claim: str = Field(
        default="scope",
        min_length=1,
        max_length=128,
        description="claim holding the granted values (space-separated string or list, e.g. "
        "scope or roles; a dotted path such as realm_access.roles reaches nested claims)",
    )
    api_oidc_scope_map: dict[str, Literal["read", "operate", "admin"]] = Field(
        default={"csms:read": "read", "csms:operate": "operate", "csms:admin": "admin"},
        min_length=1,
        description="claim value -> API scope; the highest scope a token holds wins",
    )
    api_oidc_algorithms: list[str] = Field(
        default=["RS256", "ES256"],
        min_length=1,
        description="signature algorithms accepted (asymmetric only: RS*, PS*, ES*, EdDSA)",
    )
    api_oidc_leeway: float = Field(
        default=60.0, ge=0, le=600, description="seconds of clock skew allowed on exp/nbf/iat"
    )
    api_oidc_refetch_interval: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="least seconds between two fetches of the key set (a token with an unknown "
        "kid, i.e. a rotated key, triggers one)",
    )

    # Webhooks (see docs/events.md): csms webhooks, or background tasks of csms run
    webhook_workers: int = Field(
        default=8, ge=1, le=1000, description="deliveries a webhooks process sends at once"
    )
    webhook_max_attempts: int = Field(
        default=10, ge=1, le=100, description="tries of a delivery before it is dead-lettered"
    )
    webhook_retry_schedule: list[float] = Field(
        default=[10, 30, 120, 600, 1800, 3600],
        min_length=1,
        description="seconds before the 1st, 2nd, ... retry (the last repeats), each drawn "
        "uniformly from 0 to this (full jitter)",
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds one delivery may take, all in all"
    )
    webhook_lease: float = Field(
        default=60.0,
        gt=0,
        description="seconds a claimed delivery stays with its worker; a worker that dies "
        "leaves it to be retried after this (keep it above webhook_timeout)",
    )
    webhook_poll_interval: float = Field(
        default=1.0, gt=0, le=60, description="seconds between looks for due deliveries"
    )
    webhook_history: int = Field(
        default=100, ge=1, le=10_000, description="finished deliveries kept per subscription"
    )

    # Operations
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator(*UNSETTABLE_LIMITS, mode="before")
    @classmethod
    def _unset_limit(cls, value: Any) -> Any:
        # Environment variables are strings and TOML has no null: these words unset a limit.
        if isinstance(value, str) and value.strip().lower() in UNSET_WORDS:
            return None
        return value

    @field_validator("gateway_metrics_port", "manager_metrics_port", mode="before")
    @classmethod
    def _unset_port(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in UNSET_WORDS:
            return None
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from csms.bus.mqtt import BrokerAddress

        BrokerAddress.parse(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_redis_tls(self) -> Settings:
        files = self.redis_ca_file or self.redis_cert_file or self.redis_key_file
        if files and not (self.redis_url or "").startswith("rediss://"):
            raise ValueError(
                "redis_ca_file / redis_cert_file / redis_key_file need a rediss:// URL"
            )
        if self.redis_key_file and not self.redis_cert_file:
            raise ValueError("redis_key_file needs redis_cert_file")
        return self

    @field_validator("api_admin_key")
    @classmethod
    def _check_api_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if not 16 <= len(text) <= 256:
            raise ValueError("must be 16 to 256 characters long")
        if not text.isascii() or not text.isprintable() or " " in text:
            raise ValueError("must be printable ASCII without spaces (it is sent in a header)")
        return value

    @field_validator("api_oidc_issuer", "api_oidc_jwks_url")
    @classmethod
    def _check_oidc_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        problem = oidc_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("api_oidc_algorithms")
    @classmethod
    def _check_oidc_algorithms(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in OIDC_ALGORITHMS:
                raise ValueError(
                    f"{name!r} is not accepted: use asymmetric algorithms only "
                    f"({', '.join(sorted(OIDC_ALGORITHMS))}); never none or HS*"
                )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.api_oidc_issuer is None:
            if self.api_oidc_jwks_url is not None or self.api_oidc_audience is not None:
                raise ValueError("api_oidc_jwks_url / api_oidc_audience need api_oidc_issuer")
        elif not self.api_oidc_audience:
            raise ValueError("api_oidc_issuer needs api_oidc_audience (the API's audience)")
        return self

    @field_validator("path_prefix")
    @classmethod
    def _check_path_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @field_validator("tariff_service", "token_store", "certificate_signer")
    @classmethod
    def _check_factory(cls, value: str | None) -> str | None:
        if value and ":" not in value:
            raise ValueError("must name a factory as module:attribute")
        return value or None

    @field_validator("pnc_verifier", "contract_certificate_provider")
    @classmethod
    def _check_pnc_factory(cls, value: str | None) -> str | None:
        if value and ":" not in value:
            raise ValueError("must name a factory as module:attribute")
        return value or None

    @field_validator("data_transfer_handlers")
    @classmethod
    def _check_vendor_factories(cls, value: dict[str, str]) -> dict[str, str]:
        for vendor, factory in value.items():
            if not vendor or len(vendor) > 255:
                raise ValueError(f"vendorId {vendor!r} must be 1 to 255 characters")
            if ":" not in factory:
                raise ValueError(f"{vendor}: must name a factory as module:attribute")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CSMS_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build settings from file, environment and ``overrides`` (flags; ``None`` values ignored).

    Raises ``pydantic.ValidationError`` (with field names) or ``FileNotFoundError``.
    """
    flags = {key: value for key, value in overrides.items() if value is not None}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        previous = os.environ.get("CSMS_CONFIG")
        os.environ["CSMS_CONFIG"] = str(path)
        try:
            return Settings(**flags)
        finally:
            if previous is None:
                del os.environ["CSMS_CONFIG"]
            else:
                os.environ["CSMS_CONFIG"] = previous
    return Settings(**flags)
