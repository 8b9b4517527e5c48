"""Process composition: which pieces run in this process, on which bus and stores.

- :func:`run_all_in_one`: gateway + manager in one process (``csms run``). With no broker
  and no Redis configured this is the embedded default: in-process bus, in-memory stores.
- :func:`run_gateway`: a gateway instance (``csms gateway``), MQTT required.
- :func:`run_manager`: a manager instance (``csms manager``), MQTT required.

Each MQTT-speaking role holds exactly one MQTT connection, so an all-in-one process on a real
broker opens two (one per role), exactly as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import structlog

from csms.bus import Bus
from csms.bus.memory import MemoryBroker
from csms.bus.mqtt import MqttBus
from csms.config import Settings
from gateway.server import Gateway
from manager.worker import Manager
from services.factory import open_services

log = structlog.get_logger("csms")


def _mqtt_bus(settings: Settings, role: str) -> MqttBus:
    assert settings.broker_url is not None
    return MqttBus(
        settings.broker_url,
        client_id_prefix=f"csms-{role}",
        publish_timeout=settings.publish_timeout,
        tls_ca_file=settings.broker_ca_file,
        tls_cert_file=settings.broker_cert_file,
        tls_key_file=settings.broker_key_file,
    )


async def _wait_for_broker(bus: Bus, settings: Settings) -> None:
    if isinstance(bus, MqttBus) and not await bus.wait_connected(10):
        log.warning(
            "broker not reachable yet; still retrying in the background",
            broker=settings.broker_url and _redact(settings.broker_url),
        )


def _redact(url: str) -> str:
    """URL without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _station_url(gateway: Gateway) -> str:
    """The URL stations connect to, with a readable placeholder for the id."""
    return gateway.url_for("X").removesuffix("X") + "{station_id}"


def describe_mode(settings: Settings) -> str:
    bus = f"MQTT broker {_redact(settings.broker_url)}" if settings.broker_url else "in-process bus"
    stores = f"Redis {_redact(settings.redis_url)}" if settings.redis_url else "in-memory stores"
    return f"{bus}, {stores}"


@contextlib.asynccontextmanager
async def all_in_one(settings: Settings) -> AsyncIterator[Gateway]:
    """Gateway + manager in this process; yields the running gateway."""
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        if settings.broker_url:
            gateway_bus: Bus = _mqtt_bus(settings, "gateway")
            manager_bus: Bus = _mqtt_bus(settings, "manager")
        else:
            broker = MemoryBroker()
            gateway_bus, manager_bus = broker.client(), broker.client()
        await stack.enter_async_context(manager_bus)
        await stack.enter_async_context(gateway_bus)
        await _wait_for_broker(manager_bus, settings)
        await stack.enter_async_context(Manager(settings, manager_bus, services))
        gateway = await stack.enter_async_context(Gateway(settings, gateway_bus))
        yield gateway


async def run_all_in_one(settings: Settings) -> None:
    """``csms run``: serve until SIGINT/SIGTERM."""
    async with _stop_on_signals() as stop, all_in_one(settings) as gateway:
        log.info(
            "CSMS ready",
            mode=describe_mode(settings),
            stations_connect_to=_station_url(gateway),
        )
        if not settings.broker_url and not settings.redis_url:
            log.warning(
                "embedded default: state lives in this process and is lost when it stops; "
                "set broker_url and redis_url for production"
            )
        if settings.unknown_stations == "accept" or settings.unknown_tokens == "accept":
            log.warning(
                "first-try policies active",
                unknown_stations=settings.unknown_stations,
                unknown_tokens=settings.unknown_tokens,
            )
        await stop.wait()
        log.info("stopping")


async def run_gateway(settings: Settings) -> None:
    """``csms gateway``: one gateway instance on the configured broker."""
    if not settings.broker_url:
        raise SystemExit("csms gateway needs a broker: set --broker-url or CSMS_BROKER_URL")
    async with _stop_on_signals() as stop, _mqtt_bus(settings, "gateway") as bus:
        await _wait_for_broker(bus, settings)
        async with Gateway(settings, bus) as gateway:
            log.info("gateway ready", stations_connect_to=_station_url(gateway))
            await stop.wait()


async def run_manager(settings: Settings) -> None:
    """``csms manager``: one manager instance of the shared-subscription group."""
    if not settings.broker_url:
        raise SystemExit("csms manager needs a broker: set --broker-url or CSMS_BROKER_URL")
    async with (
        _stop_on_signals() as stop,
        open_services(settings) as services,
        _mqtt_bus(settings, "manager") as bus,
    ):
        await _wait_for_broker(bus, settings)
        async with Manager(settings, bus, services):
            log.info("manager ready", group=settings.shared_group, mode=describe_mode(settings))
            await stop.wait()
