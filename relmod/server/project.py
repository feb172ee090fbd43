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
import stat
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, NamedTuple

from relmod.codecache import forget_signature, store_code
from relmod.graph import STATIC, DependencyGraph
from relmod.ignore import ignored_name, is_ignored
from relmod.server.edges import RuntimeEdges
from relmod.server.fileids import FileIds
from relmod.server.imports import find_statements
from relmod.server.resolve import ImportResolver
from relmod.server.roots import ImportRoots
from relmod.server.scan import iter_python_files
from relmod.server.scancache import ScanCache
from relmod.server.scanner import FileRecord, ProjectScan, inside, read_record
from relmod.sources import Broken, StatSignature, content_hash, read_source, stat_signature
from relmod.stattrust import RACY_SECONDS, signature_trusted

__all__ = ["Project", "Update"]

logger = logging.getLogger(__name__)

FRESH_SLACK = 0.05
"""File times come from a coarser clock than time.time(): a file edited just after the watch
began may look a little older."""
RECENT_SECONDS = RACY_SECONDS
"""A file modified this recently is re-read by :meth:`Project.suspects`, whatever its stat says
(:mod:`relmod.stattrust`: an edit within the timestamp resolution may leave it unchanged)."""
EMPTY_HASH = content_hash(b"")
SETTLE_TRIES = 3
SETTLE_STEP = 0.02
"""A file read empty that had content is read again up to SETTLE_TRIES times, SETTLE_STEP
seconds apart: an in-place save truncates the file before writing it, and a writer stalled in
between would otherwise make an identical save look like two changes."""
MAX_IMPORT_ROOTS = 64
"""The most import roots a project has (clients may report more of their sys.path)."""
DELETED_KEPT = 10_000
"""How many deleted paths are remembered, to report them (hash None) in a full answer."""
COMPILED_KEPT = 16
"""How many compiled edits a batch holds until its publication, for the code cache (see
:attr:`Update.compiled`); the code of more is cached as each is checked. A lone save's cache
write stays off its way to the clients; a checkout of a thousand files holds no thousand code
objects (several times their source in memory) at once."""


class Compiled(NamedTuple):
    """The code a compile check made of an edit, and what it replaces in the code cache."""

    path: str
    hash: str
    code: CodeType
    replaces: str | None  # the content hash of the version before

    def store(self) -> None:
        """Put the code in the code cache, in place of the version before's entry. Never
        raises: a client that does not find the code compiles the file itself."""
        try:
            store_code(self.path, self.hash, self.code, replaces=self.replaces)
        except Exception:  # a bug of ours; the batch is published all the same
            logger.exception("Could not cache the code of %s.", self.path)


