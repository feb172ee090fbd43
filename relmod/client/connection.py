"""A broker connection: one daemon thread owns every socket and only marks modules stale.

The thread subscribes to the broker's PUB socket and talks to its ROUTER through a DEALER:

1. ``hello`` -> ``welcome`` (the broker's epoch and sequence number);
2. wait for the first message on the SUB socket, so the subscription is live;
3. ``since(epoch, seq)`` -> ``changes``: what this process missed, or, when the broker is a
   new instance (a new epoch), its whole file id table with every file's hash; mismatching
   modules are marked stale;
4. then apply each invalidation in sequence. A duplicate (seq <= last) is dropped; a jump
   (seq > last + 1), a heartbeat ahead of us, or a new epoch triggers ``since`` again.

Invalidations name files by id (:mod:`relmod.client.fileids` keeps the table): the feed marks
the modules of the ids it has loaded, and a publication naming an id the table does not know,
or contradicting it, is dropped (counted under ``drop_reasons``) and the whole table is asked
for again.

When nothing arrives for :attr:`BrokerFeed.silence` seconds, the broker is presumed gone: the
feed starts an embedded watcher so this process never runs code older than the disk, re-reads
the connection file every half second, and resynchronises when a broker answers again.

One feed serves every broker, local or remote, ipc or TCP: :func:`broker_socket` makes every
connected socket (a client's feed and ``relmod status`` alike), with CURVE when the connection
file names a CURVE key (:mod:`relmod.curve` finds the client's certificate). The feed talks to
its process through :class:`FeedHost` (the ``Client`` implements it), and a variant changes its
steps through one plug point, :class:`FeedPlugin` (``relmod.client.remote`` plugs in module
sources served by the broker, for a process without the project on its disk).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import zmq

from relmod.client.embedded import EmbeddedFeed
from relmod.client.fileids import FileTable
from relmod.connfile import ConnectionInfo, read_connection_file, read_live_broker
from relmod.curve import client_key_for, secure_client_socket
from relmod.errors import BrokerError, ProtocolError, RelmodError
from relmod.machinery.events import Event
from relmod.machinery.registry import Registry, SourceProvider
from relmod.protocol import FEED_TOPIC, PAGE_BYTES, Codec, Message, configure_socket
from relmod.sources import Broken

log = logging.getLogger(__name__)


EDGES_PER_MESSAGE = 5000
"""Runtime edges per ``edges`` request, so that none outgrows the protocol's payload limit."""
SINCE_TIMEOUT = 30.0
"""Seconds a client waits for the answer to ``since`` and each page of ``hashes``: a broker
answers ``since`` once its first scan has listed the project's files (0.3 s for 80,000 files
here), and during that scan reads the files a page names that the scan has not reached."""
PAGE_PATIENCE = 3.0
"""Seconds past connect()'s timeout that a client keeps waiting after the last page of the
broker's file table arrived: a broker paging through a big table is answering."""
NEWS_DELAY = 0.05
"""Seconds between the first stale mark, reload or failure and the ``running`` report that
tells the broker: whatever happens meanwhile goes in the same report."""
NEWS_EVENTS_KEPT = 1000
"""Reloads and failures kept for the next report; more are counted as lost."""
NEWS_MESSAGE_CHARS = 2000
"""Longest error message a report carries."""


