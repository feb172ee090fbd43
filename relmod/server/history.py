"""The broker's memory of what it published, to answer "what changed since (epoch, seq)?".

Every published sequence number (an invalidation or a broken-file announcement) is recorded, so
the kept entries always form an unbroken run up to the current one. A client that lost some
publications asks with the last sequence number it applied: when every later one is still kept,
it gets the union of what they invalidated; otherwise it must revalidate everything.

Example:
    >>> history = History()
    >>> history.record_invalidation(1, ['/p/a.py'], ['/p/a.py', '/p/b.py'], {'/p/a.py': 'h1'})
    >>> history.record_broken(2, '/p/c.py')
    >>> history.covers(0, current=2), history.since(0)
    (True, (['/p/a.py', '/p/b.py'], {'/p/a.py': 'h1'}))
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Entry", "History"]

MAX_ENTRIES = 10_000
"""How many publications are kept."""
MAX_ITEMS = 1_000_000
"""How many paths all kept entries may hold together (bounds memory during huge storms)."""


@dataclass(frozen=True)
class Entry:
    """One published sequence number.

    Attributes:
        seq: its sequence number.
        time: when it was published (seconds since the epoch).
        changed: the files it announced as changed (for a broken announcement: that file).
        affected: the files it invalidated (empty for a broken announcement).
        hashes: the new hashes of the changed files (empty for a broken announcement).
        kind: ``"invalidate"`` or ``"broken"``.
    """

    seq: int
    time: float
    changed: tuple[str, ...]
    affected: tuple[str, ...]
    hashes: Mapping[str, str | None]
    kind: str

    @property
    def size(self) -> int:
        """How many paths the entry holds."""
        return len(self.changed) + len(self.affected) + len(self.hashes)


class History:
    """The last publications, oldest first (see the module docstring)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_items: int = MAX_ITEMS) -> None:
        self._entries: deque[Entry] = deque()
        self._max_entries = max_entries
        self._max_items = max_items
        self._items = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record_invalidation(
        self,
        seq: int,
        changed: Sequence[str],
        affected: Sequence[str],
        hashes: Mapping[str, str | None],
        when: float | None = None,
    ) -> None:
        """Remember a published invalidation."""
        entry = Entry(
            seq,
            time.time() if when is None else when,
            tuple(changed),
            tuple(affected),
            dict(hashes),
            "invalidate",
        )
        self._add(entry)

    def record_broken(self, seq: int, path: str, when: float | None = None) -> None:
        """Remember a published broken-file announcement."""
        self._add(Entry(seq, time.time() if when is None else when, (path,), (), {}, "broken"))

    def _add(self, entry: Entry) -> None:
        if self._entries and entry.seq != self._entries[-1].seq + 1:
            # A hole would make covers() lie: start over from this entry.
            self._entries.clear()
            self._items = 0
        self._entries.append(entry)
        self._items += entry.size
        while len(self._entries) > 1 and (
            len(self._entries) > self._max_entries or self._items > self._max_items
        ):
            self._items -= self._entries.popleft().size

    def covers(self, seq: int, *, current: int) -> bool:
        """Whether every publication after ``seq``, up to ``current``, is still kept."""
        if seq > current:
            return False
        if seq == current:
            return True
        return bool(self._entries) and self._entries[0].seq <= seq + 1

    def since(self, seq: int) -> tuple[list[str], dict[str, str | None]]:
        """The union of files invalidated after ``seq`` and the latest hash of each changed one.

        Call :meth:`covers` first; entries already forgotten are silently missing here.
        """
        affected: set[str] = set()
        hashes: dict[str, str | None] = {}
        for entry in self._entries:
            if entry.seq > seq:
                affected.update(entry.affected)
                hashes.update(entry.hashes)  # oldest first, so the newest hash wins
        return sorted(affected), hashes

    def recent(self, count: int) -> list[Entry]:
        """The last ``count`` entries, newest first."""
        result: list[Entry] = []
        for entry in reversed(self._entries):
            if len(result) >= count:
                break
            result.append(entry)
        return result
