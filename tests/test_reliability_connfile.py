"""Connection-file and lock faults, with the real broker and real client processes.

Each fault must give one clear sentence (naming what is wrong and what to do) and a safe outcome:
a file whose key may have leaked is refused, a dead broker's file is reported and then taken
over, a second broker is refused with the first one's pid, and a path another process holds never
leads a client to anyone but the real broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support import Broker, Worker, WorkerError, child_env

from relmod.connfile import connection_path, ipc_endpoints, lock_path, read_connection_file

pytestmark = pytest.mark.timeout(90)


def save(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    root.mkdir()
    save(root / "leaf.py", "VALUE = 1\n")
    return root


@pytest.fixture
def worker(project: Path) -> Iterator[Worker]:
    started = Worker(cwd=project)
    yield started
    started.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=child_env(), timeout=60
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def connect_error(worker: Worker, project: Path, timeout: float = 3.0) -> tuple[str, float]:
    """The error connect() raised, and how long it took."""
    started = time.monotonic()
    with pytest.raises(WorkerError) as info:
        worker.call("connect", root=str(project), timeout=timeout)
    return str(info.value).splitlines()[0], time.monotonic() - started


def serves(worker: Worker, project: Path, value: int) -> None:
    """The worker, connected, sees an edit without sync(): the broker serves it."""
    assert worker.call("connect", root=str(project)) is True
    worker.call("load", name="leaf", path=str(project / "leaf.py"))
    save(project / "leaf.py", f"VALUE = {value}\n")
    assert worker.call("wait_value", name="leaf", attr="VALUE", value=value, timeout=10) == value


# -- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["mode 0644", "mode 0660", "another owner"])
def test_a_connection_file_whose_key_may_have_leaked_is_refused_at_once(
    project: Path, worker: Worker, fault: str
) -> None:
    broker = Broker(project).start()
    try:
        path = connection_path(str(project))
        if fault == "another owner":
            os.chown(path, 4321, 4321)  # the tests run as root; as a user this is someone else
            words = "belongs to uid 4321"
        else:
            os.chmod(path, int(fault.split()[1], 8))
            words = f"open to other users ({fault})"
        message, took = connect_error(worker, project, timeout=10)
        assert words in message and "Remove it and" in message, message
        assert took < 5  # at once, not after connect()'s timeout
        status = run("relmod", "status", str(project))
        assert status.returncode == 1 and words in one_line(status.stderr)
    finally:
        broker.stop()


def test_a_runtime_folder_open_to_others_is_refused_by_the_client(
    project: Path, worker: Worker
) -> None:
    runtime = Path(os.environ["RELMOD_RUNTIME_DIR"])
    broker = Broker(project).start()
    try:
        runtime.chmod(0o755)
        message, _ = connect_error(worker, project)
        assert f"runtime folder {runtime} is open to other users (mode 0755)" in message
        assert f"chmod 700 {runtime}" in message
        status = run("relmod", "status", str(project))
        assert status.returncode == 1 and "open to other users" in one_line(status.stderr)
    finally:
        runtime.chmod(0o700)
        broker.stop()


def test_a_runtime_folder_open_to_others_is_refused_by_the_broker_in_one_line(
    project: Path,
) -> None:
    runtime = Path(os.environ["RELMOD_RUNTIME_DIR"])
    runtime.mkdir(exist_ok=True)
    runtime.chmod(0o755)
    try:
        second = run("relmod.server", str(project))
    finally:
        runtime.chmod(0o700)
    assert second.returncode == 1
    assert "open to other users (mode 0755)" in one_line(second.stderr)


# -- a dead broker's file, a second broker ------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_brokers_file_is_reported_then_taken_over(project: Path, tmp_path: Path) -> None:
    first = Broker(project).start()
    info = read_connection_file(connection_path(str(project)))
    first.kill()  # SIGKILL: the file stays behind
    first.stop()  # closes its stderr pipe
    assert read_connection_file(connection_path(str(project)))["pid"] == info["pid"]
    worker = Worker(cwd=project)
    try:
        message, _ = connect_error(worker, project)
        assert f"(pid {info['pid']}) is not running" in message, message
        assert f"relmod-broker {project}" in message
        status = run("relmod", "status", str(project))
        assert status.returncode == 1
        assert f"(pid {info['pid']}) is not running" in one_line(status.stderr)
        second = Broker(project).start()
        try:
            new = read_connection_file(connection_path(str(project)))
            assert new["pid"] == second.pid and new["epoch"] != info["epoch"]
            serves(worker, project, 2)
        finally:
            second.stop()
    finally:
        worker.close()


def test_a_second_broker_through_a_symlinked_path_is_refused_in_one_line(
    project: Path, tmp_path: Path, worker: Worker
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(project)
    broker = Broker(project).start()
    try:
        before = read_connection_file(connection_path(str(project)))
        second = run("relmod.server", str(alias))
        assert second.returncode == 1
        line = one_line(second.stderr)
        assert f"pid {broker.pid}" in line and str(project) in line, line
        assert read_connection_file(connection_path(str(project))) == before
        serves(worker, project, 3)  # the first broker is untouched
    finally:
        broker.stop()


# -- lock file, connection file and ipc paths taken by something else -------------------------


@pytest.mark.parametrize("what", ["lock symlink", "lock folder", "connection file folder"])
def test_a_lock_or_connection_file_replaced_by_something_else_is_one_clear_line(
    project: Path, tmp_path: Path, what: str
) -> None:
    from relmod.connfile import runtime_dir

    runtime_dir()  # create it, private
    target = lock_path(str(project)) if what.startswith("lock") else connection_path(str(project))
    if what == "lock symlink":
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
    broker = run("relmod.server", str(project))
    assert broker.returncode == 1
    assert "Traceback" not in broker.stderr, broker.stderr
    lines = [line for line in broker.stderr.splitlines() if line.startswith("relmod-broker: ")]
    assert len(lines) == 1, broker.stderr  # its one line (log lines may come around it)
    assert str(target) in lines[0] and "start the broker again" in lines[0], lines[0]
    assert not (tmp_path / "elsewhere").exists()  # the lock did not follow the link


def test_ipc_paths_held_by_another_process_never_reach_a_client(
    project: Path, worker: Worker
) -> None:
    # Another process of the same user bound both ipc paths before the broker started. The
    # broker binds them anyway (ZeroMQ replaces the socket files), and clients reach the broker.
    endpoints = ipc_endpoints(str(project))
    assert endpoints is not None
    context = zmq.Context()
    rogue_pub, rogue_router = context.socket(zmq.PUB), context.socket(zmq.ROUTER)
    rogue_pub.bind(endpoints[0])
    rogue_router.bind(endpoints[1])
    broker = Broker(project).start()
    try:
        info = read_connection_file(connection_path(str(project)))
        assert (info["pub"], info["router"]) == endpoints
        serves(worker, project, 4)
        assert worker.call("status")["broker_pid"] == broker.pid
        assert not rogue_router.poll(300)  # no client request ever went to the other process
    finally:
        broker.stop()
        rogue_pub.close(0)
        rogue_router.close(0)
        context.term()


def test_ipc_paths_taken_by_folders_are_refused_in_one_line(project: Path) -> None:
    # No fallback to clear-text TCP, which any local user could connect to.
    endpoints = ipc_endpoints(str(project))
    assert endpoints is not None
    for endpoint in endpoints:
        os.mkdir(endpoint[len("ipc://") :])
    done = subprocess.run(
        [sys.executable, "-m", "relmod.server", str(project), "--log-level", "ERROR"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    router = endpoints[1][len("ipc://") :]
    assert done.stderr.count("\n") == 1 and router in done.stderr, done.stderr
    assert "RELMOD_RUNTIME_DIR" in done.stderr and "tcp://" not in done.stderr
    assert not connection_path(str(project)).exists()
