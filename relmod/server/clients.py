"""The broker's table of connected client processes, for ``relmod status``.

A client says ``hello`` when it connects, ``report`` when its state changes (and every few
seconds as a keep-alive), and ``goodbye`` when it closes. Any request refreshes its entry. A client
on this host whose process is gone is dropped at the next look (the broker looks every second);
one on another host when it was not heard from for :data:`CLIENT_TIMEOUT` seconds (three missed
keep-alives). The table holds at most :data:`MAX_CLIENTS`; a hello beyond that is refused.
Entries are keyed by the client's name (``host:pid``); the ROUTER identity of its DEALER socket
maps requests back to the name.

Example:
    >>> table = ClientTable()
    >>> table.hello(b'id1', {'client': 'h:1', 'pid': 1, 'host': 'h', 'argv': 'app.py'}, now=0.0)
    True
    >>> table.report(b'id1', {'client': 'h:1', 'seq': 4, 'stale': 2, 'error': None}, now=1.0)
    >>> [(row['pid'], row['seq'], row['stale']) for row in table.rows(now=2.0)]
    [(1, 4, 2)]
    >>> table.expire(now=100.0), len(table)
    ([('h:1', 'not heard from for 99 s')], 0)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relmod.connfile import pid_alive

__all__ = ["CLIENT_TIMEOUT", "ClientRecord", "ClientTable"]

CLIENT_TIMEOUT = 60.0
"""Seconds of silence after which a client is dropped from the table."""
MAX_CLIENTS = 1_000
"""The table never grows beyond this many entries; a hello beyond it is refused."""


@dataclass
class ClientRecord:
    """One client process as the broker knows it.

    Attributes:
        name: the name the client gave (``host:pid``).
        identity: the ROUTER identity of its DEALER socket.
        pid: its process id, when it said hello.
        host: its host name, when it said hello.
        argv: its command line, when it said hello.
        connected_at: when it said hello (seconds since the epoch).
        last_seen: when it was last heard from (monotonic seconds).
        seq: the last sequence number it reported applying.
        stale: how many of its modules it reported stale, waiting for their next use.
        error: the last reload error it reported.
    """

    name: str
    identity: bytes
    pid: int | None = None
    host: str | None = None
    argv: str | None = None
    connected_at: float | None = None
    last_seen: float = 0.0
    seq: int | None = None
    stale: int = 0
    error: str | None = None
    patched: int = 0  # held objects its reloads updated in place
    unpatched: int = 0  # and those they had to leave as they were


class ClientTable:
    """Client records by name, with an identity index (see the module docstring)."""

    def __init__(
        self,
        timeout: float = CLIENT_TIMEOUT,
        *,
        on_drop: Callable[[str], None] | None = None,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.timeout = timeout
        self.max_clients = max_clients
        self.refused = 0
        self._on_drop = on_drop
        self._host = socket.gethostname()
        self._records: dict[str, ClientRecord] = {}
        self._names: dict[bytes, str] = {}  # ROUTER identity -> client name

    def __len__(self) -> int:
        return len(self._records)

    def hello(self, identity: bytes, body: Mapping[str, Any], now: float) -> bool:
        """Register a client that said hello (a reconnecting client replaces its old entry).

        Returns False, and counts a refusal, when the table is full.
        """
        name = body["client"]
        if name not in self._records and len(self._records) >= self.max_clients:
            self.refused += 1
            return False
        self._drop(name)
        record = ClientRecord(
            name=name,
            identity=identity,
            pid=body["pid"],
            host=body["host"],
            argv=body["argv"],
            connected_at=time.time(),
            last_seen=now,
        )
        self._records[name] = record
        self._names[identity] = name
        return True

    def name_of(self, identity: bytes) -> str | None:
        """The name of the client behind a ROUTER identity, if it said hello."""
        return self._names.get(identity)

    def report(self, identity: bytes, body: Mapping[str, Any], now: float) -> None:
        """Update a client's progress; a client unknown so far (the broker restarted) is added."""
        name = body["client"]
        record = self._records.get(name)
        if record is None:
            if len(self._records) >= self.max_clients:
                self.refused += 1
                return
            record = self._records[name] = ClientRecord(name=name, identity=identity)
        if record.identity != identity:
            self._names.pop(record.identity, None)
            record.identity = identity
        self._names[identity] = name
        record.seq = body["seq"]
        record.stale = body["stale"]
        record.error = body["error"]
        record.patched = body.get("patched") or 0
        record.unpatched = body.get("unpatched") or 0
        record.last_seen = now

    def touch(self, identity: bytes, now: float) -> None:
        """Note that the client behind this identity was heard from."""
        name = self._names.get(identity)
        if name is not None and name in self._records:
            self._records[name].last_seen = now

    def goodbye(self, identity: bytes, name: str) -> bool:
        """Drop a client that said goodbye; returns whether it was known."""
        known = self._drop(name)
        owner = self._names.pop(identity, None)
        if owner is not None and owner != name:
            known = self._drop(owner) or known
        return known

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop clients whose process died (on this host) or that were silent for longer than
        the timeout; returns (name, why) of each."""
        gone: list[tuple[str, str]] = []
        for name, record in self._records.items():
            if record.host == self._host and record.pid is not None and not pid_alive(record.pid):
                gone.append((name, f"its process {record.pid} is gone"))
            elif now - record.last_seen > self.timeout:
                gone.append((name, f"not heard from for {now - record.last_seen:.0f} s"))
        for name, _why in gone:
            self._drop(name)
        return gone

    def rows(self, now: float) -> list[dict[str, Any]]:
        """The table as plain dicts (for the status reply), sorted by host and pid."""
        rows = []
        for record in self._records.values():
            rows.append(
                {
                    "client": record.name,
                    "pid": record.pid,
                    "host": record.host,
                    "argv": record.argv,
                    "connected_at": record.connected_at,
                    "last_seen_ago": round(max(0.0, now - record.last_seen), 3),
                    "seq": record.seq,
                    "stale": record.stale,
                    "error": record.error,
                    "patched": record.patched,
                    "unpatched": record.unpatched,
                }
            )
        rows.sort(key=lambda row: (row["host"] or "", row["pid"] or 0, row["client"]))
        return rows

    def _drop(self, name: str) -> bool:
        record = self._records.pop(name, None)
        if record is None:
            return False
        if self._names.get(record.identity) == name:
            del self._names[record.identity]
        if self._on_drop is not None:
            self._on_drop(name)
        return True
