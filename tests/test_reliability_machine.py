"""Faults of the machine, end to end: a real broker, a real client process, real files.

- The watcher overflows: the broker is frozen while far more file events happen than the
  kernel's inotify queue holds, so the events of the module edits that follow are lost; the
  broker must rescan and publish them anyway. A burst far larger than one batch is all published.
- A file is unreadable mid-save (chmod 000 means nothing to root, so: replaced by a folder, by a
  dangling symbolic link, or removed and re-created while the broker reads): the broker keeps
  going, clients keep their last good code, and the fix reaches them.
- PEP 263 coding cookies, a UTF-8 BOM, a module replaced by a package folder, symlinked folders
  (inside the project, and leading out of it): clients see the right values.
"""

from __future__ import annotations

import codecs
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Broker, FileView, Worker, broker_status, wait_for

from relmod.cli import ask
from relmod.connfile import connection_path, read_connection_file
from relmod.sources import content_hash

pytestmark = pytest.mark.timeout(120)


def save(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(temp, path)


def known(root: Path, count: int) -> None:
    """Wait until the broker tracks ``count`` files (sync() does not wait for new files)."""
    tracked = f"the broker to track {count} files"
    wait_for(lambda: broker_status(root)["files"] >= count, 10, tracked)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    save(root / "leaf.py", "VALUE = 1\n")
    save(root / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    return root


@pytest.fixture
def broker(project: Path) -> Iterator[Broker]:
    started = Broker(project).start()
    yield started
    started.stop()


@pytest.fixture
def worker(project: Path, broker: Broker) -> Iterator[Worker]:
    started = Worker(cwd=project)
    assert started.call("connect", root=str(project)) is True
    yield started
    started.close()


# -- the watcher overflows ----------------------------------------------------------------------


def test_an_inotify_overflow_is_rescanned_and_nothing_is_lost(project: Path) -> None:
    modules = [project / f"m{index}.py" for index in range(4)]
    for index, path in enumerate(modules):
        save(path, f"VALUE = {index}\n")
    (project / "data").mkdir()  # watched from the start
    broker = Broker(project).start()
    worker = Worker(cwd=project)
    try:
        worker.call("connect", root=str(project))
        _overflow(project, broker, worker, modules)
    finally:
        worker.close()
        broker.stop()


def _overflow(project: Path, broker: Broker, worker: Worker, modules: list[Path]) -> None:
    info = read_connection_file(connection_path(str(project)))
    before = ask(info, "sync", {}, "synced").body["seq"]
    for index, path in enumerate(modules):
        worker.call("load", name=f"m{index}", path=str(path))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    os.kill(broker.pid, signal.SIGSTOP)  # its inotify queue fills up and overflows
    try:
        for index in range(limit + 2000):  # at least one event each: more than the queue holds
            (project / "data" / f"{index}.txt").write_bytes(b"x")
        # These events come after the overflow: the kernel drops them.
        save(modules[0], "VALUE = 100\n")
        with open(modules[1], "w") as file:  # in place
            file.write("VALUE = 101\n")
        modules[2].unlink()
        save(modules[3], "VALUE = 103\n")
        save(project / "m4.py", "VALUE = 104\n")
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    expected = {str(p): content_hash(p.read_bytes()) if p.exists() else None
                for p in [*modules, project / "m4.py"]}  # fmt: skip

    def published() -> bool:
        # No sync (it would re-check every file): only the broker's own rescan finds these.
        body = ask(info, "since", {"epoch": info["epoch"], "seq": before}, "changes").body
        hashes = FileView().learn(body)
        return all(hashes.get(path, "?") == digest for path, digest in expected.items())

    wait_for(published, 20, "the broker to publish every edit made after the overflow")
    # And a client sees them, without sync().
    assert worker.call("wait_value", name="m0", attr="VALUE", value=100, timeout=10) == 100
    assert worker.call("wait_value", name="m1", attr="VALUE", value=101, timeout=10) == 101
    assert worker.call("stale", name="m2") is True
    assert broker_status(project)["batch_errors"] == 0


def test_a_burst_far_beyond_one_batch_is_published_whole(project: Path, broker: Broker) -> None:
    info = read_connection_file(connection_path(str(project)))
    before = ask(info, "sync", {}, "synced").body["seq"]
    paths = [project / "burst" / f"b{index:04d}.py" for index in range(2500)]
    for index, path in enumerate(paths):
        save(path, f"VALUE = {index}\n")
    for index, path in enumerate(paths):  # and once more, in place, while the first is read
        with open(path, "w") as file:
            file.write(f"VALUE = {index + 10_000}\n")
    ask(info, "sync", {}, "synced", timeout=60)
    changes = ask(info, "since", {"epoch": info["epoch"], "seq": before}, "changes").body
    assert not changes["full"]
    view = FileView()
    hashes = view.learn(changes)
    for path in paths:
        assert hashes.get(str(path)) == content_hash(path.read_bytes()), path
    assert str(project / "burst" / "b2499.py") in view.affected(changes)


# -- unreadable mid-save ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["a folder", "a dangling symlink", "flapping", "a cut save"])
def test_an_unreadable_file_mid_save_keeps_the_broker_going(
    project: Path, broker: Broker, worker: Worker, fault: str
) -> None:
    worker.call("configure", on_error="keep")
    worker.call("load", name="mid", path=str(project / "mid.py"))
    assert worker.call("get", name="mid", attr="DOUBLE") == 2
    leaf = project / "leaf.py"
    if fault == "a folder":
        leaf.unlink()
        leaf.mkdir()
    elif fault == "a dangling symlink":
        leaf.unlink()
        leaf.symlink_to(project / "nowhere.py")
    elif fault == "flapping":  # removed and re-created while the broker may be reading it
        for index in range(300):
            leaf.unlink()
            leaf.write_text(f"VALUE = {index}\n")
        leaf.unlink()
    else:  # the disk filled during an in-place save: half a file is left
        with open(leaf, "w") as file:
            file.write("VALUE = 123456 +")
    worker.call("sync")
    assert worker.call("get", name="mid", attr="DOUBLE") == 2  # the last good code
    assert broker.proc is not None and broker.proc.poll() is None
    if fault == "a folder":
        leaf.rmdir()
    elif fault == "a dangling symlink":
        leaf.unlink()
    save(leaf, "VALUE = 21\n")
    # Without sync(): a file the broker saw vanish comes back as a new file, which sync() does
    # not wait for (see test_sync_covers_a_file_created_just_before_it); the invalidation must
    # still come.
    assert worker.call("wait_value", name="mid", attr="DOUBLE", value=42, timeout=10) == 42
    worker.call("sync")
    assert worker.call("get", name="mid", attr="DOUBLE") == 42
    now = broker_status(project)
    assert now["batch_errors"] == 0 and now["request_errors"] == 0 and now["broken"] == []


def test_the_broker_reports_a_module_it_cannot_read(project: Path) -> None:
    broker = Broker(project).start()
    worker = Worker(cwd=project)
    try:
        worker.call("connect", root=str(project))
        worker.call("load", name="mid", path=str(project / "mid.py"))
        leaf = project / "leaf.py"
        leaf.unlink()
        leaf.mkdir()
        worker.call("sync")
        assert broker.proc is not None and broker.proc.stderr is not None
        broker.proc.terminate()  # then read its whole log
        broker.proc.wait(10)
        log = broker.proc.stderr.read()
    finally:
        worker.close()
        broker.stop()
    assert "relmod broker for" in log  # the log is there...
    warnings = [line for line in log.splitlines() if "WARNING" in line and str(leaf) in line]
    assert warnings, log  # ...and names the file it could not read


def test_a_module_replaced_by_a_symlink_is_invalidated(
    project: Path, broker: Broker, worker: Worker
) -> None:
    save(project / "other.py", "VALUE = 9\n")
    worker.call("load", name="mid", path=str(project / "mid.py"))
    assert worker.call("get", name="mid", attr="DOUBLE") == 2
    (project / "leaf.py").unlink()
    (project / "leaf.py").symlink_to(project / "other.py")
    worker.call("sync")
    assert worker.call("get", name="mid", attr="DOUBLE") == 18
    for value in range(10, 30):  # then the link's target is edited, 20 times
        save(project / "other.py", f"VALUE = {value}\n")
        worker.call("sync")
        assert worker.call("get", name="mid", attr="DOUBLE") == 2 * value


# -- encodings, a module turned package, symlinked folders --------------------------------------


def test_coding_cookies_and_a_bom_reach_clients(
    project: Path, broker: Broker, worker: Worker
) -> None:
    latin = project / "latin.py"
    bom = project / "bom.py"
    second_line = project / "second.py"
    save(latin, "# -*- coding: latin-1 -*-\nNAME = 'caf\u00e9'\nVALUE = 1\n".encode("latin-1"))
    save(bom, codecs.BOM_UTF8 + "NAME = '\u00fc'\nVALUE = 1\n".encode())
    save(second_line, "#!/usr/bin/env python\n# vim: set fileencoding=cp1252 :\nNAME = "
         "'\u20ac'\nVALUE = 1\n".encode("cp1252"))  # fmt: skip
    save(project / "user.py", "from .latin import NAME as A, VALUE as X\nfrom .bom import NAME "
         "as B, VALUE as Y\nfrom .second import NAME as C, VALUE as Z\nALL = A + B + C\n"
         "TOTAL = X + Y + Z\n")  # fmt: skip
    worker.call("configure", on_error="keep")
    known(project, 6)
    worker.call("load", name="user", path=str(project / "user.py"))
    assert worker.call("get", name="user", attr="ALL") == "caf\u00e9\u00fc\u20ac"
    save(latin, "# -*- coding: latin-1 -*-\nNAME = '\u00e0'\nVALUE = 10\n".encode("latin-1"))
    save(bom, codecs.BOM_UTF8 + "NAME = '\u00f6'\nVALUE = 100\n".encode())
    # Without sync: the invalidation alone brings the new values.
    assert worker.call("wait_value", name="user", attr="TOTAL", value=111, timeout=10) == 111
    assert worker.call("get", name="user", attr="ALL") == "\u00e0\u00f6\u20ac"
    # A latin-1 byte under a UTF-8 cookie does not compile: announced broken, old code kept.
    save(latin, "# coding: utf-8\nNAME = 'caf\u00e9'\nVALUE = 1000\n".encode("latin-1"))
    worker.call("sync")
    assert str(latin) in worker.call("status")["broken"]
    assert worker.call("get", name="user", attr="TOTAL") == 111
    save(latin, "# coding: utf-8\nNAME = 'caf\u00e9'\nVALUE = 1000\n".encode())  # the fix
    worker.call("sync")
    assert worker.call("get", name="user", attr="TOTAL") == 1101
    assert worker.call("status")["broken"] == {}


def test_a_module_replaced_by_a_package_folder(
    project: Path, broker: Broker, worker: Worker
) -> None:
    save(project / "util.py", "X = 1\n")
    save(project / "main.py", "from . import util\nVALUE = util.X\n")
    known(project, 4)  # sync() does not wait for new files: wait until the broker tracks them
    worker.call("load", name="main", path=str(project / "main.py"))
    assert worker.call("get", name="main", attr="VALUE") == 1
    (project / "util.py").unlink()
    save(project / "util" / "__init__.py", "X = 7\n")
    worker.call("sync")
    # The default on_error="raise": no error about the vanished util.py, which main no longer
    # needs; main runs again and finds the package.
    assert worker.call("get", name="main", attr="VALUE") == 7


def test_symlinked_folders_inside_and_outside_the_project(
    project: Path, tmp_path: Path, broker: Broker, worker: Worker
) -> None:
    save(project / "real" / "m.py", "V = 1\n")
    (project / "alias").symlink_to(project / "real")
    outside = tmp_path / "outside"
    save(outside / "e.py", "V = 1\n")
    (project / "ext").symlink_to(outside)
    save(project / "uses.py", "from .alias.m import V as A\nfrom .ext.e import V as B\n"
         "TOTAL = A * 10 + B\n")  # fmt: skip
    known(project, 4)
    worker.call("load", name="uses", path=str(project / "uses.py"))
    assert worker.call("get", name="uses", attr="TOTAL") == 11
    save(project / "real" / "m.py", "V = 2\n")
    assert worker.call("wait_value", name="uses", attr="TOTAL", value=21, timeout=10) == 21
    # Outside the broker's root: the broker never speaks of it, the client watches it itself.
    save(outside / "e.py", "V = 3\n")
    assert worker.call("wait_value", name="uses", attr="TOTAL", value=23, timeout=10) == 23
    # And sync() checks it directly, whatever the watcher saw.
    with open(outside / "e.py", "w") as file:
        file.write("V = 4\n")
    worker.call("sync")
    assert worker.call("get", name="uses", attr="TOTAL") == 24
