"""A fake broker: it binds a PUB and a ROUTER and writes a real connection file (mode 0600), so
that a real client process connects to it, and a test can then send that client anything.

It speaks just enough of the protocol for a client to connect and stay connected: ``welcome``,
an empty ``changes`` for ``since``, ``ack`` for reports and edges, ``synced`` for ``sync``, and a
heartbeat every :attr:`FakeBroker.heartbeat` seconds. One thread owns both sockets; the test
hands it work through :meth:`FakeBroker.run`, so every message is encoded and sent on that thread
(the counters then leave in order, as :class:`relmod.protocol.Codec` requires).

Example:
    >>> fake = FakeBroker(project_root)                          # doctest: +SKIP
    >>> frames = fake.invalidate([str(project_root / 'a.py')])   # a valid invalidation
    >>> fake.send_pub(frames)                                    # ... and its replay
    >>> fake.close()
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import zmq

from relmod.connfile import (
    CONNECTION_VERSION,
    ConnectionInfo,
    connection_path,
    write_connection_file,
)
from relmod.errors import ProtocolError
from relmod.protocol import Codec, configure_socket, new_epoch, new_key, pack_ids

T = TypeVar("T")


class FakeBroker:
    """See the module docstring.

    Attributes:
        root: the project root it claims to serve (its real path).
        key: its signing key (also in the connection file).
        codec: its broker-side codec; ``codec.dropped`` counts the requests it dropped.
        requests: the kinds of the valid requests it received, in order.
        before_synced: frames to send to a client that asks ``sync``, before the ``synced``.
        replies: the frames of every reply sent, in order.
    """

    heartbeat = 0.05

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.key = new_key()
        self.epoch = new_epoch()
        self.seq = 0
        self.ids: dict[str, int] = {}  # the file ids its invalidations name (each one, each time)
        self.codec = Codec(self.key, role="broker", root=self.root)
        self.requests: list[str] = []
        self.before_synced: list[list[bytes]] = []
        self.refuse: set[str] = set()  # request kinds answered with an "error" reply
        self.replies: list[list[bytes]] = []
        self._work: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake-broker")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake broker did not bind its sockets")
        self.path = connection_path(self.root)
        write_connection_file(self.path, ConnectionInfo(
            version=CONNECTION_VERSION, root=self.root, pid=os.getpid(), host=socket.gethostname(),
            epoch=self.epoch, key=self.key.hex(), pub=self.pub_endpoint,
            router=self.router_endpoint, started=time.time(), watcher="fake",
            curve_server_public=None,
        ))  # fmt: skip

    # -- the test's side ------------------------------------------------------------------------

    def run(self, work: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``work`` on the socket thread and return its result."""
        answer: queue.Queue[Any] = queue.Queue()
        self._work.put((work, answer))
        ok, value = answer.get(timeout=timeout)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def send_pub(self, frames: list[bytes]) -> None:
        """Publish these frames as they are."""
        self.run(lambda: self._pub.send_multipart(frames))

    def publish(self, kind: str, body: dict[str, Any]) -> list[bytes]:
        """Encode, sign and publish one message; returns its frames (to replay them)."""

        def work() -> list[bytes]:
            frames = self.codec.encode(kind, body)
            self._pub.send_multipart(frames)
            return frames

        return self.run(work)

    def invalidate(self, affected: list[str]) -> list[bytes]:
        """A valid invalidation of ``affected``, the next in sequence."""

        def work() -> list[bytes]:
            self.seq += 1
            ids = [self.ids.setdefault(path, len(self.ids)) for path in affected]
            body = {
                "epoch": self.epoch,
                "seq": self.seq,
                "changed": [[ids[0], affected[0], "0" * 32]] if affected else [],
                "affected": pack_ids(ids),
                "names": [list(entry) for entry in zip(ids[1:], affected[1:], strict=True)],
            }
            frames = self.codec.encode("invalidate", body)
            self._pub.send_multipart(frames)
            return frames

        return self.run(work)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- the socket thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        context: zmq.Context[Any] = zmq.Context()
        self._pub = pub = context.socket(zmq.PUB)
        router = context.socket(zmq.ROUTER)
        for sock in (pub, router):
            configure_socket(sock)
        self.pub_endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.router_endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
        self._ready.set()
        next_beat = 0.0
        try:
            while not self._stop.is_set():
                if router.poll(10):
                    self._answer(router)
                while True:
                    try:
                        work, answer = self._work.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        answer.put((True, work()))
                    except Exception as err:
                        answer.put((False, err))
                if time.monotonic() >= next_beat:
                    pub.send_multipart(
                        self.codec.encode(
                            "heartbeat", {"epoch": self.epoch, "seq": self.seq, "time": time.time()}
                        )
                    )
                    next_beat = time.monotonic() + self.heartbeat
        finally:
            pub.close(0)
            router.close(0)
            context.term()

    def _answer(self, router: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                identity, message = self.codec.decode_routed(frames)
            except ProtocolError:
                continue
            self.requests.append(message.kind)
            kind = message.kind
            if kind in self.refuse:
                reply = (
                    "error",
                    {"message": f"the fake broker refuses {kind!r}.", "request": kind},
                )
            elif kind == "hello":
                reply = (
                    "welcome",
                    {
                        "epoch": self.epoch,
                        "seq": self.seq,
                        "root": self.root,
                        "heartbeat": self.heartbeat,
                    },
                )
            elif kind == "since":
                reply = (
                    "changes",
                    {
                        "epoch": self.epoch,
                        "seq": self.seq,
                        "full": False,
                        "files": [],
                        "affected": pack_ids(()),
                        "names": [],
                        "broken": [],
                        "next": None,
                    },
                )
            elif kind == "sync":
                for early in self.before_synced:
                    router.send_multipart([identity, *early])
                self.before_synced = []
                reply = ("synced", {"epoch": self.epoch, "seq": self.seq})
            elif kind in ("report", "edges", "running"):
                continue  # a client's note: no reply, as the real broker
            elif kind in ("goodbye", "paths"):
                reply = ("ack", {})
            else:
                reply = (
                    "error",
                    {"message": f"the fake broker does not answer {kind!r}.", "request": kind},
                )
            frames = self.codec.encode(*reply)
            self.replies.append(frames)
            router.send_multipart([identity, *frames])
