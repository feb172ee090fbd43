"""``python -m relmod``: the same as the ``relmod`` command."""

import sys

from relmod.cli import main

sys.exit(main())
