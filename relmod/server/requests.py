"""What the broker answers on its ROUTER socket, one handler per request kind.

Every request arrives already verified and checked against its schema by the broker's
:class:`~relmod.protocol.Codec` (role ``"broker"``, rooted at the project, so a path outside the
project never gets here). Each gets exactly one reply:

==========  ==========================================  ===========================================
request     body                                        reply
==========  ==========================================  ===========================================
hello       client, pid, host, argv                     welcome {epoch, seq, root, heartbeat}
since       epoch, seq                                  changes {epoch, seq, full, affected,
                                                        hashes, broken}
edges       edges [[dependent, dependency], ...]        ack (recorded as "runtime" edges)
report      client, seq, stale, error                   ack
status      {}                                          status {status: {...}}
sync        {}                                          synced {epoch, seq}, after publishing
                                                        every save made before the request
graph       {}                                          graph {edges: [[dependent, dependency,
                                                        origins], ...]}
source      hash                                        source {hash, data (bytes or None)}
goodbye     client                                      ack
==========  ==========================================  ===========================================

A handler that raises is a bug of ours: it is logged and counted (``request_errors`` in status),
and the client gets an ``error`` reply instead of waiting for a timeout.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relmod.protocol import MAX_ITEMS, Message
from relmod.server.status import broker_status

if TYPE_CHECKING:
    from relmod.server.broker import Broker

__all__ = ["RequestHandlers"]

logger = logging.getLogger(__name__)

Reply = tuple[str, dict[str, Any]] | None
"""A reply kind and body, or None when the broker replies later (sync)."""
_Handler = Callable[[bytes, dict[str, Any]], Reply]

MAX_DELTA_ITEMS = MAX_ITEMS // 2
"""A "since" answer larger than this many paths is sent as a full list of hashes instead."""


class RequestHandlers:
    """The broker's request handlers and their counters.

    Attributes:
        counts: requests handled, per kind.
        errors: requests whose handler raised.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.counts: Counter[str] = Counter()
        self.errors = 0
        self._handlers: dict[str, _Handler] = {
            "hello": self.hello,
            "since": self.since,
            "edges": self.edges,
            "report": self.report,
            "status": self.status,
            "sync": self.sync,
            "graph": self.graph,
            "source": self.source,
            "goodbye": self.goodbye,
        }

    def handle(self, identity: bytes, message: Message) -> None:
        """Answer one verified request (never raises)."""
        broker = self._broker
        self.counts[message.kind] += 1
        broker.clients.touch(identity, time.monotonic())
        try:
            reply = self._handlers[message.kind](identity, message.body)
        except Exception as err:
            self.errors += 1
            logger.exception(
                "The %r request handler failed (%d failures so far).", message.kind, self.errors
            )
            reply = (
                "error",
                {
                    "message": f"{type(err).__name__}: {err}"[:3900]
                    + " (a bug in the broker; its log has the traceback)"
                },
            )
        if reply is not None:
            broker.reply(identity, *reply)

    # -- handlers -----------------------------------------------------------------------------

    def hello(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Register the client and tell it where the broker stands."""
        broker = self._broker
        broker.clients.hello(identity, body, time.monotonic())
        broker.heartbeat_soon()
        logger.info(
            "client %s (pid %d) connected: %s", body["client"], body["pid"], body["argv"][:200]
        )
        return "welcome", {
            "epoch": broker.epoch,
            "seq": broker.seq,
            "root": broker.root,
            "heartbeat": broker.heartbeat,
        }

    def since(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """What changed after (epoch, seq): a delta when history covers it, else every hash."""
        broker = self._broker
        answer: dict[str, Any] = {
            "epoch": broker.epoch,
            "seq": broker.seq,
            "broken": [b.to_wire() for b in broker.project.broken()],
        }
        if body["epoch"] == broker.epoch and broker.history.covers(body["seq"], current=broker.seq):
            affected, hashes = broker.history.since(body["seq"])
            if len(affected) + len(hashes) <= MAX_DELTA_ITEMS:
                return "changes", {**answer, "full": False, "affected": affected, "hashes": hashes}
        return "changes", {
            **answer,
            "full": True,
            "affected": [],
            "hashes": broker.project.full_hashes(),
        }

    def edges(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Record the import edges a client saw at run time."""
        self._broker.project.add_runtime_edges((a, b) for a, b in body["edges"])
        return "ack", {}

    def report(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Note a client's progress: last seq applied, stale modules, last reload error."""
        self._broker.clients.report(identity, body, time.monotonic())
        return "ack", {}

    def status(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Everything ``relmod status`` shows."""
        return "status", {"status": broker_status(self._broker)}

    def sync(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Publish every save made before now, then answer with the sequence number after it.

        The broker answers at the end of this turn of its loop (all syncs of a turn share one
        look at the files), or later while git holds changes back.
        """
        self._broker.request_sync(identity)
        return None

    def graph(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Every edge of the dependency graph, with its origins."""
        edges = [[a, b, list(origins)] for a, b, origins in self._broker.project.graph.edges()]
        return "graph", {"edges": edges}

    def source(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """The bytes of the current file with this content hash (None when there is none)."""
        digest = body["hash"]
        data = self._broker.project.source(digest)
        if data is not None and len(data) > self._broker.codec.max_payload - 1024:
            logger.warning("source %s is too large to send (%d bytes)", digest, len(data))
            data = None
        return "source", {"hash": digest, "data": data}

    def goodbye(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Forget a client that is closing."""
        if self._broker.clients.goodbye(identity, body["client"]):
            logger.info("client %s said goodbye", body["client"])
        return "ack", {}
