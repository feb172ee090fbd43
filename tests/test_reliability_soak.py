"""A tiny version of the soak (tests/reliability/soak.py) runs with the suite.

Three real client processes, a real broker, 60 random actions on a 30-module project, and one of
each fault: the broker SIGKILLed and restarted, a client SIGSTOPped until its queue overflows,
a client killed and replaced. Nothing may be lost and nothing may run stale after sync().
The full soak (1,000 actions, 8 clients, 200 modules) is ``python -m tests.reliability.soak``.
"""

from __future__ import annotations

import pytest
from reliability.soak import Options, Soak, markdown

pytestmark = pytest.mark.timeout(150)


def test_a_tiny_soak_loses_nothing_and_runs_nothing_stale() -> None:
    options = Options(
        actions=60, clients=3, modules=30, seed=5, latency_clients=1, broker_kills=1, stops=1,
        replacements=1, checkpoints=1, isolated=1, burst=20,
    )  # fmt: skip
    results = Soak(options).run()
    table = markdown(results, "tiny soak")

    assert results.broker_kills == 1 and results.client_stops == 1, table
    assert results.client_replacements == 1 and results.checkpoints == 2, table
    assert results.compared >= 2 * 3 * 20, table  # every client answered for the modules
    assert results.lost == 0 and results.not_caught_up == 0, table
    assert results.stale_after_sync == 0, table
    assert results.latency_ms and results.latency_unmatched == 0, table
    assert results.broker_log_errors == 0 and results.worker_tracebacks == 0, table
    assert results.ok, table
