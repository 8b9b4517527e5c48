"""Integration points (station registry, tokens, transactions, tariff, idempotency, API keys).

:class:`Services` bundles one implementation of each; :func:`services.factory.open_services`
makes it from settings (in-memory or Redis, plus operator plug-ins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.action_rules import ActionRuleStore, MemoryActionRuleStore
from services.api_keys import ApiKeyStore, MemoryApiKeyStore
from services.call_records import CallRecordStore, MemoryCallRecordStore
from services.certificates import CertificateSigner
from services.data_transfer import DataTransferRegistry
from services.events import EventLog, MemoryEventLog
from services.interfaces import (
    IdempotencyStore,
    StationRegistry,
    StoreUnavailable,
    TariffService,
    TokenStore,
    TransactionStore,
)
from services.message_log import MemoryMessageLog, MessageLog
from services.pnc import PlugAndCharge
from services.station_reports import MemoryStationReportStore, StationReportStore
from services.station_state import MemoryStationStateStore, StationStateStore
from services.webhooks import MemoryWebhookStore, WebhookStore


@dataclass(slots=True)
class Services:
    """The services one manager (or the embedded process) works with."""

    stations: StationRegistry
    tokens: TokenStore
    transactions: TransactionStore
    tariff: TariffService
    idempotency: IdempotencyStore
    api_keys: ApiKeyStore = field(default_factory=MemoryApiKeyStore)
    """Keys of the operator API (only the API reads them)."""
    station_state: StationStateStore = field(default_factory=MemoryStationStateStore)
    """What stations reported about themselves: device model, configuration, local list
    version, certificates (the managers write it, the API reads it)."""
    call_records: CallRecordStore = field(default_factory=MemoryCallRecordStore)
    """CSMS calls and their outcomes (the API begins them, the managers finish them)."""
    message_log: MessageLog = field(default_factory=MemoryMessageLog)
    """Every station's OCPP frames, both directions (the managers record, the API reads)."""
    action_rules: ActionRuleStore = field(default_factory=MemoryActionRuleStore)
    """Which actions each station may send and be sent (the API writes them, the managers
    and the operations layer enforce them; the factory hands out a per-process cache)."""
    webhooks: WebhookStore = field(default_factory=MemoryWebhookStore)
    """Webhook subscriptions and the outbox of their deliveries (the API writes
    subscriptions, the dispatcher and the delivery workers the outbox)."""
    events: EventLog = field(default_factory=MemoryEventLog)
    """State-change events in order (the managers append them, the live stream and the
    webhook dispatcher read them)."""
    station_reports: StationReportStore = field(default_factory=MemoryStationReportStore)
    """What stations reported on their own initiative: smart-charging facts, firmware and
    log status histories, monitors, display messages, meter values (the managers write it,
    the API reads it)."""
    pnc: PlugAndCharge = field(default_factory=PlugAndCharge)
    """ISO 15118 Plug & Charge: the contract verifier (chain, OCSP) and the contract-certificate
    provider."""
    data_transfer: DataTransferRegistry = field(default_factory=DataTransferRegistry)
    """The operator's DataTransfer vendor handlers, by vendorId."""
    certificate_signer: CertificateSigner | None = None
    """Signs stations' CSRs (SignCertificate); None: no CA configured, CSRs are refused."""


__all__ = [
    "ActionRuleStore",
    "ApiKeyStore",
    "CallRecordStore",
    "CertificateSigner",
    "EventLog",
    "IdempotencyStore",
    "MessageLog",
    "Services",
    "StationRegistry",
    "StationReportStore",
    "StationStateStore",
    "StoreUnavailable",
    "TariffService",
    "TokenStore",
    "TransactionStore",
    "WebhookStore",
]
