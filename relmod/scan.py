"""Static import scan: which files of the project a source file depends on, read with ``ast``.

The broker scans each file when it first sees it and after every change, and keeps the answer as
the file's ``"static"`` edges in the :class:`~relmod.graph.DependencyGraph`. The scan reads every
import in the file, wherever it sits (inside functions, ``try`` blocks, ``if TYPE_CHECKING:``),
and the calls that load relmod modules by path: ``relmod.at('./f.py')``, ``relmod.use(...)`` and
``relmod.imp('./f.py as name', ...)``.

What an import depends on:

- ``import a.b.c``: the module ``a.b.c`` (``a/b/c.py`` or ``a/b/c/__init__.py``) and the
  ``__init__.py`` of its parent packages, since the statement binds ``a`` and runs them.
- ``from a.b import c``: the module ``a.b``, and ``a.b.c`` too when ``c`` is a submodule.
- ``from . import x``, ``from ..pkg.c import X``: the same, found from the file's folder, one folder
  up per extra dot.
- a folder without ``__init__.py`` (a namespace package) is the folder path itself.

Absolute names are looked up under the project's roots, first root first, the way Python searches
``sys.path``; names found under no root (the standard library, installed packages) are no
dependency of the project. Every path returned is absolute, symlink-free and exists.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from relmod.ignore import is_ignored

__all__ = ["iter_python_files", "scan_imports"]

log = logging.getLogger(__name__)

_LOADERS = frozenset({"at", "use", "imp"})  # relmod functions that take a path literal
_RELMOD_MODULES = frozenset({"relmod", "relmod.api"})
_PARSE_LOCK = threading.Lock()


def scan_imports(path: str, data: bytes, *, roots: Sequence[str]) -> set[str]:
    """The files and folders of the project that the source at ``path`` depends on.

    Args:
        path: the file the source comes from; relative imports and relmod path literals resolve
            against its folder.
        data: the source bytes (a coding cookie and a BOM are honoured).
        roots: the folders absolute imports are searched in, in order.

    Returns:
        Absolute, symlink-free paths that exist: module files, package ``__init__.py`` files and
        namespace folders. Never ``path`` itself. Empty when the source does not parse.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
        >>> _ = (root / 'util.py').write_text('X = 1\\n')
        >>> deps = scan_imports(str(root / 'app.py'), b'import os, util\\n', roots=[str(root)])
        >>> [pathlib.Path(p).name for p in deps]
        ['util.py']
    """
    try:
        tree = _parse(path, data)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        log.debug("no static dependencies for %s: it does not parse (%s)", path, err)
        return set()
    folder = os.path.dirname(os.path.abspath(path))
    search = [os.path.abspath(os.path.expanduser(root)) for root in roots]
    modules, loaders = _relmod_names(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_import(alias.name, search))
        elif isinstance(node, ast.ImportFrom):
            found.update(_import_from(node, folder, search))
        elif isinstance(node, ast.Call):
            literal = _loader_literal(node, modules, loaders)
            if literal is not None:
                target = _path_literal(literal, folder)
                if target is None:
                    log.debug("%s loads %r, which names nothing on disk", path, literal)
                else:
                    found.add(target)
    real = {os.path.realpath(p) for p in found}
    real.discard(os.path.realpath(path))
    return real


def iter_python_files(root: str) -> Iterator[str]:
    """Every ``.py`` file under ``root``, as absolute symlink-free paths, each once.

    Folders and files that :func:`relmod.ignore.is_ignored` names (VCS folders, virtual
    environments, caches, editor temporaries) are skipped, judged by their path below ``root``.
    A symlinked folder is followed only when it leads outside ``root`` and is not an ancestor of
    it, and no folder is walked twice, so symlink loops end. Each folder's files come in name
    order, before its subfolders.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
        >>> (root / '.git').mkdir(); _ = (root / '.git' / 'hook.py').write_text('')
        >>> _ = (root / 'a.py').write_text(''); _ = (root / 'notes.txt').write_text('')
        >>> [pathlib.Path(p).name for p in iter_python_files(str(root))]
        ['a.py']
    """
    top = os.path.abspath(os.path.expanduser(root))
    real_top = os.path.realpath(top)
    try:
        st = os.stat(top)
    except OSError as err:
        log.debug("no Python files under %s: %s", top, err)
        return
    walked = {(st.st_dev, st.st_ino)}
    yielded: set[str] = set()
    todo = [(top, "")]  # (folder, its path below root)
    while todo:
        folder, below = todo.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            log.debug("skipping folder %s: cannot list it (%s)", folder, err)
            continue
        subfolders: list[tuple[str, str]] = []
        for entry in entries:
            rel = os.path.join(below, entry.name) if below else entry.name
            if is_ignored(rel):
                continue
            try:
                if entry.is_dir():
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if _within(real, real_top) or _within(real_top, real):
                            log.debug("not following %s: it links back into %s", entry.path, top)
                            continue
                    info = entry.stat()
                    if (info.st_dev, info.st_ino) in walked:
                        continue
                    walked.add((info.st_dev, info.st_ino))
                    subfolders.append((entry.path, rel))
                elif entry.name.endswith(".py") and entry.is_file():
                    real = os.path.realpath(entry.path)
                    if real not in yielded:
                        yielded.add(real)
                        yield real
            except OSError as err:  # vanished mid-walk, or a permission problem
                log.debug("skipping %s: %s", entry.path, err)
        todo.extend(reversed(subfolders))


# -- parsing ----------------------------------------------------------------------------------


def _parse(path: str, data: bytes) -> ast.Module:
    # Parsing warns about such things as invalid escape sequences. The broker scans a file on
    # every save, so the warning would repeat what the user sees when running the file; and
    # under `-W error` it would become a SyntaxError and cost the file all its edges. Warning
    # filters are process-wide, so scans take turns; the scan is the broker's, whose other
    # threads do not touch the filters.
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(data, filename=path)


def _relmod_names(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """The local names bound to relmod, and to its at/use/imp (local name -> function)."""
    modules = {"relmod"}
    loaders: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "relmod":
                    modules.add(alias.asname or "relmod")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in _RELMOD_MODULES:
            for alias in node.names:
                if alias.name in _LOADERS:
                    loaders[alias.asname or alias.name] = alias.name
    return modules, loaders


def _loader_literal(call: ast.Call, modules: set[str], loaders: dict[str, str]) -> str | None:
    """The path literal of a relmod.at/use/imp call, without an imp ``as name``; else None."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id not in modules or func.attr not in _LOADERS:
            return None
        kind = func.attr
    elif isinstance(func, ast.Name) and func.id in loaders:
        kind = loaders[func.id]
    else:
        return None
    arg: ast.expr | None = call.args[0] if call.args else None
    if arg is None:
        keyword = "spec" if kind == "imp" else "path"
        arg = next((k.value for k in call.keywords if k.arg == keyword), None)
    if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
        return None  # a computed path: only the runtime edge will know it
    literal = arg.value
    if kind == "imp":
        head, sep, _alias = literal.rpartition(" as ")
        if sep:
            literal = head
    return literal.strip()


