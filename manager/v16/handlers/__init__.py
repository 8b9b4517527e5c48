"""OCPP 1.6 station-initiated Calls: one module per action (``ACTION`` and ``handle``)."""
