"""The real broker process, spoken to over raw ZeroMQ sockets as a client would.

Each test starts ``python -m relmod.server ROOT`` on a small temporary project, waits for its
connection file, and talks to it with a SUB and a DEALER socket and a client-side Codec. Waits
have deadlines; "nothing was published" is shown by a sync barrier and a later heartbeat whose
sequence number did not move.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from support import FileView, child_env, wait_for

from relmod.connfile import (
    ConnectionInfo,
    connection_path,
    read_connection_file,
    root_id,
    runtime_dir,
)
from relmod.protocol import (
    MAX_PAYLOAD,
    VERSION,
    Codec,
    Message,
    configure_socket,
    new_key,
    pack_ids,
    unpack_ids,
)
from relmod.sources import content_hash

pytestmark = pytest.mark.timeout(60)


class BrokerProcess:
    """A real broker serving ``root``; its stderr goes to a file for the test to read."""

    def __init__(self, root: Path, log: Path, *args: str) -> None:
        self.root = root
        self.log = log
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, *, scanned: bool = True) -> BrokerProcess:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relmod.server", str(self.root), *self.args],
                env=child_env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        proc = self.proc

        def ready() -> bool:
            assert proc.poll() is None, f"the broker exited:\n{self.stderr()}"
            try:
                return read_connection_file(connection_path(str(self.root)))["pid"] == proc.pid
            except Exception:
                return False

        wait_for(ready, timeout, "the broker's connection file")
        if scanned:
            wait_for(self.scanned, timeout, "the broker's first scan")
        return self

    def scanned(self) -> bool:
        """Whether the first scan (compile checks included) is over."""
        from relmod.cli import ask

        if self.info["curve_server_public"] is not None:
            return True  # asking needs a client key; such tests wait for what they need
        status = ask(self.info, "status", {}, "status").body["status"]
        return bool(status["scan"]["state"] == "done")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def info(self) -> ConnectionInfo:
        return read_connection_file(connection_path(str(self.root)))

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        """Send a signal and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Probe:
    """A raw client: a SUB and a DEALER socket and a client Codec."""

    def __init__(self, info: ConnectionInfo, codec: Codec | None = None) -> None:
        self.info = info
        self.codec = codec or Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.dealer = self.context.socket(zmq.DEALER)
        for sock in (self.sub, self.dealer):
            configure_socket(sock)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(info["pub"])
        self.dealer.connect(info["router"])
        # The broker answers a hello with an early heartbeat, which shows the SUB is live.
        self.welcome = self.request(
            "hello", {"client": "probe", "pid": os.getpid(), "host": "test", "argv": "pytest"}
        )
        self.first_heartbeat = self.next("heartbeat", timeout=10)
        self.view = FileView()  # the file ids, learned as a client learns them
        self.view.full_table(self.request)

    def close(self) -> None:
        self.sub.close(0)
        self.dealer.close(0)
        self.context.term()

    def send(self, kind: str, body: dict[str, Any]) -> None:
        self.dealer.send_multipart(self.codec.encode(kind, body))

    def reply(self, timeout: float = 5.0) -> Message | None:
        if not self.dealer.poll(int(timeout * 1000)):
            return None
        return self.codec.decode(self.dealer.recv_multipart())

    def request(
        self, kind: str, body: dict[str, Any] | None = None, timeout: float = 10
    ) -> Message:
        self.send(kind, body or {})
        reply = self.reply(timeout)
        assert reply is not None, f"no reply to {kind!r} within {timeout}s"
        return reply

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.request("status").body["status"]
        return status

    def next(self, *kinds: str, timeout: float = 10.0) -> Message:
        """The next publication of one of ``kinds`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(int(left * 1000) + 1):
                message = self.codec.decode(self.sub.recv_multipart())
                if message.kind in kinds:
                    return message
        raise AssertionError(f"no {kinds} publication within {timeout}s")

    def sync(self) -> int:
        reply = self.request("sync")
        assert reply.kind == "synced", reply
        seq: int = reply.body["seq"]
        return seq


def write(path: Path, text: str) -> None:
    """Save the way most editors do: write a temporary file, rename it over the old one.

    An in-place write truncates first, and a broker reading in between sees an empty file;
    tests that count publications exactly use atomic saves (one test saves in place).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "leaf.py", "VALUE = 1\n")
    write(root / "mid.py", "import leaf\nDOUBLE = leaf.VALUE * 2\n")
    write(root / "top.py", "from mid import DOUBLE\n")
    write(root / "other.py", "OTHER = 'o'\n")
    return root