def _path_literal(literal: str, folder: str) -> str | None:
    """What a relmod path names, the way the client resolves it; None when nothing is there."""
    full = os.path.normpath(os.path.join(folder, os.path.expanduser(literal)))
    if not os.path.exists(full) and os.path.isfile(full + ".py"):
        full += ".py"
    if os.path.isdir(full):
        init = os.path.join(full, "__init__.py")
        return init if os.path.isfile(init) else full
    return full if os.path.isfile(full) else None


# -- resolving module names ----------------------------------------------------------------------


class _Found(NamedTuple):
    """One module found on disk."""

    nodes: list[str]  # its file, or for a namespace package its folders
    search: list[str]  # where its submodules are; empty for a plain module
    is_namespace: bool


def _locate(name: str, search: Sequence[str]) -> _Found | None:
    """One name in the given folders, the way Python's path finder looks: a package or module in
    the first folder that has one wins, and folders without ``__init__.py`` only count when no
    folder has either."""
    portions: list[str] = []
    for folder in search:
        package = os.path.join(folder, name)
        init = os.path.join(package, "__init__.py")
        if os.path.isfile(init):
            return _Found([init], [package], False)
        module = package + ".py"
        if os.path.isfile(module):
            return _Found([module], [], False)
        if os.path.isdir(package):
            portions.append(package)
    if portions:
        return _Found(portions, portions, True)
    return None


def _resolve(dotted: str, search: Sequence[str]) -> list[_Found] | None:
    """Each package on the way to a dotted module name, then the module; None if any is missing."""
    chain: list[_Found] = []
    for part in dotted.split("."):
        found = _locate(part, search) if part else None
        if found is None:
            return None
        chain.append(found)
        search = found.search
    return chain


def _import(dotted: str, roots: Sequence[str]) -> list[str]:
    """``import a.b.c``: the module and the ``__init__.py`` files of its parents."""
    top = dotted.partition(".")[0]
    chain = _resolve(dotted, roots)
    if chain is None or (chain[0].is_namespace and top in sys.stdlib_module_names):
        # A project folder named like a standard package does not shadow it: Python prefers
        # a regular package on a later sys.path entry to a namespace folder on an earlier one.
        return []
    nodes = [node for parent in chain[:-1] if not parent.is_namespace for node in parent.nodes]
    return nodes + chain[-1].nodes


def _import_from(node: ast.ImportFrom, folder: str, roots: Sequence[str]) -> list[str]:
    """``from X import a, b``: the module X, and X.a and X.b when they are submodules."""
    if node.level:
        base = folder
        for _ in range(node.level - 1):
            base = os.path.dirname(base)
        if node.module:
            chain = _resolve(node.module, [base])
            if chain is None:
                return []
            target = chain[-1]
        else:
            init = os.path.join(base, "__init__.py")
            if os.path.isfile(init):
                target = _Found([init], [base], False)
            else:
                target = _Found([base], [base], True)
    else:
        if node.module is None:  # cannot happen for level 0; keeps the type checker sure
            return []
        top = node.module.partition(".")[0]
        chain = _resolve(node.module, roots)
        if chain is None or (chain[0].is_namespace and top in sys.stdlib_module_names):
            return []
        target = chain[-1]
    nodes = list(target.nodes)
    for alias in node.names:
        if alias.name != "*":
            submodule = _locate(alias.name, target.search)
            if submodule is not None:
                nodes += submodule.nodes
    return nodes


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
