"""The broker's memory of what it published, to answer "what changed since (epoch, seq)?".

Every published sequence number (an invalidation or a broken-file announcement) is recorded, so
the kept entries always form an unbroken run up to the current one. A client that lost some
publications asks with the last sequence number it applied: when every later one is still kept,
it gets the union of what they invalidated; otherwise it must revalidate everything.

Entries hold file ids (:mod:`relmod.server.fileids`), the affected ones packed as they were
published, so a storm of big invalidations costs a few bytes per file, not a path.

Example:
    >>> from relmod.protocol import pack_ids
    >>> history = History()
    >>> history.record_invalidation(1, [0], pack_ids([0, 1]), ['h1'], named=[1])
    >>> history.record_broken(2, 2)
    >>> history.covers(0, current=2), history.since(0)
    (True, ({0, 1}, {0: 'h1'}, {1}))
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from relmod.protocol import count_ids, unpack_ids

__all__ = ["Entry", "History"]

MAX_ENTRIES = 10_000
"""How many publications are kept."""
MAX_ITEMS = 1_000_000
"""How many ids all kept entries may hold together (bounds memory during huge storms)."""
_NO_IDS = b"\x02"  # an empty packed id set


@dataclass(frozen=True)
class Entry:
    """One published sequence number.

    Attributes:
        seq: its sequence number.
        time: when it was published (seconds since the epoch).
        changed: the ids of the files it announced as changed (for a broken announcement: that
            file).
        affected: the ids it invalidated, packed (empty for a broken announcement).
        hashes: the new hash of each changed file, in the order of ``changed`` (empty for a
            broken announcement).
        named: the ids it named with their paths besides the changed ones.
        kind: ``"invalidate"`` or ``"broken"``.
    """

    seq: int
    time: float
    changed: tuple[int, ...]
    affected: bytes
    hashes: tuple[str | None, ...]
    named: tuple[int, ...]
    kind: str

    @property
    def affected_count(self) -> int:
        """How many ids it invalidated."""
        return count_ids(self.affected)

    @property
    def size(self) -> int:
        """How many ids the entry holds."""
        return len(self.changed) + self.affected_count + len(self.named)


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
        changed: Sequence[int],
        affected: bytes,
        hashes: Sequence[str | None],
        *,
        named: Sequence[int] = (),
        when: float | None = None,
    ) -> None:
        """Remember a published invalidation (``affected`` packed as it went out)."""
        entry = Entry(
            seq,
            time.time() if when is None else when,
            tuple(changed),
            affected,
            tuple(hashes),
            tuple(named),
            "invalidate",
        )
        self._add(entry)

    def record_broken(self, seq: int, file_id: int, when: float | None = None) -> None:
        """Remember a published broken-file announcement."""
        when = time.time() if when is None else when
        self._add(Entry(seq, when, (file_id,), _NO_IDS, (), (), "broken"))

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

    def since(self, seq: int) -> tuple[set[int], dict[int, str | None], set[int]]:
        """What the publications after ``seq`` said, together: the ids they invalidated, the
        newest hash of each changed file, and the other ids they named.

        Call :meth:`covers` first; entries already forgotten are silently missing here.
        """
        affected: set[int] = set()
        hashes: dict[int, str | None] = {}
        named: set[int] = set()
        for entry in self._entries:
            if entry.seq > seq and entry.kind == "invalidate":
                affected.update(unpack_ids(entry.affected))
                hashes.update(zip(entry.changed, entry.hashes, strict=True))  # newest wins
                named.update(entry.named)
        return affected, hashes, named

    def recent(self, count: int) -> list[Entry]:
        """The last ``count`` entries, newest first."""
        result: list[Entry] = []
        for entry in reversed(self._entries):
            if len(result) >= count:
                break
            result.append(entry)
        return result
