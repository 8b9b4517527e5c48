"""Operator use cases, in one place: sending CSMS-initiated calls and learning their outcome,
password rotation, and (as they come) remote start, reset and the rest.

The CLI, the HTTP API and the dashboard are thin callers of this layer; handlers use its
:class:`CallMaker` to send calls of their own. It sits between the services and the process
roles: it speaks to stations only through the bus and reads state only through the services.
"""

from __future__ import annotations

from operations.call_maker import CallMaker
from operations.calls import CallOutcome, CallSender, Outcome

__all__ = ["CallMaker", "CallOutcome", "CallSender", "Outcome"]
