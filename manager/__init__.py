"""The manager fleet: stateless workers answering stations through the bus.

Public surface: :class:`Manager` (one worker instance), :class:`Router` (the per-version
routing core), the handler contracts (:class:`CallContext`, :class:`ResultContext`,
:class:`OcppError`) and :class:`CallMaker` for CSMS-initiated calls.
"""

from __future__ import annotations

from manager.call_maker import CallMaker
from manager.context import CallContext, CallHandler, OcppError, ResultContext, ResultHandler
from manager.router import Deps, Router, default_router, load_handlers
from manager.worker import Manager, ManagerStats

__all__ = [
    "CallContext",
    "CallHandler",
    "CallMaker",
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