_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a whole message waits on ``sock``: asked of the socket's state, so that draining
    a queue costs no ``zmq.Again`` exception at its end (the feed's hot path, once a save)."""
    events = sock.getsockopt(_EVENTS)
    return isinstance(events, int) and bool(events & _POLLIN)


class _Lost(Exception):
    """The broker stopped answering or said goodbye."""


@dataclass
class _Command:
    kind: str  # "sync" | "stop"
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None


def _unchanged(path: str) -> str:
    return path


class PathMap:
    """Translates the broker's paths to this machine's and back (prefix replacement).

    Example:
        >>> pm = PathMap({'/srv/proj': '/home/me/proj'})
        >>> pm.to_local('/srv/proj/a.py'), pm.to_broker('/home/me/proj/a.py')
        ('/home/me/proj/a.py', '/srv/proj/a.py')
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self.mapping: dict[str, str] = dict(mapping or {})
        """``{broker_prefix: local_prefix}``, as given."""
        self._pairs = [(b.rstrip("/"), loc.rstrip("/")) for b, loc in self.mapping.items()]
        if not self._pairs:  # the usual case, on the feed's path for every file of a message
            self.to_local = self.to_broker = _unchanged  # type: ignore[method-assign]

    def to_local(self, path: str) -> str:
        return self._swap(path, 0, 1)

    def to_broker(self, path: str) -> str:
        return self._swap(path, 1, 0)

    def _swap(self, path: str, src: int, dst: int) -> str:
        for pair in self._pairs:
            prefix = pair[src]
            if path == prefix or path.startswith(prefix + "/"):
                return pair[dst] + path[len(prefix) :]
        return path


class FeedHost(Protocol):
    """What a feed needs from the process it serves (``relmod.client.session.Client``).

    The feed only ever marks: every door leads to the registry's ``invalidate``.
    """

    registry: Registry

    def files_changed(self, paths: Iterable[str]) -> set[str]:
        """Mark stale the modules whose file content differs from the version in use."""
        ...

    def verify_files(self, paths: Iterable[str]) -> set[str]:
        """Like ``files_changed``, for files whose stat signature moved (or is too young)."""
        ...

    def apply_invalidation(
        self, affected: Iterable[str], changed: Iterable[str] | None = None
    ) -> set[str]:
        """Mark stale what the broker said is affected (it compared hashes already); when
        given, ``changed`` are the files whose content changed (by default all of them),
        affected too whether or not ``affected`` repeats them."""
        ...

    def known_files(self) -> list[str]:
        """The files of the modules loaded."""
        ...

    def watched_folders(self) -> set[str]:
        """The folders of the modules loaded."""
        ...


Send = Callable[[str, dict[str, Any]], None]
"""Sends one request to the broker (the connection thread only)."""


class FeedPlugin(Protocol):
    """The one plug point of :class:`BrokerFeed`: what a variant adds to its steps.

    Every method runs on the connection thread except :meth:`attach` (in the constructor) and
    :meth:`status` / :meth:`forked` (user threads). ``relmod.client.remote.ServedSources`` is
    the one there is: module sources by content hash, for a process without the project on
    its disk.

    """

    @property
    def sources(self) -> SourceProvider | None:
        """What the registry reads instead of the disk, or None to read the disk.

        A plug-in with sources also means: no fallback watcher, no local file checks.
        """
        ...

    def attach(self, host: FeedHost, wake: Callable[[], None]) -> None:
        """The feed's host, and how to wake its thread (for requests made on user threads)."""
        ...

    def session_started(self) -> None:
        """A new session: requests in flight on the previous one are lost."""
        ...

    def hashes_arrived(
        self, hashes: Mapping[str, str | None], *, full: bool, root: str | None
    ) -> None:
        """Content hashes by broker path, before the modules they concern are marked stale.

        ``full``: every file of the project (a new broker instance), else a change.
        """
        ...

    def send_requests(self, send: Send) -> None:
        """Send what the plug-in has to ask (the feed was woken, or a turn of its loop)."""
        ...

    def take_reply(self, msg: Message) -> bool:
        """Handle a reply meant for the plug-in; False leaves it to the feed."""
        ...

    def status(self) -> dict[str, Any]:
        """Fields added to the feed's ``status()``."""
        ...

    def forked(self) -> FeedPlugin:
        """A plug-in for a forked child's new feed, keeping what can be kept."""
        ...


# -- the sequence rules ------------------------------------------------------------------------

Verdict = Literal["apply", "drop", "resync", "bye"]


def sequence_verdict(kind: str, body: Mapping[str, Any], epoch: str | None, seq: int) -> Verdict:
    """What a client at ``(epoch, seq)`` does with a publication (the clone pattern, with gaps).

    * ``bye``: the broker shut down;
    * a new epoch: ``resync`` (a new broker instance; everything is compared again);
    * a heartbeat: ``resync`` when it is ahead of us (the last update before a quiet period
      was lost), else ``drop``;
    * a duplicate (seq <= ours): ``drop``; a gap (seq > ours + 1): ``resync``;
    * the next one: ``apply``.

    Example:
        >>> sequence_verdict("invalidate", {"epoch": "e", "seq": 5}, "e", 4)
        'apply'
        >>> sequence_verdict("invalidate", {"epoch": "e", "seq": 7}, "e", 4)
        'resync'
    """
    if kind == "bye":
        return "bye"
    if body.get("epoch") != epoch:
        return "resync"
    number = body["seq"]
    if kind == "heartbeat":
        return "resync" if number > seq else "drop"
    if number <= seq:
        return "drop"
    if number > seq + 1:
        return "resync"
    return "apply"


# -- sockets -------------------------------------------------------------------------------------

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def broker_socket(
    context: zmq.Context[Any],
    kind: int,
    info: ConnectionInfo,
    key_file: str | None,
    *,
    handshake_timeout: float = 0.0,
    everything: bool = False,
) -> zmq.Socket[Any]:
    """A socket connected to the broker of ``info``: every client socket is made here.

    A SUB socket connects to the PUB endpoint and subscribes to what a feed reads
    (:data:`~relmod.protocol.FEED_TOPIC`), or with ``everything`` also to the fleet's
    ``activity`` (``relmod status --follow``); a DEALER connects to the ROUTER. With a CURVE
    broker the socket is a CURVE client presenting ``key_file``, and with ``handshake_timeout``
    the call waits that long for the handshake's verdict, so a refused key is a clear error
    instead of a silent broker.

    Raises:
        BrokerError: the broker uses CURVE and no usable key was given, or it refused the key.
    """
    sock = context.socket(kind)
    try:
        configure_socket(sock)
        secure_client_socket(sock, info, key_file)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"" if everything else FEED_TOPIC)
        monitor = None
        if handshake_timeout > 0 and info["curve_server_public"] is not None:
            monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(info["pub"] if kind == zmq.SUB else info["router"])
        if monitor is not None:
            try:
                _await_curve_handshake(monitor, info, key_file, handshake_timeout)
            finally:
                sock.disable_monitor()  # the verdict is in; later events are not read
                monitor.close(0)
    except BaseException:
        sock.close(0)
        raise
    return sock  # type: ignore[no-any-return]


def _await_curve_handshake(
    monitor: zmq.Socket[Any], info: ConnectionInfo, key_file: str | None, timeout: float
) -> None:
    """Wait for the CURVE handshake and say clearly when it failed.

    A broker that refuses a client sends it nothing at all; only the socket's events tell
    "your key is not listed" from "the broker is slow".
    """
    from zmq.utils.monitor import recv_monitor_message

    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not monitor.poll(int(remaining * 1000) + 1):
            return  # no verdict yet: the request that follows times out with its own message
        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise BrokerError(
                f"the broker of {info['root']} refused this client's CURVE key ({key_file}): "
                "its public half is not listed in the broker's clients folder"
            )
        raise BrokerError(
            f"the CURVE handshake with the broker of {info['root']} failed (zmq event {event}); "
            "is this copy of the connection file current?"
        )


