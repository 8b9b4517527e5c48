"""OCPP 2.0.1 answers to CSMS-initiated calls: one module per action (``ACTION`` and
``handle_result``)."""
