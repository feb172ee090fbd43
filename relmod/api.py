"""The library face: files and folders as modules, imports into a namespace, reload control.

Every function here is a thin front for :class:`relmod.client.session.Client`.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from relmod.client.session import default_client
from relmod.errors import ImportSpecError, ModuleNotFound
from relmod.graph import DependencyGraph
from relmod.machinery.events import Event
from relmod.machinery.registry import normalize


def _caller_globals(depth: int = 2) -> dict[str, Any]:
    return sys._getframe(depth).f_globals


def _caller_folder(g: dict[str, Any]) -> str:
    """Where use/imp resolve relative paths: the caller's file's folder, else the cwd."""
    file = g.get("__file__")
    if isinstance(file, str) and file:
        return os.path.dirname(os.path.realpath(file))
    return os.getcwd()


def _note_dependency(g: dict[str, Any], module: types.ModuleType) -> None:
    """A relmod module that calls use/imp depends on what it loads."""
    reg = default_client().registry
    importer = reg.record_of_namespace(g)
    target = reg.record_of(module)
    if importer is not None and target is not None:
        reg.record_edge(importer.key, target.key)


def at(path: str) -> types.ModuleType:
    """Load a file as a module, or a folder as a namespace; relative to the cwd.

    Example:
        >>> myfunc = relmod.at('./myfunc.py')       # doctest: +SKIP
        >>> lib = relmod.at('.'); lib.myfunc.add(1, 2)  # doctest: +SKIP
    """
    return default_client().registry.load(normalize(path))


def up(path: str) -> types.ModuleType:
    """The folder holding ``path`` (usually ``__file__``), as a namespace; relative to the cwd.

    Example:
        >>> here = relmod.up(__file__)  # doctest: +SKIP
    """
    return at(os.path.dirname(normalize(path)))


def use(path: str, *, globals: dict[str, Any] | None = None) -> types.ModuleType:
    """Like :func:`at`, but relative paths resolve against the caller's ``__file__``.

    Example:
        >>> helpers = relmod.use('./helpers.py')  # doctest: +SKIP
    """
    g = globals if globals is not None else _caller_globals()
    module = default_client().registry.load(normalize(path, _caller_folder(g)))
    _note_dependency(g, module)
    return module


def _split_as(text: str) -> tuple[str, str | None]:
    head, sep, alias = text.rpartition(" as ")
    if not sep:
        return text.strip(), None
    alias = alias.strip()
    if not alias.isidentifier():
        raise ImportSpecError(f"{alias!r} in {text!r} is not a valid name to bind.")
    return head.strip(), alias


def _names(module: types.ModuleType, fromlist: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in fromlist.split(","):
        item = item.strip()
        if not item:
            raise ImportSpecError(f"Empty name in {fromlist!r}; separate names with single commas.")
        if item == "*":
            public = getattr(module, "__all__", None)
            if public is None:
                public = [n for n in vars(module) if not n.startswith("_")]
            for name in public:
                out[name] = getattr(module, name)
            continue
        name, alias = _split_as(item)
        if not name.isidentifier():
            raise ImportSpecError(f"{name!r} in {fromlist!r} is not a name to import.")
        try:
            out[alias or name] = getattr(module, name)
        except AttributeError as err:
            raise ImportSpecError(
                f"Cannot import {name!r} from {module!r}: it has no such name. Nothing was "
                f"imported; dir() of the module lists its names."
            ) from err
    return out


def _inject(
    g: dict[str, Any], module: types.ModuleType, spec_alias: str | None, fromlist: str | None
) -> types.ModuleType:
    updates: dict[str, Any] = {}
    if spec_alias is not None:
        updates[spec_alias] = module
    if fromlist is not None:
        updates.update(_names(module, fromlist))
    elif spec_alias is None:
        name = _stem(module)
        if not name.isidentifier():
            raise ImportSpecError(
                f"{module!r} has no name that is an identifier; say one with "
                f"relmod.imp('path as name')."
            )
        updates[str(name)] = module
    g.update(updates)  # all or nothing: every name was resolved first
    return module


def _stem(module: types.ModuleType) -> str:
    """The name a module loaded by path is bound under: its file's or folder's name."""
    rec = default_client().registry.record_of(module)
    if rec is None:
        return str(object.__getattribute__(module, "__dict__").get("__name__", ""))
    base = rec.folder if rec.folder is not None else rec.key
    stem = os.path.basename(base.rstrip(os.sep))
    return stem[:-3] if stem.endswith(".py") else stem


class _Imp:
    """``relmod.imp``: import a relmod module, or names from it, into the caller's globals."""

    def __call__(
        self, spec: str, fromlist: str | None = None, globals: dict[str, Any] | None = None
    ) -> types.ModuleType:
        """Import a path (relative to the caller's file) into the caller's namespace.

        Example:
            >>> relmod.imp('./myfunc.py', 'add as add2')   # binds add2  # doctest: +SKIP
            >>> relmod.imp('./myfunc.py as mfunc')          # binds mfunc # doctest: +SKIP
            >>> relmod.imp('. as lib')                      # binds lib   # doctest: +SKIP
        """
        g = globals if globals is not None else _caller_globals()
        path, alias = _split_as(spec)
        module = default_client().registry.load(normalize(path, _caller_folder(g)))
        _note_dependency(g, module)
        return _inject(g, module, alias, fromlist)

    def site(
        self, name: str, fromlist: str | None = None, globals: dict[str, Any] | None = None
    ) -> types.ModuleType:
        """Import a module named in a relmod site file.

        Example:
            >>> relmod.imp.site('tools', 'helper')  # doctest: +SKIP
        """
        from relmod.sites import default_site

        g = globals if globals is not None else _caller_globals()
        base, alias = _split_as(name)
        module = default_client().registry.load(normalize(default_site()[base]))
        _note_dependency(g, module)
        return _inject(g, module, alias or base, fromlist)

    def __repr__(self) -> str:
        return "<function relmod.imp>"


