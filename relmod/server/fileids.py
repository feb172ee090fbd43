"""The broker's numbering of the paths it speaks of: the file ids of one epoch.

Invalidations name files by id (:func:`relmod.protocol.pack_ids`) instead of by path, so that a
change affecting thousands of modules stays a small message. Ids are given in order, 0, 1, 2...,
and a path keeps its id for the broker's whole life (one epoch), deleted or not, so an id never
names two paths. The broker numbers every file the scan finds before any client can ask for the
table, and anything else (a file created later, a folder the graph names) the first time it is
published.

A client learns the table from a full ``changes`` answer (every id, in pages). What the broker
numbers after that must travel with its path once: :meth:`FileIds.unnamed` picks, among the
ids a publication uses, those that no earlier publication named and that the first full answer
of the epoch did not hold, and remembers them as named. A client that applied every publication
since its own full answer therefore knows every id it meets (the proof is in
``docs/design.md``, "File ids").

Example:
    >>> ids = FileIds()
    >>> ids.id_of('/p/a.py'), ids.id_of('/p/b.py'), ids.id_of('/p/a.py')
    (0, 1, 0)
    >>> ids.table_given()              # the first full answer holds ids 0 and 1
    >>> c = ids.id_of('/p/c.py')
    >>> ids.unnamed([0, 2]), ids.unnamed([2])  # 2 is named once
    ([2], [])
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = ["FileIds"]


class FileIds:
    """Path <-> id for one epoch (see the module docstring). Used by the broker's loop only."""

    def __init__(self) -> None:
        self._paths: list[str] = []
        self._ids: dict[str, int] = {}
        self._given: int | None = None  # how many ids the first full answer could hold
        self._named: set[int] = set()  # ids at or above _given that a publication named

    def __len__(self) -> int:
        return len(self._paths)

    def id_of(self, path: str) -> int:
        """The id of ``path``, given now if it has none."""
        found = self._ids.get(path)
        if found is None:
            path = sys.intern(path)
            found = self._ids[path] = len(self._paths)
            self._paths.append(path)
        return found

    def get(self, path: str) -> int | None:
        """The id of ``path``, or None when it has none."""
        return self._ids.get(path)

    def path_of(self, file_id: int) -> str:
        """The path of an id given by this table."""
        return self._paths[file_id]

    def table_given(self) -> None:
        """A full answer is going out: every id given so far reaches the client with it.

        Only the first call of an epoch counts: no client can hold a table older than that one,
        so ids below it never need naming in a publication.
        """
        if self._given is None:
            self._given = len(self._paths)

    def unnamed(self, ids: Iterable[int]) -> list[int]:
        """Among ``ids`` (about to be published), those a client may not know yet, sorted; they
        count as named from now on."""
        given = self._given
        if given is None:
            return []  # no full answer yet: no client is in this epoch
        fresh = sorted({i for i in ids if i >= given} - self._named)
        self._named.update(fresh)
        return fresh
