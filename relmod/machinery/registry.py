"""The registry of reloading modules: one model for every module relmod reloads.

Every module relmod reloads, whether it came from ``import`` (a project module) or from
``relmod.at/use/imp/toplevel`` (a module loaded by path), is a :class:`Record` here: the module
object, its name in ``sys.modules``, the file that runs, the hash of the source that ran, and its
place in the dependency graph. Modules run as Python runs them: under their dotted name, in
``sys.modules`` while their code executes.

Two kinds of callers touch a registry:

- a feed (the embedded watcher or the broker connection) calls :meth:`Registry.invalidate` from its
  own thread; that only switches module classes to their stale twins and emits ``'stale'`` events;
- user threads import modules (:meth:`Registry.exec_first` is the loader's door) and, on the first
  use of a stale module, :meth:`Registry.refresh` brings it up to date, its stale dependencies
  first, under one reload lock.

A reload runs in units: one module, or the modules of an import cycle, which re-execute together
in the order Python first ran them; an import statement of a unit member that has not re-run yet
re-runs it on the spot (:meth:`Registry.run_pending`), exactly where a first import would have
run it, while the others are visible partially initialised. A unit that fails is rolled back as a
whole to its last good state. A module re-executes only when its source hash differs from the one
it last ran, or when a module it depends on ran again since; an identical save re-executes nothing.

Re-execution runs over the module's own namespace, then drops the names the new version no longer
defines: a function of the module running in another thread meanwhile finds each global either
old or new, never missing.
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import linecache
import logging
import os
import stat
import sys
import threading
import time
import traceback
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from typing import Any, Literal, Protocol

from relmod.codecache import (
    STDLIB_MARK,
    STDLIB_NAMES,
    defined_names,
    imports_of,
    is_young,
    load_code,
    load_file_code,
    signature_of,
)
from relmod.errors import ModuleNotFound, ReloadError
from relmod.graph import DependencyGraph
from relmod.machinery import modules as m
from relmod.machinery.events import Event, Listeners
from relmod.machinery.patching import VERSIONS, CallGuard, makes_functions, patch_namespace
from relmod.machinery.scope import Scope
from relmod.sources import content_hash, read_source

log = logging.getLogger(__name__)

OnError = Literal["raise", "keep"]
SourceKind = Literal["file", "folder"]

PATH_MODULES = "relmod.files"
"""The package under which modules loaded by path live in ``sys.modules``."""

# Keys of a module's namespace that a re-execution never drops.
_KEPT_KEYS = frozenset(
    {
        "__name__",
        "__file__",
        "__cached__",
        "__loader__",
        "__spec__",
        "__package__",
        "__path__",
        "__relmod_folder__",
        "__builtins__",
        "__doc__",
    }
)


class SourceProvider(Protocol):
    """Where a registry finds files and folders and reads their bytes.

    :class:`DiskSources` (the default) is the local disk; a process that does not share the
    project's file system sets ``registry.sources`` to one answered by the broker.
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


def normalize(path: str, base: str | None = None) -> str:
    """An absolute path, with ``~`` expanded, resolved against ``base`` or the cwd.

    Symbolic links stay: a module is the path the user named, so a link re-pointed, or a file
    replaced by a link, is a change of the module (:meth:`Registry.invalidate` also knows each
    module by its real path, which is what a broker names).
    """
    path = os.path.expanduser(path)
    if base is not None and not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.abspath(path)


def path_module_name(path: str, *, folder: bool) -> str:
    """The ``sys.modules`` name of a module loaded by path: its path, importable again.

    Example:
        >>> path_module_name('/p/my.lib/f.py', folder=False)
        'relmod.files./p/my%2Elib/f'
        >>> path_module_name('/p/pkg', folder=True)
        'relmod.files./p/pkg/'
    """
    stem = path[:-3] if not folder and path.endswith(".py") else path
    escaped = stem.replace("%", "%25").replace(".", "%2E")
    return f"{PATH_MODULES}.{escaped}{'/' if folder else ''}"


def path_of_module_name(name: str) -> str | None:
    """The path a :func:`path_module_name` stands for, or None for any other name.

    Example:
        >>> path_of_module_name('relmod.files./p/my%2Elib/f'), path_of_module_name('os')
        ('/p/my.lib/f.py', None)
    """
    prefix = PATH_MODULES + "."
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    folder = rest.endswith("/")
    path = rest.rstrip("/").replace("%2E", ".").replace("%25", "%")
    return path if folder else path + ".py"


Kind = Literal["file", "package", "folder"]


@dataclass(eq=False, slots=True)
class Record:
    """What the registry knows of one module."""

    key: str  # the file that runs (for a package its __init__.py), or the folder of a namespace
    name: str  # its name in sys.modules
    module: types.ModuleType
    kind: Kind
    by_path: bool  # loaded by relmod.at/use/imp (relative imports resolve by folder)
    folder: str | None = None  # for folders and packages loaded by path
    hash: str | None = None  # of the source last executed successfully
    failed_hash: str | None = None  # of a source that failed, reported once
    version: int = 0  # bumps on every successful execution
    dep_versions: dict[str, int] = field(default_factory=dict)
    gen: int = 0  # bumps on every invalidation; a reload clears staleness only if unchanged
    order: int = 0  # when its first execution began: a cycle re-runs in this order
    reloading: bool = False
    last_error: str | None = None
    named: bool = False  # an invalidation named its file since its content was last checked
    ran_young: bool = False  # ran_signature was too young to stand for the content alone
    next_young: bool = False  # the same for next_signature
    bound: tuple[types.CodeType, frozenset[str], bool] | None = None  # defined_names of a code
    code: types.CodeType | None = None  # compiled, waiting to run in the current unit
    digest: str | None = None  # the hash of ``code``'s source
    ran_code: types.CodeType | None = None  # the code that last ran, and the file's stat
    data_only: bool = False  # ran_code makes no function or class (patching.makes_functions)
    ran_signature: tuple[int, int, int, int] | None = None  # signature before it was read
    next_signature: tuple[int, int, int, int] | None = None  # of ``code``'s file, in a unit

    @property
    def namespace(self) -> dict[str, Any]:
        return object.__getattribute__(self.module, "__dict__")  # type: ignore[no-any-return]


