"""End to end: a real broker, several real client processes, real edits on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Broker, Worker, broker_status, child_env, wait_for

pytestmark = pytest.mark.timeout(120)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)  # an atomic save, as editors do
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root / "leaf.py", "VALUE = 1\n")
    write(root / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    write(root / "other.py", "OTHER = 'o'\n")
    return root.resolve()


@pytest.fixture
def broker(project: Path) -> Iterator[Broker]:
    b = Broker(project).start()
    yield b
    b.stop()


@pytest.fixture
def workers(project: Path, broker: Broker) -> Iterator[list[Worker]]:
    started = [Worker(cwd=project) for _ in range(3)]
    for w in started:
        assert w.call("connect", root=str(project)) is True
        w.call("load", name="mid", path=str(project / "mid.py"))
        w.call("load", name="leaf", path=str(project / "leaf.py"))
        w.call("load", name="other", path=str(project / "other.py"))
        assert w.call("get", name="mid", attr="DOUBLE") == 2
    yield started
    for w in started:
        w.close()


def test_an_edit_reaches_every_client_and_only_dependents(
    project: Path, workers: list[Worker]
) -> None:
    write(project / "leaf.py", "VALUE = 21\n")
    for w in workers:
        # No sync: the broker's invalidation alone must mark the module stale.
        assert wait_for(lambda w=w: w.call("stale", name="mid"), 10, "mid stale in every client")
        assert w.call("stale", name="other") is False
        assert w.call("get", name="mid", attr="DOUBLE") == 42
        assert w.call("status")["feed"] == "broker"


def test_touch_and_identical_saves_reach_no_client(project: Path, workers: list[Worker]) -> None:
    leaf = project / "leaf.py"
    os.utime(leaf, None)
    write(leaf, leaf.read_text())
    for w in workers:
        w.call("sync")
        assert w.call("stale", name="leaf") is False
        assert w.call("stale", name="mid") is False
        assert w.call("status")["invalidations"] == 0


def test_a_broken_save_keeps_last_good_code_and_the_fix_reloads(
    project: Path, broker: Broker, workers: list[Worker]
) -> None:
    for w in workers:
        w.call("configure", on_error="keep")
    write(project / "leaf.py", "VALUE = (\n")
    for w in workers:
        w.call("sync")
        assert w.call("get", name="mid", attr="DOUBLE") == 2
        broken = w.call("status")["broken"]
        assert str(project / "leaf.py") in broken
    out = subprocess.run(
        [sys.executable, "-m", "relmod", "status", str(project), "--json"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert str(project / "leaf.py") in json.dumps(json.loads(out.stdout)["broken"])
    write(project / "leaf.py", "VALUE = 5\n")
    for w in workers:
        w.call("sync")
        assert w.call("get", name="mid", attr="DOUBLE") == 10
        assert w.call("status")["broken"] == {}


@pytest.mark.parametrize("shared_cache", [True, False], ids=["shared", "apart"])
def test_a_client_reloads_an_edit_with_the_code_the_broker_compiled(
    project: Path, tmp_path: Path, shared_cache: bool
) -> None:
    """The broker compiles every edit to check it; a client that shares its code cache (same
    user, Python and RELMOD_CACHE_DIR) reloads the edit without compiling it again, and the
    entry of the version it replaces is gone. With the caches apart, the same client compiles
    it: the count below does see compiles."""
    from relmod.codecache import cached_file
    from relmod.sources import content_hash

    cache = tmp_path / "cache"
    broker_cache = cache if shared_cache else tmp_path / "broker-cache"
    broker = Broker(project, env=child_env(RELMOD_CACHE_DIR=str(broker_cache))).start()
    worker = Worker(env=child_env(RELMOD_CACHE_DIR=str(cache)), cwd=project)
    try:
        assert worker.call("connect", root=str(project)) is True
        worker.call("load", name="mid", path=str(project / "mid.py"))
        assert worker.call("get", name="mid", attr="DOUBLE") == 2
        worker.call("count_compiles")
        leaf = project / "leaf.py"
        before = content_hash(leaf.read_bytes())
        write(leaf, "VALUE = 21\n")
        worker.call("sync")  # the broker answers after the turn that published and cached it
        assert worker.call("stale", name="mid") is True
        assert worker.call("get", name="mid", attr="DOUBLE") == 42
        compiled = worker.call("compiled")
        assert compiled == ([] if shared_cache else [str(leaf)])
        os.environ["RELMOD_CACHE_DIR"] = str(cache)  # (restored after the test)
        assert cached_file(str(leaf), content_hash(leaf.read_bytes())) is not None
        assert (cached_file(str(leaf), before) is None) == shared_cache
    finally:
        worker.close()
        broker.stop()


def test_broker_kill_edits_while_down_and_restart_lose_nothing(
    project: Path, broker: Broker, workers: list[Worker]
) -> None:
    broker.kill(signal.SIGKILL)
    write(project / "leaf.py", "VALUE = 7\n")
    for w in workers:
        # Without a broker the client falls back to watching files itself.
        assert w.call("wait_value", name="mid", attr="DOUBLE", value=14, timeout=20) == 14
        assert w.call("status")["fallback"] is True
    restarted = Broker(project).start()
    try:
        write(project / "leaf.py", "VALUE = 8\n")
        for w in workers:
            wait_for(lambda w=w: w.call("status")["connected"], 20, "the client to reconnect")
            w.call("sync")
            assert w.call("get", name="mid", attr="DOUBLE") == 16
            assert w.call("status")["fallback"] is False
    finally:
        restarted.stop()


def test_a_stopped_client_whose_queue_overflowed_resynchronises(
    project: Path, tmp_path: Path
) -> None:
    # A tiny queue and a flood of heartbeats: the stopped client's queue must overflow.
    env = child_env(RELMOD_HWM="4", RELMOD_HEARTBEAT="0.002")
    broker = Broker(project, env=env).start()
    w = Worker(env=env, cwd=project)
    try:
        w.call("connect", root=str(project))
        w.call("load", name="leaf", path=str(project / "leaf.py"))
        w.call("sync")
        w.signal(signal.SIGSTOP)
        for i in range(40):
            write(project / "leaf.py", f"VALUE = {100 + i}\n")
            time.sleep(0.03)
        time.sleep(1.0)  # heartbeats keep coming: far more than the queue holds
        w.signal(signal.SIGCONT)
        assert w.call("wait_value", name="leaf", attr="VALUE", value=139, timeout=20) == 139
        # The lost publications are noticed (a gap, or a heartbeat ahead) and repaired.
        wait_for(lambda: w.call("status")["resyncs"] >= 2, 10, "a resync after the overflow")
    finally:
        w.signal(signal.SIGCONT)
        w.close()
        broker.stop()


def test_fork_and_spawn_children_stay_in_sync(
    project: Path, broker: Broker, tmp_path: Path
) -> None:
    script = tmp_path / "children.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multiprocessing as mp, sys, time
            import relmod

            ROOT = {str(project)!r}

            def child(q, ready):
                import relmod
                leaf = relmod.at(ROOT + '/leaf.py')
                ready.put(leaf.VALUE)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if leaf.VALUE == 99:
                        q.put('saw 99'); return
                    time.sleep(0.01)
                q.put('stale: %r' % leaf.VALUE)

            if __name__ == '__main__':
                relmod.connect(ROOT)
                leaf = relmod.at(ROOT + '/leaf.py')
                method = sys.argv[1]
                ctx = mp.get_context(method)
                q, ready = ctx.Queue(), ctx.Queue()
                p = ctx.Process(target=child, args=(q, ready))
                p.start()
                print('ready', ready.get(timeout=30), flush=True)
                sys.stdin.readline()
                print(q.get(timeout=30), flush=True)
                p.join(10)
                print('exit', p.exitcode, flush=True)
            """
        )
    )
    for method in ("fork", "spawn"):
        write(project / "leaf.py", "VALUE = 1\n")
        proc = subprocess.Popen(
            [sys.executable, str(script), method],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=project,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().split() == ["ready", "1"], (
            proc.stderr.read() if proc.stderr else ""
        )
        time.sleep(0.2)  # let the child's feed connect before the edit
        write(project / "leaf.py", "VALUE = 99\n")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert out.split() == ["saw", "99", "exit", "0"], (method, out, err)
        assert proc.returncode == 0


def test_interpreter_exit_never_hangs_even_with_the_broker_frozen(
    project: Path, broker: Broker
) -> None:
    w = Worker(cwd=project)
    w.call("connect", root=str(project))
    w.call("load", name="leaf", path=str(project / "leaf.py"))
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert w.close(timeout=15) == 0
        assert time.monotonic() - started < 15
    finally:
        os.kill(broker.pid, signal.SIGCONT)


def test_connect_without_a_broker_is_a_clear_error(tmp_path: Path) -> None:
    w = Worker(cwd=tmp_path)
    try:
        with pytest.raises(Exception, match="No relmod broker serves"):
            w.call("connect", root=str(tmp_path))
    finally:
        w.close()


def test_connect_to_a_folder_that_does_not_exist_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relmod
    from relmod.errors import BrokerNotFound

    monkeypatch.delenv("RELMOD_BROKER", raising=False)
    missing = tmp_path / "typo"
    with pytest.raises(BrokerNotFound, match="there is no such folder") as caught:
        relmod.connect(str(missing))
    assert str(missing) in str(caught.value)


# -- a broker on TCP (CURVE): the same connection path as ipc ------------------------------------


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are free on 127.0.0.1 (the broker binds both)."""
    import socket

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        if port + 1 < 65535:
            return port
    raise AssertionError("no free pair of ports")


def test_connect_status_and_graph_speak_curve_to_a_tcp_broker(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import relmod
    from relmod import cli
    from relmod.connfile import connection_path, read_connection_file
    from relmod.curve import local_key_path

    broker = Broker(project, "--tcp", f"127.0.0.1:{_free_port_pair()}").start()
    try:
        info = read_connection_file(connection_path(str(project)))
        assert info["curve_server_public"] and info["router"].startswith("tcp://")
        assert oct(local_key_path(str(project)).stat().st_mode & 0o777) == "0o600"

        # The library: no key given, none in the environment; the broker's local pair is used.
        os.environ.pop("RELMOD_CLIENT_KEY", None)
        conn = relmod.connect(str(project), timeout=10)
        assert conn.status()["connected"] and conn.info["pid"] == broker.pid
        mid = relmod.at(str(project / "mid.py"))
        assert mid.DOUBLE == 2
        write(project / "leaf.py", "VALUE = 21\n")
        relmod.sync()
        assert mid.DOUBLE == 42

        # The command line, through the same sockets.
        capsys.readouterr()
        assert cli.main(["status", str(project), "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["endpoints"]["curve"] is True and status["pid"] == broker.pid
        assert status["clients_total"] >= 1
        assert cli.main(["graph", str(project)]) == 0
        assert "mid.py" in capsys.readouterr().out
    finally:
        broker.stop()
    assert not local_key_path(str(project)).exists(), "the local key pair leaves with the broker"


def test_a_change_affecting_3000_modules_reaches_a_client_by_file_ids(tmp_path: Path) -> None:
    """A save of a module 3,000 others import (inside a function: this process never ran
    those imports, so only the broker's graph knows the edges) marks them all stale in a real
    client, from one invalidation that names them by id; a module loaded after the client
    connected is reached too, and a client that joins later (a fresh table) as well."""
    root = (tmp_path / "wide").resolve()
    count = 3000
    write(root / "core.py", "VALUE = 1\n")
    for index in range(count):
        write(
            root / "mods" / f"m{index:04d}.py",
            f"def value():\n    from ..core import VALUE\n    return VALUE + {index}\n",
        )
    imports = "".join(f"from .mods import m{index:04d}\n" for index in range(count))
    write(root / "every.py", imports)
    write(root / "late.py", "def value():\n    from .core import VALUE\n    return VALUE\n")
    broker = Broker(root).start(timeout=60)
    early, joiner = Worker(cwd=root), Worker(cwd=root)
    try:
        assert early.call("connect", root=str(root)) is True
        early.call("load", name="every", path=str(root / "every.py"))  # 3,001 modules
        for name in ("m0000", "m1234", "m2999"):
            early.call("load", name=name, path=str(root / "mods" / f"{name}.py"))
        early.call("load", name="late", path=str(root / "late.py"))  # after the id table came
        assert joiner.call("connect", root=str(root)) is True
        joiner.call("load", name="m1234", path=str(root / "mods" / "m1234.py"))
        before = early.call("status")

        write(root / "core.py", "VALUE = 2\n")
        for worker, names in ((early, ("m0000", "m1234", "m2999", "late")), (joiner, ("m1234",))):
            for name in names:  # no sync(): the invalidation alone marks them
                wait_for(lambda w=worker, n=name: w.call("stale", name=n), 15, f"{name} stale")
        # The marks land while the feed thread is still applying the message (3,004 of them):
        # its counters move once it is done.
        wait_for(lambda: early.call("status")["seq"] > before["seq"], 15, "the message applied")
        after = early.call("status")
        assert after["invalidations"] == before["invalidations"] + 1  # one message did it
        assert after["drop_reasons"] == {} and after["dropped"] == before["dropped"]
        assert after["resyncs"] == before["resyncs"]  # nothing was missed or refused
        published = broker_status(root)["recent"][0]
        assert published["changed"] == [str(root / "core.py")]
        assert published["affected"] == count + 3  # the modules, core, every and late
    finally:
        early.close()
        joiner.close()
        broker.stop()
