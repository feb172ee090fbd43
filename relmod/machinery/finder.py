"""The one door from Python's import system into the registry.

:class:`ProjectFinder` sits first on ``sys.meta_path``. For every import it asks the finders
behind it (path entries, editable-install finders, anything), takes the spec they found, and when
the spec's file is in scope (:class:`~relmod.machinery.scope.Scope`) swaps its loader for a
:class:`ProjectLoader`, whose ``exec_module`` is :meth:`Registry.exec_first`. Whatever put the
module on the path, the module is then an ordinary module in ``sys.modules`` under its dotted
name, and a reloading one.

It also serves two kinds of names of its own: those given to :func:`relmod.toplevel` (a file or
folder under a name of the user's choice), and the ``relmod.files.*`` names of modules loaded by
path, so that pickle can import them again, in this process or another.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from typing import Any

from relmod.machinery.registry import Registry, normalize, path_of_module_name


class ProjectLoader(importlib.abc.Loader):
    """The loader of a project module: relmod runs it; everything else asks the original."""

    def __init__(self, registry: Registry, original: Any, path: str) -> None:
        self._registry = registry
        self._original = original
        self.path = path

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._original, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        self._registry.exec_first(module, self.path)

    def get_code(self, fullname: str) -> types.CodeType | None:
        """Fresh code for ``runpy`` and friends (never a stale .pyc)."""
        from relmod.codecache import load_code
        from relmod.sources import content_hash

        data = self._registry.sources.read(self.path)
        return load_code(self.path, data, content_hash(data))

    def __getattr__(self, name: str) -> Any:
        # get_source, get_data, is_package, get_resource_reader, ...: the original's.
        return getattr(self._original, name)

    def __repr__(self) -> str:
        return f"<relmod loader of {self.path}>"


class _Existing(importlib.abc.Loader):
    """Hands the import system a module that already exists under another name: one per file."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        """It already ran."""


class ProjectFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: makes the project's modules reloading, whoever finds them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.toplevel: dict[str, str] = {}  # name -> file or folder given to toplevel()
        self._lock = threading.Lock()

    def install(self) -> None:
        """Put the finder first on ``sys.meta_path`` (idempotent)."""
        with self._lock:
            if not sys.meta_path or sys.meta_path[0] is not self:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                sys.meta_path.insert(0, self)

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork is free again."""
        self._lock = threading.Lock()

    def uninstall(self) -> None:
        with self._lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)

    def register(self, name: str, path: str) -> None:
        """Serve ``import name`` (and ``name.sub`` for a folder) from ``path``."""
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a valid module name; use letters, digits and _.")
        self.toplevel[name] = path
        if self.registry.sources.kind(path) == "folder":
            self.registry.scope.add_root(path)  # its submodules, found through __path__
        self.install()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> ModuleSpec | None:
        if fullname in self.toplevel:
            return self._toplevel_spec(fullname, self.toplevel[fullname])
        by_path = path_of_module_name(fullname)
        if by_path is not None:
            return self._path_module_spec(fullname, by_path)
        spec = self._others(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        origin = spec.origin
        if not isinstance(origin, str) or not origin.endswith(".py") or not spec.has_location:
            return spec
        scope = self.registry.scope
        if not (scope.roots or scope.everything):
            return spec
        real = self.registry.realpath(origin)
        existing = self.registry._records.get(real)
        if existing is not None and existing.name != fullname:
            spec.loader = _Existing(existing.module)  # one module per file, under both names
            self.registry.note_alias(fullname)
            return spec
        if scope.accepts(fullname, real):
            spec.loader = ProjectLoader(self.registry, spec.loader, real)
        return spec

    def _others(self, fullname: str, path: Sequence[str] | None, target: Any) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None

    def _toplevel_spec(self, fullname: str, path: str) -> ModuleSpec | None:
        existing = self.registry._records.get(self.registry._aliases.get(path, path))
        if existing is not None and existing.name != fullname:
            # Loaded by path already (relmod.at): the same module serves the import statement.
            is_pkg = existing.folder is not None
            self.registry.note_alias(fullname)
            spec = ModuleSpec(fullname, _Existing(existing.module), origin=path, is_package=is_pkg)
            if is_pkg:
                spec.submodule_search_locations = [path]
            return spec
        sources = self.registry.sources
        if sources.kind(path) == "folder":
            init = os.path.join(path, "__init__.py")
            if sources.kind(init) != "file":
                spec = ModuleSpec(fullname, None, is_package=True)
                spec.submodule_search_locations = [path]
                return spec
            return importlib.util.spec_from_file_location(
                fullname,
                init,
                loader=ProjectLoader(self.registry, None, normalize(init)),
                submodule_search_locations=[path],
            )
        return importlib.util.spec_from_file_location(
            fullname, path, loader=ProjectLoader(self.registry, None, normalize(path))
        )

    def _path_module_spec(self, fullname: str, path: str) -> ModuleSpec | None:
        # pickle imports a module loaded by path under its relmod.files name, perhaps in another
        # process: load the path (or take the module already loaded) and hand it over.
        try:
            module = self.registry.load(path if path.endswith(".py") else path.rstrip("/"))
        except ImportError:
            return None
        return ModuleSpec(fullname, _Existing(module), origin=path)