@pytest.fixture
def broker(project: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(project, tmp_path / "broker.log").start()
    yield process
    process.stop()


@pytest.fixture
def probe(broker: BrokerProcess) -> Iterator[Probe]:
    client = Probe(broker.info)
    yield client
    client.close()


def assert_nothing_published(probe: Probe, seq: int) -> None:
    """A sync answers with ``seq``, no change arrives, and the next heartbeat still says ``seq``."""
    assert probe.sync() == seq
    while True:
        message = probe.next("heartbeat", "invalidate", "broken", timeout=5)
        assert message.kind == "heartbeat", f"unexpected publication {message}"
        if message.counter > probe.first_heartbeat.counter:
            assert message.body["seq"] == seq
            break
    assert probe.sync() == seq


# -- invalidations --------------------------------------------------------------------------------


def test_an_edit_invalidates_the_file_and_its_dependents_only(project: Path, probe: Probe) -> None:
    welcome = probe.welcome
    assert welcome.kind == "welcome"
    assert welcome.body["root"] == str(project) and welcome.body["seq"] == 0
    (project / "leaf.py").write_text("VALUE = 21\n")  # saved in place
    message = probe.next("invalidate")
    names = {str(project / n) for n in ("leaf.py", "mid.py", "top.py")}
    assert probe.view.changed(message.body) == [str(project / "leaf.py")]
    assert probe.view.affected(message.body) == names
    leaf_hash = content_hash(b"VALUE = 21\n")
    assert probe.view.learn(message.body) == {str(project / "leaf.py"): leaf_hash}
    assert message.body["epoch"] == probe.info["epoch"] and message.body["seq"] == 1
    assert message.body["names"] == []  # every id was in the table the probe read

    write(project / "other.py", "OTHER = 'p'\n")
    message = probe.next("invalidate")
    assert probe.view.affected(message.body) == {str(project / "other.py")}
    assert message.body["seq"] == 2


def test_touch_identical_save_and_identical_rename_publish_nothing(
    project: Path, probe: Probe
) -> None:
    leaf = project / "leaf.py"
    os.utime(leaf, None)  # touch
    leaf.write_text(leaf.read_text())  # identical save
    temp = project / "leaf.py.tmp"
    temp.write_text(leaf.read_text())
    os.replace(temp, leaf)  # an editor's atomic save of identical content
    assert_nothing_published(probe, 0)


def test_a_broken_save_is_announced_and_the_fix_invalidates(project: Path, probe: Probe) -> None:
    leaf = str(project / "leaf.py")
    good = content_hash(b"VALUE = 1\n")
    write(project / "leaf.py", "VALUE = 1\nVALUE = (\n")
    broken = probe.next("broken", "invalidate")
    assert broken.kind == "broken"
    assert broken.body["path"] == leaf and broken.body["lineno"] == 2
    assert "SyntaxError" in broken.body["message"]
    status = probe.status()
    assert [b["path"] for b in status["broken"]] == [leaf]
    changes = probe.request("since", {"epoch": probe.info["epoch"], "seq": 0}).body
    assert changes["broken"][0]["path"] == leaf
    full = probe.request("since", {"epoch": "another", "seq": 0}).body
    assert full["full"] is True and FileView().full_table(probe.request)[leaf] == good  # last good

    # Fixed with the last good content: an invalidation of just that file ends the break.
    write(project / "leaf.py", "VALUE = 1\n")
    fixed = probe.next("invalidate", "broken")
    assert fixed.kind == "invalidate"
    assert probe.view.changed(fixed.body) == [leaf]
    assert probe.view.affected(fixed.body) == {leaf}
    assert probe.view.learn(fixed.body) == {leaf: good}
    assert probe.status()["broken"] == []

    # Broken, then fixed with new content: the dependents are invalidated too.
    write(project / "leaf.py", "VALUE = (\n")
    assert probe.next("broken", "invalidate").kind == "broken"
    write(project / "leaf.py", "VALUE = 3\n")
    fixed = probe.next("invalidate", "broken")
    assert len(probe.view.affected(fixed.body)) == 3


def test_deleted_files_and_renamed_folders_are_invalidated(project: Path, probe: Probe) -> None:
    (project / "other.py").unlink()
    message = probe.next("invalidate")
    assert probe.view.learn(message.body) == {str(project / "other.py"): None}

    write(project / "pkg" / "__init__.py", "")
    write(project / "pkg" / "a.py", "A = 1\n")
    created: set[str] = set()
    while str(project / "pkg" / "a.py") not in created:  # a sync looks at known files only
        created.update(probe.view.changed(probe.next("invalidate").body))
    (project / "pkg").rename(project / "pkg2")
    old, new = str(project / "pkg" / "a.py"), str(project / "pkg2" / "a.py")
    changed: dict[str, str | None] = {}
    while not {old, new} <= changed.keys():  # the watcher names the folders, not the files
        changed.update(probe.view.learn(probe.next("invalidate").body))
    assert changed[old] is None
    assert changed[str(project / "pkg2" / "a.py")] == content_hash(b"A = 1\n")


def test_since_returns_missed_changes_or_every_hash_for_another_epoch(
    project: Path, probe: Probe
) -> None:
    epoch = probe.info["epoch"]
    for value in (2, 3, 4):
        write(project / "leaf.py", f"VALUE = {value}\n")
        probe.sync()
    write(project / "other.py", "OTHER = 5\n")
    current = probe.sync()
    assert current == 4
    delta = probe.request("since", {"epoch": epoch, "seq": 1}).body
    assert delta["full"] is False and delta["seq"] == current
    assert probe.view.affected(delta) == {
        str(project / n) for n in ("leaf.py", "mid.py", "top.py", "other.py")
    }
    assert probe.view.learn(delta)[str(project / "leaf.py")] == content_hash(b"VALUE = 4\n")
    nothing = probe.request("since", {"epoch": epoch, "seq": current}).body
    assert probe.view.affected(nothing) == set() and nothing["files"] == []

    full = probe.request("since", {"epoch": "an-old-epoch", "seq": 1}).body
    assert full["full"] is True and unpack_ids(full["affected"]).tolist() == []
    assert FileView().full_table(probe.request) == {
        str(path): content_hash(path.read_bytes()) for path in project.glob("*.py")
    }


def test_a_burst_of_300_files_comes_out_as_a_few_invalidations(project: Path, probe: Probe) -> None:
    paths = [project / "gen" / f"m{i:03}.py" for i in range(300)]
    for i, path in enumerate(paths):  # like a formatter: one file after another
        write(path, f"X = {i}\n")
        if i % 30 == 0:
            time.sleep(0.02)
    seen: set[str] = set()
    messages: list[Message] = []
    while len(seen) < len(paths):
        messages.append(probe.next("invalidate", timeout=10))
        seen.update(probe.view.changed(messages[-1].body))
    assert seen == {str(p) for p in paths}
    assert len(messages) <= 8, [len(m.body["changed"]) for m in messages]
    # New files: each named once, with its path, in "changed"; none needed "names".
    assert all(m.body["names"] == [] for m in messages)


def test_a_git_index_lock_holds_invalidations_until_it_is_gone(project: Path, probe: Probe) -> None:
    lock = project / ".git" / "index.lock"
    lock.parent.mkdir()
    lock.write_text("")
    write(project / "leaf.py", "VALUE = 100\n")
    write(project / "other.py", "OTHER = 100\n")
    probe.send("sync", {})
    assert probe.reply(timeout=0.8) is None  # the sync waits for git, too
    assert not probe.sub.poll(0) or probe.next("heartbeat", "invalidate").kind == "heartbeat"
    lock.unlink()
    message = probe.next("invalidate", timeout=5)
    assert set(probe.view.changed(message.body)) == {
        str(project / "leaf.py"),
        str(project / "other.py"),
    }
    synced = probe.reply(timeout=5)
    assert synced is not None and synced.kind == "synced"
    assert synced.body["seq"] == message.body["seq"]


# -- requests -------------------------------------------------------------------------------------


def test_graph_edges_and_source_requests(project: Path, probe: Probe) -> None:
    leaf, mid, other = (str(project / n) for n in ("leaf.py", "mid.py", "other.py"))
    edges = {
        (a, b): origins for a, b, origins in probe.request("graph", {"after": None}).body["edges"]
    }
    assert edges[mid, leaf] == ["static"]
    probe.send("edges", {"edges": [[other, leaf]]})  # a note: no reply unless refused
    edges = {
        (a, b): origins for a, b, origins in probe.request("graph", {"after": None}).body["edges"]
    }
    assert edges[other, leaf] == ["runtime"]
    write(project / "leaf.py", "VALUE = 9\n")
    message = probe.next("invalidate")
    assert other in probe.view.affected(message.body)  # through the runtime edge

    digest = content_hash(b"VALUE = 9\n")
    assert probe.request("source", {"hash": digest}).body == {
        "hash": digest,
        "data": b"VALUE = 9\n",
    }
    assert probe.request("source", {"hash": "0" * 32}).body["data"] is None


def test_clients_are_listed_in_status_until_goodbye(probe: Probe) -> None:
    hello = {"client": "box:42", "pid": 42, "host": "box", "argv": "python app.py"}
    probe.request("hello", hello)
    report = {
        "client": "box:42",
        "seq": 0,
        "stale": 3,
        "error": "Cannot reload ./a.py: boom",
        "patched": 5,
        "unpatched": 1,
    }
    probe.send("report", report)
    status = probe.status()  # answered after the report: a peer's requests are served in order
    assert probe.reply(0.2) is None  # the report itself had no reply
    [client] = [c for c in status["clients"] if c["client"] == "box:42"]
    assert (client["pid"], client["host"], client["seq"], client["stale"]) == (42, "box", 0, 3)
    assert client["error"] == report["error"] and client["last_seen_ago"] < 5
    assert (client["patched"], client["unpatched"]) == (5, 1)  # held objects its reloads updated
    for key in ("pid", "root", "uptime", "epoch", "seq", "watcher", "files", "graph",
                "endpoints", "broken", "recent", "dropped", "request_errors"):  # fmt: skip
        assert key in status
    assert status["files"] == 4 and status["graph"]["edges"] == 2
    assert probe.request("goodbye", {"client": "box:42"}).kind == "ack"
    assert [c["client"] for c in probe.status()["clients"]] == ["probe"]


def test_bad_requests_are_dropped_counted_and_harmless(
    project: Path, broker: BrokerProcess, probe: Probe
) -> None:
    key = bytes.fromhex(probe.info["key"])
    signer = Codec(key, role="client")  # no root: it will sign a path outside the project
    good = probe.codec.encode("status", {})

    def signed(payload: bytes, version: bytes = VERSION) -> list[bytes]:
        return [signer.seal(version, payload)]

    payload = good[0][len(VERSION) + 1 : -32]

    envelope = {"k": "status", "s": b"s" * 16, "n": 1, "b": {"unexpected": 1}}
    attacks = {
        "forged": Codec(new_key(), role="client").encode("status", {}),
        "unsigned": [VERSION + b"\0"],
        "malformed": signed(b"\xc1 not msgpack"),
        "oversized": signed(b"x" * (MAX_PAYLOAD + 1)),
        "version": signed(payload, version=b"relmod/0"),
        "path": signer.encode("edges", {"edges": [["/etc/passwd", str(project / "leaf.py")]]}),
        "schema": signed(msgpack.packb(envelope, use_bin_type=True)),
        "frames": [VERSION, payload],
    }
    for frames in attacks.values():
        probe.dealer.send_multipart(frames)
    probe.dealer.send_multipart(good)
    assert probe.reply() is not None  # the good request is answered
    probe.dealer.send_multipart(good)  # the same frames again
    status = probe.status()  # answered after all of the above
    dropped = status["dropped"]
    for reason in [*attacks, "replayed"]:
        assert dropped[reason] == 1, (reason, dropped)
    assert dropped["total"] == len(attacks) + 1
    assert status["request_errors"] == 0
    assert broker.proc is not None and broker.proc.poll() is None


# -- the process ----------------------------------------------------------------------------------


def test_a_second_broker_for_the_same_root_is_refused(project: Path, broker: BrokerProcess) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "relmod.server", str(project)],
        env=child_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"pid {broker.pid}" in lines[0] and str(project) in lines[0]
    assert broker.info["pid"] == broker.pid  # the first one's file is untouched


