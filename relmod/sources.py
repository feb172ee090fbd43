"""Reading and judging source files: their bytes, content hash, text, and whether they compile.

relmod decides that a file changed by the hash of its bytes, not by its timestamp, so an identical
save or a ``touch`` reloads nothing. A file that no longer compiles is described by a
:class:`Broken` record, which the broker sends to clients and a client shows to its user; the last
good version of the module stays in use until a fixed version is saved.

Sources are always compiled from bytes, never from text decoded here, so Python itself honours a
PEP 263 coding cookie (``# -*- coding: latin-1 -*-``) and a UTF-8 byte order mark.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import logging
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "Broken",
    "StatSignature",
    "check_compiles",
    "compile_checked",
    "compile_source",
    "content_hash",
    "decode_source",
    "display_path",
    "file_hash",
    "read_source",
    "stat_signature",
]

log = logging.getLogger(__name__)

# PEP 263: the cookie must sit in a comment on line 1 or 2.
_CODING_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")


def read_source(path: str) -> bytes:
    """The bytes of a source file.

    Args:
        path: the file to read.

    Returns:
        Its whole content.

    Raises:
        OSError: the file is missing, a folder, or unreadable; the error is not wrapped.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp(), 'a.py'); _ = f.write_bytes(b'x = 1\\n')
        >>> read_source(str(f))
        b'x = 1\\n'
    """
    with open(path, "rb") as file:
        return file.read()


def content_hash(data: bytes) -> str:
    """The hex digest (32 characters) of BLAKE2b with a 16-byte digest of ``data``.

    Example:
        >>> len(content_hash(b'x = 1\\n')), content_hash(b'a') == content_hash(b'a')
        (32, True)
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: str) -> str | None:
    """The :func:`content_hash` of a file, or None when it cannot be read.

    A missing file, a folder and an unreadable file all give None; the reason is logged at debug
    level.

    Example:
        >>> import pathlib, tempfile
        >>> folder = tempfile.mkdtemp(); f = pathlib.Path(folder, 'a.py')
        >>> _ = f.write_bytes(b'a'); file_hash(str(f)) == content_hash(b'a')
        True
        >>> file_hash(folder) is None, file_hash(str(f) + '.gone') is None
        (True, True)
    """
    try:
        data = read_source(path)
    except FileNotFoundError:
        log.debug("no hash for %s: there is no such file", path)
        return None
    except IsADirectoryError:
        log.debug("no hash for %s: it is a folder", path)
        return None
    except OSError as err:
        # On Windows a folder gives PermissionError; a file may vanish or be locked mid-save.
        log.debug("no hash for %s: cannot read it (%s)", path, err)
        return None
    return content_hash(data)


def decode_source(data: bytes) -> str:
    """The text of source bytes, as Python would read it.

    Honours a PEP 263 coding cookie and a UTF-8 byte order mark, defaults to UTF-8, and turns
    ``\\r\\n`` line ends into ``\\n``.

    Raises:
        SyntaxError: the coding cookie names an unknown encoding or contradicts the BOM.
        UnicodeDecodeError: the bytes are not valid in the file's encoding.

    Example:
        >>> decode_source(b"# coding: latin-1\\nname = '\\xe9'\\n").splitlines()[1]
        "name = 'é'"
        >>> decode_source(b'\\xef\\xbb\\xbfx = 1\\r\\n')
        'x = 1\\n'
    """
    return importlib.util.decode_source(data)


def compile_source(path: str, data: bytes) -> types.CodeType:
    """Compile source bytes to a module code object whose filename is ``path``.

    The bytes go to ``compile`` as they are, so coding cookies and a BOM work, and the code does
    not inherit the ``from __future__`` flags of relmod itself.

    Raises:
        SyntaxError: the source does not compile.
        ValueError: the source holds null bytes (older Pythons raise this, newer a SyntaxError).

    Example:
        >>> code = compile_source('/p/a.py', b'x = 6 * 7\\n')
        >>> ns = {}; exec(code, ns); ns['x'], code.co_filename
        (42, '/p/a.py')
    """
    return compile(data, path, "exec", dont_inherit=True)


