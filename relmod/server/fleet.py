"""What each client runs of each file, as the clients report it: the fleet at a glance.

A client sends ``running`` a moment after modules are marked stale, reload or fail: for each file
whose state changed, the hash of the version it runs, how often it ran, and the hash of a version
that failed with the line and the error. The broker keeps the last of these per client and file,
and compares them with the newest version it knows of each file::

    running {client, files: [{path, hash, version, failed, lineno, message}], events, lost}
        -> Fleet.update -> per file: {client: Run}
                        -> outbox (the events, republished as "activity" by the broker's loop)

For ``relmod status``, a file whose clients do not all run its newest version shows how many run
it, how many an older one (stale, waiting for their next use), and how many failed and why.

Example:
    >>> fleet = Fleet()
    >>> run = {"path": "/p/a.py", "hash": "h1", "version": 1, "failed": "h2", "lineno": 3,
    ...        "message": "RuntimeError: boom"}
    >>> fleet.update("h:1", [run], [], 0)
    >>> fleet.update("h:2", [{**run, "failed": None, "lineno": None, "message": None}], [], 0)
    >>> [row] = fleet.files({"/p/a.py": "h2"}.get)
    >>> row["path"], row["newest"], row["older"], row["failed"], row["errors"][0]["lineno"]
    ('/p/a.py', 0, 1, 1, 3)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_FILES_PER_CLIENT", "Fleet", "Run"]

MAX_FILES_PER_CLIENT = 50_000
"""Most files the broker remembers per client; states of further files are refused (counted)."""
ERRORS_SHOWN = 5
"""How many distinct errors a file's row lists (the most common first)."""


@dataclass(frozen=True)
class Run:
    """What one client runs of one file (see the module docstring)."""

    hash: str | None
    version: int
    failed: str | None
    lineno: int | None
    message: str | None


class Fleet:
    """Every client's runs by file, and the events waiting to be republished."""

    def __init__(self, max_files: int = MAX_FILES_PER_CLIENT) -> None:
        self.max_files = max_files
        self.refused = 0
        self.events = 0
        self.lost = 0
        self._by_path: dict[str, dict[str, Run]] = {}
        self._counts: Counter[str] = Counter()
        self._paths: dict[str, set[str]] = {}  # client -> its paths
        self._outbox: list[tuple[str, list[dict[str, Any]], int]] = []

    def update(
        self,
        client: str,
        files: Iterable[Mapping[str, Any]],
        events: list[dict[str, Any]],
        lost: int,
    ) -> None:
        """Take one ``running`` report of ``client``."""
        paths = self._paths.setdefault(client, set())
        for entry in files:
            path = entry["path"]
            if path not in paths:
                if len(paths) >= self.max_files:
                    self.refused += 1
                    continue
                paths.add(path)
            self._by_path.setdefault(path, {})[client] = Run(
                entry["hash"], entry["version"], entry["failed"], entry["lineno"], entry["message"]
            )
        if events or lost:
            self.events += len(events)
            self.lost += lost
            self._outbox.append((client, events, lost))

    def drop(self, client: str) -> None:
        """Forget a client that left."""
        for path in self._paths.pop(client, ()):
            runs = self._by_path.get(path)
            if runs is not None:
                runs.pop(client, None)
                if not runs:
                    del self._by_path[path]

    def take_outbox(self) -> list[tuple[str, list[dict[str, Any]], int]]:
        """The events reported since the last call: (client, events, lost) per report."""
        taken, self._outbox = self._outbox, []
        return taken

    @property
    def clients(self) -> int:
        """How many clients reported what they run."""
        return len(self._paths)

    def files(self, newest: Callable[[str], str | None]) -> list[dict[str, Any]]:
        """The files not at their newest version in every client that runs them.

        Args:
            newest: the hash of a file's newest version (None: the broker knows none).

        Returns:
            One row per file, most failures first, then by path: ``{path, clients, newest,
            older, failed, errors: [{lineno, message, clients}]}``.
        """
        rows: list[dict[str, Any]] = []
        for path, runs in self._by_path.items():
            current = newest(path)
            counts = Counter[str]()
            errors = Counter[tuple[int | None, str]]()
            for run in runs.values():
                if run.failed is not None and run.failed == current:
                    counts["failed"] += 1
                    errors[(run.lineno, run.message or "an unknown error")] += 1
                elif run.hash == current:
                    counts["newest"] += 1
                else:
                    counts["older"] += 1
            if not counts["older"] and not counts["failed"]:
                continue
            rows.append(
                {
                    "path": path,
                    "clients": len(runs),
                    "newest": counts["newest"],
                    "older": counts["older"],
                    "failed": counts["failed"],
                    "errors": [
                        {"lineno": lineno, "message": message, "clients": count}
                        for (lineno, message), count in errors.most_common(ERRORS_SHOWN)
                    ],
                }
            )
        rows.sort(key=lambda row: (-row["failed"], row["path"]))
        return rows
