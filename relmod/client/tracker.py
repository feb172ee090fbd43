"""Dependency-tracking reloads of ordinary modules (the ones in ``sys.modules``).

``enable()`` watches the import statement: every module that imports another while it runs gets
an edge in a :class:`~relmod.graph.DependencyGraph` keyed by module name. ``reload(module)`` then
reloads the module and every module that depends on it, dependencies first, so a dependent's
``from leaf import X`` sees the new ``X``. Modules imported before ``enable()`` have no edges.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from relmod.client.imports import ImportHook
from relmod.errors import ReloadError
from relmod.graph import DependencyGraph
from relmod.sources import file_hash

log = logging.getLogger(__name__)

# Installed code is not watched: editing the standard library or site-packages is rare, and
# watching them costs wake-ups and inotify watches.
_INSTALLED_PREFIXES = tuple(
    {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
)


def _is_installed(path: str) -> bool:
    return path.startswith(_INSTALLED_PREFIXES) or f"{os.sep}site-packages{os.sep}" in path


class Tracker:
    """The import-hook reloader behind ``relmod.enable/disable/get_dependencies/reload``."""

    def __init__(self, hook: ImportHook) -> None:
        self.hook = hook
        self.graph = DependencyGraph()
        self.blacklist: frozenset[str] = frozenset()
        self.enabled = False
        self.hashes: dict[str, str | None] = {}  # file of a tracked module -> hash in use
        self.names_by_file: dict[str, str] = {}
        self.pending: set[str] = set()
        self._judged: dict[str, int] = {}  # module name -> id of the module object judged
        self._watch_listeners: list[Callable[[str], None]] = []
        self._lock = threading.RLock()

    def enable(self, blacklist: Iterable[str] = ()) -> None:
        """Start recording which module imports which."""
        self.blacklist = frozenset(blacklist)
        self.hook.install()
        if self._observe not in self.hook.observers:
            self.hook.observers.append(self._observe)
        self.enabled = True

    def disable(self) -> None:
        """Stop recording and forget the graph."""
        if self._observe in self.hook.observers:
            self.hook.observers.remove(self._observe)
        self.enabled = False
        self.graph = DependencyGraph()
        self.hashes.clear()
        self.names_by_file.clear()
        self.pending.clear()
        self._judged.clear()

    def is_blacklisted(self, name: str) -> bool:
        """Blacklisted modules (and their submodules) stay in the graph but never reload."""
        return name == "__main__" or any(
            name == b or name.startswith(b + ".") for b in self.blacklist
        )

    def _observe(
        self,
        globals: dict[str, Any] | None,
        name: str,
        fromlist: Sequence[str],
        level: int,
        module: types.ModuleType,
    ) -> None:
        if not globals:
            return
        importer = globals.get("__name__")
        if not isinstance(importer, str) or importer not in sys.modules:
            return
        try:
            if level > 0:
                package = globals.get("__package__") or importer.rpartition(".")[0]
                resolved = importlib.util.resolve_name("." * level + name, package)
            else:
                resolved = name
        except (ImportError, ValueError):
            return
        targets = [resolved] + [f"{resolved}.{entry}" for entry in fromlist if entry != "*"]
        for target in targets:
            if target != importer and target in sys.modules:
                self.graph.add_edge(importer, target, origin="runtime")
                self._watch(target)
        self._watch(importer)

    def add_watch_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` when a tracked module's file is first seen (feeds follow)."""
        self._watch_listeners.append(listener)

    def _watch(self, name: str) -> None:
        module = sys.modules.get(name)
        # Imports run all the time (IPython imports a few modules per cell): judge each
        # module object once, without touching the disk again.
        if self._judged.get(name) == id(module):
            return
        self._judged[name] = id(module)
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            return
        if name == "relmod" or name.startswith("relmod."):
            return  # relmod does not reload itself
        path = os.path.realpath(path)
        if path in self.names_by_file or _is_installed(path):
            return
        self.names_by_file[path] = name
        self.hashes[path] = file_hash(path)
        for listener in list(self._watch_listeners):
            listener(path)

    def dependencies(self, module: types.ModuleType | str) -> list[types.ModuleType]:
        """The modules ``module`` imported while it ran, sorted by name."""
        name = module if isinstance(module, str) else module.__name__
        return [
            sys.modules[dep]
            for dep in sorted(self.graph.dependencies_of(name))
            if dep in sys.modules
        ]

    def reload(self, module: types.ModuleType) -> list[str]:
        """Reload ``module`` and every module depending on it; return the names reloaded."""
        name = module.__name__
        with self._lock:
            order = self.graph.in_dependency_order(self.graph.affected_by([name]))
            done = []
            for target in order:
                if self.is_blacklisted(target) or target not in sys.modules:
                    continue
                self._reload_one(sys.modules[target])
                done.append(target)
                self.pending.discard(target)
            return done

    def _reload_one(self, module: types.ModuleType) -> None:
        name = module.__name__
        ns = module.__dict__
        old_state = dict(ns)
        old_edges = self.graph.dependencies_of(name)
        self.graph.set_dependencies(name, (), origin="runtime")
        try:
            importlib.reload(module)
            callback = ns.get("__reload__")
            if callable(callback):
                callback(old_state)
        except Exception as err:
            ns.clear()
            ns.update(old_state)
            sys.modules[name] = module
            self.graph.set_dependencies(name, old_edges, origin="runtime")
            raise ReloadError(
                f"Cannot reload module {name} ({getattr(module, '__file__', '?')}): "
                f"{type(err).__name__}: {err}. The last good version stays in use; save a fixed "
                f"version to reload.",
                path=str(getattr(module, "__file__", name)),
            ) from err
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            real = os.path.realpath(path)
            if real in self.hashes:
                self.hashes[real] = file_hash(real)
        log.info("reloaded module %s", name)

    # -- what the feeds call -------------------------------------------------------------

    def folders(self) -> set[str]:
        return {os.path.dirname(p) for p in list(self.names_by_file)}

    def invalidate(self, paths: Iterable[str]) -> set[str]:
        """Note tracked modules whose file content changed; they reload at the next apply."""
        marked = set()
        for path in paths:
            name = self.names_by_file.get(path)
            if name is None:
                continue
            digest = file_hash(path)
            if digest is not None and digest != self.hashes.get(path):
                self.pending.add(name)
                marked.add(name)
        return marked

    def reload_pending(self) -> tuple[list[str], list[ReloadError]]:
        """Reload every tracked module whose file changed (and its dependents).

        A failure does not stop the others: it is returned with the names that reloaded, and
        the failed module keeps its last good version until its file changes again.
        """
        with self._lock:
            names = self.graph.in_dependency_order(self.pending)
            self.pending.clear()
            done: list[str] = []
            errors: list[ReloadError] = []
            for name in names:
                if name in done or self.is_blacklisted(name) or name not in sys.modules:
                    continue
                try:
                    done.extend(self.reload(sys.modules[name]))
                except ReloadError as err:
                    errors.append(err)
                    self._accept_failed(name)
            return done, errors

    def _accept_failed(self, name: str) -> None:
        """Remember the failed file's hash, so only a new save retries it."""
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            real = os.path.realpath(path)
            if real in self.hashes:
                self.hashes[real] = file_hash(real)
