"""When the broker acts on reported changes: bursts are paced, git operations wait.

The watcher reports a single save within milliseconds, and the broker publishes it at once. A
formatter or a ``git checkout`` rewrites hundreds of files over a second or more, which a watcher
with a short quiet period reports as many small batches. :class:`PendingChanges` merges batches
and paces the broker: after publishing, the next publication waits a gap that doubles while
batches keep coming (50 ms, 100 ms, ... up to 1 s) and falls back to zero after a quiet spell, so
a storm comes out as a handful of invalidations while a lone save is never delayed.

While ``.git/index.lock`` exists, git is rewriting the work tree: changes are held back and
published together once the lock is gone, the way Watchman does. A lock left behind by a crashed
git would hold changes forever, so after :data:`HOLD_MAX` seconds the broker logs a warning and
stops waiting for that lock.

Example:
    >>> pending = PendingChanges(git_dir=None)
    >>> pending.add({'/p/a.py'}, rescan=False)
    >>> pending.take(now=10.0)  # a lone save goes at once
    ({'/p/a.py'}, False)
    >>> pending.add({'/p/b.py'}, rescan=False); _ = pending.take(now=10.01)  # so does the next
    >>> pending.add({'/p/c.py'}, rescan=False)  # a burst: now the gap grows
    >>> pending.take(now=10.02) is None, pending.wait_seconds(now=10.02)
    (True, 0.04)
"""

from __future__ import annotations

import logging
import os

__all__ = ["HOLD_MAX", "PendingChanges", "find_git_dir"]

logger = logging.getLogger(__name__)

MIN_GAP = 0.05
"""The gap after the first publication of a burst, in seconds."""
MAX_GAP = 1.0
"""The longest gap between two publications during a burst."""
HOLD_MAX = 30.0
"""Seconds a ``.git/index.lock`` may hold changes back before it is presumed stale."""
LOCK_RECHECK = 0.05
"""Seconds between two looks at the git lock while changes are held."""


def find_git_dir(root: str) -> str | None:
    """The git folder of the repository holding ``root``, or None when there is none.

    Looks in ``root`` and its parents for ``.git``: a folder, or a file saying ``gitdir: PATH``
    (worktrees and submodules).
    """
    folder = os.path.realpath(root)
    while True:
        candidate = os.path.join(folder, ".git")
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as file:
                    text = file.read(4096).strip()
            except (OSError, UnicodeDecodeError):
                return None
            if text.startswith("gitdir:"):
                return os.path.normpath(os.path.join(folder, text[len("gitdir:") :].strip()))
            return None
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


class PendingChanges:
    """Changed paths waiting to be published, with pacing and the git hold (see module docs).

    Args:
        git_dir: the repository's git folder, whose ``index.lock`` holds changes back; None
            to look for ``<root>/.git`` lazily via ``root``.
        root: the project root, used to find the git folder when ``git_dir`` is None.
    """

    def __init__(self, git_dir: str | None, *, root: str | None = None) -> None:
        self._root = root
        self._git_dir = git_dir
        self.paths: set[str] = set()
        self.rescan = False
        self._last_taken = float("-inf")
        self._gap = 0.0
        self._held_since: float | None = None
        self._stale_lock: tuple[int, int] | None = None  # (inode, mtime_ns) of an ignored lock
        self.held_batches = 0

    def __bool__(self) -> bool:
        return bool(self.paths) or self.rescan

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, paths: set[str] | frozenset[str], *, rescan: bool) -> None:
        """Merge a batch into what is pending."""
        self.paths.update(paths)
        self.rescan = self.rescan or rescan

    def lock_path(self) -> str | None:
        """The git index lock that holds changes back, if there is a repository."""
        if self._git_dir is None and self._root is not None:
            self._git_dir = find_git_dir(self._root)
        return None if self._git_dir is None else os.path.join(self._git_dir, "index.lock")

    def held(self, now: float) -> bool:
        """Whether a git operation holds the pending changes back right now."""
        lock = self.lock_path()
        try:
            st = os.stat(lock) if lock is not None else None
        except OSError:
            st = None
        if st is None:
            if self._held_since is not None:
                logger.info(
                    "git released its index lock after %.2f s; publishing the held changes",
                    now - self._held_since,
                )
            self._held_since = None
            self._stale_lock = None
            return False
        identity = (st.st_ino, st.st_mtime_ns)
        if identity == self._stale_lock:
            return False
        if self._held_since is None:
            self._held_since = now
            self.held_batches += 1
            logger.info("git holds %s; holding changes until it is gone", lock)
        elif now - self._held_since > HOLD_MAX:
            logger.warning(
                "%s has existed for more than %.0f s; presuming it was left by a crashed git "
                "and publishing changes anyway. Remove it if no git command is running.",
                lock,
                HOLD_MAX,
            )
            self._stale_lock = identity
            self._held_since = None
            return False
        return True

    @property
    def holding(self) -> bool:
        """Whether the last look at the git lock found it held."""
        return self._held_since is not None

    def wait_seconds(self, now: float) -> float | None:
        """Seconds until the pending changes may be taken, None when nothing is pending."""
        if not self:
            return None
        if self._held_since is not None:
            return LOCK_RECHECK
        return max(0.0, round(self._last_taken + self._gap - now, 6))

    def take(self, now: float, *, force: bool = False) -> tuple[set[str], bool] | None:
        """The pending paths and rescan flag when they may be published now, else None.

        Args:
            now: the monotonic time.
            force: ignore the pacing (a sync waits for nobody); the git hold still applies.
        """
        if not self or self.held(now):
            return None
        if not force and now < self._last_taken + self._gap:
            return None
        since = now - self._last_taken
        if since <= max(2 * self._gap, MAX_GAP / 4):
            self._gap = min(max(2 * self._gap, MIN_GAP), MAX_GAP)
        else:
            self._gap = 0.0
        self._last_taken = now
        taken, rescan = self.paths, self.rescan
        self.paths, self.rescan = set(), False
        return taken, rescan
