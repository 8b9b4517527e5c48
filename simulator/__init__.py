"""A station simulator and load generator (``csms simulate``).

Simulated stations are real OCPP-J clients over WebSockets: they boot, send heartbeats, run
charging sessions with periodic meter values, reconnect, and answer the CSMS calls an operator
sends (reset, remote start/stop, trigger, variables, configuration). The runner starts any
number of them, in one process or several (past the open-file limit), shows progress while
it runs and ends with a summary: round trips per second, latency percentiles per action, and
errors by kind.

It speaks to any CSMS, this one or another, through the station URL only; it imports nothing
of the CSMS but the kernel's version table.
"""

from simulator.runner import Plan, Summary, run_plan, simulate
from simulator.scenarios import Scenario

__all__ = ["Plan", "Scenario", "Summary", "run_plan", "simulate"]
