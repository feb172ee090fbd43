"""Workers on other machines: module sources come from the broker by content hash.

A process that does not share the project's file system connects with :func:`connect_remote`.
Its registry then reads no disk: every file it loads is looked up in :class:`RemoteSources`,
which the broker keeps up to date, and the bytes are fetched once per content hash::

    broker machine (/srv/proj)                  worker machine (path map /srv/proj -> /w/proj)
    "changes" / "invalidate" {path: hash}  ───>  RemoteSources: /w/proj/a.py -> hash
    "source" {hash}                        <───  the registry reads /w/proj/a.py (cache miss)
    "source" {hash, data}                  ───>  hash checked, bytes cached, module executed

The hashes of a change are recorded *before* the modules are marked stale, so a reload never
reads an older version than the one that marked it. Sources of loaded modules are prefetched
as soon as an invalidation names them, so a reload rarely waits for the network.

This is a plug-in of the one broker feed (:class:`~relmod.client.connection.BrokerFeed`), not
a second connection: :class:`ServedSources` fills its one plug point
(:class:`~relmod.client.connection.FeedPlugin`), and :func:`connect_remote` is
``Client.connect`` with that plug-in. Over TCP the broker (``relmod-broker --tcp HOST:PORT``)
encrypts with CURVE and admits only clients whose public key is listed (:mod:`relmod.curve`:
:func:`create_client_key` writes a certificate, :func:`authorize_client` lists its public half);
a worker names its certificate by ``client_key`` or ``$RELMOD_CLIENT_KEY``. The connection
file, copied to the worker with mode 0600, carries the endpoints, the signing key and the
broker's public key.

Example:
    >>> secret, public = create_client_key('~/.relmod', 'worker1')   # doctest: +SKIP
    >>> authorize_client(public, '/srv/proj')          # on the broker's machine  # doctest: +SKIP
    >>> feed = connect_remote('proj.json', path_map={'/srv/proj': '/w/proj'},
    ...                       client_key=secret)       # on the worker  # doctest: +SKIP
    >>> relmod.at('/w/proj/tasks.py').VALUE            # doctest: +SKIP
    1
"""

from __future__ import annotations

import errno
import linecache
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from relmod.client.connection import BrokerFeed, FeedHost, FeedPlugin, PathMap, Send
from relmod.client.session import default_client
from relmod.curve import CLIENT_KEY_ENV, authorize_client, create_client_key, secure_client_socket
from relmod.protocol import Message
from relmod.sources import content_hash, decode_source

__all__ = [
    "CLIENT_KEY_ENV",
    "RemoteFeed",
    "RemoteSources",
    "ServedSources",
    "authorize_client",
    "connect_remote",
    "create_client_key",
    "secure_client_socket",
]

log = logging.getLogger(__name__)

CACHE_BYTES = 64 * 1024 * 1024
"""Most source bytes a remote client keeps; the least recently used go first."""
FETCH_TIMEOUT = 10.0
"""Seconds a reload waits for the broker to send a source it does not have yet."""
_ASK_AGAIN = 1.0  # seconds before a fetch asks again (the first request may die with a reconnect)

Kind = Literal["file", "folder"]


# -- the sources ----------------------------------------------------------------------------


