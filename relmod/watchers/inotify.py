"""The Linux backend: inotify read directly, blocking until the kernel has something to say.

:class:`InotifyWatcher` keeps one inotify instance with a watch on every watched folder (and,
when recursive, every folder below that the ignore rules let in), and a thread that sleeps in
``poll`` on the inotify descriptor and an eventfd that :meth:`stop` and :meth:`set_paths` write
to. An idle watcher therefore never wakes up. :class:`_Burst` decides when gathered paths go out:
the first change after a quiet period at once, later ones of the same burst together.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable

from relmod.watchers.base import (
    _BACKOFF_FIRST,
    _BACKOFF_MAX,
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_STEP_MS,
    ChangeBatch,
    _Scope,
    _ThreadedWatcher,
)
from relmod.watchers.inotify_kernel import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    Inotify,
    RawEvent,
)

__all__ = ["InotifyWatcher"]

# The backends log as "relmod.watch", the name they logged under before they moved out of
# relmod/watch.py: logging settings and filters for the public module keep covering them.
logger = logging.getLogger("relmod.watch")

# IN_MODIFY is left out on purpose: a save is reported at IN_CLOSE_WRITE, when its content is
# complete, so a consumer never hashes (or compiles) half a file, and a big write costs one
# wake-up instead of one per write(). IN_EXCL_UNLINK: no events from files already unlinked.
FOLDER_MASK = (
    IN_CLOSE_WRITE
    | IN_ATTRIB
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)
_DONE = IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_RECHECK_SECONDS = 1.0  # how often a watched path that does not exist yet is looked for


class _Burst:
    """The paths gathered since the last delivery, and when they should go out.

    A change arriving after at least ``step`` seconds of quiet goes out at once (the lone save).
    Changes that follow within ``step`` of the previous one are held, and go out together once
    ``step`` passes without another, or ``max_delay`` after the first of them (a long storm).
    A created file that is not closed yet (``pending``) waits for its IN_CLOSE_WRITE, or for
    ``step`` of quiet, so a half-written file is not reported before it is complete.
    Paths that do not name Python source (:func:`_counts`: an editor's temporary file, a swap
    file, a folder) neither start nor extend a burst: alone, they wait ``step`` or go with the
    next change, so the rename that ends an atomic save (temporary file closed, then renamed
    over the module) is the lone save, not the second change of a burst held for ``step``.
    Time comes in as an argument, so the policy is tested without a clock.
    """

    def __init__(self, step: float, max_delay: float) -> None:
        self.step = step
        self.max_delay = max_delay
        self.ready: set[str] = set()
        self.pending: set[str] = set()
        self.rescan = False
        self._quiet_at = -math.inf  # the burst is over once this passes without news
        self._opened_at = math.inf  # when the oldest held ready path arrived
        self._pending_quiet_at = -math.inf
        self._pending_opened_at = math.inf
        self._aside_until = -math.inf  # held paths that do not count go out by then

    def add(
        self, now: float, ready: set[str], pending: set[str], rescan: bool
    ) -> tuple[frozenset[str], bool] | None:
        """Take what one drain of the queue found; returns a batch to deliver right away."""
        self.pending -= ready  # closed now: reported with the ready paths
        if not self.pending:
            self._pending_opened_at = math.inf
        if pending - ready:
            self.pending |= pending - ready
            self._pending_quiet_at = now + self.step
            self._pending_opened_at = min(self._pending_opened_at, now)
        if not ready and not rescan:
            return None
        if not rescan and not any(map(_counts, ready)):
            self.ready |= ready  # out with the next change, or on their own after step
            self._opened_at = min(self._opened_at, now)
            self._aside_until = max(self._aside_until, now + self.step)
            return None
        was_quiet = now >= self._quiet_at
        self._quiet_at = now + self.step
        self.ready |= ready
        self.rescan = self.rescan or rescan
        if was_quiet:
            return self._take(with_pending=False)
        self._opened_at = min(self._opened_at, now)
        return None

    def due(self, now: float) -> tuple[frozenset[str], bool] | None:
        """The batch whose time has come, if any (call after a timeout)."""
        pending_due = bool(self.pending) and (
            now >= self._pending_quiet_at or now >= self._pending_opened_at + self.max_delay
        )
        ready_due = (bool(self.ready) or self.rescan) and (
            now >= max(self._quiet_at, self._aside_until) or now >= self._opened_at + self.max_delay
        )
        if ready_due or pending_due:
            return self._take(with_pending=pending_due)
        return None

    def timeout(self, now: float) -> float | None:
        """Seconds until :meth:`due` may return a batch; None when nothing is held."""
        deadlines = []
        if self.ready or self.rescan:
            deadlines.append(
                min(max(self._quiet_at, self._aside_until), self._opened_at + self.max_delay)
            )
        if self.pending:
            deadlines.append(min(self._pending_quiet_at, self._pending_opened_at + self.max_delay))
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _take(self, with_pending: bool) -> tuple[frozenset[str], bool]:
        paths = self.ready | self.pending if with_pending else self.ready
        batch = (frozenset(paths), self.rescan)
        self.ready = set()
        self.rescan = False
        self._opened_at = math.inf
        self._aside_until = -math.inf
        if with_pending:
            self.pending = set()
            self._pending_opened_at = math.inf
        return batch


def _counts(path: str) -> bool:
    """Whether a change to ``path`` counts for the burst policy (see :class:`_Burst`)."""
    return path.endswith(".py")


class _Descriptors:
    """The inotify instance and the eventfd that wakes the thread, closed exactly once."""

    def __init__(self) -> None:
        self.inotify = Inotify()
        try:
            self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            self.inotify.close()
            raise
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:  # never write to a closed (and perhaps reused) descriptor number
            if self.wake_fd >= 0:
                os.eventfd_write(self.wake_fd, 1)

    def clear_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wake_fd)

    def close(self) -> None:
        with self._lock:
            fd, self.wake_fd = self.wake_fd, -1
            if fd >= 0:
                os.close(fd)
            self.inotify.close()


class InotifyWatcher(_ThreadedWatcher):
    """Linux inotify read directly: a save is reported in a fraction of a millisecond.

    The thread blocks in ``poll`` until the kernel has events, so an idle watcher costs no CPU.
    The first change after a quiet period is delivered as soon as the queue is drained; changes
    that keep coming within ``step_ms`` of each other are gathered and delivered together when
    ``step_ms`` passes without one, or ``debounce_ms`` after the first (a ``git checkout`` of 500
    files arrives as a handful of batches). A file is reported when it is closed after writing
    (IN_CLOSE_WRITE), renamed, deleted, or had its mode changed; a created file that stays open
    is reported after ``step_ms`` of quiet. A folder that appears is watched at once and
    scanned, so files created in it before its watch existed are reported too. A kernel queue
    overflow is delivered as a batch with ``rescan=True``.

    Watches are added by :meth:`prime` (called by :meth:`start` if it was not called before);
    :func:`relmod.watch.find_default_watcher` primes in the caller's thread so that a system
    whose inotify limits are used up falls back to polling instead of failing later.

    Limits: a file written through a descriptor that stays open (a log, ``mmap``) is reported
    when it is closed. While a watched path does not exist, it is looked for once a second.

    Args:
        paths: folders and files to watch; a file is watched through its folder, so atomic
            saves (write a temporary file, rename it over the target) are seen.
        on_change: called with each :class:`ChangeBatch`, on the watcher's thread.
        step_ms: quiet time that ends a burst.
        debounce_ms: longest a batch is held during a storm.
        recursive: watch folders with everything below them.

    Raises:
        OSError: (from :meth:`prime`/:meth:`start`) no inotify here, or its limits are used up.

    Example:
        >>> w = InotifyWatcher(["/proj"], print)   # doctest: +SKIP
        >>> w.start(); w.wait_ready(5.0)            # doctest: +SKIP
        True
    """

    backend = "inotify"

    def __init__(
        self,
        paths: Iterable[str],
        on_change: Callable[[ChangeBatch], None],
        *,
        step_ms: int = DEFAULT_STEP_MS,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        recursive: bool = True,
    ) -> None:
        super().__init__(
            paths, on_change, step_ms=step_ms, debounce_ms=debounce_ms, recursive=recursive
        )
        self.watches = 0  # folders watched now
        self.overflows = 0
        self._fds: _Descriptors | None = None
        self._folders: dict[int, str] = {}  # watch descriptor -> folder
        self._wds: dict[str, int] = {}  # folder -> watch descriptor
        self._roots: frozenset[str] = frozenset()
        self._refresh_due = False
        self._rewalk_due = False
        self._walked: set[str] = set()  # roots whose subfolders were walked and watched
        self._limit_logged = False
        # The loop's state, whichever thread runs it (the watcher's, or a caller's).
        self._burst = _Burst(self._step_ms / 1000, self._debounce_ms / 1000)
        self._live_generation: int | None = None
        self._next_recheck = time.monotonic() + _RECHECK_SECONDS
        self._backoff = _BACKOFF_FIRST
        self._resume_at = 0.0  # after a failure: no step before then
        self._in_caller = False

    def _roots_of(self, scope: _Scope) -> tuple[str, ...]:
        # Every watched folder is its own root (a nested one may sit under an ignored folder),
        # and a watched file is watched through its folder.
        return tuple(sorted(set(scope.dirs) | {os.path.dirname(f) for f in scope.files}))

    def _watch_key(self, scope: _Scope) -> Hashable:
        # A folder watched for one of its files becoming a watched folder gains the folders below.
        return self._roots_of(scope), scope.dirs

    def prime(self) -> None:
        """Open the inotify instance and add the watches now, in the calling thread.

        Raises:
            OSError: inotify is missing, or a limit is used up (``max_user_instances``,
                ``max_user_watches``); nothing stays open then.
        """
        if self._fds is not None:
            return
        scope, generation = self._current()
        fds = _Descriptors()
        self._fds = fds
        try:
            self._sync(scope, strict=True)
        except BaseException:
            self._fds = None
            self._folders.clear()
            self._wds.clear()
            fds.close()
            raise
        self._live_generation = generation
        # Not at exit: relmod's atexit hook stops the thread first; closing the fds under a thread
        # blocked in poll() would leave it there until stop()'s join times out (2 s per exit).
        weakref.finalize(self, fds.close).atexit = False  # a watcher dropped without stop()

    def start(self) -> None:
        """Add the watches (unless :meth:`prime` did) and start the thread.

        Raises:
            RuntimeError: the watcher was started before.
            OSError: inotify cannot be set up here (see :meth:`prime`).
        """
        if self._in_caller:
            raise RuntimeError("This inotify watcher runs in its caller's loop already.")
        if self._thread is None:
            self.prime()
        super().start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching and join the thread, waiting at most ``timeout`` seconds."""
        super().stop(timeout)
        if self._thread is None and self._fds is not None:
            self._fds.close()  # primed but never started: no thread will close them

    def _wake(self) -> None:
        fds = self._fds
        if fds is not None:
            fds.wake()

    def watch_now(self, folders: Iterable[str]) -> bool:
        """Add folders to a live, non-recursive watch from the calling thread (no wake-up of the
        watcher's thread, no rescan); False while the watch is being rebuilt, for a recursive
        watch, or when the kernel refuses a watch (then :meth:`set_paths` does it)."""
        fds = self._fds
        if fds is None or self._scope.recursive:
            return False
        # Under the lock, with the watch live: the thread rebuilds only after a set_paths or a
        # refresh, which clear _ready under this lock, and its rewalk takes the lock.
        with self._lock:
            if not self._ready.is_set():
                return False
            scope = self._scope
            new = sorted({os.path.abspath(f) for f in folders} - set(scope.requested))
            added: list[tuple[int, str]] = []
            try:
                for folder in new:
                    added.append((fds.inotify.add_watch(folder, FOLDER_MASK), folder))
            except OSError as err:
                logger.debug("cannot watch %s now (%s): rebuilding the watch instead", new, err)
                return False  # the watches added stay; set_paths' rebuild keeps or drops them
            for wd, folder in added:
                self._folders[wd] = folder
                self._wds[folder] = wd
            self.watches = len(self._folders)
            self._scope = _Scope.of(scope.requested + tuple(new), recursive=False)
            self._roots = frozenset(self._roots_of(self._scope))
        return True

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        fds = self._fds
        assert fds is not None, "start() primes before the thread runs"
        if self._stop_requested.is_set():
            return  # stopped before it started: stop() already closed the descriptors
        try:
            self._loop(fds)
        finally:
            fds.close()

    def _loop(self, fds: _Descriptors) -> None:
        poller = select.poll()
        poller.register(fds.inotify.fd, select.POLLIN)
        poller.register(fds.wake_fd, select.POLLIN)
        while not self._stop_requested.is_set():
            timeout = self.due_in()
            ms = None if timeout is None else math.ceil(timeout * 1000)
            for fd, _ in poller.poll(ms):
                if fd == fds.wake_fd:
                    fds.clear_wake()
            self.step()
            if self._resume_at:
                self._stop_requested.wait(max(0.0, self._resume_at - time.monotonic()))

    # -- run by a caller's loop instead of the thread ---------------------------------------------

    def start_in_caller(self) -> int:
        """Add the watches now and leave the waiting to the caller's loop, on the caller's thread
        (no thread of the watcher's own, so a save reaches the caller without a hop between
        threads): returns the descriptor to poll for reading. Each turn, the caller waits at
        most :meth:`due_in` seconds, then calls :meth:`step`; ``on_change`` runs inside it.

        Raises:
            RuntimeError: the watcher was started before.
            OSError: inotify cannot be set up here (see :meth:`prime`).
        """
        if self._thread is not None or self._in_caller:
            raise RuntimeError("This inotify watcher was already started; create a new one.")
        self.prime()
        assert self._fds is not None
        self._in_caller = True
        self.due_in()  # the watch is live: wait_ready() says so from now on
        fd: int = self._fds.inotify.fd
        return fd

    @property
    def paused(self) -> bool:
        """Whether the watcher backs off after a failure (its caller need not poll it now)."""
        return bool(self._resume_at)

    def due_in(self) -> float | None:
        """Rebuild the watch if its roots changed, then the seconds until :meth:`step` is due
        without an event (a burst's quiet step, a missing root's recheck), or None."""
        now = time.monotonic()
        if self._resume_at:
            if now < self._resume_at:
                return self._resume_at - now  # backing off after a failure
            self._resume_at = 0.0
        try:
            scope, generation = self._current()
            if generation != self._live_generation:
                self._reconfigure.clear()
                self._sync(scope)
                if self._live_generation is not None:
                    # Edits in the new roots before their watch existed cannot be named.
                    self._send(self._burst.add(time.monotonic(), set(), set(), True))
                self._live_generation = generation
            self._mark_live(generation)
        except Exception as err:
            self._failed(err)
            return self.due_in()
        timeout = self._burst.timeout(time.monotonic())
        if scope.missing:
            wait = max(0.0, self._next_recheck - time.monotonic())
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def step(self) -> None:
        """Read what the kernel has (never blocks) and deliver the batches that are due."""
        fds = self._fds
        if fds is None or self._resume_at:
            return
        burst = self._burst
        try:
            events = fds.inotify.read()
            now = time.monotonic()
            if events:
                self._send(burst.add(now, *self._absorb(events, fds.inotify)))
                if self._rewalk_due:  # after an overflow: folders made meanwhile lack watches
                    self._rewalk_due = False
                    with self._lock:  # not while watch_now adds a folder
                        self._sync(self._scope, rewalk=True)
            self._send(burst.due(time.monotonic()))
            if self._refresh_due or (self._scope.missing and now >= self._next_recheck):
                self._refresh_due = False
                self._next_recheck = now + _RECHECK_SECONDS
                self._refresh_scope()
            self._backoff = _BACKOFF_FIRST
        except Exception as err:
            self._failed(err)

    def _failed(self, err: Exception) -> None:
        """A bug of ours, or the kernel refusing a watch: log, ask for a rescan, back off."""
        self.backend_errors += 1
        logger.error(
            "The inotify watcher failed (%s: %s); continuing and asking for a rescan.",
            type(err).__name__,
            err,
            exc_info=True,
        )
        self._burst.rescan = True
        self._resume_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _send(self, batch: tuple[frozenset[str], bool] | None) -> None:
        if batch is not None:
            self._deliver(*batch)

    def _absorb(self, events: list[RawEvent], inotify: Inotify) -> tuple[set[str], set[str], bool]:
        """Turn decoded events into (ready paths, still-open created files, rescan)."""
        scope = self._scope
        ready: set[str] = set()
        pending: set[str] = set()
        rescan = False
        for wd, mask, _cookie, name in events:
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                logger.warning(
                    "The inotify queue overflowed (more than fs.inotify.max_queued_events "
                    "waiting); events were lost, asking for a rescan."
                )
                rescan = True
                self._rewalk_due = True
                continue
            folder = self._folders.get(wd)
            if folder is None:
                continue  # a watch we already dropped (its last events, IN_IGNORED)
            if mask & IN_IGNORED:
                self._forget(wd)
                if folder in self._roots:
                    self._refresh_due = True
                continue
            if not name:  # about the watched folder itself
                if mask & _SELF_GONE and folder in self._roots:
                    ready.add(folder)
                    self._refresh_due = True
                continue  # other folders are reported through their parent's event
            path = os.path.join(folder, name)
            if not scope.accepts(path):
                continue
            if mask & IN_ISDIR:
                ready.add(path)
                if mask & IN_MOVED_FROM:
                    self._unwatch_below(path, inotify)
                elif mask & (IN_CREATE | IN_MOVED_TO) and scope.recursive:
                    self._watch_tree(path, scope, inotify, found=ready)
            elif mask & _DONE:
                ready.add(path)
                pending.discard(path)
            elif mask & IN_CREATE:
                pending.add(path)
        return ready, pending, rescan

    # -- the watches --------------------------------------------------------------------------

    def _sync(self, scope: _Scope, rewalk: bool = False, strict: bool = False) -> None:
        """Make the watches match ``scope``: drop folders it no longer covers, add new roots.

        With ``rewalk``, walk every root again (watching twice is harmless): after an overflow,
        folders created meanwhile have no watch yet. With ``strict``, a used-up inotify limit
        raises instead of leaving folders unwatched (so the caller can choose another backend).
        """
        fds = self._fds
        assert fds is not None
        roots = frozenset(self._roots_of(scope))
        for wd, folder in list(self._folders.items()):
            if folder not in roots and not (scope.recursive and scope.accepts(folder)):
                fds.inotify.rm_watch(wd)
                self._forget(wd)
        self._roots = roots
        walkable = {root for root in roots if scope.recursive and root in scope.dirs}
        self._walked &= walkable
        for root in sorted(roots):
            walk = root in walkable
            if rewalk or root not in self._wds or (walk and root not in self._walked):
                self._watch_tree(root, scope, fds.inotify, None, below=walk, strict=strict)
                if walk:
                    self._walked.add(root)

    def _watch_tree(
        self,
        top: str,
        scope: _Scope,
        inotify: Inotify,
        found: set[str] | None,
        below: bool = True,
        strict: bool = False,
    ) -> None:
        """Watch ``top`` (and the folders below it when ``below``), then list each folder.

        The watch comes before the listing, so a file created in between is reported by an
        event, and one created before by the listing (into ``found``, when given).
        """
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                wd = inotify.add_watch(folder, FOLDER_MASK)
            except OSError as err:
                if strict and err.errno in (errno.ENOSPC, errno.EMFILE):
                    raise
                self._skipped(folder, err)
                continue
            known = self._folders.get(wd)
            if known is not None and known != folder:
                continue  # the same folder reached again through a symlink: watched already
            self._folders[wd] = folder
            self._wds[folder] = wd
            self.watches = len(self._folders)
            if not below and found is None:
                continue
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        path = entry.path
                        try:
                            is_dir = entry.is_dir()
                        except OSError:
                            continue
                        if is_dir:
                            if below and scope.recursive and scope.accepts(path):
                                stack.append(path)
                        elif found is not None and scope.accepts(path):
                            found.add(path)
            except OSError as err:
                self._skipped(folder, err)

    def _skipped(self, folder: str, err: OSError) -> None:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return  # gone again before we got to it: its parent's event reported that
        self.backend_errors += 1
        if err.errno == errno.ENOSPC and not self._limit_logged:
            self._limit_logged = True
            logger.error("%s Changes under %s and other new folders are not seen.", err, folder)
        else:
            logger.warning("Cannot watch %s (%s); changes in it are not seen.", folder, err)

    def _unwatch_below(self, folder: str, inotify: Inotify) -> None:
        """Drop the watches of a folder that moved away, and of every folder below it."""
        prefix = folder + os.sep
        for wd, path in list(self._folders.items()):
            if path == folder or path.startswith(prefix):
                inotify.rm_watch(wd)
                self._forget(wd)

    def _forget(self, wd: int) -> None:
        folder = self._folders.pop(wd, None)
        if folder is not None and self._wds.get(folder) == wd:
            del self._wds[folder]
        self.watches = len(self._folders)
