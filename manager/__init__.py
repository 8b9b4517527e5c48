"""The manager fleet: stateless workers answering stations through the bus.

Public surface: :class:`Manager` (one worker instance), :class:`Router` (the per-version
routing core) and the handler contracts (:class:`CallContext`, :class:`ResultContext`,
:class:`OcppError`). CSMS-initiated calls go through :class:`operations.CallMaker`.
"""

from __future__ import annotations

from manager.context import CallContext, CallHandler, OcppError, ResultContext, ResultHandler
from manager.router import Deps, Router, default_router, load_handlers
from manager.worker import Manager, ManagerStats

__all__ = [
    "CallContext",
    "CallHandler",
    "Deps",
    "Manager",
    "ManagerStats",
    "OcppError",
    "ResultContext",
    "ResultHandler",
    "Router",
    "default_router",
    "load_handlers",
]
