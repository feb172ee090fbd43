"""The broker's on-disk memory of its scans, so that a restart reads only what changed.

One file per project, ``<runtime dir>/<root id>.scan`` (outside the watched tree, private to the
user), in msgpack::

    {"format": 1, "python": "3.11",
     "files":    {path: [mtime_ns, ctime_ns, size, ino, hash]},   # stat signature -> content hash
     "imports":  {hash: packed statements},                       # what a content imports
     "verdicts": {hash: None | [lineno or None, message]}}        # compiles, or why not

A file whose stat signature is unchanged is not read again: its hash and imports come from here.
Only signatures trusted at the time of the read are stored (``relmod.stattrust``), since a write
within the file system's timestamp resolution of the read could leave the signature unchanged.
Imports and verdicts are keyed by content hash, so a file that comes back to an earlier content
costs nothing either. Verdicts depend on the Python version, so a cache from another one is ignored.

The file is only a cache: anything unreadable, of another format or of another Python is ignored
(logged), and it is rewritten whole, atomically, pruned to the files the project has now.

Example:
    >>> import os, tempfile
    >>> cache = ScanCache(os.path.join(tempfile.mkdtemp(), "p.scan"))
    >>> cache.remember_imports("h1", [ImportStatement("import", 0, "util", ())])
    >>> cache.imports("h1")
    [ImportStatement(kind='import', level=0, module='util', names=())]
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import sys
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

import msgpack  # type: ignore[import-untyped]

from relmod.connfile import root_id, runtime_dir
from relmod.server.imports import ImportStatement
from relmod.sources import Broken, StatSignature
from relmod.stattrust import RACY_SECONDS, signature_trusted

__all__ = ["TRUST_AFTER", "ScanCache", "cache_path", "pack_statements", "unpack_statements"]

logger = logging.getLogger(__name__)

FORMAT = 1
TRUST_AFTER = RACY_SECONDS
"""A signature is stored only when the file was last modified this long before it was read."""
_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
_MAX_BYTES = 512 * 1024 * 1024
_SIGNATURE = struct.Struct("<qqqq")


def _short(data: bytes) -> bytes:
    """``data`` after a byte giving its length (a content hash: 32 bytes)."""
    if len(data) > 255:
        raise ValueError("a content hash longer than 255 bytes")
    return bytes((len(data),)) + data


def cache_path(root: str) -> Path:
    """Where the scan cache of the project at ``root`` lives."""
    return runtime_dir() / f"{root_id(root)}.scan"


def pack_statements(statements: Iterable[ImportStatement]) -> bytes:
    packed: bytes = msgpack.packb([list(s) for s in statements], use_bin_type=True)
    return packed


def unpack_statements(data: bytes) -> list[ImportStatement]:
    items = msgpack.unpackb(data, raw=False, use_list=False)
    return [ImportStatement(str(k), int(lv), str(m), tuple(map(str, n))) for k, lv, m, n in items]


class ScanCache:
    """What earlier scans learned (see the module docstring). Used by one thread at a time.

    In memory, a file's entry and a content's packed statements live in two byte buffers, the
    maps holding only offsets: the broker fills the cache while it scans, and ten thousand
    small tuples, ints and byte strings freed after the scan would leave the allocator's arenas
    half empty for good (about 8 MB at 10,000 files), where one buffer goes back whole.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # path -> offset in _file_data of: the stat signature (4 signed 8-byte ints), a byte
        # giving the hash's length, the hash (ASCII)
        self._files: dict[str, int] = {}
        self._file_data = bytearray()
        # hash -> offset << 32 | length of its packed statements in _import_data
        self._imports: dict[str, int] = {}
        self._import_data = bytearray()
        self._verdicts: dict[str, Broken | None] = {}
        self.dirty = False
        self._released = False  # the maps live on disk only until needed again (see release)

    # -- the buffers ------------------------------------------------------------------------------

    def _put_file(self, path: str, signature: StatSignature, digest: str) -> bool:
        """Store an entry; False when it cannot be stored (a field out of range)."""
        try:
            record = _SIGNATURE.pack(*signature) + _short(digest.encode("ascii"))
        except (struct.error, UnicodeEncodeError, ValueError):
            return False
        self._files[path] = len(self._file_data)
        self._file_data += record
        return True

    def _file_entry(self, path: str) -> tuple[bytes, str] | None:
        """(packed signature, hash) of a stored file."""
        offset = self._files.get(path)
        if offset is None:
            return None
        data = self._file_data
        end = offset + _SIGNATURE.size
        digest = data[end + 1 : end + 1 + data[end]].decode("ascii")
        return bytes(data[offset:end]), sys.intern(digest)

    def _put_imports(self, digest: str, packed: bytes) -> None:
        self._imports[digest] = len(self._import_data) << 32 | len(packed)
        self._import_data += packed

    def _packed_imports(self, digest: str) -> bytes | None:
        where = self._imports.get(digest)
        if where is None:
            return None
        offset, length = where >> 32, where & 0xFFFFFFFF
        return bytes(self._import_data[offset : offset + length])

    def _clear(self) -> None:
        self._files, self._imports, self._verdicts = {}, {}, {}
        self._file_data, self._import_data = bytearray(), bytearray()

    def _take(self) -> ScanCache:
        """Move every entry to a new cache (this one is left empty)."""
        taken = ScanCache(self.path)
        taken._files, taken._file_data = self._files, self._file_data
        taken._imports, taken._import_data = self._imports, self._import_data
        taken._verdicts = self._verdicts
        self._clear()
        return taken

    def _merge(
        self,
        other: ScanCache,
        files: Iterable[str] | None = None,
        digests: Container[str] | None = None,
    ) -> None:
        """Copy ``other``'s entries in, over this one's: of ``files`` and ``digests`` only, when
        given."""
        for path in other._files if files is None else files:
            entry = other._file_entry(path)
            if entry is not None:
                self._files[path] = len(self._file_data)
                self._file_data += entry[0] + _short(entry[1].encode("ascii"))
        for digest in other._imports:
            packed = other._packed_imports(digest)
            if packed is not None and (digests is None or digest in digests):
                self._put_imports(digest, packed)
        for digest, verdict in other._verdicts.items():
            if digests is None or digest in digests:
                self._verdicts[digest] = verdict

    # -- reading and writing the file -------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> ScanCache:
        """The cache stored at ``path``; an empty one when there is none or it is unusable."""
        cache = cls(path)
        try:
            with open(cache.path, "rb") as file:
                data = file.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return cache
        except OSError as err:
            logger.warning("cannot read the scan cache %s (%s); scanning every file", path, err)
            return cache
        try:
            cache._decode(data)
        except Exception as err:  # any damage means: start afresh
            logger.warning("ignoring the scan cache %s: %s", path, err)
            return cls(path)
        return cache

    def _decode(self, data: bytes) -> None:
        if len(data) > _MAX_BYTES:
            raise ValueError("it is too large")
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("it has another format")
        if raw.get("python") != _PYTHON:
            logger.info("the scan cache %s was made by Python %s", self.path, raw.get("python"))
            return
        # Interned: the paths and hashes kept here are the ones the project keeps.
        for path, (mtime, ctime, size, ino, digest) in raw["files"].items():
            signature = StatSignature(mtime, ctime, size, ino)
            self._put_file(sys.intern(str(path)), signature, str(digest))
        for digest, packed in raw["imports"].items():
            self._put_imports(sys.intern(str(digest)), bytes(packed))
        for digest, verdict in raw["verdicts"].items():
            if verdict is None:
                self._verdicts[sys.intern(str(digest))] = None
            else:
                lineno, message = verdict
                self._verdicts[sys.intern(str(digest))] = Broken("", lineno, str(message))

    def release(self) -> None:
        """Let go of the maps once they are saved: the broker needs them again only for a
        change of import roots or the next save, and reads them back then. Saves memory in
        proportion to the project (about 1 KB a file)."""
        if self.dirty:
            return
        self._clear()
        self._released = True

    def _reload(self) -> None:
        """Read the released maps back, under what was remembered since."""
        if not self._released:
            return
        self._released = False
        since = self._take()
        try:
            with open(self.path, "rb") as file:
                self._decode(file.read(_MAX_BYTES + 1))
        except Exception as err:  # gone or damaged: what is in memory is what there is
            logger.debug("cannot read the scan cache %s back: %s", self.path, err)
        self._merge(since)

    def save(self, current: Mapping[str, str] | None = None) -> None:
        """Write the cache atomically, pruned to the ``current`` files (path -> content hash)
        and their contents; nothing is pruned when None."""
        self._reload()
        if current is not None:
            # Pruned, and the buffers rebuilt without the entries replaced since the last save.
            old = self._take()
            self._merge(old, [p for p in old._files if p in current], set(current.values()))
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                size = self._write(file)
            os.replace(temp, self.path)
        except OSError as err:
            temp.unlink(missing_ok=True)
            logger.warning("cannot write the scan cache %s: %s", self.path, err)
            return
        self.dirty = False
        logger.debug("wrote the scan cache %s (%d files, %d bytes)", self.path, len(self), size)

    def _write(self, file: BinaryIO) -> int:
        """Write the msgpack map of the module docstring entry by entry (no copy of the whole
        cache as objects: they would be freed in the middle of what the broker keeps); returns
        how many bytes were written."""
        packer = msgpack.Packer(use_bin_type=True)
        buffer = bytearray()
        written = 0

        def put(data: bytes) -> None:
            nonlocal written
            buffer.extend(data)
            if len(buffer) >= 1 << 20:
                written += len(buffer)
                file.write(buffer)
                buffer.clear()

        put(packer.pack_map_header(5))
        put(packer.pack("format") + packer.pack(FORMAT))
        put(packer.pack("python") + packer.pack(_PYTHON))
        put(packer.pack("files") + packer.pack_map_header(len(self._files)))
        for path in self._files:
            signature, digest = self._file_entry(path) or (bytes(_SIGNATURE.size), "")
            put(packer.pack(path) + packer.pack([*_SIGNATURE.unpack(signature), digest]))
        put(packer.pack("imports") + packer.pack_map_header(len(self._imports)))
        for digest in self._imports:
            put(packer.pack(digest) + packer.pack(self._packed_imports(digest) or b""))
        put(packer.pack("verdicts") + packer.pack_map_header(len(self._verdicts)))
        for digest, verdict in self._verdicts.items():
            value = None if verdict is None else [verdict.lineno, verdict.message]
            put(packer.pack(digest) + packer.pack(value))
        written += len(buffer)
        file.write(buffer)
        return written

    # -- questions and answers --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def hash_of(self, path: str, signature: StatSignature | None) -> str | None:
        """The content hash of ``path`` when its signature is the stored one, else None."""
        entry = self._file_entry(path)
        if entry is None or signature is None:
            return None
        try:
            if entry[0] != _SIGNATURE.pack(*signature):
                return None
        except struct.error:
            return None
        return entry[1]

    def imports(self, digest: str) -> list[ImportStatement] | None:
        """The statements of the content with this hash, when known."""
        packed = self._packed_imports(digest)
        if packed is None and self._released:
            self._reload()
            packed = self._packed_imports(digest)
        if packed is None:
            return None
        try:
            return unpack_statements(packed)
        except Exception:  # a damaged entry: forget it, the file is read again
            del self._imports[digest]
            return None

    def verdict(self, digest: str) -> tuple[bool, Broken | None]:
        """(known, why broken or None) for the content with this hash."""
        if digest in self._verdicts:
            return True, self._verdicts[digest]
        return False, None

    def remember_file(
        self, path: str, signature: StatSignature | None, digest: str, read_at: float
    ) -> None:
        """Store a file's hash under its signature, when the signature can be trusted later."""
        if (
            signature is None
            or not signature_trusted(signature, read_at)
            or not self._put_file(path, signature, digest)
        ):
            self._files.pop(path, None)
            return
        self.dirty = True

    def forget_file(self, path: str) -> None:
        if self._files.pop(path, None) is not None:
            self.dirty = True

    def remember_imports(self, digest: str, statements: Iterable[ImportStatement]) -> None:
        self._put_imports(digest, pack_statements(statements))
        self.dirty = True

    def remember_packed(self, digest: str, packed: bytes) -> None:
        """Store statements already packed (as scan workers send them)."""
        self._put_imports(digest, packed)
        self.dirty = True

    def remember_verdict(self, digest: str, broken: Broken | None) -> None:
        self._verdicts[digest] = broken
        self.dirty = True