imp = _Imp()


def install(globals: dict[str, Any] | None = None) -> types.ModuleType:
    """Make ``from . import name`` work in ``__main__`` or a notebook; returns the folder.

    The folder is that of ``__file__``, or the cwd in cell mode (no ``__file__``).

    Example:
        >>> here = relmod.install(globals())  # doctest: +SKIP
        >>> from . import myfunc              # doctest: +SKIP
    """
    g = globals if globals is not None else _caller_globals()
    client = default_client()
    folder = _caller_folder(g)
    client.hook.install()
    client.hook.installed_namespaces[id(g)] = folder
    return at(folder)


def toplevel(name: str, path: str | types.ModuleType) -> types.ModuleType:
    """Serve a file or folder to the ordinary import statement under ``name``.

    The module runs under ``name`` (a package's submodules under ``name.sub``), in
    ``sys.modules``, as an import would run it, and reloads like every project module.

    Example:
        >>> relmod.toplevel('myfunc', './myfunc.py')  # doctest: +SKIP
        >>> import myfunc                             # doctest: +SKIP
    """
    client = default_client()
    if isinstance(path, types.ModuleType):
        rec = client.registry.record_of(path)
        if rec is None:
            raise TypeError(f"{path!r} is not a relmod module; give its path instead.")
        target = rec.folder or rec.key
    else:
        target = normalize(path)
        sources = client.registry.sources  # the disk, or a broker serving a remote worker
        if sources.kind(target) is None and sources.kind(target + ".py") == "file":
            target += ".py"
    if client.registry.sources.kind(target) is None:
        raise ModuleNotFound(
            f"Cannot serve {name!r} from {target}: no such file or folder. Check the path; "
            f"relative paths resolve against the current folder ({os.getcwd()})."
        )
    client.hook.install()
    client.finder.register(name, target)
    current = sys.modules.get(name)
    if current is not None and client.registry.record_of(current) is None:
        del sys.modules[name]  # an older module of that name: the registered path wins
    return importlib.import_module(name)


