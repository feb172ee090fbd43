"""The broker's answer to ``status``: everything ``relmod status`` shows, as one plain dict.

Fields (every one always present)::

    version, pid, host, root        which broker, where
    started, uptime                 seconds since the epoch; seconds
    epoch, seq                      the current epoch and sequence number
    heartbeat                       seconds between heartbeats
    watcher                         {backend, errors (on_change failures), batches}
    code_cache                      the code cache the broker stores each edit's code in,
                                    for the workers on its machine; None when it is off
    files                           Python files tracked
    scan                            the first scan: {state ("walking", "scanning", "checking",
                                    "done", "stopped"), total, scanned, cached, checked,
                                    to_check, processes, scan_seconds, check_seconds}
    roots                           the folders absolute imports are searched in
    graph                           {files (nodes), edges, runtime_edges, runtime_clients}
    endpoints                       {pub, router, curve (bool)}
    clients                         [{client, pid, host, argv, connected_at, last_seen_ago,
                                      seq (last applied), stale (modules pending reload),
                                      error (last reload error)}], the first STATUS_ROWS
    clients_total                   how many clients there are (the "list" request pages them)
    broken                          [{path, lineno, message, compiles (bool), clients,
                                      clients_failed}], the first STATUS_ROWS: files that do
                                    not compile, and files whose newest version failed to run
                                    in some client (at import time: lineno and message are
                                    the most common error; clients counts those running it)
    broken_total                    how many files are broken
    fleet                           the per-file view: {clients (how many reported what they
                                    run), files: [{path, clients, newest, older, failed,
                                    errors: [{lineno, message, clients}]}] (the first
                                    STATUS_ROWS files not at their newest version in every
                                    client running them, most failures first), files_total,
                                    events (reloads and failures reported), lost, refused}
    recent                          the last 20 publications, newest first:
                                    [{seq, time, kind, changed (first 50), changed_count,
                                      affected (count)}]
    history                         publications kept for "since"
    pending                         {paths (waiting to be published), git_hold (bool)}
    dropped                         messages dropped, per reason of relmod.protocol.REASONS,
                                    and total
    requests                        requests handled, per kind
    request_errors                  requests whose handler failed
    refused                         what the broker refused to one peer, per reason: clients
                                    (hello beyond the limit), edges_untracked, edges_limit,
                                    edges_unknown_client, queue_full (a peer not reading its
                                    replies), unroutable (a peer gone)
    publish_errors, batch_errors    publications and batches that failed (bugs; see the log)
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from relmod._version import __version__
from relmod.codecache import cache_dir
from relmod.protocol import REASONS
from relmod.server.state import BrokerState

__all__ = ["RECENT", "STATUS_ROWS", "broken_rows", "broker_status", "client_rows", "fleet_files"]

STATUS_ROWS = 100
"""How many clients and broken files the status lists; ``relmod status`` pages the rest."""
RECENT = 20
"""How many recent publications the status lists."""
CHANGED_SHOWN = 50
"""How many changed paths the status lists per publication."""


def client_rows(broker: BrokerState) -> list[dict[str, Any]]:
    """Every client as a row, sorted by name (the order the "list" request pages in)."""
    rows = broker.clients.rows(time.monotonic())
    rows.sort(key=lambda row: row["client"])
    return rows


def fleet_files(broker: BrokerState) -> list[dict[str, Any]]:
    """The files not at their newest version in every client that runs them."""
    return broker.fleet.files(broker.project.hash_of)


def broken_rows(
    broker: BrokerState, files: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every broken file, sorted by path: those that do not compile, and those whose newest
    version failed in a client (the order the "list" request pages in). ``files``: the
    :func:`fleet_files` already at hand."""
    rows: dict[str, dict[str, Any]] = {
        b.path: {**b.to_wire(), "compiles": False, "clients": 0, "clients_failed": 0}
        for b in broker.project.broken()
    }
    for entry in fleet_files(broker) if files is None else files:
        if not entry["failed"]:
            continue
        row = rows.get(entry["path"])
        if row is None:
            error = entry["errors"][0]
            row = rows[entry["path"]] = {
                "path": entry["path"],
                "lineno": error["lineno"],
                "message": error["message"],
                "compiles": True,
            }
        row["clients"], row["clients_failed"] = entry["clients"], entry["failed"]
    return [rows[path] for path in sorted(rows)]


def broker_status(broker: BrokerState) -> dict[str, Any]:
    """Everything ``relmod status`` shows about ``broker``, as a msgpack-safe dict."""
    now = time.monotonic()
    watcher = broker.watcher
    dropped: Counter[str] = Counter(broker.codec.dropped)
    graph = broker.project.graph
    files = fleet_files(broker)
    broken = broken_rows(broker, files)
    recent = [
        {
            "seq": entry.seq,
            "time": entry.time,
            "kind": entry.kind,
            "changed": [broker.project.ids.path_of(i) for i in entry.changed[:CHANGED_SHOWN]],
            "changed_count": len(entry.changed),
            "affected": entry.affected_count,
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
        "code_cache": cache_dir(),
        "files": broker.project.file_count,
        "scan": broker.scan.progress.to_wire() if broker.scan else {"state": "none"},
        "roots": list(broker.project.roots.roots),
        "graph": {
            "files": len(graph),
            "edges": graph.edge_count(),
            "runtime_edges": len(broker.project.runtime),
            "runtime_clients": broker.project.runtime.clients(),
        },
        "endpoints": {
            "pub": broker.pub_endpoint,
            "router": broker.router_endpoint,
            "curve": broker.curve,
        },
        "clients": broker.clients.rows(now)[:STATUS_ROWS],
        "clients_total": len(broker.clients),
        "broken": broken[:STATUS_ROWS],
        "broken_total": len(broken),
        "fleet": {
            "clients": broker.fleet.clients,
            "files": files[:STATUS_ROWS],
            "files_total": len(files),
            "events": broker.fleet.events,
            "lost": broker.fleet.lost,
            "refused": broker.fleet.refused,
        },
        "recent": recent,
        "history": len(broker.history),
        "pending": {"paths": len(broker.pending), "git_hold": broker.pending.holding},
        "dropped": {**dict.fromkeys(REASONS, 0), **dropped, "total": sum(dropped.values())},
        "requests": dict(broker.requests),
        "request_errors": broker.request_errors,
        "refused": {
            **broker.refused,
            **{f"edges_{k}": v for k, v in broker.project.runtime.refused.items()},
            "clients": broker.refused["clients"] + broker.clients.refused,
            "queue_full": broker.reply_refused["queue_full"],
            "unroutable": broker.reply_refused["unroutable"],
        },
        "publish_errors": broker.publish_errors,
        "batch_errors": broker.batch_errors,
    }
