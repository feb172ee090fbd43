"""The broker's answer to ``status``: everything ``relmod status`` shows, as one plain dict.

Fields (every one always present)::

    version, pid, host, root        which broker, where
    started, uptime                 seconds since the epoch; seconds
    epoch, seq                      the current epoch and sequence number
    heartbeat                       seconds between heartbeats
    watcher                         {backend, errors (on_change failures), batches}
    files                           Python files tracked
    graph                           {files (nodes), edges, runtime_edges}
    endpoints                       {pub, router, curve (bool)}
    clients                         [{client, pid, host, argv, connected_at, last_seen_ago,
                                      seq (last applied), stale (modules pending reload),
                                      error (last reload error)}]
    broken                          [{path, lineno, message}]
    recent                          the last 20 publications, newest first:
                                    [{seq, time, kind, changed (first 50), changed_count,
                                      affected (count)}]
    history                         publications kept for "since"
    pending                         {paths (waiting to be published), git_hold (bool)}
    dropped                         messages dropped, per reason of relmod.protocol.REASONS,
                                    and total
    requests                        requests handled, per kind
    request_errors                  requests whose handler failed
    publish_errors, batch_errors    publications and batches that failed (bugs; see the log)
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from relmod._version import __version__
from relmod.graph import RUNTIME
from relmod.protocol import REASONS

if TYPE_CHECKING:
    from relmod.server.broker import Broker

__all__ = ["RECENT", "broker_status"]

RECENT = 20
"""How many recent publications the status lists."""
CHANGED_SHOWN = 50
"""How many changed paths the status lists per publication."""


def broker_status(broker: Broker) -> dict[str, Any]:
    """Everything ``relmod status`` shows about ``broker``, as a msgpack-safe dict."""
    now = time.monotonic()
    watcher = broker.watcher
    sockets = broker.sockets
    dropped: Counter[str] = Counter(broker.codec.dropped)
    graph = broker.project.graph
    recent = [
        {
            "seq": entry.seq,
            "time": entry.time,
            "kind": entry.kind,
            "changed": list(entry.changed[:CHANGED_SHOWN]),
            "changed_count": len(entry.changed),
            "affected": len(entry.affected),
        }
        for entry in broker.history.recent(RECENT)
    ]
    return {
        "version": __version__,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "root": broker.root,
        "started": broker.started,
        "uptime": round(broker.uptime, 3),
        "epoch": broker.epoch,
        "seq": broker.seq,
        "heartbeat": broker.heartbeat,
        "watcher": {
            "backend": watcher.backend if watcher else "none",
            "errors": watcher.errors if watcher else 0,
            "batches": getattr(watcher, "batches", 0),
        },
        "files": broker.project.file_count,
        "graph": {
            "files": len(graph),
            "edges": graph.edge_count(),
            "runtime_edges": sum(1 for *_, origins in graph.edges() if RUNTIME in origins),
        },
        "endpoints": {
            "pub": sockets.pub_endpoint if sockets else "",
            "router": sockets.router_endpoint if sockets else "",
            "curve": bool(sockets and sockets.curve),
        },
        "clients": broker.clients.rows(now),
        "broken": [b.to_wire() for b in broker.project.broken()],
        "recent": recent,
        "history": len(broker.history),
        "pending": {"paths": len(broker.pending), "git_hold": broker.pending.holding},
        "dropped": {**dict.fromkeys(REASONS, 0), **dropped, "total": sum(dropped.values())},
        "requests": dict(broker.handlers.counts),
        "request_errors": broker.handlers.errors,
        "publish_errors": broker.publish_errors,
        "batch_errors": broker.batch_errors,
    }
