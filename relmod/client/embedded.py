"""The embedded watcher: a lone process's own feed of changes, used when no broker runs.

It watches the folders of the modules the process loaded (the set grows as modules load), and for
every reported path hands the content check and the stale marking to the same client code the
broker connection uses (:meth:`relmod.client.session.Client.files_changed`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from relmod.watch import ChangeBatch, Watcher, find_default_watcher

log = logging.getLogger(__name__)

DEBOUNCE_MS = 100
"""The longest a change waits while a storm of saves goes on (a lone save is reported at once)."""


class EmbeddedFeed:
    """One watcher per process, started on first use, on a daemon thread."""

    name = "embedded"

    def __init__(
        self,
        folders: Callable[[], set[str]],
        files_changed: Callable[[Iterable[str]], object],
        known_files: Callable[[], Iterable[str]],
        *,
        poll: bool | None = None,
        verify_files: Callable[[Iterable[str]], object] | None = None,
    ) -> None:
        self._folders = folders
        self._files_changed = files_changed
        self._verify_files = verify_files or files_changed
        self._known_files = known_files
        self._poll = poll
        self._watcher: Watcher | None = None
        self._watched: set[str] = set()
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        return self._watcher.backend if self._watcher is not None else "none"

    def start(self) -> None:
        """Start watching the folders known now; :meth:`follow` adds more later."""
        with self._lock:
            if self._watcher is not None:
                return
            self._watched = set(self._folders())
            self._watcher = find_default_watcher(
                sorted(self._watched),
                self._on_change,
                poll=self._poll,
                recursive=False,
                debounce_ms=DEBOUNCE_MS,
            )
            self._watcher.start()

    def follow(self) -> None:
        """Watch any folder that gained its first loaded module since the last call.

        Called before the module's file is read: where the backend can add the watch at once
        (inotify), nothing saved afterwards is missed and nothing needs re-checking; otherwise
        the watch is rebuilt and every loaded file re-checked once it is live.
        """
        with self._lock:
            folders = set(self._folders())
            if self._watcher is None or folders <= self._watched:
                return
            new = folders - self._watched
            self._watched |= folders
            if not self._watcher.watch_now(sorted(new)):
                self._watcher.set_paths(sorted(self._watched))

    def wait_ready(self, timeout: float) -> bool:
        return self._watcher is not None and self._watcher.wait_ready(timeout)

    def _on_change(self, batch: ChangeBatch) -> None:
        paths: Iterable[str] = batch.paths
        if batch.rescan:
            log.info("the watcher may have lost events: re-checking every loaded file")
            paths = set(batch.paths) | set(self._known_files())
        self._files_changed(paths)

    def sync(self, timeout: float) -> None:
        """Every change saved before the call is visible after it: check each file directly
        (a stat per file; only files whose stat signature moved are read and hashed)."""
        self._verify_files(list(self._known_files()))

    def forked(self) -> EmbeddedFeed:
        """A fresh watcher for a forked child (the parent's thread does not exist there)."""
        return EmbeddedFeed(
            self._folders,
            self._files_changed,
            self._known_files,
            poll=self._poll,
            verify_files=self._verify_files,
        )

    def stop(self) -> None:
        with self._lock:
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
