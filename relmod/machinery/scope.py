"""Which imported modules relmod makes reloading: the project's, never the installed ones.

A module is in scope when its source file lies under a project root (the broker's root after
``relmod.connect()``, a folder given to ``toplevel``), or anywhere outside the installation when
``relmod.enable()`` asked for every module. Never: the standard library, installed
(non-editable) packages, relmod itself, ``__main__``, and the module-name patterns the user
excludes (``relmod.configure(exclude=[...])`` or ``RELMOD_EXCLUDE=pkg.models,legacy.*``).
"""

from __future__ import annotations

import fnmatch
import os
import sys
import sysconfig
import threading
from collections.abc import Iterable

_INSTALLED = tuple(
    sorted(
        {
            os.path.realpath(p) + os.sep
            for p in (
                sys.prefix,
                sys.base_prefix,
                sys.exec_prefix,
                sysconfig.get_paths().get("stdlib", sys.prefix),
                sysconfig.get_paths().get("purelib", sys.prefix),
            )
        }
    )
)


def is_installed(path: str) -> bool:
    """Whether a file belongs to the Python installation or an installed package.

    Example:
        >>> import os; is_installed(os.__file__), is_installed('/home/me/project/app.py')
        (True, False)
    """
    return (
        path.startswith(_INSTALLED)
        or f"{os.sep}site-packages{os.sep}" in path
        or f"{os.sep}dist-packages{os.sep}" in path
    )


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]


class Scope:
    """The rules above, changed by connect/enable/configure from user threads.

    Example:
        >>> scope = Scope(); scope.add_root('/p')
        >>> scope.accepts('app.core', '/p/app/core.py'), scope.accepts('x', '/elsewhere/x.py')
        (True, False)
        >>> scope.exclude(['app.*']); scope.accepts('app.core', '/p/app/core.py')
        False
    """

    def __init__(self) -> None:
        self.roots: tuple[str, ...] = ()
        self.everything = False
        self._excluded: tuple[str, ...] = tuple(_patterns(os.environ.get("RELMOD_EXCLUDE", "")))
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork is free again."""
        self._lock = threading.Lock()

    def add_root(self, folder: str) -> None:
        """Make every module under ``folder`` reloading."""
        root = os.path.realpath(folder).rstrip(os.sep) + os.sep
        with self._lock:
            if root not in self.roots:
                self.roots = (*self.roots, root)

    def exclude(self, patterns: Iterable[str]) -> None:
        """Never reload modules whose name matches one of these ``fnmatch`` patterns."""
        with self._lock:
            self._excluded = tuple(dict.fromkeys((*self._excluded, *patterns)))

    @property
    def excluded(self) -> tuple[str, ...]:
        return self._excluded

    def is_excluded(self, name: str) -> bool:
        """Whether the user excluded this module (a pattern, or a package it belongs to)."""
        for pattern in self._excluded:
            if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + "."):
                return True
        return False

    def accepts(self, name: str, path: str) -> bool:
        """Whether the module ``name`` whose source is ``path`` (real, absolute) reloads."""
        if name == "__main__" or name == "relmod" or name.startswith("relmod."):
            return False
        if not path.endswith(".py") or is_installed(path):
            return False
        if not (self.everything or path.startswith(self.roots)):
            return False
        return not self.is_excluded(name)
