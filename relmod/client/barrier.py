"""The parent's ``relmod.sync()`` as a barrier for its pool workers.

A parent that hands work to other processes (a process pool, joblib, Dask) promises: after its
``relmod.sync()`` returns, every task a worker starts runs code at least as new as the saves made
before the call. A worker's own feed may not have heard of those saves yet when the task arrives,
so the parent counts its syncs in a small shared file (:class:`SyncCounter`, 8 bytes, mapped in
memory, 0600 in relmod's runtime folder), and each worker checks the count before every import
statement, which is how a task's function reaches a worker: pickle imports it by name
(:class:`SyncFollower`). When the count moved, the worker syncs itself first (a round trip to the
broker, or a stat of its loaded files), once per parent sync. Reading the count costs a few
hundred nanoseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import secrets
import struct
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_COUNT = struct.Struct("<Q")


class SyncCounter:
    """The parent's side: a count bumped after each completed ``sync()``."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, f"sync-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _COUNT.pack(0))
            self._map = mmap.mmap(fd, _COUNT.size)
        finally:
            os.close(fd)
        self._owner = os.getpid()
        self._count = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    def bump(self) -> None:
        """Say that a sync completed (a forked child's syncs are its own: not counted)."""
        if os.getpid() != self._owner:
            return
        with self._lock:
            self._count += 1
            _COUNT.pack_into(self._map, 0, self._count)

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        with contextlib.suppress(OSError):  # already gone: nothing left to clean
            os.unlink(self.path)


class SyncFollower:
    """The worker's side: before a task's import, catch up with the parent's syncs."""

    def __init__(self, path: str, sync: Callable[[], None]) -> None:
        self.path = path
        self._sync = sync
        fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, _COUNT.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._seen = self._read()
        self._lock = threading.RLock()
        self._syncing = threading.local()

    def _read(self) -> int:
        return int(_COUNT.unpack_from(self._map, 0)[0])

    def check(self) -> None:
        """Sync this process if the parent synced since the last check (cheap otherwise)."""
        count = self._read()
        if count == self._seen or getattr(self._syncing, "on", False):
            return
        if threading.current_thread().name.startswith("relmod"):
            return  # relmod's own threads (the feed a sync waits for) never wait here
        with self._lock:
            if count == self._seen:
                return  # another thread caught up meanwhile
            self._syncing.on = True
            try:
                self._sync()
            except Exception as err:  # a dead broker: the feed's fallback watcher goes on
                log.warning("relmod: catching up with the parent's sync failed: %s", err)
            finally:
                self._syncing.on = False
            self._seen = count
