"""Code objects for module sources: compiled by relmod, cached by content, never a stale .pyc.

Python's own ``__pycache__`` files are judged by the source's mtime (whole seconds) and size, so a
same-size edit saved within the second the .pyc was written runs the old code. relmod compiles
from the bytes it hashed and keeps its own cache keyed by that content hash (and the path, which
code objects carry), in ``$RELMOD_CACHE_DIR`` or ``~/.cache/relmod``: a cached code object is
valid by construction, and a first import costs a read, a hash and an unmarshal.

Shared by both sides: a client loads code through it, and a broker stores the code of every edit
it compile-checked (:func:`store_code`), so the processes that reload the edit next unmarshal it
instead of each compiling it again.

:func:`imports_of` reads what a module's code imports, and :func:`defined_names` which names its
top-level code binds, so a re-execution over the old namespace can drop the names the new
version no longer defines.
"""

from __future__ import annotations

import contextlib
import dis
import hashlib
import importlib.util
import logging
import marshal
import os
import sys
import time
import types
from collections.abc import Iterator

from relmod.sources import compile_source, content_hash
from relmod.stattrust import RACY_SECONDS

log = logging.getLogger(__name__)


def cache_dir() -> str | None:
    """Where compiled code is cached, or None when caching is off (``RELMOD_CACHE_DIR=``).

    A folder per entry format, Python bytecode version and optimization level (``-O``, which
    drops asserts and makes ``__debug__`` false at compile time), below ``$RELMOD_CACHE_DIR`` or
    ``~/.cache/relmod``, so versions of relmod and of Python, and processes run with and without
    ``-O``, can share the cache.
    """
    configured = os.environ.get("RELMOD_CACHE_DIR")
    key = (configured, sys.dont_write_bytecode)
    found = _cache_dirs.get(key, "")
    if found == "":  # asked once per setting (a first import asks for every module)
        found = _cache_dirs[key] = _find_cache_dir(configured)
    return found


def _find_cache_dir(configured: str | None) -> str | None:
    if configured is not None:
        if not configured:
            return None
        base = configured
    elif sys.dont_write_bytecode:
        return None
    else:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(home, "relmod")
    return os.path.join(base, f"{_FORMAT}-o{sys.flags.optimize}")


_cache_dirs: dict[tuple[str | None, bool], str | None] = {}


# v4: an entry holds the code and its import statements (imports_of).
_FORMAT = "code-v4-" + importlib.util.MAGIC_NUMBER.hex()


def _cache_file(folder: str, path: str, digest: str) -> str:
    key = hashlib.blake2b(f"{path}\0{digest}".encode("utf-8", "surrogateescape"), digest_size=16)
    name = key.hexdigest()
    return f"{folder}/{name[:2]}/{name[2:]}"


def load_code(path: str, data: bytes, digest: str) -> types.CodeType:
    """The code object of ``data`` (the bytes of ``path``, whose content hash is ``digest``).

    Raises:
        SyntaxError, ValueError, ...: whatever ``compile`` raises for these bytes.

    Example:
        >>> code = load_code('/p/a.py', b'x = 1\\n', 'h')
        >>> code.co_filename
        '/p/a.py'
    """
    folder = cache_dir()
    if folder is None:
        return compile_source(path, data)
    where = _cache_file(folder, path, digest)
    try:
        with open(where, "rb") as file:
            code = _unpack(file.read(), path)
        if code is not None:
            return code
    except (OSError, EOFError, ValueError, TypeError):
        pass  # not cached yet, or a torn file: compile below
    code = compile_source(path, data)
    _store(where, code)
    return code


Signature = tuple[int, int, int, int]
"""A file's (mtime_ns, ctime_ns, size, inode)."""


