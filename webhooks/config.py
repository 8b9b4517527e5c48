"""The few settings the dispatcher and the delivery workers need, as one small object."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from csms.config import Settings

__all__ = ["WebhookConfig", "retry_delay"]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    workers: int = 8
    max_attempts: int = 10
    retry_schedule: tuple[float, ...] = (10, 30, 120, 600, 1800, 3600)
    timeout: float = 10.0
    lease: float = 60.0
    poll_interval: float = 1.0
    batch: int = 100
    """Events the dispatcher reads at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        return cls(
            workers=settings.webhook_workers,
            max_attempts=settings.webhook_max_attempts,
            retry_schedule=tuple(max(0.0, s) for s in settings.webhook_retry_schedule),
            timeout=settings.webhook_timeout,
            lease=max(settings.webhook_lease, settings.webhook_timeout + 1),
            poll_interval=settings.webhook_poll_interval,
        )


def retry_delay(
    config: WebhookConfig, attempts: int, draw: Callable[[float, float], float] = random.uniform
) -> float | None:
    """Seconds until the next try after ``attempts`` failed tries, or None when the
    delivery is out of tries (dead-lettered). Full jitter: uniform from 0 to the schedule's
    step, so receivers coming back from an outage are not hit by every retry at once."""
    if attempts >= config.max_attempts:
        return None
    schedule = config.retry_schedule
    step = schedule[min(attempts, len(schedule)) - 1] if attempts >= 1 else schedule[0]
    return draw(0.0, step)
