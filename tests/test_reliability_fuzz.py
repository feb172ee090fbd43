"""The decoder fuzz (tests/reliability/fuzz.py) on a few thousand inputs.

The soak command runs it on 100,000 and more (``python -m tests.reliability.soak --fuzz N``).
"""

from __future__ import annotations

import pytest
from reliability.fuzz import FILE_IDS, ROOT, SAMPLES, FuzzReport, _Targets, markdown, run_fuzz

from relmod.protocol import REASONS, VERSION

pytestmark = pytest.mark.timeout(120)


def test_no_exception_escapes_the_decoder_and_memory_stays_bounded() -> None:
    report = run_fuzz(20_000, seed=11)
    table = markdown(report)

    assert report.inputs >= 20_000, table
    assert report.escaped == [], table
    assert report.rss_max_growth_kb < 64 * 1024, table
    # The fuzz reaches every check: each drop reason shows up, and some inputs pass.
    assert set(REASONS) <= set(report.reasons), table
    assert report.reasons["ok"] > 0, table
    # ... and signed messages whose ids the client's table refuses reach it, and are dropped.
    assert report.reasons[FILE_IDS] > 0, table


def test_the_fuzz_targets_accept_valid_messages_and_count_what_they_drop() -> None:
    # The harness itself can fail: a valid message of every kind is accepted by the side that
    # receives it, and a flipped byte is dropped and counted.
    report = FuzzReport()
    targets = _Targets(report)
    for direction, kinds in SAMPLES.items():
        sender = targets.codecs["client" if direction == "request" else "broker"]
        receiver = "broker" if direction == "request" else "client"
        for kind, body in kinds.items():
            sign_with = type(sender)(bytes(range(32)), role=sender.role, root=ROOT)
            frames = sign_with.encode(kind, body)
            targets.feed(receiver, frames)
            [frame] = frames
            middle = len(frame) // 2  # a payload byte
            tampered = [frame[:middle] + bytes([frame[middle] ^ 1]) + frame[middle + 1 :]]
            targets.feed(receiver, tampered)
    total = sum(len(kinds) for kinds in SAMPLES.values())
    assert report.reasons["ok"] == total and report.reasons["forged"] == total
    assert report.escaped == [] and report.inputs == 2 * total
    assert frames[0].startswith(VERSION + b"\0")
