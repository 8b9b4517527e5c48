"""OCPP 2.0.1 station-initiated Calls: one module per action (``ACTION`` and ``handle``)."""
