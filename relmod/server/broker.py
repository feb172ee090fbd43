"""The broker process: one watcher, one project, a PUB and a ROUTER socket, one loop thread.

Threads::

    loop thread (the only one touching ZeroMQ sockets):
    poll(ROUTER, wake pipe, the inotify descriptor, timeout)
        ├── inotify events -> the watcher's step (bursts gathered) -> ChangeBatch, same turn
        ├── batches -> PendingChanges (pacing, git hold) -> Project.apply -> publish on PUB
        ├── requests on the ROUTER -> handlers -> one reply each (a client's notes: none)
        ├── syncs of one turn, together: re-check recently touched files, publish, answer
        │   (while git holds changes back, the answers wait for them)
        ├── clients' reloads and failures ("running" reports) -> "activity" on PUB, which only
        │   subscribers to everything receive (relmod status --follow), not clients' feeds
        └── every heartbeat interval (relmod.protocol.heartbeat_interval()): heartbeat
            {epoch, seq, time} on PUB

On Linux the loop runs the inotify watcher itself
(:meth:`~relmod.watchers.inotify.InotifyWatcher.start_in_caller`): a save goes from the
kernel's event to the publication on one thread, with no wake-up of another in between. Other
watchers (polling, watchfiles) keep a thread of their own, which never touches a socket: it puts
the batch on a queue and writes one byte to a pipe the loop polls, so a burst of batches costs
the loop one wake-up. Signal handlers use the same pipe to stop the loop.

Start-up order matters: the lock first (a second broker must not steal the ipc paths), then the
sockets and the watcher, then the connection file, and only then the scan of every file, on a
thread of its own (:class:`~relmod.server.scanner.ProjectScan`, with worker processes for big
projects). So the broker answers from its first second, and since the watcher is live before the
scan reads anything, no edit falls between the two: an edit during the scan is read as a change
and published (a file the scan has not reached yet counts as new), and reaches the clients that
loaded the file and, through the edges they report, its dependents. ``sync`` during the scan also
looks at the files the scan has not reached yet. ``relmod status`` shows the scan's progress::

    scan thread ──("records", [...]) etc.──> queue ──byte on the wake pipe──> loop: Project.receive
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from relmod._version import __version__
from relmod.connfile import (
    CONNECTION_VERSION,
    BrokerLock,
    ConnectionInfo,
    connection_path,
    read_connection_file,
    remove_stale_connection_file,
    sweep_runtime_dir,
    write_connection_file,
)
from relmod.errors import ConnectionFileError, ProtocolError
from relmod.protocol import Codec, heartbeat_interval, new_epoch, new_key, pack_ids
from relmod.server.clients import ClientTable
from relmod.server.history import History
from relmod.server.pending import PendingChanges
from relmod.server.project import Project, Update
from relmod.server.requests import (
    AFTER_SYNC,
    NO_REPLY,
    AfterWalk,
    Outcome,
    Reply,
    RequestHandlers,
)
from relmod.server.roots import find_import_roots
from relmod.server.scancache import ScanCache, cache_path
from relmod.server.scanner import ProjectScan
from relmod.server.sockets import BrokerSockets
from relmod.server.state import BrokerState
from relmod.watch import ChangeBatch, find_default_watcher
from relmod.watchers.inotify import InotifyWatcher

__all__ = ["Broker", "BrokerConfig"]

logger = logging.getLogger(__name__)

MAX_REQUESTS_PER_TURN = 256
"""Requests handled before the loop looks at batches and heartbeats again (no starvation)."""
CHUNK_PATHS = 5000
"""Most changed paths (with their hashes) in one invalidation; bigger ones are split."""
CHUNK_IDS = 200_000
"""Most affected ids in one invalidation (800 KB at most, packed); bigger ones are split."""
WATCH_STEP_MS = 3
"""The watcher's quiet period. watchfiles wakes once per step even when idle, so this trades
latency against idle CPU; measured on 10,000 files (benchmarks/bench_broker.py): step 10 ms gives
about 20 ms from write to invalidation at 0.3 % of a core idle, step 3 ms about 8 ms at 0.6 %.
Bursts are coalesced by :class:`~relmod.server.pending.PendingChanges`, not by the step."""
EXPIRE_EVERY = 1.0
"""Seconds between two looks for clients that went silent or whose process died."""
SCAN_EDITS_AFTER = 0.05
"""Seconds from publishing a change to finding its files' own imports (see _publish_changes)."""
CACHE_SAVE_EVERY = 300.0
"""Seconds between two writes of the scan cache while files change (it is also written when the
scan ends and when the broker stops)."""