class Registry:
    """Modules by file, with lazy, deep, dependency-ordered reloads.

    Example:
        >>> reg = Registry()
        >>> mod = reg.load('relmod/_version.py')
        >>> isinstance(mod.__version__, str), mod.__name__.startswith('relmod.files.')
        (True, True)
    """

    def __init__(self) -> None:
        self._graph = DependencyGraph()
        # (record, its import statements) of first runs not in the graph yet: see `graph`.
        self._unnoted: collections.deque[tuple[Record, tuple[str, ...]]] = collections.deque()
        self.on_error: OnError = "raise"
        self.sources: SourceProvider = DiskSources()
        self.scope = Scope()
        self.types = m.ModuleTypes(self)
        self.listeners = Listeners()
        self.frozen: frozenset[str] = frozenset()  # names that stay in the graph, never reload
        self._records: dict[str, Record] = {}
        self._by_id: dict[int, Record] = {}
        self._by_namespace: dict[int, Record] = {}
        self._by_name: dict[str, Record] = {}
        # The first parts of every name a module was loaded under (never shrinks): an import of
        # any other top-level name reaches no reloading module.
        self._top_names: set[str] = set()
        self._aliases: dict[str, str] = {}  # package folder -> its __init__.py
        self._folders: dict[str, int] = {}  # folder -> how many records live in it
        self._by_real: dict[str, set[str]] = {}  # real path -> keys that name it through links
        self._real_folders: dict[str, str] = {}  # folder -> its real path (resolved once)
        self._reload_lock = threading.RLock()
        self._mark_lock = threading.Lock()
        self._create_lock = threading.RLock()
        self._pending: dict[str, Record] = {}  # unit members that have not re-run yet
        self._in_progress: list[tuple[Record, dict[str, Any]]] = []  # (record, last good ns)
        self._local = threading.local()  # .running: the records executing in this thread
        self._order = itertools.count(1)
        self._pending_failure: Record | None = None
        self._scheduled: set[str] = set()  # keys the reload in progress will run, in order
        self._load_listeners: list[Callable[[str], None]] = []
        self._folder_listeners: list[Callable[[str], None]] = []
        # Called before something only the __import__ hook can serve: a module loaded by path
        # (its relative imports resolve by folder) or a cycle's re-run (nested members).
        self.import_hook_needed: Callable[[], None] = _nothing
        self._invalidate_listeners: list[Callable[[set[str]], None]] = []
        self.reloads = 0
        self.errors_logged = 0
        self.generation = 0  # bumps whenever invalidate() marks something: a cheap "any news?"
        # Classes defined by a version of a module that a reload replaced: their live
        # instances are what stale_objects() reports.
        self.old_classes: weakref.WeakSet[type] = weakref.WeakSet()
        self.count_stale_objects = False
        # Held references run the new code: old functions and classes are updated in place,
        # and a call of a function of a stale module is a use of it (RELMOD_PATCH=0: off).
        self.patch = os.environ.get("RELMOD_PATCH", "1").strip() not in ("0", "false", "no")
        self.guard = CallGuard()
        self.patched = 0
        self.unpatchable = 0
        # What a report asks, kept as it happens, so no report walks every module: the keys
        # marked stale since a count last found them fresh (a superset of the stale ones,
        # pruned by stale_count), and the keys whose last reload failed, oldest first.
        self._maybe_stale: set[str] = set()
        self._failed_keys: dict[str, None] = {}

    def after_fork(self) -> None:
        """In a forked child: free locks other threads held, undo a reload cut off by the fork.

        The child has only the forking thread. A unit another thread was re-executing is rolled
        back to its last good namespace and left stale, so the child re-runs it on first use.
        """
        self._reload_lock = threading.RLock()
        self._mark_lock = threading.Lock()
        self._create_lock = threading.RLock()
        self._local = threading.local()
        self.graph.after_fork()
        self.guard.after_fork()
        self.types.after_fork()
        self.scope.after_fork()
        self.listeners.after_fork()
        for rec, good in self._in_progress:
            _restore(rec, good)
            rec.reloading = False
            rec.hash = None  # forces the re-run
            self.types.mark_stale(rec.module)
            self._maybe_stale.add(rec.key)
        self._in_progress = []
        self._pending = {}
        self._scheduled = set()

    # -- modules loaded by path (relmod.at, use, imp, toplevel of a path) ------------------

    def load(self, path: str, *, name: str | None = None) -> types.ModuleType:
        """The module for a file or folder path (absolute, or relative to the cwd)."""
        full = normalize(path)
        if self.sources.kind(full) is None and self.sources.kind(full + ".py") == "file":
            full += ".py"
        key = self._aliases.get(full, full)
        rec = self._records.get(key)
        if rec is not None:
            return rec.module
        with self._create_lock:
            rec = self._records.get(key)
            if rec is not None:
                return rec.module
            return self._create_by_path(full)

    def _create_by_path(self, full: str) -> types.ModuleType:
        kind = self.sources.kind(full)
        if kind == "folder":
            init = os.path.join(full, "__init__.py")
            if self.sources.kind(init) == "file":
                return self._new_path_module(init, "package", folder=full)
            return self._new_path_module(full, "folder", folder=full)
        if kind == "file":
            if not full.endswith(".py"):
                log.debug("loading %s, which does not end in .py", full)
            return self._new_path_module(full, "file")
        raise ModuleNotFound(
            f"Cannot load {full}: no such file or folder. Check the path; relative paths given to "
            f"relmod.at() resolve against the current folder ({os.getcwd()})."
        )

    def _new_path_module(
        self, key: str, kind: Kind, *, folder: str | None = None
    ) -> types.ModuleType:
        self.import_hook_needed()  # its relative imports resolve by folder
        base = folder if folder is not None else key
        name = path_module_name(base, folder=folder is not None)
        kinds: dict[str, type[types.ModuleType]] = {
            "file": types.ModuleType,
            "package": self.types.package,
            "folder": self.types.folder,
        }
        cls = kinds[kind]
        module = cls(name)
        ns = module.__dict__
        loader = m.PathLoader(base if kind == "folder" else key)
        # No origin, so the module's repr shows the loader's: the path, and whether it is gone.
        ns["__spec__"] = ModuleSpec(name, loader, origin=None, is_package=folder is not None)
        ns["__loader__"] = loader
        ns["__package__"] = ""
        if folder is not None:
            ns["__relmod_folder__"] = folder
            ns["__path__"] = [folder]
        ns["__file__"] = None if kind == "folder" else key  # a namespace has no file
        rec = self._add(key, name, module, kind, by_path=True, folder=folder)
        if kind == "folder":
            rec.version = 1
        else:
            sys.modules[name] = module  # as a first import: visible while it runs
            try:
                self._first_run(rec)
            except BaseException:
                if sys.modules.get(name) is module:
                    del sys.modules[name]
                self._forget(rec)
                raise
        for listener in list(self._load_listeners):
            listener(key)
        return module

    def _add(
        self,
        key: str,
        name: str,
        module: types.ModuleType,
        kind: Kind,
        *,
        by_path: bool,
        folder: str | None = None,
    ) -> Record:
        rec = Record(key=key, name=name, module=module, kind=kind, by_path=by_path, folder=folder)
        rec.order = next(self._order)
        self._records[key] = rec
        fresh = False
        for folder_key in self._watch_folders(rec):
            count = self._folders.get(folder_key, 0)
            self._folders[folder_key] = count + 1
            fresh = fresh or not count
        real = self.realpath(key) if by_path else key  # an import's path is real already
        if real != key:  # named through a link: changes arrive under the real path too
            self._by_real.setdefault(real, set()).add(key)
        self._by_id[id(module)] = rec
        self._by_namespace[id(rec.namespace)] = rec
        self._by_name[name] = rec
        self._top_names.add(name.partition(".")[0])
        if folder is not None and folder != key:
            self._aliases[folder] = key
        if fresh:  # before the file is read: a save from now on is seen
            for listener in list(self._folder_listeners):
                listener(key)
        return rec

    def forget(self, rec: Record) -> None:
        """Stop reloading a module: it keeps running as it is, as a plain module."""
        with self._reload_lock:
            self.types.mark_fresh(rec.module)
            self._forget(rec)

    def _forget(self, rec: Record) -> None:
        if self._records.get(rec.key) is rec:
            del self._records[rec.key]
            self.graph.remove(rec.key)
            for folder in self._watch_folders(rec):
                left = self._folders.get(folder, 1) - 1
                if left > 0:
                    self._folders[folder] = left
                else:
                    self._folders.pop(folder, None)
            keys = self._by_real.get(self.realpath(rec.key)) if rec.by_path else None
            if keys is not None:
                keys.discard(rec.key)
        self._by_id.pop(id(rec.module), None)
        self._by_namespace.pop(id(rec.namespace), None)
        with self._mark_lock:  # after a mark that found the record before it went, not amid
            self.guard.forget(rec.namespace)
        if self._by_name.get(rec.name) is rec:
            del self._by_name[rec.name]
        if rec.folder is not None:
            self._aliases.pop(rec.folder, None)

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

    # -- modules of the ordinary import system -------------------------------------------

    def exec_first(self, module: types.ModuleType, path: str) -> None:
        """Run a project module's first import (the loader's ``exec_module``).

        The import system has created the module and put it in ``sys.modules``; this compiles
        the source itself (never a stale .pyc) and runs it. Errors propagate unchanged, as a
        plain import's would.
        """
        name = module.__name__
        with self._create_lock:
            old = self._records.get(path)
            if old is not None and old.module is not module:
                self._forget(old)  # the module left sys.modules and is imported anew
            rec = self._add(path, name, module, _kind_of(module), by_path=False)
        try:
            self._first_run(rec)
        except BaseException:
            self._forget(rec)
            raise
        for listener in list(self._load_listeners):
            listener(path)

    def adopt(self, module: types.ModuleType, path: str) -> Record | None:
        """Track a module imported before relmod was asked to (its hash is taken now).

        A file changed since the module ran (its bytecode cache or its mtime says so) is marked
        stale at once. What the module holds of other tracked modules becomes its edges.
        """
        if id(module) in self._by_id:
            return self._by_id[id(module)]
        try:
            data = self.sources.read(path)
        except OSError:
            return None
        with self._create_lock:
            if id(module) in self._by_id:
                return self._by_id[id(module)]
            rec = self._add(path, module.__name__, module, _kind_of(module), by_path=False)
            rec.hash = content_hash(data)
            rec.version = 1
        self._adopt_edges(rec)
        if _changed_since_import(module, path):
            rec.hash = None
            self._mark({rec.key})
        for listener in list(self._load_listeners):
            listener(path)
        return rec

    def _adopt_edges(self, rec: Record) -> None:
        for value in list(rec.namespace.values()):
            if isinstance(value, types.ModuleType):
                target = self._by_id.get(id(value))
            else:
                owner = getattr(value, "__module__", None)
                target = self._by_name.get(owner) if isinstance(owner, str) else None
            if target is not None and target is not rec:
                self.graph.add_edge(rec.key, target.key, origin="runtime")

    # -- lookups --------------------------------------------------------------------------

    def add_folder_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` when a module is about to load from a folder (see
        :meth:`folders`) no module came from before, ahead of reading its file."""
        self._folder_listeners.append(listener)

    def add_load_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` after each new module loads (the embedded watcher follows)."""
        self._load_listeners.append(listener)

    def remove_load_listener(self, listener: Callable[[str], None]) -> None:
        """Stop calling a listener added with :meth:`add_load_listener`."""
        if listener in self._load_listeners:
            self._load_listeners.remove(listener)

    def add_invalidate_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(keys)`` after modules are marked stale, on the thread that marked
        them (the feed's, mostly), with the keys marked; keep it quick."""
        self._invalidate_listeners.append(listener)

    def remove_invalidate_listener(self, listener: Callable[[set[str]], None]) -> None:
        """Stop calling a listener added with :meth:`add_invalidate_listener`."""
        if listener in self._invalidate_listeners:
            self._invalidate_listeners.remove(listener)

    def record_of(self, module: object) -> Record | None:
        """The record of a reloading module, or None for any other object."""
        return self._by_id.get(id(module))

    def record_of_namespace(self, namespace: dict[str, Any]) -> Record | None:
        """The record whose module owns this globals dict."""
        return self._by_namespace.get(id(namespace))

    def record_at(self, key: str) -> Record | None:
        """The record of the module whose key (its file or folder path) this is."""
        return self._records.get(key)

    def record_of_name(self, name: str) -> Record | None:
        """The record of the module called ``name`` in ``sys.modules``."""
        return self._by_name.get(name)

    def note_alias(self, name: str) -> None:
        """The import system hands a reloading module out under ``name`` too."""
        self._top_names.add(name.partition(".")[0])

    def record_edge(self, dependent: str, dependency: str) -> None:
        """A module imported another while it ran."""
        if dependent != dependency:
            self.graph.add_edge(dependent, dependency, origin="runtime")

    @property
    def graph(self) -> DependencyGraph:
        """The dependency graph, with every module that finished its first run in it."""
        if self._unnoted:
            self._note_first_runs()
        return self._graph

    def _note_first_runs(self) -> None:
        """Write the edges and dependency versions of modules whose first run ended since.

        Deferred to the first question (an invalidation, a reload, ``get_dependencies``, the
        broker's edge report): a process that imports a thousand modules and never sees a save
        never pays for their dependencies. Nothing can move a version before: every reload
        begins by asking the graph.
        """
        unnoted = self._unnoted
        while unnoted:
            try:
                rec, imports = unnoted.popleft()
            except IndexError:
                break  # another thread took the last one
            if self._records.get(rec.key) is rec:
                self._note_imports(rec, imports)
                rec.dep_versions = self._versions_of_deps(rec)

    def _note_imports(self, rec: Record, imports: tuple[str, ...]) -> None:
        """Record what the module's import statements reached, read from its code (no hook),
        in one graph write, added to what the hook noted meanwhile (by-folder imports).

        ``from pkg import sub`` depends on the submodule, ``from pkg import name`` and
        ``import pkg.sub`` on the module named; an import of a module not loaded now (a function's
        import that has not run, a ``TYPE_CHECKING`` one) is no dependency.
        """
        edges: set[str] = set()
        package = "" if rec.by_path else rec.namespace.get("__package__") or ""
        by_name = self._by_name
        tops = self._top_names
        target = ""  # the module the current statement names ("": none, or not resolvable)
        names_used = False  # whether it needs the module itself (not only submodules of it)
        listed = False  # whether the current statement's "from" list has begun
        for item in imports:
            if item[0] == ":":
                if not target:
                    continue
                if not listed:
                    listed, names_used = True, False
                sub = by_name.get(target + "." + item[1:]) if item != ":*" else None
                if sub is not None:
                    edges.add(sub.key)
                else:
                    names_used = True
                continue
            if names_used:
                self._add_dependency(edges, target)
            if item == STDLIB_MARK:
                target, names_used = "", False
                if tops.isdisjoint(STDLIB_NAMES):
                    break  # no module of ours is named like one of the standard library
                continue
            name = item.lstrip(".")
            level = len(item) - len(name)
            if level:
                # Relative: resolved through the package (a module loaded by path has none; the
                # import hook resolves its imports by folder).
                parts = package.rsplit(".", level - 1) if package else []
                target = "" if len(parts) < level else f"{parts[0]}.{name}" if name else parts[0]
            else:
                # The standard library and installed packages: no record under that top name.
                dot = name.find(".")
                target = name if (name if dot < 0 else name[:dot]) in tops else ""
            names_used, listed = bool(target), False  # "import x" needs x; a list may say less
        if names_used:
            self._add_dependency(edges, target)
        edges.discard(rec.key)
        if edges:
            known = self._graph.dependencies_of(rec.key, origin="runtime")
            self._graph.set_dependencies(rec.key, edges.union(known), origin="runtime")

    def _add_dependency(self, edges: set[str], name: str) -> None:
        dependency = self._by_name.get(name) or self.record_of(sys.modules.get(name))
        if dependency is not None:
            edges.add(dependency.key)

    def files(self) -> dict[str, str | None]:
        """Every loaded source file with the hash of the version in use."""
        # A module whose first run has not finished has nothing to compare with yet.
        return {
            k: r.hash for k, r in list(self._records.items()) if r.kind != "folder" and r.version
        }

    def folders(self) -> set[str]:
        """The folders holding loaded modules (what an embedded watcher watches)."""
        return set(self._folders)

    def _folder_of(self, rec: Record) -> str:
        return rec.folder if rec.folder is not None else os.path.dirname(rec.key)

    def _watch_folders(self, rec: Record) -> set[str]:
        """The folder of the path the module was named by, and of its real file (a link's
        target may live elsewhere: an edit there is an edit of the module)."""
        folder = self._folder_of(rec)
        if not rec.by_path:
            return {folder}  # the import system's finder gave its real path already
        real = self._real_folder(folder)
        out = {folder, real}
        if rec.kind != "folder":
            out.add(os.path.dirname(self.realpath(rec.key)))
        if real != folder:
            out.add(os.path.dirname(folder))  # the link itself may be re-pointed
        return out

    def names_of(self, path: str) -> list[str]:
        """The paths a reported path stands for: itself, and the links that name it."""
        linked = self._by_real.get(path)
        return [path, *linked] if linked else [path]

    def invalidation_names(self, key: str) -> list[str]:
        """The paths whose invalidation reaches the module of ``key`` (see :meth:`invalidate`):
        the key, the package folder it stands for, the real file behind a link; [] when no
        module has this key. The folders above them reach it too."""
        rec = self._records.get(key)
        if rec is None:
            return []
        names = [key]
        if rec.folder is not None and rec.folder != key:
            names.append(rec.folder)
        if rec.by_path:
            real = self.realpath(key)
            if real != key:
                names.append(real)
        return names

    def linked_files(self) -> list[str]:
        """The loaded files named through a symbolic link (usually none)."""
        return [key for keys in list(self._by_real.values()) for key in keys]

    def _real_folder(self, folder: str) -> str:
        real = self._real_folders.get(folder)
        if real is None:
            real = self._real_folders[folder] = os.path.realpath(folder)
        return real

    def realpath(self, path: str) -> str:
        """``os.path.realpath``, with folders resolved once (an lstat per component is slow);
        the file itself costs one lstat (a module file may be a link of its own)."""
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        return os.path.join(self._real_folder(folder), name)

    def has_modules_under(self, folder: str) -> bool:
        """Whether a module was loaded from below ``folder`` (renamed, deleted, re-pointed)."""
        prefix = folder.rstrip(os.sep) + os.sep
        return any(key.startswith(prefix) for key in list(self._records))

    def records(self) -> list[Record]:
        """A snapshot of every record (safe to iterate while other threads load)."""
        return list(self._records.values())

    def dependencies(self, module: types.ModuleType) -> list[types.ModuleType]:
        """The modules ``module`` imported or used while it ran, sorted by path."""
        rec = self._by_id[id(module)]
        deps = sorted(self.graph.dependencies_of(rec.key))
        return [self._records[d].module for d in deps if d in self._records]

    def is_stale(self, module: types.ModuleType) -> bool:
        return self.types.is_stale(module)

    def stale_count(self) -> int:
        """How many modules are stale now: as many as were marked and are still stale (no
        walk over every module)."""
        records, is_stale = self._records, self.types.is_stale
        with self._mark_lock:  # no mark between the look and the pruning
            fresh = [
                key
                for key in self._maybe_stale
                if (rec := records.get(key)) is None or not is_stale(rec.module)
            ]
            self._maybe_stale.difference_update(fresh)
            return len(self._maybe_stale)

    def last_error(self) -> str | None:
        """The error of the module whose reload failed last, unless it reloaded since."""
        for key in reversed(list(self._failed_keys)):
            rec = self._records.get(key)
            if rec is not None and rec.last_error:
                return rec.last_error
            self._failed_keys.pop(key, None)
        return None

    def __contains__(self, path: str) -> bool:
        return path in self._records or path in self._aliases

    # -- invalidation (any thread) ------------------------------------------------------

    def invalidate(self, paths: Iterable[str], *, changed: Iterable[str] | None = None) -> set[str]:
        """Mark the modules of these files, and every module depending on them, stale.

        ``changed`` names the files whose content changed (affected too, whether or not
        ``paths`` repeats them), when the caller knows (a broker sends the affected set and
        the changed files apart); by default every path given may have changed. The reload
        reads again the files named as changed; a dependent only marked along is not read
        again while its stat signature is the one of the version that ran.

        Cheap and safe from any thread: it runs no user code. Returns the keys marked.
        """
        keys = self._keys_of(paths)
        named = keys if changed is None else self._keys_of(changed)
        keys |= named  # a changed file is affected too, whatever part of a split message said
        if not keys:
            return set()
        return self._mark(self.graph.affected_by(keys), named)

    def _keys_of(self, paths: Iterable[str]) -> set[str]:
        """The modules that reported paths stand for (a folder: every module under it)."""
        keys: set[str] = set()
        records, aliases, by_real = self._records, self._aliases, self._by_real
        for path in paths:
            path = aliases.get(path, path)
            if path in records:
                keys.add(path)
            if path in by_real:
                keys.update(by_real[path])  # reached through a link: the same module
            elif not path.endswith(".py"):
                # A folder renamed or deleted: every module under it.
                prefix = path.rstrip(os.sep) + os.sep
                keys.update(k for k in list(records) if k.startswith(prefix))
        return keys

    def _mark(self, affected: Iterable[str], named: AbstractSet[str] = frozenset()) -> set[str]:
        """Mark the loaded modules among ``affected`` stale (the others are skipped)."""
        marked = set()
        stale: list[tuple[str, str]] = []  # (key, name) of each, for the 'stale' events
        records, mark_stale, patch = self._records, self.types.mark_stale, self.patch
        stale_of = self.types.stale_of
        with self._mark_lock:
            for key in affected:
                rec = records.get(key)
                if rec is None:
                    continue
                rec.gen += 1
                if key in named:
                    rec.named = True
                module = rec.module
                twin = stale_of.get(type(module))
                try:
                    if twin is not None:  # mark_stale's usual case, without its call
                        module.__class__ = twin
                    else:
                        mark_stale(module)
                except TypeError:  # a module class whose layout forbids the switch
                    log.warning("relmod cannot mark %s stale: its module class is unusual", key)
                    continue
                marked.add(key)
                stale.append((key, rec.name))
                # Arm what patching.nothing_to_arm does not rule out, said with what the last
                # run noted: a module of data only (most of a deep chain), whose functions
                # were never seen and which no unit re-runs right now, has nothing to arm.
                if (
                    patch
                    and rec.kind != "folder"
                    and (rec.code is not None or not rec.data_only or rec.name in VERSIONS)
                ):
                    self.guard.arm(
                        rec.namespace,
                        rec.name,
                        functools.partial(self.refresh, rec.module),
                        code=rec.ran_code if rec.code is None else None,  # what made it
                    )
            if marked:
                self.generation += 1
                self._maybe_stale |= marked
        if self.listeners.hear_stale:
            self.listeners.emit_stale(stale, time.time())
        for listener in self._invalidate_listeners:
            listener(marked)
        return marked

    # -- reloading (user threads) -----------------------------------------------------

    def refresh(self, module: types.ModuleType) -> None:
        """Bring a stale module up to date: its stale dependencies first, then itself."""
        rec = self._by_id.get(id(module))
        if rec is None:
            self.types.mark_fresh(module)
            return
        with self._reload_lock:
            if rec.reloading or rec.key in self._scheduled or not self.types.is_stale(module):
                return  # another thread reloaded it, or it runs (or will) in this reload
            deps = self.graph.transitive_dependencies(rec.key)
            if self._scheduled and not deps.isdisjoint(self._scheduled):
                # Touched by a module re-running now, and depending on one that has not
                # finished: it runs after them (it stays stale); meanwhile it is seen as it is,
                # as a first import would see a module not yet fully run.
                return
            todo = {rec.key} | {
                d
                for d in deps
                if d in self._records and self.types.is_stale(self._records[d].module)
            }
            self._bring_up_to_date(todo)

    def reload(self, target: str | types.ModuleType) -> types.ModuleType:
        """Re-execute a module now, even if unchanged, then every module depending on it."""
        module = self.load(target) if isinstance(target, str) else target
        rec = self._by_id[id(module)]
        with self._reload_lock:
            affected = {k for k in self.graph.affected_by([rec.key]) if k in self._records}
            self._bring_up_to_date(affected, force={rec.key}, strict=True)
        return module

    def _bring_up_to_date(
        self, keys: set[str], *, force: AbstractSet[str] = frozenset(), strict: bool = False
    ) -> None:
        outer = self._scheduled
        scheduled = self._scheduled = outer | keys  # ours: a nested reload puts it back
        try:
            for unit in self.graph.units_in_dependency_order(keys):
                members = sorted((self._records[k] for k in unit), key=lambda r: r.order)
                self._run_unit(members, force, strict=strict)
                scheduled.difference_update(unit)
        finally:
            self._scheduled = outer

    def _run_unit(self, members: list[Record], force: AbstractSet[str], *, strict: bool) -> None:
        gens = {id(rec): rec.gen for rec in members}
        runnable = [rec for rec in members if rec.kind != "folder" and rec.name not in self.frozen]
        try:
            todo = self._plan(runnable, members, force)
        except ReloadError as err:
            self._failed(err, members, gens, strict)
            return
        if todo:
            try:
                self._execute_unit(todo)
            except ReloadError as err:
                self._failed(err, members, gens, strict)
                return
        for rec in members:
            self._unmark(rec, gens[id(rec)], checked=True)

    def _plan(
        self, runnable: list[Record], members: list[Record], force: AbstractSet[str]
    ) -> list[Record]:
        """The members to re-execute, compiled; none when nothing they ran has changed."""
        reasons = False
        compiled: list[tuple[Record, bytes | None, str]] = []  # no bytes: ``ran_code`` runs
        disk = isinstance(self.sources, DiskSources)
        for rec in runnable:
            st = _stat(rec.key) if disk else None  # one stat: is it there, and has it moved
            on_disk = st is not None and stat.S_ISREG(st.st_mode) if disk else self._on_disk(rec)
            lost_init = rec.kind == "package" and rec.by_path and not on_disk
            if lost_init and rec.folder and self.sources.kind(rec.folder) == "folder":
                self._become_namespace(rec)  # its __init__.py was deleted
                continue
            if not on_disk:
                if len(members) > 1 or rec.key in force:
                    raise self._error(rec, "reload", FileNotFoundError(rec.key), first=False)
                # A dependency whose file is gone (deleted, or turned into a package): whether a
                # module still needs it is for its own run to say, so its dependents run again.
                rec.version += 1
                continue
            if st is not None and self._unchanged_since_run(rec, st, force):
                rec.next_signature, rec.next_young = rec.ran_signature, rec.ran_young
                compiled.append((rec, None, rec.hash or ""))  # no read, no hash
                if rec.key in force or self._deps_moved(rec, members):
                    reasons = True
                continue
            rec.next_signature = None if st is None else signature_of(st)
            rec.next_young = st is not None and is_young(st)
            try:
                data = self.sources.read(rec.key)
            except OSError as err:
                raise self._error(rec, "reload", err, first=False) from err
            digest = content_hash(data)
            same = digest == rec.hash and rec.ran_code is not None
            compiled.append((rec, None if same else data, digest))  # the same bytes: same code
            changed = digest not in (rec.hash, rec.failed_hash)
            if changed or rec.key in force or self._deps_moved(rec, members):
                reasons = True
        if not reasons:
            return []
        for rec, source, digest in compiled:
            try:
                rec.code = rec.ran_code if source is None else load_code(rec.key, source, digest)
            except Exception as err:  # SyntaxError, ValueError, RecursionError, MemoryError...
                rec.failed_hash = digest
                for other, _, _ in compiled:
                    other.code = None
                raise self._error(rec, "reload", err, first=False) from err
            rec.digest = digest
        return [rec for rec, _, _ in compiled]

    def _unchanged_since_run(
        self, rec: Record, st: os.stat_result, force: AbstractSet[str]
    ) -> bool:
        """Whether the file still holds the source of ``ran_code``, judged without reading it.

        Its stat signature must be the one taken before the read of that source. An old one
        (both then and now older than the stat-trust limit) stands for the content: a later
        save would have moved it. A young one does not (two saves within one timestamp tick,
        same size, share it), but a feed names every file whose content changed: a file no
        invalidation named since its content was last checked, and no forced reload of it,
        holds what ran. A save no feed has reported yet reloads when it is reported.
        """
        if rec.ran_code is None or rec.hash is None or rec.ran_signature != signature_of(st):
            return False  # (no hash: a re-run is forced, as after a fork)
        if not rec.ran_young and not is_young(st):
            return True
        return not rec.named and rec.key not in force

    def _become_namespace(self, rec: Record) -> None:
        """A package loaded by path lost its ``__init__.py``: it is now a folder namespace."""
        assert rec.folder is not None
        ns = rec.namespace
        for key in [k for k in ns if k not in _KEPT_KEYS]:
            if not isinstance(ns[key], types.ModuleType):
                del ns[key]  # what __init__.py defined goes; the folder's entries stay
        ns["__file__"] = None
        ns["__doc__"] = None
        self._records.pop(rec.key, None)
        self._aliases.pop(rec.folder, None)
        self.graph.remove(rec.key)
        rec.key, rec.kind, rec.hash = rec.folder, "folder", None
        self._records[rec.key] = rec
        self.types.mark_fresh(rec.module)
        rec.module.__class__ = self.types.folder
        rec.version += 1
        log.info("%s lost its __init__.py: it is now a folder namespace", rec.folder)

    def _execute_unit(self, todo: list[Record]) -> None:
        if len(todo) > 1:
            self.import_hook_needed()  # a member's import of one not re-run yet runs it there
        saved = [(rec, dict(rec.namespace)) for rec in todo]
        edges = {rec.key: self.graph.dependencies_of(rec.key) for rec in todo}
        outer_pending = self._pending
        self._pending = {rec.name: rec for rec in todo}
        self._in_progress = self._in_progress + saved
        snapshots = dict(saved)
        try:
            for rec in todo:
                if rec.name in self._pending:
                    self._rerun(rec, snapshots[rec])
        except BaseException as err:
            failed = self._pending_failure or todo[0]
            # Another module's failed reload surfacing here is not a fault of this unit's files.
            own = not (isinstance(err, ReloadError) and err.path not in {r.key for r in todo})
            for rec, good in saved:
                _restore(rec, good)
                self.graph.set_dependencies(rec.key, edges[rec.key], origin="runtime")
                if sys.modules.get(rec.name) is not rec.module:
                    sys.modules[rec.name] = rec.module
                if own and rec.digest != rec.hash:
                    rec.failed_hash = rec.digest  # retried only when a new version is saved
                rec.code = None
            if isinstance(err, ReloadError) or not isinstance(err, Exception):
                raise
            raise self._error(failed, "reload", err, first=False) from err
        finally:
            self._pending = outer_pending
            self._in_progress = [p for p in self._in_progress if p not in saved]
            self._pending_failure = None
        if self.patch:
            self._patch(saved)
            for rec, _old in saved:  # here, so that the next mark (on the feed) need not walk
                self.guard.replan(rec.namespace, rec.name)
        now = time.time()
        for rec, old in saved:
            rec.hash = rec.digest
            rec.ran_code, rec.ran_signature = rec.code, rec.next_signature
            rec.data_only = rec.code is not None and not makes_functions(rec.code)
            rec.ran_young = rec.next_young
            rec.failed_hash = None
            rec.last_error = None
            rec.version += 1
            rec.code = None
            rec.dep_versions = self._versions_of_deps(rec)
            linecache.checkcache(rec.key)
            self.reloads += 1
            if not self.patch:
                self._note_replaced_classes(old, rec.namespace)
            log.info("reloaded %s", rec.key)
            if self.listeners:
                self.listeners.emit(Event("reloaded", rec.key, rec.name, now))

    def _patch(self, saved: list[tuple[Record, dict[str, Any]]]) -> None:
        """Give the previous version's objects the new code, wherever they are held."""
        kept: dict[int, Any] = {}  # id of a new object -> the previous one that stays
        cycle = len(saved) > 1
        for rec, old in saved:
            ns = rec.namespace
            ran = dict(ns) if cycle else {}
            report = patch_namespace(old, ns, rec.name)
            self.patched += report.patched
            self.unpatchable += len(report.unpatchable)
            if report.replaced_classes:
                self.old_classes.update(report.replaced_classes)
            for key, value in ran.items():
                if ns.get(key, value) is not value:
                    kept[id(value)] = ns[key]
        if kept:
            # Members of a cycle imported each other's new objects before patching kept the
            # previous ones: re-exports must stay identical to their source.
            for rec, _ in saved:
                ns = rec.namespace
                for key, value in list(ns.items()):
                    if id(value) in kept:
                        ns[key] = kept[id(value)]

    def run_pending(self, name: str) -> None:
        """An import statement reached ``name`` while its unit re-runs: run it now, nested.

        This is where a first import would have run it; called by the import hook.
        """
        rec = self._pending.get(name)
        if rec is not None:
            good = next(g for r, g in self._in_progress if r is rec)
            self._rerun(rec, good)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def _rerun(self, rec: Record, old: dict[str, Any]) -> None:
        del self._pending[rec.name]
        code = rec.code
        assert code is not None
        ns = rec.namespace
        ns.pop("__annotations__", None)  # a fresh run makes its own (SETUP_ANNOTATIONS)
        ns["__doc__"] = None
        self.graph.set_dependencies(rec.key, (), origin="runtime")
        if sys.modules.get(rec.name) is not rec.module:
            sys.modules[rec.name] = rec.module  # it may have been replaced; it runs visibly
        try:
            with self._running(rec):
                exec(code, ns)
                self._note_imports(rec, imports_of(code))
                _drop_undefined(rec, old, code)
                callback = ns.get("__reload__")
                if callable(callback):
                    callback(old)
        except BaseException:
            if self._pending_failure is None:
                self._pending_failure = rec
            raise

    def _first_run(self, rec: Record) -> None:
        """A module's first execution: read, hash, compile (or take the cached code), run."""
        verb = "load"
        signature: tuple[int, int, int, int] | None = None
        young = False
        try:
            if isinstance(self.sources, DiskSources):
                code, digest, signature, young = load_file_code(rec.key)
            else:
                data = self.sources.read(rec.key)
                digest = content_hash(data)
                code = load_code(rec.key, data, digest)
        except OSError as err:
            if rec.by_path:
                raise ModuleNotFound(f"Cannot load {rec.key}: {err.strerror}.") from err
            raise
        except Exception as err:
            if rec.by_path:
                raise self._error(rec, verb, err, first=True) from err
            raise
        try:
            with self._running(rec):
                exec(code, rec.namespace)
        except BaseException as err:
            if rec.by_path and isinstance(err, Exception) and not isinstance(err, ReloadError):
                raise self._error(rec, verb, err, first=True) from err
            raise
        rec.hash = digest
        rec.ran_code, rec.ran_signature, rec.ran_young = code, signature, young
        rec.data_only = not makes_functions(code)
        rec.version = 1
        self._unnoted.append((rec, imports_of(code)))  # edges and versions when first asked
        linecache.checkcache(rec.key)

    @contextmanager
    def _running(self, rec: Record) -> Iterator[None]:
        stack = getattr(self._local, "running", None)
        if stack is None:
            stack = self._local.running = []
        stack.append(rec)
        rec.reloading = True
        try:
            yield
        finally:
            rec.reloading = False
            stack.pop()

    def _failed(
        self, err: ReloadError, members: list[Record], gens: dict[int, int], strict: bool
    ) -> None:
        for rec in members:
            if rec.key == err.path:
                rec.last_error = str(err)
                self._failed_keys.pop(rec.key, None)  # now the last to fail
                self._failed_keys[rec.key] = None
            self._unmark(rec, gens[id(rec)])
        failed = self._records.get(err.path)
        if self.listeners and failed is not None:
            self.listeners.emit(Event("failed", failed.key, failed.name, time.time(), str(err)))
        if strict or self.on_error == "raise":
            raise err
        self.errors_logged += 1
        log.error("%s", err)

    def _unmark(self, rec: Record, gen: int, *, checked: bool = False) -> None:
        with self._mark_lock:
            if rec.gen != gen:
                return  # an invalidation arrived while we reloaded: it stays stale
            if checked:  # what runs is what its file held after the last invalidation
                rec.named = False
            self.types.mark_fresh(rec.module)
            self.guard.disarm(rec.namespace)  # also when patching was turned off while armed

    def _on_disk(self, rec: Record) -> bool:
        """Whether the module's file (or folder) is still there, as its sources see it."""
        return self.sources.kind(rec.key) == ("folder" if rec.kind == "folder" else "file")

    def _deps_moved(self, rec: Record, unit: list[Record]) -> bool:
        inside = {r.key for r in unit}
        for dep, version in rec.dep_versions.items():
            other = self._records.get(dep)
            if other is not None and dep not in inside and other.version != version:
                return True
        return False

    def _versions_of_deps(self, rec: Record) -> dict[str, int]:
        return {
            d: self._records[d].version
            for d in self._graph.dependencies_of(rec.key)
            if d in self._records
        }

    def _error(self, rec: Record, verb: str, err: BaseException, *, first: bool) -> ReloadError:
        if isinstance(err, ReloadError):
            return err
        if isinstance(err, OSError):
            what = err.strerror or type(err).__name__
            if isinstance(err, FileNotFoundError):
                what = "the file is gone"
            return ReloadError(
                f"Cannot {verb} {rec.key}: {what}. The last good version stays in use; restore "
                f"the file to reload.",
                path=rec.key,
            )
        if isinstance(err, SyntaxError) and err.filename in (rec.key, None):
            lineno = err.lineno
        else:
            lineno = _line_in(err, rec.key)
        where = f" at line {lineno}" if lineno else ""
        detail = getattr(err, "msg", None) if isinstance(err, SyntaxError) else None
        detail = detail or str(err) or type(err).__name__
        return ReloadError(
            f"Cannot {verb} {rec.key}: {type(err).__name__}{where}: {detail}. "
            + _still_in_use(first, self.on_error),
            path=rec.key,
            lineno=lineno,
        )

    def _note_replaced_classes(self, old_state: dict[str, Any], new_state: dict[str, Any]) -> None:
        name = old_state.get("__name__")
        replaced = {
            value
            for key, value in old_state.items()
            if isinstance(value, type)
            and value.__module__ == name
            and new_state.get(key) is not value
        }
        self.old_classes.update(replaced)
        if replaced and self.count_stale_objects:
            log.info("%d live object(s) of replaced classes", len(stale_objects(replaced)))


