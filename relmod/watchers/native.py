"""The native backend: file events from the operating system through watchfiles.

:class:`WatchfilesWatcher` runs ``watchfiles.watch`` on the roots of its scope and rebuilds the
watch when the roots change; :class:`_WatchSignal` is the ``stop_event`` that also tells it
when a watch went live.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

from relmod.errors import ConfigurationError
from relmod.watchers.base import (
    _BACKOFF_FIRST,
    _BACKOFF_MAX,
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_STEP_MS,
    ChangeBatch,
    _Scope,
    _ThreadedWatcher,
)

__all__ = ["DEFAULT_RUST_TIMEOUT_MS", "WatchfilesWatcher"]

# The backends log as "relmod.watch", the name they logged under before they moved out of
# relmod/watch.py: logging settings and filters for the public module keep covering them.
logger = logging.getLogger("relmod.watch")

DEFAULT_RUST_TIMEOUT_MS = 100
"""How long one native wait lasts when nothing happens; bounds the delay of a rescan batch."""

_RECHECK_SECONDS = (
    1.0  # how often the native backend looks for watched paths that appeared or vanished
)


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


_STORM_WINDOW = 2.0
"""Seconds over which the distinct paths of consecutive batches add up (see :class:`_Storm`)."""


class _Storm:
    """Tells when the batches of the last :data:`_STORM_WINDOW` seconds suggest an overflow.

    A watcher that falls behind (a frozen or starved process) while thousands of files change
    finds the kernel queue overflowed, and drains what it kept as several batches: watchfiles
    ends a batch whenever one step passes without a new path, so no single batch need reach the
    suspect size. The distinct paths of recent batches are counted together instead.
    """

    def __init__(self, suspect: int) -> None:
        self._suspect = suspect
        self._batches: deque[tuple[float, set[str]]] = deque()
        self._counts: Counter[str] = Counter()

    def overflowed(self, raw: Iterable[tuple[object, str]]) -> bool:
        now = time.monotonic()
        while self._batches and now - self._batches[0][0] > _STORM_WINDOW:
            for path in self._batches.popleft()[1]:
                self._counts[path] -= 1
                if not self._counts[path]:
                    del self._counts[path]
        paths = {path for _, path in raw}
        if not paths:
            return False
        self._batches.append((now, paths))
        self._counts.update(paths)
        if len(self._counts) < self._suspect:
            return False
        self._batches.clear()
        self._counts.clear()
        return True


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
        storm = _Storm(self._overflow_suspect)
        try:
            for raw in changes:
                scope = self._scope
                paths = {path for _, path in raw if scope.accepts(path)}
                if storm.overflowed(raw):
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