@dataclass(frozen=True)
class BrokerConfig:
    """How to run a broker.

    Attributes:
        root: the project folder.
        poll: force polling (True), native events (False), or let ``RELMOD_POLL`` decide (None).
        tcp: ``(host, port)`` to bind PUB on ``port`` and ROUTER on ``port + 1`` with CURVE;
            None for ipc in the runtime folder (or tcp on 127.0.0.1 when ipc is unavailable).
        processes: worker processes for the first scan; None means one per CPU.
        check: compile-check every file after the first scan (broken files are listed at once);
            edits are always compile-checked.
    """

    root: str
    poll: bool | None = None
    tcp: tuple[str, int] | None = None
    processes: int | None = None
    check: bool = True


def _return_memory() -> None:
    """After the first scan: give the memory its temporary objects took back to the system.

    glibc keeps freed memory in its heap, so without this the broker's resident set stays at
    the scan's peak for the rest of its life.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Broker:
    """One project's broker (see the module docstring).

    Example:
        >>> broker = Broker(BrokerConfig("/path/to/project"))
        >>> broker.start(); broker.serve()  # doctest: +SKIP
        >>> broker.close()  # after request_stop(), from a signal handler
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        root = os.path.realpath(config.root)
        self.key = new_key()
        self.state = BrokerState(
            root=root,
            epoch=new_epoch(),
            heartbeat=heartbeat_interval(),
            codec=Codec(self.key, role="broker", root=root),
            project=Project(root),
            history=History(),
            clients=ClientTable(on_drop=self._client_gone),
            pending=PendingChanges(None, root=root),
        )
        self.handlers = RequestHandlers(self.state)
        self.sockets: BrokerSockets | None = None
        self._lock = BrokerLock(self.state.root)
        self._batches: queue.SimpleQueue[ChangeBatch] = queue.SimpleQueue()
        self._scan_events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._after_walk: list[tuple[bytes, Callable[[], Reply]]] = []  # waiting for the list
        self._next_cache_save = 0.0
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._stopping = False
        self._wrote_connection_file = False
        self._next_heartbeat = 0.0
        self._next_expiry = 0.0
        self._scan_edits_at: float | None = None  # when the published files' imports are found
        self._in_loop: InotifyWatcher | None = None  # a watcher this loop runs, if any
        self._watch_fd = -1
        self._watch_due: float | None = None  # when the watcher's step is due without an event
        self._loop_thread = 0  # the ident of the thread running serve()
        self._sync_requests: list[bytes] = []  # asked this turn
        self._waiting_syncs: list[bytes] = []  # checked, waiting for pending changes to go out

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Take the lock, bind, watch, write the connection file, and start the scan.

        Returns at once; the scan goes on in the background while :meth:`serve` answers.

        Raises:
            BrokerAlreadyRunning: a live broker serves this root (nothing else was done).
            ConnectionFileError: the runtime folder is unusable.
            BrokerError: no safe transport (the ipc path is too long, say).
            zmq.ZMQError: a socket could not be bound (a --tcp port in use, for example).
        """
        self._lock.acquire()
        sweep_runtime_dir()
        remove_stale_connection_file(self.state.root)
        self.state.project = Project(
            self.state.root,
            find_import_roots(self.state.root),
            ScanCache.load(cache_path(self.state.root)),
        )
        self.sockets = sockets = BrokerSockets.bind(self.state.root, self.config.tcp)
        self.state.pub_endpoint = sockets.pub_endpoint
        self.state.router_endpoint = sockets.router_endpoint
        self.state.curve = sockets.curve is not None
        watcher = find_default_watcher(
            [self.state.root], self._on_change, poll=self.config.poll, step_ms=WATCH_STEP_MS
        )
        self.state.watcher = watcher
        if isinstance(watcher, InotifyWatcher):
            # The loop reads inotify itself: a save reaches the publication without a hop
            # between threads (a wake-up of another thread costs 0.1-0.3 ms on a VM).
            self._watch_fd = watcher.start_in_caller()
            self._in_loop = watcher
        else:
            watcher.start()
        if not watcher.wait_ready(10.0):
            logger.warning("The %s watcher is not live after 10 s; continuing.", watcher.backend)
        self._write_connection_file()
        logger.info(
            "relmod broker %s serving %s (pid %d, epoch %s); PUB %s, ROUTER %s; scanning.",
            __version__,
            self.state.root,
            os.getpid(),
            self.state.epoch,
            sockets.pub_endpoint,
            sockets.router_endpoint,
        )
        self.state.scan = ProjectScan(
            self.state.root,
            self.state.project.roots,
            self.state.project.cache,
            self._on_scan,
            processes=self.config.processes,
            check=self.config.check,
        )
        self.state.scan.start()

    def _on_scan(self, event: str, payload: Any) -> None:
        """The scan's callback, on the scan thread: queue the event, wake the loop."""
        self._scan_events.put((event, payload))
        self._wake()

    def _collect_scan(self) -> None:
        while True:
            try:
                event, payload = self._scan_events.get_nowait()
            except queue.Empty:
                return
            self.state.project.receive(event, payload)
            if event == "records":
                fresh = self.state.project.take_fresh()
                if fresh:
                    self.state.pending.add(fresh, rescan=False)
            elif event == "walked":
                self._walk_done()
            elif event == "scanned":
                self._scanned()
            elif event == "done":
                self._walk_done()
                self._scan_done()
                self._scan_edits_at = time.monotonic()  # settle: the folder list, once

    def _walk_done(self) -> None:
        """The scan has listed the files: answer the requests that waited for the list."""
        self.state.walked = True
        waiting, self._after_walk = self._after_walk, []
        for identity, answer in waiting:
            try:
                reply = answer()
            except Exception:  # a bug of ours: count it like a failed handler
                self.state.request_errors += 1
                logger.exception("A request deferred until the file list failed.")
                continue
            self.reply(identity, *reply)

    def _scanned(self) -> None:
        assert self.state.scan is not None
        progress = self.state.scan.progress
        logger.info(
            "Scanned %d Python files under %s in %.2f s (%d unchanged since the last scan, "
            "%d worker processes): %d dependency edges.",
            progress.total,
            self.state.root,
            progress.scan_seconds or 0.0,
            progress.cached,
            progress.processes,
            self.state.project.graph.edge_count(),
        )

    def _scan_done(self) -> None:
        assert self.state.scan is not None
        progress = self.state.scan.progress
        if progress.state == "done" and progress.to_check:
            logger.info(
                "Compile-checked %d files in %.2f s: %d broken.",
                progress.checked,
                progress.check_seconds or 0.0,
                len(self.state.project.broken()),
            )
        if progress.state == "done":
            self._save_cache()
            _return_memory()

    def _save_cache(self) -> None:
        """Write the scan cache (pruned to the current files), then let go of it in memory."""
        self.state.project.cache.save(self.state.project.current_hashes())
        self.state.project.cache.release()
        self._next_cache_save = time.monotonic() + CACHE_SAVE_EVERY

    def _client_gone(self, name: str) -> None:
        """The client table dropped a client: forget the edges only it reported, and its runs."""
        self.state.fleet.drop(name)
        removed = self.state.project.runtime.drop(name)
        if removed:
            logger.debug("dropped %d runtime edges of client %s", removed, name)

    def _write_connection_file(self) -> None:
        assert self.sockets is not None and self.state.watcher is not None
        info = ConnectionInfo(
            version=CONNECTION_VERSION,
            root=self.state.root,
            pid=os.getpid(),
            host=socket.gethostname(),
            epoch=self.state.epoch,
            key=self.key.hex(),
            pub=self.sockets.pub_endpoint,
            router=self.sockets.router_endpoint,
            started=self.state.started,
            watcher=self.state.watcher.backend,
            curve_server_public=self.sockets.curve_public,
        )
        write_connection_file(connection_path(self.state.root), info)
        self._wrote_connection_file = True

    @property
    def wake_fd(self) -> int:
        """The write end of the loop's wake-up pipe, for ``signal.set_wakeup_fd``.

        A signal may be delivered to any thread (the watcher's, for one); Python runs the
        handler on the main thread only once that thread wakes up. Writing to this pipe, as
        the C-level handler does with ``set_wakeup_fd``, wakes the loop at once.
        """
        return self._wake_w

    def request_stop(self) -> None:
        """Ask the loop to end; safe to call from a signal handler or another thread."""
        self._stopping = True
        self._wake()

    def close(self) -> None:
        """Remove the connection file, say bye, stop watching, close everything, unlock.

        The connection file goes first, so a client that hears the bye and looks for the
        broker again does not find this one.
        """
        self._stopping = True
        held = self._lock.held
        if self._wrote_connection_file:
            self._remove_connection_file()
        if self.state.scan is not None:
            self.state.scan.stop()
            if self.state.scan.progress.state == "done" and self.state.project.cache.dirty:
                self._save_cache()
        if self.state.watcher is not None:
            self.state.watcher.stop()
        if self.sockets is not None:
            self.sockets.close(last=self.state.codec.encode("bye", {"epoch": self.state.epoch}))
            self.sockets = None
        self._lock.release()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if held:
            logger.info("relmod broker for %s stopped.", self.state.root)

    def _remove_connection_file(self) -> None:
        path = connection_path(self.state.root)
        try:
            if read_connection_file(path)["pid"] == os.getpid():
                path.unlink()
        except (ConnectionFileError, OSError) as err:
            logger.debug("left connection file %s alone: %s", path, err)
        self._wrote_connection_file = False

    # -- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the loop until :meth:`request_stop` (returns at once if never started)."""
        if self.sockets is None:
            return
        router = self.sockets.router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        watcher, watch_fd = self._in_loop, self._watch_fd
        watching = 0
        self._loop_thread = threading.get_ident()
        while not self._stopping:
            if watcher is not None:
                wait = watcher.due_in()
                self._watch_due = None if wait is None else time.monotonic() + wait
                want = 0 if watcher.paused else zmq.POLLIN  # backing off: not its events
                if want != watching:
                    poller.register(watch_fd, want)  # 0 unregisters
                    watching = want
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self._wake_r in events:
                self._drain_wake()
            if watcher is not None and (
                watch_fd in events
                or (self._watch_due is not None and time.monotonic() >= self._watch_due)
            ):
                watcher.step()  # its batches are queued for _collect_batches, just below
            self._collect_scan()
            self._collect_batches()
            if router in events:
                self._serve_requests(router)
            self._tick()

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        deadline = min(self._next_heartbeat, self._next_expiry)
        if self._scan_edits_at is not None:
            deadline = min(deadline, self._scan_edits_at)
        if self._watch_due is not None:
            deadline = min(deadline, self._watch_due)
        wait = self.state.pending.wait_seconds(now)
        seconds = deadline - now if wait is None else min(wait, deadline - now)
        return max(0, int(seconds * 1000 + 0.999))

    def _tick(self) -> None:
        now = time.monotonic()
        if self._scan_edits_at is not None and now >= self._scan_edits_at:
            self._scan_edits_at = None
            try:
                self.state.project.settle()
            except Exception:  # a bug of ours; the loop must keep serving
                self.state.batch_errors += 1
                logger.exception("Failed to find the imports of the files just published.")
        if self._sync_requests:
            self._check_for_sync()
        taken = self.state.pending.take(now, force=bool(self._waiting_syncs))
        if taken is not None:
            self._publish_changes(*taken)
        if self._waiting_syncs and not self.state.pending:
            waiting, self._waiting_syncs = self._waiting_syncs, []
            for identity in waiting:
                self.reply(identity, "synced", {"epoch": self.state.epoch, "seq": self.state.seq})
        for client, events, lost in self.state.fleet.take_outbox():
            body = {"epoch": self.state.epoch, "client": client, "events": events, "lost": lost}
            self.publish("activity", body)
        if now >= self._next_heartbeat:
            self.publish(
                "heartbeat", {"epoch": self.state.epoch, "seq": self.state.seq, "time": time.time()}
            )
            self._next_heartbeat = now + self.state.heartbeat
        if now >= self._next_expiry:
            for name, why in self.state.clients.expire(now):
                logger.info("dropped client %s: %s", name, why)
            self._next_expiry = now + EXPIRE_EVERY
            if (
                self.state.project.cache.dirty
                and self._next_cache_save
                and now >= self._next_cache_save
            ):
                self._save_cache()

    def _on_change(self, batch: ChangeBatch) -> None:
        """The watcher's callback: queue the batch, and wake the loop unless the loop itself
        runs the watcher (then it collects the batch in the same turn)."""
        self._batches.put(batch)
        if threading.get_ident() != self._loop_thread:
            self._wake()

    def _wake(self) -> None:
        # A full pipe means the loop is awake anyway; a closed one that we are shutting down.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _collect_batches(self) -> None:
        while True:
            try:
                batch = self._batches.get_nowait()
            except queue.Empty:
                return
            self.state.pending.add(set(batch.paths), rescan=batch.rescan)

    def _serve_requests(self, router: zmq.Socket[Any]) -> None:
        for _ in range(MAX_REQUESTS_PER_TURN):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                identity, message = self.state.codec.decode_routed(frames)
            except ProtocolError:
                continue  # counted in codec.dropped and logged at debug level
            self._act(identity, self.handlers.answer(identity, message))

    def _act(self, identity: bytes, outcome: Outcome) -> None:
        """Do what a handler's answer asks: reply now, later (once the file list or a sync is
        due), or not at all."""
        if outcome is NO_REPLY:
            return
        if isinstance(outcome, AfterWalk):
            if self.state.walked:
                self._act(identity, outcome.answer())
            else:
                self._after_walk.append((identity, outcome.answer))
        elif outcome is AFTER_SYNC:
            # "synced" once every save made before now is published (see _tick); the syncs of
            # one turn of the loop share one look at the files.
            self._sync_requests.append(identity)
        else:
            assert isinstance(outcome, tuple)
            self.reply(identity, *outcome)
            if outcome[0] == "welcome":
                # A joining client waits for its first publication before asking what changed;
                # an early heartbeat spares it most of a heartbeat interval.
                self._next_heartbeat = 0.0

    # -- sync ---------------------------------------------------------------------------------

    def _check_for_sync(self) -> None:
        """Fold saves the watcher has not reported yet into the pending changes.

        A file whose stat signature moved, or that was modified in the last seconds, is read
        again; the content hash decides, as always. The waiting syncs are answered once nothing
        is pending, at once unless git holds the changes back.
        """
        self._collect_batches()
        if not self.state.walked:
            return  # the scan is still listing the files: ask again next turn
        suspects = self.state.project.suspects()
        if suspects:
            self.state.pending.add(suspects, rescan=False)
        self._waiting_syncs += self._sync_requests
        self._sync_requests = []

    # -- publishing ---------------------------------------------------------------------------

    def _publish_changes(self, paths: set[str], rescan: bool) -> None:
        project = self.state.project
        try:
            update = project.apply(paths, rescan=rescan, scan_later=True)
        except Exception:  # a bug of ours; the loop must keep serving
            self.state.batch_errors += 1
            logger.exception("Failed to process a batch of %d paths; skipped it.", len(paths))
            return
        try:
            self._publish_update(update)
        finally:
            # The changed files' imports are found a moment after their change is out
            # (Project.settle): the clients it wakes have the two cores to themselves
            # meanwhile (apply() finds them first anyway, should the next batch come sooner).
            self._scan_edits_at = time.monotonic() + SCAN_EDITS_AFTER
        self._cache_code(update)

    def _cache_code(self, update: Update) -> None:
        """Put the code the edits' compile checks made in the code cache, where every client on
        this machine (same user, Python and ``RELMOD_CACHE_DIR``) finds it by content: each then
        reloads an edit by unmarshalling it instead of compiling it again, which for a 100 KB
        module is about 1 ms instead of 50-75. Right after the publication, not later: a busy
        worker reloads within a millisecond or two of its mark."""
        for compiled in update.compiled:
            compiled.store()  # in place of the version before's: one entry per file

    def _publish_update(self, update: Update) -> None:
        ids = self.state.project.ids
        for broken in update.broken:
            self.state.seq += 1
            self.publish(
                "broken", {"epoch": self.state.epoch, "seq": self.state.seq, **broken.to_wire()}
            )
            self.state.history.record_broken(self.state.seq, ids.id_of(broken.path))
        if not update.changed:
            return
        changed_ids = [ids.id_of(path) for path in update.changed]
        affected_ids = [ids.id_of(path) for path in update.affected]
        # Ids a client may not know travel with their path, in "changed" or in "names", in
        # the part that uses them.
        unnamed = set(ids.unnamed([*changed_ids, *affected_ids]))
        named_affected = [i for i in affected_ids if i in unnamed]
        other_affected = [i for i in affected_ids if i not in unnamed]
        # Split a huge update so that no message outgrows the payload limit; clients apply
        # each part in sequence, which marks the same modules stale as one message would. A
        # part names the ids it uses, so each part's paths stay few too.
        parts = max(
            1,
            -(-len(update.changed) // CHUNK_PATHS),
            -(-len(named_affected) // CHUNK_PATHS),
            -(-len(affected_ids) // CHUNK_IDS),
        )
        for index in range(parts):
            changed = update.changed[index::parts]
            changed_part = changed_ids[index::parts]
            named = named_affected[index::parts]
            affected = named + other_affected[index::parts]
            in_changed = set(changed_part)
            named = [i for i in named if i not in in_changed]
            hashes = [update.hashes[path] for path in changed]
            files = [list(entry) for entry in zip(changed_part, changed, hashes, strict=True)]
            packed = pack_ids(affected)
            self.state.seq += 1
            self.publish(
                "invalidate",
                {
                    "epoch": self.state.epoch,
                    "seq": self.state.seq,
                    "changed": files,
                    "affected": packed,
                    "names": [[i, ids.path_of(i)] for i in named],
                },
            )
            self.state.history.record_invalidation(
                self.state.seq, changed_part, packed, hashes, named=named
            )
        logger.info(
            "invalidation up to #%d: %d changed, %d affected (%d files read)",
            self.state.seq,
            len(update.changed),
            len(update.affected),
            update.checked,
        )

    def publish(self, kind: str, body: dict[str, Any]) -> None:
        """Sign and publish one message on the PUB socket (never blocks)."""
        if self.sockets is None:
            return
        try:
            self.sockets.pub.send_multipart(self.state.codec.encode(kind, body), zmq.NOBLOCK)
        except (ValueError, zmq.ZMQError):
            self.state.publish_errors += 1
            logger.exception("Could not publish a %r message.", kind)

    def reply(self, identity: bytes, kind: str, body: dict[str, Any]) -> None:
        """Sign and send one reply to the client behind ``identity`` (never blocks).

        A peer that does not read its replies has at most
        :data:`~relmod.server.sockets.REPLY_HWM` of them queued; beyond that, and for a peer
        that is gone, the reply is dropped and counted (``refused`` in status).
        """
        if self.sockets is None:
            return
        try:
            frames = self.state.codec.encode(kind, body)
        except ValueError as err:
            self.state.request_errors += 1
            logger.warning("Cannot send a %r reply: %s", kind, err)
            frames = self.state.codec.encode("error", {"message": str(err)[:4000], "request": kind})
        try:
            self.sockets.router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:
            self.state.reply_refused["queue_full"] += 1
            logger.debug("reply %r dropped: the peer's queue is full", kind)
        except zmq.ZMQError as err:  # EHOSTUNREACH: the peer left
            self.state.reply_refused["unroutable"] += 1
            logger.debug("reply %r not delivered: %s", kind, err)