def _nothing() -> None:
    """No import hook to install (a registry used without one)."""


def _kind_of(module: types.ModuleType) -> Kind:
    return "package" if hasattr(module, "__path__") else "file"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):  # as os.path.isfile: missing, unreadable, or a bad name
        return None


def _restore(rec: Record, good: dict[str, Any]) -> None:
    ns = rec.namespace
    for key in [k for k in ns if k not in good]:
        del ns[key]
    ns.update(good)


def _drop_undefined(rec: Record, old: dict[str, Any], code: types.CodeType) -> None:
    """Drop the names the new version no longer defines (a fresh import would not have them).

    A name stays when the new run bound it, when its value changed (something set it), or when
    it is a submodule of the package.
    """
    ns = rec.namespace
    if rec.bound is None or rec.bound[0] is not code:  # an unchanged module runs the same code
        rec.bound = (code, *defined_names(code))
    _, bound, star = rec.bound
    prefix = rec.name + "."
    for key, value in old.items():
        if key in _KEPT_KEYS or key in bound or key not in ns or ns[key] is not value:
            continue
        if isinstance(value, types.ModuleType) and getattr(value, "__name__", "") == prefix + key:
            continue  # a submodule: the import system set it, and it is still there
        if star and not key.startswith("_"):
            continue  # `from x import *` may have bound it again
        del ns[key]


