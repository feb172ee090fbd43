"""File watching behind one small interface, with three backends.

The broker watches a whole project root; the embedded watcher inside a lone client process watches
the folders of the modules it loaded, a set that grows at run time. Both see the same interface:

- :class:`Watcher`, the protocol: ``start``, ``stop``, ``set_paths``, ``paths``, ``wait_ready``.
- :class:`InotifyWatcher`: Linux inotify read directly; a save is reported in well under a
  millisecond and an idle watcher never wakes up. The default on Linux.
- :class:`WatchfilesWatcher`: native events (FSEvents, ReadDirectoryChangesW, inotify) through
  watchfiles. The default elsewhere; it wakes every ``step_ms`` and reports a save after a quiet
  ``step_ms``.
- :class:`PollingWatcher`: a stat walk every ``interval`` seconds, for network mounts, Docker
  Desktop bind mounts and WSL, where native events do not arrive.
- :func:`find_default_watcher`: the one place that chooses between them.

Every backend calls ``on_change`` with a :class:`ChangeBatch` on its own daemon thread. A batch
names paths that *may* have changed; consumers decide by content hash, so the kind of event is not
reported. ``rescan=True`` says events may have been lost and everything must be re-checked. A
backend sends one when its watch restarted (after an error, or after :meth:`Watcher.set_paths`
changed what is watched), or when the kernel's event queue overflowed, because edits made while
no watch was live cannot be reported.

Paths are absolute, spelled as the watched path was given (symlinks are not resolved). Paths under
an ignored folder or naming an editor's temporary file (:func:`relmod.ignore.is_ignored`, judged
relative to the watched folder, so a project that lives under ``~/build/`` is still watched) never
reach ``on_change``.

This module is the public face; the backends live in :mod:`relmod.watchers` (``base``: the
batch, the protocol and the shared thread; ``inotify`` and ``inotify_kernel``; ``native``;
``polling``) and are re-exported here. Env ``RELMOD_WATCHER`` (``inotify``, ``watchfiles`` or
``poll``) and ``RELMOD_POLL`` are read here by the chooser; ``RELMOD_POLL_INTERVAL`` is read by
:class:`PollingWatcher` itself, so a polling watcher built directly honours it too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable

from relmod.watchers.base import DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS, ChangeBatch, Watcher
from relmod.watchers.inotify import InotifyWatcher
from relmod.watchers.native import DEFAULT_RUST_TIMEOUT_MS as DEFAULT_RUST_TIMEOUT_MS
from relmod.watchers.native import WatchfilesWatcher
from relmod.watchers.polling import DEFAULT_POLL_INTERVAL, PollingWatcher

__all__ = [
    "DEFAULT_DEBOUNCE_MS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_STEP_MS",
    "ChangeBatch",
    "InotifyWatcher",
    "PollingWatcher",
    "WatchfilesWatcher",
    "Watcher",
    "find_default_watcher",
]

logger = logging.getLogger(__name__)

_TRUE_WORDS = frozenset({"1", "true", "yes"})
_FALSE_WORDS = frozenset({"", "0", "false", "no"})
_BACKEND_WORDS = {
    "inotify": "inotify",
    "watchfiles": "watchfiles",
    "native": "native",
    "poll": "polling",
    "polling": "polling",
}


def _native_backend() -> str:
    """The native backend of this platform: inotify read directly on Linux, else watchfiles."""
    return "inotify" if sys.platform.startswith("linux") else "watchfiles"


def _backend_from_env() -> tuple[str, str] | None:
    """The backend ``RELMOD_WATCHER`` or ``RELMOD_POLL`` asks for, with the reason; else None."""
    raw = os.environ.get("RELMOD_WATCHER", "")
    word = raw.strip().lower()
    if word:
        backend = _BACKEND_WORDS.get(word)
        if backend is not None:
            return (_native_backend() if backend == "native" else backend), f"RELMOD_WATCHER={raw}"
        logger.warning(
            "RELMOD_WATCHER=%r is not one of inotify/watchfiles/poll/native; ignoring it.", raw
        )
    raw = os.environ.get("RELMOD_POLL", "")
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return "polling", f"RELMOD_POLL={raw}"
    if word not in _FALSE_WORDS:
        logger.warning("RELMOD_POLL=%r is not one of 1/true/yes/0/false/no; not polling.", raw)
    return None


def _probe_watchfiles() -> None:
    """Open and close one native watch; raises if watchfiles cannot watch on this system."""
    import tempfile

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

    The choice, first match wins:

    1. ``poll=True``: polling. ``poll=False``: native events (env ``RELMOD_WATCHER`` may still
       pick ``inotify`` or ``watchfiles``).
    2. Env ``RELMOD_WATCHER``: ``inotify``, ``watchfiles``, ``poll`` (or ``native``).
    3. Env ``RELMOD_POLL`` = ``1``/``true``/``yes``: polling.
    4. The platform's native backend: :class:`InotifyWatcher` on Linux, :class:`WatchfilesWatcher`
       elsewhere (FSEvents on macOS, ReadDirectoryChangesW on Windows).

    A native backend that cannot be set up here (inotify limits used up, watchfiles missing)
    falls back to polling with a warning that says why. The inotify watcher's watches are added
    here, in the caller's thread, so a used-up limit is found now rather than later. The choice
    and its reason are logged at INFO.

    Args:
        paths: folders and files to watch.
        on_change: called with each :class:`ChangeBatch`, on the watcher's thread.
        poll: force polling (True) or native events (False); None asks the environment.
        step_ms: quiet period that ends a batch (inotify reports the first change of a quiet
            period at once and uses ``step_ms`` only to gather the rest of a burst).
        debounce_ms: longest a batch grows during a storm.
        recursive: watch folders recursively.
        interval: seconds between walks when polling (default env ``RELMOD_POLL_INTERVAL``).

    Example:
        >>> watcher = find_default_watcher(["/proj"], print, poll=True)   # doctest: +SKIP
        >>> watcher.backend
        'polling'
    """
    paths = tuple(paths)
    from_env = _backend_from_env()
    if poll is True:
        backend, reason = "polling", "poll=True was asked for"
    elif poll is False:
        backend, reason = _native_backend(), "poll=False was asked for"
        if from_env is not None and from_env[0] != "polling":
            backend, reason = from_env
    elif from_env is not None:
        backend, reason = from_env
    else:
        backend, reason = _native_backend(), f"the native backend on {sys.platform}"
    if backend == "inotify":
        try:
            inotify = InotifyWatcher(
                paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
            )
            inotify.prime()
        except OSError as err:
            logger.warning(
                "inotify cannot be set up here (%s); polling instead. Set RELMOD_WATCHER=poll "
                "to choose polling without this warning.",
                err,
            )
            reason = f"inotify failed: {err}"
        else:
            logger.info(
                "Watching %d paths with inotify, %d folders (%s).",
                len(paths),
                inotify.watches,
                reason,
            )
            return inotify
    elif backend == "watchfiles":
        try:
            _probe_watchfiles()
            watcher: Watcher = WatchfilesWatcher(
                paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
            )
        except (ImportError, OSError, RuntimeError) as err:
            logger.warning(
                "Native file watching is unavailable (%s: %s); polling instead. Set "
                "RELMOD_WATCHER=poll to choose polling without this warning.",
                type(err).__name__,
                err,
            )
            reason = f"watchfiles failed: {type(err).__name__}"
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
