"""How the import statement reaches the registry: nested re-runs, relative imports by path, a gate.

:class:`ImportHook` replaces ``builtins.__import__`` and hands every import to the previous one,
after three things only it can see:

- an import statement of a cycle member that has not re-run yet while its unit re-runs: the
  registry runs it there, nested, as a first import would (:meth:`Registry.run_pending`);
- relative imports inside modules loaded by path (``from . import b`` in a file given to
  ``relmod.at``) and in namespaces given to :func:`relmod.install`, which resolve by folder;
- a pool worker's gate, which catches up with the parent's ``sync()`` before a task's import.

It is installed only once one of these is needed (the registry asks through
``Registry.import_hook_needed``): a process that imports its project the ordinary way keeps
CPython's own ``__import__``, whose fast path a Python-level replacement would lose. The
dependencies a module's imports make come from its code instead (``Registry._note_imports``).
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

from relmod.machinery import modules as m
from relmod.machinery.registry import Record, Registry


class ImportHook:
    """The ``__import__`` replacement."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.original: Callable[..., types.ModuleType] = builtins.__import__
        self.installed_namespaces: dict[int, str] = {}  # id(globals) -> folder, for install()
        # Called before every import: a pool worker catches up with its parent's sync() there,
        # since that is how a task's function reaches it (pickle imports it by name).
        self.gate: Callable[[], None] | None = None
        self._lock = threading.Lock()
        registry.import_hook_needed = self.install

    def install(self) -> None:
        """Put the hook in ``builtins.__import__`` (idempotent)."""
        with self._lock:
            if getattr(builtins.__import__, "__self__", None) is not self:
                self.original = builtins.__import__
                builtins.__import__ = self.__call__  # type: ignore[assignment]

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork is free again."""
        self._lock = threading.Lock()

    def uninstall(self) -> None:
        """Restore the ``__import__`` we replaced."""
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
        gate = self.gate
        if gate is not None:
            gate()
        registry = self.registry
        if level > 0 and globals is not None:
            importer = registry.record_of_namespace(globals)
            base = self._base_folder(importer, globals)
            if base is not None:
                return self._relative(base, importer, name, fromlist or (), level)
        if registry.has_pending():
            target = name
            if level > 0 and globals is not None:
                try:
                    package = (
                        globals.get("__package__") or globals.get("__name__", "").rpartition(".")[0]
                    )
                    target = importlib.util.resolve_name("." * level + name, package)
                except (ImportError, ValueError, AttributeError):
                    target = ""
            if target:
                self._run_pending(target, fromlist or ())
        return self.original(name, globals, locals, fromlist, level)

    def _run_pending(self, target: str, fromlist: Sequence[str]) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            self.registry.run_pending(".".join(parts[:i]))
        for entry in fromlist:
            if entry != "*":
                self.registry.run_pending(f"{target}.{entry}")

    def _base_folder(self, importer: Record | None, globals: dict[str, Any]) -> str | None:
        if importer is not None:
            # Python resolves relative imports through the package; a module loaded by path, or
            # a top-level module (toplevel('tasks', 'tasks.py')), has none: its folder serves.
            if not importer.by_path and globals.get("__package__"):
                return None
            return importer.folder if importer.folder is not None else os.path.dirname(importer.key)
        return self.installed_namespaces.get(id(globals))

    def _relative(
        self, base: str, importer: Record | None, name: str, fromlist: Sequence[str], level: int
    ) -> types.ModuleType:
        folder = base
        for _ in range(level - 1):
            folder = os.path.dirname(folder)
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
