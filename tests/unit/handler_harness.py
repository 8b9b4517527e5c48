"""What the handler tests of both OCPP versions share: handlers called the way the router
calls them, on in-memory services, with every request and answer checked against its schema."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog

from csms.bus.memory import MemoryBroker
from csms.config import Settings
from csms.topics import Topics
from manager.context import CallContext, CallHandler
from ocpp_schemas import Direction, validate
from operations.call_maker import CallMaker
from services import Services
from services.memory import (
    MemoryIdempotencyStore,
    MemoryStationRegistry,
    MemoryTokenStore,
    MemoryTransactionStore,
)
from services.models import (
    AuthorizationStatus,
    RegistrationStatus,
    StationRecord,
    TokenRecord,
    Transaction,
)
from services.tariff import ConfiguredTariff

NOW = dt.datetime(2025, 1, 15, 12, 0, tzinfo=dt.UTC)
NOW_ISO = "2025-01-15T12:00:00.000Z"


@dataclass
class Harness:
    """Calls one version's handlers the way the router does; subclasses name the version,
    its handler table and the default station id."""

    version: ClassVar[str]
    handlers: ClassVar[Mapping[str, CallHandler]]
    station: ClassVar[str]

    settings: Settings = field(default_factory=Settings)
    services: Services = field(init=False)
    calls: CallMaker = field(init=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.services = Services(
            stations=MemoryStationRegistry(),
            tokens=MemoryTokenStore(clock=lambda: NOW),
            transactions=MemoryTransactionStore(),
            tariff=ConfiguredTariff(self.settings.tariff),
            idempotency=MemoryIdempotencyStore(),
        )
        self.calls = CallMaker(MemoryBroker().client(), Topics())

    def ctx(self, action: str, station: str | None = None) -> CallContext:
        station = station or self.station
        return CallContext(
            station_id=station,
            version=self.version,
            message_id=f"m{next(self._ids)}",
            action=action,
            services=self.services,
            settings=self.settings,
            calls=self.calls,
            log=structlog.get_logger().bind(station=station, action=action),
            received_at=NOW,
        )

    async def call(
        self, action: str, payload: dict[str, Any], station: str | None = None
    ) -> dict[str, Any]:
        validate(self.version, action, Direction.REQUEST, payload)
        response = await self.handlers[action](self.ctx(action, station), payload)
        validate(self.version, action, Direction.RESPONSE, response)
        return response

    async def provision(
        self,
        station: str | None = None,
        registration: RegistrationStatus = RegistrationStatus.ACCEPTED,
    ) -> None:
        await self.services.stations.put(
            StationRecord(station_id=station or self.station, registration=registration, known=True)
        )

    async def tx(self, transaction_id: str, station: str | None = None) -> Transaction:
        found = await self.services.transactions.get(station or self.station, transaction_id)
        assert found is not None
        return found

    async def seed_tokens(self) -> None:
        """The tokens both versions' tests decide on: two valid ones (one in a group), a
        blocked one and an expired one."""
        tokens = self.services.tokens
        await tokens.put(TokenRecord(id_token="TAG1", group_id="FLEET"))
        await tokens.put(TokenRecord(id_token="TAG2"))
        await tokens.put(TokenRecord(id_token="BLOCKED", status=AuthorizationStatus.BLOCKED))
        await tokens.put(
            TokenRecord(id_token="OLD", expiry="2024-12-31T23:59:59Z", group_id="FLEET")
        )
