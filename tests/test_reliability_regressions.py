"""Faults the reliability suite found, each pinned by the smallest test that shows it.

The others live with their kind of fault: a connection file refused only after connect()'s
timeout and a lock or connection file replaced by something else (test_reliability_connfile.py);
modules loaded through a symlink leading out of the project and a module replaced by a package
(test_reliability_machine.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from support import Broker, FileView, Worker, wait_for

from relmod.connfile import connection_path, read_connection_file
from relmod.watch import ChangeBatch, WatchfilesWatcher

pytestmark = pytest.mark.timeout(60)


def save(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def test_a_broker_restarted_within_the_silence_period_is_followed(tmp_path: Path) -> None:
    # A broker killed and restarted before its clients notice the silence (3 s) binds the same
    # ipc paths: the clients' sockets reconnect by themselves and receive its messages, signed
    # with a new key. They used to count every such (dropped) message as hearing from the
    # broker, so they never re-read the connection file: stuck with the old key forever, no
    # invalidation applied, no fallback watcher, every sync() a 10 s timeout.
    root = (tmp_path / "proj").resolve()
    root.mkdir()
    save(root / "leaf.py", "VALUE = 1\n")
    first = Broker(root).start()
    worker = Worker(cwd=root)
    second = None
    try:
        worker.call("connect", root=str(root))
        worker.call("load", name="leaf", path=str(root / "leaf.py"))
        first.kill()
        first.stop()
        second = Broker(root).start()  # well within 3 s
        save(root / "leaf.py", "VALUE = 2\n")
        # No sync(): the new broker's invalidation (or the resync with it) must arrive.
        assert worker.call("wait_value", name="leaf", attr="VALUE", value=2, timeout=10) == 2
        status = wait_for(
            lambda: (s := worker.call("status"))["connected"] and s["broker_pid"] == second.pid
            and s, 10, "the client to follow the new broker")  # fmt: skip
        assert status["epoch"] == read_connection_file(connection_path(str(root)))["epoch"]
        started = time.monotonic()
        worker.call("sync")
        assert time.monotonic() - started < 3  # the broker answered: no timeout
    finally:
        worker.close()
        if second is not None:
            second.stop()


@pytest.fixture
def fake_watchfiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[set[tuple[Any, str]]]]:
    """watchfiles.watch replaced by a generator of the batches the test puts in the list."""
    batches: list[set[tuple[Any, str]]] = []

    def watch(*paths: str, stop_event: Any, **options: Any) -> Iterator[set[tuple[Any, str]]]:
        while not stop_event.is_set():
            yield batches.pop(0) if batches else set()
            time.sleep(0.01)

    monkeypatch.setattr(watchfiles, "watch", watch)
    yield batches


def test_an_overflow_drained_as_several_batches_asks_for_a_rescan(
    tmp_path: Path, fake_watchfiles: list[set[tuple[Any, str]]]
) -> None:
    # A watcher that fell behind while thousands of files changed finds the kernel queue
    # overflowed (the events after it are lost), and watchfiles drains what was kept as
    # several batches whenever one step passes without news. Each batch alone stayed under the
    # overflow size, so no rescan was asked for and the lost edits were never published.
    got: list[ChangeBatch] = []
    arrived = threading.Event()

    def on_change(batch: ChangeBatch) -> None:
        got.append(batch)
        if batch.rescan:
            arrived.set()

    watcher = WatchfilesWatcher([str(tmp_path)], on_change)
    watcher._overflow_suspect = 2048  # what max_queued_events 16384 gives
    added = watchfiles.Change.added
    start = 0
    for size in (448, 1605, 2047):  # the sizes seen after a real overflow
        batch = {(added, f"{tmp_path}/data/{i}.txt") for i in range(start, start + size)}
        fake_watchfiles.append(batch)
        start += size
    watcher.start()
    try:
        assert arrived.wait(5), [(len(b.paths), b.rescan) for b in got]
    finally:
        watcher.stop()


def test_a_steady_trickle_of_the_same_files_is_no_overflow(
    tmp_path: Path, fake_watchfiles: list[set[tuple[Any, str]]]
) -> None:
    # The counterpart: hot files saved again and again add up to nothing new.
    got: list[ChangeBatch] = []
    watcher = WatchfilesWatcher([str(tmp_path)], got.append)
    watcher._overflow_suspect = 2048
    modified = watchfiles.Change.modified
    for _ in range(300):
        fake_watchfiles.append({(modified, f"{tmp_path}/hot{i}.log") for i in range(20)})
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while fake_watchfiles and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        watcher.stop()
    assert got and not any(batch.rescan for batch in got[1:])


def test_sync_covers_a_file_created_just_before_it(tmp_path: Path) -> None:
    from relmod.cli import ask
    from relmod.sources import content_hash

    root = (tmp_path / "proj").resolve()
    root.mkdir()
    save(root / "a.py", "A = 1\n")
    broker = Broker(root).start()
    try:
        info = read_connection_file(connection_path(str(root)))
        missed = []
        for index in range(10):
            before = ask(info, "sync", {}, "synced").body["seq"]
            path = root / f"new{index}.py"
            path.write_text(f"N = {index}\n")
            ask(info, "sync", {}, "synced")
            body = ask(info, "since", {"epoch": info["epoch"], "seq": before}, "changes").body
            if FileView().learn(body).get(str(path)) != content_hash(path.read_bytes()):
                missed.append(path.name)
        assert missed == []
    finally:
        broker.stop()