def _changed_since_import(module: types.ModuleType, path: str) -> bool:
    """Whether the file changed after the module ran, judged by its bytecode cache's record."""
    cached = getattr(module, "__cached__", None)
    try:
        st = os.stat(path)
    except OSError:
        return False
    if isinstance(cached, str):
        try:
            with open(cached, "rb") as file:
                header = file.read(16)
        except OSError:
            header = b""
        if len(header) == 16 and int.from_bytes(header[4:8], "little") & 1 == 0:
            mtime = int.from_bytes(header[8:12], "little")
            size = int.from_bytes(header[12:16], "little")
            return (mtime, size) != (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
    return False


def stale_objects(classes: Iterable[type]) -> list[Any]:
    """Live instances of the given classes (a walk over the garbage collector's objects)."""
    wanted = set(classes)
    if not wanted:
        return []
    return [obj for obj in gc.get_objects() if type(obj) in wanted]


def _still_in_use(first: bool, on_error: str = "raise") -> str:
    """What happens next, said at the end of a failed load's or reload's message."""
    if first:
        return "Fix the file and load it again."
    if on_error == "keep":
        return (
            "The last good version stays in use (this process logs the error and goes on); "
            "save a fixed version to reload."
        )
    return (
        "The last good version stays in use; this error is raised once, where the module was "
        "used; save a fixed version to reload."
    )


def _line_in(err: BaseException, path: str) -> int | None:
    """The deepest line of ``path`` in the traceback of ``err``."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return line
