"""The runtime directory, the connection file and the lock file of a project's broker.

One broker serves one project root. It takes an exclusive lock on ``<runtime>/<id>.lock``, then
writes ``<runtime>/<id>.json`` (mode 0600) telling clients where its sockets are and which key
signs its messages; ``<id>`` is :func:`root_id` of the root. Clients find the file by walking up
from their working folder (:func:`find_connection_file`), or through ``$RELMOD_BROKER``.

Example:
    >>> import os, tempfile
    >>> os.environ["RELMOD_RUNTIME_DIR"] = tempfile.mkdtemp()
    >>> with BrokerLock("/project"):  # the broker, while it runs
    ...     remove_stale_connection_file("/project")
    ...     # bind the sockets, then write_connection_file(connection_path("/project"), info)
    False
    >>> find_connection_file("/project/pkg") is None  # a client; no file was written
    True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypedDict, cast

from relmod.errors import BrokerAlreadyRunning, BrokerNotFound, ConnectionFileError

logger = logging.getLogger(__name__)

CONNECTION_VERSION: Final = 1
"""The ``version`` field of connection files this relmod writes and reads."""
IPC_PATH_MAX: Final = 107
"""Longest ipc socket path in bytes: ``sockaddr_un.sun_path`` holds 108, with the NUL."""
MAX_FILE_BYTES: Final = 1024 * 1024

_FALLBACK_PARENT = "/tmp"


class ConnectionInfo(TypedDict):
    """What a broker tells its clients, stored as JSON in the connection file.

    Attributes:
        version: :data:`CONNECTION_VERSION`.
        root: the real path of the project folder the broker serves.
        pid: the broker's process id.
        host: the broker's host name (a pid means nothing on another host).
        epoch: the broker's epoch (see ``relmod.protocol.new_epoch``).
        key: the signing key, hex.
        pub: the zmq endpoint of the broker's PUB socket.
        router: the zmq endpoint of the broker's ROUTER socket.
        started: when the broker started, seconds since the epoch.
        watcher: the name of the file-watching backend in use.
        curve_server_public: the broker's CURVE public key (z85) for TCP with CURVE, else None.
    """

    version: int
    root: str
    pid: int
    host: str
    epoch: str
    key: str
    pub: str
    router: str
    started: float
    watcher: str
    curve_server_public: str | None


# field -> accepted types. bool is an int subclass, so it is refused separately.
_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "version": (int,),
    "root": (str,),
    "pid": (int,),
    "host": (str,),
    "epoch": (str,),
    "key": (str,),
    "pub": (str,),
    "router": (str,),
    "started": (int, float),
    "watcher": (str,),
    "curve_server_public": (str, type(None)),
}


def runtime_dir() -> Path:
    """The private folder holding connection files, lock files and ipc sockets.

    ``$RELMOD_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/relmod``, else ``/tmp/relmod-<uid>``. It is
    created with mode 0700 when missing; an existing one must be a real directory (not a
    symbolic link) owned by us and closed to group and others.

    Raises:
        ConnectionFileError: the folder cannot be created or is unsafe; the message says how
            to fix it.

    >>> import os, tempfile
    >>> os.environ["RELMOD_RUNTIME_DIR"] = os.path.join(tempfile.mkdtemp(), "run")
    >>> oct(runtime_dir().stat().st_mode & 0o777)
    '0o700'
    """
    configured = os.environ.get("RELMOD_RUNTIME_DIR")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if configured:
        path = Path(os.path.abspath(configured))
    elif xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        path = Path(xdg) / "relmod"
    else:
        path = Path(_FALLBACK_PARENT) / f"relmod-{os.getuid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise ConnectionFileError(
            f"Cannot create relmod's runtime folder {path}: {err.strerror}. Set "
            "RELMOD_RUNTIME_DIR to a folder you can write to."
        ) from err
    else:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        logger.debug("created runtime folder %s", path)
    _check_private_dir(path)
    return path


def _check_private_dir(path: Path) -> None:
    """Refuse a runtime folder another user could read, write or swap."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ConnectionFileError(
            f"relmod's runtime folder {path} is a symbolic link, which another user could have "
            "planted. Remove it, or set RELMOD_RUNTIME_DIR to a real private folder."
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConnectionFileError(
            f"relmod's runtime folder {path} is not a directory. Remove it, or set "
            "RELMOD_RUNTIME_DIR to another folder."
        )
    if st.st_uid != os.getuid():
        raise ConnectionFileError(
            f"relmod's runtime folder {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}). Remove it, or set RELMOD_RUNTIME_DIR to a folder of yours."
        )
    if st.st_mode & 0o077:
        raise ConnectionFileError(
            f"relmod's runtime folder {path} is open to other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}). Run 'chmod 700 {path}' and start again."
        )