def test_after_kill_9_a_new_broker_takes_over(project: Path, tmp_path: Path) -> None:
    first = BrokerProcess(project, tmp_path / "first.log").start()
    old = first.info
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    assert read_connection_file(connection_path(str(project)))["pid"] == old["pid"]  # stale
    second = BrokerProcess(project, tmp_path / "second.log").start()
    try:
        new = second.info
        assert new["pid"] == second.pid and new["epoch"] != old["epoch"]
        assert "dead broker" in second.stderr()
        probe = Probe(new)
        try:
            assert probe.welcome.body["epoch"] == new["epoch"]
        finally:
            probe.close()
    finally:
        second.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_says_bye_removes_the_connection_file_and_exits_0(
    project: Path, broker: BrokerProcess, probe: Probe, stop: signal.Signals
) -> None:
    runtime = runtime_dir()
    assert broker.signal(stop) == 0
    assert probe.next("bye").body == {"epoch": probe.info["epoch"]}
    assert not connection_path(str(project)).exists()
    leftovers = [p.name for p in runtime.iterdir() if not p.name.endswith((".scan", ".clients"))]
    assert leftovers == []  # no connection file, no ipc socket files, no lock file


def test_polling_broker_sees_edits(project: Path, tmp_path: Path) -> None:
    broker = BrokerProcess(project, tmp_path / "broker.log", "--poll").start()
    probe = Probe(broker.info)
    try:
        assert broker.info["watcher"] == "polling"
        write(project / "other.py", "OTHER = 'polled'\n")
        assert probe.view.changed(probe.next("invalidate").body) == [str(project / "other.py")]
    finally:
        probe.close()
        broker.stop()


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two free consecutive ports")


