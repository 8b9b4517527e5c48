"""The top layer: process wiring (:mod:`cli.processes`) and the ``csms`` command, one module
per command group (:mod:`cli.serve`, :mod:`cli.station`, :mod:`cli.password`,
:mod:`cli.token`). Everything below it (``csms``, ``services``, ``gateway``, ``manager``)
never imports it."""
