"""The broker's shared state: one object the loop writes and the request handlers and status read.

The broker's loop (:mod:`relmod.server.broker`) owns the sockets and is the only writer of the
sequence number, the scan's progress and the counters below; request handlers
(:mod:`relmod.server.requests`) and the status (:mod:`relmod.server.status`) read this object and
nothing else of the broker, and hand their replies back to the loop instead of sending them.
Everything runs on the loop's thread, so nothing here needs a lock::

    Broker (sockets, threads, timers) ──writes──> BrokerState <──reads── RequestHandlers, status
                 ^                                                              │
                 └──────────────────── replies (returned) ──────────────────────┘
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from relmod.protocol import Codec
from relmod.server.clients import ClientTable
from relmod.server.fleet import Fleet
from relmod.server.history import History
from relmod.server.pending import PendingChanges
from relmod.server.project import Project
from relmod.server.scanner import ProjectScan
from relmod.watch import Watcher

__all__ = ["BrokerState"]


@dataclass(eq=False)
class BrokerState:
    """What one broker knows and has counted (see the module docstring).

    Attributes:
        root: the real path of the project.
        epoch: this broker instance's epoch.
        heartbeat: seconds between heartbeats.
        codec: signs and checks every message (its ``dropped`` counters show in status).
        project: the files, their hashes, the graph and the broken files.
        history: recent publications, for ``since``.
        clients: the connected client processes.
        pending: changes waiting to be published.
        fleet: what each client runs of each file, and its reloads and failures to republish.
        seq: the last sequence number published.
        scan: the first scan, once started.
        watcher: the file watcher, once started.
        walked: whether the scan has listed the project's files (a full answer needs the list).
        pub_endpoint, router_endpoint, curve: where the sockets are bound, and whether with CURVE.
        started: when the broker started (seconds since the epoch).
        requests: requests handled, per kind.
        request_errors: requests whose handler failed (bugs of ours).
        refused: requests refused, per reason.
        reply_refused: replies dropped, per reason (``queue_full``, ``unroutable``).
        publish_errors, batch_errors: publications and batches that failed.
    """

    root: str
    epoch: str
    heartbeat: float
    codec: Codec
    project: Project
    history: History
    clients: ClientTable
    pending: PendingChanges
    fleet: Fleet = field(default_factory=Fleet)
    seq: int = 0
    scan: ProjectScan | None = None
    watcher: Watcher | None = None
    walked: bool = False
    pub_endpoint: str = ""
    router_endpoint: str = ""
    curve: bool = False
    started: float = field(default_factory=time.time)
    requests: Counter[str] = field(default_factory=Counter)
    request_errors: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    reply_refused: Counter[str] = field(default_factory=Counter)
    publish_errors: int = 0
    batch_errors: int = 0
    _started_mono: float = field(default_factory=time.monotonic, repr=False)

    @property
    def uptime(self) -> float:
        """Seconds since the broker started."""
        return time.monotonic() - self._started_mono
