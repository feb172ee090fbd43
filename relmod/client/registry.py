"""The registry of relmod modules: loading, staleness and deep reloads in dependency order.

Two kinds of callers touch a registry:

- a feed (the embedded watcher or the broker connection) calls :meth:`Registry.invalidate` from its
  own thread; that only switches module classes to their stale twins;
- user threads load modules and, on the first use of a stale module, :meth:`Registry.refresh`
  reloads it and its stale dependencies first, under one reload lock.

A module re-executes only when its source hash differs from the one it last ran, or when a module
it depends on ran again since; an identical save therefore re-executes nothing.
"""

from __future__ import annotations

import gc
import linecache
import logging
import os
import threading
import traceback
import types
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from typing import Any, Literal, Protocol

from relmod.client import modules as m
from relmod.errors import ModuleNotFound, ReloadError
from relmod.graph import DependencyGraph
from relmod.sources import compile_source, content_hash, read_source

log = logging.getLogger(__name__)

OnError = Literal["raise", "keep"]
SourceKind = Literal["file", "folder"]


class SourceProvider(Protocol):
    """Where a registry finds files and folders and reads their bytes.

    :class:`DiskSources` (the default) is the local disk; a process that does not share the
    project's file system sets ``registry.sources`` to one answered by the broker
    (:class:`relmod.client.remote.RemoteSources`).
    """

    def kind(self, path: str) -> SourceKind | None:
        """``"file"``, ``"folder"``, or None when nothing is at ``path``."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``; raises OSError when it cannot be read."""
        ...


class DiskSources:
    """The local disk, as a :class:`SourceProvider`."""

    def kind(self, path: str) -> SourceKind | None:
        if os.path.isdir(path):
            return "folder"
        return "file" if os.path.isfile(path) else None

    def read(self, path: str) -> bytes:
        return read_source(path)


# Keys of a module's namespace that survive a re-execution (everything else is cleared first,
# so a name deleted from the file disappears from the module).
_KEPT_KEYS = (
    "__name__",
    "__file__",
    "__loader__",
    "__spec__",
    "__package__",
    "__path__",
    "__relmod_folder__",
    "__builtins__",
)


def normalize(path: str, base: str | None = None) -> str:
    """An absolute, symlink-free path, with ``~`` expanded, resolved against ``base`` or the cwd."""
    path = os.path.expanduser(path)
    if base is not None and not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.realpath(path)


@dataclass(eq=False)
class Record:
    """What the registry knows of one module."""

    key: str  # the file that runs (for a package its __init__.py), or the folder of a namespace
    module: types.ModuleType
    kind: type[types.ModuleType]  # FileModule (plain module), FolderModule or PackageModule
    folder: str | None = None  # for folders and packages
    hash: str | None = None  # of the source last executed successfully
    failed_hash: str | None = None  # of a source that failed, reported once
    version: int = 0  # bumps on every successful execution
    dep_versions: dict[str, int] = field(default_factory=dict)
    gen: int = 0  # bumps on every invalidation; a reload clears staleness only if unchanged
    reloading: bool = False
    last_error: str | None = None

    @property
    def namespace(self) -> dict[str, Any]:
        return object.__getattribute__(self.module, "__dict__")  # type: ignore[no-any-return]


