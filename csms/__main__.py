"""``python -m csms`` is the same as the ``csms`` command."""

import sys

from csms.cli import main

sys.exit(main())
