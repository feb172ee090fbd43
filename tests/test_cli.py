"""`relmod status`, `relmod graph` and `relmod-broker` arguments, against real brokers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_broker import BrokerProcess, child_env, write

from relmod import cli
from relmod._version import __version__
from relmod.codecache import cache_dir
from relmod.connfile import CONNECTION_VERSION, ConnectionInfo, connection_path
from relmod.connfile import write_connection_file as save_connection_file
from relmod.protocol import new_epoch, new_key
from relmod.server import cli as broker_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "leaf.py", "VALUE = 1\n")
    write(root / "mid.py", "import leaf\n")
    write(root / "pkg" / "__init__.py", "from mid import *\n")
    write(root / "lone.py", "X = (\n")  # broken from the start
    return root


@pytest.fixture
def broker(project: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(project, tmp_path / "broker.log").start()
    yield process
    process.stop()


def test_status_json_describes_the_live_broker(
    project: Path, broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", str(project / "pkg"), "--json"]) == 0  # found from a subfolder
    status = json.loads(capsys.readouterr().out)
    assert status["pid"] == broker.pid and status["root"] == str(project)
    assert status["files"] == 4 and status["graph"]["edges"] == 2
    assert status["watcher"]["backend"] in ("inotify", "watchfiles", "polling")
    assert status["endpoints"]["pub"] == broker.info["pub"]
    assert [b["path"] for b in status["broken"]] == [str(project / "lone.py")]
    assert status["dropped"]["total"] == 0 and status["request_errors"] == 0
    assert status["code_cache"] == cache_dir()  # the broker runs with this process's settings


def test_status_text_is_a_readable_summary(
    project: Path, broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project / "leaf.py", "VALUE = 2\n")
    assert cli.main(["status", str(project)]) == 0
    text = capsys.readouterr().out
    assert f"relmod broker {__version__} for {project}" in text
    assert f"pid {broker.pid}" in text
    assert "./lone.py line 1: SyntaxError" in text
    assert "messages dropped: none" in text
    folder = cache_dir()
    assert (f"code cache: {folder} (" if folder else "code cache: off in the broker") in text


def test_graph_prints_text_or_dot(
    project: Path, broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["graph", str(project)]) == 0
    text = capsys.readouterr().out
    assert "./mid.py\n    ./leaf.py\n" in text
    assert "./pkg/__init__.py\n    ./mid.py\n" in text
    assert cli.main(["graph", str(project), "--dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph relmod {")
    assert '"./mid.py" -> "./leaf.py";' in dot


def test_status_runs_as_a_command(project: Path, broker: BrokerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relmod.cli", "status", "--json"],
        cwd=project, env=child_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] == broker.pid


def test_no_broker_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"relmod: No relmod broker serves {tmp_path}")


def test_a_dead_brokers_file_is_one_clear_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    info = ConnectionInfo(
        version=CONNECTION_VERSION, root=str(project), pid=gone.pid, host=socket.gethostname(),
        epoch=new_epoch(), key=new_key().hex(), pub="ipc:///nowhere.pub",
        router="ipc:///nowhere.router", started=time.time(), watcher="polling",
        curve_server_public=None,
    )  # fmt: skip
    save_connection_file(connection_path(str(project)), info)
    assert cli.main(["graph", str(project)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(pid {gone.pid}) is not running" in err


def test_a_frozen_broker_times_out_with_one_line(
    project: Path, broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        assert cli.main(["status", str(project), "--timeout", "0.3"]) == 1
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not answer 'status' within 0.3 s" in err


def test_versions_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"relmod {__version__}"
    assert broker_cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"relmod-broker {__version__}"
    assert broker_cli.main(["--tcp", "nonsense"]) == 2
    assert broker_cli.main(["/no/such/folder"]) == 1
    assert cli.main(["status", "--timeout", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "--tcp takes HOST:PORT" in err[0] and "not a folder" in err[1]


def test_demo_says_when_it_is_not_available(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "relmod.demo", None)  # makes the import fail
    assert cli.main(["demo"]) == 1
    assert "not available" in capsys.readouterr().err