class BrokerFeed:
    """The client side of a broker connection (see the module docstring).

    Args:
        host: the process's client (:class:`FeedHost`).
        connection_file: the broker's connection file.
        path_map: ``{broker_prefix: local_prefix}`` for a process that sees the project under
            other paths.
        client_key: the certificate to present to a CURVE broker; default
            ``$RELMOD_CLIENT_KEY``, or (reading the disk) the pair the broker left for its own
            machine's clients.
        plugin: the variant's steps (:class:`FeedPlugin`), or None.
    """

    silence = 3.0  # seconds without a message before the broker counts as gone
    report_every = 20.0  # seconds between keep-alive reports
    report_after = 0.5  # a change is reported at most this often: never a report per save
    report_delay = 0.1  # and this long after it, off the moment every client wakes at once

    def __init__(
        self,
        host: FeedHost,
        connection_file: Path,
        *,
        path_map: Mapping[str, str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        plugin: FeedPlugin | None = None,
    ) -> None:
        self.host = host
        self.path = Path(connection_file)
        self.path_map = PathMap(path_map)
        self.client_key: str | None = os.fspath(client_key) if client_key is not None else None
        self.plugin = plugin
        self.epoch: str | None = None
        self.seq = 0
        self.connected = threading.Event()
        self._paged_at = 0.0  # when the last page of the broker's file table arrived
        self.refused = threading.Event()  # CURVE said no: retrying will not help by itself
        self.broken: dict[str, tuple[int | None, str]] = {}
        self.dropped = 0
        self.drop_reasons: Counter[str] = Counter()  # valid messages the feed could not apply
        self.resyncs = 0
        self.invalidations = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.info: ConnectionInfo | None = None
        self._commands: queue.Queue[_Command] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fallback: EmbeddedFeed | None = None
        self._sync_requests: deque[_Command] = deque()  # sent, awaiting "synced"
        self._waiting_syncs: list[tuple[int, _Command]] = []  # synced at seq, awaiting that seq
        self._pid = os.getpid()
        mapped = bool(self.path_map.mapping)
        self.files = FileTable(
            self.path_map.to_local if mapped else None, self.path_map.to_broker if mapped else None
        )
        self._loads: deque[str] = deque()  # modules loaded since the table last heard of it
        self._need_table = False  # the next since asks for the whole table
        self._edges_sent = 0
        self._edges_known: set[tuple[str, str]] = set()  # sent to the broker in this session
        self._heard_at = 0.0  # monotonic time of the last message that passed every check
        self._replaced_checked = 0.0
        self._outside: EmbeddedFeed | None = None  # watches loaded folders outside the root
        self._outside_lock = threading.Lock()
        # What to tell the broker in the next "running" report (listeners fill it, any thread).
        self._news_lock = threading.Lock()
        self._news_dirty: set[str] = set()  # files whose state may have changed
        self._news_events: deque[Event] = deque()
        self._news_lost = 0
        self._news_due: float | None = None  # monotonic time the report is due
        self._news_sent: dict[str, tuple[Any, ...]] = {}  # broker path -> state last reported
        self._news_told: set[str] = set()  # local paths whose state the broker has heard
        self.name = "broker" if self.reads_disk else "remote"
        if plugin is not None:
            plugin.attach(host, self._wake)

    @property
    def reads_disk(self) -> bool:
        """Whether this process reads the project from its own disk (else from the broker)."""
        return self.plugin is None or self.plugin.sources is None

    # -- Feed interface (user threads) ---------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self.host.registry.add_load_listener(self._on_load)
            self.host.registry.listeners.add(self._on_event, stale=False)
            self.host.registry.add_invalidate_listener(self._on_marked)
            self._thread = threading.Thread(target=self._run, name="relmod-broker", daemon=True)
            self._thread.start()

    def follow(self) -> None:
        for feed in (self._fallback, self._outside):
            if feed is not None:
                feed.follow()

    def wait_connected(self, timeout: float) -> bool:
        """Wait for the first session; False after ``timeout``, or at once when refused.

        A broker still sending its file table answers: the wait goes on while its pages keep
        coming (a big project during the broker's first scan: 80,000 files take 8-14 s here).
        """
        deadline = time.monotonic() + timeout
        while not self.connected.wait(min(0.02, max(0.0, deadline - time.monotonic()))):
            now = time.monotonic()
            if self.refused.is_set():
                return False
            if now >= deadline and now - self._paged_at > PAGE_PATIENCE:
                return False
        return True

    def sync(self, timeout: float) -> None:
        """Return once every change saved before the call is applied to our stale marks.

        Without a broker, a process reading its disk checks its files itself; one whose
        sources come from the broker has nothing newer within reach and returns at once.
        """
        if self.connected.is_set():
            command = self._send(_Command("sync"))
            if command.done.wait(timeout) and command.result is True:
                if self.reads_disk:
                    self.host.verify_files(self._outside_files())  # what the broker does not serve
                return
            log.warning(
                "the broker did not confirm sync within %.1fs%s",
                timeout,
                "; checking loaded files directly" if self.reads_disk else "",
            )
        if self.reads_disk:
            # No broker to ask: check the files themselves (what the embedded watcher does).
            self.host.verify_files(self.host.known_files())
        else:
            log.debug("sync: the broker is not connected; keeping the code in use")

    def stop(self) -> None:
        """Say goodbye, close the sockets and join the thread (never hangs)."""
        self._stop.set()
        if os.getpid() != self._pid:
            return  # a forked child never touches its parent's sockets
        self.host.registry.remove_load_listener(self._on_load)
        self.host.registry.listeners.remove(self._on_event)
        self.host.registry.remove_invalidate_listener(self._on_marked)
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        if self._fallback is not None:
            self._fallback.stop()
            self._fallback = None
        with self._outside_lock:
            if self._outside is not None:
                self._outside.stop()
                self._outside = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    close = stop

    def _is_outside(self, path: str, *, linked: bool = True) -> bool:
        """Whether the broker never speaks of ``path``: outside its root by name, or (a name
        through a symbolic link, unless ``linked`` is False) by its real path."""
        info = self.info
        if info is None:
            return False
        root = self.path_map.to_local(info["root"])
        if not _inside(path, root):
            return True
        return linked and not _inside(os.path.realpath(path), os.path.realpath(root))

    def _outside_files(self) -> list[str]:
        linked = set(self.host.registry.linked_files())  # usually none: realpath only for these
        return [f for f in self.host.known_files() if self._is_outside(f, linked=f in linked)]

    def _on_load(self, path: str) -> None:
        """A module loaded (any thread): the feed's thread notes its ids before it applies the
        next invalidation; the first one outside the broker's root starts the local watch."""
        self._loads.append(path)
        if os.getpid() == self._pid and self._outside is None and self._is_outside(path):
            self._follow_outside()

    def _follow_outside(self) -> None:
        """Watch, in this process, the folders of loaded modules that the broker does not serve.

        The broker speaks only of files inside its root. A module loaded from elsewhere (through
        a symbolic link that leads out of the project, or by an absolute path) is watched here,
        as it would be without a broker, and :meth:`sync` checks its file directly.
        """
        if self.info is None or not self.reads_disk:
            return  # modules read through the broker (a remote client) have no local folders
        with self._outside_lock:
            if self._stop.is_set():
                return
            if self._outside is not None:
                self._outside.follow()
                return
            if not any(self._is_outside(f) for f in self.host.watched_folders()):
                return
            outside = EmbeddedFeed(
                lambda: {f for f in self.host.watched_folders() if self._is_outside(f)},
                self.host.files_changed,
                self._outside_files,
                verify_files=self.host.verify_files,
            )
            outside.start()
            self._outside = outside
            log.info("watching loaded folders outside the broker's root in this process")

    def forked(self) -> BrokerFeed:
        """A fresh feed for a forked child: same broker, new sockets, new thread."""
        plugin = self.plugin.forked() if self.plugin is not None else None
        feed = type(self)(
            self.host,
            self.path,
            path_map=self.path_map.mapping,
            client_key=self.client_key,
            plugin=plugin,
        )
        if plugin is not None and plugin.sources is not None:
            self.host.registry.sources = plugin.sources
        return feed

    def status(self) -> dict[str, Any]:
        """What this process knows of its broker connection.

        Example:
            >>> relmod.connect().status()['connected']  # doctest: +SKIP
            True
        """
        state = {
            "connected": self.connected.is_set(),
            "connection_file": str(self.path),
            "broker_pid": self.info["pid"] if self.info else None,
            "epoch": self.epoch,
            "seq": self.seq,
            "invalidations": self.invalidations,
            "resyncs": self.resyncs,
            "reconnects": self.reconnects,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons),
            "stale": self.host.registry.stale_count(),
            "broken": {p: {"lineno": ln, "message": msg} for p, (ln, msg) in self.broken.items()},
            "fallback": self._fallback is not None,
            "last_error": self.last_error,
        }
        if self.plugin is not None:
            state.update(self.plugin.status())
        return state

    def __repr__(self) -> str:
        state = "connected" if self.connected.is_set() else "not connected"
        return f"<relmod connection to {self.path} ({state}, seq {self.seq})>"

    def _send(self, command: _Command) -> _Command:
        self._commands.put(command)
        self._wake()
        return command

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    # -- the connection thread ------------------------------------------------------------

    def _run(self) -> None:
        announced_loss = False
        while not self._stop.is_set():
            try:
                self.info = info = read_live_broker(self.path)
                self._session(info)
            except _Lost as err:
                self._lose(f"{err}")
                announced_loss = False
            except (BrokerError, RelmodError, OSError, zmq.ZMQError) as err:
                if not announced_loss:
                    self._lose(f"{err}")
                    announced_loss = True
            except Exception:  # never let the feed thread die: log and retry
                log.exception("relmod broker connection failed; retrying")
                self._lose("internal error")
            if self._stop.wait(0.5):
                break
        self._finish_syncs(False)

    def _lose(self, why: str) -> None:
        self._finish_syncs(False)
        was_connected = self.connected.is_set()
        if was_connected:
            self.reconnects += 1
        self.connected.clear()
        self.last_error = why
        if not self.reads_disk:
            # No project file lives on this disk to watch: keep the code in use meanwhile.
            if was_connected:
                log.warning(
                    "relmod broker unavailable (%s); keeping the code in use until it answers", why
                )
            return
        if self._fallback is None and not self._stop.is_set():
            log.warning(
                "relmod broker unavailable (%s); watching loaded files in this process until it "
                "returns",
                why,
            )
            fallback = EmbeddedFeed(
                self.host.watched_folders,
                self.host.files_changed,
                self.host.known_files,
                verify_files=self.host.verify_files,
            )
            fallback.start()
            self._fallback = fallback
            # Edits made while we were not listening: compare every file with what ran.
            self.host.files_changed(self.host.known_files())

    def _session(self, info: ConnectionInfo) -> None:
        codec = Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        key_file = client_key_for(info, self.client_key, local=self.reads_disk)
        ctx: zmq.Context[Any] = zmq.Context()
        sub = dealer = None
        if self.plugin is not None:
            self.plugin.session_started()
        try:
            try:
                sub = broker_socket(ctx, zmq.SUB, info, key_file)
                dealer = broker_socket(
                    ctx, zmq.DEALER, info, key_file, handshake_timeout=self.silence
                )
            except BrokerError as err:
                self.last_error = str(err)  # before refused: a waiting connect() reads it then
                self.refused.set()
                raise
            self.refused.clear()
            self._handshake(codec, sub, dealer, info)
            self._loop(codec, sub, dealer)
        finally:
            self._end_session(codec, ctx, sub, dealer)

    def _end_session(
        self,
        codec: Codec,
        ctx: zmq.Context[Any],
        sub: zmq.Socket[Any] | None,
        dealer: zmq.Socket[Any] | None,
    ) -> None:
        """Say goodbye when stopping, then close the sockets (never in a forked child)."""
        if os.getpid() == self._pid:
            try:
                if dealer is not None and self._stop.is_set() and self.connected.is_set():
                    dealer.send_multipart(
                        codec.encode("goodbye", {"client": self._client_id()}), zmq.NOBLOCK
                    )
            except zmq.ZMQError:
                pass
            for sock in (sub, dealer):
                if sock is not None:
                    sock.close(0)
            ctx.term()
        self.connected.clear()

    def _client_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def _request(
        self,
        codec: Codec,
        dealer: zmq.Socket[Any],
        kind: str,
        body: dict[str, Any],
        expect: str,
        timeout: float = 3.0,
    ) -> Message:
        """Send a request and wait for its reply; other replies met meanwhile are handled."""
        dealer.send_multipart(codec.encode(kind, body))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dealer.poll(int(remaining * 1000)):
                raise _Lost(f"the broker did not answer {kind!r} within {timeout:.0f}s")
            try:
                msg = codec.decode(dealer.recv_multipart())
            except ProtocolError as err:
                self.dropped += 1
                log.debug("dropped a reply: %s", err)
                continue
            self._heard_at = time.monotonic()
            if msg.kind == expect:
                return msg
            if msg.kind == "error" and msg.body["request"] == kind:
                raise _Lost(f"the broker refused {kind!r}: {msg.body['message']}")
            self._on_reply(msg)

    def _handshake(
        self, codec: Codec, sub: zmq.Socket[Any], dealer: zmq.Socket[Any], info: ConnectionInfo
    ) -> None:
        self._request(
            codec,
            dealer,
            "hello",
            {
                "client": self._client_id(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "argv": " ".join(sys.argv)[:4000],
            },
            expect="welcome",
        )
        # The subscription is live once anything arrives on it (a heartbeat within a second).
        if not sub.poll(int(self.silence * 1000)):
            raise _Lost("no heartbeat from the broker")
        while sub.poll(0):
            self._on_sub(codec, sub, apply=False)
        self._send_paths(codec, dealer, info)
        self._edges_sent = -1  # a new session: the broker has none of our edges
        self._edges_known.clear()
        self._news_restart()
        self._resync(codec, dealer)
        self.connected.set()
        self.last_error = None
        if self._fallback is not None:
            self._fallback.stop()
            self._fallback = None
        self._follow_outside()
        log.info("connected to the relmod broker of %s (pid %s)", info["root"], info["pid"])

    def _resync(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        epoch = "" if self._need_table else self.epoch or ""  # "": the whole table, please
        # A broker answers once its scan has listed the project's files: a fraction of a second,
        # longer on a slow disk; connect(timeout=...) bounds what the caller waits.
        reply = self._request(
            codec,
            dealer,
            "since",
            {"epoch": epoch, "seq": self.seq},
            expect="changes",
            timeout=SINCE_TIMEOUT,
        )
        body = reply.body
        if body["full"]:
            # Every id with its path and hash comes in pages; revalidate once all are here.
            files, names = list(body["files"]), list(body["names"])
            after = body["next"]
            while after is not None:
                page = self._request(
                    codec,
                    dealer,
                    "hashes",
                    {"after": after},
                    expect="hashes",
                    timeout=SINCE_TIMEOUT,
                )
                self._paged_at = time.monotonic()
                files += page.body["files"]
                names += page.body["names"]
                after = page.body["next"]
            self._new_table(files, names, root=codec.root)
        elif not self._apply_changes(body["files"], body["affected"], body["names"], reply):
            self._resync(codec, dealer)  # asks for the whole table (_need_table is set)
            return
        self._need_table = False
        self.resyncs += 1
        broken = {
            self.path_map.to_local(b["path"]): (b["lineno"], b["message"]) for b in body["broken"]
        }
        for local, (lineno, message) in broken.items():
            if self.broken.get(local) != (lineno, message) and local in self.host.registry:
                log.warning("%s", Broken(local, lineno, message).describe())
        self.broken = broken
        self.epoch, self.seq = body["epoch"], body["seq"]
        self._check_syncs()

    def _new_table(self, files: list[Any], names: list[Any], *, root: str | None) -> None:
        """A full answer: the broker's whole id table, and every file's hash to compare with."""
        hashes = {path: digest for _, path, digest in files}
        if self.plugin is not None:
            # Before anything is marked stale: a reload must find the new hashes. A full
            # answer arrives here whole (every page), so the plug-in sees every file.
            self.plugin.hashes_arrived(hashes, full=True, root=root)
        problem = self.files.replace(
            [(i, path) for i, path, _ in files] + [(i, path) for i, path in names]
        )
        if problem is not None:
            self.dropped += 1
            self.drop_reasons["file ids"] += 1
            raise _Lost(f"the broker's file table contradicts itself ({problem})")
        self._loads.clear()
        registry = self.host.registry
        local_root = self.path_map.to_local(root) if root is not None else None
        self.files.loaded(
            (name for rec in registry.records() for name in registry.invalidation_names(rec.key)),
            root=local_root,
        )
        self._revalidate(hashes)

    def _send_paths(self, codec: Codec, dealer: zmq.Socket[Any], info: ConnectionInfo) -> None:
        """Tell the broker which folders of the project are on our sys.path (import roots)."""
        root = info["root"]
        paths = []
        for entry in sys.path:
            if not entry or not os.path.isabs(entry):
                continue
            path = self.path_map.to_broker(os.path.normpath(entry))
            if _inside(path, root) and path != root:
                paths.append(path[:4000])
        if paths:
            dealer.send_multipart(codec.encode("paths", {"paths": paths[:1000]}))

    def _revalidate(self, hashes: dict[str, str | None]) -> None:
        """A new broker instance: mark whatever differs from what this process ran."""
        ours = self.host.registry.files()
        mismatched = []
        for broker_path, digest in hashes.items():
            local = self.path_map.to_local(broker_path)
            if local in ours and ours[local] != digest:
                mismatched.append(local)
        if mismatched:
            self.host.apply_invalidation(mismatched)

    def _apply_changes(
        self, changed: list[Any], affected: bytes, names: list[Any], msg: Message
    ) -> bool:
        """Apply an invalidation (or a ``since`` delta): learn the ids it names, mark the
        modules of this process among its ids. False, with the message dropped (counted and
        logged), when it names an id the table does not know or contradicts it."""
        if self._loads:
            self._take_loads()
        changed_paths, reached, problem = self.files.apply(changed, affected, names)
        if problem is not None:
            self.dropped += 1
            self.drop_reasons["file ids"] += 1
            self._need_table = True
            log.warning(
                "Dropped the broker's %r #%s: %s. Asking the broker for its whole file table "
                "again; modules are marked stale once it arrives.",
                msg.kind,
                msg.body.get("seq"),
                problem,
            )
            return False
        if self.plugin is not None:  # its hashes first: a reload must find them
            self.plugin.hashes_arrived(
                {entry[1]: entry[2] for entry in changed}, full=False, root=None
            )
        if changed_paths or reached:
            if msg.kind == "invalidate":  # the changed files are affected too, said once
                self.host.apply_invalidation(reached, changed_paths)
            else:  # a delta: any file it names may have changed
                self.host.apply_invalidation(changed_paths + reached)
            self.invalidations += 1
        if self.broken:
            to_local = self.path_map.to_local
            for entry in changed:
                self.broken.pop(to_local(entry[1]), None)
        return True

    def _take_loads(self) -> None:
        """Note the modules loaded since the last look in the id table's watch list."""
        loads = self._loads
        if not loads:
            return
        registry = self.host.registry
        keys = []
        while loads:
            keys.append(loads.popleft())
        info = self.info
        root = self.path_map.to_local(info["root"]) if info is not None else None
        self.files.loaded((n for key in keys for n in registry.invalidation_names(key)), root=root)

    def _loop(self, codec: Codec, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> None:
        # zmq_poll itself, not a Poller: the loop wakes once per save in every client, and each
        # Python call on that way costs a few microseconds after a quiet second (see _on_sub).
        items: list[tuple[Any, int]] = [(sub, _POLLIN), (dealer, _POLLIN), (self._wake_r, _POLLIN)]
        # Only a message that passed every check counts as hearing from the broker: a broker
        # restarted on the same ipc paths keeps our sockets busy with messages signed with its
        # new key, which we drop, and must not keep this session alive.
        self._heard_at = time.monotonic()
        last_report = 0.0
        reported: tuple[Any, ...] = ()
        counted: tuple[int, int, int] = (-1, -1, -1)  # (seq, generation, reloads) last counted
        state: tuple[Any, ...] = ()
        dirty = False  # something moved since the last report
        dirty_at = 0.0
        applied_at = 0.0  # when a publication was applied first since the chores (0: none)
        chores_at = 0.0  # when the bookkeeping below is due at the latest
        if self._stop.is_set():
            return
        while True:  # until stop(), which sets its flag and then wakes us (looked at below)
            wait = max(0.0, chores_at - time.monotonic())
            events = dict(zmq.zmq_poll(items, int(wait * 1000 + 0.999)))
            applied = False
            if sub in events:
                seq = self.seq
                if self._on_sub(codec, sub):
                    self._resync(codec, dealer)
                if self.seq != seq:
                    # The report of what moved goes report_delay after it, with the rest of
                    # the bookkeeping: none of it runs on the way from a save to a stale mark.
                    applied = True
                    applied_at = applied_at or time.monotonic()
                    chores_at = min(chores_at, applied_at + self.report_delay)
            if dealer in events:
                self._drain_replies(codec, dealer)
            if self._wake_r in events:
                self._drain_commands(codec, dealer)  # reads the pipe, then the flag is looked at
                if self._stop.is_set():
                    return
            now = time.monotonic()
            if applied and now < chores_at:
                continue  # any other wake (a heartbeat, a reply, a command) does the chores
            if now - self._heard_at > self.silence:
                raise _Lost(f"nothing heard from the broker for {self.silence:.0f}s")
            if self._loads:
                self._take_loads()  # here, not on the next save's way to its stale marks
            registry = self.host.registry
            marks = (self.seq, registry.generation, registry.reloads + registry.errors_logged)
            if marks != counted:
                if not dirty:
                    dirty_at = applied_at or now
                counted, dirty = marks, True
            applied_at = 0.0
            keep_alive = now - last_report > self.report_every
            ready = now - last_report >= self.report_after and now - dirty_at >= self.report_delay
            if (dirty and ready) or keep_alive:
                # Only now: a storm of saves costs one report per report_after, none on the
                # path from an invalidation to the stale mark (the registry keeps the counts).
                if dirty:
                    state = (self.seq, registry.stale_count(), registry.last_error())
                    dirty = False
                if state != reported or keep_alive:
                    self._report(codec, dealer, state)
                    reported, last_report = state, now
            due = self._news_due
            if due is not None and now >= due:
                self._send_news(codec, dealer)
            self._send_edges(codec, dealer)
            chores_at = now + self.silence / 3
            due = self._news_due
            if due is not None:
                chores_at = min(chores_at, due)
            if dirty:
                chores_at = min(
                    chores_at, max(last_report + self.report_after, dirty_at + self.report_delay)
                )

    def _on_sub(self, codec: Codec, sub: zmq.Socket[Any], *, apply: bool = True) -> bool:
        """Handle the one publication the poll said waits; True when a resync is needed.

        One message per wake, so a lone save asks the socket nothing more (a queue costs one
        poll per message instead). This is every client's hot path, once per save, and mostly
        after a quiet second with cold caches, where each Python call on it costs a few
        microseconds: what it calls is kept few. A message of several frames comes apart into
        frames, each dropped by the codec on its own.
        """
        try:
            frame = sub.recv(_NOBLOCK)
        except zmq.Again:  # a subscription's queue emptied by a reconnection meanwhile
            return False
        try:
            msg = codec.decode((frame,))
        except ProtocolError as err:
            self.dropped += 1
            log.debug("dropped a publication: %s", err)
            if err.reason == "forged":
                self._check_replaced()
            return False
        self._heard_at = time.monotonic()
        # (Unapplied during the handshake: the resync that follows covers these.)
        return apply and self._on_publication(msg)

    def _on_publication(self, msg: Message) -> bool:
        """Apply one publication by the sequence rules; True when a resync is needed."""
        body = msg.body
        if msg.kind == "invalidate" and body["seq"] == self.seq + 1 and body["epoch"] == self.epoch:
            verdict: Verdict = "apply"  # the usual case, decided without a call
        else:
            verdict = sequence_verdict(msg.kind, body, self.epoch, self.seq)
        if verdict == "bye":
            raise _Lost("the broker shut down")
        if verdict != "apply":
            return verdict == "resync"
        if msg.kind == "invalidate":
            if not self._apply_changes(body["changed"], body["affected"], body["names"], msg):
                return True  # dropped: not applied, so the seq stays and since covers it
        elif msg.kind == "broken":
            local = self.path_map.to_local(body["path"])
            self.broken[local] = (body["lineno"], body["message"])
            if local in self.host.registry:
                log.warning("%s", Broken(local, body["lineno"], body["message"]).describe())
        self.seq = body["seq"]
        if self._waiting_syncs:
            self._check_syncs()
        return False

    def _drain_replies(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        while _readable(dealer):
            frames = dealer.recv_multipart(_NOBLOCK)
            try:
                msg = codec.decode(frames)
            except ProtocolError:
                self.dropped += 1
                continue
            self._heard_at = time.monotonic()
            self._on_reply(msg)

    def _check_replaced(self) -> None:
        """After a forged publication: if the connection file names a new broker, reconnect.

        A broker killed and restarted within :attr:`silence` seconds binds the same ipc paths,
        so our sockets reconnect to it by themselves and everything it sends fails our (old)
        key. Look at the file at most twice a second.
        """
        now = time.monotonic()
        if now - self._replaced_checked < 0.5 or self.info is None:
            return
        self._replaced_checked = now
        try:
            info = read_connection_file(self.path)
        except (RelmodError, OSError):
            return  # no usable file: the silence rule decides
        if (info["epoch"], info["key"]) != (self.info["epoch"], self.info["key"]):
            raise _Lost(f"the broker was replaced by pid {info['pid']} (a new connection file)")

    def _on_reply(self, msg: Message) -> None:
        """Replies nobody waits for synchronously: the plug-in's, sync's answer, refusals."""
        if self.plugin is not None and self.plugin.take_reply(msg):
            return
        if msg.kind == "error":
            body = msg.body
            log.warning("the relmod broker refused %r: %s", body["request"], body["message"])
            if msg.body["request"] == "sync" and self._sync_requests:
                command = self._sync_requests.popleft()
                command.result = False  # the caller checks files directly
                command.done.set()
            return
        if msg.kind == "synced" and self._sync_requests:
            command = self._sync_requests.popleft()
            if msg.body["epoch"] != self.epoch:
                command.done.set()  # result stays None: the caller checks files directly
                raise _Lost("the broker restarted during sync")
            self._waiting_syncs.append((msg.body["seq"], command))
            self._check_syncs()

    def _drain_commands(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command.kind == "sync":
                dealer.send_multipart(codec.encode("sync", {}))
                self._sync_requests.append(command)
        if self.plugin is not None:

            def send(kind: str, body: dict[str, Any]) -> None:
                dealer.send_multipart(codec.encode(kind, body))

            self.plugin.send_requests(send)

    def _check_syncs(self) -> None:
        if not self._waiting_syncs:
            return
        for entry in list(self._waiting_syncs):
            target, command = entry
            if target <= self.seq:
                self._waiting_syncs.remove(entry)
                command.result = True
                command.done.set()

    def _finish_syncs(self, ok: bool) -> None:
        pending = [c for _, c in self._waiting_syncs] + list(self._sync_requests)
        for command in pending:
            command.result = ok
            command.done.set()
        self._waiting_syncs.clear()
        self._sync_requests.clear()

    def _report(self, codec: Codec, dealer: zmq.Socket[Any], state: tuple[Any, ...]) -> None:
        seq, stale, error = state
        registry = self.host.registry
        body = {
            "client": self._client_id(),
            "seq": seq,
            "stale": stale,
            "error": error[:16000] if error else None,
            "patched": registry.patched,  # held objects reloads updated in place / left alone
            "unpatched": registry.unpatchable,
        }
        dealer.send_multipart(codec.encode("report", body))

    # -- what this process runs, for the broker's per-file view ---------------------------

    def _on_event(self, event: Event) -> None:
        """A module reloaded or failed (any thread): note it for the next report.

        Cheap on purpose: a set, a deque and, for the first news since the last report, one
        byte on the wake pipe; the feed thread sends the report :data:`NEWS_DELAY` later.
        """
        if os.getpid() != self._pid:
            return  # a forked child's feed has a listener of its own
        self._note_news((event.path,), event)

    def _on_marked(self, keys: set[str]) -> None:
        """Modules were marked stale (any thread, mostly this feed's): the broker hears which
        version runs here of each file it has not heard of yet (an older one than the newest),
        and nothing for the others, whose state a mark does not change; so a save does not wake
        every client again a moment later to report nothing new."""
        untold = keys - self._news_told
        if not untold or os.getpid() != self._pid:
            return
        self._note_news(untold)

    def _note_news(self, paths: Iterable[str], event: Event | None = None) -> None:
        """Files whose state the next report says (and an event it carries), due
        :data:`NEWS_DELAY` after the first news since the last one; any thread."""
        with self._news_lock:
            self._news_dirty.update(paths)
            if event is not None:
                if len(self._news_events) < NEWS_EVENTS_KEPT:
                    self._news_events.append(event)
                else:
                    self._news_lost += 1
            first = self._news_due is None
            if first:
                self._news_due = time.monotonic() + NEWS_DELAY
        if first and threading.current_thread() is not self._thread:
            self._wake()

    def _news_restart(self) -> None:
        """A new session: the broker knows nothing of ours, so report every state again."""
        with self._news_lock:
            self._news_dirty.update(self._news_sent_local())
            self._news_sent.clear()
            self._news_told.clear()
            if self._news_dirty and self._news_due is None:
                self._news_due = time.monotonic() + NEWS_DELAY

    def _news_sent_local(self) -> list[str]:
        return [self.path_map.to_local(path) for path in self._news_sent]

    def _send_news(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        """Send the broker what changed in the files this process runs, and its reloads and
        failures, in ``running`` reports of about half a page each."""
        with self._news_lock:
            dirty, self._news_dirty = self._news_dirty, set()
            events, self._news_events = list(self._news_events), deque()
            lost, self._news_lost = self._news_lost, 0
            self._news_due = None
        root = codec.root
        files: list[dict[str, Any]] = []
        if dirty:
            registry = self.host.registry
            for key in sorted(dirty):  # the files that moved, not every module of the process
                rec = registry.record_at(key)
                if rec is None or rec.kind == "folder":
                    continue
                self._news_told.add(rec.key)
                path = self.path_map.to_broker(rec.key)
                if root is not None and not _inside(path, root):
                    continue
                failed = rec.failed_hash if rec.last_error else None
                lineno, message = (None, None)
                if failed and rec.last_error:
                    lineno, message = failure_parts(rec.key, rec.last_error)
                state = (rec.hash, rec.version, failed, lineno, message)
                if self._news_sent.get(path) == state:
                    continue
                self._news_sent[path] = state
                files.append(
                    {
                        "path": path,
                        "hash": rec.hash,
                        "version": rec.version,
                        "failed": failed,
                        "lineno": lineno,
                        "message": message,
                    }
                )
        happened: list[dict[str, Any]] = []
        for event in events:
            path = self.path_map.to_broker(event.path)
            if root is not None and not _inside(path, root):
                continue
            lineno, message = (None, None)
            if event.error:
                lineno, message = failure_parts(event.path, event.error)
            happened.append(
                {
                    "kind": event.kind,
                    "path": path,
                    "time": max(0.0, event.time),
                    "lineno": lineno,
                    "message": message,
                }
            )
        if not files and not happened and not lost:
            return
        client = self._client_id()
        batch: dict[str, Any] = {"client": client, "files": [], "events": [], "lost": lost}
        spent = 0
        for field_name, item in [("files", f) for f in files] + [("events", e) for e in happened]:
            cost = 120 + len(item["path"]) + len(item["message"] or "")
            if spent + cost > PAGE_BYTES // 2 and (batch["files"] or batch["events"]):
                dealer.send_multipart(codec.encode("running", batch))
                batch, spent = {"client": client, "files": [], "events": [], "lost": 0}, 0
            batch[field_name].append(item)
            spent += cost
        dealer.send_multipart(codec.encode("running", batch))

    def _send_edges(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        """Send the runtime edges the broker has not had from this session, in chunks."""
        graph = self.host.registry.graph
        count = graph.edge_count()
        if count == self._edges_sent:
            return
        self._edges_sent = count
        root = codec.root
        edges = []
        for dependent, dependency, origins in graph.edges():
            if "runtime" not in origins:
                continue
            a, b = self.path_map.to_broker(dependent), self.path_map.to_broker(dependency)
            if (a, b) not in self._edges_known and (
                root is None or (_inside(a, root) and _inside(b, root))
            ):
                edges.append([a, b])
                self._edges_known.add((a, b))
        for start in range(0, len(edges), EDGES_PER_MESSAGE):
            chunk = edges[start : start + EDGES_PER_MESSAGE]
            dealer.send_multipart(codec.encode("edges", {"edges": chunk}))


_FAILURE = re.compile(r"(?P<kind>[A-Za-z_][\w.]*)(?: at line (?P<line>\d+))?: (?P<detail>.*)", re.S)
_ADVICE = (". The last good version stays in use", ". Fix the file and load it again")


def failure_parts(path: str, error: str) -> tuple[int | None, str]:
    """The line and the short message (``"RuntimeError: boom"``) of a reload error's text.

    Example:
        >>> failure_parts("/p/a.py", "Cannot reload /p/a.py: RuntimeError at line 3: boom. "
        ...               "The last good version stays in use; save a fixed version to reload.")
        (3, 'RuntimeError: boom')
    """
    text = error
    for verb in ("reload", "load"):
        prefix = f"Cannot {verb} {path}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    for advice in _ADVICE:
        text = text.split(advice, 1)[0]
    match = _FAILURE.fullmatch(text)
    if match is None:
        return None, text[:NEWS_MESSAGE_CHARS]
    line = match["line"]
    message = f"{match['kind']}: {match['detail']}"[:NEWS_MESSAGE_CHARS]
    return (int(line) if line else None), message


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
