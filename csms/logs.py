"""Structured logging: structlog everywhere, JSON lines in production, readable on a console."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = [
    "configure_logging",
]


def configure_logging(fmt: Literal["console", "json"] = "console", level: str = "info") -> None:
    """Configure structlog (and the stdlib loggers libraries use) once per process."""
    numeric_level = getattr(logging, level.upper())
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric_level, logging.WARNING), stream=sys.stderr)
    # websockets logs every failed handshake at INFO/ERROR with tracebacks; the gateway logs
    # its own structured line for those instead.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
