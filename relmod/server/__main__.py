"""``python -m relmod.server`` runs :func:`relmod.server.cli.main`, like ``relmod-broker``."""

from __future__ import annotations

import sys

from relmod.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
