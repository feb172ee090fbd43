"""Reading and judging source files for the broker: one file, or a whole project in the background.

For every Python file the broker keeps what :func:`read_record` finds: the content hash, the
stat signature (to notice later edits cheaply), whether the source compiles and, when it does,
the project files it imports.

:class:`ProjectScan` does the same for a whole project on a thread of its own, while the broker
already serves. It hands its results to a ``deliver`` callback in chunks, as these events::

    ("walked", [path, ...])              every Python file of the project, found by the walk
    ("records", [FileRecord, ...])       files read (or found unchanged in the scan cache)
    ("scanned", None)                    every file's hash and imports are known
    ("verdicts", [FileRecord, ...])      compile checks of files read without one
    ("done", None)                       the scan is over (also after stop(): see progress.state)

The first pass reads, hashes and finds imports (:func:`relmod.server.imports.find_statements`, a
fast reader that parses only import statements) and skips any file whose stat signature the
:class:`~relmod.server.scancache.ScanCache` knows. Compiling a whole file costs ten times more than
that, so the check for broken files comes in a second pass, at a lower priority. With many files
to read, both passes run in worker processes started with ``spawn`` (the broker has threads and a
ZeroMQ context by then, which a forked child must not inherit).

Example:
    >>> import pathlib, tempfile
    >>> root = str(pathlib.Path(tempfile.mkdtemp()).resolve())
    >>> _ = pathlib.Path(root, 'util.py').write_text('X = 1\\n')
    >>> _ = pathlib.Path(root, 'app.py').write_text('import util\\n')
    >>> record = read_record(root + '/app.py', root)
    >>> [pathlib.Path(p).name for p in record.dependencies], record.broken
    (['util.py'], None)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from relmod.server.imports import ImportStatement, find_statements
from relmod.server.resolve import ImportResolver
from relmod.server.roots import ImportRoots
from relmod.server.scan import iter_python_files
from relmod.server.scancache import ScanCache, pack_statements, unpack_statements
from relmod.sources import (
    Broken,
    StatSignature,
    check_compiles,
    compile_checked,
    content_hash,
    read_source,
    stat_signature,
)

__all__ = ["FileRecord", "ProjectScan", "ScanProgress", "inside", "read_record"]

logger = logging.getLogger(__name__)

PARALLEL_THRESHOLD = 400
"""Fewer files than this to read are read on the scan thread: starting workers costs more."""
CHUNK = 256
"""Records per delivery."""
_TASK_CHUNK = 16
CHECK_NICE = 10
"""How much lower the workers' priority is during the compile pass."""
Deliver = Callable[[str, Any], None]


def _pace() -> float:
    """Seconds to pause after each chunk: ``$RELMOD_SCAN_PACE``, a test knob that keeps a
    scan going long enough to edit files during it (0: no pause)."""
    try:
        return max(0.0, float(os.environ.get("RELMOD_SCAN_PACE", "0")))
    except ValueError:
        return 0.0


