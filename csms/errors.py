"""Every exception this project raises on purpose descends from :class:`CsmsError`.

::

    CsmsError
    ├── Unavailable              something this process depends on cannot be reached now;
    │   │                        the station gets a prompt InternalError, the caller a 503
    │   ├── BusUnavailable       (csms.bus) the broker is down or refused the publish
    │   │   └── NoSubscribers    (csms.bus) nobody receives it: no manager, no gateway
    │   └── StoreUnavailable     (services) Redis or an operator's service did not answer
    ├── ProtocolFault            a peer sent what OCPP-J or the OCA schemas refuse
    │   ├── FrameFault           (csms.rpc) the RPC frame itself: JSON, shape, ids
    │   └── SchemaViolation      (ocpp_schemas) a payload against its schema
    ├── OcppError                (manager.context) a handler refuses a Call with a CallError
    └── InvalidRequest           an operator or caller asked for something impossible
        ├── UnsupportedVersion   (csms.versions)
        ├── InvalidCall          (operations.calls) unknown action, payload its schema refuses
        └── RotationRefused      (operations.password) no password can be rotated now

Each class lives with the code that raises it; this module holds only the roots, so that
callers can catch a whole family (``except Unavailable``) without knowing every member.
"""

from __future__ import annotations

__all__ = ["CsmsError", "InvalidRequest", "ProtocolFault", "Unavailable"]


class CsmsError(Exception):
    """Root of every exception the CSMS raises on purpose."""


class Unavailable(CsmsError):
    """A dependency (the broker, a store) cannot be reached now; retrying later may work."""


class ProtocolFault(CsmsError):
    """A peer sent something OCPP-J or the schemas refuse; it says what and where."""


class InvalidRequest(CsmsError, ValueError):
    """A caller asked for something that cannot be done as asked (a ``ValueError`` too)."""
