"""Settings: one validated model fed by a TOML file, ``CSMS_*`` environment variables and flags.

Precedence, highest first: command-line flags, environment variables, the config file
(``--config`` or ``CSMS_CONFIG``), defaults. Nested values use ``__`` in environment
variables, e.g. ``CSMS_TARIFF__ENERGY_PRICE_PER_KWH=0.39``.

Leaving ``broker_url`` unset selects the in-process bus and leaving ``redis_url`` unset
selects in-memory stores: the embedded default of ``csms run``.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class TariffSettings(BaseModel):
    """The built-in tariff: price per kWh, per hour plugged in, per session; one currency."""

    model_config = {"extra": "forbid"}

    energy_price_per_kwh: Decimal = Field(default=Decimal("0.30"), ge=0)
    time_price_per_hour: Decimal = Field(default=Decimal("0.00"), ge=0)
    session_fee: Decimal = Field(default=Decimal("0.00"), ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class TokenSettings(BaseModel):
    """A token preloaded into the token store (handy for the embedded default and tests)."""

    model_config = {"extra": "forbid"}

    id_token: str = Field(min_length=1, max_length=36)
    status: Literal["Accepted", "Blocked", "Expired", "Invalid"] = "Accepted"
    expiry: str | None = None
    group_id: str | None = None


class StationSettings(BaseModel):
    """A station preloaded into the registry with its registration status."""

    model_config = {"extra": "forbid"}

    station_id: str = Field(min_length=1, max_length=48)
    registration: Literal["Accepted", "Pending", "Rejected"] = "Accepted"


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
    redis_url: str | None = Field(
        default=None, description="redis://host:6379/0 or rediss://...; unset = in-memory stores"
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
    answer_timeout: float = Field(
        default=20.0, gt=0, description="CSMS must answer a station call within, else InternalError"
    )
    publish_timeout: float = Field(default=3.0, gt=0)
    ping_interval: float | None = Field(default=60.0, gt=0)
    ping_timeout: float | None = Field(default=30.0, gt=0)

    # Manager
    heartbeat_interval: int = Field(default=300, ge=1, le=86_400)
    pending_retry_interval: int = Field(default=60, ge=1, le=86_400)
    manager_concurrency: int = Field(default=256, ge=1, le=100_000)
    idempotency_ttl: int = Field(default=3600, ge=1)
    unknown_stations: Literal["accept", "pending", "reject"] = Field(
        default="accept", description="BootNotification answer for stations not in the registry"
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
    tokens: list[TokenSettings] = []
    stations: list[StationSettings] = []

    # Operations
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    @field_validator("path_prefix")
    @classmethod
    def _check_path_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @field_validator("tariff_service", "token_store")
    @classmethod
    def _check_factory(cls, value: str | None) -> str | None:
        if value and ":" not in value:
            raise ValueError("must name a factory as module:attribute")
        return value or None

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
