"""Saves the kernel already knows of, read at once: the notebook's "save, then Shift-Enter".

A watcher thread (the embedded one, or the broker's, whose publication crosses a socket) reports a
save a little after it happened, and the next cell may start sooner. The kernel itself, though,
queues a file event the moment an editor closes or renames the file. :class:`CellWatch` keeps one
inotify descriptor over the folders of the modules a kernel loaded, read without blocking before
every cell: whatever was saved before Shift-Enter is in its queue, whichever module it is, and
reading an empty queue costs one system call, however many modules are loaded.

Where inotify is not available (macOS, Windows, some containers) :meth:`CellWatch.create`
returns None and the notebook relies on its feed and its focus checks.
"""

from __future__ import annotations

import logging
import os

from relmod.watchers import inotify_kernel as kernel

log = logging.getLogger(__name__)

_MASK = (
    kernel.IN_CLOSE_WRITE
    | kernel.IN_MOVED_TO
    | kernel.IN_MOVED_FROM
    | kernel.IN_CREATE
    | kernel.IN_DELETE
    | kernel.IN_ATTRIB
    | kernel.IN_ONLYDIR
)


class CellWatch:
    """A non-blocking inotify queue over a growing set of folders."""

    def __init__(self, inotify: kernel.Inotify) -> None:
        self._inotify = inotify
        self._folders: dict[int, str] = {}  # watch descriptor -> folder
        self._watched: set[str] = set()
        self.overflowed = False

    @classmethod
    def create(cls) -> CellWatch | None:
        """A new queue, or None where inotify cannot be used (then nothing is lost but speed)."""
        if not kernel.is_available():
            return None
        try:
            return cls(kernel.Inotify())
        except OSError as err:
            log.info(
                "relmod: no inotify queue for the notebook (%s); saves reach it through the feed",
                err,
            )
            return None

    def follow(self, folders: set[str]) -> None:
        """Watch these folders too (folders already watched cost nothing)."""
        for folder in folders - self._watched:
            try:
                wd = self._inotify.add_watch(folder, _MASK)
            except OSError as err:
                log.debug("relmod: cannot watch %s for the notebook: %s", folder, err)
                continue
            self._folders[wd] = folder
            self._watched.add(folder)

    def changed(self) -> list[str]:
        """The ``.py`` files saved, created, moved or deleted since the last call."""
        events = self._inotify.read()
        if not events:
            return []
        out: list[str] = []
        for event in events:
            if event.mask & kernel.IN_Q_OVERFLOW:
                self.overflowed = True  # the caller checks every file
                continue
            folder = self._folders.get(event.wd)
            name = event.name
            if folder is None or not name.endswith(".py"):
                continue
            out.append(os.path.join(folder, name))
        return out

    def close(self) -> None:
        self._inotify.close()
