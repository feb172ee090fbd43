"""A client's copy of the broker's file ids, and which of them name modules this process loaded.

The broker names files by id in its invalidations (:mod:`relmod.server.fileids`). A client
learns every id from a full ``changes`` answer and every later one from the publications that
first use it; :class:`FileTable` keeps them (broker path -> id) and, apart, the ids whose
invalidation reaches a module of this process: the loaded files, a package's folder, the real
file behind a link, and the folders above them. An invalidation is then the intersection of its
ids with those, so its cost follows what this process loaded, not the size of the project.

Example:
    >>> from relmod.protocol import pack_ids
    >>> table = FileTable()
    >>> table.replace([(0, '/p/a.py'), (1, '/p/b.py'), (2, '/p/c.py')])
    >>> table.loaded(['/p/a.py', '/p/c.py'], root='/p')
    >>> table.check([0, 1, 2]) is None, table.check([0, 7])
    (True, 'unknown id 7')
    >>> sorted(table.reaching([1, 2]))
    ['/p/c.py']
    >>> table.apply([[1, '/p/b.py', 'h1']], pack_ids([1, 2]), [])  # b changed, c depends on it
    (['/p/b.py'], ['/p/c.py'], None)
    >>> table.apply([], pack_ids([9]), [])
    ([], [], 'unknown id 9')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from operator import itemgetter
from typing import Any

from relmod.protocol import unpack_ids

__all__ = ["FileTable"]


class FileTable:
    """The broker's ids as this client knows them (see the module docstring).

    Used by the feed's thread only.

    Args:
        to_local: a broker path as this process names it (the feed's path map); None when
            both name files alike (the usual case: then no call per path).
        to_broker: the other way round.
    """

    def __init__(
        self,
        to_local: Callable[[str], str] | None = None,
        to_broker: Callable[[str], str] | None = None,
    ) -> None:
        self._mapped = to_local is not None
        self._to_local = to_local or _same
        self._to_broker = to_broker or _same
        self._ids: dict[str, int] = {}  # broker path -> id
        self._paths: dict[int, str] = {}  # id -> broker path
        self._top = -1  # the largest id known: with no hole below it, a bound check suffices
        self._names: set[str] = set()  # local paths whose invalidation reaches a module here
        self._watch: dict[int, str] = {}  # id -> local path, for the ids of those names

    def __len__(self) -> int:
        return len(self._paths)

    def replace(self, entries: Iterable[tuple[int, str]]) -> str | None:
        """A full table (a full answer): forget every id known before. Returns what is wrong
        when the table contradicts itself, else None (see :meth:`learn`)."""
        self._ids.clear()
        self._paths.clear()
        self._top = -1
        self._watch.clear()
        return self.learn(entries)

    def learn(self, entries: Iterable[tuple[int, str]]) -> str | None:
        """Add named ids; returns what is wrong when one contradicts the table (then the rest
        is not added), else None."""
        for file_id, path in entries:
            known = self._paths.get(file_id)
            if known is not None:
                if known != path:
                    return f"id {file_id} names {path}, but {known} before"
                continue
            other = self._ids.get(path)
            if other is not None:
                return f"{path} has id {file_id}, but {other} before"
            self._ids[path] = file_id
            self._paths[file_id] = path
            if file_id > self._top:
                self._top = file_id
            local = self._to_local(path)
            if local in self._names:
                self._watch[file_id] = local
        return None

    def check(self, ids: Collection[int]) -> str | None:
        """What is wrong with ids to apply (one the table does not know), or None."""
        if not ids:
            return None
        top = max(ids)
        if top > self._top:
            return f"unknown id {top}"
        if self._top + 1 != len(self._paths):
            # Holes: ids the broker gave and never published (a new file that was broken from
            # its first save, say). Every id is looked up then, in C.
            missing = set(ids).difference(self._paths)
            if missing:
                return f"unknown id {min(missing)}"
        return None

    def loaded(self, paths: Iterable[str], *, root: str | None) -> None:
        """Modules were loaded: ``paths`` reach them (keys, package folders, real files); the
        folders above them up to the local ``root`` do too (a folder's invalidation marks every
        module below it)."""
        names = self._names
        for path in paths:
            while path not in names:
                names.add(path)
                file_id = self._ids.get(self._to_broker(path))
                if file_id is not None:
                    self._watch[file_id] = path
                parent = os.path.dirname(path)
                if root is None or parent == path or not _inside(parent, root):
                    break
                path = parent

    def apply(
        self, changed: Sequence[Sequence[Any]], affected: bytes, names: Sequence[Sequence[Any]]
    ) -> tuple[list[str], list[str], str | None]:
        """What an invalidation (or a ``since`` delta) means in this process: the local paths of
        its changed files, those of its ids that reach a loaded module, and what is wrong with
        it (an id the table does not know, or contradicting it: then no paths), or None.

        ``changed`` and ``names`` are the message's ``[id, path, ...]`` entries, ``affected`` its
        packed id set, all as the codec checked them. Every client runs this once per save,
        mostly with cold caches: the usual case makes three Python calls (unpack_ids, check,
        reaching).
        """
        ids = unpack_ids(affected)
        known = self._paths
        problem = None
        for entry in changed:  # usually known already: learn them only when one is not
            if known.get(entry[0]) != entry[1]:
                problem = self.learn([(entry[0], entry[1]) for entry in changed])
                break
        if problem is None and names:
            problem = self.learn([(entry[0], entry[1]) for entry in names])
        if problem is None:
            problem = self.check(ids)
        if problem is not None:
            return [], [], problem
        paths = list(map(_PATH, changed))
        if self._mapped:
            paths = list(map(self._to_local, paths))
        return paths, self.reaching(ids), None

    def reaching(self, ids: Collection[int]) -> list[str]:
        """The local paths, among the ids, whose invalidation reaches a module of this process:
        the smaller side is walked."""
        watch = self._watch
        if len(ids) <= len(watch):  # (in C, no Python call per id: a path is never empty)
            return list(filter(None, map(watch.get, ids)))
        members = ids if isinstance(ids, (set, frozenset)) else set(ids)
        return [path for file_id, path in watch.items() if file_id in members]


_PATH = itemgetter(1)  # an entry's path, without a Python call


def _same(path: str) -> str:
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
