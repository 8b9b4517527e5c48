"""A stand-alone operator plug-in, deliberately outside every package of the project.

Tests put this directory on ``sys.path`` and name ``sample_tariff:<factory>`` in the settings,
exactly as an operator would with their own module.
"""

from __future__ import annotations

from typing import Any

from services.models import Authorization, AuthorizationStatus, Cost, TokenRecord, Transaction


class FlatTariff:
    """Every transaction costs the same."""

    def __init__(self, amount: str, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    async def price(self, transaction: Transaction) -> Cost:
        return Cost(total=self.amount, currency=self.currency, fee=self.amount)


def create(settings: Any) -> FlatTariff:
    return FlatTariff("9.99", settings.tariff.currency)


async def create_async(settings: Any) -> FlatTariff:
    return FlatTariff("1.00", settings.tariff.currency)


class Factories:
    @staticmethod
    def nested(settings: Any) -> FlatTariff:
        return FlatTariff("2.00", "EUR")


class NoPrice:
    async def quote(self, transaction: Transaction) -> Cost:
        return Cost(total="0", currency="EUR")


def broken(settings: Any) -> NoPrice:
    return NoPrice()


NOT_CALLABLE = 42


class AllowList:
    """A token store that accepts tokens starting with a prefix (an operator's own logic)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def authorize(
        self, id_token: str, token_type: str | None = None, station_id: str | None = None
    ) -> Authorization:
        if id_token.startswith(self.prefix):
            return Authorization(status=AuthorizationStatus.ACCEPTED)
        return Authorization(status=AuthorizationStatus.INVALID)

    async def put(self, record: TokenRecord) -> None:
        raise NotImplementedError("read-only")


def allow_list(settings: Any) -> AllowList:
    return AllowList("OK-")