def root_id(root: str) -> str:
    """The name of a project in the runtime folder: 16 hex digits of its real path's sha256.

    >>> len(root_id("/project")), root_id("/project") == root_id("/project/")
    (16, True)
    """
    return hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:16]


def connection_path(root: str) -> Path:
    """Where the broker of ``root`` writes its connection file."""
    return runtime_dir() / f"{root_id(root)}.json"


def lock_path(root: str) -> Path:
    """The file whose lock a broker of ``root`` holds while it runs."""
    return runtime_dir() / f"{root_id(root)}.lock"


def ipc_endpoints(root: str) -> tuple[str, str] | None:
    """The ipc:// endpoints (PUB, ROUTER) for the broker of ``root``, inside the runtime folder.

    Returns:
        ``(pub, router)``, or None when ipc is unavailable or a socket path would be longer
        than :data:`IPC_PATH_MAX` bytes; the broker then refuses to start
        (:func:`ipc_refusal` says why), since clear-text TCP would open it to other users.
    """
    import zmq  # only the broker binds; keep reading a connection file free of zmq

    if not zmq.has("ipc"):
        return None
    base = runtime_dir() / root_id(root)
    paths = (f"{base}.pub", f"{base}.router")
    if any(len(os.fsencode(path)) > IPC_PATH_MAX for path in paths):
        logger.debug("ipc paths under %s are too long", base)
        return None
    return f"ipc://{paths[0]}", f"ipc://{paths[1]}"


def ipc_refusal(root: str) -> str:
    """The one line a broker gives when it cannot use ipc for ``root`` (see ipc_endpoints)."""
    import zmq

    if not zmq.has("ipc"):
        return (
            "This ZeroMQ has no ipc transport, and the broker does not serve clear-text TCP; "
            "serve with --tcp HOST:PORT (CURVE-encrypted)."
        )
    path = f"{runtime_dir() / root_id(root)}.router"
    return (
        f"The broker's socket path {path} is {len(os.fsencode(path))} bytes, longer than the "
        f"{IPC_PATH_MAX} the system allows; set RELMOD_RUNTIME_DIR to a shorter private folder "
        f"(such as /tmp/relmod-{os.getuid()}), or serve with --tcp HOST:PORT."
    )


def _problem(info: Any) -> str | None:
    """What is wrong with a decoded connection file, or None."""
    if not isinstance(info, dict):
        return f"it holds a JSON {type(info).__name__}, not an object"
    missing = sorted(_FIELDS.keys() - info.keys())
    if missing:
        return f"it lacks the field(s) {', '.join(missing)}"
    for name, types in _FIELDS.items():
        value = info[name]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"its field {name!r} is {type(value).__name__}, not {wanted}"
    if info["version"] != CONNECTION_VERSION:
        return (
            f"it has version {info['version']}, and this relmod reads version "
            f"{CONNECTION_VERSION}; run the same relmod version for the broker and its clients"
        )
    try:
        key = bytes.fromhex(info["key"])
    except ValueError:
        return "its key is not hex"
    if not 16 <= len(key) <= 64:
        return f"its key has {len(key)} bytes, where relmod keys have 16 to 64"
    if not os.path.isabs(info["root"]):
        return "its root is not an absolute path"
    return None


