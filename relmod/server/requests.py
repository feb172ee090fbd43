"""What the broker answers on its ROUTER socket, one handler per request kind.

Every request arrives already verified and checked against its schema by the broker's
:class:`~relmod.protocol.Codec` (role ``"broker"``, rooted at the project, so a path outside the
project never gets here). A request gets one reply, except a client's notes (``edges``,
``report``, ``running``), which get none unless they are refused: a client sends them after
saves, and an answer would only wake it, and the broker, once more for nothing:

==========  ==========================================  ===========================================
request     body                                        reply
==========  ==========================================  ===========================================
hello       client, pid, host, argv                     welcome {epoch, seq, root, heartbeat}
since       epoch, seq                                  changes {epoch, seq, full, files,
                                                        affected, names, broken, next}
hashes      after (a file id)                           hashes {files, names, next}: the next
                                                        page of a full answer
edges       edges [[dependent, dependency], ...]        none (recorded as "runtime" edges of the
                                                        client, between tracked files only)
paths       paths (the client's sys.path)               ack (folders inside the project become
                                                        import roots)
report      client, seq, stale, error                   none (kept for status)
running     client, files (what it runs of each file    none (kept for status; the events are
            whose state changed), events, lost          republished as "activity")
status      {}                                          status {status: {...}}
list        what ("clients" or "broken"), after         list {items, next, total}: the rows
                                                        status leaves out
sync        {}                                          synced {epoch, seq}, after publishing
                                                        every save made before the request
graph       after (an edge, or None)                    graph {edges: [[dependent, dependency,
                                                        origins], ...], next, total}
source      hash                                        source {hash, data (bytes or None)}
goodbye     client                                      ack
==========  ==========================================  ===========================================

Answers that grow with the project are paged (about :data:`~relmod.protocol.PAGE_BYTES` each):
a full ``changes`` answer carries the first page of the file id table (every id with its path
and hash, in id order: :mod:`relmod.server.fileids`) and names the id after which ``hashes``
continues; ``graph`` and ``list`` page the same way. The id table only grows, so its pages need
no snapshot; the graph's are cut from a snapshot taken per version of the project, so paging
through costs one sort, not one per page. A page asked for after the project changed comes from
the new version, which is fine, since every change after the first answer is also published.

Handlers read the broker's :class:`~relmod.server.state.BrokerState` and return their answer; the
broker's loop, which owns the sockets, sends it (:class:`AfterWalk` and :data:`AFTER_SYNC` ask it
to answer later). Nothing here calls back into the broker.

A handler that raises is a bug of ours: it is logged and counted (``request_errors`` in status),
and the client gets an ``error`` reply naming its request instead of waiting for a timeout. A
request the broker refuses (a hello beyond the client limit, edges from a client that did not say
hello) gets an ``error`` reply too, and is counted in status under ``refused``.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from relmod.protocol import PAGE_BYTES, Message, pack_ids
from relmod.server.state import BrokerState
from relmod.server.status import broken_rows, broker_status, client_rows
from relmod.sources import content_hash, read_source

__all__ = ["AFTER_SYNC", "NO_REPLY", "AfterWalk", "Outcome", "Reply", "RequestHandlers"]

logger = logging.getLogger(__name__)

Reply = tuple[str, dict[str, Any]]
"""A reply's kind and body."""


@dataclass(frozen=True)
class AfterWalk:
    """Answer once the scan has listed the project's files: the broker calls ``answer`` then."""

    answer: Callable[[], Reply]


class _Later:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


AFTER_SYNC: Final = _Later("AFTER_SYNC")
"""Answer "synced" once every save made before the request is published."""
NO_REPLY: Final = _Later("NO_REPLY")
"""Answer nothing: a client's note (edges, report, running) was taken."""

Outcome = Reply | AfterWalk | _Later
"""What a handler returns: a reply now, or when to answer later."""
_Handler = Callable[[bytes, dict[str, Any]], Outcome]

BROKEN_IN_CHANGES = 1000
"""Most broken files a ``changes`` answer lists (clients only warn with them)."""
_PATH_COST = 50  # msgpack framing, an id and a hash, beside the path itself
_ID_COST = 10  # msgpack framing and an id, beside the path itself
HASHED_PER_PAGE = 500
"""Most files a page of the id table reads and hashes itself (during the first scan): a page
ends early rather than keep the loop from heartbeats and other clients for long (500 files of
20 KB: about 30 ms)."""


class _Refused(Exception):
    """A request the broker will not serve; the message goes back in an ``error`` reply."""


