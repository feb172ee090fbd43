"""File watching behind one small interface, with two backends.

The broker watches a whole project root; the embedded watcher inside a lone client process watches
the folders of the modules it loaded, a set that grows at run time. Both see the same interface:

- :class:`Watcher`, the protocol: ``start``, ``stop``, ``set_paths``, ``paths``, ``wait_ready``.
- :class:`WatchfilesWatcher`: native events (inotify, FSEvents, ReadDirectoryChangesW) through
  watchfiles.
- :class:`PollingWatcher`: a stat walk every ``interval`` seconds, for network mounts, Docker
  Desktop bind mounts and WSL, where native events do not arrive.
- :func:`find_default_watcher`: the one place that chooses between them.

Every backend calls ``on_change`` with a :class:`ChangeBatch` on its own daemon thread. A batch
names paths that *may* have changed; consumers decide by content hash, so the kind of event is not
reported. ``rescan=True`` says events may have been lost and everything must be re-checked. A
backend sends one when its watch restarted (after an error, or after :meth:`Watcher.set_paths`
changed what is watched), because edits made while no watch was live cannot be reported.

Paths are absolute, spelled as the watched path was given (symlinks are not resolved). Paths under
an ignored folder or naming an editor's temporary file (:func:`relmod.ignore.is_ignored`, judged
relative to the watched folder, so a project that lives under ``~/build/`` is still watched) never
reach ``on_change``.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from relmod.errors import ConfigurationError
from relmod.ignore import is_ignored

__all__ = [
    "DEFAULT_DEBOUNCE_MS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_STEP_MS",
    "ChangeBatch",
    "PollingWatcher",
    "WatchfilesWatcher",
    "Watcher",
    "find_default_watcher",
]

logger = logging.getLogger(__name__)

DEFAULT_STEP_MS = 10
"""Quiet period that ends a batch: a single save is reported about 15-20 ms after it happens."""

DEFAULT_DEBOUNCE_MS = 1600
"""Longest a batch keeps growing during a storm of changes (a ``git checkout``)."""

DEFAULT_POLL_INTERVAL = 0.5
"""Seconds between two walks of the polling backend (env ``RELMOD_POLL_INTERVAL``)."""

DEFAULT_RUST_TIMEOUT_MS = 100
"""How long one native wait lasts when nothing happens; bounds the delay of a rescan batch."""

_RECHECK_SECONDS = (
    1.0  # how often the native backend looks for watched paths that appeared or vanished
)
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0  # seconds between restarts of a failing backend
_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"", "0", "false", "no"})

_Signature = tuple[int, int, int, int]  # (mtime_ns, ctime_ns, size, inode) of one file


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
        backend: ``"watchfiles"`` or ``"polling"``.
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
    """What both backends share: the thread, the paths, readiness and the callback guard."""

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
            rebuild = self._roots_of(scope) != self._roots_of(old)
            if rebuild:
                self._generation += 1
                self._ready.clear()
                self._reconfigure.set()
        _log_missing(sorted(set(scope.missing) - set(old.missing)))
        logger.debug("%s watcher now covers %d paths", self.backend, len(scope.requested))

    def wait_ready(self, timeout: float) -> bool:
        """Whether the watch over the current paths is live, waiting up to ``timeout`` seconds.

        Edits made after this returned True are reported. After :meth:`set_paths` changed the
        watched roots it waits for the rebuilt watch.
        """
        return self._ready.wait(timeout)

    def _roots_of(self, scope: _Scope) -> tuple[str, ...]:
        raise NotImplementedError

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
        if self._roots_of(fresh) == self._roots_of(old):
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


class _WatchSignal:
    """The ``stop_event`` handed to watchfiles, which also tells us when the watch is live.

    watchfiles' Rust loop calls ``is_set()`` once per step, from inside ``RustNotify.watch()``.
    That loop only runs after ``RustNotify`` added the native watch on every root (notify adds
    them synchronously), so the first call is the moment edits start being recorded.
    """

    __slots__ = ("_generation", "_live", "_owner")

    def __init__(self, owner: WatchfilesWatcher, generation: int) -> None:
        self._owner = owner
        self._generation = generation
        self._live = False

    def is_set(self) -> bool:
        if not self._live:
            self._live = True
            self._owner._mark_live(self._generation)
        return self._owner._stop_requested.is_set() or self._owner._reconfigure.is_set()


def _overflow_suspect_size() -> int:
    # Linux drops inotify events once max_queued_events are waiting; notify then sends an event
    # flagged Rescan that carries no path, and watchfiles drops path-less events, so the loss is
    # invisible. A batch this large comes from a storm big enough to have overflowed the queue.
    try:
        with open("/proc/sys/fs/inotify/max_queued_events") as file:
            return max(1024, int(file.read()) // 8)
    except (OSError, ValueError):
        return 2048


class WatchfilesWatcher(_ThreadedWatcher):
    """Native file events through watchfiles (inotify on Linux, FSEvents on macOS).

    Args:
        paths: folders and files to watch; folders are watched with everything below them
            unless ``recursive`` is False.
        on_change: called with each :class:`ChangeBatch`, on the watcher's thread.
        step_ms: quiet period that ends a batch (watchfiles' ``step``).
        debounce_ms: longest a batch grows during a storm (watchfiles' ``debounce``).
        recursive: watch folders recursively.
        rust_timeout_ms: length of one native wait when nothing happens; bounds how long a rescan
            batch or a path that appeared waits to be noticed.

    Raises:
        ImportError: watchfiles is not installed.

    Example:
        >>> w = WatchfilesWatcher(["/proj"], print)   # doctest: +SKIP
        >>> w.start(); w.wait_ready(5.0)               # doctest: +SKIP
        True
    """

    backend = "watchfiles"

    def __init__(
        self,
        paths: Iterable[str],
        on_change: Callable[[ChangeBatch], None],
        *,
        step_ms: int = DEFAULT_STEP_MS,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        recursive: bool = True,
        rust_timeout_ms: int = DEFAULT_RUST_TIMEOUT_MS,
    ) -> None:
        import watchfiles  # noqa: F401  (fail here, where find_default_watcher can fall back)

        if rust_timeout_ms < 1:
            raise ConfigurationError(
                f"rust_timeout_ms must be at least 1, got {rust_timeout_ms}: with no timeout the "
                "watcher never notices a watched folder that appears later."
            )
        super().__init__(
            paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
        )
        self._rust_timeout_ms = rust_timeout_ms
        self._ignore_permission_denied = False
        self._overflow_suspect = _overflow_suspect_size()

    def _roots_of(self, scope: _Scope) -> tuple[str, ...]:
        return scope.native_roots()

    def _run(self) -> None:
        rescan_due = False
        backoff = _BACKOFF_FIRST
        while not self._stop_requested.is_set():
            self._reconfigure.clear()
            scope, generation = self._current()
            roots = scope.native_roots()
            try:
                if roots:
                    logger.debug("watchfiles watch on %s", roots)
                    rescan_due = self._watch(roots, generation, rescan_due)
                else:
                    rescan_due = self._idle(generation, rescan_due)
            except PermissionError as err:
                rescan_due = self._failed(err)
                if not self._ignore_permission_denied:
                    # One unreadable folder (a container's data volume) would otherwise fail the
                    # whole watch forever. watchfiles' flag skips any root it cannot add, so it
                    # stays off until a permission error shows it is needed.
                    self._ignore_permission_denied = True
                    logger.warning(
                        "Some folders under %s cannot be read (%s); they are left out of the "
                        "watch. Fix their permissions to have them watched.",
                        ", ".join(roots),
                        err,
                    )
                    continue
            except Exception as err:  # WatchfilesRustInternalError, OSError (inotify limits), ...
                rescan_due = self._failed(err)
            else:
                backoff = _BACKOFF_FIRST
                # The old watch closed before the new one opens: edits in between are lost.
                rescan_due = True
                continue
            self._stop_requested.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _failed(self, err: Exception) -> bool:
        # watchfiles reports no "events were lost" signal of its own (see _overflow_suspect_size):
        # an error is the one loss we can see, so restart and ask for a rescan.
        self.backend_errors += 1
        logger.error(
            "The native file watch failed (%s: %s); restarting it and asking for a rescan. If "
            "this repeats (inotify limits, a network mount), set RELMOD_POLL=1 to poll instead.",
            type(err).__name__,
            err,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        return True

    def _watch(self, roots: tuple[str, ...], generation: int, rescan_due: bool) -> bool:
        """Run one native watch until stop or reconfigure; returns whether a rescan is still due."""
        import watchfiles

        changes = watchfiles.watch(
            *roots,
            watch_filter=None,  # filtered below, relative to the watched folder
            debounce=self._debounce_ms,
            step=self._step_ms,
            stop_event=_WatchSignal(self, generation),
            rust_timeout=self._rust_timeout_ms,
            yield_on_timeout=True,  # lets us deliver a rescan and re-check roots when idle
            raise_interrupt=False,
            recursive=self._scope.recursive,
            ignore_permission_denied=self._ignore_permission_denied,
        )
        next_recheck = time.monotonic() + _RECHECK_SECONDS
        try:
            for raw in changes:
                scope = self._scope
                paths = {path for _, path in raw if scope.accepts(path)}
                if len(raw) >= self._overflow_suspect:
                    rescan_due = True
                if paths or rescan_due:
                    self._deliver(paths, rescan_due)
                    rescan_due = False
                if time.monotonic() >= next_recheck:
                    next_recheck = time.monotonic() + _RECHECK_SECONDS
                    self._refresh_scope()
                if self._reconfigure.is_set() or self._stop_requested.is_set():
                    break
        finally:
            changes.close()
        return rescan_due

    def _idle(self, generation: int, rescan_due: bool) -> bool:
        """Nothing to watch yet: wait for set_paths, or for a watched path to appear."""
        self._mark_live(generation)
        while not self._reconfigure.wait(_RECHECK_SECONDS):
            self._refresh_scope()
        return rescan_due


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _walk(root: str, recursive: bool, out: dict[str, _Signature]) -> None:
    """Add the stat signature of every file under ``root`` (or of ``root`` itself) to ``out``."""
    try:
        root_stat = os.stat(root)
    except OSError:
        return  # not there (yet): nothing to report under it
    if not stat.S_ISDIR(root_stat.st_mode):
        out[root] = _signature(root_stat)
        return
    stack = [(root, frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():
                            if recursive and not _is_ignored_folder(entry.name):
                                st = entry.stat()
                                key = (st.st_dev, st.st_ino)
                                # A symlink back to a folder we are inside would loop forever.
                                if key not in ancestors:
                                    stack.append((entry.path, ancestors | {key}))
                        elif not is_ignored(entry.name):
                            out[entry.path] = _signature(entry.stat())
                    except OSError:
                        continue  # removed between listing and stat, or a dangling symlink
        except OSError as err:
            logger.debug("cannot list %s: %s", folder, err)


def _poll_interval_from_env() -> float:
    raw = os.environ.get("RELMOD_POLL_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_POLL_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value > 0:
        return value
    logger.warning(
        "RELMOD_POLL_INTERVAL=%r is not a positive number of seconds; polling every %.1f s.",
        raw,
        DEFAULT_POLL_INTERVAL,
    )
    return DEFAULT_POLL_INTERVAL


class PollingWatcher(_ThreadedWatcher):
    """Stat every watched file every ``interval`` seconds, for where native events never arrive.

    Network mounts, Docker Desktop bind mounts and WSL folders on the Windows side change without
    telling inotify. This backend walks the watched paths with ``os.scandir`` and compares a
    (mtime_ns, ctime_ns, size, inode) signature per file, reporting files that appeared, vanished
    or changed. Ignored folders are not entered and a symlink back up the tree is not followed.
    When a walk finds changes it walks again after ``step_ms`` until a walk finds nothing new (or
    ``debounce_ms`` passed), so a storm arrives as one batch. Idle cost: one walk per interval.

    Args:
        paths: folders and files to watch.
        on_change: called with each :class:`ChangeBatch`, on the watcher's thread.
        step_ms: pause before the confirming walk.
        debounce_ms: longest a batch grows during a storm.
        recursive: walk folders recursively.
        interval: seconds between walks; defaults to env ``RELMOD_POLL_INTERVAL``, else 0.5.

    Example:
        >>> w = PollingWatcher(["/mnt/share/proj"], print, interval=1.0)   # doctest: +SKIP
        >>> w.start(); w.wait_ready(10.0)                                   # doctest: +SKIP
        True
    """

    backend = "polling"

    def __init__(
        self,
        paths: Iterable[str],
        on_change: Callable[[ChangeBatch], None],
        *,
        step_ms: int = DEFAULT_STEP_MS,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        recursive: bool = True,
        interval: float | None = None,
    ) -> None:
        if interval is None:
            interval = _poll_interval_from_env()
        elif not interval > 0:
            raise ConfigurationError(
                f"interval must be a positive number of seconds, not {interval}."
            )
        super().__init__(
            paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
        )
        self.interval = interval

    def _roots_of(self, scope: _Scope) -> tuple[str, ...]:
        return scope.poll_roots()

    def _run(self) -> None:
        snapshots: dict[str, dict[str, _Signature]] = {}  # root -> {file: signature}
        walked_generation: int | None = None
        rescan_due = False
        backoff = _BACKOFF_FIRST
        while not self._stop_requested.is_set():
            self._reconfigure.clear()  # before the walk, so a set_paths during it is not missed
            scope, generation = self._current()
            try:
                changed = self._poll(scope, snapshots)
                if changed:
                    changed |= self._settle(scope, snapshots)
            except Exception as err:  # a bug of ours or an exotic file system; keep polling
                self.backend_errors += 1
                logger.exception(
                    "A polling walk failed (%s); retrying and asking for a rescan.", err
                )
                rescan_due = True
                self._stop_requested.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            if generation != walked_generation:
                # Roots were added or removed: files edited before their first walk are unknown.
                rescan_due = rescan_due or walked_generation is not None
                walked_generation = generation
                self._mark_live(generation)
            self._deliver(changed, rescan_due)
            rescan_due = False
            self._reconfigure.wait(self.interval)

    def _poll(self, scope: _Scope, snapshots: dict[str, dict[str, _Signature]]) -> set[str]:
        """Walk every root once; return changed files and replace ``snapshots`` in place.

        A root seen for the first time only records its baseline; a root no longer watched is
        forgotten. A root that was watched but missing reports its files once it appears.
        """
        changed: set[str] = set()
        fresh: dict[str, dict[str, _Signature]] = {}
        for root in scope.poll_roots():
            current: dict[str, _Signature] = {}
            _walk(root, scope.recursive, current)
            previous = snapshots.get(root)
            if previous is not None:
                changed.update(p for p, sig in current.items() if previous.get(p) != sig)
                changed.update(p for p in previous if p not in current)
            fresh[root] = current
        snapshots.clear()
        snapshots.update(fresh)
        return changed

    def _settle(self, scope: _Scope, snapshots: dict[str, dict[str, _Signature]]) -> set[str]:
        """Walk again every ``step_ms`` while changes keep coming, for at most ``debounce_ms``."""
        more: set[str] = set()
        deadline = time.monotonic() + self._debounce_ms / 1000
        while time.monotonic() < deadline and not self._stop_requested.wait(self._step_ms / 1000):
            found = self._poll(scope, snapshots)
            if not found:
                break
            more |= found
        return more


def _poll_from_env() -> tuple[bool, str]:
    raw = os.environ.get("RELMOD_POLL", "")
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True, f"RELMOD_POLL={raw}"
    if word not in _FALSE_WORDS:
        logger.warning("RELMOD_POLL=%r is not one of 1/true/yes/0/false/no; not polling.", raw)
    return False, "native events are the default"


def _probe_watchfiles() -> None:
    """Open and close one native watch; raises if watchfiles cannot watch on this system."""
    import watchfiles

    stopped = threading.Event()
    stopped.set()  # the first step sees it and returns, after RustNotify built the watch
    with tempfile.TemporaryDirectory(prefix="relmod-probe-") as folder:
        for _ in watchfiles.watch(
            folder, stop_event=stopped, step=1, recursive=False, raise_interrupt=False
        ):
            pass


def find_default_watcher(
    paths: Iterable[str],
    on_change: Callable[[ChangeBatch], None],
    *,
    poll: bool | None = None,
    step_ms: int = DEFAULT_STEP_MS,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    recursive: bool = True,
    interval: float | None = None,
) -> Watcher:
    """Choose a backend and build an (unstarted) watcher.

    Polling when ``poll`` is True, or when ``poll`` is None and env ``RELMOD_POLL`` is
    ``1``/``true``/``yes``; otherwise native events through watchfiles, falling back to polling
    with a warning when watchfiles cannot be imported or cannot open a watch here. The choice and
    its reason are logged at INFO.

    Args:
        paths: folders and files to watch.
        on_change: called with each :class:`ChangeBatch`, on the watcher's thread.
        poll: force polling (True) or native events (False); None asks the environment.
        step_ms: quiet period that ends a batch.
        debounce_ms: longest a batch grows during a storm.
        recursive: watch folders recursively.
        interval: seconds between walks when polling (default env ``RELMOD_POLL_INTERVAL``).

    Example:
        >>> watcher = find_default_watcher(["/proj"], print, poll=True)   # doctest: +SKIP
        >>> watcher.backend
        'polling'
    """
    paths = tuple(paths)
    if poll is None:
        poll, reason = _poll_from_env()
    else:
        reason = f"poll={poll} was asked for"
    if not poll:
        try:
            _probe_watchfiles()
            watcher: Watcher = WatchfilesWatcher(
                paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
            )
        except (ImportError, OSError, RuntimeError) as err:
            logger.warning(
                "Native file watching is unavailable (%s: %s); polling instead. Set RELMOD_POLL=1 "
                "to choose polling without this warning.",
                type(err).__name__,
                err,
            )
            reason = "watchfiles failed"
        else:
            logger.info("Watching %d paths with watchfiles (%s).", len(paths), reason)
            return watcher
    polling = PollingWatcher(
        paths,
        on_change,
        step_ms=step_ms,
        debounce_ms=debounce_ms,
        recursive=recursive,
        interval=interval,
    )
    logger.info(
        "Watching %d paths by polling every %.2f s (%s).", len(paths), polling.interval, reason
    )
    return polling
