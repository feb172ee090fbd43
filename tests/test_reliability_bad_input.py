"""Bad input at the real broker, and from a fake broker at a real client: dropped, counted, inert.

Forged (another key), unsigned, replayed, truncated, oversized, wrong-version, schema-breaking and
path-traversal messages. The broker's counts are read with ``relmod status --json``, the client's
from its ``status()['dropped']``. "Inert" is shown by what a user would see: the broker publishes
nothing, records no edge and no client; the client marks no module stale and keeps its values.
Each test also sends one good message, which does act, so that the test can fail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from reliability.fakes import FakeBroker
from support import Broker, Worker, broker_status, wait_for

from relmod.connfile import ConnectionInfo, connection_path, read_connection_file
from relmod.protocol import (
    MAC_BYTES,
    MAX_PAYLOAD,
    VERSION,
    Codec,
    configure_socket,
    new_key,
    pack_ids,
)

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
    save(root / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    save(root / "other.py", "OTHER = 1\n")
    return root


def signed_payload(
    codec: Codec, kind: str, body: Any, *, counter: int = 1, version: bytes = VERSION
) -> list[bytes]:
    """A frame signed with the codec's key around a hand-made envelope (any body at all)."""
    payload = msgpack.packb(
        {"k": kind, "s": os.urandom(16), "n": counter, "b": body}, use_bin_type=True
    )
    return [codec.seal(version, payload)]


def unsigned(frames: list[bytes]) -> list[bytes]:
    """A message cut short of its mac: nothing left to check it with."""
    return [frames[0][: len(VERSION) + 1]]


def cut(frames: list[bytes], count: int) -> list[bytes]:
    """A message with ``count`` payload bytes cut (its mac kept): the signature fails."""
    frame = frames[0]
    return [frame[: -MAC_BYTES - count] + frame[-MAC_BYTES:]]


# -- at the real broker -----------------------------------------------------------------------


class Dealer:
    """A raw DEALER socket to the broker's ROUTER, with the broker's key."""

    def __init__(self, info: ConnectionInfo) -> None:
        self.codec = Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        self.loose = Codec(bytes.fromhex(info["key"]), role="client")  # signs any path
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        configure_socket(self.sock)
        self.sock.connect(info["router"])

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def replies(self, wait: float) -> list[str]:
        kinds = []
        while self.sock.poll(int(wait * 1000)):
            kinds.append(self.codec.decode(self.sock.recv_multipart()).kind)
            wait = 0.2
        return kinds

    def close(self) -> None:
        self.sock.close(0)
        self.context.term()


def test_bad_requests_at_the_broker_are_dropped_counted_and_not_acted_on(project: Path) -> None:
    broker = Broker(project).start()
    worker = Worker(cwd=project)
    dealer = None
    try:
        assert worker.call("connect", root=str(project)) is True
        worker.call("load", name="mid", path=str(project / "mid.py"))
        dealer = Dealer(read_connection_file(connection_path(str(project))))
        leaf, mid, other = (str(project / name) for name in ("leaf.py", "mid.py", "other.py"))
        # The client reports the edge mid -> leaf it saw run; wait for it before counting.
        before = wait_for(lambda: (s := broker_status(project))["graph"]["runtime_edges"] and s,
                          10, "the client's runtime edge")  # fmt: skip
        assert before["dropped"]["total"] == 0
        # A good hello, then goodbye: its replay must not bring the client back.
        hello = dealer.codec.encode("hello", {"client": "victim", "pid": 1, "host": "h",
                                              "argv": "x"})  # fmt: skip
        dealer.send(hello)
        dealer.send(dealer.codec.encode("goodbye", {"client": "victim"}))
        assert dealer.replies(5) == ["welcome", "ack"]
        good_edges = dealer.codec.encode("edges", {"edges": [[other, leaf]]})
        forger = Codec(new_key(), role="client", root=str(project))
        attacks = {
            "forged": [forger.encode("hello", {"client": "forged", "pid": 2, "host": "h",
                                               "argv": "x"}),
                       forger.encode("sync", {})],
            "unsigned": [unsigned(good_edges)],
            "replayed": [hello],
            "frames": [[VERSION, b"\x80"], [*good_edges, b"extra"]],  # two parts each
            "oversized": [signed_payload(dealer.codec, "status", {"x": "y" * MAX_PAYLOAD})],
            "version": [signed_payload(dealer.codec, "status", {}, version=b"relmod/0"),
                        signed_payload(dealer.codec, "status", {}, version=b"relmod/1")],
            "path": [dealer.loose.encode("edges", {"edges": [["/etc/passwd", leaf]]}),
                     signed_payload(dealer.codec, "edges",
                                    {"edges": [[f"{project}/../escape.py", leaf]]}),
                     signed_payload(dealer.codec, "edges", {"edges": [[f"{project}x/a.py", mid]]})],
            "schema": [signed_payload(dealer.codec, "hello", {"client": "schema"}),
                       signed_payload(dealer.codec, "edges", {"edges": [[leaf]]})],
        }  # fmt: skip
        # Cut payloads fail the signature: they count as forged.
        attacks["forged"].append(cut(good_edges, 4))
        for frames_list in attacks.values():
            for frames in frames_list:
                dealer.send(frames)
        assert dealer.replies(1.0) == [], "a bad request was answered"

        after = broker_status(project)
        dropped = after["dropped"]
        for reason, frames_list in attacks.items():
            assert dropped[reason] == len(frames_list), (reason, dropped)
        assert dropped["total"] == sum(map(len, attacks.values()))
        # Not acted on: no publication, no edge, no client named by a bad request.
        assert after["seq"] == before["seq"]
        assert after["graph"]["runtime_edges"] == before["graph"]["runtime_edges"]
        names = {row["client"] for row in after["clients"]}
        assert not names & {"victim", "forged", "schema"}, names
        assert after["request_errors"] == 0
        status = worker.call("status")
        assert status["invalidations"] == 0 and status["stale"] == 0
        assert worker.call("stale", name="mid") is False
        # The broker still acts on good input: the good edge, and a real edit.
        # Edges count only from a client that said hello (and while it is there).
        dealer.send(dealer.codec.encode("hello", {"client": "good", "pid": 3, "host": "h",
                                                  "argv": "x"}))  # fmt: skip
        dealer.send(dealer.codec.encode("edges", {"edges": [[other, leaf]]}))
        assert dealer.replies(5) == ["welcome"]  # edges are a note: no reply
        edges = broker_status(project)["graph"]["runtime_edges"]
        assert edges == before["graph"]["runtime_edges"] + 1
        save(project / "leaf.py", "VALUE = 5\n")
        assert worker.call("wait_value", name="mid", attr="DOUBLE", value=10, timeout=10) == 10
    finally:
        if dealer is not None:
            dealer.close()
        worker.close()
        broker.stop()