class Registry:
    """Path -> module map with lazy, deep, dependency-ordered reloads.

    Example:
        >>> reg = Registry()
        >>> mod = reg.load('relmod/_version.py')
        >>> isinstance(mod.__version__, str)
        True
    """

    def __init__(self) -> None:
        self.graph = DependencyGraph()
        self.on_error: OnError = "raise"
        self.sources: SourceProvider = DiskSources()
        self._records: dict[str, Record] = {}
        self._by_id: dict[int, Record] = {}
        self._by_namespace: dict[int, Record] = {}
        self._aliases: dict[str, str] = {}  # package folder -> its __init__.py
        self._reload_lock = threading.RLock()
        self._mark_lock = threading.Lock()
        self._load_listeners: list[Callable[[str], None]] = []
        self._invalidate_listeners: list[Callable[[set[str]], None]] = []
        self.reloads = 0
        self.errors_logged = 0
        self.generation = 0  # bumps whenever invalidate() marks something: a cheap "any news?"
        # Classes defined by a version of a module that a reload replaced: their live
        # instances are what stale_objects() reports.
        self.old_classes: weakref.WeakSet[type] = weakref.WeakSet()
        self.count_stale_objects = False

    def after_fork(self) -> None:
        """In a forked child: locks another thread held at the fork would never be released."""
        self._reload_lock = threading.RLock()
        self._mark_lock = threading.Lock()
        self.graph.after_fork()

    # -- loading ----------------------------------------------------------------------------

    def load(self, path: str, *, name: str | None = None) -> types.ModuleType:
        """The module for a file or folder path (absolute, or relative to the cwd)."""
        full = normalize(path)
        if self.sources.kind(full) is None and self.sources.kind(full + ".py") == "file":
            full += ".py"
        key = self._aliases.get(full, full)
        rec = self._records.get(key)
        if rec is not None:
            return rec.module
        with self._reload_lock:
            rec = self._records.get(key)
            if rec is not None:
                return rec.module
            return self._create(full, name)

    def _create(self, full: str, name: str | None) -> types.ModuleType:
        kind = self.sources.kind(full)
        if kind == "folder":
            init = os.path.join(full, "__init__.py")
            if self.sources.kind(init) == "file":
                return self._create_module(init, m.PackageModule, name, folder=full)
            return self._create_module(full, m.FolderModule, name, folder=full)
        if kind == "file":
            if not full.endswith(".py"):
                log.debug("loading %s, which does not end in .py", full)
            return self._create_module(full, m.FileModule, name)
        raise ModuleNotFound(
            f"Cannot load {full}: no such file or folder. Check the path; relative paths given to "
            f"relmod.at() resolve against the current folder ({os.getcwd()})."
        )

    def _create_module(
        self, key: str, kind: type[types.ModuleType], name: str | None, *, folder: str | None = None
    ) -> types.ModuleType:
        base = folder if folder is not None else key
        stem = os.path.basename(base.rstrip(os.sep))
        if stem.endswith(".py"):
            stem = stem[:-3]
        module = kind(name or stem or "root")
        ns = module.__dict__
        loader = m.RelmodLoader(base if kind is m.FolderModule else key)
        # No origin, so the module's repr shows the loader's: the path, and whether it is gone.
        is_package = folder is not None
        ns["__spec__"] = ModuleSpec(module.__name__, loader, origin=None, is_package=is_package)
        ns["__loader__"] = loader
        ns["__package__"] = ""
        if folder is not None:
            ns["__relmod_folder__"] = folder
            ns["__path__"] = [folder]
        if kind is not m.FolderModule:
            ns["__file__"] = key
        rec = Record(key=key, module=module, kind=kind, folder=folder)
        self._records[key] = rec
        self._by_id[id(module)] = rec
        self._by_namespace[id(ns)] = rec
        if folder is not None and folder != key:
            self._aliases[folder] = key
        if kind is not m.FolderModule:
            try:
                self._execute(rec, first=True)
            except BaseException:
                self._forget(rec)
                raise
        else:
            rec.version = 1
        for listener in list(self._load_listeners):
            listener(key)
        return module

    def _forget(self, rec: Record) -> None:
        self._records.pop(rec.key, None)
        self._by_id.pop(id(rec.module), None)
        self._by_namespace.pop(id(rec.namespace), None)
        if rec.folder is not None:
            self._aliases.pop(rec.folder, None)
        self.graph.remove(rec.key)

    def child(self, folder_module: types.ModuleType, name: str) -> types.ModuleType | None:
        """``folder.name``: the folder's ``name.py`` or ``name/``, cached in the folder."""
        folder = m.folder_of(folder_module)
        for candidate in (os.path.join(folder, name + ".py"), os.path.join(folder, name)):
            if self.sources.kind(candidate) is not None:
                module = self.load(candidate)
                object.__getattribute__(folder_module, "__dict__")[name] = module
                return module
        return None

    def item(self, folder_module: types.ModuleType, relative: str) -> types.ModuleType:
        """``folder['../other dir']``: a path relative to the folder."""
        return self.load(normalize(relative, m.folder_of(folder_module)))

    def add_load_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` after each new module loads (the embedded watcher follows)."""
        self._load_listeners.append(listener)

    def add_invalidate_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(keys)`` on the feed's thread after modules are marked stale.

        It must be quick and must not reload: it runs where the marking runs.
        """
        self._invalidate_listeners.append(listener)

    def remove_load_listener(self, listener: Callable[[str], None]) -> None:
        """Stop calling a listener added with :meth:`add_load_listener`."""
        if listener in self._load_listeners:
            self._load_listeners.remove(listener)

    # -- what the import hook and the feeds need -----------------------------------------

    def record_of(self, module: object) -> Record | None:
        """The record of a relmod module, or None for any other object."""
        return self._by_id.get(id(module))

    def record_of_namespace(self, namespace: dict[str, Any]) -> Record | None:
        """The record whose module owns this globals dict."""
        return self._by_namespace.get(id(namespace))

    def record_edge(self, dependent: str, dependency: str) -> None:
        """A relmod module imported another while it ran."""
        if dependent != dependency:
            self.graph.add_edge(dependent, dependency, origin="runtime")

    def files(self) -> dict[str, str | None]:
        """Every loaded source file with the hash of the version in use."""
        return {k: r.hash for k, r in self._records.items() if r.kind is not m.FolderModule}

    def folders(self) -> set[str]:
        """The folders holding loaded modules (what an embedded watcher watches)."""
        out = set()
        for rec in list(self._records.values()):
            out.add(rec.folder if rec.folder is not None else os.path.dirname(rec.key))
        return out

    def records(self) -> list[Record]:
        """A snapshot of every record (safe to iterate while other threads load)."""
        return list(self._records.values())

    def dependencies(self, module: types.ModuleType) -> list[types.ModuleType]:
        """The relmod modules ``module`` imported or used while it ran, sorted by path."""
        rec = self._by_id[id(module)]
        deps = sorted(self.graph.dependencies_of(rec.key))
        return [self._records[d].module for d in deps if d in self._records]

    def stale_count(self) -> int:
        return sum(1 for r in list(self._records.values()) if m.is_stale(r.module))

    def __contains__(self, path: str) -> bool:
        return path in self._records or path in self._aliases

    # -- invalidation (any thread) ------------------------------------------------------

    def invalidate(self, paths: Iterable[str]) -> set[str]:
        """Mark the modules of these files, and every module depending on them, stale.

        Cheap and safe from any thread: it runs no user code. Returns the keys marked.
        """
        keys: set[str] = set()
        for path in paths:
            path = self._aliases.get(path, path)
            if path in self._records:
                keys.add(path)
            elif not path.endswith(".py"):
                # A folder renamed or deleted: every module under it.
                prefix = path.rstrip(os.sep) + os.sep
                keys.update(k for k in list(self._records) if k.startswith(prefix))
        if not keys:
            return set()
        affected = {k for k in self.graph.affected_by(keys) if k in self._records}
        with self._mark_lock:
            for key in affected:
                rec = self._records[key]
                rec.gen += 1
                m.mark_stale(rec.module)
            if affected:
                self.generation += 1
        log.debug("marked %d module(s) stale", len(affected))
        for listener in list(self._invalidate_listeners):
            listener(affected)
        return affected

    # -- reloading (user threads) -----------------------------------------------------

    def refresh(self, module: types.ModuleType) -> None:
        """Bring a stale module up to date: its stale dependencies first, then itself."""
        rec = self._by_id.get(id(module))
        if rec is None:
            self._unmark(module)
            return
        with self._reload_lock:
            if rec.reloading or not m.is_stale(rec.module):
                return  # another thread reloaded it, or it is importing itself (a cycle)
            deps = self.graph.transitive_dependencies(rec.key)
            todo = [rec.key] + [
                d for d in deps if d in self._records and m.is_stale(self._records[d].module)
            ]
            for key in self.graph.in_dependency_order(todo):
                dep = self._records[key]
                if key != rec.key and not self._on_disk(dep):
                    # A dependency whose file is gone (deleted, or turned into a package:
                    # util.py -> util/). Whether a module still needs it is for its own run to
                    # say, so its dependents must run again (a new version makes them): if one
                    # still imports it, that run fails naming it; if not, it just works.
                    dep.version += 1
                    continue
                self._refresh_record(dep)

    def _on_disk(self, rec: Record) -> bool:
        """Whether the module's file (or folder) is still there, as its sources see it."""
        return self.sources.kind(rec.key) == ("folder" if rec.kind is m.FolderModule else "file")

    def _refresh_record(self, rec: Record) -> None:
        if rec.reloading:
            return
        gen = rec.gen
        try:
            if rec.kind is not m.FolderModule:
                self._execute(rec)
        except ReloadError as err:
            rec.last_error = str(err)
            self._unmark_record(rec, gen)
            if self.on_error == "raise":
                raise
            self.errors_logged += 1
            log.error("%s", err)
            return
        self._unmark_record(rec, gen)

    def _unmark_record(self, rec: Record, gen: int) -> None:
        with self._mark_lock:
            if rec.gen == gen:  # no invalidation arrived while we reloaded
                self._unmark(rec.module)

    @staticmethod
    def _unmark(module: types.ModuleType) -> None:
        m.mark_fresh(module)

    def reload(self, path_or_module: str | types.ModuleType) -> types.ModuleType:
        """Re-execute a module now, even if unchanged, then every module depending on it."""
        if isinstance(path_or_module, str):
            module = self.load(path_or_module)
        else:
            module = path_or_module
        rec = self._by_id[id(module)]
        with self._reload_lock:
            order = self.graph.in_dependency_order(
                k for k in self.graph.affected_by([rec.key]) if k in self._records
            )
            for key in order:
                target = self._records[key]
                gen = target.gen
                if target.kind is not m.FolderModule:
                    self._execute(target, force=key == rec.key)
                self._unmark_record(target, gen)
        return module

    def _deps_moved(self, rec: Record) -> bool:
        for dep, version in rec.dep_versions.items():
            other = self._records.get(dep)
            if other is not None and other.version != version:
                return True
        return False

    def _execute(self, rec: Record, *, first: bool = False, force: bool = False) -> None:
        """Run the module's source in its own namespace; on failure restore the last good one."""
        try:
            data = self.sources.read(rec.key)
        except OSError as err:
            if first:
                raise ModuleNotFound(f"Cannot load {rec.key}: {err.strerror}.") from err
            raise ReloadError(
                f"Cannot reload {rec.key}: {err.strerror or err}. The last good version stays in "
                f"use; restore the file to reload.",
                path=rec.key,
            ) from err
        digest = content_hash(data)
        if not (first or force or self._deps_moved(rec)) and digest in (rec.hash, rec.failed_hash):
            return  # identical content: nothing to run
        verb = "load" if first else "reload"
        try:
            code = compile_source(rec.key, data)
        except (SyntaxError, ValueError, UnicodeDecodeError) as err:
            rec.failed_hash = digest
            lineno = getattr(err, "lineno", None)
            where = f" at line {lineno}" if lineno else ""
            detail = getattr(err, "msg", None) or str(err)
            raise ReloadError(
                f"Cannot {verb} {rec.key}: {type(err).__name__}{where}: {detail}. "
                + _still_in_use(first),
                path=rec.key,
                lineno=lineno,
            ) from err

        ns = rec.namespace
        old_state = dict(ns)
        kept = {k: ns[k] for k in _KEPT_KEYS if k in ns}
        old_edges = self.graph.dependencies_of(rec.key)
        self.graph.set_dependencies(rec.key, (), origin="runtime")
        rec.reloading = True
        try:
            ns.clear()
            ns.update(kept)
            exec(code, ns)
            callback = ns.get("__reload__")
            if not first and callable(callback):
                callback(old_state)
        except BaseException as err:
            ns.clear()
            ns.update(old_state)
            self.graph.set_dependencies(rec.key, old_edges, origin="runtime")
            rec.failed_hash = digest
            if isinstance(err, ReloadError) or not isinstance(err, Exception):
                raise
            lineno = _line_in(err, rec.key)
            where = f" at line {lineno}" if lineno else ""
            raise ReloadError(
                f"Cannot {verb} {rec.key}: {type(err).__name__}{where}: {err}. "
                + _still_in_use(first),
                path=rec.key,
                lineno=lineno,
            ) from err
        finally:
            rec.reloading = False
        rec.hash = digest
        rec.failed_hash = None
        rec.last_error = None
        rec.version += 1
        rec.dep_versions = {
            d: self._records[d].version
            for d in self.graph.dependencies_of(rec.key)
            if d in self._records
        }
        linecache.checkcache(rec.key)
        if not first:
            self.reloads += 1
            replaced = self._note_replaced_classes(old_state, ns)
            if replaced and self.count_stale_objects:
                live = len(stale_objects(replaced))
                log.info("reloaded %s (%d live object(s) of its old classes)", rec.key, live)
            else:
                log.info("reloaded %s", rec.key)

    def _note_replaced_classes(
        self, old_state: dict[str, Any], new_state: dict[str, Any]
    ) -> set[type]:
        name = old_state.get("__name__")
        replaced = {
            value
            for key, value in old_state.items()
            if isinstance(value, type)
            and value.__module__ == name
            and new_state.get(key) is not value
        }
        self.old_classes.update(replaced)
        return replaced


def stale_objects(classes: Iterable[type]) -> list[Any]:
    """Live instances of the given classes (a walk over the garbage collector's objects)."""
    wanted = set(classes)
    if not wanted:
        return []
    return [obj for obj in gc.get_objects() if type(obj) in wanted]


def _still_in_use(first: bool) -> str:
    if first:
        return "Fix the file and load it again."
    return "The last good version stays in use; save a fixed version to reload."


def _line_in(err: BaseException, path: str) -> int | None:
    """The deepest line of ``path`` in the traceback of ``err``."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line


def module_name_of(module: types.ModuleType) -> str:
    """A module's ``__name__`` without triggering a reload."""
    return str(object.__getattribute__(module, "__dict__").get("__name__", "?"))