def store_code(
    path: str,
    digest: str,
    code: types.CodeType,
    *,
    replaces: str | None = None,
) -> None:
    """Cache ``code``, compiled from the bytes of ``path`` whose content hash is ``digest``.

    What :func:`load_code` stores on a miss, for code compiled elsewhere: the broker's compile
    check of an edit. ``replaces``: the content hash of the version this one replaces, whose
    entry is removed, so that a file edited a thousand times keeps one entry, not a thousand
    (should the old content come back, the broker's check stores it again; the entries by stat
    signature go with :func:`forget_signature`). Nothing happens when caching is off; a failed
    write is logged (debug).
    """
    folder = cache_dir()
    if folder is None:
        return
    _store(_cache_file(folder, path, digest), code)
    if replaces is not None and replaces != digest:
        with contextlib.suppress(OSError):
            os.unlink(_cache_file(folder, path, replaces))


def forget_signature(path: str, signature: Signature) -> None:
    """Remove the entry :func:`load_file_code` keeps for ``path`` at a stat signature the file
    no longer has (a save, or a touch, moved its ctime on: that entry can never be hit again)."""
    folder = cache_dir()
    if folder is not None:
        with contextlib.suppress(OSError):
            os.unlink(_stat_entry(folder, path, signature))


def cached_file(path: str, digest: str) -> str | None:
    """Where the cached code of ``path`` at content hash ``digest`` is, or None when it is not
    cached (or caching is off)."""
    folder = cache_dir()
    if folder is None:
        return None
    where = _cache_file(folder, path, digest)
    return where if os.path.exists(where) else None


RACY_NS = int(RACY_SECONDS * 1e9)
"""The stat-trust rule (:mod:`relmod.stattrust`) in nanoseconds, for the first-import fast path."""


def signature_of(st: os.stat_result) -> Signature:
    """A stat result's signature: what a save of the file moves."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def is_young(st: os.stat_result) -> bool:
    """Whether a stat result is too young (see :data:`RACY_NS`) to stand for the content alone."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_NS


def load_file_code(path: str) -> tuple[types.CodeType, str, Signature, bool]:
    """The code of the file at ``path``, its content hash, its stat signature, and whether that
    signature is too young (see :data:`RACY_NS`) to stand for the content alone.

    The fast path of a first import: when the file's stat signature (mtime and ctime in
    nanoseconds, size, inode) is older than :data:`RACY_NS` and was seen before, the hash and the
    code come from the cache without reading the source, as Python's own .pyc would, but judged
    by a signature that a same-size edit within the same second cannot keep. Otherwise the file
    is read and hashed, and the code comes from :func:`load_code`. The signature is taken before
    any read.

    Raises:
        OSError: the file cannot be read. SyntaxError and the like: it does not compile.
    """
    folder = cache_dir()
    st = os.stat(path)
    signature = signature_of(st)
    young = is_young(st)
    where = None
    if folder is not None and not young:
        where = _stat_entry(folder, path, signature)
        try:
            with open(where, "rb") as file:
                blob = file.read()
            digest = blob[:32].decode("ascii")
            code = _unpack(blob[32:], path)
            if code is not None:
                return code, digest, signature, young
        except (OSError, EOFError, ValueError, TypeError, UnicodeDecodeError):
            pass  # not seen with this signature yet
    with open(path, "rb") as file:
        data = file.read()
    digest = content_hash(data)
    code = load_code(path, data, digest)
    if where is not None:
        _store(where, code, prefix=digest.encode("ascii"))
    return code, digest, signature, young


def _stat_entry(folder: str, path: str, signature: Signature) -> str:
    """Where the code of ``path`` with this stat signature is cached (see load_file_code)."""
    mtime, ctime, size, inode = signature
    return _cache_file(folder + "/by-stat", f"{path}\0{mtime}:{ctime}:{size}:{inode}", "")


