"""A client on "another machine": no access to the project folder, sources from the broker by
content hash, a path map, and the broker over TCP with CURVE and client authentication."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import zmq.auth
from support import Broker, child_env, wait_for

import relmod
import relmod.workers
from relmod.client.connection import PathMap
from relmod.client.remote import (
    RemoteFeed,
    RemoteSources,
    authorize_client,
    connect_remote,
    create_client_key,
)
from relmod.client.session import default_client
from relmod.errors import BrokerNotFound
from relmod.sources import content_hash

pytestmark = pytest.mark.timeout(120)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)  # an atomic save, as editors do


# -- RemoteSources, with a fake broker behind fetch ------------------------------------------


class FakeBroker:
    """Answers fetches from a dict of hash -> bytes, counting them."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.asked: list[str] = []
        self.sources: RemoteSources | None = None

    def put(self, data: bytes) -> str:
        digest = content_hash(data)
        self.store[digest] = data
        return digest

    def fetch(self, digest: str, timeout: float) -> bytes | None:
        self.asked.append(digest)
        assert self.sources is not None
        self.sources.arrived(digest, self.store.get(digest))
        return self.sources.cached(digest)


@pytest.fixture
def fake() -> FakeBroker:
    broker = FakeBroker()
    broker.sources = RemoteSources(PathMap({"/srv/p": "/w/p"}), broker.fetch)
    return broker


def test_sources_list_files_and_folders_under_the_mapped_root(fake: FakeBroker) -> None:
    assert fake.sources is not None
    a = fake.put(b"A = 1\n")
    fake.sources.replace({"/srv/p/pkg/sub/a.py": a, "/srv/p/gone.py": None}, root="/srv/p")
    kind = fake.sources.kind
    assert kind("/w/p/pkg/sub/a.py") == "file"
    assert kind("/w/p/pkg/sub") == kind("/w/p/pkg") == kind("/w/p") == "folder"
    assert kind("/w") is None, "nothing above the project root"
    assert kind("/w/p/gone.py") is None
    assert kind("/srv/p/pkg/sub/a.py") is None, "broker paths are not local paths"


def test_sources_fetch_once_per_hash_and_follow_updates(fake: FakeBroker) -> None:
    sources = fake.sources
    assert sources is not None
    one, two = fake.put(b"X = 1\n"), fake.put(b"X = 2\n")
    sources.replace({"/srv/p/x.py": one, "/srv/p/y.py": one}, root="/srv/p")
    assert sources.read("/w/p/x.py") == sources.read("/w/p/y.py") == b"X = 1\n"
    assert fake.asked == [one], "same content, one fetch"
    sources.update({"/srv/p/x.py": two, "/srv/p/y.py": None, "/srv/p/new/z.py": one})
    assert sources.read("/w/p/x.py") == b"X = 2\n"
    assert sources.kind("/w/p/y.py") is None and sources.kind("/w/p/new") == "folder"
    with pytest.raises(FileNotFoundError):
        sources.read("/w/p/y.py")


def test_sources_reject_bytes_that_do_not_match_their_hash(fake: FakeBroker) -> None:
    sources = fake.sources
    assert sources is not None
    digest = content_hash(b"GOOD = 1\n")
    fake.store[digest] = b"EVIL = 1\n"
    sources.replace({"/srv/p/x.py": digest}, root="/srv/p")
    with pytest.raises(OSError, match="did not send"):
        sources.read("/w/p/x.py")
    assert sources.rejected == 1 and not sources.has(digest)


def test_sources_keep_at_most_cache_bytes(fake: FakeBroker) -> None:
    sources = RemoteSources(PathMap(), fake.fetch, cache_bytes=20)
    fake.sources = sources
    digests = [fake.put(f"V = {i:08d}\n".encode()) for i in range(3)]  # 13 bytes each
    sources.replace({f"/p/{i}.py": d for i, d in enumerate(digests)}, root="/p")
    for i in range(3):
        sources.read(f"/p/{i}.py")
    assert [sources.has(d) for d in digests] == [False, False, True]
    assert sources.read("/p/0.py") == b"V = 00000000\n"  # fetched again


# -- keys -------------------------------------------------------------------------------------


def test_client_keys_are_private_and_only_the_public_half_is_authorised(tmp_path: Path) -> None:
    secret, public = create_client_key(tmp_path / "keys", "w1")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(secret)[1] is not None
    assert zmq.auth.load_certificate(public)[1] is None
    with pytest.raises(FileExistsError):
        create_client_key(tmp_path / "keys", "w1")
    with pytest.raises(ValueError, match="secret key"):
        authorize_client(secret, str(tmp_path))
    listed = authorize_client(public, str(tmp_path))
    assert listed.parent.name.endswith(".clients") and listed.read_bytes() == public.read_bytes()


# -- end to end: a real broker over TCP with CURVE ---------------------------------------------


