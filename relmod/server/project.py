"""What the broker knows about the project's files, and what a batch of changes means.

:class:`Project` holds, for every Python file under the root: the content hash of its last good
version, its stat signature, whether it is broken (does not compile), and its static imports in a
:class:`~relmod.graph.DependencyGraph` that also holds the edges clients report from what ran.

:meth:`Project.apply` turns paths a watcher reported into an :class:`Update`: which files really
changed (by content hash, so a touch or an identical save changes nothing), which became broken,
and every file affected (the changed files and their transitive dependents). The broker publishes
the update; this module never touches a socket.

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
    >>> _ = (root / 'util.py').write_text('X = 1\\n')
    >>> _ = (root / 'app.py').write_text('import util\\n')
    >>> project = Project(str(root)); project.load_all()
    2
    >>> _ = (root / 'util.py').write_text('X = 2\\n')
    >>> update = project.apply([str(root / 'util.py')])
    >>> [pathlib.Path(p).name for p in update.affected]
    ['app.py', 'util.py']
    >>> project.apply([str(root / 'util.py')]).empty  # same content again
    True
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relmod.graph import RUNTIME, STATIC, DependencyGraph
from relmod.ignore import is_ignored
from relmod.scan import iter_python_files
from relmod.server.scanner import FileRecord, inside, read_record, scan_many
from relmod.sources import Broken, StatSignature, content_hash, read_source, stat_signature

__all__ = ["Project", "Update"]

logger = logging.getLogger(__name__)

RECENT_SECONDS = 2.0
"""A file modified this recently is re-read by :meth:`Project.suspects`, whatever its stat says
(mtime can have a one-second resolution, so an edit may leave the signature unchanged)."""
EMPTY_HASH = content_hash(b"")
SETTLE_TRIES = 3
SETTLE_STEP = 0.02
"""A file read empty that had content is read again up to SETTLE_TRIES times, SETTLE_STEP
seconds apart: an in-place save truncates the file before writing it, and a writer stalled in
between would otherwise make an identical save look like two changes."""
DELETED_KEPT = 10_000
"""How many deleted paths are remembered, to report them (hash None) in a full answer."""


@dataclass
class Update:
    """What one batch of changes means for the clients.

    Attributes:
        changed: files whose content changed, appeared, vanished, or stopped being broken.
        affected: the changed files and every file depending on them, sorted.
        hashes: the new content hash of each changed file; None for a deleted file.
        broken: files that became broken (or broken differently), to announce one by one.
        checked: how many files were read to decide.
    """

    changed: list[str] = field(default_factory=list)
    affected: list[str] = field(default_factory=list)
    hashes: dict[str, str | None] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    checked: int = 0

    @property
    def empty(self) -> bool:
        """Whether there is nothing to publish."""
        return not self.changed and not self.broken


class Project:
    """The files of one project root, their hashes, breakage and dependency graph.

    Not thread-safe: the broker's loop thread owns it (the graph is thread-safe on its own).

    Attributes:
        root: the real path of the project folder.
        graph: static edges (``"static"``) and edges reported by clients (``"runtime"``).
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.graph = DependencyGraph()
        # path -> hash of the last good version; for a file broken since we first saw it, the
        # hash of its broken bytes. Every tracked file is a key.
        self._hashes: dict[str, str] = {}
        self._broken: dict[str, tuple[Broken, str]] = {}  # path -> (why, hash of broken bytes)
        self._signatures: dict[str, StatSignature] = {}
        self._by_hash: dict[str, set[str]] = {}  # hash -> paths whose last good version has it
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._folder_cache: set[str] | None = None  # see _folders()

    # -- loading --------------------------------------------------------------------------------

    def load_all(
        self,
        *,
        processes: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Scan every Python file under the root; returns how many were found.

        Args:
            processes: worker processes for the scan (see :func:`scan_many`).
            should_stop: a callable polled during the scan; True ends it early.
        """
        paths = [p for p in iter_python_files(self.root) if inside(p, self.root)]
        stop = should_stop or (lambda: False)
        for record in scan_many(paths, self.root, processes=processes, should_stop=stop):
            self._load(record)
        return len(paths)

    def _load(self, record: FileRecord) -> None:
        path = record.path
        if record.hash is None:
            return
        if record.signature is not None:
            self._signatures[path] = record.signature
        # A file broken from the start has no last good version: its current hash stands in.
        self._set_hash(path, record.hash)
        if record.broken is not None:
            self._broken[path] = (record.broken, record.hash)
        self.graph.set_dependencies(path, record.dependencies, origin=STATIC)

    def catch_up(self) -> set[str]:
        """Files that may have changed since :meth:`load_all` read them (before the watch began).

        Returns new and vanished files and those whose stat signature moved; pass them to
        :meth:`apply`.
        """
        current = {p for p in iter_python_files(self.root) if inside(p, self.root)}
        known = self.known()
        suspects = current ^ known
        suspects.update(p for p in current & known if stat_signature(p) != self._signatures.get(p))
        return suspects

    # -- questions ------------------------------------------------------------------------------

    def known(self) -> set[str]:
        """Every file the project tracks (good or broken: a broken file keeps a hash too)."""
        return set(self._hashes)

    @property
    def file_count(self) -> int:
        """How many Python files are tracked."""
        return len(self._hashes)

    def full_hashes(self) -> dict[str, str | None]:
        """Every file's hash (last good version), and None for files deleted while we ran."""
        hashes: dict[str, str | None] = dict.fromkeys(self._deleted)
        hashes.update(self._hashes)
        return hashes

    def broken(self) -> list[Broken]:
        """The files that do not compile now, sorted by path."""
        return [self._broken[path][0] for path in sorted(self._broken)]

    def suspects(self, now: float | None = None) -> set[str]:
        """Tracked files to re-read before answering a sync: stat moved, or modified recently."""
        now = time.time() if now is None else now
        found: set[str] = set()
        for path in self.known():
            signature = stat_signature(path)
            if signature != self._signatures.get(path) or (
                signature is not None and now - signature.mtime_ns / 1e9 < RECENT_SECONDS
            ):
                found.add(path)
        return found

    def source(self, digest: str) -> bytes | None:
        """The bytes of a tracked file whose current content has this hash, or None."""
        for path in sorted(self._by_hash.get(digest, ())):
            try:
                data = read_source(path)
            except OSError:
                continue
            if content_hash(data) == digest:
                return data
        return None

    # -- changes --------------------------------------------------------------------------------

    def add_runtime_edges(self, edges: Iterable[tuple[str, str]]) -> None:
        """Record edges a client saw at run time (an edge known already is left as it is)."""
        for dependent, dependency in edges:
            self.graph.add_edge(dependent, dependency, origin=RUNTIME)

    def apply(self, paths: Iterable[str], *, rescan: bool = False) -> Update:
        """Decide what a batch of reported paths means.

        Only ``.py`` files and folders matter; a folder stands for every file below it (a
        renamed or deleted folder is reported once). A changed file is re-hashed; when its
        content differs it is compiled, and a file that does not compile is reported in
        ``broken`` while its last good hash and edges stay in place. A file that compiles
        again is always ``changed``, even if its content equals the last good version, so that
        clients learn the break is over.

        Args:
            paths: absolute paths a watcher reported.
            rescan: events may have been lost; re-check every file of the project.
        """
        files, folders = self._expand(paths, rescan)
        update = Update(checked=len(files))
        content_changed: set[str] = set()
        unbroken: set[str] = set()
        for path in sorted(files):
            self._check(path, update, content_changed, unbroken)
        if not content_changed and not unbroken:
            return update
        start = content_changed | {f for f in folders if f in self.graph}
        affected = self.graph.affected_by(start) | unbroken if start else set(unbroken)
        affected = {p for p in affected if inside(p, self.root)}
        update.changed = sorted(content_changed | unbroken)
        update.affected = sorted(affected)
        update.hashes = {path: self._hashes.get(path) for path in update.changed}
        return update

    def _expand(self, paths: Iterable[str], rescan: bool) -> tuple[set[str], set[str]]:
        """The files to check for a batch, and the folders it named."""
        files: set[str] = set()
        folders: set[str] = set()
        if rescan:
            files = self.known() | set(iter_python_files(self.root))
        for raw in paths:
            path = os.path.normpath(raw)
            if not inside(path, self.root):
                continue
            if os.path.isdir(path):
                folders.add(path)
            elif path.endswith(".py"):
                real = os.path.realpath(path)
                if inside(real, self.root) and not is_ignored(os.path.relpath(real, self.root)):
                    files.add(real)
            elif path in self._folders():
                folders.add(path)  # a folder that held files and is gone (deleted, renamed)
            # Anything else is not Python: a data file, an editor's temporary file.
        if folders:
            for folder in folders:
                if os.path.isdir(folder):
                    files.update(iter_python_files(folder))
            # Files that were below a folder that is gone now (deleted, or renamed away).
            for known in self.known():
                parent = os.path.dirname(known)
                while len(parent) > len(self.root):
                    if parent in folders:
                        files.add(known)
                        break
                    parent = os.path.dirname(parent)
        return {f for f in files if inside(f, self.root)}, folders

    def _folders(self) -> set[str]:
        """Every folder below the root that holds a tracked file, at any depth (cached)."""
        if self._folder_cache is None:
            found: set[str] = set()
            for path in self.known():
                parent = os.path.dirname(path)
                while len(parent) > len(self.root) and parent not in found:
                    found.add(parent)
                    parent = os.path.dirname(parent)
            self._folder_cache = found
        return self._folder_cache

    def _check(self, path: str, update: Update, changed: set[str], unbroken: set[str]) -> None:
        """Re-read one file and record what it means in ``update`` and the two sets."""
        record = read_record(path, self.root)
        old = self._hashes.get(path)
        was_broken = self._broken.get(path)
        if record.hash == EMPTY_HASH and old not in (None, EMPTY_HASH):
            for _ in range(SETTLE_TRIES):
                time.sleep(SETTLE_STEP)
                record = read_record(path, self.root)
                if record.hash != EMPTY_HASH:
                    break
        if record.hash is None:  # gone
            if old is None and was_broken is None:
                return
            self._forget(path)
            changed.add(path)
            return
        if record.signature is not None:
            self._signatures[path] = record.signature
        self._deleted.pop(path, None)
        if was_broken is not None and was_broken[1] == record.hash:
            return  # the same broken bytes again
        if was_broken is None and old == record.hash:
            return  # a touch, an identical save, a rename of identical content
        if record.broken is not None:
            self._broken[path] = (record.broken, record.hash)
            if old is None:
                self._set_hash(path, record.hash)  # no good version yet: see _load
                self.graph.set_dependencies(path, (), origin=STATIC)
            update.broken.append(record.broken)
            logger.info("%s does not compile: %s", path, record.broken.message)
            return
        if was_broken is not None:
            del self._broken[path]
            logger.info("%s compiles again", path)
            if old == record.hash:
                unbroken.add(path)
                return
        self._set_hash(path, record.hash)
        self.graph.set_dependencies(path, record.dependencies, origin=STATIC)
        changed.add(path)

    def _forget(self, path: str) -> None:
        """A tracked file vanished: drop its hash and static imports; edges into it stay, so
        its dependents are affected again when it comes back."""
        old = self._hashes.pop(path, None)
        if old is not None:
            self._unindex(path, old)
        self._broken.pop(path, None)
        self._signatures.pop(path, None)
        self._folder_cache = None
        self.graph.set_dependencies(path, (), origin=STATIC)
        self._deleted[path] = None
        self._deleted.move_to_end(path)
        while len(self._deleted) > DELETED_KEPT:
            self._deleted.popitem(last=False)

    def _set_hash(self, path: str, digest: str) -> None:
        old = self._hashes.get(path)
        if old is not None:
            self._unindex(path, old)
        else:
            self._folder_cache = None  # a new file (broken files are in _hashes too)
        self._hashes[path] = digest
        self._by_hash.setdefault(digest, set()).add(path)

    def _unindex(self, path: str, digest: str) -> None:
        holders = self._by_hash.get(digest)
        if holders is not None:
            holders.discard(path)
            if not holders:
                del self._by_hash[digest]