def test_a_flood_of_garbage_does_not_stop_the_broker(project: Path) -> None:
    broker = Broker(project).start()
    worker = Worker(cwd=project)
    dealer = None
    try:
        worker.call("connect", root=str(project))
        worker.call("load", name="mid", path=str(project / "mid.py"))
        dealer = Dealer(read_connection_file(connection_path(str(project))))
        rss_before = _rss_kb(broker.pid)
        sent = 0
        for index in range(20_000):
            dealer.send([VERSION + b"\0" + os.urandom(index % 200) + os.urandom(32)])
            sent += 1
        status = wait_for(lambda: (s := broker_status(project))["dropped"]["total"] >= sent and s,
                          30, "the broker to read the flood")  # fmt: skip
        assert status["dropped"]["forged"] + status["dropped"]["unsigned"] == sent
        save(project / "leaf.py", "VALUE = 6\n")
        assert worker.call("wait_value", name="mid", attr="DOUBLE", value=12, timeout=10) == 12
        assert _rss_kb(broker.pid) - rss_before < 32 * 1024  # bounded: nothing kept per message
    finally:
        if dealer is not None:
            dealer.close()
        worker.close()
        broker.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- from a fake broker at a real client --------------------------------------------------------


@pytest.fixture
def fake(project: Path) -> Iterator[FakeBroker]:
    broker = FakeBroker(project)
    yield broker
    broker.close()


@pytest.fixture
def client(project: Path, fake: FakeBroker) -> Iterator[Worker]:
    worker = Worker(cwd=project)
    assert worker.call("connect", root=str(project)) is True
    worker.call("load", name="mid", path=str(project / "mid.py"))
    worker.call("load", name="leaf", path=str(project / "leaf.py"))
    assert worker.call("get", name="mid", attr="DOUBLE") == 2
    yield worker
    worker.close()


def dropped_reaches(worker: Worker, count: int) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        lambda: (s := worker.call("status"))["dropped"] >= count and s,
        10,
        f"the client to drop {count} messages",
    )
    return status


