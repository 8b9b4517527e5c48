"""The operator HTTP API: a process role beside the gateway and the manager.

Stateless (any number of replicas): stores through :mod:`services`, CSMS calls through the
operations layer's :class:`~operations.calls.CallSender` on the process's own bus
connection. It never talks to a station directly. :func:`create_app` builds the FastAPI
app, :class:`ApiServer` serves it in the running event loop. See docs/api.md.
"""

from api.app import create_app
from api.server import ApiServer

__all__ = ["ApiServer", "create_app"]
