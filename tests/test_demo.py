"""`relmod demo`, the README's main command, runs to completion and tells its story."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import child_env

pytestmark = pytest.mark.timeout(120)


def test_relmod_demo_runs_to_completion() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relmod", "demo", "--pace", "0.2"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=110,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for step in ("EDIT 1", "EDIT 2", "EDIT 3", "Demo complete"):
        assert step in text
    assert text.count("[pricing v2: 20% tax]; held back: line 5: SyntaxError") == 4
    assert text.count("[pricing v3: 5% tax plus a 2.00 fee]") >= 4
