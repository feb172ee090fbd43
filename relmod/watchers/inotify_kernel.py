"""Linux inotify through ctypes: the three system calls, the event flags, and event decoding.

The kernel writes events into the inotify file descriptor as packed records::

    struct inotify_event {
        int      wd;       /* watch descriptor (-1 for IN_Q_OVERFLOW) */
        uint32_t mask;     /* IN_* flags */
        uint32_t cookie;   /* pairs IN_MOVED_FROM with IN_MOVED_TO */
        uint32_t len;      /* size of name, including NUL padding */
        char     name[];   /* entry name inside the watched folder; empty for the folder itself */
    };

:func:`decode` turns the bytes of one or more ``os.read`` calls into :class:`RawEvent` tuples.
:class:`Inotify` owns one non-blocking, close-on-exec instance. Nothing here knows about relmod's
scopes or batches: :mod:`relmod.watchers.inotify` builds on it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from typing import NamedTuple

__all__ = [
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_EXCL_UNLINK",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
    "IN_UNMOUNT",
    "Inotify",
    "RawEvent",
    "decode",
    "is_available",
    "os_error",
]

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_HEADER = struct.Struct("iIII")
READ_SIZE = 64 * 1024
"""Bytes asked for by one ``os.read``: room for about 2,000 short events, and always for one."""
_LARGEST_EVENT = _HEADER.size + 256  # NAME_MAX + 1, padded


class RawEvent(NamedTuple):
    """One decoded ``inotify_event``; ``name`` is empty for an event about the folder itself."""

    wd: int
    mask: int
    cookie: int
    name: str


def decode(data: bytes) -> list[RawEvent]:
    """Decode the packed events of one read (the kernel never splits an event across reads).

    A truncated trailing record (which the kernel never produces) is dropped rather than raising.

    Example:
        >>> raw = struct.pack("iIII", 1, IN_CLOSE_WRITE, 0, 8) + b"a.py\\0\\0\\0\\0"
        >>> decode(raw)
        [RawEvent(wd=1, mask=8, cookie=0, name='a.py')]
    """
    events: list[RawEvent] = []
    offset, end, size = 0, len(data), _HEADER.size
    while offset + size <= end:
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += size
        if offset + length > end:
            break
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(RawEvent(wd, mask, cookie, os.fsdecode(name)))
    return events


class _Libc:
    """The three inotify functions of the C library, loaded once."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # musl (Alpine) names it differently; the running process has it anyway
            lib = ctypes.CDLL(None, use_errno=True)
        self.init1 = lib.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = lib.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = lib.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _load() -> _Libc:
    global _libc
    if _libc is None:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, f"inotify exists only on Linux, not on {sys.platform}")
        try:
            _libc = _Libc()
        except AttributeError as err:  # a C library without inotify_* symbols
            raise OSError(errno.ENOSYS, f"the C library has no inotify functions: {err}") from err
    return _libc


def is_available() -> bool:
    """Whether this system has inotify functions to call (it may still refuse an instance)."""
    try:
        _load()
    except OSError:
        return False
    return True


def os_error(code: int, what: str, path: str | None = None) -> OSError:
    """The OSError for a failed call, saying which limit to raise when one is used up."""
    hint = ""
    if code == errno.ENOSPC:
        hint = (
            " The per-user inotify watch limit (fs.inotify.max_user_watches) is used up; raise "
            "it with sysctl, or set RELMOD_WATCHER=poll."
        )
    elif code == errno.EMFILE:
        hint = (
            " The per-user inotify instance limit (fs.inotify.max_user_instances) is used up; "
            "raise it with sysctl, or set RELMOD_WATCHER=poll."
        )
    message = f"{what} failed: {os.strerror(code)}.{hint}"
    return OSError(code, message, path) if path is not None else OSError(code, message)


def _error(what: str, path: str | None = None) -> OSError:
    return os_error(ctypes.get_errno(), what, path)


class Inotify:
    """One inotify instance: a non-blocking, close-on-exec file descriptor and its watches.

    Example:
        >>> ino = Inotify()                                    # doctest: +SKIP
        >>> wd = ino.add_watch("/proj", IN_CLOSE_WRITE)        # doctest: +SKIP
        >>> ino.read()          # [] until something happens   # doctest: +SKIP
        []
        >>> ino.close()                                        # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._libc = _load()
        fd = self._libc.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd = fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch ``path`` for ``mask``; returns its watch descriptor.

        The same inode watched twice returns the same descriptor (with the mask replaced).

        Raises:
            OSError: ENOENT/ENOTDIR (the path went away or is not a folder with IN_ONLYDIR),
                EACCES, ENOSPC (the watch limit).
        """
        wd: int = self._libc.add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error(f"inotify_add_watch on {path}", path)
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop watching ``wd``; a descriptor the kernel already dropped is no error."""
        if self._libc.rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            raise _error("inotify_rm_watch")

    def read(self) -> list[RawEvent]:
        """Every event readable now, without blocking (an empty list when there is none)."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
            if len(data) < READ_SIZE - _LARGEST_EVENT:
                break  # the queue was emptied: skip the read that would only say EAGAIN
        events: list[RawEvent] = []
        for chunk in chunks:
            events.extend(decode(chunk))
        return events

    def close(self) -> None:
        """Close the descriptor (the kernel drops every watch); safe to call twice."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
