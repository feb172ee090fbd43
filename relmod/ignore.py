"""Which paths of a project relmod never watches or scans.

VCS folders, virtual environments, caches, build output and editor temporary files change often
and never hold code we run, so watching them only costs wake-ups.
"""

from __future__ import annotations

import os

IGNORED_DIRS: frozenset[str] = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".bzr",
        "_darcs",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        "site-packages",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".ipynb_checkpoints",
        "node_modules",
        "build",
        "dist",
        ".eggs",
        ".idea",
        ".vscode",
    }
)

# Editors write these next to the file they save: vim swap/backup, emacs lock/autosave, JetBrains.
IGNORED_SUFFIXES: tuple[str, ...] = (".swp", ".swo", ".swx", "~", ".tmp", ".bak", ".orig", ".pyc")
IGNORED_PREFIXES: tuple[str, ...] = (".#", "#", ".~")


def ignored_name(name: str, *, folder: bool) -> bool:
    """Whether a walk skips this entry, judged by its own name (its folders were judged already).

    >>> ignored_name('.git', folder=True), ignored_name('x.egg-info', folder=True)
    (True, True)
    >>> ignored_name('a.py', folder=False), ignored_name('a.py.swp', folder=False)
    (False, True)
    """
    if name in IGNORED_DIRS or (folder and name.endswith(".egg-info")):
        return True
    return name.endswith(IGNORED_SUFFIXES) or name.startswith(IGNORED_PREFIXES)


def is_ignored(path: str) -> bool:
    """Whether a path lies in an ignored folder or is an editor's temporary file.

    >>> is_ignored('/p/.git/index'), is_ignored('/p/pkg/a.py'), is_ignored('/p/a.py.swp')
    (True, False, True)
    """
    parts = path.replace(os.sep, "/").split("/")
    if any(part in IGNORED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
        return True
    return ignored_name(parts[-1], folder=False)