class RequestHandlers:
    """The broker's request handlers; they count into the state (requests, errors, refusals).

    Args:
        state: what they read (and the counters they keep).
    """

    def __init__(self, state: BrokerState) -> None:
        self._state = state
        self._edges_snapshot: tuple[int, list[tuple[str, str, tuple[str, ...]]]] | None = None
        self._handlers: dict[str, _Handler] = {
            "hello": self.hello,
            "since": self.since,
            "hashes": self.hashes,
            "edges": self.edges,
            "paths": self.paths,
            "report": self.report,
            "running": self.running,
            "status": self.status,
            "list": self.list_rows,
            "sync": self.sync,
            "graph": self.graph,
            "source": self.source,
            "goodbye": self.goodbye,
        }

    def answer(self, identity: bytes, message: Message) -> Outcome:
        """The answer to one verified request (never raises: a failure is an error reply)."""
        state = self._state
        state.requests[message.kind] += 1
        state.clients.touch(identity, time.monotonic())
        try:
            return self._handlers[message.kind](identity, message.body)
        except _Refused as refused:
            return "error", {"message": str(refused), "request": message.kind}
        except Exception as err:
            state.request_errors += 1
            logger.exception(
                "The %r request handler failed (%d failures so far).",
                message.kind,
                state.request_errors,
            )
            return (
                "error",
                {
                    "message": f"{type(err).__name__}: {err}"[:3900]
                    + " (a bug in the broker; its log has the traceback)",
                    "request": message.kind,
                },
            )

    def refuse(self, reason: str, message: str) -> _Refused:
        """Count a refusal; returns the exception for the handler to raise."""
        self._state.refused[reason] += 1
        return _Refused(message)

    # -- handlers -----------------------------------------------------------------------------

    def hello(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Register the client and tell it where the broker stands."""
        state = self._state
        if not state.clients.hello(identity, body, time.monotonic()):
            raise self.refuse(
                "clients",
                f"The broker of {state.root} serves {state.clients.max_clients} clients already "
                "and refuses more; close some, or start the broker again.",
            )
        logger.info(
            "client %s (pid %d) connected: %s", body["client"], body["pid"], body["argv"][:200]
        )
        return "welcome", {
            "epoch": state.epoch,
            "seq": state.seq,
            "root": state.root,
            "heartbeat": state.heartbeat,
        }

    def since(self, identity: bytes, body: dict[str, Any]) -> Outcome:
        """What changed after (epoch, seq): a delta when history covers it and it fits in a page,
        else the first page of every file's hash (answered once the scan has listed the files:
        a fraction of a second)."""
        if not self._state.walked:
            return AfterWalk(lambda: self._answer_since(body))
        return self._answer_since(body)

    def _answer_since(self, body: dict[str, Any]) -> Reply:
        state = self._state
        ids = state.project.ids
        broken = state.project.broken()[:BROKEN_IN_CHANGES]
        answer: dict[str, Any] = {
            "epoch": state.epoch,
            "seq": state.seq,
            "broken": [b.to_wire() for b in broken],
            "next": None,
        }
        if body["epoch"] == state.epoch and state.history.covers(body["seq"], current=state.seq):
            affected, hashes, named = state.history.since(body["seq"])
            files: list[Any] = [[i, ids.path_of(i), hashes[i]] for i in sorted(hashes)]
            names: list[Any] = [[i, ids.path_of(i)] for i in sorted(named - hashes.keys())]
            cost = (
                sum(len(ids.path_of(i)) + _PATH_COST for i in hashes)
                + sum(len(name[1]) + _ID_COST for name in names)
                + 4 * len(affected)
            )
            if cost <= PAGE_BYTES:
                return "changes", {
                    **answer,
                    "full": False,
                    "files": files,
                    "affected": pack_ids(affected),
                    "names": names,
                }
        files, names, after = self._table_page(None)
        return "changes", {
            **answer,
            "full": True,
            "files": files,
            "affected": pack_ids(()),
            "names": names,
            "next": after,
        }

    def hashes(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """The next page of the file id table, after the id ``after``."""
        files, names, after = self._table_page(body["after"])
        return "hashes", {"files": files, "names": names, "next": after}

    def _table_page(self, after: int | None) -> tuple[list[Any], list[Any], int | None]:
        """A page of the file id table, from the id after ``after``: ``[id, path, hash]`` for
        each file (tracked: the hash of its last good version; deleted lately: None), and
        ``[id, path]`` for the other ids (folders, files that vanished before anyone read
        them); and the last id of the page when more follow.

        During the first scan, the files it has not reached are read and hashed here, so the
        answer never depends on how far the scan got (a client that sees a new broker
        revalidates against it, and a remote one gets its sources by these hashes).
        """
        project = self._state.project
        ids = project.ids
        ids.table_given()
        files: list[Any] = []
        names: list[Any] = []
        file_id = 0 if after is None else after + 1
        spent = hashed = 0
        while file_id < len(ids):
            path = ids.path_of(file_id)
            spent += len(path) + _PATH_COST
            if (spent > PAGE_BYTES or hashed >= HASHED_PER_PAGE) and (files or names):
                return files, names, file_id - 1
            digest = project.hash_of(path)
            if digest is None and project.is_unscanned(path):
                digest = _hash_now(path)
                hashed += 1
            if digest is not None or project.was_deleted(path):
                files.append([file_id, path, digest])
            else:
                names.append([file_id, path])
            file_id += 1
        return files, names, None

    def edges(self, identity: bytes, body: dict[str, Any]) -> Outcome:
        """Record the import edges a client saw at run time, owned by that client."""
        name = self._state.clients.name_of(identity)
        if name is None:
            raise self.refuse(
                "edges_unknown_client", "The broker takes edges only from a client that said hello."
            )
        self._state.project.runtime.add(name, ((a, b) for a, b in body["edges"]))
        return NO_REPLY

    def paths(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Take folders of the client's sys.path that lie inside the project as import roots."""
        root = self._state.root
        folders = [
            os.path.normpath(p)
            for p in body["paths"][:1000]
            if os.path.isabs(p) and (p == root or p.startswith(root + "/"))
        ]
        self._state.project.add_import_roots(folders)
        return "ack", {}

    def report(self, identity: bytes, body: dict[str, Any]) -> Outcome:
        """Note a client's progress: last seq applied, stale modules, last reload error."""
        self._state.clients.report(identity, body, time.monotonic())
        return NO_REPLY

    def running(self, identity: bytes, body: dict[str, Any]) -> Outcome:
        """Keep what a client runs of the files it reported; queue its events to republish."""
        state = self._state
        name = state.clients.name_of(identity)
        if name is None or name != body["client"]:
            raise self.refuse(
                "running_unknown_client",
                "The broker takes 'running' reports only from a client that said hello.",
            )
        state.fleet.update(name, body["files"], body["events"], body["lost"])
        return NO_REPLY

    def status(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Everything ``relmod status`` shows (long lists cut: see ``list``)."""
        return "status", {"status": broker_status(self._state)}

    def list_rows(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """A page of one of the lists status cuts short: ``clients`` or ``broken``."""
        state = self._state
        what = body["what"]
        rows: list[dict[str, Any]]
        if what == "clients":
            rows = client_rows(state)
            key = "client"
        elif what == "broken":
            rows = broken_rows(state)
            key = "path"
        else:
            raise self.refuse("list", f"The broker lists 'clients' or 'broken', not {what!r:.80}.")
        keys = [row[key] for row in rows]
        start = bisect.bisect_right(keys, body["after"]) if body["after"] else 0
        end = _page_end(rows, start, lambda row: 200 + sum(len(str(v)) for v in row.values()))
        return "list", {
            "items": rows[start:end],
            "next": keys[end - 1] if end < len(rows) else None,
            "total": len(rows),
        }

    def sync(self, identity: bytes, body: dict[str, Any]) -> Outcome:
        """Publish every save made before now, then answer with the sequence number after it.

        The broker answers at the end of this turn of its loop (all syncs of a turn share one
        look at the files), or later while git holds changes back.
        """
        return AFTER_SYNC

    def graph(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """A page of the dependency graph's edges, with their origins, after the edge ``after``."""
        project = self._state.project
        version = project.version + project.runtime.changes
        snapshot = self._edges_snapshot
        if snapshot is None or snapshot[0] != version:
            snapshot = self._edges_snapshot = (version, project.graph.edges())
        _, edges = snapshot
        after = body["after"]
        start = bisect.bisect_right(edges, (after[0], after[1], ("~",))) if after else 0
        end = _page_end(edges, start, lambda e: len(e[0]) + len(e[1]) + 30)
        return "graph", {
            "edges": [[a, b, list(origins)] for a, b, origins in edges[start:end]],
            "next": list(edges[end - 1][:2]) if end < len(edges) else None,
            "total": len(edges),
        }

    def source(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """The bytes of the current file with this content hash (None when there is none)."""
        digest = body["hash"]
        data = self._state.project.source(digest)
        if data is not None and len(data) > self._state.codec.max_payload - 1024:
            logger.warning("source %s is too large to send (%d bytes)", digest, len(data))
            data = None
        return "source", {"hash": digest, "data": data}

    def goodbye(self, identity: bytes, body: dict[str, Any]) -> Reply:
        """Forget a client that is closing (and the runtime edges only it reported)."""
        if self._state.clients.goodbye(identity, body["client"]):
            logger.info("client %s said goodbye", body["client"])
        return "ack", {}


def _hash_now(path: str) -> str | None:
    try:
        return content_hash(read_source(path))
    except OSError:
        return None


def _page_end(items: Sequence[Any], start: int, cost: Callable[[Any], int]) -> int:
    """Where a page starting at ``start`` ends: at least one item, at most PAGE_BYTES."""
    end = start
    spent = 0
    while end < len(items):
        spent += cost(items[end])
        if spent > PAGE_BYTES and end > start:
            break
        end += 1
    return end