def _unpack(blob: bytes, path: str) -> types.CodeType | None:
    """The code of a cache entry (its imports memoised), or None if the entry is not one."""
    entry = marshal.loads(blob)
    if not (isinstance(entry, tuple) and len(entry) == 2):
        return None
    code, imports = entry
    if not (isinstance(code, types.CodeType) and code.co_filename == path):
        return None
    if type(imports) is tuple:  # (anything else is read from the code again when asked)
        if len(_handed) >= _HANDED_MAX:
            _handed.clear()
        _handed[id(code)] = (code, imports)
    return code


def _store(where: str, code: types.CodeType, prefix: bytes = b"") -> None:
    import tempfile  # a cache miss only

    try:
        os.makedirs(os.path.dirname(where), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(where), prefix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(prefix + marshal.dumps((code, _imports_kept(code))))
            os.replace(tmp, where)  # atomic: a reader sees the old file or the whole new one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        log.debug("cannot cache the code of %s: %s", code.co_filename, err)


def _op_byte(name: str) -> bytes | None:
    """The opcode called ``name`` as one byte, or None when this Python has no such opcode."""
    op = dis.opmap.get(name)
    return None if op is None else bytes([op])


_STORE_BYTES = (_op_byte("STORE_NAME"), _op_byte("STORE_GLOBAL"))
_EXTENDED_ARG = dis.EXTENDED_ARG
_IMPORT_STAR_BYTE = _op_byte("IMPORT_STAR")  # up to 3.11
_INTRINSIC_1_BYTE = _op_byte("CALL_INTRINSIC_1")  # 3.12+: argument 2 is import *
_INTRINSIC_IMPORT_STAR = 2


def _offsets(raw: bytes, op: bytes | None) -> Iterator[int]:
    """Where the instructions with opcode ``op`` start in raw bytecode (none for None).

    Found with ``bytes.find``, not a Python step per instruction: an opcode sits at an even
    offset and its argument after it, and the inline caches of ``co_code`` are zero bytes, so
    a match at an even offset is the instruction.
    """
    if op is None:
        return
    at = raw.find(op)
    while at >= 0:
        if at % 2 == 0:
            yield at
        at = raw.find(op, at + 1)


def defined_names(code: types.CodeType) -> tuple[frozenset[str], bool]:
    """The names a module's top-level code binds, and whether it runs ``from x import *``.

    Found with :func:`_offsets` in the raw instructions (``co_code`` is the unspecialised
    bytecode), as :func:`imports_of` does: this runs on every reload, and a walk over each
    instruction in Python cost a millisecond for a module of 200 functions.

    Example:
        >>> names, star = defined_names(compile('import os\\nx = 1\\ndef f(): pass', 'm', 'exec'))
        >>> sorted(names), star
        (['f', 'os', 'x'], False)
        >>> defined_names(compile('from os import *', 'm', 'exec'))[1]
        True
    """
    raw = code.co_code
    names = code.co_names
    bound = {names[_arg_at(raw, at)[0]] for op in _STORE_BYTES for at in _offsets(raw, op)}
    star = any(True for _ in _offsets(raw, _IMPORT_STAR_BYTE)) or any(
        _arg_at(raw, at)[0] == _INTRINSIC_IMPORT_STAR for at in _offsets(raw, _INTRINSIC_1_BYTE)
    )
    return frozenset(bound), star


_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_LOAD_CONST = dis.opmap["LOAD_CONST"]
_LOAD_SMALL_INT = dis.opmap.get("LOAD_SMALL_INT", -1)  # 3.14+: how a small level is loaded
_IMPORT_NAME_BYTE = bytes([_IMPORT_NAME])

_handed: dict[int, tuple[types.CodeType, tuple[str, ...]]] = {}
"""id(code) -> (code, its import statements), for code just read from the cache, until the
first :func:`imports_of` of it takes them (by identity: hashing a code object hashes all of it).
Held briefly, from a load to the end of the module's run; a load that never runs is dropped
when the table grows past :data:`_HANDED_MAX`."""
_HANDED_MAX = 256


def imports_of(code: types.CodeType) -> tuple[str, ...]:
    """The import statements in a module's code and in every function and class it defines.

    What the module can import when it runs, read from the bytecode the compiler writes for an
    import statement (``LOAD_CONST level; LOAD_CONST fromlist; IMPORT_NAME name``), so a
    first import needs no ``__import__`` hook to learn its dependencies; the ``IMPORT_NAME``
    instructions are found with :func:`_offsets`.

    Flat, in strings only (a first import reads a thousand of these; tuples per statement would
    cost the garbage collector more than the rest of the bookkeeping): each statement is the
    module it names, with one leading dot per level, followed by the names it imports from it,
    each after a colon. ``import a.b`` is ``'a.b'``; ``from ..p import x, y`` is ``'..p', ':x',
    ':y'``; ``from . import *`` is ``'.', ':*'``. The statements naming a module of the standard
    library (by its top-level name) come last, after :data:`STDLIB_MARK`: a reader that knows no
    module of the project shadows one can stop there.

    Example:
        >>> code = compile('import os\\nfrom . import c\\ndef f():\\n from .d import e', '', 'exec')
        >>> imports_of(code)
        ('.', ':c', '.d', ':e', '|', 'os')
    """
    handed = _handed.pop(id(code), None)
    if handed is not None and handed[0] is code:
        return handed[1]
    found: list[str] = []
    stdlib: list[str] = [STDLIB_MARK]
    stack = [code]
    while stack:
        current = stack.pop()
        raw = current.co_code
        for at in _offsets(raw, _IMPORT_NAME_BYTE):
            _decode_import(current, raw, at, found, stdlib)
        stack.extend(c for c in reversed(current.co_consts) if isinstance(c, types.CodeType))
    return tuple(found + stdlib) if len(stdlib) > 1 else tuple(found)


STDLIB_MARK = "|"
"""In :func:`imports_of`, where the statements naming standard library modules begin."""

STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ())) | {"__future__"}