class RemoteSources:
    """The project's files as the broker describes them, and their bytes by content hash.

    What a remote client's registry uses instead of its disk (``registry.sources``): ``kind``
    answers whether a path is a file, a folder or nothing, and ``read`` returns the bytes of
    the file's current version, fetched from the broker once per content hash.

    Args:
        path_map: translates the broker's paths to this machine's.
        fetch: ``fetch(digest, timeout)`` asks the broker for the bytes with this hash and
            returns them (already stored with :meth:`arrived`) or None.
        cache_bytes: most bytes kept; sources of the least recently read hashes go first.

    Example:
        >>> sources = RemoteSources(PathMap({'/srv/p': '/w/p'}), lambda d, t: None)
        >>> sources.replace({'/srv/p/pkg/a.py': content_hash(b'A = 1\\n')}, root='/srv/p')
        >>> sources.kind('/w/p/pkg/a.py'), sources.kind('/w/p/pkg'), sources.kind('/w/x')
        ('file', 'folder', None)
        >>> sources.arrived(content_hash(b'A = 1\\n'), b'A = 1\\n')
        True
        >>> sources.read('/w/p/pkg/a.py')
        b'A = 1\\n'
    """

    def __init__(
        self,
        path_map: PathMap,
        fetch: Callable[[str, float], bytes | None],
        *,
        cache_bytes: int = CACHE_BYTES,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.path_map = path_map
        self.fetch = fetch
        self.cache_bytes = cache_bytes
        self.fetch_timeout = fetch_timeout
        self.fetched = 0  # sources that arrived from the broker
        self.rejected = 0  # arrivals whose bytes did not match their hash
        self._files: dict[str, str] = {}  # local path -> hash of its current good version
        self._folders: frozenset[str] = frozenset()
        self._root: str | None = None  # the local view of the broker's root
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._unavailable: set[str] = set()  # hashes the broker said it no longer has
        self._lock = threading.Lock()

    # -- what the broker tells (the feed's thread) -------------------------------------------

    def replace(self, hashes: Mapping[str, str | None], *, root: str | None = None) -> None:
        """A full description: every file of the project, by broker path (None: deleted)."""
        with self._lock:
            if root is not None:
                self._root = self.path_map.to_local(root)
            self._files = {self.path_map.to_local(p): h for p, h in hashes.items() if h is not None}
            self._folders = self._compute_folders()

    def update(self, hashes: Mapping[str, str | None]) -> None:
        """Some files changed (a hash) or went away (None), by broker path."""
        if not hashes:
            return
        with self._lock:
            files = dict(self._files)
            for path, digest in hashes.items():
                local = self.path_map.to_local(path)
                if digest is None:
                    files.pop(local, None)
                else:
                    files[local] = digest
            grew = not files.keys() <= self._files.keys()
            shrank = not self._files.keys() <= files.keys()
            self._files = files
            if grew or shrank:
                self._folders = self._compute_folders()

    def _compute_folders(self) -> frozenset[str]:
        folders: set[str] = set()
        root = self._root
        for path in self._files:
            folder = os.path.dirname(path)
            while folder not in folders:
                folders.add(folder)
                parent = os.path.dirname(folder)
                if folder == root or parent == folder:
                    break
                folder = parent
        return frozenset(folders)

    def arrived(self, digest: str, data: bytes | None) -> bool:
        """Store bytes the broker sent; False (and nothing stored) when they do not match."""
        with self._lock:
            if data is None:
                self._unavailable.add(digest)
                return False
            if content_hash(data) != digest:
                self.rejected += 1
                log.warning("dropped a source whose bytes do not match its hash %s", digest)
                return False
            self._unavailable.discard(digest)
            if digest not in self._cache:
                self.fetched += 1
                self._cache[digest] = data
                self._cached += len(data)
                while self._cached > self.cache_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= len(old)
            return True

    def has(self, digest: str) -> bool:
        """Whether the bytes with this hash are here already."""
        return digest in self._cache

    def gave_up(self, digest: str) -> bool:
        """Whether the broker answered that it has no file with this hash."""
        return digest in self._unavailable

    def adopt(self, other: RemoteSources) -> None:
        """Take over another instance's files and cache (a forked child's new feed)."""
        self._files, self._folders, self._root = other._files, other._folders, other._root
        self._cache, self._cached = OrderedDict(other._cache), other._cached

    # -- what the registry asks (user threads) -----------------------------------------------

    def kind(self, path: str) -> Kind | None:
        """``"file"``, ``"folder"``, or None when the project has nothing at ``path``."""
        if path in self._files:
            return "file"
        if path in self._folders:
            return "folder"
        return None

    def read(self, path: str) -> bytes:
        """The bytes of the current version of ``path``, from the cache or the broker.

        The text also goes to :mod:`linecache`, so tracebacks and ``inspect`` show the lines of
        the version that runs.

        Raises:
            FileNotFoundError: the broker lists no file at ``path``.
            OSError: the broker did not send the bytes in time, or no longer has them (the file
                changed again; the next invalidation brings the newer version).
        """
        digest = self._files.get(path)
        if digest is None:
            raise FileNotFoundError(
                errno.ENOENT, "the broker lists no such file (check the path map)", path
            )
        data = self.cached(digest)
        if data is None:
            with self._lock:
                self._unavailable.discard(digest)
            data = self.fetch(digest, self.fetch_timeout)
        if data is None:
            raise OSError(
                errno.EAGAIN,
                f"the broker did not send version {digest} within {self.fetch_timeout:g} s",
                path,
            )
        _remember_lines(path, data)
        return data

    def cached(self, digest: str) -> bytes | None:
        """The bytes with this hash if they are here (they become the most recently used)."""
        with self._lock:
            data = self._cache.get(digest)
            if data is not None:
                self._cache.move_to_end(digest)
            return data

    def status(self) -> dict[str, int]:
        """Counters for ``status()``: files listed, sources cached and fetched, rejected."""
        return {
            "files": len(self._files),
            "cached": len(self._cache),
            "fetched": self.fetched,
            "rejected": self.rejected,
        }


def _remember_lines(path: str, data: bytes) -> None:
    """Let tracebacks show this version's lines (an mtime of None: linecache never stats it)."""
    try:
        text = decode_source(data)
    except (UnicodeDecodeError, SyntaxError):
        return
    linecache.cache[path] = (len(data), None, text.splitlines(keepends=True), path)


# -- the plug-in and the feed ------------------------------------------------------------------


class ServedSources:
    """The broker feed's plug-in for a process that reads no project file from its own disk.

    It records the hash of every file the broker describes in :attr:`sources` (before the feed
    marks anything stale), answers the registry's reads from the broker by content hash, and
    prefetches the new versions of loaded modules. With it the feed never watches the local
    disk (there is nothing there to watch: while the broker is away, the process keeps the code
    it has and resynchronises when the broker answers again).
    """

    def __init__(self, path_map: PathMap) -> None:
        self.path_map = path_map
        self.sources = RemoteSources(path_map, self.fetch)
        self._wanted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._arrivals = threading.Condition()
        self._asked: dict[str, float] = {}  # hash -> when it was last requested (feed thread)
        self._host: FeedHost | None = None
        self._wake: Callable[[], None] = lambda: None

    # -- user threads ----------------------------------------------------------------------

    def attach(self, host: FeedHost, wake: Callable[[], None]) -> None:
        self._host, self._wake = host, wake

    def fetch(self, digest: str, timeout: float) -> bytes | None:
        """The bytes with this hash, asking the broker when they are not here yet."""
        deadline = time.monotonic() + timeout
        with self._arrivals:
            while True:
                data = self.sources.cached(digest)
                if data is not None or self.sources.gave_up(digest):
                    return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wanted.put(digest)
                self._wake()
                self._arrivals.wait(min(remaining, _ASK_AGAIN))

    def status(self) -> dict[str, Any]:
        return {"sources": self.sources.status()}

    def forked(self) -> ServedSources:
        """A plug-in for a forked child, keeping what the parent knew of the files."""
        served = ServedSources(self.path_map)
        served.sources.adopt(self.sources)
        return served

    # -- the connection thread -------------------------------------------------------------

    def session_started(self) -> None:
        self._asked.clear()

    def hashes_arrived(
        self, hashes: Mapping[str, str | None], *, full: bool, root: str | None
    ) -> None:
        if full:
            self.sources.replace(hashes, root=root)
        else:
            self.sources.update(hashes)
        self._prefetch(hashes)

    def _prefetch(self, hashes: Mapping[str, str | None]) -> None:
        """Ask now for the new versions of modules this process runs, before anyone reloads."""
        loaded = self._host.registry.files() if self._host is not None else {}
        wanted = [
            d
            for p, d in hashes.items()
            if d is not None and self.path_map.to_local(p) in loaded and not self.sources.has(d)
        ]
        for digest in wanted:
            self._wanted.put(digest)
        if wanted:
            self._wake()

    def send_requests(self, send: Send) -> None:
        now = time.monotonic()
        while True:
            try:
                digest = self._wanted.get_nowait()
            except queue.Empty:
                return
            asked = self._asked.get(digest)
            if self.sources.has(digest) or (asked is not None and now - asked < _ASK_AGAIN):
                continue  # here already, or asked for a moment ago
            self._asked[digest] = now
            send("source", {"hash": digest})

    def take_reply(self, msg: Message) -> bool:
        if msg.kind != "source":
            return False
        digest = msg.body["hash"]
        self._asked.pop(digest, None)
        self.sources.arrived(digest, msg.body["data"])
        with self._arrivals:
            self._arrivals.notify_all()
        return True


class RemoteFeed(BrokerFeed):
    """The broker feed with :class:`ServedSources` plugged in (it overrides nothing).

    Attributes:
        sources: the project's files as the broker describes them (the registry reads these).
    """

    def __init__(
        self,
        host: FeedHost,
        connection_file: Path,
        *,
        path_map: Mapping[str, str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        plugin: FeedPlugin | None = None,
    ) -> None:
        served = plugin if isinstance(plugin, ServedSources) else ServedSources(PathMap(path_map))
        super().__init__(
            host, connection_file, path_map=path_map, client_key=client_key, plugin=served
        )
        self.sources = served.sources


# -- the face -------------------------------------------------------------------------------


def connect_remote(
    connection_file: str | os.PathLike[str],
    *,
    path_map: dict[str, str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    timeout: float = 5.0,
) -> RemoteFeed:
    """Subscribe this process to a broker whose project is not on this machine's disk.

    Call it before loading modules: from then on the registry asks the broker, not the disk,
    which files exist and what they hold. Idempotent for the same connection file.

    Args:
        connection_file: a copy of the broker's connection file (mode 0600, owned by you).
        path_map: ``{broker_path: local_path}`` prefixes: where this process sees the project.
            Modules are loaded by their local paths; nothing needs to exist there.
        client_key: the certificate (public and secret key) to present to a CURVE broker;
            default ``$RELMOD_CLIENT_KEY``.
        timeout: seconds to wait for the broker's first answer.

    Returns:
        The feed, with ``status()``, ``sources`` and ``close()``.

    Raises:
        BrokerNotFound: the broker did not answer (not running, unreachable, or it refused the
            client key: check that the public key is listed in its clients folder).

    Example:
        >>> connect_remote('proj.json', path_map={'/srv/proj': '/w/proj'},
        ...                client_key='w1.key_secret')  # doctest: +SKIP
        <relmod connection to proj.json (connected, seq 0)>
    """
    feed = default_client().connect(
        connection_file=connection_file,
        path_map=path_map,
        client_key=client_key,
        timeout=timeout,
        feed_type=RemoteFeed,
    )
    assert isinstance(feed, RemoteFeed)
    return feed
