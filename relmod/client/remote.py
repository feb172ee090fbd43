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

Over TCP the broker (``relmod-broker --tcp HOST:PORT``) encrypts with CURVE and admits only
clients whose public key is listed, as a ``*.key`` file, in ``<runtime dir>/<root id>.clients/``
on its machine. A worker proves itself with a certificate holding its public and secret key
(:func:`create_client_key` writes one; :func:`authorize_client` lists its public half), named
by ``client_key`` or ``$RELMOD_CLIENT_KEY``. The connection file, copied to the worker with mode
0600, carries the endpoints, the signing key and the broker's public key.

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
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import zmq

from relmod.client.connection import BrokerFeed, PathMap, _Command
from relmod.client.session import Client, default_client
from relmod.connfile import ConnectionInfo, root_id, runtime_dir
from relmod.errors import BrokerError, BrokerNotFound
from relmod.protocol import Codec, Message, configure_socket
from relmod.sources import content_hash, decode_source

__all__ = [
    "CLIENT_KEY_ENV",
    "RemoteFeed",
    "RemoteSources",
    "authorize_client",
    "connect_remote",
    "create_client_key",
    "secure_client_socket",
]

log = logging.getLogger(__name__)

CLIENT_KEY_ENV = "RELMOD_CLIENT_KEY"
"""Names the certificate file (public and secret key) a client presents to a CURVE broker."""
CACHE_BYTES = 64 * 1024 * 1024
"""Most source bytes a remote client keeps; the least recently used go first."""
FETCH_TIMEOUT = 10.0
"""Seconds a reload waits for the broker to send a source it does not have yet."""
_ASK_AGAIN = 1.0  # seconds before a fetch asks again (the first request may die with a reconnect)

Kind = Literal["file", "folder"]


# -- keys -------------------------------------------------------------------------------------