def test_bad_publications_from_a_broker_are_dropped_counted_and_not_acted_on(
    project: Path, fake: FakeBroker, client: Worker
) -> None:
    leaf, mid = str(project / "leaf.py"), str(project / "mid.py")
    key_holder = fake.codec

    def body(paths: list[str], seq: int | None = None, **fields: Any) -> dict[str, Any]:
        return {
            "epoch": fake.epoch,
            "seq": fake.seq + 1 if seq is None else seq,
            "changed": [[0, paths[0], None]],
            "affected": pack_ids(range(len(paths))),
            "names": [[i, path] for i, path in enumerate(paths) if i],
            **fields,
        }

    forger = Codec(new_key(), role="broker", root=fake.root)
    good = key_holder.encode("heartbeat", {"epoch": fake.epoch, "seq": 0, "time": 1.0})
    # Published, so the client has its counter before anything below arrives (one connection
    # keeps the order): a copy of it is a replay whatever the fake's own heartbeats did.
    seen = fake.publish("heartbeat", {"epoch": fake.epoch, "seq": 0, "time": 1.0})
    attacks = [
        forger.encode("invalidate", body([leaf, mid])),  # forged
        forger.encode("bye", {"epoch": fake.epoch}),  # a forged goodbye must not disconnect
        unsigned(good),
        cut(good, 3),  # truncated payload: the signature fails
        # A frame too many: a subscriber reads frame by frame, so the two come apart and each
        # is dropped on its own (the first is a replay of the heartbeat published just before).
        [*seen, b""],
        signed_payload(key_holder, "invalidate", body([leaf]), version=b"relmod/1"),
        signed_payload(key_holder, "invalidate", {**body([leaf]), "pad": "x" * MAX_PAYLOAD}),
        signed_payload(key_holder, "invalidate", body([f"{fake.root}/../outside.py"])),
        signed_payload(key_holder, "invalidate", body(["/etc/passwd"])),
        signed_payload(key_holder, "invalidate", body([f"{fake.root}/a/../../x.py"])),
        signed_payload(key_holder, "invalidate", {"epoch": fake.epoch, "affected": [leaf]}),
        # File ids: wrong types, a huge id, a malformed id set (dropped by the codec) ...
        signed_payload(key_holder, "invalidate", body([leaf], affected=[0])),
        signed_payload(key_holder, "invalidate", body([leaf], names=[[2**40, mid]])),
        signed_payload(key_holder, "invalidate", body([leaf], names=[["1", mid]])),
        signed_payload(key_holder, "invalidate", body([leaf], affected=b"\x03\x00\x00\x00")),
        signed_payload(key_holder, "invalidate", body([leaf], affected=b"\x02\x00")),
        signed_payload(key_holder, "invalidate", body([leaf], affected=b"")),
        signed_payload(key_holder, "invalidate", body([leaf], changed=[[0, leaf]])),
        # ... and well formed ones the client's table refuses: an id nobody named, the same id
        # for two paths, one path under two ids (the feed drops them, then asks for the table)
        signed_payload(key_holder, "invalidate", body([leaf], affected=pack_ids([0, 7]))),
        signed_payload(key_holder, "invalidate", body([leaf, mid], names=[[0, mid]])),
        signed_payload(key_holder, "invalidate", body([leaf, mid], names=[[1, leaf]])),
    ]
    for frames in attacks:
        fake.send_pub(frames)
    drops = sum(map(len, attacks))  # one per frame (see the frame too many)
    status = dropped_reaches(client, drops)
    time.sleep(0.3)  # heartbeats keep coming; nothing else may be dropped or applied
    status = client.call("status")
    assert status["dropped"] == drops
    assert status["connected"] and status["reconnects"] == 0 and status["invalidations"] == 0
    assert status["drop_reasons"] == {"file ids": 3}
    assert client.call("stale", name="leaf") is False
    assert client.call("stale", name="mid") is False

    # A genuine invalidation acts; replaying its exact frames later does not.
    frames = fake.invalidate([leaf, mid])
    wait_for(lambda: client.call("stale", name="mid"), 10, "the good invalidation")
    assert client.call("get", name="mid", attr="DOUBLE") == 2  # reloaded (same files)
    assert client.call("stale", name="mid") is False
    fake.send_pub(frames)
    status = dropped_reaches(client, drops + 1)
    assert client.call("stale", name="mid") is False
    assert status["invalidations"] == 1


def test_bad_replies_from_a_broker_are_dropped_and_sync_still_returns(
    project: Path, fake: FakeBroker, client: Worker
) -> None:
    forger = Codec(new_key(), role="broker", root=fake.root)
    synced = {"epoch": fake.epoch, "seq": 0}
    ack = fake.run(lambda: fake.codec.encode("ack", {}))
    fake.before_synced = [
        forger.encode("synced", synced),  # forged
        unsigned(ack),
        signed_payload(fake.codec, "synced", {"epoch": fake.epoch, "seq": "0"}),  # schema
        signed_payload(fake.codec, "synced", synced, version=b"relmod/0"),  # version
    ]
    count = len(fake.before_synced)
    started = time.monotonic()
    assert client.call("sync", timeout=20) is True
    assert time.monotonic() - started < 5  # the good "synced" ended it, not a timeout
    status = client.call("status")
    assert status["dropped"] == count and status["connected"]
    # The exact frames of the "synced" the client just accepted, sent again before the next
    # one: a replay, dropped (if it were taken, sync would return before the broker answered).
    fake.before_synced = [fake.replies[-1]]
    assert client.call("sync", timeout=20) is True
    assert client.call("status")["dropped"] == count + 1