@dataclass(frozen=True)
class Broken:
    """A source file that cannot be loaded, and why.

    Attributes:
        path: the absolute path of the file.
        lineno: the line of the problem, when known.
        message: the error, as ``"<ExceptionName>: <what Python said>"``.

    Example:
        >>> broken = Broken('/p/pkg/a.py', 12, 'SyntaxError: invalid syntax')
        >>> print(broken.describe(relative_to='/p'))  # doctest: +NORMALIZE_WHITESPACE
        Cannot reload ./pkg/a.py: SyntaxError at line 12: invalid syntax. The last good version
        stays in use; save a fixed version to reload.
    """

    path: str
    lineno: int | None
    message: str

    def describe(self, relative_to: str | None = None) -> str:
        """A full sentence for the user: what is wrong, where, and what to do.

        Args:
            relative_to: show the path relative to this folder (as ``./sub/file.py``); paths
                outside it, and all paths when None, are shown absolute.

        Example:
            >>> Broken('/p/a.py', None, 'SyntaxError: unknown encoding: x').describe()[:58]
            'Cannot reload /p/a.py: SyntaxError: unknown encoding: x. T'
        """
        where = display_path(self.path, relative_to)
        what = self.message.strip()
        if self.lineno is not None:
            kind, sep, text = what.partition(": ")
            if sep and kind.isidentifier():
                what = f"{kind} at line {self.lineno}: {text}"
            else:
                what = f"{what} (line {self.lineno})"
        what = what.rstrip(". ")
        return (
            f"Cannot reload {where}: {what}. The last good version stays in use; "
            "save a fixed version to reload."
        )

    def to_wire(self) -> dict[str, Any]:
        """The record as a plain dict with keys ``path``, ``lineno`` and ``message``.

        Example:
            >>> Broken('/p/a.py', 3, 'SyntaxError: invalid syntax').to_wire()
            {'path': '/p/a.py', 'lineno': 3, 'message': 'SyntaxError: invalid syntax'}
        """
        return {"path": self.path, "lineno": self.lineno, "message": self.message}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Broken:
        """The record from a dict made by :meth:`to_wire`.

        Raises:
            ValueError: a key is missing or holds a value of the wrong type.

        Example:
            >>> b = Broken('/p/a.py', None, 'SyntaxError: x'); Broken.from_wire(b.to_wire()) == b
            True
        """
        try:
            path, lineno, message = wire["path"], wire["lineno"], wire["message"]
        except KeyError as err:
            raise ValueError(
                f"A broken-file record lacks the key {err.args[0]!r}; it needs path, lineno "
                "and message."
            ) from err
        if not isinstance(path, str) or not isinstance(message, str):
            raise ValueError(
                f"A broken-file record needs a string path and message, not {path!r} and "
                f"{message!r}."
            )
        if lineno is not None and (isinstance(lineno, bool) or not isinstance(lineno, int)):
            raise ValueError(
                f"A broken-file record needs an integer or None lineno, not {lineno!r}."
            )
        return cls(path, lineno, message)


def check_compiles(path: str, data: bytes) -> Broken | None:
    """Whether source bytes compile: None when they do, else a :class:`Broken` record.

    Syntax errors, null bytes, unknown coding cookies and bytes that are invalid in the file's
    encoding all give a record, with the line of the problem when it can be found. The check runs
    under this process's warning filters: with warnings turned into errors (``python -W error``)
    a source whose compilation warns counts as broken, just as loading it would fail.

    Example:
        >>> check_compiles('/p/a.py', b'x = 1\\n') is None
        True
        >>> check_compiles('/p/a.py', b'x = 1\\ndef f(:\\n')
        Broken(path='/p/a.py', lineno=2, message='SyntaxError: invalid syntax')
    """
    return compile_checked(path, data)[1]


def compile_checked(path: str, data: bytes) -> tuple[types.CodeType | None, Broken | None]:
    """:func:`check_compiles`, keeping the code: ``(code, None)``, or ``(None, broken)``.

    Example:
        >>> code, broken = compile_checked('/p/a.py', b'x = 1\\n'); code.co_filename, broken
        ('/p/a.py', None)
    """
    try:
        return compile_source(path, data), None
    except (SyntaxError, ValueError, RecursionError) as err:
        # ValueError covers null bytes on older Pythons and UnicodeDecodeError; RecursionError a
        # source nested too deeply for the compiler.
        broken = Broken(path, _best_lineno(err, data), _message(err))
        log.debug("%s does not compile: %s", path, broken.message)
        return None, broken


class StatSignature(NamedTuple):
    """What ``os.stat`` says of a file; a different signature means the file may have changed."""

    mtime_ns: int
    ctime_ns: int
    size: int
    ino: int


def stat_signature(path: str) -> StatSignature | None:
    """The :class:`StatSignature` of a file (following symlinks), or None when it cannot be stat'ed.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp(), 'a.py'); _ = f.write_bytes(b'abc')
        >>> stat_signature(str(f)).size, stat_signature(str(f) + '.gone')
        (3, None)
    """
    try:
        st = os.stat(path)
    except OSError as err:
        log.debug("no stat signature for %s: %s", path, err)
        return None
    return StatSignature(st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def display_path(path: str, relative_to: str | None = None) -> str:
    """How to show a path to the user: ``./sub/file.py`` when inside ``relative_to``.

    Paths outside ``relative_to``, and every path when it is None, are shown as they are.

    Example:
        >>> display_path('/p/pkg/a.py', '/p'), display_path('/q/b.py', '/p')
        ('./pkg/a.py', '/q/b.py')
    """
    if relative_to is None:
        return path
    try:
        rel = os.path.relpath(path, relative_to)
    except ValueError:  # another drive on Windows
        return path
    if rel == os.curdir:
        return os.curdir
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path
    return os.curdir + os.sep + rel


def _message(err: BaseException) -> str:
    """``"<ExceptionName>: <text>"`` for an error raised while compiling."""
    text = err.msg if isinstance(err, SyntaxError) else str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _best_lineno(err: BaseException, data: bytes) -> int | None:
    """The line a compile error points at, searching the bytes when the error does not say."""
    if isinstance(err, SyntaxError) and err.lineno is not None and err.lineno > 0:
        return err.lineno
    if isinstance(err, UnicodeDecodeError):
        return _line_at(err.object, err.start)
    null = data.find(b"\x00")
    if null >= 0:
        return _line_at(data, null)
    # An encoding problem reported without a line (a bad cookie, or bytes invalid in the declared
    # encoding): decoding the bytes ourselves says where.
    try:
        decode_source(data)
    except UnicodeDecodeError as decode_err:
        return _line_at(decode_err.object, decode_err.start)
    except SyntaxError:
        lines = data.removeprefix(codecs.BOM_UTF8).splitlines()[:2]
        for lineno, line in enumerate(lines, start=1):
            if _CODING_COOKIE.match(line):
                return lineno
    return None


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