def _imports_kept(code: types.CodeType) -> tuple[str, ...]:
    """:func:`imports_of`, leaving code just read from the cache its hand-over."""
    handed = _handed.get(id(code))
    if handed is not None and handed[0] is code:
        return handed[1]
    return imports_of(code)


def _decode_import(
    code: types.CodeType, raw: bytes, at: int, found: list[str], stdlib: list[str]
) -> None:
    name_index, at = _arg_at(raw, at)
    fromlist_op, fromlist_arg, at = _previous(raw, at)
    level_op, level_arg, _ = _previous(raw, at)
    if fromlist_op != _LOAD_CONST:
        return  # not the compiler's import statement shape: nothing to learn from it
    if level_op == _LOAD_CONST:
        level = code.co_consts[level_arg]
    elif level_op == _LOAD_SMALL_INT:
        level = level_arg
    else:
        return
    fromlist = code.co_consts[fromlist_arg]
    if not isinstance(level, int) or not (fromlist is None or isinstance(fromlist, tuple)):
        return
    name = code.co_names[name_index]
    into = stdlib if not level and name.partition(".")[0] in STDLIB_NAMES else found
    into.append("." * level + name)
    into.extend(":" + entry for entry in fromlist or ())


def _arg_at(raw: bytes, at: int) -> tuple[int, int]:
    """The full argument of the instruction at ``at`` and where its EXTENDED_ARG prefix begins."""
    arg = raw[at + 1]
    shift = 8
    while at >= 2 and raw[at - 2] == _EXTENDED_ARG:
        at -= 2
        arg |= raw[at + 1] << shift
        shift += 8
    return arg, at


def _previous(raw: bytes, at: int) -> tuple[int, int, int]:
    """The opcode and argument of the instruction before the one starting at ``at``."""
    if at < 2:
        return -1, 0, 0
    arg, start = _arg_at(raw, at - 2)
    return raw[at - 2], arg, start