def test_tcp_uses_curve_and_admits_only_listed_clients(project: Path, tmp_path: Path) -> None:
    import zmq.auth

    keys = tmp_path / "keys"
    keys.mkdir()
    listed = runtime_dir() / f"{root_id(str(project))}.clients"
    listed.mkdir(mode=0o700)
    public_file, secret_file = zmq.auth.create_certificates(keys, "alice")
    shutil.copy(public_file, listed / "alice.key")
    _, stranger_file = zmq.auth.create_certificates(keys, "mallory")
    port = _free_port_pair()
    broker = BrokerProcess(project, tmp_path / "broker.log", "--tcp", f"127.0.0.1:{port}").start()
    try:
        info = broker.info
        assert info["curve_server_public"] and info["router"].endswith(f":{port + 1}")
        codec = Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        hello = {"client": "c", "pid": 1, "host": "h", "argv": ""}
        with zmq.Context() as context:
            for certificate, admitted in ((secret_file, True), (stranger_file, False)):
                public, secret = zmq.auth.load_certificate(certificate)
                dealer = context.socket(zmq.DEALER)
                configure_socket(dealer)
                dealer.curve_serverkey = info["curve_server_public"].encode()
                dealer.curve_publickey, dealer.curve_secretkey = public, secret
                dealer.connect(info["router"])
                dealer.send_multipart(codec.encode("hello", hello))
                answered = dealer.poll(5000 if admitted else 1000)
                assert bool(answered) is admitted
                if admitted:
                    assert codec.decode(dealer.recv_multipart()).kind == "welcome"
                dealer.close(0)
    finally:
        broker.stop()
    assert "not listed" in broker.stderr()


