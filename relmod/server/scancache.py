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
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

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
    """What earlier scans learned (see the module docstring). Used by one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files: dict[str, tuple[StatSignature, str]] = {}
        self._imports: dict[str, bytes] = {}
        self._verdicts: dict[str, Broken | None] = {}
        self.dirty = False
        self._released = False  # the maps live on disk only until needed again (see release)

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
        for path, (mtime, ctime, size, ino, digest) in raw["files"].items():
            self._files[str(path)] = (StatSignature(mtime, ctime, size, ino), str(digest))
        self._imports = {str(k): bytes(v) for k, v in raw["imports"].items()}
        for digest, verdict in raw["verdicts"].items():
            if verdict is None:
                self._verdicts[str(digest)] = None
            else:
                lineno, message = verdict
                self._verdicts[str(digest)] = Broken("", lineno, str(message))

    def release(self) -> None:
        """Let go of the maps once they are saved: the broker needs them again only for a
        change of import roots or the next save, and reads them back then. Saves memory in
        proportion to the project (about 1 KB a file)."""
        if self.dirty:
            return
        self._files, self._imports, self._verdicts = {}, {}, {}
        self._released = True

    def _reload(self) -> None:
        """Read the released maps back, under what was remembered since."""
        if not self._released:
            return
        self._released = False
        files, imports, verdicts = self._files, self._imports, self._verdicts
        self._files, self._imports, self._verdicts = {}, {}, {}
        try:
            with open(self.path, "rb") as file:
                self._decode(file.read(_MAX_BYTES + 1))
        except Exception as err:  # gone or damaged: what is in memory is what there is
            logger.debug("cannot read the scan cache %s back: %s", self.path, err)
        self._files.update(files)
        self._imports.update(imports)
        self._verdicts.update(verdicts)

    def save(self, current: Mapping[str, str] | None = None) -> None:
        """Write the cache atomically, pruned to the ``current`` files (path -> content hash)
        and their contents; nothing is pruned when None."""
        self._reload()
        if current is not None:
            self._files = {p: entry for p, entry in self._files.items() if p in current}
            digests = set(current.values())
            self._imports = {h: v for h, v in self._imports.items() if h in digests}
            self._verdicts = {h: v for h, v in self._verdicts.items() if h in digests}
        payload = {
            "format": FORMAT,
            "python": _PYTHON,
            "files": {p: [*sig, digest] for p, (sig, digest) in self._files.items()},
            "imports": self._imports,
            "verdicts": {
                h: None if v is None else [v.lineno, v.message] for h, v in self._verdicts.items()
            },
        }
        data = msgpack.packb(payload, use_bin_type=True)
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temp, self.path)
        except OSError as err:
            temp.unlink(missing_ok=True)
            logger.warning("cannot write the scan cache %s: %s", self.path, err)
            return
        self.dirty = False
        logger.debug(
            "wrote the scan cache %s (%d files, %d bytes)", self.path, len(self), len(data)
        )

    # -- questions and answers --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def hash_of(self, path: str, signature: StatSignature | None) -> str | None:
        """The content hash of ``path`` when its signature is the stored one, else None."""
        entry = self._files.get(path)
        if entry is None or signature is None or entry[0] != signature:
            return None
        return entry[1]

    def imports(self, digest: str) -> list[ImportStatement] | None:
        """The statements of the content with this hash, when known."""
        packed = self._imports.get(digest)
        if packed is None and self._released:
            self._reload()
            packed = self._imports.get(digest)
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
        if signature is None or not signature_trusted(signature, read_at):
            self._files.pop(path, None)
            return
        self._files[path] = (signature, digest)
        self.dirty = True

    def forget_file(self, path: str) -> None:
        if self._files.pop(path, None) is not None:
            self.dirty = True

    def remember_imports(self, digest: str, statements: Iterable[ImportStatement]) -> None:
        self._imports[digest] = pack_statements(statements)
        self.dirty = True

    def remember_packed(self, digest: str, packed: bytes) -> None:
        """Store statements already packed (as scan workers send them)."""
        self._imports[digest] = packed
        self.dirty = True

    def remember_verdict(self, digest: str, broken: Broken | None) -> None:
        self._verdicts[digest] = broken
        self.dirty = True
