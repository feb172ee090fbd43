"""Module types, and the stale twins that make a module reload on its next use.

An up-to-date module keeps the class it was born with: a plain ``types.ModuleType`` for every
ordinary module and file module (CPython 3.11+ specialises attribute access only for exactly that
type, so any subclass would cost about five times more). Folders (:class:`FolderModule`) and
packages loaded by path (:class:`PackageModule`) are subclasses, because ``lib['../']`` and
entries-as-attributes need methods on the type.

When an invalidation arrives, a feed thread switches the module's ``__class__`` to the stale twin
of its class (one assignment). The twin's ``__getattribute__`` asks the owner (a registry) to
bring the module up to date, in the user's thread, and the owner switches the class back. Twins
are made per owner and per class, on demand, so a module that set its own ``ModuleType``
subclass keeps it.
"""

from __future__ import annotations

import importlib.abc
import os
import threading
import types
from collections.abc import Callable
from typing import Any, Protocol

from relmod.ignore import is_ignored

# Attributes that never change across reloads and that the import system and repr() read
# while a reload may be in progress: reading them must not start a reload.
PASSTHROUGH = frozenset(
    {"__class__", "__name__", "__file__", "__spec__", "__loader__", "__package__", "__path__"}
)


class Owner(Protocol):
    """What the module types ask of the registry that owns them."""

    def refresh(self, module: types.ModuleType) -> None:
        """Bring a stale module up to date, in the calling thread."""
        ...

    def child(self, folder_module: types.ModuleType, name: str) -> types.ModuleType | None:
        """``folder.name``: the folder's ``name.py`` or ``name/``."""
        ...

    def item(self, folder_module: types.ModuleType, relative: str) -> types.ModuleType:
        """``folder['../other dir']``: a path relative to the folder."""
        ...


def fs_name_to_attr(name: str) -> str | None:
    """The attribute name a folder entry gets, or None when it is not an identifier.

    >>> fs_name_to_attr('my_mod.py'), fs_name_to_attr('Documents and Settings')
    ('my_mod', None)
    """
    if name.endswith(".py"):
        name = name[:-3]
    if not name.isidentifier() or name == "__pycache__" or name.startswith("__init__"):
        return None
    return name


class PathLoader(importlib.abc.Loader):
    """The ``__loader__`` of a module loaded by path; its repr is what the module's repr shows.

    A module whose spec has no origin shows its loader's repr: ``<module 'f' (relmod:
    /p/f.py)>``, and ``, missing`` is added when the file is gone.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        missing = "" if os.path.exists(self.path) else ", missing"
        return f"relmod: {self.path}{missing}"

    def get_source(self, fullname: str) -> str | None:
        """The current source (tracebacks and ``inspect`` read it through linecache)."""
        from relmod.sources import decode_source, read_source

        try:
            return decode_source(read_source(self.path))
        except (OSError, UnicodeDecodeError, SyntaxError):
            return None


class FolderModule(types.ModuleType):
    """A folder as a namespace: its ``.py`` files and subfolders are its attributes.

    Names that are not identifiers are reached with ``folder['./Documents and Settings']``, and
    ``folder['../']`` goes up a folder.
    """

    _owner: Owner | None = None  # set on the per-registry subclass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        owner = type(self)._owner
        child = owner.child(self, name) if owner is not None else None
        if child is None:
            raise AttributeError(
                f"{folder_of(self)!r} has no file {name}.py and no folder {name}/; "
                f"dir() lists what is there."
            )
        return child

    def __getitem__(self, relative_path: str) -> Any:
        owner = type(self)._owner
        if owner is None:
            raise KeyError(relative_path)
        return owner.item(self, relative_path)

    def __dir__(self) -> list[str]:
        d = object.__getattribute__(self, "__dict__")
        user_dir = d.get("__dir__")
        names = set(user_dir()) if callable(user_dir) else set(d)
        names.update(list_folder(folder_of(self)))
        return sorted(names)

    def __repr__(self) -> str:
        folder = folder_of(self)
        missing = "" if os.path.isdir(folder) else " (missing)"
        kind = "package" if isinstance(self, PackageModule) else "folder"
        return f"<relmod {kind} {folder + os.sep!r}{missing}>"


class PackageModule(FolderModule):
    """A folder with ``__init__.py``: the file runs, and the folder's entries are attributes too."""


def folder_of(module: types.ModuleType) -> str:
    """The folder a FolderModule stands for."""
    d = object.__getattribute__(module, "__dict__")
    return str(d["__relmod_folder__"])


def list_folder(folder: str) -> list[str]:
    """The attribute names of a folder's ``.py`` files and subfolders."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    names = []
    for entry in entries:
        full = os.path.join(folder, entry)
        if is_ignored(full):
            continue
        if entry.endswith(".py") or os.path.isdir(full):
            attr = fs_name_to_attr(entry)
            if attr is not None:
                names.append(attr)
    return sorted(set(names))


class ModuleTypes:
    """One owner's module classes: its folder types and a stale twin for each class it marks.

    Example:
        >>> class Dummy:
        ...     def refresh(self, module): mt.mark_fresh(module)
        >>> mt = ModuleTypes(Dummy()); mod = types.ModuleType('m'); mod.x = 1
        >>> mt.mark_stale(mod); mt.is_stale(mod)
        True
        >>> mod.x, mt.is_stale(mod), type(mod) is types.ModuleType
        (1, False, True)
    """

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.folder: type[FolderModule] = type(
            "FolderModule", (FolderModule,), {"_owner": owner, "__module__": __name__}
        )
        self.package: type[FolderModule] = type(
            "PackageModule", (PackageModule, self.folder), {"__module__": __name__}
        )
        self.stale_of: dict[type[types.ModuleType], type[types.ModuleType]] = {}
        """The stale twin of each module class made so far (fresh class -> twin)."""
        self._fresh_of: dict[type[types.ModuleType], type[types.ModuleType]] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: free the lock the feed thread may have held at the fork (while it
        made a stale twin)."""
        self._lock = threading.Lock()

    def is_stale(self, module: types.ModuleType) -> bool:
        """Whether the module waits for a reload on its next use."""
        return type(module) in self._fresh_of

    def mark_stale(self, module: types.ModuleType) -> None:
        """Switch a module to its stale twin (idempotent; one assignment)."""
        cls = type(module)
        if cls in self._fresh_of:
            return
        stale = self.stale_of.get(cls) or self._make_twin(cls)
        module.__class__ = stale

    def mark_fresh(self, module: types.ModuleType) -> None:
        """Switch a stale module back to its own class: access costs what it always cost."""
        fresh = self._fresh_of.get(type(module))
        if fresh is not None:
            module.__class__ = fresh

    def _make_twin(self, fresh: type[types.ModuleType]) -> type[types.ModuleType]:
        refresh: Callable[[types.ModuleType], None] = self.owner.refresh

        def __getattribute__(self: types.ModuleType, name: str) -> Any:  # noqa: N807
            if name not in PASSTHROUGH:
                refresh(self)
            return fresh.__getattribute__(self, name)

        def __dir__(self: types.ModuleType) -> list[str]:  # noqa: N807
            refresh(self)
            return list(fresh.__dir__(self))

        with self._lock:
            stale = self.stale_of.get(fresh)
            if stale is None:
                stale = type(
                    "Stale" + fresh.__name__,
                    (fresh,),
                    {
                        "__getattribute__": __getattribute__,
                        "__dir__": __dir__,
                        "__module__": __name__,
                    },
                )
                self.stale_of[fresh] = stale
                self._fresh_of[stale] = fresh
            return stale