# -- the parts, without a process -----------------------------------------------------------------


def test_project_decides_by_content_and_keeps_the_last_good_version(project: Path) -> None:
    from relmod.server.project import Project

    state = Project(str(project))
    assert state.load_all(processes=1) == 4
    leaf, mid = str(project / "leaf.py"), str(project / "mid.py")
    os.utime(leaf, None)
    assert state.apply([leaf]).empty  # a touch
    (project / "notes.txt").write_text("not python")
    write(project / "__pycache__" / "junk.py", "x = (")
    assert state.apply([str(project / "notes.txt"), str(project / "__pycache__" / "junk.py")]).empty

    write(project / "leaf.py", "VALUE = (\n")
    update = state.apply([leaf])
    assert update.changed == [] and [b.path for b in update.broken] == [leaf]
    assert state.full_hashes()[leaf] == content_hash(b"VALUE = 1\n")
    assert mid in state.graph.affected_by([leaf])  # the edges of the last good version stay
    write(project / "leaf.py", "VALUE = 1\n")
    update = state.apply([leaf])
    assert (update.changed, update.affected, update.broken) == ([leaf], [leaf], [])

    shutil.rmtree(project / "__pycache__")
    write(project / "pkg" / "a.py", "A = 1\n")
    assert state.apply([str(project / "pkg")]).changed == [str(project / "pkg" / "a.py")]
    shutil.rmtree(project / "pkg")
    update = state.apply([str(project / "pkg")])  # a deleted folder is reported once
    assert update.hashes == {str(project / "pkg" / "a.py"): None}
    assert state.full_hashes()[str(project / "pkg" / "a.py")] is None