def create_client_key(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Make a CURVE key pair for a client, in ZeroMQ's certificate format.

    The secret certificate is created with mode 0600 from the start (``zmq.auth`` writes it with
    the umask's mode and leaves it readable by others). It holds both keys: give its path to
    :func:`connect_remote`. The public certificate goes to the broker's machine.

    Args:
        folder: where to write the two files (created 0700 when missing).
        name: the files are ``<name>.key_secret`` and ``<name>.key``.

    Returns:
        ``(secret_file, public_file)``.

    Raises:
        FileExistsError: a certificate of that name exists; remove it or choose another name.

    Example:
        >>> import tempfile
        >>> secret, public = create_client_key(tempfile.mkdtemp(), 'w1')
        >>> oct(secret.stat().st_mode & 0o777), public.name
        ('0o600', 'w1.key')
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not a certificate name; use letters, digits, - and _.")
    where = Path(os.path.expanduser(os.fspath(folder)))
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    secret_file, public_file = where / f"{name}.key_secret", where / f"{name}.key"
    _write_new(secret_file, _certificate(public, secret), 0o600)
    _write_new(public_file, _certificate(public, None), 0o644)
    return secret_file, public_file


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    """The text of a ZeroMQ certificate (what ``zmq.auth.load_certificate`` reads)."""
    lines = [
        "#   relmod CURVE client " + ("secret key: keep it private" if secret else "public key"),
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask did
        os.write(fd, data)
    finally:
        os.close(fd)


def authorize_client(public_key_file: str | os.PathLike[str], root: str) -> Path:
    """List a client's public certificate with the broker of ``root`` (run on its machine).

    The broker re-reads the folder at the next connection attempt; no restart is needed.

    Returns:
        The path of the copy in ``<runtime dir>/<root id>.clients/``.

    Raises:
        ValueError: the file is not a public certificate (or holds a secret key, which must
            never be copied to the broker).

    Example:
        >>> authorize_client('w1.key', '/srv/proj')  # doctest: +SKIP
        PosixPath('/run/user/1000/relmod/5d1c....clients/w1.key')
    """
    import zmq.auth

    source = Path(public_key_file)
    public, secret = zmq.auth.load_certificate(source)
    if secret is not None:
        raise ValueError(
            f"{source} holds a secret key. Copy only the public certificate (<name>.key) to the "
            "broker; the secret one stays with the client."
        )
    folder = runtime_dir() / f"{root_id(root)}.clients"
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / (source.stem + ".key")
    shutil.copyfile(source, target)
    log.info("authorised CURVE client %s for %s", public.decode(), root)
    return target


def secure_client_socket(
    sock: zmq.Socket[Any], info: ConnectionInfo, key_file: str | os.PathLike[str] | None
) -> None:
    """Make ``sock`` a CURVE client of a broker that uses CURVE; nothing for one that does not.

    Call before ``connect``.

    Raises:
        BrokerError: the broker uses CURVE and no usable certificate was given.
    """
    server = info["curve_server_public"]
    if server is None:
        return
    if key_file is None:
        raise BrokerError(
            f"The broker of {info['root']} uses CURVE; pass client_key= or set {CLIENT_KEY_ENV} "
            "to a certificate (public and secret key) whose public half is listed in the "
            "broker's clients folder."
        )
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(os.fspath(key_file))
    except (OSError, ValueError) as err:
        raise BrokerError(f"Cannot read the CURVE certificate {key_file}: {err}.") from err
    if secret is None:
        raise BrokerError(
            f"The CURVE certificate {key_file} holds no secret key; give the <name>.key_secret "
            "file that create_client_key() wrote."
        )
    sock.curve_serverkey = server.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret


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

    def digest_of(self, path: str) -> str | None:
        """The hash of the current version of a local path, or None when it is no file."""
        return self._files.get(path)

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


# -- the feed -------------------------------------------------------------------------------


class RemoteFeed(BrokerFeed):
    """A broker connection for a process that reads no project file from its own disk.

    It does everything :class:`~relmod.client.connection.BrokerFeed` does, and also: records the
    hash of every file the broker describes in :attr:`sources`, answers the registry's reads
    from the broker by content hash, speaks CURVE when the broker does, and never falls back to
    watching the local disk (there is nothing there to watch: while the broker is away, the
    process keeps the code it has and resynchronises when the broker answers again).
    """

    name = "remote"

    def __init__(
        self,
        client: Client,
        connection_file: Path,
        *,
        path_map: dict[str, str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(client, connection_file, path_map=path_map)
        key = client_key if client_key is not None else os.environ.get(CLIENT_KEY_ENV)
        self.client_key: str | None = os.fspath(key) if key else None
        self.sources = RemoteSources(self.path_map, self.fetch)
        self._wanted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._arrivals = threading.Condition()
        self._asked: dict[str, float] = {}  # hash -> when it was last requested (feed thread)
        self.refused = threading.Event()  # CURVE said no: retrying will not help by itself

    # -- user threads ----------------------------------------------------------------------

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
                self._want(digest)
                self._arrivals.wait(min(remaining, _ASK_AGAIN))

    def _want(self, digest: str) -> None:
        self._wanted.put(digest)
        self._wake()

    def sync(self, timeout: float) -> None:
        """Return once every change saved before the call is applied to our stale marks.

        Without a broker there is no newer information anywhere this process can reach, so the
        call returns at once (the base class would check local files, which do not exist here).
        """
        if not self.connected.is_set():
            log.debug("sync: the broker is not connected; keeping the code in use")
            return
        command = self._send(_Command("sync"))
        if not (command.done.wait(timeout) and command.result is True):
            log.warning("the broker did not confirm sync within %.1fs", timeout)

    def forked(self) -> RemoteFeed:
        """A fresh feed for a forked child, keeping what the parent knew of the files."""
        feed = RemoteFeed(
            self.client, self.path, path_map=self._path_map_raw, client_key=self.client_key
        )
        feed.sources.adopt(self.sources)
        self.client.registry.sources = feed.sources
        return feed

    def status(self) -> dict[str, Any]:
        """What :meth:`BrokerFeed.status` says, plus the counters of :attr:`sources`."""
        return {**super().status(), "sources": self.sources.status()}

    # -- the connection thread -------------------------------------------------------------

    def _session(self, info: ConnectionInfo) -> None:
        # BrokerFeed._session with CURVE on both sockets; everything else is inherited.
        codec = Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        dealer = ctx.socket(zmq.DEALER)
        monitor: zmq.Socket[Any] | None = None
        self._asked.clear()
        try:
            try:
                for sock in (sub, dealer):
                    configure_socket(sock)
                    secure_client_socket(sock, info, self.client_key)
                if info["curve_server_public"] is not None:
                    monitor = dealer.get_monitor_socket(_HANDSHAKE_EVENTS)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(info["pub"])
                dealer.connect(info["router"])
                if monitor is not None:
                    _await_curve_handshake(monitor, info, self.client_key, self.silence)
                    dealer.disable_monitor()  # the verdict is in; later events are not read
                    monitor.close(0)
                    monitor = None
            except BrokerError as err:
                self.last_error = str(err)  # before refused: connect_remote reads it then
                self.refused.set()
                raise
            self.refused.clear()
            self._handshake(codec, sub, dealer, info)
            self._loop(codec, sub, dealer)
        finally:
            if os.getpid() == self._pid and monitor is not None:
                dealer.disable_monitor()
                monitor.close(0)
            self._end_session(codec, ctx, sub, dealer)

    def _changes_arrived(self, body: dict[str, Any]) -> None:
        # Before the base class marks anything stale: a reload must find the new hashes. A full
        # answer arrives here whole (every page of hashes), so replace() sees every file.
        if body["full"]:
            root = self.info["root"] if self.info is not None else None
            self.sources.replace(body["hashes"], root=root)
        else:
            self.sources.update(body["hashes"])
        self._prefetch(body["hashes"])

    def _on_publication(self, msg: Message) -> bool:
        body = msg.body
        if msg.kind == "invalidate" and body["epoch"] == self.epoch and body["seq"] == self.seq + 1:
            # The base class applies exactly this message; record its hashes before it marks.
            self.sources.update(body["hashes"])
            self._prefetch(body["hashes"])
        return super()._on_publication(msg)

    def _prefetch(self, hashes: Mapping[str, str | None]) -> None:
        """Ask now for the new versions of modules this process runs, before anyone reloads."""
        loaded = self.client.registry.files()
        wanted = [
            d
            for p, d in hashes.items()
            if d is not None and self.path_map.to_local(p) in loaded and not self.sources.has(d)
        ]
        for digest in wanted:
            self._wanted.put(digest)
        if wanted:
            self._wake()

    def _drain_commands(self, codec: Codec, dealer: zmq.Socket[Any]) -> None:
        super()._drain_commands(codec, dealer)
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
            dealer.send_multipart(codec.encode("source", {"hash": digest}))

    def _on_reply(self, msg: Message) -> None:
        if msg.kind != "source":
            super()._on_reply(msg)
            return
        digest = msg.body["hash"]
        self._asked.pop(digest, None)
        self.sources.arrived(digest, msg.body["data"])
        with self._arrivals:
            self._arrivals.notify_all()

    def _lose(self, why: str) -> None:
        # BrokerFeed._lose without its fallback watcher: no project file lives on this disk.
        self._finish_syncs(False)
        if self.connected.is_set():
            self.reconnects += 1
            log.warning(
                "relmod broker unavailable (%s); keeping the code in use until it answers", why
            )
        self.connected.clear()
        self.last_error = why


_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _await_curve_handshake(
    monitor: zmq.Socket[Any], info: ConnectionInfo, key_file: str | None, timeout: float
) -> None:
    """Wait for the CURVE handshake of the DEALER socket and say clearly when it failed.

    A broker that refuses a client sends it nothing at all; only the socket's events tell
    "your key is not listed" from "the broker is slow".
    """
    from zmq.utils.monitor import recv_monitor_message

    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not monitor.poll(int(remaining * 1000) + 1):
            return  # no verdict yet: the hello that follows times out with its own message
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
    client = default_client()
    path = Path(os.path.abspath(os.fspath(connection_file)))
    current = client.feed
    if isinstance(current, RemoteFeed) and current.path == path:
        return current
    feed = RemoteFeed(client, path, path_map=path_map, client_key=client_key)
    # Before the handshake: it may mark loaded modules stale, and their reload must ask the
    # broker, not the disk.
    previous, client.registry.sources = client.registry.sources, feed.sources
    feed.start()
    deadline = time.monotonic() + timeout
    while not feed.wait_connected(0.02) and not feed.refused.is_set():
        if time.monotonic() > deadline:
            break
    if not feed.connected.is_set():
        why = feed.last_error or "it did not answer"
        feed.stop()
        client.registry.sources = previous
        raise BrokerNotFound(
            f"Cannot connect to the relmod broker of {path} ({why}). Check that it runs, that "
            "this machine reaches its endpoints, and that this client's public key is listed in "
            "the broker's clients folder (relmod.client.remote.authorize_client)."
        )
    client.use_feed(feed)
    return feed
