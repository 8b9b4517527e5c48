"""``python -m cli`` is the same as the ``csms`` command."""

import sys

from cli.main import main

sys.exit(main())
