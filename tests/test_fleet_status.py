"""The fleet at a glance: `relmod status` per file and `relmod status --follow`, with a real broker
and several real client processes.

Each client reports what it runs (a moment after its modules go stale, reload or fail); the broker
counts, per file, the clients running its newest version, an older one, and those that failed,
and republishes their reloads and failures for `--follow`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Broker, LineWorker, child_env, wait_for

from relmod import cli
from relmod.server.fleet import Fleet

pytestmark = pytest.mark.timeout(90)

GOOD = "def value():\n    return 1\n"
FAILS = "def value():\n    return 2\nraise RuntimeError('boom')\n"  # fails at import, line 3
FIXED = "def value():\n    return 3\n"
SYNTAX = "def value():\n    return (\n"  # does not compile: line 2

WORKER = """
    import sys, relmod
    relmod.configure(on_error="keep")  # a worker: log the failure, keep the last good code
    relmod.connect()
    import app.user
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "sync":
            relmod.sync()  # every save made before now is marked stale here
        try:
            print(app.user.show(), flush=True)
        except Exception as err:
            print(type(err).__name__, flush=True)
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)  # an atomic save, as editors do


class Client(LineWorker):
    """A connected worker process: each line it reads makes it use app.fmt (through app.user)."""

    def __init__(self, root: Path) -> None:
        super().__init__(WORKER, root)
        assert self.read() == "ready"

    def use(self, *, sync: bool = True) -> str:
        """Use app.fmt (after catching up with every save made so far, unless ``sync`` is off)."""
        return self.ask("sync" if sync else "")


