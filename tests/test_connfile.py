"""The runtime folder, the connection file and the broker lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from relmod import connfile
from relmod.connfile import (
    IPC_PATH_MAX,
    BrokerLock,
    ConnectionInfo,
    connection_path,
    find_connection_file,
    ipc_endpoints,
    lock_path,
    pid_alive,
    read_connection_file,
    remove_stale_connection_file,
    root_id,
    runtime_dir,
    write_connection_file,
)
from relmod.errors import BrokerAlreadyRunning, ConnectionFileError

IS_ROOT = os.getuid() == 0


@pytest.fixture(autouse=True)
def _private_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    monkeypatch.setenv("RELMOD_RUNTIME_DIR", str(run))
    monkeypatch.delenv("RELMOD_BROKER", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return run


@pytest.fixture(params=[0o000, 0o477], ids=["umask-000", "umask-477"])
def any_umask(request: pytest.FixtureRequest) -> Iterator[None]:
    """Odd umasks: our modes must not depend on the user's (0o477 even takes the owner's read)."""
    old = os.umask(request.param)
    yield
    os.umask(old)


def info_for(root: Path | str, **changes: Any) -> ConnectionInfo:
    info = ConnectionInfo(
        version=1,
        root=os.path.realpath(root),
        pid=os.getpid(),
        host=socket.gethostname(),
        epoch="18c0-42-abcd",
        key="ab" * 32,
        pub="ipc:///run/x.pub",
        router="ipc:///run/x.router",
        started=1700000000.5,
        watcher="polling",
        curve_server_public=None,
    )
    info.update(changes)  # type: ignore[typeddict-item]
    return info


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- runtime folder ---------------------------------------------------------------------------


def test_runtime_dir_is_created_private(_private_runtime: Path, any_umask: None) -> None:
    assert runtime_dir() == _private_runtime
    assert mode(_private_runtime) == 0o700


def test_runtime_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELMOD_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    assert runtime_dir() == tmp_path / "relmod"
    assert mode(tmp_path / "relmod") == 0o700


@pytest.mark.parametrize("xdg", [None, "/nonexistent/run", "relative/run"])
def test_runtime_dir_falls_back_to_tmp(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELMOD_RUNTIME_DIR")
    if xdg is not None:
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    monkeypatch.setattr(connfile, "_FALLBACK_PARENT", str(tmp_path))  # keep the real /tmp clean

    assert runtime_dir() == tmp_path / f"relmod-{os.getuid()}"


def test_runtime_dir_open_to_others_is_refused(_private_runtime: Path) -> None:
    _private_runtime.mkdir(mode=0o755)
    os.chmod(_private_runtime, 0o755)

    with pytest.raises(ConnectionFileError, match=f"chmod 700 {_private_runtime}"):
        runtime_dir()


def test_runtime_dir_that_is_a_file_or_a_link_is_refused(
    _private_runtime: Path, tmp_path: Path
) -> None:
    _private_runtime.write_text("")
    with pytest.raises(ConnectionFileError, match="not a directory"):
        runtime_dir()

    _private_runtime.unlink()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    _private_runtime.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConnectionFileError, match="symbolic link"):
        runtime_dir()


@pytest.mark.skipif(not IS_ROOT, reason="only root can give a folder away")
def test_runtime_dir_of_another_user_is_refused(_private_runtime: Path) -> None:
    _private_runtime.mkdir(mode=0o700)
    os.chown(_private_runtime, 12345, -1)

    with pytest.raises(ConnectionFileError, match="belongs to uid 12345"):
        runtime_dir()


# --- names and endpoints ----------------------------------------------------------------------


def test_root_id_names_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "project")

    assert root_id(str(tmp_path / "link")) == root_id(str(tmp_path / "project"))
    assert root_id(str(tmp_path / "project")) != root_id(str(tmp_path))
    assert len(root_id("/x")) == 16 and int(root_id("/x"), 16) >= 0


def test_paths_live_in_the_runtime_dir(_private_runtime: Path) -> None:
    ident = root_id("/some/project")

    assert connection_path("/some/project") == _private_runtime / f"{ident}.json"
    assert lock_path("/some/project") == _private_runtime / f"{ident}.lock"


def _runtime_of_length(monkeypatch: pytest.MonkeyPatch, length: int) -> Path:
    """Point the runtime dir at a folder whose longest ipc path is ``length`` bytes."""
    base = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    name_length = length - len(str(base)) - len(f"//{root_id('/p')}.router")
    run = base / ("d" * name_length)
    monkeypatch.setenv("RELMOD_RUNTIME_DIR", str(run))
    return run


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


def test_ipc_endpoints_at_the_length_limit_bind(
    monkeypatch: pytest.MonkeyPatch, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    run = _runtime_of_length(monkeypatch, IPC_PATH_MAX)
    try:
        endpoints = ipc_endpoints("/p")
        assert endpoints is not None
        assert all(e.startswith(f"ipc://{run}/") for e in endpoints)
        for endpoint in endpoints:
            sock = context.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.bind(endpoint)  # zmq takes the path: the limit is not too strict
            finally:
                sock.close()
    finally:
        shutil.rmtree(run.parent)


def test_ipc_endpoints_over_the_length_limit_fall_back(
    monkeypatch: pytest.MonkeyPatch, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    run = _runtime_of_length(monkeypatch, IPC_PATH_MAX + 1)
    try:
        assert ipc_endpoints("/p") is None
        sock = context.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        try:  # and zmq would indeed refuse the path: the limit is not too lax
            with pytest.raises(zmq.ZMQError):
                sock.bind(f"ipc://{run}/{root_id('/p')}.router")
        finally:
            sock.close()
    finally:
        shutil.rmtree(run.parent)


# --- the connection file ----------------------------------------------------------------------


def test_write_then_read_round_trips_with_mode_0600(tmp_path: Path, any_umask: None) -> None:
    path = connection_path(str(tmp_path))
    info = info_for(tmp_path, curve_server_public="rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7")

    write_connection_file(path, info)

    assert mode(path) == 0o600
    assert read_connection_file(path) == info
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_write_replaces_atomically_and_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = connection_path(str(tmp_path))
    write_connection_file(path, info_for(tmp_path, epoch="old"))

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        write_connection_file(path, info_for(tmp_path, epoch="new"))
    monkeypatch.undo()

    assert read_connection_file(path)["epoch"] == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    write_connection_file(path, info_for(tmp_path, epoch="new"))
    assert read_connection_file(path)["epoch"] == "new"


def test_write_refuses_incomplete_info(tmp_path: Path) -> None:
    info = info_for(tmp_path)
    del info["key"]  # type: ignore[misc]

    with pytest.raises(ValueError, match="key"):
        write_connection_file(connection_path(str(tmp_path)), info)


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o620])
def test_read_refuses_a_file_open_to_others(tmp_path: Path, bad_mode: int) -> None:
    path = connection_path(str(tmp_path))
    write_connection_file(path, info_for(tmp_path))
    os.chmod(path, bad_mode)

    with pytest.raises(ConnectionFileError, match=f"mode {bad_mode:04o}.*Remove it"):
        read_connection_file(path)


@pytest.mark.skipif(not IS_ROOT, reason="only root can give a file away")
def test_read_refuses_a_file_of_another_user(tmp_path: Path) -> None:
    path = connection_path(str(tmp_path))
    write_connection_file(path, info_for(tmp_path))
    os.chown(path, 12345, -1)

    with pytest.raises(ConnectionFileError, match="belongs to uid 12345"):
        read_connection_file(path)


def _raw_file(tmp_path: Path, text: str | bytes) -> Path:
    path = connection_path(str(tmp_path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode() if isinstance(text, str) else text)
    os.close(fd)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        (b"{\xff}", "not valid JSON"),
        ("[1, 2]", "JSON list, not an object"),
    ],
)
def test_read_refuses_malformed_json(tmp_path: Path, text: str | bytes, words: str) -> None:
    with pytest.raises(ConnectionFileError, match=words):
        read_connection_file(_raw_file(tmp_path, text))


@pytest.mark.parametrize("field", list(ConnectionInfo.__annotations__))
def test_read_refuses_a_missing_field(tmp_path: Path, field: str) -> None:
    data = dict(info_for(tmp_path))
    del data[field]

    with pytest.raises(ConnectionFileError, match=f"lacks the field.*{field}"):
        read_connection_file(_raw_file(tmp_path, json.dumps(data)))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("pid", "123", "'pid' is str, not int"),
        ("version", True, "'version' is bool"),
        ("started", "yesterday", "'started' is str"),
        ("curve_server_public", 5, "'curve_server_public' is int"),
        ("root", None, "'root' is NoneType"),
        ("version", 2, "version 2"),
        ("key", "not hex", "key is not hex"),
        ("key", "abcd", "key has 2 bytes, where relmod keys have 16 to 64"),
        ("key", "ab" * 65, "key has 65 bytes"),
        ("root", "relative/root", "not an absolute path"),
    ],
)
def test_read_refuses_wrong_types(tmp_path: Path, field: str, value: Any, words: str) -> None:
    data = {**info_for(tmp_path), field: value}

    with pytest.raises(ConnectionFileError, match=words):
        read_connection_file(_raw_file(tmp_path, json.dumps(data)))


def test_read_accepts_an_int_start_time_and_ignores_unknown_fields(tmp_path: Path) -> None:
    data = {**info_for(tmp_path), "started": 1700000000, "future": "field"}

    info = read_connection_file(_raw_file(tmp_path, json.dumps(data)))

    assert info["started"] == 1700000000 and "future" not in info


def test_read_refuses_a_missing_file_or_a_link(tmp_path: Path) -> None:
    path = connection_path(str(tmp_path))
    with pytest.raises(ConnectionFileError, match="No connection file.*relmod-broker"):
        read_connection_file(path)

    real = tmp_path / "real.json"
    write_connection_file(real, info_for(tmp_path))
    path.symlink_to(real)
    with pytest.raises(ConnectionFileError, match="symbolic link"):
        read_connection_file(path)


# --- finding a broker -------------------------------------------------------------------------


def test_find_walks_up_to_the_nearest_project(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    (inner / "pkg" / "deep").mkdir(parents=True)
    write_connection_file(connection_path(str(outer)), info_for(outer))

    assert find_connection_file(str(inner / "pkg" / "deep")) == connection_path(str(outer))
    write_connection_file(connection_path(str(inner)), info_for(inner))
    assert find_connection_file(str(inner / "pkg" / "deep")) == connection_path(str(inner))
    assert find_connection_file(str(outer)) == connection_path(str(outer))
    assert find_connection_file(str(tmp_path)) is None


def test_relmod_broker_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_connection_file(connection_path(str(tmp_path)), info_for(tmp_path))
    chosen = tmp_path / "elsewhere.json"
    monkeypatch.setenv("RELMOD_BROKER", str(chosen))

    assert find_connection_file(str(tmp_path)) == chosen  # even though it does not exist


# --- processes and the lock -------------------------------------------------------------------


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # init: alive, even when signalling it is not permitted
    assert not pid_alive(dead_pid())
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_process_we_may_not_signal_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)  # what a non-root user gets for another's process

    assert pid_alive(12345)


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    with BrokerLock(str(tmp_path)) as held:
        assert held.held
        assert held.path.read_text().strip() == str(os.getpid())
        assert mode(held.path) == 0o600
        with pytest.raises(BrokerAlreadyRunning) as info:
            BrokerLock(str(tmp_path)).acquire()
        assert info.value.pid == os.getpid()
    assert not held.held

    with BrokerLock(str(tmp_path)):  # released: taken again
        pass


def test_a_lock_is_per_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    with BrokerLock(str(tmp_path / "a")), BrokerLock(str(tmp_path / "b")):
        pass


HOLDER = textwrap.dedent(
    """
    import sys
    from relmod.connfile import BrokerLock
    lock = BrokerLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A second live process holding the broker lock of tmp_path until killed."""
    env = {**os.environ, "PYTHONPATH": str(Path(connfile.__file__).parents[1])}
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "locked\n"
            yield proc
        finally:
            proc.kill()


def test_a_live_broker_elsewhere_holds_the_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(BrokerAlreadyRunning) as info:
        BrokerLock(str(tmp_path)).acquire()

    assert info.value.pid == holder.pid
    assert str(info.value) == (
        f"A relmod broker (pid {holder.pid}) already serves {os.path.realpath(tmp_path)}; "
        "stop it first or connect to it."
    )


def test_the_lock_of_a_killed_broker_is_taken(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()

    with BrokerLock(str(tmp_path)) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_a_stale_connection_file_is_removed(tmp_path: Path) -> None:
    path = connection_path(str(tmp_path))
    write_connection_file(path, info_for(tmp_path, pid=dead_pid()))

    assert remove_stale_connection_file(str(tmp_path)) is True
    assert not path.exists()
    assert remove_stale_connection_file(str(tmp_path)) is False


@pytest.mark.parametrize("changes", [{}, {"pid": 1}, {"host": "another-host", "pid": 999_999_999}])
def test_a_live_or_foreign_connection_file_is_kept(tmp_path: Path, changes: dict[str, Any]) -> None:
    path = connection_path(str(tmp_path))
    write_connection_file(path, info_for(tmp_path, **changes))

    assert remove_stale_connection_file(str(tmp_path)) is False
    assert path.exists()


def test_an_unusable_connection_file_is_removed(tmp_path: Path) -> None:
    path = _raw_file(tmp_path, "{broken")

    assert remove_stale_connection_file(str(tmp_path)) is True
    assert not path.exists()
