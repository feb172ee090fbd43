"""Which files of the project an import statement names: Python's path finder, on the disk.

- ``import a.b.c``: the module ``a.b.c`` (``a/b/c.py`` or ``a/b/c/__init__.py``) and the
  ``__init__.py`` of its parent packages, since the statement binds ``a`` and runs them.
- ``from a.b import c``: the module ``a.b``, and ``a.b.c`` too when ``c`` is a submodule.
- ``from . import x``, ``from ..pkg.c import X``: the same, found from the file's folder, one folder
  up per extra dot.
- a folder without ``__init__.py`` (a namespace package) is the folder path itself.
- ``relmod.at('./f.py')`` and friends: the path, relative to the file's folder, the way the client
  resolves it.

Absolute names are looked up in the resolver's roots, first root first, the way Python searches
``sys.path``; names found under no root (the standard library, installed packages) are no
dependency of the project. Every path returned is absolute, symlink-free and exists.

A resolver remembers what it asked the disk, so thousands of files importing the same modules cost
one look each: make one per batch of files (the broker makes one per scan and one per batch of
changes), since the disk moves on.

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
    >>> _ = (root / 'util.py').write_text('X = 1\\n')
    >>> resolver = ImportResolver([str(root)])
    >>> found = resolver.resolve(str(root / 'app.py'), [ImportStatement('import', 0, 'util', ())])
    >>> [pathlib.Path(p).name for p in found]
    ['util.py']
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from relmod.server.imports import ImportStatement

__all__ = ["ImportResolver"]

logger = logging.getLogger(__name__)


class _Found(NamedTuple):
    """One module found on disk."""

    nodes: tuple[str, ...]  # its file, or for a namespace package its folders
    search: tuple[str, ...]  # where its submodules are; empty for a plain module
    is_namespace: bool


class ImportResolver:
    """Turns :class:`ImportStatement` lists into project files (see the module docstring).

    Args:
        roots: the folders absolute imports are searched in, in order.
        aliases: top-level package names that live elsewhere (setuptools ``package-dir``
            entries such as ``{"mypkg": "/p/lib"}``): ``import mypkg`` finds ``/p/lib``.
    """

    def __init__(self, roots: Sequence[str], aliases: dict[str, str] | None = None) -> None:
        self.roots = tuple(os.path.abspath(os.path.expanduser(root)) for root in roots)
        self.aliases = dict(aliases or {})
        self._isfile: dict[str, bool] = {}
        self._isdir: dict[str, bool] = {}
        self._realpath: dict[str, str] = {}
        self._absolute: dict[tuple[str, str, tuple[str, ...]], tuple[str, ...]] = {}

    # -- the disk, remembered -------------------------------------------------------------------

    def _file(self, path: str) -> bool:
        known = self._isfile.get(path)
        if known is None:
            known = self._isfile[path] = os.path.isfile(path)
        return known

    def _dir(self, path: str) -> bool:
        known = self._isdir.get(path)
        if known is None:
            known = self._isdir[path] = os.path.isdir(path)
        return known

    def _real(self, path: str) -> str:
        known = self._realpath.get(path)
        if known is None:
            # Interned: the graph holds each path once, however many files import it.
            known = self._realpath[path] = sys.intern(os.path.realpath(path))
        return known

    # -- statements -> files ---------------------------------------------------------------------

    def resolve(self, path: str, statements: Iterable[ImportStatement]) -> set[str]:
        """The files and folders the file at ``path`` depends on, through these statements.

        Never ``path`` itself; symlink-free; each exists.
        """
        folder = os.path.dirname(os.path.abspath(path))
        found: list[str] = []
        for statement in statements:
            kind = statement.kind
            if kind == "import" or (kind == "from" and not statement.level):
                key = (kind, statement.module, statement.names)
                nodes = self._absolute.get(key)
                if nodes is None:
                    if kind == "import":
                        nodes = tuple(self._import(statement.module))
                    else:
                        nodes = tuple(self._import_from(statement, folder))
                    self._absolute[key] = nodes
                found += nodes
            elif kind == "from":
                found += self._import_from(statement, folder)
            elif kind == "path":
                target = self._path_literal(statement.module, folder)
                if target is None:
                    logger.debug("%s loads %r, which names nothing on disk", path, statement.module)
                else:
                    found.append(target)
        real = {self._real(p) for p in found}
        real.discard(self._real(path))
        return real

    def _locate(self, name: str, search: Sequence[str]) -> _Found | None:
        """One name in the given folders, the way Python's path finder looks: a package or module
        in the first folder that has one wins, and folders without ``__init__.py`` only count
        when no folder has either."""
        portions: list[str] = []
        for folder in search:
            package = os.path.join(folder, name)
            init = os.path.join(package, "__init__.py")
            if self._file(init):
                return _Found((init,), (package,), False)
            module = package + ".py"
            if self._file(module):
                return _Found((module,), (), False)
            if self._dir(package):
                portions.append(package)
        if portions:
            return _Found(tuple(portions), tuple(portions), True)
        return None

    def _top(self, name: str) -> _Found | None:
        """A top-level name: a ``package-dir`` alias, or a search of the roots."""
        alias = self.aliases.get(name)
        if alias is not None:
            init = os.path.join(alias, "__init__.py")
            if self._file(init):
                return _Found((init,), (alias,), False)
        return self._locate(name, self.roots)

    def _resolve(self, dotted: str, search: Sequence[str] | None) -> list[_Found] | None:
        """Each package on the way to a dotted module name, then the module; None if any is
        missing. ``search`` None means the roots (an absolute name)."""
        chain: list[_Found] = []
        for index, part in enumerate(dotted.split(".")):
            if not part:
                return None
            if index == 0 and search is None:
                found = self._top(part)
            else:
                assert search is not None
                found = self._locate(part, search)
            if found is None:
                return None
            chain.append(found)
            search = found.search
        return chain

    def _import(self, dotted: str) -> list[str]:
        """``import a.b.c``: the module and the ``__init__.py`` files of its parents."""
        top = dotted.partition(".")[0]
        chain = self._resolve(dotted, None)
        if chain is None or (chain[0].is_namespace and top in sys.stdlib_module_names):
            # A project folder named like a standard package does not shadow it: Python prefers
            # a regular package on a later sys.path entry to a namespace folder on an earlier one.
            return []
        nodes = [node for parent in chain[:-1] if not parent.is_namespace for node in parent.nodes]
        return nodes + list(chain[-1].nodes)

    def _import_from(self, statement: ImportStatement, folder: str) -> list[str]:
        """``from X import a, b``: the module X, and X.a and X.b when they are submodules."""
        if statement.level:
            base = folder
            for _ in range(statement.level - 1):
                base = os.path.dirname(base)
            if statement.module:
                chain = self._resolve(statement.module, [base])
                if chain is None:
                    return []
                target = chain[-1]
            else:
                init = os.path.join(base, "__init__.py")
                if self._file(init):
                    target = _Found((init,), (base,), False)
                else:
                    target = _Found((base,), (base,), True)
        else:
            top = statement.module.partition(".")[0]
            chain = self._resolve(statement.module, None)
            if chain is None or (chain[0].is_namespace and top in sys.stdlib_module_names):
                return []
            target = chain[-1]
        nodes = list(target.nodes)
        for name in statement.names:
            if name != "*":
                submodule = self._locate(name, target.search)
                if submodule is not None:
                    nodes += submodule.nodes
        return nodes

    def _path_literal(self, literal: str, folder: str) -> str | None:
        """What a relmod path names, the way the client resolves it; None when nothing is there."""
        full = os.path.normpath(os.path.join(folder, os.path.expanduser(literal)))
        if not os.path.exists(full) and self._file(full + ".py"):
            full += ".py"
        if self._dir(full):
            init = os.path.join(full, "__init__.py")
            return init if self._file(init) else full
        return full if self._file(full) else None
