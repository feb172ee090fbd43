"""The broker at real-project scale, from its first second: it answers while it scans.

A generated project of 10,000 files; the broker's first scan is paced (``RELMOD_SCAN_PACE``) so
that it is surely still going while a real client process connects, loads modules the scan has
not reached, and the test edits them. Deadlines, not sleeps.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Worker, child_env, wait_for

from relmod import cli
from relmod.connfile import connection_path, lock_path, read_connection_file, runtime_dir

pytestmark = pytest.mark.timeout(120)

MODULES = 10_000
FILES = MODULES - 1 + MODULES // 100  # 9,997 + zz/leaf.py + zz/mid.py, an __init__.py per 100


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def generate(root: Path, files: int) -> None:
    """``files`` small modules in packages of 100, each importing the one before it; the
    modules a test edits live in ``zz/``, which the walk reaches last."""
    for index in range(files - 3):
        package, number = divmod(index, 100)
        folder = root / f"p{package:03d}"
        if number == 0:
            folder.mkdir(parents=True)
            (folder / "__init__.py").write_text("")
        previous = f"from p{package:03d} import m{number - 1:02d}\n" if number else ""
        (folder / f"m{number:02d}.py").write_text(f"{previous}VALUE = {index}\n")
    write(root / "zz" / "leaf.py", "VALUE = 1\n")
    write(root / "zz" / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")


@pytest.fixture(scope="module")
def big_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big").resolve() / "proj"
    generate(root, MODULES)
    return root


class PacedBroker:
    def __init__(self, root: Path, log: Path, pace: float) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relmod.server", str(root)],
            env=child_env(RELMOD_SCAN_PACE=str(pace)),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.close()


@pytest.fixture
def paced(big_project: Path, tmp_path: Path) -> Iterator[PacedBroker]:
    # 0.4 s after each of some 40 chunks: the scan lasts 16 s at least, so a loaded machine
    # (CI's two cores, a test process starting) still edits during it.
    broker = PacedBroker(big_project, tmp_path / "broker.log", pace=0.4)
    yield broker
    broker.stop()


def status_of(root: Path) -> dict:
    info = read_connection_file(connection_path(str(root)))
    return cli.ask(info, "status", {}, "status", timeout=5).body["status"]


def test_status_answers_at_once_and_an_edit_during_the_scan_reaches_a_client(
    big_project: Path, paced: PacedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    root = big_project

    def answered() -> dict | None:
        assert paced.proc.poll() is None, "the broker exited"
        try:
            return status_of(root)
        except Exception:
            return None

    # While the scan goes on (how soon is benchmarks/bench_broker.py's to measure).
    first = wait_for(answered, 10, "a status answer")
    assert first["scan"]["state"] in ("walking", "scanning")

    worker = Worker(cwd=root)
    try:
        assert worker.call("connect", root=str(root)) is True
        assert worker.call("load", name="mid", path=str(root / "zz" / "mid.py")) is True
        assert worker.call("get", name="mid", attr="DOUBLE") == 2
        scan = status_of(root)["scan"]
        assert scan["state"] == "scanning" and scan["scanned"] < scan["total"] == FILES, scan
        assert cli.main(["status", str(root)]) == 0
        # (The count moves on between the two answers: only the line's shape is the same.)
        assert re.search(rf"scanning [\d,]+ of {FILES:,} files", capsys.readouterr().out)

        # An edit the watcher reports, during the scan, before the scan reached the files.
        write(root / "zz" / "leaf.py", "VALUE = 5\n")
        assert worker.call("wait_value", name="mid", attr="DOUBLE", value=10, timeout=10) == 10
        # sync keeps its promise during the scan: the saves before it are seen after it.
        write(root / "zz" / "leaf.py", "VALUE = 7\n")
        assert worker.call("sync") is True
        assert worker.call("get", name="mid", attr="DOUBLE") == 14
        assert status_of(root)["scan"]["state"] == "scanning"  # all of it during the scan
    finally:
        worker.close()


def test_the_scan_finishes_with_every_file_and_leaves_no_lock_behind(
    big_project: Path, tmp_path: Path
) -> None:
    broker = PacedBroker(big_project, tmp_path / "broker.log", pace=0.0)
    try:
        wait_for(lambda: (s := _quiet_status(big_project)) and s["scan"]["state"] == "done", 60,
                 "the end of the scan")  # fmt: skip
        status = status_of(big_project)
        assert status["files"] == FILES
        # Each pNNN/mKK imports the module before it (and its package): static edges.
        assert status["graph"]["edges"] >= 2 * (MODULES - 3 - 100)
    finally:
        broker.stop()
    assert broker.proc.returncode == 0
    assert not lock_path(str(big_project)).exists()
    assert not [p for p in runtime_dir().iterdir() if p.suffix == ".lock"]


def _quiet_status(root: Path) -> dict | None:
    try:
        return status_of(root)
    except Exception:
        return None
