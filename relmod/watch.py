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

This module is the public face; the backends live in :mod:`relmod.watchers` (``base``: the
batch, the protocol and the shared thread; ``native``; ``polling``) and are re-exported here.
Env ``RELMOD_POLL`` is read here by the chooser; ``RELMOD_POLL_INTERVAL`` is read by
:class:`PollingWatcher` itself, so a polling watcher built directly honours it too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable

from relmod.watchers.base import DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS, ChangeBatch, Watcher
from relmod.watchers.native import DEFAULT_RUST_TIMEOUT_MS as DEFAULT_RUST_TIMEOUT_MS
from relmod.watchers.native import WatchfilesWatcher
from relmod.watchers.polling import DEFAULT_POLL_INTERVAL, PollingWatcher

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

_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"", "0", "false", "no"})


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
