"""Process composition: which pieces run in this process, on which bus and stores.

- :func:`run_all_in_one`: gateway + manager in one process (``csms run``). With no broker
  and no Redis configured this is the embedded default: in-process bus, in-memory stores.
- :func:`run_gateway`: a gateway instance (``csms gateway``), MQTT required.
- :func:`run_manager`: a manager instance (``csms manager``), MQTT required.
- :func:`run_api`: an operator API instance (``csms api``), MQTT required.
- :func:`run_webhooks`: the webhook dispatcher and delivery workers (``csms webhooks``),
  Redis required; ``csms run`` runs them as background tasks.

``csms run`` also mounts the operator API (:func:`embedded`). Each MQTT-speaking role holds
exactly one MQTT connection, so an all-in-one process on a real broker opens three (one per
role), exactly as separate processes would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from prometheus_client import CollectorRegistry

from api import ApiServer, create_app
from csms.bus import Bus
from csms.bus.memory import MemoryBroker
from csms.bus.mqtt import MqttBus
from csms.bus.mqtt5_bus import Mqtt5Bus
from csms.config import Settings
from csms.probes import Check, ProbeServer
from csms.topics import Topics
from gateway import Gateway, default_gateway_id, presence_will
from gateway.listeners import FirstTry, decide_first_try, is_loopback, station_listeners
from manager.worker import Manager
from operations.calls import CallSender
from services import Services
from services.api_keys import Scope, issue_key
from services.factory import open_services
from webhooks import WebhookConfig, WebhookRunner

log = structlog.get_logger("csms")


def mqtt_bus(settings: Settings, role: str) -> MqttBus | Mqtt5Bus:
    """The MQTT connection of one role, on the adapter ``bus_client`` names.

    A gateway's carries its last will (its stations go offline when the broker loses it). A
    manager's acknowledges messages once handled; with a ``manager_id`` it may keep its
    session across restarts (``manager_session_expiry``).
    """
    assert settings.broker_url is not None
    options: dict[str, Any] = {}
    if role == "gateway":
        topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
        options["will"] = presence_will(topics, gateway_id_for(settings))
    elif role == "manager":
        options["manual_ack"] = True
        if settings.manager_id is not None:
            options["client_id"] = f"csms-manager-{settings.manager_id}"
            options["session_expiry"] = settings.manager_session_expiry
    adapter = Mqtt5Bus if settings.bus_client == "mqtt5" else MqttBus
    return adapter(
        settings.broker_url,
        client_id_prefix=f"csms-{role}",
        publish_timeout=settings.publish_timeout,
        tls_ca_file=settings.broker_ca_file,
        tls_cert_file=settings.broker_cert_file,
        tls_key_file=settings.broker_key_file,
        **options,
    )


def gateway_id_for(settings: Settings) -> str:
    """This process's gateway id (configured, or ``host-pid``), the same for its bus and its
    gateway."""
    return settings.gateway_id or default_gateway_id()


async def _wait_for_broker(bus: Bus, settings: Settings) -> None:
    if isinstance(bus, MqttBus | Mqtt5Bus) and not await bus.wait_connected(10):
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
async def _probes(
    settings: Settings,
    role: Literal["gateway", "manager"],
    registry: CollectorRegistry,
    checks: dict[str, Check],
) -> AsyncIterator[ProbeServer | None]:
    """The probe server of ``csms gateway`` / ``csms manager`` (/health, /ready, /metrics)
    on ``metrics_host`` and the role's port; None when that port is off.

    A default port that is taken (a second manager on the host) is logged and the role runs
    without probes; an explicitly configured one stops the process.
    """
    setting = f"{role}_metrics_port"
    port: int | None = getattr(settings, setting)
    if port is None:
        yield None
        return
    server = ProbeServer(settings.metrics_host, port, registry=registry, checks=checks, role=role)
    try:
        await server.__aenter__()
    except OSError as exc:
        problem = (
            f"{role} probes not started: {settings.metrics_host}:{port} is not available "
            f"({exc.strerror or exc}); set {setting} (CSMS_{setting.upper()})"
        )
        if {setting, "metrics_host"} & settings.model_fields_set:
            raise OSError(problem) from exc
        log.error(problem)
        yield None
        return
    try:
        yield server
    finally:
        await server.__aexit__(None, None, None)


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


@contextlib.contextmanager
def _reload_on_sighup(gateway: Gateway) -> Iterator[None]:
    """``kill -HUP`` loads renewed TLS certificates at once (they are also polled)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, gateway.reload_certificates)
    except (NotImplementedError, RuntimeError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _security_notes(
    settings: Settings, gateway: Gateway, first_try: FirstTry
) -> list[tuple[bool, str]]:
    """``(is_warning, sentence)`` about who may connect, for the start-up banner and log."""
    notes = [(gateway.first_try, first_try.reason)]
    if not gateway.first_try and settings.unknown_stations != "reject":
        public = not all(is_loopback(item.host) for item in station_listeners(settings))
        notes.append(
            (
                True,
                "unknown stations are admitted without credentials (unknown_stations = "
                f"{settings.unknown_stations})"
                + ("; anyone who can reach a listener may connect" if public else ""),
            )
        )
    return notes


def _log_security(settings: Settings, gateway: Gateway, first_try: FirstTry) -> None:
    for listener in gateway.listeners:
        log.info("stations connect to", url=_station_url(gateway, listener.index))
    if settings.listeners and {"listen_host", "listen_port"} & settings.model_fields_set:
        log.warning("listen_host / listen_port (--host / --port) are not used: listeners is set")
    for warning, note in _security_notes(settings, gateway, first_try):
        (log.warning if warning else log.info)(note)


def _station_url(gateway: Gateway, listener: int = 0) -> str:
    """The URL stations connect to, with a readable placeholder for the id."""
    return gateway.url_for("X", listener).removesuffix("X") + "{station_id}"


def describe_mode(settings: Settings) -> str:
    bus = f"MQTT broker {_redact(settings.broker_url)}" if settings.broker_url else "in-process bus"
    stores = f"Redis {_redact(settings.redis_url)}" if settings.redis_url else "in-memory stores"
    return f"{bus}, {stores}"


@dataclass(slots=True)
class Embedded:
    """What ``csms run`` started: the gateway and, when mounted, the operator API."""

    gateway: Gateway
    manager: Manager
    services: Services
    broker: MemoryBroker | None = None
    """The in-process broker, when no ``broker_url`` is set."""
    api: ApiServer | None = None
    generated_admin_key: str | None = None
    """The admin key made at start (first-try mode, no ``api_admin_key``): print it."""
    api_error: str | None = None
    """Why the API is not running although it was asked for (its default port is taken)."""


def api_origin() -> str:
    """This process's name as the originator of CSMS calls (its reply topic)."""
    return f"api-{socket.gethostname()}-{os.getpid()}"


@contextlib.asynccontextmanager
async def api_role(
    settings: Settings,
    services: Services,
    bus: Bus,
    *,
    admin_key: str | None = None,
    also_exposes: Sequence[CollectorRegistry] = (),
) -> AsyncIterator[ApiServer]:
    """The operator API on ``bus`` (its own connection: the CallSender consumes it),
    listening on ``api_host:api_port``. ``also_exposes``: metrics of other roles in this
    process (``csms run``), served on the API's ``/v1/metrics`` with its own."""
    topics = Topics(prefix=settings.topic_prefix, group=settings.shared_group)
    rules = services.action_rules  # every call the API sends is checked against them
    async with CallSender(bus, topics, origin=api_origin(), rules=rules) as sender:
        app = create_app(settings, services, sender, bus=bus, admin_key=admin_key)
        for registry in also_exposes:
            app.state.context.metrics.include(registry)
        async with ApiServer(app, settings.api_host, settings.api_port) as server:
            yield server


def _first_try_admin_key() -> str:
    """An admin key for this process only (never stored), for first-try mode."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return issue_key("first-try", Scope.ADMIN, now).key


@contextlib.asynccontextmanager
async def embedded(settings: Settings, *, api: bool = True) -> AsyncIterator[Embedded]:
    """Gateway + manager (+ the operator API unless ``api=False``) in this process.

    The gateway admits stations from the same registry the manager uses. First-try mode is
    on unless ``first_try = false`` or a listener is not on loopback (see
    :func:`gateway.listeners.decide_first_try`); in it, without ``api_admin_key``, an admin
    key is generated for this process. The API's CallSender has a bus connection of its own
    (an in-process bus client, or an MQTT connection), as a separate ``csms api`` would.
    """
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        broker: MemoryBroker | None = None
        if settings.broker_url:
            gateway_bus: Bus = mqtt_bus(settings, "gateway")
            manager_bus: Bus = mqtt_bus(settings, "manager")
            api_bus: Bus | None = mqtt_bus(settings, "api") if api else None
        else:
            broker = MemoryBroker()
            gateway_bus, manager_bus = broker.client(), broker.client()
            api_bus = broker.client() if api else None
        await stack.enter_async_context(manager_bus)
        await stack.enter_async_context(gateway_bus)
        await _wait_for_broker(manager_bus, settings)
        manager = await stack.enter_async_context(
            Manager(settings, manager_bus, services, instance_id=settings.manager_id)
        )
        first_try = decide_first_try(settings, embedded=True)
        gateway = await stack.enter_async_context(
            Gateway(
                settings,
                gateway_bus,
                gateway_id=gateway_id_for(settings),
                registry=services.stations,
                first_try=first_try.enabled,
            )
        )
        running = Embedded(gateway, manager, services, broker)
        # Off the message path: tasks that read the event log after the managers append.
        hooks = WebhookConfig.from_settings(settings)
        await stack.enter_async_context(WebhookRunner(services.events, services.webhooks, hooks))
        if api_bus is not None:
            await stack.enter_async_context(api_bus)
            admin_key = None
            if first_try.enabled and settings.api_admin_key is None:
                admin_key = running.generated_admin_key = _first_try_admin_key()
            try:
                running.api = await stack.enter_async_context(
                    api_role(
                        settings,
                        services,
                        api_bus,
                        admin_key=admin_key,
                        also_exposes=(gateway.metrics.registry, manager.metrics.registry),
                    )
                )
            except OSError as exc:
                if (
                    "api_port" in settings.model_fields_set
                    or "api_host" in settings.model_fields_set
                ):
                    raise
                # The default port is taken (another CSMS?): stations still get served.
                running.generated_admin_key = None
                running.api_error = (
                    f"operator API not started: {settings.api_host}:{settings.api_port} is "
                    f"not available ({exc.strerror or exc}); set api_port (CSMS_API_PORT)"
                )
        yield running


@contextlib.asynccontextmanager
async def all_in_one(settings: Settings) -> AsyncIterator[Gateway]:
    """Gateway + manager in this process, without the API; yields the running gateway."""
    async with embedded(settings, api=False) as running:
        yield running.gateway


async def run_all_in_one(settings: Settings) -> None:
    """``csms run``: serve until SIGINT/SIGTERM."""
    async with (
        _stop_on_signals() as stop,
        embedded(settings) as running,
    ):
        gateway = running.gateway
        first_try = decide_first_try(settings, embedded=True)
        print(_banner(settings, gateway, first_try, running), flush=True)
        log.info(
            "CSMS ready",
            mode=describe_mode(settings),
            stations_connect_to=_station_url(gateway),
            api=running.api.url + "/v1" if running.api is not None else None,
        )
        if running.api_error is not None:
            log.error(running.api_error)
        _log_security(settings, gateway, first_try)
        if not settings.broker_url and not settings.redis_url:
            log.warning(
                "embedded default: state lives in this process and is lost when it stops; "
                "set broker_url and redis_url for production"
            )
        if settings.unknown_tokens == "accept":
            log.warning("every idToken is Accepted", unknown_tokens=settings.unknown_tokens)
        with _reload_on_sighup(gateway):
            await stop.wait()
        log.info("stopping")


async def run_gateway(settings: Settings) -> None:
    """``csms gateway``: one gateway instance on the configured broker."""
    if not settings.broker_url:
        raise SystemExit("csms gateway needs a broker: set --broker-url or CSMS_BROKER_URL")
    first_try = decide_first_try(settings, embedded=False)
    if not settings.redis_url:
        log.warning(
            "no redis_url: the gateway knows only the [[stations]] of its configuration; "
            "set redis_url to share the station registry with the managers"
        )
    async with (
        _stop_on_signals() as stop,
        open_services(settings) as services,
        mqtt_bus(settings, "gateway") as bus,
    ):
        await _wait_for_broker(bus, settings)
        gateway = Gateway(
            settings,
            bus,
            gateway_id=gateway_id_for(settings),
            registry=services.stations,
            first_try=first_try.enabled,
        )
        async with (
            gateway,
            _probes(
                settings, "gateway", gateway.metrics.registry, gateway.metrics.readiness()
            ) as probes,
        ):
            log.info(
                "gateway ready",
                stations_connect_to=_station_url(gateway),
                probes=probes.url if probes is not None else None,
            )
            _log_security(settings, gateway, first_try)
            with _reload_on_sighup(gateway):
                await stop.wait()


def _banner(
    settings: Settings, gateway: Gateway, first_try: FirstTry, running: Embedded | None = None
) -> str:
    """What ``csms run`` prints at start: where stations connect and who may, and where the
    operator API is (with the generated admin key in first-try mode)."""
    lines = [f"CSMS running ({describe_mode(settings)})", "Stations connect to:"]
    for listener in gateway.listeners:
        profiles = ", ".join(str(p) for p in listener.profiles)
        noun = "profile" if len(listener.profiles) == 1 else "profiles"
        proxy = ", behind a TLS-terminating proxy" if listener.offload is not None else ""
        url = _station_url(gateway, listener.index)
        lines.append(f"  {url}   (security {noun} {profiles}{proxy})")
    for warning, note in _security_notes(settings, gateway, first_try):
        lines.append(("WARNING: " if warning else "") + note)
    if running is not None:
        lines.extend(_api_banner(settings, running))
    return "\n".join(lines)


def _api_banner(settings: Settings, running: Embedded) -> list[str]:
    if running.api is None:
        return [f"WARNING: {running.api_error}"] if running.api_error else []
    lines = [
        f"Dashboard:    {running.api.url}/   (log in with an API key)",
        f"Operator API: {running.api.url}/v1   (docs: {running.api.url}/docs)",
    ]
    if running.generated_admin_key is not None:
        lines.append(
            f"Admin API key (first-try, valid until this process stops): "
            f"{running.generated_admin_key}"
        )
    elif settings.api_admin_key is None:
        lines.append("API keys: set api_admin_key (CSMS_API_ADMIN_KEY) to bootstrap an admin key")
    return lines


async def run_manager(settings: Settings) -> None:
    """``csms manager``: one manager instance of the shared-subscription group."""
    if not settings.broker_url:
        raise SystemExit("csms manager needs a broker: set --broker-url or CSMS_BROKER_URL")
    async with (
        _stop_on_signals() as stop,
        open_services(settings) as services,
        mqtt_bus(settings, "manager") as bus,
    ):
        await _wait_for_broker(bus, settings)
        async with (
            Manager(settings, bus, services, instance_id=settings.manager_id) as manager,
            _probes(
                settings, "manager", manager.metrics.registry, manager.metrics.readiness()
            ) as probes,
        ):
            log.info(
                "manager ready",
                group=settings.shared_group,
                mode=describe_mode(settings),
                probes=probes.url if probes is not None else None,
            )
            await stop.wait()


async def run_api(settings: Settings) -> None:
    """``csms api``: one operator API instance on the configured broker and stores."""
    if not settings.broker_url:
        raise SystemExit("csms api needs a broker: set --broker-url or CSMS_BROKER_URL")
    if not settings.redis_url:
        log.warning(
            "no redis_url: the API sees only this process's in-memory stores; set redis_url "
            "to share stations, transactions, tokens and API keys with the fleet"
        )
    if settings.api_admin_key is None:
        log.info("no api_admin_key: only stored API keys are accepted")
    async with (
        _stop_on_signals() as stop,
        open_services(settings) as services,
        mqtt_bus(settings, "api") as bus,
    ):
        await _wait_for_broker(bus, settings)
        async with api_role(settings, services, bus) as server:
            log.info("api ready", url=server.url + "/v1", docs=server.url + "/docs")
            await stop.wait()


async def run_webhooks(settings: Settings) -> None:
    """``csms webhooks``: the dispatcher and the delivery workers on the shared stores."""
    if not settings.redis_url:
        raise SystemExit(
            "csms webhooks needs the shared stores: set --redis-url or CSMS_REDIS_URL "
            "(csms run delivers webhooks itself)"
        )
    async with _stop_on_signals() as stop, open_services(settings) as services:
        config = WebhookConfig.from_settings(settings)
        async with WebhookRunner(services.events, services.webhooks, config):
            log.info("webhooks ready", workers=config.workers, mode=describe_mode(settings))
            await stop.wait()