def connect(
    path: str | None = None, *, timeout: float = 5.0, path_map: dict[str, str] | None = None
) -> Any:
    """Subscribe this process to the broker of the project holding ``path`` (default: the cwd).

    Idempotent: a second call returns the same connection. Processes started from this one
    (spawned pool workers, subprocesses) connect to the same broker by themselves.

    Args:
        path: a folder inside the project; the broker is found by walking up from it, unless
            ``RELMOD_BROKER`` names a connection file.
        timeout: seconds to wait for the broker's first answer.
        path_map: ``{broker_path: local_path}`` prefixes, for a process that sees the project
            under another path (a container).

    Returns:
        The connection, with ``status()`` and ``close()``.

    Raises:
        BrokerNotFound: no live broker serves the project.

    Example:
        >>> conn = relmod.connect()        # doctest: +SKIP
        >>> conn.status()['connected']     # doctest: +SKIP
        True
    """
    start = normalize(path) if path is not None else os.getcwd()
    return default_client().connect(start, timeout=timeout, path_map=path_map)


def connect_remote(
    connection_file: str,
    *,
    path_map: dict[str, str] | None = None,
    client_key: str | None = None,
    timeout: float = 5.0,
) -> Any:
    """Subscribe to a broker whose project is not on this disk: sources come from the broker.

    Example:
        >>> relmod.connect_remote(
        ...     '/run/relmod/conn.json', path_map={'/srv/p': '/app'}
        ... )  # doctest: +SKIP
    """
    from relmod.client.remote import connect_remote as connect

    return connect(connection_file, path_map=path_map, client_key=client_key, timeout=timeout)


def stale_objects() -> list[Any]:
    """Live objects whose class comes from an older version of a relmod-loaded module.

    After a reload, instances made before it keep their old class: ``isinstance`` against the
    new class fails, pickling fails, old Enum members compare unequal to new ones. This finds
    them (a walk over the garbage collector's objects: call it on demand, not in a loop).

    Example:
        >>> [type(o).__name__ for o in relmod.stale_objects()]  # doctest: +SKIP
        ['Point', 'Point']
    """
    from relmod.machinery.registry import stale_objects as find

    return find(default_client().registry.old_classes)


def reload(target: Any) -> Any:
    """Reload now: a path, a relmod module, or an ordinary module, and everything depending on it.

    Example:
        >>> relmod.reload('./myfunc.py')  # doctest: +SKIP
    """
    return default_client().reload(target)


def sync(timeout: float = 10.0) -> None:
    """Return once every change saved before the call is visible to the next module use.

    Example:
        >>> open('f.py', 'w').write('X = 2'); relmod.sync(); f.X  # doctest: +SKIP
        2
    """
    default_client().sync(timeout)


def configure(
    *,
    on_error: str | None = None,
    poll: bool | None = None,
    count_stale_objects: bool | None = None,
    exclude: Iterable[str] | None = None,
    patch: bool | None = None,
) -> None:
    """Set how failed reloads surface, force polling, exclude modules, patch held objects.

    Args:
        on_error: ``'raise'`` (default: the error surfaces at the access that triggered the
            reload) or ``'keep'`` (workers: log it once and keep serving the old code).
        poll: force the polling watcher (network mounts, containers); also ``RELMOD_POLL=1``.
        count_stale_objects: say in each reload's log line how many live objects still have
            a class of the replaced version (costs a walk over every object per reload).
        exclude: module-name patterns (``fnmatch``; a package covers its submodules) that never
            reload, for modules that reload badly (import-time registration such as ORM
            models). Also ``RELMOD_EXCLUDE=pkg.models,legacy.*`` for workers.
        patch: update the previous version's functions and classes in place after a reload,
            so references held elsewhere (``from mod import f``, instances, callbacks) run the
            new code, and a call of a held function of a stale module reloads it (default on;
            ``RELMOD_PATCH=0`` turns it off).

    Example:
        >>> relmod.configure(on_error='keep')  # a worker: log once, keep the old code
    """
    client = default_client()
    client.configure(on_error=on_error, poll=poll, exclude=exclude)
    if patch is not None:
        client.registry.patch = patch
    if count_stale_objects is not None:
        client.registry.count_stale_objects = count_stale_objects


