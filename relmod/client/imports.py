"""How the import statement reaches relmod modules.

- Relative imports (``from . import b``, ``from ..pkg.c import X``, ``from .b import *``) inside a
  relmod module, or in a namespace given to :func:`install` (``__main__``, a notebook), resolve
  against that module's folder and are recorded as dependency edges.
- :class:`ToplevelFinder` on ``sys.meta_path`` serves names registered with ``toplevel`` to the
  ordinary ``import`` statement.

Both need the interpreter's ``__import__`` to pass through :func:`relmod_import`; it is installed
once (:func:`install_hook`) and delegates every other import to the previous ``__import__``.
"""

from __future__ import annotations

import builtins
import importlib.abc
import os
import sys
import threading
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Any

from relmod.client import modules as m
from relmod.client.registry import Registry, normalize

ImportObserver = Callable[[dict[str, Any] | None, str, Sequence[str], int, types.ModuleType], None]


class ImportHook:
    """The ``__import__`` replacement: relmod-aware relative imports, then the original."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.original: Callable[..., types.ModuleType] = builtins.__import__
        self.installed_namespaces: dict[int, str] = {}  # id(globals) -> folder, for install()
        self.observers: list[ImportObserver] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        """Put the hook in ``builtins.__import__`` (idempotent)."""
        with self._lock:
            if getattr(builtins.__import__, "__self__", None) is not self:
                self.original = builtins.__import__
                builtins.__import__ = self.__call__  # type: ignore[assignment]

    def uninstall(self) -> None:
        """Restore the ``__import__`` we replaced (tests use this)."""
        with self._lock:
            if getattr(builtins.__import__, "__self__", None) is self:
                builtins.__import__ = self.original

    def __call__(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level > 0 and globals is not None:
            base = self._base_folder(globals)
            if base is not None:
                return self._relative(base, globals, name, fromlist or (), level)
        module = self.original(name, globals, locals, fromlist, level)
        if globals is not None:
            importer = self.registry.record_of_namespace(globals)
            if importer is not None:
                target = self.registry.record_of(module)
                if target is not None:
                    self.registry.record_edge(importer.key, target.key)
        for observer in self.observers:
            observer(globals, name, fromlist or (), level, module)
        return module

    def _base_folder(self, globals: dict[str, Any]) -> str | None:
        rec = self.registry.record_of_namespace(globals)
        if rec is not None:
            return rec.folder if rec.folder is not None else os.path.dirname(rec.key)
        return self.installed_namespaces.get(id(globals))

    def _relative(
        self, base: str, globals: dict[str, Any], name: str, fromlist: Sequence[str], level: int
    ) -> types.ModuleType:
        folder = base
        for _ in range(level - 1):
            folder = os.path.dirname(folder)
        importer = self.registry.record_of_namespace(globals)
        reg = self.registry
        module = reg.load(folder)
        for part in name.split(".") if name else ():
            module = self._child(module, part, name)
            if importer is not None:
                self._edge(importer.key, module)
        if importer is not None and not name:
            self._edge(importer.key, module)
        for entry in fromlist:
            if entry == "*" or not isinstance(module, m.FolderModule):
                continue
            ns = object.__getattribute__(module, "__dict__")
            if entry in ns and not isinstance(ns[entry], types.ModuleType):
                continue  # a name the package's __init__ defines
            child = reg.child(module, entry)
            if child is not None and importer is not None:
                self._edge(importer.key, child)
        return module

    def _child(self, module: types.ModuleType, part: str, dotted: str) -> types.ModuleType:
        if not isinstance(module, m.FolderModule):
            raise ImportError(f"cannot import {dotted!r}: {module!r} is a file, not a folder")
        child = self.registry.child(module, part)
        if child is None:
            raise ImportError(
                f"cannot import {dotted!r}: {m.folder_of(module)} has no {part}.py and no "
                f"{part}/ folder"
            )
        return child

    def _edge(self, importer: str, module: types.ModuleType) -> None:
        rec = self.registry.record_of(module)
        if rec is not None:
            self.registry.record_edge(importer, rec.key)


class _Loader(importlib.abc.Loader):
    """Hands the import system the relmod module itself: identity survives reloads."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        """Already executed by the registry."""


class ToplevelFinder(importlib.abc.MetaPathFinder):
    """Serves ``import name`` and ``import name.sub`` for names given to ``toplevel``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.names: dict[str, str] = {}

    def register(self, name: str, path: str) -> None:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a valid module name; use letters, digits and _.")
        self.names[name] = path
        sys.modules.pop(name, None)
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> ModuleSpec | None:
        head, _, rest = fullname.partition(".")
        base = self.names.get(fullname) or self.names.get(head)
        if base is None:
            return None
        if fullname in self.names or not rest:
            target_path = base
        else:
            target_path = os.path.join(base, *rest.split("."))
            if self.registry.sources.kind(target_path) is None:
                target_path += ".py"
            if self.registry.sources.kind(target_path) is None:
                return None
        module = self.registry.load(target_path)
        ns = object.__getattribute__(module, "__dict__")
        ns["__name__"] = fullname
        is_pkg = isinstance(module, m.FolderModule)
        spec = ModuleSpec(
            fullname, _Loader(module), origin=normalize(target_path), is_package=is_pkg
        )
        if is_pkg:
            spec.submodule_search_locations = [m.folder_of(module)]
        return spec
