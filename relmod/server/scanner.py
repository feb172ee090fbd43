"""Reading and judging source files for the broker: one file, or a whole project at once.

For every Python file the broker keeps what :func:`read_record` finds: the content hash, the
stat signature (to notice later edits cheaply), whether the source compiles and, when it does,
the project files it imports. :func:`scan_many` does the same for thousands of files when the
broker starts, in worker processes when there are enough files to make that pay.

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

import functools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from relmod.scan import scan_imports
from relmod.sources import (
    Broken,
    StatSignature,
    check_compiles,
    content_hash,
    read_source,
    stat_signature,
)

__all__ = ["FileRecord", "inside", "read_record", "scan_many"]

logger = logging.getLogger(__name__)

PARALLEL_THRESHOLD = 2000
"""Below this many files a single process scans faster than starting workers."""
_CHUNK = 64


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
        broken: why it does not compile, or None when it does.
        dependencies: the project files and folders it imports (empty when broken).
    """

    path: str
    hash: str | None
    signature: StatSignature | None
    broken: Broken | None
    dependencies: frozenset[str]


def read_record(path: str, root: str) -> FileRecord:
    """Read, hash, compile-check and scan one file.

    The stat signature is taken before the bytes are read, so a write racing with the read
    leaves a signature older than the content, and the next check reads the file again.

    Args:
        path: the file.
        root: the project root; imports resolve under it and only dependencies inside it count.
    """
    signature = stat_signature(path)
    try:
        data = read_source(path)
    except OSError as err:
        logger.debug("cannot read %s: %s", path, err)
        return FileRecord(path, None, signature, None, frozenset())
    broken = check_compiles(path, data)
    if broken is not None:
        # The source does not parse, so a scan would find nothing; the caller keeps the edges of
        # the last good version, which is the code clients keep running.
        return FileRecord(path, content_hash(data), signature, broken, frozenset())
    found = scan_imports(path, data, roots=[root])
    dependencies = frozenset(dep for dep in found if inside(dep, root))
    return FileRecord(path, content_hash(data), signature, None, dependencies)


def _quiet_worker() -> None:
    # Ctrl-C reaches the whole process group; the broker decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def scan_many(
    paths: Sequence[str],
    root: str,
    *,
    processes: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[FileRecord]:
    """:func:`read_record` for many files, in worker processes when there are many.

    Workers are forked, so call this before the process starts threads or opens ZeroMQ
    contexts (the broker scans before it starts its watcher and binds its sockets).

    Args:
        paths: the files to read.
        root: the project root.
        processes: worker processes; None means one per CPU. 1 scans in this process.
        should_stop: polled between files; True ends the scan early.

    Yields:
        One record per path, in no particular order.
    """
    if processes is None:
        processes = os.cpu_count() or 1
    processes = min(processes, max(1, len(paths) // _CHUNK))
    if processes <= 1 or len(paths) < PARALLEL_THRESHOLD:
        for path in paths:
            if should_stop():
                return
            yield read_record(path, root)
        return
    logger.debug("scanning %d files in %d processes", len(paths), processes)
    context = multiprocessing.get_context("fork")
    pool = context.Pool(processes, initializer=_quiet_worker)
    try:
        work = functools.partial(read_record, root=root)
        for record in pool.imap_unordered(work, paths, chunksize=_CHUNK):
            if should_stop():
                return
            yield record
    finally:
        pool.terminate()
        pool.join()
