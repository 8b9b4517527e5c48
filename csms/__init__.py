"""Shared kernel of the CSMS: envelope, topics, OCPP-J framing, bus transport, settings, CLI."""

__version__ = "0.1.0"