@dataclass
class Update:
    """What one batch of changes means for the clients.

    Attributes:
        changed: files whose content changed, appeared, vanished, or stopped being broken.
        affected: the changed files and every file depending on them, sorted.
        hashes: the new content hash of each changed file; None for a deleted file.
        broken: files that became broken (or broken differently), to announce one by one.
        checked: how many files were read to decide.
        compiled: the code of the files the batch compile-checked and accepted, to cache
            after the publication (:meth:`Compiled.store`), up to :data:`COMPILED_KEPT` of
            them (the code of the others is cached already).
    """

    changed: list[str] = field(default_factory=list)
    affected: list[str] = field(default_factory=list)
    hashes: dict[str, str | None] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    checked: int = 0
    compiled: list[Compiled] = field(default_factory=list)

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
        ids: the file ids of this broker's epoch (every file the scan finds, every tracked
            file, and whatever else is published).
    """

    def __init__(
        self, root: str, roots: ImportRoots | None = None, cache: ScanCache | None = None
    ) -> None:
        self.root = os.path.realpath(root)
        self.roots = roots if roots is not None else ImportRoots((self.root,))
        self.cache = cache if cache is not None else ScanCache(os.devnull)
        self.graph = DependencyGraph()
        self.ids = FileIds()
        self.version = 0
        """Goes up whenever a hash or an edge changes (pages of big answers are cut from a
        snapshot per version)."""
        # path -> hash of the last good version; for a file broken since we first saw it, the
        # hash of its broken bytes. Every tracked file is a key.
        self._hashes: dict[str, str] = {}
        self._broken: dict[str, tuple[Broken, str]] = {}  # path -> (why, hash of broken bytes)
        # path -> its stat signature when last read, packed (_packed): only ever compared, and
        # 65 bytes instead of a tuple of four big ints (200 bytes) a file
        self._signatures: dict[str, bytes] = {}
        # hash -> the path whose last good version has it, or the set of them when several do
        # (rare: one str per file instead of one set costs 200 bytes less a file)
        self._by_hash: dict[str, str | set[str]] = {}
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._unreadable: set[str] = set()  # warned of once, until readable again or gone
        self._folder_cache: set[str] | None = None  # see _folders()
        # A tracked file that became a symbolic link: its target's real path -> the link. A
        # module is the path clients named, so an edit of the target is an edit of the link.
        self._links: dict[str, set[str]] = {}
        # Files the first scan found but has not delivered yet (None: no scan under way).
        self._unscanned: set[str] | None = None
        # Files apply(scan_later=True) accepted, with the hash read, whose imports are found
        # by scan_edits (after the broker published the change).
        self._edits_to_scan: list[tuple[str, str]] = []
        self._scan_began = time.time()
        # The broker watches from about now: a file the first scan finds modified since then was
        # edited while clients may have run its older content, so it is published as a change.
        self._watch_began = time.time() - FRESH_SLACK
        self._fresh: set[str] = set()
        self._forced: set[str] = set()  # taken fresh: the next check publishes them
        self._folder_mtimes: dict[str, int] = {}  # folder -> mtime_ns, for new_files()
        self.runtime = RuntimeEdges(self.graph, self.is_tracked)

    # -- loading --------------------------------------------------------------------------------

    def load_all(self, *, processes: int | None = None, check: bool = True) -> int:
        """Scan every Python file under the root now, on this thread; returns how many.

        The broker scans in the background instead (:class:`ProjectScan` delivering to
        :meth:`receive`); this is the same scan, waited for.

        Args:
            processes: worker processes for the scan (see :class:`ProjectScan`).
            check: compile-check every file (the second pass).
        """
        scan = ProjectScan(
            self.root, self.roots, self.cache, self.receive, processes=processes, check=check
        )
        scan.run()
        return scan.progress.total

    def receive(self, event: str, payload: Any) -> None:
        """Take in one event of a :class:`ProjectScan` (on the thread that owns the project)."""
        if event == "walked":
            self._scan_began = time.time()
            self._unscanned = set(payload) - self._hashes.keys()
            for path in payload:  # before any client can ask for the table
                self.ids.id_of(path)
        elif event == "records":
            for record in payload:
                self._load(record)
        elif event == "verdicts":
            for record in payload:
                self._load_verdict(record)
        elif event in ("scanned", "done"):
            self._unscanned = None

    def unscanned(self) -> set[str]:
        """The files the first scan found and has not delivered yet."""
        return set(self._unscanned) if self._unscanned else set()

    @property
    def scanning(self) -> bool:
        """Whether a first scan is still delivering files."""
        return self._unscanned is not None

    def _load(self, record: FileRecord) -> None:
        path = sys.intern(record.path)  # the one copy every table and the graph share
        if self._unscanned is not None:
            self._unscanned.discard(path)
        if record.hash is None or path in self._hashes:
            return  # gone; or read already, as a change reported during the scan
        if record.signature is not None:
            self._signatures[path] = _packed(record.signature)
        # A file broken from the start has no last good version: its current hash stands in.
        self._set_hash(path, record.hash)
        if record.broken is not None:
            self._broken[path] = (record.broken, record.hash)
        self._set_static(path, record.dependencies)
        if record.signature is not None and record.signature.mtime_ns / 1e9 >= self._watch_began:
            self._fresh.add(path)

    def take_fresh(self) -> set[str]:
        """Files the scan found edited after the broker began watching (see ``_watch_began``).

        Pass them to :meth:`apply`, which publishes them as changed even when the content is
        the one the scan read: the scan may have read the edit before the watcher reported it.
        """
        fresh, self._fresh = self._fresh, set()
        self._forced.update(fresh)
        return fresh

    def _load_verdict(self, record: FileRecord) -> None:
        """The compile pass found a file broken: as if it had been broken when first read."""
        path = record.path
        digest = record.hash
        if record.broken is None or digest is None or self._hashes.get(path) != digest:
            return  # changed since, and judged again as a change
        if path in self._broken:
            return
        self._broken[path] = (record.broken, digest)
        self._set_static(path, ())
        logger.info(
            "%s does not compile (line %s): %s; a client keeps a version it ran before, and "
            "importing it fails until it is fixed.",
            path,
            record.broken.lineno if record.broken.lineno is not None else "unknown",
            record.broken.message,
        )

    def _set_static(self, path: str, dependencies: Iterable[str]) -> None:
        self.graph.set_dependencies(path, dependencies, origin=STATIC)
        self.version += 1

    def resolver(self) -> ImportResolver:
        """A fresh resolver over the project's import roots (it remembers the disk: make one
        per batch of changes)."""
        return ImportResolver(self.roots.roots, self.roots.aliases)

    def add_import_roots(self, paths: Iterable[str]) -> bool:
        """Search these folders too (clients report them from their ``sys.path``).

        Only existing folders inside the project count, at most :data:`MAX_IMPORT_ROOTS` roots
        in all. When the roots change, every tracked file's imports are resolved again, from
        the scan cache (a file it lacks keeps its edges until it changes). Returns whether the
        roots changed.
        """
        room = MAX_IMPORT_ROOTS - len(self.roots.roots)
        wanted = [
            p
            for p in dict.fromkeys(paths)
            if inside(p, self.root) and p not in self.roots.roots and os.path.isdir(p)
        ][: max(0, room)]
        if not wanted:
            return False
        self.roots = self.roots.with_paths(wanted)
        logger.info("import roots are now %s", ", ".join(self.roots.roots))
        resolver = self.resolver()
        for path, digest in list(self._hashes.items()):
            statements = self.cache.imports(digest)
            if statements is not None and path not in self._broken:
                found = resolver.resolve(path, statements)
                self._set_static(path, {dep for dep in found if inside(dep, self.root)})
        return True

    def is_tracked(self, path: str) -> bool:
        """Whether ``path`` is a file of the project (known, or still to be scanned) or a
        folder holding one."""
        return (
            path in self._hashes
            or (self._unscanned is not None and path in self._unscanned)
            or path in self._folders()
        )

    # -- questions ------------------------------------------------------------------------------

    def known(self) -> set[str]:
        """Every file the project tracks (good or broken: a broken file keeps a hash too)."""
        return set(self._hashes)

    @property
    def file_count(self) -> int:
        """How many Python files are tracked."""
        return len(self._hashes)

    def hash_of(self, path: str) -> str | None:
        """The hash of a file's newest good version (None: not tracked)."""
        return self._hashes.get(path)

    def full_hashes(self) -> dict[str, str | None]:
        """Every file's hash (last good version), and None for files deleted while we ran."""
        hashes: dict[str, str | None] = dict.fromkeys(self._deleted)
        hashes.update(self._hashes)
        return hashes

    def was_deleted(self, path: str) -> bool:
        """Whether ``path`` is one of the last :data:`DELETED_KEPT` tracked files that vanished."""
        return path in self._deleted

    def is_unscanned(self, path: str) -> bool:
        """Whether the first scan found ``path`` and has not delivered it yet."""
        return self._unscanned is not None and path in self._unscanned

    def current_hashes(self) -> dict[str, str]:
        """Every tracked file's current content hash (a broken file's broken bytes included)."""
        hashes = dict(self._hashes)
        hashes.update((path, digest) for path, (_, digest) in self._broken.items())
        return hashes

    def broken(self) -> list[Broken]:
        """The files that do not compile now, sorted by path."""
        return [self._broken[path][0] for path in sorted(self._broken)]

    def suspects(self, now: float | None = None) -> set[str]:
        """Files to re-read before answering a sync: tracked files whose stat moved or that were
        modified recently, and during the first scan, files not scanned yet that were modified
        since it began (their content is read as new and published, so a client that loaded
        one hears of the edit even before the scan reaches it)."""
        now = time.time() if now is None else now
        found: set[str] = set()
        for path in self.known():
            signature = stat_signature(path)
            packed = None if signature is None else _packed(signature)
            if packed != self._signatures.get(path) or (
                signature is not None and not signature_trusted(signature, now)
            ):
                found.add(path)
        if self._unscanned:
            since = self._scan_began - RECENT_SECONDS
            for path in list(self._unscanned):
                signature = stat_signature(path)
                if signature is not None and signature.mtime_ns / 1e9 >= since:
                    found.add(path)
        found.update(self.new_files(now))
        return found

    def new_files(self, now: float | None = None) -> set[str]:
        """Python files in the project's folders that it does not track (yet).

        Only folders whose modification time moved since the last look, or that were modified
        recently, are listed again (a file created, deleted or renamed in a folder changes its
        time); a new folder is walked whole. The first look lists every folder once.
        """
        now = time.time() if now is None else now
        found: set[str] = set()
        folders = self._folders() | {self.root}
        unscanned = self._unscanned or set()
        for folder in sorted(folders):
            try:
                mtime = os.stat(folder).st_mtime_ns
            except OSError:
                continue
            if self._folder_mtimes.get(folder) == mtime and now - mtime / 1e9 >= RECENT_SECONDS:
                continue
            self._folder_mtimes[folder] = mtime
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError:
                continue
            for entry in entries:
                # The folder holds tracked files, so only the entry's own name can be ignored,
                # and an entry that is no link has the folder's real path plus its name.
                try:
                    if entry.is_dir():
                        if entry.path not in folders and not ignored_name(entry.name, folder=True):
                            found.update(iter_python_files(entry.path))
                    elif entry.name.endswith(".py") and not ignored_name(entry.name, folder=False):
                        link = entry.is_symlink()
                        found.add(os.path.realpath(entry.path) if link else entry.path)
                except OSError:
                    continue
        return {
            p
            for p in found
            if p not in self._hashes and p not in unscanned and inside(p, self.root)
        }

    def source(self, digest: str) -> bytes | None:
        """The bytes of a tracked file whose current content has this hash, or None."""
        holders = self._by_hash.get(digest, ())
        for path in sorted((holders,) if isinstance(holders, str) else holders):
            try:
                data = read_source(path)
            except OSError:
                continue
            if content_hash(data) == digest:
                return data
        return None

    # -- changes --------------------------------------------------------------------------------

    def apply(
        self, paths: Iterable[str], *, rescan: bool = False, scan_later: bool = False
    ) -> Update:
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
            scan_later: leave finding a changed file's imports to :meth:`scan_edits`. What a
                change affects is its file's dependents, which its own imports do not change;
                so the broker publishes first, then scans (finding and resolving imports took
                0.2 of the broker's 1 ms from a save to its publication).
        """
        self.scan_edits()  # the graph is whole before anything reads it
        files, folders = self._expand(paths, rescan)
        update = Update(checked=len(files))
        content_changed: set[str] = set()
        unbroken: set[str] = set()
        resolver = None if scan_later else self.resolver()
        for path in sorted(files):
            self._check(path, update, content_changed, unbroken, resolver, scan=not scan_later)
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
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                mode = 0  # gone
            link = stat.S_ISLNK(mode)
            if os.path.isdir(path) if link else stat.S_ISDIR(mode):
                folders.add(path)
                if self._tracked_lately(path):
                    files.add(path)  # a tracked module replaced by a folder: say so when read
            elif path.endswith(".py"):
                parent = os.path.dirname(path)
                walked = self._folder_cache  # not rebuilt here: that walks every tracked file
                if not link and (parent == self.root or (walked and parent in walked)):
                    real = path  # no link on the way: the folders of tracked files are real
                else:
                    real = os.path.realpath(path)
                if real != path and self._tracked_lately(path):
                    files.add(path)  # a tracked file replaced by a link: checked by its own name
                    self._links.setdefault(real, set()).add(path)
                if inside(real, self.root) and not is_ignored(_relative(real, self.root)):
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
        for real in [f for f in files if f in self._links]:
            links = self._links[real]
            links.intersection_update(p for p in links if os.path.realpath(p) == real)
            files.update(links)  # the link's target changed: so did the module the link names
        return {f for f in files if inside(f, self.root)}, folders

    def _tracked_lately(self, path: str) -> bool:
        """Whether ``path`` is a tracked file, or was one until lately: the watcher may report
        a file's unlink and what replaces it (a link, a folder) in two batches."""
        return path in self._hashes or path in self._deleted

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

    def _check(
        self,
        path: str,
        update: Update,
        changed: set[str],
        unbroken: set[str],
        resolver: ImportResolver | None,
        *,
        scan: bool = True,
    ) -> None:
        """Re-read one file and record what it means in ``update`` and the two sets (its
        imports too, unless ``scan`` is off: see :meth:`apply`)."""
        path = sys.intern(path)
        if self._unscanned is not None:
            self._unscanned.discard(path)  # read now: the scan's record of it is older
        old = self._hashes.get(path)
        was_broken = self._broken.get(path)
        # A touch or an identical save is not compiled again: its verdict is known.
        verdicts = (old, was_broken[1] if was_broken is not None else None)
        record = read_record(path, self.root, resolver=resolver, scan=scan, checked_before=verdicts)
        self._remember(record)
        if record.hash == EMPTY_HASH and old not in (None, EMPTY_HASH):
            for _ in range(SETTLE_TRIES):
                time.sleep(SETTLE_STEP)
                record = read_record(path, self.root, resolver=resolver)
                self._remember(record)
                if record.hash != EMPTY_HASH:
                    break
        if record.hash is None:  # gone
            known = old is not None or was_broken is not None
            if not (known or path in self._deleted) or not os.path.lexists(path):
                self._unreadable.discard(path)
            elif path not in self._unreadable:
                # There, but not a file we can read (a module deleted in a batch of its own
                # may come back as a folder in the next): a user should know, once, not at
                # every event that names the path again.
                self._unreadable.add(path)
                logger.warning(
                    "Cannot read %s (%s): clients that loaded it keep its last good version "
                    "until a readable module is saved there.",
                    path,
                    "it is a folder now" if os.path.isdir(path) else "unreadable",
                )
            if known:
                self._forget(path)
                changed.add(path)
            return
        if record.signature is not None:
            packed, replaced = _packed(record.signature), self._signatures.get(path)
            self._signatures[path] = packed
            if replaced is not None and replaced != packed:
                # A save or a touch moved its ctime on: the code cache's entry for the old
                # signature (a client's first import keys its fast path by it) is dead.
                forget_signature(path, _unpacked(replaced))
        self._deleted.pop(path, None)
        self._unreadable.discard(path)
        if was_broken is not None and was_broken[1] == record.hash:
            return  # the same broken bytes again
        forced = path in self._forced
        self._forced.discard(path)
        if was_broken is None and old == record.hash and not forced:
            return  # a touch, an identical save, a rename of identical content
        if record.broken is not None:
            self._broken[path] = (record.broken, record.hash)
            if old is None:
                self._set_hash(path, record.hash)  # no good version yet: see _load
                self._set_static(path, ())
            update.broken.append(record.broken)
            logger.info("%s", record.broken.describe())
            return
        if record.code is not None and record.hash is not None:
            compiled = Compiled(path, record.hash, record.code, old)
            if len(update.compiled) < COMPILED_KEPT:
                update.compiled.append(compiled)
            else:  # a checkout's hundreds: cached now, not all held until the publication
                compiled.store()
        if was_broken is not None:
            del self._broken[path]
            logger.info("%s compiles again", path)
            if old == record.hash:
                unbroken.add(path)
                return
        self._set_hash(path, record.hash)
        if scan:
            self._set_static(path, record.dependencies)
        else:
            self._edits_to_scan.append((path, record.hash))
        changed.add(path)

    def settle(self) -> None:
        """The work a batch leaves for after its publication: the changed files' imports
        (:meth:`scan_edits`), and the folder list the next batch looks paths up in."""
        self.scan_edits()
        self._folders()

    def scan_edits(self) -> None:
        """Find the imports of the files :meth:`apply` accepted with ``scan_later``.

        A file saved again since is left alone: its new content is read with the batch its
        save makes, and its edges stay those of the version before until then.
        """
        todo, self._edits_to_scan = self._edits_to_scan, []
        if not todo:
            return
        resolver = self.resolver()
        for path, digest in todo:
            if self._hashes.get(path) != digest:
                continue  # changed again (or gone) since: checked anew
            try:
                data = read_source(path)
            except OSError:
                continue
            if content_hash(data) != digest:
                continue
            statements = tuple(find_statements(data, path) or ())
            self.cache.remember_imports(digest, statements)
            found = resolver.resolve(path, statements)
            self._set_static(path, frozenset(dep for dep in found if inside(dep, self.root)))

    def _remember(self, record: FileRecord) -> None:
        """Keep what a read learned in the scan cache, for the next start."""
        if record.hash is None:
            self.cache.forget_file(record.path)
            return
        self.cache.remember_file(record.path, record.signature, record.hash, record.read_at)
        if record.statements is not None:
            self.cache.remember_imports(record.hash, record.statements)
        if record.checked:
            self.cache.remember_verdict(record.hash, record.broken)

    def _forget(self, path: str) -> None:
        """A tracked file vanished: drop its hash and static imports; edges into it stay, so
        its dependents are affected again when it comes back."""
        old = self._hashes.pop(path, None)
        if old is not None:
            self._unindex(path, old)
        self._broken.pop(path, None)
        self._signatures.pop(path, None)
        self._folder_cache = None
        self._set_static(path, ())
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
            self.ids.id_of(path)  # a full answer lists every tracked file
        self._hashes[path] = digest
        holders = self._by_hash.get(digest)
        if holders is None:
            self._by_hash[digest] = path
        elif isinstance(holders, str):
            if holders != path:
                self._by_hash[digest] = {holders, path}
        else:
            holders.add(path)
        self.version += 1

    def _unindex(self, path: str, digest: str) -> None:
        holders = self._by_hash.get(digest)
        if holders == path:
            del self._by_hash[digest]
        elif isinstance(holders, set):
            holders.discard(path)
            if len(holders) == 1:
                self._by_hash[digest] = holders.pop()


def _relative(path: str, root: str) -> str:
    """``os.path.relpath(path, root)`` for a normalised path below a normalised root.

    >>> _relative('/p/pkg/a.py', '/p'), _relative('/a.py', '/')
    ('pkg/a.py', 'a.py')
    """
    return path[len(root) :].lstrip("/")


_SIGNATURE = struct.Struct("<QQQQ")


def _unpacked(packed: bytes) -> tuple[int, int, int, int]:
    mtime, ctime, size, ino = _SIGNATURE.unpack(packed)
    return mtime, ctime, size, ino


def _packed(signature: StatSignature) -> bytes:
    """A stat signature as 32 bytes (times, size and inode fit in 64 bits each)."""
    return _SIGNATURE.pack(*(field & 0xFFFFFFFFFFFFFFFF for field in signature))
