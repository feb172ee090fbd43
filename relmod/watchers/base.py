"""What every watcher backend shares: the change batch, the protocol, the scope and the thread.

- :class:`ChangeBatch` and :class:`Watcher`: the interface, re-exported by :mod:`relmod.watch`.
- :class:`_Scope`: the watched paths split by what exists on disk, and which reported paths
  belong to them (ignored folders and editor temporary files never do).
- :class:`_ThreadedWatcher`: the base of every backend: the daemon thread, ``set_paths``,
  readiness per watch generation, and the guard that counts and logs a failing ``on_change``.

Import the public names from :mod:`relmod.watch`; this package is its machinery.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from relmod.errors import ConfigurationError
from relmod.ignore import is_ignored

__all__ = ["DEFAULT_DEBOUNCE_MS", "DEFAULT_STEP_MS", "ChangeBatch", "Watcher"]

# The backends log as "relmod.watch", the name they logged under before they moved out of
# relmod/watch.py: logging settings and filters for the public module keep covering them.
logger = logging.getLogger("relmod.watch")

DEFAULT_STEP_MS = 10
"""Quiet period that ends a batch: a single save is reported about 15-20 ms after it happens."""

DEFAULT_DEBOUNCE_MS = 1600
"""Longest a batch keeps growing during a storm of changes (a ``git checkout``)."""

_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0  # seconds between restarts of a failing backend


@dataclass(frozen=True)
class ChangeBatch:
    """Paths that may have changed, reported together.

    Attributes:
        paths: absolute paths that were added, modified, deleted or renamed. A native backend may
            name a folder (a deleted or renamed folder is reported once, not file by file): treat
            a folder as covering everything below it.
        rescan: the backend may have lost events (queue overflow, restarted watch); re-check
            everything you care about, not only ``paths``.

    Example:
        >>> batch = ChangeBatch(frozenset({"/p/a.py"}))
        >>> batch.rescan, sorted(batch.paths)
        (False, ['/p/a.py'])
    """

    paths: frozenset[str]
    rescan: bool = False


class Watcher(Protocol):
    """What the broker and the embedded watcher need from a file watcher.

    Attributes:
        backend: ``"inotify"``, ``"watchfiles"`` or ``"polling"``.
        errors: how many times ``on_change`` raised (each is logged with its traceback).
    """

    backend: str
    errors: int

    def start(self) -> None:
        """Start the watcher's daemon thread."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching and join the thread, waiting at most ``timeout`` seconds."""

    def set_paths(self, paths: Iterable[str]) -> None:
        """Replace the watched folders and files; a path that does not exist yet is skipped."""

    def watch_now(self, folders: Iterable[str]) -> bool:
        """Add folders, live when this returns (no rescan follows); False if this backend cannot:
        then use :meth:`set_paths`."""

    @property
    def paths(self) -> tuple[str, ...]:
        """The watched paths as last set: absolute, sorted, without duplicates."""

    def wait_ready(self, timeout: float) -> bool:
        """Whether the watch over the current paths is live, waiting up to ``timeout`` seconds."""


