"""The bounded soak and the protocol fuzz of tests/reliability/ (same options, same tables).

Run from the repository root with the project's virtual environment:
    .venv/bin/python benchmarks/soak.py [--edits 1000] [--clients 8] [--modules 200] [--seed 1]
                                        [--fuzz 100000] [--quick] [--keep] [--json FILE]

It is not named bench_*.py, so benchmarks/run_all.py leaves it out: it takes a few minutes and
checks correctness under faults more than it measures speed. See tests/reliability/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
