"""The polling backend: a stat walk of the watched paths every ``interval`` seconds.

For network mounts, Docker Desktop bind mounts and WSL, where native events do not arrive.
:class:`PollingWatcher` compares per-file stat signatures between walks; ``RELMOD_POLL_INTERVAL``
sets the default interval.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable

from relmod.errors import ConfigurationError
from relmod.ignore import is_ignored
from relmod.watchers.base import (
    _BACKOFF_FIRST,
    _BACKOFF_MAX,
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_STEP_MS,
    ChangeBatch,
    _is_ignored_folder,
    _Scope,
    _ThreadedWatcher,
)

__all__ = ["DEFAULT_POLL_INTERVAL", "PollingWatcher"]

# The backends log as "relmod.watch", the name they logged under before they moved out of
# relmod/watch.py: logging settings and filters for the public module keep covering them.
logger = logging.getLogger("relmod.watch")

DEFAULT_POLL_INTERVAL = 0.5
"""Seconds between two walks of the polling backend (env ``RELMOD_POLL_INTERVAL``)."""
MAX_CPU_SHARE = 0.05
"""The most of a core an idle polling watcher spends walking (env ``RELMOD_POLL_CPU``): after a
walk that took ``t`` seconds of CPU, the next waits at least ``t * (1 / share - 1)`` (a
10,000-file project walked every 0.5 s took 16% of a core)."""

_Signature = tuple[int, int, int, int]  # (mtime_ns, ctime_ns, size, inode) of one file


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


def _setting_from_env(name: str, default: float, what: str, *, most: float = float("inf")) -> float:
    """A positive number from the environment variable ``name`` (at most ``most``), or
    ``default`` when it is unset; a bad value is warned of and ``default`` used."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if 0 < value <= most:
        return value
    logger.warning("%s=%r is not %s; using %g.", name, raw, what, default)
    return default


class PollingWatcher(_ThreadedWatcher):
    """Stat every watched file every ``interval`` seconds, for where native events never arrive.

    Network mounts, Docker Desktop bind mounts and WSL folders on the Windows side change without
    telling inotify. This backend walks the watched paths with ``os.scandir`` and compares a
    (mtime_ns, ctime_ns, size, inode) signature per file, reporting files that appeared, vanished
    or changed. Ignored folders are not entered and a symlink back up the tree is not followed.
    When a walk finds changes it walks again after ``step_ms`` until a walk finds nothing new (or
    ``debounce_ms`` passed), so a storm arrives as one batch. Idle cost: one walk per interval,
    and at most :data:`MAX_CPU_SHARE` of a core (``RELMOD_POLL_CPU``, as a fraction: ``0.2`` is
    20%): on a project big enough that a walk costs more, walks are spaced further apart (by
    the walk's CPU time, not its wall time, so a slow network mount is not polled less often
    for its latency).

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
            interval = _setting_from_env(
                "RELMOD_POLL_INTERVAL", DEFAULT_POLL_INTERVAL, "a positive number of seconds"
            )
        elif not interval > 0:
            raise ConfigurationError(
                f"interval must be a positive number of seconds, not {interval}."
            )
        super().__init__(
            paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
        )
        self.interval = interval
        self.cpu_share = _setting_from_env(
            "RELMOD_POLL_CPU", MAX_CPU_SHARE, "a share of a core above 0 and at most 1", most=1.0
        )

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
                began = time.thread_time()
                changed = self._poll(scope, snapshots)
                walked = time.thread_time() - began
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
            self._reconfigure.wait(self.pause_after(walked))

    def pause_after(self, walk_cpu: float) -> float:
        """Seconds to wait after a walk that took ``walk_cpu`` seconds of CPU: the interval, or
        longer when walks would otherwise take more than :attr:`cpu_share` of a core
        (:data:`MAX_CPU_SHARE` unless ``RELMOD_POLL_CPU`` says otherwise).

        Example:
            >>> w = PollingWatcher(["/p"], print, interval=0.5)
            >>> w.pause_after(0.002), round(w.pause_after(0.08), 2)
            (0.5, 1.52)
        """
        return max(self.interval, walk_cpu * (1 / self.cpu_share - 1))

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