_PACE = _pace()


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both absolute and normalised).

    >>> inside('/p/a.py', '/p'), inside('/pa/b.py', '/p'), inside('/p', '/p')
    (True, False, True)
    """
    return root == "/" or path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class FileRecord:
    """What the broker learned from reading one source file.

    Attributes:
        path: the absolute, symlink-free path of the file.
        hash: the content hash of its bytes, or None when it could not be read (gone).
        signature: its stat signature taken just before reading, or None.
        broken: why it does not compile, or None when it does (or was not checked yet).
        dependencies: the project files and folders it imports (empty when broken).
        checked: whether the compile check ran (the first scan checks later).
        statements: its import statements, when they were found (for the scan cache).
        read_at: when it was read (seconds since the epoch), or 0.0 when it was not.
        code: the code the compile check made (:func:`read_record` only; never pickled to or
            from the scan's worker processes), for the code cache.
    """

    path: str
    hash: str | None
    signature: StatSignature | None
    broken: Broken | None
    dependencies: frozenset[str]
    checked: bool = True
    statements: tuple[ImportStatement, ...] | None = None
    read_at: float = 0.0
    code: CodeType | None = field(default=None, compare=False, repr=False)


def read_record(
    path: str,
    root: str,
    *,
    resolver: ImportResolver | None = None,
    check: bool = True,
    scan: bool = True,
    checked_before: Container[str | None] = (),
) -> FileRecord:
    """Read, hash, compile-check and scan one file.

    The stat signature is taken before the bytes are read, so a write racing with the read
    leaves a signature older than the content, and the next check reads the file again.

    Args:
        path: the file.
        root: the project root; only dependencies inside it count.
        resolver: resolves imports (default: one searching ``root`` alone).
        check: compile-check the source (a broken file gets no dependencies).
        scan: find and resolve its imports; without, ``statements`` is None and
            ``dependencies`` empty (:meth:`Project.scan_edits` finds them later).
        checked_before: content hashes whose compile check the caller knows already (a
            touch, an identical save): not compiled again (``checked`` is False).
    """
    signature = stat_signature(path)
    read_at = time.time()
    try:
        data = read_source(path)
    except OSError as err:
        logger.debug("cannot read %s: %s", path, err)
        return FileRecord(path, None, signature, None, frozenset())
    digest = content_hash(data)
    code = None
    check = check and digest not in checked_before
    if check:
        code, broken = compile_checked(path, data)
        if broken is not None:
            # The source does not parse, so a scan would find nothing; the caller keeps the
            # edges of the last good version, which is the code clients keep running.
            return FileRecord(path, digest, signature, broken, frozenset(), read_at=read_at)
    if not scan:
        return FileRecord(
            path, digest, signature, None, frozenset(), check, read_at=read_at, code=code
        )
    statements = tuple(find_statements(data, path) or ())
    found = (resolver or ImportResolver([root])).resolve(path, statements)
    dependencies = frozenset(dep for dep in found if inside(dep, root))
    return FileRecord(
        path, digest, signature, None, dependencies, check, statements, read_at=read_at, code=code
    )


# -- work done in worker processes (or inline) -----------------------------------------------------


def _quiet_worker() -> None:
    # Ctrl-C reaches the whole process group; the broker decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _read_one(path: str) -> tuple[str, str | None, StatSignature | None, float, bytes]:
    """Read, hash and find the imports of one file: (path, hash, signature, read_at, packed)."""
    signature = stat_signature(path)
    read_at = time.time()
    try:
        data = read_source(path)
    except OSError:
        return path, None, signature, read_at, b""
    statements = find_statements(data, path) or []
    return path, content_hash(data), signature, read_at, pack_statements(statements)


_niced = False


def _check_one(item: tuple[str, str]) -> tuple[str, str, tuple[int | None, str] | None] | None:
    """Compile-check one file if it still has the given hash: (path, hash, (lineno, message))."""
    global _niced
    if not _niced and os.getpid() != _PARENT:
        _niced = True
        with contextlib.suppress(OSError):
            os.nice(CHECK_NICE)
    path, digest = item
    try:
        data = read_source(path)
    except OSError:
        return None
    if content_hash(data) != digest:
        return None  # changed since: the broker checks it again as a change
    broken = check_compiles(path, data)
    return path, digest, None if broken is None else (broken.lineno, broken.message)


_PARENT = os.getpid()


# -- the whole project -----------------------------------------------------------------------------


@dataclass
class ScanProgress:
    """How far a :class:`ProjectScan` has come (read by other threads; plain counters).

    Attributes:
        state: ``"walking"``, ``"scanning"``, ``"checking"`` (compile checks), ``"done"`` or
            ``"stopped"``.
        total: Python files found by the walk (0 while walking).
        scanned: files whose hash and imports are known.
        cached: of those, files found unchanged in the scan cache (not read).
        checked: compile checks done in the second pass.
        to_check: compile checks the second pass has to do.
        processes: worker processes used (0: the scan thread alone).
        started: when the scan began (monotonic seconds).
        scan_seconds: how long the first pass took (None until it ends).
        check_seconds: how long the second pass took (None until it ends).
    """

    state: str = "walking"
    total: int = 0
    scanned: int = 0
    cached: int = 0
    checked: int = 0
    to_check: int = 0
    processes: int = 0
    started: float = 0.0
    scan_seconds: float | None = None
    check_seconds: float | None = None

    def to_wire(self) -> dict[str, Any]:
        """The progress as a plain dict, for the status reply."""
        return {
            "state": self.state,
            "total": self.total,
            "scanned": self.scanned,
            "cached": self.cached,
            "checked": self.checked,
            "to_check": self.to_check,
            "processes": self.processes,
            "scan_seconds": self.scan_seconds,
            "check_seconds": self.check_seconds,
        }


class ProjectScan:
    """The first scan of a project, on its own thread (see the module docstring).

    Args:
        root: the project root.
        roots: where absolute imports are searched.
        cache: what earlier scans learned; the scan reads and updates it (the caller saves it
            after "done").
        deliver: called on the scan's thread with each event.
        processes: worker processes; None means one per CPU, 0 or 1 reads on the scan thread.
        check: whether to run the compile pass.
    """

    def __init__(
        self,
        root: str,
        roots: ImportRoots,
        cache: ScanCache,
        deliver: Deliver,
        *,
        processes: int | None = None,
        check: bool = True,
    ) -> None:
        self.root = root
        self.roots = roots
        self.cache = cache
        self.progress = ScanProgress()
        self._deliver = deliver
        self._processes = (os.cpu_count() or 1) if processes is None else processes
        self._check = check
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: Any = None

    def start(self) -> None:
        """Run the scan on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="relmod-scan", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scanning (workers are terminated) and wait for the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """The whole scan, on the calling thread; delivers "done" however it ends."""
        progress = self.progress
        progress.started = time.monotonic()
        try:
            paths = [sys.intern(p) for p in iter_python_files(self.root) if inside(p, self.root)]
            progress.total = len(paths)
            progress.state = "scanning"
            self._deliver("walked", paths)
            unchecked = self._first_pass(paths)
            progress.scan_seconds = round(time.monotonic() - progress.started, 3)
            if self._stop.is_set():
                return
            self._deliver("scanned", None)
            if self._check and unchecked:
                progress.state = "checking"
                progress.to_check = len(unchecked)
                began = time.monotonic()
                self._second_pass(unchecked)
                progress.check_seconds = round(time.monotonic() - began, 3)
        except Exception:
            logger.exception("The scan of %s failed; files are read as they change.", self.root)
        finally:
            self._close_pool()
            progress.state = "stopped" if self._stop.is_set() else "done"
            self._deliver("done", None)

    # -- the first pass: hashes and imports ----------------------------------------------------

    def _first_pass(self, paths: list[str]) -> list[tuple[str, str]]:
        """Deliver a record for every path; returns (path, hash) of those still to compile."""
        resolver = ImportResolver(self.roots.roots, self.roots.aliases)
        cache = self.cache
        chunk: list[FileRecord] = []
        unchecked: list[tuple[str, str]] = []
        to_read: list[str] = []
        for path in paths:
            if self._stop.is_set():
                return unchecked
            signature = stat_signature(path)
            digest = cache.hash_of(path, signature)
            statements = cache.imports(digest) if digest is not None else None
            if digest is None or statements is None:
                to_read.append(path)
                continue
            self.progress.cached += 1
            chunk.append(self._record(path, digest, signature, statements, resolver, unchecked))
            if len(chunk) >= CHUNK:
                self._send(chunk)
                chunk = []
        for path, digest, signature, read_at, packed in self._read_all(to_read):
            if self._stop.is_set():
                return unchecked
            if digest is None:
                continue  # gone since the walk
            cache.remember_file(path, signature, digest, read_at)
            cache.remember_packed(digest, packed)
            statements = unpack_statements(packed)
            chunk.append(self._record(path, digest, signature, statements, resolver, unchecked))
            if len(chunk) >= CHUNK:
                self._send(chunk)
                chunk = []
        self._send(chunk)
        return unchecked

    def _record(
        self,
        path: str,
        digest: str,
        signature: StatSignature | None,
        statements: list[ImportStatement],
        resolver: ImportResolver,
        unchecked: list[tuple[str, str]],
    ) -> FileRecord:
        known, broken = self.cache.verdict(digest)
        if not known:
            unchecked.append((path, digest))
        if broken is not None:
            broken = Broken(path, broken.lineno, broken.message)
            return FileRecord(path, digest, signature, broken, frozenset(), True)
        found = resolver.resolve(path, statements)
        dependencies = frozenset(dep for dep in found if inside(dep, self.root))
        return FileRecord(path, digest, signature, None, dependencies, known)

    def _send(self, chunk: list[FileRecord]) -> None:
        if chunk:
            self.progress.scanned += len(chunk)
            self._deliver("records", chunk)
            if _PACE:
                self._stop.wait(_PACE)

    def _read_all(
        self, paths: list[str]
    ) -> Iterator[tuple[str, str | None, StatSignature | None, float, bytes]]:
        pool = self._get_pool() if len(paths) >= PARALLEL_THRESHOLD else None
        if pool is None:
            for path in paths:
                yield _read_one(path)
            return
        yield from pool.imap_unordered(_read_one, paths, chunksize=_TASK_CHUNK)

    # -- the second pass: compile checks -------------------------------------------------------

    def _second_pass(self, unchecked: list[tuple[str, str]]) -> None:
        pool = self._get_pool() if len(unchecked) >= PARALLEL_THRESHOLD else None
        if pool is None:
            results: Iterator[Any] = (_check_one(item) for item in unchecked)
        else:
            results = pool.imap_unordered(_check_one, unchecked, chunksize=_TASK_CHUNK)
        chunk: list[FileRecord] = []
        for result in results:
            if self._stop.is_set():
                return
            self.progress.checked += 1
            if result is None:
                continue
            path, digest, verdict = result
            broken = None if verdict is None else Broken(path, verdict[0], verdict[1])
            self.cache.remember_verdict(digest, broken)
            if broken is not None:
                chunk.append(FileRecord(path, digest, None, broken, frozenset(), True))
                if len(chunk) >= CHUNK:
                    self._deliver("verdicts", chunk)
                    chunk = []
        if chunk:
            self._deliver("verdicts", chunk)

    # -- workers -------------------------------------------------------------------------------

    def _get_pool(self) -> Any:
        """The worker pool, started on first use; None to work on this thread instead."""
        if self._pool is None and self._processes > 1:
            logger.debug("starting %d scan worker processes", self._processes)
            context = multiprocessing.get_context("spawn")
            try:
                self._pool = context.Pool(self._processes, initializer=_quiet_worker)
            except Exception as err:  # no semaphores, no processes left, ...
                logger.warning("cannot start scan worker processes (%s); scanning here", err)
                self._processes = 1
                return None
            self.progress.processes = self._processes
        return self._pool

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()
