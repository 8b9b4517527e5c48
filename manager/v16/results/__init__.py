"""OCPP 1.6 answers to CSMS-initiated calls: one module per action (``ACTION`` and
``handle_result``)."""
