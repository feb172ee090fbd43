"""The module objects relmod hands out, and their stale twins.

An up-to-date file module is a plain ``types.ModuleType`` object: CPython 3.11+ specialises
attribute access only for exactly that type, so a subclass would cost about five times more.
Folders (:class:`FolderModule`) and packages (:class:`PackageModule`) are subclasses, because
``lib['../']`` and entries-as-attributes need methods on the type.

When an invalidation arrives, a background thread switches the module's ``__class__`` to the
stale twin of its class (one assignment). The twin's ``__getattribute__`` asks the registry to
reload on the first use, in the user's thread, and the registry switches the class back.
"""

from __future__ import annotations

import importlib.abc
import os
import types
from collections.abc import Callable
from typing import Any

from relmod.ignore import is_ignored

# Set by the registry that owns the modules: reloads a stale module in the calling thread.
Refresher = Callable[[types.ModuleType], None]
_refresher: list[Refresher] = []

# Attributes that never change across reloads and that the import system and repr() read
# while a reload may be in progress: reading them must not start a reload.
_PASSTHROUGH = frozenset(
    {"__class__", "__name__", "__file__", "__spec__", "__loader__", "__package__", "__path__"}
)


def set_refresher(refresher: Refresher) -> None:
    """Install the function stale modules call on first use (the registry's refresh)."""
    _refresher[:] = [refresher]


def _refresh(module: types.ModuleType) -> None:
    if _refresher:
        _refresher[0](module)


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


class RelmodLoader(importlib.abc.Loader):
    """The ``__loader__`` of a relmod module; its repr is what the module's repr shows.

    A module whose spec has no origin shows its loader's repr: ``<module 'f' (relmod:
    /p/f.py)>``, and ``(missing)`` is added when the file is gone.
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


FileModule = types.ModuleType
"""A ``.py`` file loaded as a module: a plain module object, for the fastest attribute access."""


class RelmodModule(types.ModuleType):
    """Base of the module types that need methods of their own (folders and packages)."""


class FolderModule(RelmodModule):
    """A folder as a namespace: its ``.py`` files and subfolders are its attributes.

    Names that are not identifiers are reached with ``folder['./Documents and Settings']``, and
    ``folder['../']`` goes up a folder.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        child = _child_loader[0](self, name) if _child_loader else None
        if child is None:
            folder = folder_of(self)
            raise AttributeError(
                f"{folder!r} has no file {name}.py and no folder {name}/; "
                f"dir() lists what is there."
            )
        return child

    def __getitem__(self, relative_path: str) -> Any:
        return _item_loader[0](self, relative_path)

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


# Set by the registry: resolve a child name / a relative path of a folder to a module.
_child_loader: list[Callable[[types.ModuleType, str], Any]] = []
_item_loader: list[Callable[[types.ModuleType, str], Any]] = []


def set_folder_loaders(
    child: Callable[[types.ModuleType, str], Any], item: Callable[[types.ModuleType, str], Any]
) -> None:
    """Install how folders resolve ``folder.name`` and ``folder['rel/path']``."""
    _child_loader[:] = [child]
    _item_loader[:] = [item]


def _make_stale_twin(fresh: type[types.ModuleType]) -> type[types.ModuleType]:
    def __getattribute__(self: types.ModuleType, name: str) -> Any:  # noqa: N807
        if name not in _PASSTHROUGH:
            _refresh(self)
        return fresh.__getattribute__(self, name)

    def __dir__(self: types.ModuleType) -> list[str]:  # noqa: N807
        _refresh(self)
        return list(fresh.__dir__(self))

    return type(
        "Stale" + fresh.__name__,
        (fresh,),
        {"__getattribute__": __getattribute__, "__dir__": __dir__, "__module__": __name__},
    )


STALE_TWIN: dict[type[types.ModuleType], type[types.ModuleType]] = {
    cls: _make_stale_twin(cls) for cls in (FileModule, FolderModule, PackageModule)
}
FRESH_OF: dict[type[types.ModuleType], type[types.ModuleType]] = {
    stale: fresh for fresh, stale in STALE_TWIN.items()
}


def is_stale(module: types.ModuleType) -> bool:
    """Whether the module waits for a reload on its next use."""
    return type(module) in FRESH_OF


def mark_stale(module: types.ModuleType) -> None:
    """Switch a relmod module to its stale twin (idempotent; one assignment)."""
    cls = type(module)
    fresh = FRESH_OF.get(cls, cls)
    stale = STALE_TWIN.get(fresh)
    if stale is not None:
        module.__class__ = stale


def mark_fresh(module: types.ModuleType) -> None:
    """Switch a stale module back to its plain class: access costs what a module's costs."""
    fresh = FRESH_OF.get(type(module))
    if fresh is not None:
        module.__class__ = fresh