def write_connection_file(path: str | Path, info: ConnectionInfo) -> None:
    """Write a connection file atomically, readable by its owner only (mode 0600).

    The JSON goes to a temporary file in the same folder, created 0600, flushed to disk, then
    renamed over ``path``: a reader sees the old file or the new one, never half of one.

    Raises:
        ValueError: ``info`` is incomplete or has a wrong type (a bug in the caller).
    """
    problem = _problem(info)
    if problem is not None:
        raise ValueError(f"Refusing to write connection file {path}: {problem}.")
    path = Path(path)
    data = json.dumps(dict(info), indent=2, sort_keys=True).encode() + b"\n"
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    logger.debug("wrote connection file %s", path)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every file system allows fsync on a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_connection_file(path: str | Path) -> ConnectionInfo:
    """Read and check a connection file.

    Raises:
        ConnectionFileError: the file is missing, a symbolic link, not owned by us, readable or
            writable by group or others, not JSON, or lacks a field or has a wrong type. The
            message says what is wrong and what to do.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as err:
        raise ConnectionFileError(
            f"No connection file at {path}: no broker is running there. Start one with "
            "'relmod-broker', or point RELMOD_BROKER at the right file."
        ) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            reason = "is a symbolic link, which relmod does not follow"
        else:
            reason = f"cannot be opened ({err.strerror})"
        raise ConnectionFileError(
            f"The connection file {path} {reason}. Remove it and restart the broker."
        ) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConnectionFileError(
                f"The connection file {path} is not a regular file. Remove it and restart the "
                "broker."
            )
        if st.st_uid != os.getuid():
            raise ConnectionFileError(
                f"The connection file {path} belongs to uid {st.st_uid}, not to you "
                f"(uid {os.getuid()}), so its key cannot be trusted. Remove it and start your "
                "own broker."
            )
        if st.st_mode & 0o077:
            raise ConnectionFileError(
                f"The connection file {path} is open to other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), so its key may have leaked. Remove it and "
                "restart the broker, which writes a new key with mode 0600."
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise ConnectionFileError(
            f"The connection file {path} is larger than {MAX_FILE_BYTES} bytes, so it is not "
            "one relmod wrote. Remove it and restart the broker."
        )
    try:
        info = json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise ConnectionFileError(
            f"The connection file {path} is not valid JSON ({err}). Remove it and restart the "
            "broker."
        ) from err
    problem = _problem(info)
    if problem is not None:
        raise ConnectionFileError(
            f"The connection file {path} is not usable: {problem}. Remove it and restart the "
            "broker."
        )
    return cast(ConnectionInfo, {name: info[name] for name in _FIELDS})


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user).

    >>> pid_alive(os.getpid())
    True
    """
    if pid <= 0:  # kill(0) and kill(-n) signal process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_live_broker(path: str | Path) -> ConnectionInfo:
    """Read a connection file and check that its broker runs: "is the broker alive", once.

    A broker on another host cannot be checked here; it counts as alive (its silence tells).

    Raises:
        BrokerNotFound: there is no file, or its broker's pid is dead on this host.
        ConnectionFileError: the file is unsafe or unreadable.
    """
    if not os.path.lexists(path):
        raise BrokerNotFound(
            f"No connection file at {path}: no broker is running there. Start one with "
            "'relmod-broker', or point RELMOD_BROKER at the right file."
        )
    info = read_connection_file(path)
    if info["host"] == socket.gethostname() and not pid_alive(info["pid"]):
        raise BrokerNotFound(
            f"The relmod broker of {info['root']} (pid {info['pid']}) is not running; start it "
            f"again with 'relmod-broker {info['root']}'."
        )
    return info