def _is_under(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _relative(path: str, folder: str) -> str:
    return path[len(folder.rstrip(os.sep)) + 1 :]


def _is_ignored_folder(name: str) -> bool:
    # is_ignored judges every component but the last as a folder; a dummy last component asks
    # about the folder alone (".git", "__pycache__", "x.egg-info").
    return is_ignored(name + "/-")


@dataclass(frozen=True)
class _Scope:
    """The paths a watcher was asked to cover, split by what exists on disk now."""

    requested: tuple[str, ...]
    recursive: bool
    dirs: tuple[str, ...]  # existing folders, deepest first
    files: frozenset[str]
    missing: tuple[str, ...]

    @classmethod
    def of(cls, paths: Iterable[str], recursive: bool) -> _Scope:
        requested = tuple(sorted({os.path.abspath(os.fspath(p)) for p in paths}))
        dirs: list[str] = []
        files: set[str] = set()
        missing: list[str] = []
        for path in requested:
            if os.path.isdir(path):
                dirs.append(path)
            elif os.path.exists(path):
                files.add(path)
            else:
                missing.append(path)
        dirs.sort(key=len, reverse=True)
        return cls(requested, recursive, tuple(dirs), frozenset(files), tuple(missing))

    def native_roots(self) -> tuple[str, ...]:
        """Folders to hand to watchfiles: existing folders, and the folder of each watched file.

        A file is watched through its folder because an atomic save replaces the file's inode,
        and a watch on the old inode goes quiet after the first save.
        """
        candidates = sorted(set(self.dirs) | {os.path.dirname(f) for f in self.files})
        if not self.recursive:
            return tuple(candidates)
        roots: list[str] = []
        for folder in candidates:
            if not any(folder == root or _is_under(folder, root) for root in roots):
                roots.append(folder)
        return tuple(roots)

    def poll_roots(self) -> tuple[str, ...]:
        """Paths for the polling walk: a path is dropped when the walk of another reaches it."""
        if not self.recursive:
            return self.requested
        roots: list[str] = []
        for path in self.requested:  # sorted, so a folder comes before what it holds
            covered = any(
                _is_under(path, root)
                and not is_ignored(_relative(path, root))
                and not _is_ignored_folder(_relative(path, root))
                for root in roots
            )
            if not covered:
                roots.append(path)
        return tuple(roots)

    def accepts(self, path: str) -> bool:
        """Whether a reported path belongs to this scope and is not ignored."""
        if path in self.files:
            return True
        if self.recursive:
            # The deepest watched folder decides, so /p/build/pkg watched on purpose is not
            # ignored because /p is watched too.
            for folder in self.dirs:
                if path == folder:
                    return True
                if _is_under(path, folder):
                    return not is_ignored(_relative(path, folder))
            return False
        if path in self.dirs:
            return True
        return os.path.dirname(path) in self.dirs and not is_ignored(os.path.basename(path))


def _log_missing(paths: Iterable[str]) -> None:
    for path in paths:
        logger.info("Not watching %s yet: it does not exist. It is watched once it appears.", path)


class _ThreadedWatcher:
    """What every backend shares: the thread, the paths, readiness and the callback guard."""

    backend = "none"

    def __init__(
        self,
        paths: Iterable[str],
        on_change: Callable[[ChangeBatch], None],
        *,
        step_ms: int,
        debounce_ms: int,
        recursive: bool,
    ) -> None:
        if step_ms < 1:
            raise ConfigurationError(
                f"step_ms must be at least 1, got {step_ms}: a zero step would spin the CPU."
            )
        if debounce_ms < 0:
            raise ConfigurationError(f"debounce_ms must not be negative, got {debounce_ms}.")
        self.errors = 0
        self.backend_errors = 0
        self.batches = 0
        self._on_change = on_change
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._lock = threading.Lock()
        self._scope = _Scope.of(paths, recursive)
        self._generation = 0  # bumped whenever the underlying watch must be rebuilt
        self._stop_requested = threading.Event()
        self._reconfigure = threading.Event()  # set_paths changed the roots: act now
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        _log_missing(self._scope.missing)

    @property
    def paths(self) -> tuple[str, ...]:
        """The watched paths as last set: absolute, sorted, without duplicates."""
        return self._scope.requested

    @property
    def recursive(self) -> bool:
        """Whether folders are watched with everything below them, or only their own entries."""
        return self._scope.recursive

    @property
    def running(self) -> bool:
        """Whether the watcher's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the watcher's daemon thread; :meth:`wait_ready` tells when events flow.

        Raises:
            RuntimeError: the watcher was started before (a stopped watcher cannot restart).
        """
        if self._thread is not None:
            raise RuntimeError(
                f"This {self.backend} watcher was already started; create a new one instead."
            )
        self._thread = threading.Thread(
            target=self._run_guarded, name=f"relmod-watch-{self.backend}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching and join the thread, waiting at most ``timeout`` seconds.

        Safe to call more than once, before :meth:`start`, and from inside ``on_change``.
        """
        self._stop_requested.set()
        self._reconfigure.set()
        self._wake()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "The %s watcher thread did not stop within %.1f s (an on_change call may still "
                "be running); it is a daemon thread and ends with the process.",
                self.backend,
                timeout,
            )

    def set_paths(self, paths: Iterable[str]) -> None:
        """Replace the watched folders and files.

        The change takes effect within a few milliseconds. When the set of watched roots changes,
        the watch is rebuilt, :meth:`wait_ready` waits for the new watch, and a batch with
        ``rescan=True`` follows once it is live. A path that does not exist yet is logged and
        watched once it appears.
        """
        scope = _Scope.of(paths, self._scope.recursive)
        with self._lock:
            old = self._scope
            self._scope = scope
            rebuild = self._watch_key(scope) != self._watch_key(old)
            if rebuild:
                self._generation += 1
                self._ready.clear()
                self._reconfigure.set()
        if rebuild:
            self._wake()
        _log_missing(sorted(set(scope.missing) - set(old.missing)))
        logger.debug("%s watcher now covers %d paths", self.backend, len(scope.requested))

    def watch_now(self, folders: Iterable[str]) -> bool:
        """Add folders to the watch from the calling thread, live when this returns.

        A change made after the call is reported, so no rescan follows (unlike
        :meth:`set_paths`): a process that watches a module's folder before it reads the file
        misses nothing and re-checks nothing. Only a backend that can add a watch from any
        thread does it; the others return False, and the caller uses :meth:`set_paths`.
        """
        return False

    def wait_ready(self, timeout: float) -> bool:
        """Whether the watch over the current paths is live, waiting up to ``timeout`` seconds.

        Edits made after this returned True are reported. After :meth:`set_paths` changed the
        watched roots it waits for the rebuilt watch.
        """
        return self._ready.wait(timeout)

    def _roots_of(self, scope: _Scope) -> tuple[str, ...]:
        raise NotImplementedError

    def _watch_key(self, scope: _Scope) -> Hashable:
        """What the backend's watch depends on: when it changes, the watch is rebuilt."""
        return self._roots_of(scope)

    def _wake(self) -> None:
        """Hook: interrupt the thread's wait after stop or reconfigure was requested.

        Backends that wait on the two events need nothing here; one that blocks in ``poll`` on a
        file descriptor (inotify) writes to its wake-up descriptor.
        """

    def _run(self) -> None:
        raise NotImplementedError

    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException:  # a bug of ours; say so instead of dying silently
            logger.exception("The %s watcher thread crashed; no more changes are reported.", self)
            raise
        finally:
            logger.debug("%s watcher thread ended", self.backend)

    def _current(self) -> tuple[_Scope, int]:
        with self._lock:
            return self._scope, self._generation

    def _mark_live(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._ready.set()

    def _refresh_scope(self) -> None:
        """Re-check which watched paths exist, rebuilding the watch if one appeared or vanished."""
        old = self._scope
        fresh = _Scope.of(old.requested, old.recursive)
        if self._watch_key(fresh) == self._watch_key(old):
            return
        for path in sorted(set(old.missing) - set(fresh.missing)):
            logger.info("%s now exists: watching it.", path)
        for path in sorted(set(fresh.missing) - set(old.missing)):
            logger.info("%s vanished: it is watched again once it reappears.", path)
        with self._lock:
            if self._scope is old:  # a concurrent set_paths already did the work
                self._scope = fresh
                self._generation += 1
                self._ready.clear()
                self._reconfigure.set()
        self._wake()

    def _deliver(self, paths: Iterable[str], rescan: bool) -> None:
        batch = ChangeBatch(frozenset(paths), rescan)
        if not batch.paths and not batch.rescan:
            return
        self.batches += 1
        logger.debug(
            "%s watcher: %d paths changed%s",
            self.backend,
            len(batch.paths),
            " (rescan)" if rescan else "",
        )
        try:
            self._on_change(batch)
        except Exception:
            self.errors += 1
            logger.exception(
                "on_change raised on a batch of %d paths (%d failures so far); the %s watcher "
                "keeps running and reports the next changes.",
                len(batch.paths),
                self.errors,
                self.backend,
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.paths)} paths running={self.running}>"
