"""DataTransfer vendor extensions: who answers a station's DataTransfer, by vendorId.

Operators add vendors by configuration, ``data_transfer_handlers = {"com.vendor" =
"module:factory"}``: the factory is called with the settings and returns a
:class:`VendorHandler` (or an awaitable of one), checked at start-up. A handler gets every
DataTransfer of its vendor and answers with a status (``Accepted``, ``Rejected``,
``UnknownMessageId``) and optional data; :class:`MessageTable` is the usual shape, one
function per messageId, UnknownMessageId for the rest. A vendorId nobody handles is
answered ``UnknownVendorId`` (OCPP 1.6 §4.3, 2.0.1 P01). The built-in ISO 15118 Plug & Charge
vendor (``org.openchargealliance.iso15118pnc``) lives with the manager's handlers; a
configured handler for that vendorId replaces it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, cast, runtime_checkable

import msgspec

from csms.config import Settings
from services.loader import instantiate

__all__ = [
    "DataTransferRegistry",
    "MessageTable",
    "VendorAnswer",
    "VendorHandler",
    "VendorMessage",
    "open_registry",
]

AnswerStatus = Literal["Accepted", "Rejected", "UnknownMessageId", "UnknownVendorId"]


class VendorMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One DataTransfer a station sent."""

    station_id: str
    version: str
    """``ocpp1.6`` (data is a string) or ``ocpp2.0.1`` (data is any JSON value)."""
    vendor_id: str
    message_id: str | None = None
    data: Any = None


class VendorAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The DataTransfer answer: status and optional data (1.6: give a string)."""

    status: AnswerStatus
    data: Any = None


@runtime_checkable
class VendorHandler(Protocol):
    """Answers the DataTransfers of one vendorId."""

    async def handle(self, message: VendorMessage) -> VendorAnswer: ...


MessageFunction = Callable[[VendorMessage], Awaitable[VendorAnswer]]


class MessageTable:
    """A :class:`VendorHandler` from one function per messageId; others are
    UnknownMessageId."""

    def __init__(self, messages: Mapping[str, MessageFunction]) -> None:
        self.messages = dict(messages)

    async def handle(self, message: VendorMessage) -> VendorAnswer:
        function = self.messages.get(message.message_id or "")
        if function is None:
            return VendorAnswer(status="UnknownMessageId")
        return await function(message)


class DataTransferRegistry:
    """The configured vendor handlers, by vendorId."""

    def __init__(self, vendors: Mapping[str, VendorHandler] | None = None) -> None:
        self.vendors: dict[str, VendorHandler] = dict(vendors or {})

    def get(self, vendor_id: str) -> VendorHandler | None:
        return self.vendors.get(vendor_id)


async def open_registry(settings: Settings) -> DataTransferRegistry:
    """The handlers ``data_transfer_handlers`` names, each made and checked now."""
    vendors = {
        vendor: cast(VendorHandler, await instantiate(spec, VendorHandler, settings))
        for vendor, spec in settings.data_transfer_handlers.items()
    }
    return DataTransferRegistry(vendors)
