"""What one peer can cost the broker, and answers that grow with the project.

Real broker processes: a graph of 100,000 edges comes out in pages no bigger than the payload
limit; so does every file's hash; 10,000 made-up runtime edges leave the broker's memory where it
was; a client's edges leave with it; a client whose process died leaves ``relmod status`` within
seconds; a lock file left by a killed broker is swept; an ``error`` reply ends a client's wait
at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.fakes import FakeBroker
from support import FileView, Worker, wait_for
from test_broker import BrokerProcess, Probe

from relmod import cli
from relmod.connfile import lock_path, runtime_dir
from relmod.protocol import MAX_PAYLOAD, PAGE_BYTES

pytestmark = pytest.mark.timeout(120)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- big answers come in pages ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 modules in a folder with a long name, each importing 100 others: 100,000 edges."""
    root = tmp_path_factory.mktemp("dense").resolve() / "proj"
    folder = root / ("a_package_folder_with_a_rather_long_name_" * 2)
    for index in range(1000):
        imports = "".join(f"import m{(index + k) % 1000:04d}\n" for k in range(1, 101))
        write(folder / f"m{index:04d}.py", imports)
    write(root / "run.py", f"import sys\nsys.path.insert(0, {str(folder)!r})\n")
    return root


@pytest.fixture
def dense_broker(dense: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(dense, tmp_path / "broker.log").start(60)
    yield process
    process.stop()


def test_a_graph_of_100000_edges_comes_in_pages(
    dense: Path, dense_broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = next(p for p in dense.iterdir() if p.is_dir())
    # The modules import each other by their folder: a client reports it on its sys.path.
    probe = Probe(dense_broker.info)
    try:
        assert probe.request("paths", {"paths": [str(folder)]}).kind == "ack"
        sizes: list[int] = []
        edges: list[list[object]] = []
        after = None
        while True:
            frames = probe.codec.encode("graph", {"after": after})
            probe.dealer.send_multipart(frames)
            raw = probe.dealer.recv_multipart()
            sizes.append(len(raw[0]))
            body = probe.codec.decode(raw).body
            edges += body["edges"]
            after = body["next"]
            if after is None:
                break
        assert body["total"] == len(edges) == 100_000
        assert len({(a, b) for a, b, _ in edges}) == 100_000
        assert len(sizes) > 10 and max(sizes) < MAX_PAYLOAD and max(sizes) < 2 * PAGE_BYTES
    finally:
        probe.close()
    assert cli.main(["graph", str(dense)]) == 0
    text = capsys.readouterr().out
    assert text.count("\n    ") == 100_000  # every edge, as an indented dependency line


def test_every_files_hash_comes_in_pages(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    folder = root / ("x" * 200)
    for index in range(8000):
        write(folder / f"module_{index:05d}.py", f"N = {index}\n")
    broker = BrokerProcess(root, tmp_path / "broker.log").start(60)
    probe = Probe(broker.info)
    try:
        first = probe.request("since", {"epoch": "another-broker", "seq": 0}).body
        assert first["full"] is True and first["next"] is not None
        view = FileView()
        hashes = view.learn(first)
        after, pages = first["next"], 1
        while after is not None:
            body = probe.request("hashes", {"after": after}).body
            hashes.update(view.learn(body))
            after, pages = body["next"], pages + 1
        assert len(hashes) == 8000 and pages >= 2
        assert all(digest is not None and len(digest) == 32 for digest in hashes.values())
    finally:
        probe.close()
        broker.stop()
    # A real client pages through the same answer when it connects.
    broker = BrokerProcess(root, tmp_path / "broker2.log").start(60)
    worker = Worker(cwd=root)
    try:
        assert worker.call("connect", root=str(root)) is True
        path = folder / "module_07999.py"
        assert worker.call("load", name="last", path=str(path)) is True
        write(path, "N = -1\n")
        assert worker.call("wait_value", name="last", attr="N", value=-1, timeout=10) == -1
    finally:
        worker.close()
        broker.stop()


# -- runtime edges -----------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "leaf.py", "VALUE = 1\n")
    write(root / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    write(root / "other.py", "X = 1\n")
    return root


@pytest.fixture
def broker(small: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(small, tmp_path / "broker.log").start()
    yield process
    process.stop()


def test_made_up_edges_cost_no_memory_and_real_ones_leave_with_their_client(
    small: Path, broker: BrokerProcess
) -> None:
    probe = Probe(broker.info)
    try:
        base = probe.request("status").body["status"]["graph"]["runtime_edges"]
        start = rss_kb(broker.pid)
        for batch in range(10):
            edges = [[f"{small}/made/up/{batch}/{i}/{'x' * 60}.py", f"{small}/leaf.py"]
                     for i in range(1000)]  # fmt: skip
            probe.send("edges", {"edges": edges})  # a note: no reply unless refused
        status = probe.request("status").body["status"]  # answered after the edges, in order
        assert status["refused"]["edges_untracked"] == 10_000
        assert status["graph"]["runtime_edges"] == base
        assert rss_kb(broker.pid) - start < 20 * 1024
        # Tracked files are taken, and dropped when the client that reported them goes.
        real = [[str(small / "other.py"), str(small / "leaf.py")]]
        probe.send("edges", {"edges": real})
        assert probe.request("status").body["status"]["graph"]["runtime_edges"] == base + 1
        assert probe.request("goodbye", {"client": "probe"}).kind == "ack"
        graph = probe.request("graph", {"after": None}).body["edges"]
        assert [str(small / "other.py"), str(small / "leaf.py"), ["runtime"]] not in graph
        # A peer that never said hello (or said goodbye) gets an error, not an ack.
        reply = probe.request("edges", {"edges": real})
        assert reply.kind == "error" and reply.body["request"] == "edges"
    finally:
        probe.close()


def test_a_client_whose_process_died_leaves_status_within_seconds(
    small: Path, broker: BrokerProcess
) -> None:
    worker = Worker(cwd=small)
    try:
        assert worker.call("connect", root=str(small)) is True
        worker.call("load", name="mid", path=str(small / "mid.py"))
        pid = worker.pid

        def clients() -> set[int]:
            status = cli.ask(broker.info, "status", {}, "status").body["status"]
            return {row["pid"] for row in status["clients"]}

        wait_for(lambda: pid in clients(), 10, "the client in status")
        worker.signal(signal.SIGKILL)
        worker.proc.wait(10)
        killed = time.monotonic()
        wait_for(lambda: pid not in clients(), 5, "the dead client to leave status")
        assert time.monotonic() - killed < 5
        # Its runtime edge (mid -> leaf, reported from what ran) went with it.
        graph = cli.ask(broker.info, "graph", {"after": None}, "graph").body["edges"]
        assert all("runtime" not in origins for _, _, origins in graph)
    finally:
        worker.close()


def test_a_lock_file_left_by_a_killed_broker_is_swept(small: Path, tmp_path: Path) -> None:
    first = BrokerProcess(small, tmp_path / "first.log").start()
    first.signal(signal.SIGKILL)
    assert lock_path(str(small)).exists()  # kill -9 leaves it
    other = (tmp_path / "other").resolve()
    write(other / "a.py", "")
    second = BrokerProcess(other, tmp_path / "second.log").start()
    try:
        assert not lock_path(str(small)).exists()
        assert [p.name for p in runtime_dir().glob("*.lock")] == [lock_path(str(other)).name]
    finally:
        second.stop()
    assert not list(runtime_dir().glob("*.lock"))


# -- error replies -------------------------------------------------------------------------------


def test_an_error_reply_ends_a_clients_wait_at_once(small: Path) -> None:
    fake = FakeBroker(small)
    worker = Worker(cwd=small)
    try:
        assert worker.call("connect", root=str(small)) is True
        fake.refuse = {"sync"}
        started = time.monotonic()
        assert worker.call("sync", timeout=20) is True  # checked the files itself instead
        assert time.monotonic() - started < 3  # not the 20 s the answer was waited for
        assert worker.call("status")["connected"]
    finally:
        worker.close()
        fake.close()
    assert os.path.exists(small / "leaf.py")


@pytest.mark.slow
def test_a_broker_on_80000_files_accepts_clients_that_follow_edits(tmp_path: Path) -> None:
    """80,000 files: every answer that grows with the project comes in pages, clients connect."""
    from support import Broker

    root = (tmp_path / "huge").resolve()
    for folder in range(400):
        sub = root / f"f{folder:03d}"
        sub.mkdir(parents=True)
        for index in range(200):
            (sub / f"m{index:03d}.py").write_text(f"V = {index}\n")
    write(root / "app.py", "from .f000.m000 import V\nVALUE = V + 1\n")
    broker = Broker(root).start(timeout=120)
    worker = Worker(cwd=root)
    try:
        assert worker.call("connect", root=str(root)) is True  # the pages keep it waiting
        worker.call("load", name="app", path=str(root / "app.py"))
        assert worker.call("get", name="app", attr="VALUE") == 1
        write(root / "f000" / "m000.py", "V = 41\n")
        assert worker.call("wait_value", name="app", attr="VALUE", value=42, timeout=30) == 42
        assert cli.main(["status", str(root), "--json"]) == 0
        assert cli.main(["graph", str(root)]) == 0  # every node, in pages
    finally:
        worker.close()
        broker.stop()