def find_connection_file(start: str) -> Path | None:
    """The connection file of the broker serving ``start``, if there is one.

    ``$RELMOD_BROKER`` (a path to a connection file) wins, whether or not the file exists, so
    that a wrong setting gives an error instead of another broker. Otherwise the folders from
    ``start`` up to the file-system root are tried in turn: the first whose connection file
    exists wins. The broker may still be dead; read the file and check its pid.
    """
    configured = os.environ.get("RELMOD_BROKER")
    if configured:
        return Path(configured)
    runtime = runtime_dir()
    folder = os.path.realpath(start)
    while True:
        candidate = runtime / f"{root_id(folder)}.json"
        if candidate.exists():
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def remove_stale_connection_file(root: str) -> bool:
    """Remove the connection file of ``root`` if the broker that wrote it is gone.

    A file is stale when its broker's pid is dead on this host, or when it is not a usable
    connection file at all. A file from another host is left alone: its pid cannot be checked.
    A starting broker calls this while holding its :class:`BrokerLock`, before binding.

    Returns:
        Whether a file was removed.
    """
    path = connection_path(root)
    if not os.path.lexists(path):
        return False
    try:
        info = read_connection_file(path)
    except ConnectionFileError as err:
        logger.warning("removing an unusable connection file: %s", err)
    else:
        if info["host"] != socket.gethostname():
            return False
        if info["pid"] == os.getpid() or pid_alive(info["pid"]):
            return False
        logger.info("removing the connection file of dead broker pid %d: %s", info["pid"], path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:  # a folder (or something else we may not remove) took its place
        raise ConnectionFileError(
            f"Cannot remove the unusable connection file {path}: {err.strerror}. Remove it "
            "yourself and start the broker again."
        ) from err
    return True


class BrokerLock:
    """The lock one broker per root holds while it runs: an ``flock`` on :func:`lock_path`.

    The lock dies with the process holding it, however it ends (even SIGKILL), so a lock file
    left by a dead broker is simply taken. The file holds the holder's pid, for the message.
    The holder deletes the file when it lets go (and :func:`sweep_runtime_dir` deletes those of
    dead brokers), so the runtime folder does not fill up with lock files. Deleting a lock file
    is safe because whoever takes a lock then checks that the file it locked is still the one
    at the path: a broker that locked a file just deleted opens the new one and tries again,
    so two brokers never hold locks on different files of the same name.

    Example:
        >>> import os, tempfile
        >>> os.environ["RELMOD_RUNTIME_DIR"] = tempfile.mkdtemp()
        >>> with BrokerLock("/project"):
        ...     BrokerLock("/project").acquire()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relmod.errors.BrokerAlreadyRunning: A relmod broker (pid ...) already serves ...
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.path = lock_path(self.root)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            BrokerAlreadyRunning: another live process (possibly this one, through another
                BrokerLock) holds it; ``pid`` names that process when it is known.
            ConnectionFileError: the lock file cannot be opened (a symbolic link or a folder
                took its place).
            RuntimeError: this object already holds the lock.
        """
        if self._fd is not None:
            raise RuntimeError(f"This BrokerLock already holds {self.path}.")
        for _ in range(5):
            fd = _lock_file(self.path, self.root)
            if fd is not None:
                break
        else:  # pragma: no cover - the file is replaced, or held by no broker, again and again
            raise ConnectionFileError(
                f"The broker lock file {self.path} keeps being replaced or held by a process "
                f"that is no broker, so no broker can lock {self.root}. Find what touches files "
                f"in {self.path.parent}."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        logger.debug("took broker lock %s", self.path)

    def release(self) -> None:
        """Let the lock go (nothing happens when it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                self.path.unlink()  # while still locked: see the class docstring
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as err:
            logger.debug("could not remove lock file %s: %s", self.path, err)
        finally:
            os.close(fd)
        logger.debug("released broker lock %s", self.path)

    def __enter__(self) -> BrokerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _lock_file(path: Path, root: str) -> int | None:
    """Open and lock the lock file: its fd, or None when the file was replaced meanwhile.

    Raises:
        BrokerAlreadyRunning: another process holds it.
        ConnectionFileError: it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        what = (
            "is a symbolic link"
            if err.errno == errno.ELOOP
            else f"cannot be opened ({err.strerror})"
        )
        raise ConnectionFileError(
            f"The broker lock file {path} {what}, so no broker can lock {root}. "
            "Remove it and start the broker again."
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_holder(fd, wait=0.3)
        os.close(fd)
        if not pid:
            return None  # no broker: a sweep (sweep_runtime_dir) holds it for a moment
        raise BrokerAlreadyRunning(
            f"A relmod broker (pid {pid}) already serves {root}; stop it first or connect to it.",
            pid=pid,
        ) from None
    except BaseException:
        os.close(fd)
        raise
    if not _same_file(fd, path):
        os.close(fd)  # deleted by its last holder or a sweep after we opened it: again
        return None
    return fd


def sweep_runtime_dir(older_than: float = 30 * 24 * 3600.0) -> int:
    """Remove what dead brokers left in the runtime folder; returns how many files went.

    A lock file nobody holds is deleted (under its own lock, see :class:`BrokerLock`), and so
    are ipc socket files next to it, and scan caches untouched for ``older_than`` seconds.
    Connection files are left to :func:`remove_stale_connection_file`, which checks the pid.
    """
    folder = runtime_dir()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        name = entry.name
        try:
            if name.endswith(".lock") and entry.is_file(follow_symlinks=False):
                removed += _sweep_lock(Path(entry.path))
            elif name.endswith(".scan") and now - entry.stat().st_mtime > older_than:
                os.unlink(entry.path)
                removed += 1
        except OSError as err:
            logger.debug("left %s alone: %s", entry.path, err)
    if removed:
        logger.info("removed %d files of dead brokers from %s", removed, folder)
    return removed


def _sweep_lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live broker
        if not _same_file(fd, path):
            return 0
        base = str(path)[: -len(".lock")]
        removed = 0
        for leftover in (f"{base}.pub", f"{base}.router"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
                removed += 1
        path.unlink()
        return removed + 1
    finally:
        os.close(fd)


def _read_holder(fd: int, wait: float = 1.0) -> int:
    """The pid the lock holder wrote, waiting briefly: it locks first and writes just after."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return 0
        time.sleep(0.01)