def enable(blacklist: Iterable[str] = ()) -> None:
    """Make every module imported from now on reload when its file changes (not only the project's).

    Without a broker, a lone process then reloads its ordinary modules lazily, on first use
    after an edit, like the project's modules after :func:`connect`. Installed packages and the
    standard library never reload.

    Args:
        blacklist: module names (a package covers its submodules) that stay in the dependency
            graph but never reload.

    Example:
        >>> relmod.enable(blacklist=['legacy'])  # doctest: +SKIP
    """
    default_client().enable(blacklist)


def disable() -> None:
    """Stop making new imports reloading, and forget the modules :func:`enable` tracked."""
    default_client().disable()


def get_dependencies(module: types.ModuleType | str) -> list[types.ModuleType]:
    """The reloading modules ``module`` imported while it ran.

    Example:
        >>> relmod.get_dependencies(mymodule)  # doctest: +SKIP
        [<module 'leaf' ...>]
    """
    client = default_client()
    if isinstance(module, str):
        found = sys.modules.get(module)
        if found is None:
            return []
        module = found
    if client.registry.record_of(module) is None:
        return []
    return client.registry.dependencies(module)


def add_listener(listener: Callable[[Event], object]) -> None:
    """Call ``listener(event)`` for everything that happens to modules in this process.

    Events carry their ``kind`` (``'stale'``, ``'reloaded'``, ``'failed'``), the ``path``, the
    module ``name``, a ``time.time()`` timestamp and, for failures, the ``error`` message.
    ``'stale'`` arrives on the feed's thread, the others on the thread that reloaded. Keep
    listeners quick; one that raises is logged once and never breaks the feed.

    Example:
        >>> relmod.add_listener(lambda e: print(e.kind, e.name))  # doctest: +SKIP
    """
    default_client().registry.listeners.add(listener)


def remove_listener(listener: Callable[[Event], object]) -> None:
    """Stop calling a listener given to :func:`add_listener`."""
    default_client().registry.listeners.remove(listener)


class Deps:
    """What :func:`deps` returns: prints as one line per module with its dependencies."""

    def __init__(self, graph: DependencyGraph) -> None:
        self.graph = graph

    def __repr__(self) -> str:
        return self.graph.to_text() or "(no dependencies recorded yet)"

    __str__ = __repr__


def deps() -> Deps:
    """The dependency graph of the relmod modules this process loaded.

    Example:
        >>> print(relmod.deps())  # doctest: +SKIP
    """
    return Deps(default_client().registry.graph)


def wrap(target: str | types.ModuleType) -> types.ModuleType:
    """A reloading relmod module for a path or for an ordinary module's source file.

    Example:
        >>> live = relmod.wrap(mymodule)  # doctest: +SKIP
    """
    if isinstance(target, str):
        return at(target)
    if default_client().registry.record_of(target) is not None:
        return target
    file = getattr(target, "__file__", None)
    if not isinstance(file, str):
        raise TypeError(f"{target!r} has no source file to wrap.")
    return at(file)


def unwrap(module: types.ModuleType) -> types.ModuleType:
    """A plain module holding a snapshot of a relmod module's current namespace.

    Example:
        >>> frozen = relmod.unwrap(myfunc)  # doctest: +SKIP
    """
    ns = vars(module)  # brings a stale module up to date first
    plain = types.ModuleType(str(ns.get("__name__", "module")))
    plain.__dict__.update({k: v for k, v in ns.items() if k != "__relmod_folder__"})
    return plain
