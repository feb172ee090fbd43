"""Static import scan: which files of the project a source file depends on.

:func:`scan_imports` finds a file's import statements (:mod:`relmod.server.imports`: a fast reader
that parses only the import statements, with a whole-file ``ast`` parse where it cannot be sure)
and resolves them to files under the project's import roots (:mod:`relmod.server.resolve`). The
broker keeps the answer as the file's ``"static"`` edges in the
:class:`~relmod.graph.DependencyGraph`. The scan reads every import in the file, wherever it sits
(inside functions, ``try`` blocks, classes), and the calls that load relmod modules by path:
``relmod.at('./f.py')``, ``relmod.use(...)`` and ``relmod.imp('./f.py as name', ...)``. Imports
under ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` are no dependencies.

:func:`iter_python_files` lists the files a project's scan covers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

from relmod.ignore import ignored_name
from relmod.server.imports import find_statements, statements_from_ast
from relmod.server.resolve import ImportResolver

__all__ = ["iter_python_files", "scan_imports"]

log = logging.getLogger(__name__)


def scan_imports(
    path: str,
    data: bytes,
    *,
    roots: Sequence[str],
    exact: bool = False,
    resolver: ImportResolver | None = None,
) -> set[str]:
    """The files and folders of the project that the source at ``path`` depends on.

    Args:
        path: the file the source comes from; relative imports and relmod path literals resolve
            against its folder.
        data: the source bytes (a coding cookie and a BOM are honoured).
        roots: the folders absolute imports are searched in, in order.
        exact: parse the whole file with ``ast`` (the reference), instead of the fast reader.
            Both give the same answer for a file that parses; for one that does not, the
            reference finds nothing and the fast reader may find the imports it could read.
        resolver: a resolver to reuse (its roots win over ``roots``), for many files at once.

    Returns:
        Absolute, symlink-free paths that exist: module files, package ``__init__.py`` files and
        namespace folders. Never ``path`` itself.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
        >>> _ = (root / 'util.py').write_text('X = 1\\n')
        >>> deps = scan_imports(str(root / 'app.py'), b'import os, util\\n', roots=[str(root)])
        >>> [pathlib.Path(p).name for p in deps]
        ['util.py']
    """
    statements = statements_from_ast(data, path) if exact else find_statements(data, path)
    if statements is None:
        log.debug("no static dependencies for %s: it does not parse", path)
        return set()
    return (resolver or ImportResolver(roots)).resolve(path, statements)


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
    # (folder, its real path): an entry that is no link has its folder's real path plus its name,
    # so only links pay for realpath (a lstat per path component).
    todo = [(top, real_top)]
    while todo:
        folder, real_folder = todo.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            log.debug("skipping folder %s: cannot list it (%s)", folder, err)
            continue
        subfolders: list[tuple[str, str]] = []
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir():
                    if ignored_name(name, folder=True):
                        continue
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if _within(real, real_top) or _within(real_top, real):
                            log.debug("not following %s: it links back into %s", entry.path, top)
                            continue
                    else:
                        real = os.path.join(real_folder, name)
                    info = entry.stat()
                    if (info.st_dev, info.st_ino) in walked:
                        continue
                    walked.add((info.st_dev, info.st_ino))
                    subfolders.append((entry.path, real))
                elif name.endswith(".py") and entry.is_file():
                    if ignored_name(name, folder=False):
                        continue
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                    else:
                        real = os.path.join(real_folder, name)
                    if real not in yielded:
                        yielded.add(real)
                        yield real
            except OSError as err:  # vanished mid-walk, or a permission problem
                log.debug("skipping %s: %s", entry.path, err)
        todo.extend(reversed(subfolders))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
