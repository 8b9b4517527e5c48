"""Decisions the OCPP 1.6 and 2.0.1 handlers share, written once, one module per domain.

The handlers of each version translate their wire format into these calls and back:

- :mod:`~manager.common.registration`: BootNotification, and what a station that is not
  Accepted may send;
- :mod:`~manager.common.authorization`: token decisions as ``idTagInfo`` / ``idTokenInfo``;
- :mod:`~manager.common.transactions`: readings, energy, ends, data quality, superseding;
- :mod:`~manager.common.pricing`: the cost of ended transactions and the running cost;
- :mod:`~manager.common.notifications`: Heartbeat, statuses, acknowledgements, DataTransfer.

Everything goes through the :mod:`services` interfaces; nothing here knows which store
implementation runs behind them. OCPP 2.1 handlers reuse these as they are.
"""