class Follower:
    """`relmod status --follow` in its own process; its lines arrive with the time they did."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relmod", "status", "--follow", str(root)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("following the relmod broker")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def expect(self, *parts: str, timeout: float = 10.0) -> tuple[float, str]:
        """The next line holding every part (earlier lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.seen:
                if all(part in entry[1] for part in parts):
                    self.seen.remove(entry)
                    return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"--follow printed no line with {parts}: {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


# -- the broker's table, alone ----------------------------------------------------------------


def run(path: str, digest: str, failed: str | None = None) -> dict[str, Any]:
    message = "RuntimeError: boom" if failed else None
    return {"path": path, "hash": digest, "version": 1, "failed": failed,
            "lineno": 3 if failed else None, "message": message}  # fmt: skip


def test_the_fleet_counts_per_file_and_forgets_a_client_that_left() -> None:
    fleet = Fleet(max_files=2)
    newest = {"/p/a.py": "new", "/p/b.py": "b"}.get
    fleet.update("h:1", [run("/p/a.py", "new"), run("/p/b.py", "b")], [], 0)
    fleet.update("h:2", [run("/p/a.py", "old")], [], 0)  # stale: an older version
    fleet.update("h:3", [run("/p/a.py", "old", failed="new")], [{"kind": "failed"}], 0)
    [row] = fleet.files(newest)  # b.py is the same everywhere: not listed
    assert (row["path"], row["clients"], row["newest"], row["older"], row["failed"]) == (
        "/p/a.py", 3, 1, 1, 1
    )  # fmt: skip
    assert row["errors"] == [{"lineno": 3, "message": "RuntimeError: boom", "clients": 1}]
    # A failure of a version that is no longer the newest counts as older (it will retry).
    assert fleet.files({"/p/a.py": "newer", "/p/b.py": "b"}.get)[0]["older"] == 3
    assert [client for client, _, _ in fleet.take_outbox()] == ["h:3"]
    assert fleet.take_outbox() == []

    fleet.update("h:1", [run("/p/c.py", "c")], [], 0)  # beyond max_files: refused, counted
    assert fleet.refused == 1
    for name in ("h:2", "h:3"):
        fleet.drop(name)
    assert fleet.files(newest) == [] and fleet.clients == 1


# -- real processes ---------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "fmt.py", GOOD)
    write(root / "app" / "user.py", "from app import fmt\ndef show():\n    return fmt.value()\n")
    return root


@pytest.fixture
def broker(project: Path) -> Iterator[Broker]:
    process = Broker(project).start()
    yield process
    process.stop()


@pytest.fixture
def clients(project: Path, broker: Broker) -> Iterator[list[Client]]:
    started: list[Client] = []
    try:
        for _ in range(3):
            started.append(Client(project))
        yield started
    finally:
        for client in started:
            if client.proc.poll() is None:
                client.close()


def status(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert cli.main(["status", str(project), *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if "--json" in args else out


def fleet_row(report: dict[str, Any], path: Path) -> dict[str, Any] | None:
    rows = [row for row in report["fleet"]["files"] if row["path"] == str(path)]
    return rows[0] if rows else None


def test_an_import_time_failure_in_every_client_shows_with_its_count_and_clears(
    project: Path, clients: list[Client], capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = project / "app" / "fmt.py"
    assert [c.use() for c in clients] == ["1"] * 3
    follower = Follower(project)
    try:
        saved = time.monotonic()
        write(fmt, FAILS)
        at, _ = follower.expect("saved ./app/fmt.py")
        assert at - saved < 1.0, f"--follow printed the save {at - saved:.2f} s after"
        # Each client uses the module: its reload fails, the last good version stays.
        assert [c.use() for c in clients] == ["1"] * 3
        pids = [c.proc.pid for c in clients]
        for pid in pids:
            at, line = follower.expect(
                f":{pid} failed: Cannot reload ./app/fmt.py: RuntimeError at line 3: boom."
            )
            assert "The last good version stays in use" in line
            assert at - saved < 1.0, f"--follow printed the failure {at - saved:.2f} s after"

        def failing() -> Any:
            report = status(project, capsys, "--json")
            row = fleet_row(report, fmt)
            return report if row is not None and row["failed"] == 3 else None

        report = wait_for(failing, 10, "three clients' failures in the status")
        row = fleet_row(report, fmt)
        assert row == {
            "path": str(fmt),
            "clients": 3,
            "newest": 0,
            "older": 0,
            "failed": 3,
            "errors": [{"lineno": 3, "message": "RuntimeError: boom", "clients": 3}],
        }
        assert report["broken_total"] == 1
        [broken] = report["broken"]
        assert broken["path"] == str(fmt) and broken["lineno"] == 3
        assert broken["message"] == "RuntimeError: boom"
        assert broken["clients_failed"] == 3 and broken["clients"] == 3
        text = status(project, capsys)
        assert "broken files: none" not in text
        assert "broken files (1):" in text
        assert "./app/fmt.py line 3: RuntimeError: boom (failed to reload in 3 of 3 clients" in text
        assert "3 of 3 clients failed to reload ./app/fmt.py: RuntimeError at line 3: boom" in text

        # A fixed save: every client reloads it, and the file is the same everywhere again.
        saved = time.monotonic()
        write(fmt, FIXED)
        follower.expect("saved ./app/fmt.py")
        assert [c.use() for c in clients] == ["3"] * 3
        for pid in pids:
            at, _ = follower.expect(f":{pid} reloaded ./app/fmt.py")
            assert at - saved < 1.0, f"--follow printed the reload {at - saved:.2f} s after"

        def cleared() -> Any:
            report = status(project, capsys, "--json")
            return report if not report["fleet"]["files"] and not report["broken"] else None

        report = wait_for(cleared, 10, "the failure to clear")
        assert report["broken_total"] == 0 and report["fleet"]["clients"] == 3
        text = status(project, capsys)
        assert "broken files: none" in text
        assert "file versions: the same in every client (3 reporting)" in text
    finally:
        assert follower.stop() == 0
    logs = [c.close() for c in clients]
    for log in logs:  # each worker's own log line names the file, the line and what follows
        assert f"Cannot reload {fmt}: RuntimeError at line 3: boom." in log
        assert "The last good version stays in use" in log


def test_a_client_that_reloaded_runs_the_newest_version_one_that_did_not_an_older_one(
    project: Path, clients: list[Client], capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = project / "app" / "fmt.py"
    assert [c.use() for c in clients] == ["1"] * 3
    write(fmt, FIXED)
    # Only the first client uses the module: it reloads; the others stay stale (lazy).
    assert clients[0].use() == "3"

    def counted() -> Any:
        row = fleet_row(status(project, capsys, "--json"), fmt)
        return row if row is not None and (row["newest"], row["older"]) == (1, 2) else None

    row = wait_for(counted, 10, "one client at the newest version, two at an older one")
    assert row["failed"] == 0 and row["clients"] == 3 and row["errors"] == []
    text = status(project, capsys)
    assert "./app/fmt.py: 1 of 3 clients run the newest version, 2 an older one, 0 failed" in text
    assert "broken files: none" in text
    # The other two catch up at their next use.
    assert [c.use() for c in clients[1:]] == ["3", "3"]
    wait_for(lambda: not status(project, capsys, "--json")["fleet"]["files"], 10, "all newest")


def test_a_client_that_stays_stale_says_which_version_it_runs_once_not_at_every_save(
    project: Path, clients: list[Client], capsys: pytest.CaptureFixture[str]
) -> None:
    """The first save makes each client tell the broker the version it runs (an older one);
    later saves mark it again and send no report of what it runs: only the periodic report
    (seq, stale count) goes, and a report of what it runs would have gone before it."""
    fmt = project / "app" / "fmt.py"
    assert [c.use() for c in clients] == ["1"] * 3
    write(fmt, FIXED)

    def older() -> Any:
        row = fleet_row(status(project, capsys, "--json"), fmt)
        return row if row is not None and (row["newest"], row["older"]) == (0, 3) else None

    wait_for(older, 10, "three clients at an older version")
    before = status(project, capsys, "--json")
    for value in (4, 5, 6):
        write(fmt, f"def value():\n    return {value}\n")
        seq = before["seq"] + value - 3
        wait_for(lambda s=seq: status(project, capsys, "--json")["seq"] == s, 10, f"seq {seq}")

    def caught_up() -> Any:
        report = status(project, capsys, "--json")
        rows = report["clients"]
        return (
            report if len(rows) == 3 and all(r["seq"] == before["seq"] + 3 for r in rows) else None
        )

    after = wait_for(caught_up, 10, "every client's report of the last save")
    assert after["requests"].get("running", 0) == before["requests"].get("running", 0)
    assert after["requests"]["report"] > before["requests"]["report"]
    assert [c.use() for c in clients] == ["6"] * 3  # the saves were all there


def test_a_broken_save_is_logged_by_each_client_with_its_file_and_line(
    project: Path, clients: list[Client], capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = project / "app" / "fmt.py"
    follower = Follower(project)
    try:
        write(fmt, SYNTAX)
        _, line = follower.expect("Cannot reload ./app/fmt.py: SyntaxError at line 2")
        assert "The last good version stays in use" in line
        wait_for(lambda: status(project, capsys, "--json")["broken"], 10, "the broken file")
        assert [c.use() for c in clients] == ["1"] * 3  # nothing reloads: the old code runs
    finally:
        assert follower.stop() == 0
    for log in [c.close() for c in clients]:
        assert f"Cannot reload {fmt}: SyntaxError at line 2:" in log, log
        assert "The last good version stays in use" in log


def test_follow_speaks_curve_to_a_tcp_broker(project: Path) -> None:
    from test_e2e_broker import _free_port_pair

    broker = Broker(project, "--tcp", f"127.0.0.1:{_free_port_pair()}").start()
    client = follower = None
    try:
        client = Client(project)
        follower = Follower(project)  # the broker's local key pair, as a client's feed uses
        write(project / "app" / "fmt.py", FAILS)
        follower.expect("saved ./app/fmt.py")
        assert client.use() == "1"
        follower.expect(f":{client.proc.pid} failed: Cannot reload ./app/fmt.py: RuntimeError")
    finally:
        if follower is not None:
            assert follower.stop() == 0
        if client is not None:
            client.close()
        broker.stop()