def free_port_pair() -> int:
    """A port P such that P and P + 1 are free on 127.0.0.1 (the broker binds both)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        if port + 1 < 65535:
            return int(port)
    raise AssertionError("no free pair of ports")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "broker_machine" / "proj").resolve()
    write(root / "leaf.py", "VALUE = 1\n\ndef fail():\n    raise ValueError('from leaf')\n")
    write(root / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    write(
        root / "tasks.py",
        "import os\nfrom . import leaf\n\ndef probe():\n"
        "    return os.getpid(), leaf.VALUE\n\ndef value():\n    return leaf.VALUE\n",
    )
    return root


@pytest.fixture
def tcp_broker(project: Path) -> Iterator[Broker]:
    broker = Broker(project, "--tcp", f"127.0.0.1:{free_port_pair()}").start()
    yield broker
    broker.stop()


@pytest.fixture
def worker_machine(project: Path, tcp_broker: Broker, tmp_path: Path) -> dict[str, Path]:
    """What a worker machine holds: a copy of the connection file and its own key."""
    from relmod.connfile import connection_path

    home = tmp_path / "worker_machine"
    home.mkdir()
    connfile = home / "proj.json"
    shutil.copyfile(connection_path(str(project)), connfile)
    os.chmod(connfile, 0o600)
    secret, public = create_client_key(home / "keys", "w1")
    authorize_client(public, str(project))  # on the broker's machine; no restart needed
    view = home / "proj"  # where the worker sees the project: nothing there on its disk
    return {"connfile": connfile, "key": secret, "view": view}


def test_a_client_without_the_project_on_disk_runs_and_follows_it(
    project: Path, worker_machine: dict[str, Path]
) -> None:
    view = worker_machine["view"]
    assert not view.exists()
    feed = connect_remote(
        worker_machine["connfile"],
        path_map={str(project): str(view)},
        client_key=worker_machine["key"],
        timeout=10,
    )
    assert isinstance(feed, RemoteFeed) and feed.status()["connected"]
    mid = relmod.at(str(view / "mid.py"))  # a relative import inside it: folders come too
    assert mid.DOUBLE == 2
    assert mid.__file__ == str(view / "mid.py")
    fetched = feed.sources.fetched
    assert fetched == 2

    write(project / "leaf.py", "VALUE = 21\n\ndef fail():\n    raise ValueError('from leaf')\n")
    assert wait_for(lambda: mid.DOUBLE == 42, 10, "the edit to reach the remote client")
    assert feed.sources.fetched == fetched + 1, "only the changed file was fetched"

    leaf = relmod.at(str(view / "leaf.py"))
    try:
        leaf.fail()
    except ValueError:
        shown = traceback.format_exc()
    assert "raise ValueError('from leaf')" in shown, "tracebacks show the fetched source"

    write(project / "leaf.py", "VALUE = (\n")  # broken: the broker never serves it
    relmod.sync()
    assert mid.DOUBLE == 42 and leaf.VALUE == 21
    write(project / "leaf.py", "VALUE = 5\n")
    assert wait_for(lambda: mid.DOUBLE == 10, 10, "the fixed save to reach the remote client")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_remote_process_pool_follows_edits(
    project: Path, worker_machine: dict[str, Path], method: str
) -> None:
    view = worker_machine["view"]
    connect_remote(
        worker_machine["connfile"],
        path_map={str(project): str(view)},
        client_key=worker_machine["key"],
        timeout=10,
    )
    relmod.toplevel("tasks", str(view / "tasks.py"))
    import tasks

    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=context, **relmod.workers.pool_options()) as pool:
        assert {pool.submit(tasks.probe).result(60)[1] for _ in range(4)} == {1}
        write(project / "leaf.py", "VALUE = 7\n")
        relmod.sync()

        def every_worker_has_seven() -> bool:
            results = [pool.submit(tasks.probe) for _ in range(6)]
            return all(f.result(30)[1] == 7 for f in results)

        assert wait_for(every_worker_has_seven, 20, "the pool to run the new leaf")


def test_the_worker_entry_runs_on_a_remote_machine(
    project: Path, worker_machine: dict[str, Path]
) -> None:
    view = worker_machine["view"]
    argv = [
        sys.executable, "-m", "relmod.workers", "--remote",
        "--connection-file", str(worker_machine["connfile"]),
        "--client-key", str(worker_machine["key"]),
        "--path-map", f"{project}={view}",
        f"{view}/tasks.py:value", "--every", "0.05",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    errors: list[str] = []
    readers = [
        threading.Thread(target=lambda: lines.extend(proc.stdout or ())),
        threading.Thread(target=lambda: errors.extend(proc.stderr or ())),
    ]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: any(line.endswith("-> 1\n") for line in lines), 30, f"1: {errors}")
        write(project / "leaf.py", "VALUE = 2\n")
        wait_for(lambda: any(line.endswith("-> 2\n") for line in lines), 30, f"2: {errors}")
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        for reader in readers:
            reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert any("connected to the relmod broker" in line for line in errors)


def test_a_client_whose_key_is_not_listed_is_refused(
    project: Path, worker_machine: dict[str, Path], tmp_path: Path
) -> None:
    stranger, _public = create_client_key(tmp_path / "stranger", "s")
    start = time.monotonic()
    with pytest.raises(BrokerNotFound, match="refused this client's CURVE key"):
        connect_remote(
            worker_machine["connfile"],
            path_map={str(project): str(worker_machine["view"])},
            client_key=stranger,
            timeout=2,
        )
    assert time.monotonic() - start < 10
    assert default_client().feed is None or not isinstance(default_client().feed, RemoteFeed)


def test_a_curve_broker_without_a_client_key_is_a_clear_error(
    project: Path, worker_machine: dict[str, Path]
) -> None:
    with pytest.raises(BrokerNotFound, match="uses CURVE"):
        connect_remote(worker_machine["connfile"], timeout=2)
