"""One knob for every wait in the tests.

Timeouts in the tests only keep a broken run from hanging; they never measure speed. On a
slow or loaded machine (a shared CI runner, a sanitizer build) set
``CSMS_TEST_TIMEOUT_FACTOR`` (e.g. ``3``) to stretch all of them at once instead of editing
numbers. See docs/tests.md.
"""

from __future__ import annotations

import os

TIMEOUT_FACTOR = float(os.environ.get("CSMS_TEST_TIMEOUT_FACTOR", "1"))
"""Multiplies every test timeout; 1 unless ``CSMS_TEST_TIMEOUT_FACTOR`` says otherwise."""


def timeout(seconds: float) -> float:
    """``seconds`` stretched by :data:`TIMEOUT_FACTOR`: the time a wait in a test may take."""
    return seconds * TIMEOUT_FACTOR