def test_a_module_replaced_by_a_link_in_two_batches_follows_the_link_s_target(
    project: Path,
) -> None:
    # The watcher may report the unlink and the new link in separate batches: the module is
    # forgotten first, and the link's name must still be taken for the module it was.
    from relmod.server.project import Project

    state = Project(str(project))
    state.load_all(processes=1)
    leaf, other = project / "leaf.py", project / "other.py"
    write(other, "VALUE = 9\n")
    state.apply([str(other)])
    leaf.unlink()
    assert state.apply([str(leaf)]).changed == [str(leaf)]
    leaf.symlink_to(other)
    assert state.apply([str(leaf)]).changed == [str(leaf)]  # back, with the target's bytes
    write(other, "VALUE = 10\n")
    update = state.apply([str(other)])
    assert str(leaf) in update.changed and str(project / "mid.py") in update.affected


def test_a_module_replaced_by_a_folder_in_two_batches_is_reported(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from relmod.server.project import Project

    state = Project(str(project))
    state.load_all(processes=1)
    leaf = project / "leaf.py"
    leaf.unlink()
    assert state.apply([str(leaf)]).changed == [str(leaf)]
    leaf.mkdir()
    warning = f"Cannot read {leaf} (it is a folder now)"
    with caplog.at_level(logging.WARNING, logger="relmod.server.project"):
        assert state.apply([str(leaf)]).empty  # told once already: nothing more to publish
        assert caplog.text.count(warning) == 1
        assert state.apply([str(leaf)]).empty  # the folder named again (its attributes...)
        assert caplog.text.count(warning) == 1  # warned of once
        leaf.rmdir()
        write(leaf, "VALUE = 2\n")
        assert state.apply([str(leaf)]).changed == [str(leaf)]
        leaf.unlink()
        assert state.apply([str(leaf)]).changed == [str(leaf)]
        leaf.mkdir()
        assert state.apply([str(leaf)]).empty
        assert caplog.text.count(warning) == 2  # a folder again after a readable module


def _project_with_edits(project: Path, count: int) -> tuple[Any, list[Path]]:
    """A Project that scanned ``count`` new modules, each edited since (not applied yet)."""
    from relmod.server.project import Project

    files = [project / f"m{i}.py" for i in range(count)]
    for path in files:
        write(path, "X = 0\n")
    state = Project(str(project))
    state.load_all(processes=1)
    for i, path in enumerate(files):
        write(path, f"X = {i + 1}\n")
    return state, files


def test_a_batch_of_many_edits_caches_every_file_s_code_and_holds_few(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone save's code is cached after its publication (the broker's loop stores what the
    update holds); a batch of more edits than COMPILED_KEPT caches the rest as it checks them."""
    from relmod.codecache import cached_file
    from relmod.server.project import COMPILED_KEPT
    from relmod.sources import content_hash

    monkeypatch.setenv("RELMOD_CACHE_DIR", str(tmp_path / "cache"))
    state, files = _project_with_edits(project, COMPILED_KEPT + 4)
    update = state.apply([str(path) for path in files])
    held = {entry[0] for entry in update.compiled}
    assert len(held) == COMPILED_KEPT and len(update.changed) == len(files)
    for path in files:
        digest = content_hash(path.read_bytes())
        assert (cached_file(str(path), digest) is None) == (str(path) in held)
        assert update.hashes[str(path)] == digest


def test_a_failure_to_cache_code_loses_no_edit(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import relmod.server.project as project_module

    def broken_store(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the code cache")

    monkeypatch.setattr(project_module, "store_code", broken_store)
    state, files = _project_with_edits(project, project_module.COMPILED_KEPT + 2)
    with caplog.at_level(logging.ERROR, logger="relmod.server.project"):
        update = state.apply([str(path) for path in files])  # two cached while checked: fail
        for compiled in update.compiled:
            compiled.store()
    assert sorted(update.changed) == sorted(str(path) for path in files)
    assert caplog.text.count("Could not cache the code of") == len(files)


def test_an_edit_s_code_takes_the_place_of_the_version_before_in_the_code_cache(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's first import of a file older than the stat-trust limit caches its code by
    content and by stat signature; the broker's entry for the edit replaces both."""
    import relmod.codecache
    from relmod.codecache import cache_dir, cached_file, load_file_code
    from relmod.server.project import Project
    from relmod.sources import content_hash

    monkeypatch.setenv("RELMOD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(relmod.codecache, "RACY_NS", -1)  # the file's ctime is young: trust it
    leaf = project / "leaf.py"
    state = Project(str(project))
    state.load_all(processes=1)
    load_file_code(str(leaf))  # what a client's first import does
    folder = Path(str(cache_dir()))
    by_stat = [p for p in (folder / "by-stat").rglob("*") if p.is_file()]
    before = content_hash(leaf.read_bytes())
    assert len(by_stat) == 1 and cached_file(str(leaf), before) is not None
    write(leaf, "VALUE = 2\n")
    update = state.apply([str(leaf)])
    assert not by_stat[0].exists()  # the file's signature moved on: its entry is dead
    for compiled in update.compiled:  # what the broker's loop does after the publication
        compiled.store()
    assert [c.path for c in update.compiled] == [str(leaf)]
    assert cached_file(str(leaf), before) is None
    assert cached_file(str(leaf), content_hash(leaf.read_bytes())) is not None

    load_file_code(str(leaf))  # a new process imports the new version: a new entry
    by_stat = [p for p in (folder / "by-stat").rglob("*") if p.is_file()]
    assert len(by_stat) == 1
    os.utime(leaf)  # a touch: nothing to publish, and that entry is dead too
    assert state.apply([str(leaf)]).empty
    assert not by_stat[0].exists()


def test_a_touch_or_an_identical_save_is_not_compiled_again(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relmod.server.scanner as scanner
    from relmod.server.project import Project

    state = Project(str(project))
    state.load_all(processes=1)
    compiled: list[str] = []
    compile_checked = scanner.compile_checked

    def counting(path: str, data: bytes) -> Any:
        compiled.append(path)
        return compile_checked(path, data)

    monkeypatch.setattr(scanner, "compile_checked", counting)
    leaf = project / "leaf.py"
    os.utime(leaf)
    write(leaf, leaf.read_text())
    assert state.apply([str(leaf)]).empty and compiled == []
    write(leaf, "VALUE = (\n")  # broken: compiled once, then its same bytes again are not
    assert state.apply([str(leaf)]).broken and compiled == [str(leaf)]
    os.utime(leaf)
    assert state.apply([str(leaf)]).empty and compiled == [str(leaf)]
    write(leaf, "VALUE = 5\n")
    assert state.apply([str(leaf)]).changed == [str(leaf)] and len(compiled) == 2


def test_pending_changes_pace_bursts_but_never_a_lone_save(tmp_path: Path) -> None:
    from relmod.server.pending import MAX_GAP, PendingChanges

    pending = PendingChanges(str(tmp_path / ".git"))
    taken_at = []
    now = 100.0
    while now < 105.0:  # a batch every 20 ms for five seconds
        pending.add({f"/p/{now}.py"}, rescan=False)
        if pending.take(now) is not None:
            taken_at.append(now)
        now = round(now + 0.02, 2)
    assert 5 <= len(taken_at) <= 12
    assert max(b - a for a, b in zip(taken_at, taken_at[1:], strict=False)) <= MAX_GAP + 0.03
    now += 2 * MAX_GAP  # quiet, then a lone save goes at once
    pending.take(now)
    pending.add({"/p/lone.py"}, rescan=False)
    assert pending.take(now + 2 * MAX_GAP) == ({"/p/lone.py"}, False)


def test_pending_changes_wait_for_git_but_not_for_a_stale_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relmod.server import pending as module

    (tmp_path / ".git").mkdir()
    lock = tmp_path / ".git" / "index.lock"
    lock.write_text("")
    pending = module.PendingChanges(None, root=str(tmp_path))
    pending.add({"/p/a.py"}, rescan=False)
    assert pending.take(10.0, force=True) is None and pending.holding
    lock.unlink()
    assert pending.take(10.1) == ({"/p/a.py"}, False)

    lock.write_text("")
    monkeypatch.setattr(module, "HOLD_MAX", 1.0)
    pending.add({"/p/b.py"}, rescan=False)
    assert pending.take(20.0, force=True) is None
    assert pending.take(21.5, force=True) == ({"/p/b.py"}, False)  # presumed left by a crash


def test_history_answers_only_what_it_still_covers() -> None:
    from relmod.server.history import History

    history = History(max_entries=3)
    for seq in range(1, 6):  # file id `seq` changes, and affects id 100 + seq too
        history.record_invalidation(seq, [seq], pack_ids([seq, 100 + seq]), [f"h{seq}"])
    history.record_invalidation(6, [4], pack_ids([4]), ["h6"], named=[7])  # 4 again, newer hash
    assert [e.seq for e in history.recent(10)] == [6, 5, 4]
    assert history.covers(3, current=6) and not history.covers(2, current=6)
    assert history.covers(6, current=6) and not history.covers(7, current=6)
    assert history.since(3) == ({4, 104, 5, 105}, {4: "h6", 5: "h5"}, {7})
    assert history.recent(1)[0].affected_count == 1


def test_project_waits_out_an_in_place_save_caught_half_way(project: Path) -> None:
    import threading

    from relmod.server.project import Project

    state = Project(str(project))
    state.load_all(processes=1)
    leaf = project / "leaf.py"
    content = leaf.read_bytes()
    leaf.write_bytes(b"")  # truncated by an in-place save whose writer stalls for 30 ms
    writer = threading.Timer(0.03, leaf.write_bytes, args=(content,))
    writer.start()
    try:
        assert state.apply([str(leaf)]).empty  # identical in the end: nothing to publish
    finally:
        writer.join()


def test_a_split_invalidation_names_each_new_id_in_the_part_that_uses_it(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big change goes out in parts; a client that read the table before it knows every id
    of every part, applying them in order (each new id named in the part that uses it)."""
    # The parts are published without sockets (publish is replaced), each applied at once.
    from relmod.client.fileids import FileTable
    from relmod.server import broker as broker_module
    from relmod.server.broker import Broker, BrokerConfig

    monkeypatch.setattr(broker_module, "CHUNK_PATHS", 7)
    broker = Broker(BrokerConfig(str(project)))
    broker.state.project.load_all(processes=1)
    broker.state.walked = True
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(broker, "publish", lambda kind, body: published.append(body))
    table = FileTable()
    reply = broker.handlers.answer(b"c", Message("since", {"epoch": "", "seq": 0}, b"s", 1))
    assert isinstance(reply, tuple) and reply[1]["full"] and reply[1]["next"] is None
    table.replace([(i, p) for i, p, _ in reply[1]["files"]] + reply[1]["names"])
    table.loaded([str(project / "top.py")], root=str(project))

    new = [project / "gen" / f"n{i:02d}.py" for i in range(30)]
    for path in new:
        write(path, "N = 1\n")
    write(project / "leaf.py", "from gen import " + ", ".join(p.stem for p in new) + "\n")
    broker._publish_changes({str(p) for p in [*new, project / "leaf.py"]}, rescan=False)

    assert len(published) >= 5  # 31 changed files, 7 a part
    marked: set[str] = set()
    for body in published:
        changed, reached, problem = table.apply(body["changed"], body["affected"], body["names"])
        assert problem is None, problem
        marked.update(changed, reached)
    assert {str(project / "top.py"), str(project / "leaf.py")} <= marked
    assert {str(p) for p in new} <= marked  # changed files are always named

    # A folder the graph names (a namespace package that leaf imports) is renamed: its id is
    # new, not a changed file, and travels in "names" of the part that uses it.
    write(project / "leaf.py", "import gen\n")
    broker._publish_changes({str(project / "leaf.py")}, rescan=False)
    broker.state.project.scan_edits()  # what the loop does a moment after publishing
    assert str(project / "gen") in broker.state.project.graph
    published.clear()
    (project / "gen").rename(project / "gen2")
    broker._publish_changes({str(project / "gen"), str(project / "gen2")}, rescan=False)
    assert len(published) >= 5  # 30 files deleted, 30 created
    named: dict[int, str] = {}
    for body in published:
        named.update(body["names"])
        *_, problem = table.apply(body["changed"], body["affected"], body["names"])
        assert problem is None, problem
    # Named: the folder, and new files a part uses before (or without) the part that changes
    # them; never an id the client's table held.
    assert str(project / "gen") in named.values()
    assert all(path.startswith(str(project / "gen")) for path in named.values())
