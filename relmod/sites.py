"""Named paths: ``site.mylib`` loads the file or folder a site file names ``mylib``.

A site file is a JSON list of ``[name, path]`` pairs::

    [["mylib", "~/code/mylib"], ["tools", "../tools.py"], ["*", "~/code/scratch"]]

A relative path is taken from the folder of the site file, ``~`` is expanded, and the name ``"*"``
makes every entry of that folder a name: each sub-folder by its name and each ``.py`` file by its
name without ``.py`` (hidden entries, ``__``-names and caches are left out; the folder is listed at
each lookup, so new files show up at once).

A name is looked up, first match wins, in:

1. the entries set at run time with ``site['name'] = path``;
2. the files named by the ``RELMOD_SITE`` environment variable, separated by ``;``; the word
   ``break`` ends the list and skips the default files;
3. ``./relmod.site``, ``~/.relmod.site`` and ``~/.config/relmod.site``.

Files are read again when their content hash changes. A malformed file is skipped with a logged
warning that names the file and what is wrong.
"""

from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relmod.client.session import default_client
from relmod.errors import ConfigurationError, ModuleNotFound
from relmod.ignore import is_ignored
from relmod.machinery.registry import normalize
from relmod.sources import file_hash

__all__ = ["DEFAULT_SITE_FILES", "SITE_ENV", "Site", "default_site", "site_import"]

logger = logging.getLogger(__name__)

SITE_ENV = "RELMOD_SITE"
DEFAULT_SITE_FILES: tuple[str, ...] = ("./relmod.site", "~/.relmod.site", "~/.config/relmod.site")

LoadedT = TypeVar("LoadedT")


@dataclass(frozen=True)
class _SiteFile:
    """What one version of a site file says: its entries, or why it was skipped."""

    hash: str
    entries: tuple[tuple[str, str], ...]
    problem: str | None = None


class Site(Generic[LoadedT]):
    """Named paths from site files, loaded on attribute access.

    ``site.name`` returns ``loader(path)``, ``site['name']`` returns the path, ``site['name'] =
    path`` sets a name for this process, ``del site['name']`` removes such a name again,
    ``dir(site)`` lists the names and ``site.paths()`` maps every name to its path. A name that is
    also a method of this class (``paths``) is reachable with ``site['paths']``.

    Args:
        loader: turns a path into the object ``site.name`` returns, such as ``relmod.at``.

    Example:
        >>> site = Site(loader=len)
        >>> site['scratch'] = '/tmp/scratch.py'
        >>> site['scratch'], site.scratch
        ('/tmp/scratch.py', 15)
    """

    def __init__(self, loader: Callable[[str], LoadedT]) -> None:
        self._loader = loader
        self._runtime: dict[str, str] = {}
        self._files: dict[str, _SiteFile] = {}
        self._warned_missing: set[str] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> LoadedT:
        if name.startswith("_"):
            # Keeps copy, pickle and half-built instances away from the site files.
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        path = self._lookup(name)
        if path is None:
            raise AttributeError(self._not_found_message(name))
        return self._loader(path)

    def __getitem__(self, name: str) -> str:
        path = self._lookup(name)
        if path is None:
            raise KeyError(self._not_found_message(name))
        return path

    def __setitem__(self, name: str, path: str | os.PathLike[str]) -> None:
        if not isinstance(name, str) or not name or name == "*":
            raise ConfigurationError(
                f"A site name must be a non-empty string other than '*', not {name!r}."
            )
        self._runtime[name] = os.path.abspath(os.path.expanduser(os.fspath(path)))

    def __delitem__(self, name: str) -> None:
        import json  # for messages and site files: not every process that imports relmod

        if self._runtime.pop(name, None) is not None:
            return
        for found, _path, source in self._entries():
            if found == name:
                raise KeyError(
                    f"Cannot delete the site name {json.dumps(name)}: it comes from {source}, "
                    f"not from an entry set at run time. Remove it from that file instead."
                )
        raise KeyError(self._not_found_message(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths())

    def __dir__(self) -> list[str]:
        return sorted(set(self.paths()) | {"paths"})

    def __repr__(self) -> str:
        return f"<relmod site with {len(self.paths())} names>"

    def paths(self) -> dict[str, str]:
        """Every name and its path, in lookup order; the first entry of a name wins.

        Returns:
            A new dict of names to absolute paths.

        Example:
            >>> site = Site(loader=str)
            >>> site['scratch'] = '/tmp/scratch.py'
            >>> site.paths()['scratch']
            '/tmp/scratch.py'
        """
        found: dict[str, str] = {}
        for name, path, _source in self._entries():
            found.setdefault(name, path)
        return found

    def _lookup(self, name: str) -> str | None:
        """The path of the first entry called ``name``, or None."""
        for found, path, _source in self._entries():
            if found == name:
                return path
        return None

    def _entries(self) -> Iterator[tuple[str, str, str]]:
        """Every (name, path, where it came from), in lookup order, with '*' folders listed."""
        for name, path in list(self._runtime.items()):
            yield name, path, "the entries set at run time"
        for site_file, _origin in self._site_files():
            loaded = self._read(site_file)
            if loaded is None or loaded.problem is not None:
                continue
            for name, path in loaded.entries:
                if name == "*":
                    for entry_name, entry_path in _folder_entries(path, site_file):
                        yield entry_name, entry_path, f"site file {site_file}"
                else:
                    yield name, path, f"site file {site_file}"

    def _site_files(self) -> list[tuple[str, str]]:
        """The site files to read, absolute, each with where its name came from."""
        files: list[tuple[str, str]] = []
        for item in os.environ.get(SITE_ENV, "").split(";"):
            item = item.strip()
            if item == "break":
                return files
            if item:
                files.append((os.path.abspath(os.path.expanduser(item)), SITE_ENV))
        for default in DEFAULT_SITE_FILES:
            files.append((os.path.abspath(os.path.expanduser(default)), "default"))
        return files

    def _read(self, path: str) -> _SiteFile | None:
        """The parsed site file, read again only when its content hash changed; None if absent."""
        digest = file_hash(path)
        if digest is None:
            with self._lock:
                self._files.pop(path, None)
            return None
        cached = self._files.get(path)
        if cached is not None and cached.hash == digest:
            return cached
        try:
            with open(path, "rb") as file:
                loaded = _SiteFile(digest, _parse_site_file(file.read(), path))
        except ConfigurationError as err:
            logger.warning("%s", err)
            loaded = _SiteFile(digest, (), problem=str(err))
        except OSError as err:
            # Deleted or made unreadable between hashing and reading: treat it as absent.
            logger.warning("Skipping site file %s: it could not be read (%s).", path, err)
            return None
        with self._lock:
            self._files[path] = loaded
        return loaded

    def _not_found_message(self, name: str) -> str:
        """A full sentence saying where the name was looked for."""
        site_files = self._site_files()
        places = ["the entries set at run time"]
        for path, origin in site_files:
            loaded = self._files.get(path)
            if not os.path.exists(path):
                state = "not found"
            elif loaded is not None and loaded.problem is not None:
                state = "skipped because it is malformed"
            else:
                state = "read"
            label = f" named by {SITE_ENV}" if origin == SITE_ENV else ""
            places.append(f"{path}{label} ({state})")
        self._warn_missing({path for path, origin in site_files if origin == SITE_ENV})
        stopped = ""
        if "break" in (item.strip() for item in os.environ.get(SITE_ENV, "").split(";")):
            stopped = f" {SITE_ENV} contains the word break, so the default files were not read."
        import json

        # Double quotes only: KeyError shows the repr of its message, which stays readable then.
        quoted = json.dumps(name)
        example = json.dumps([name, f"/path/to/{name}"])
        return (
            f"There is no site entry named {quoted}. relmod looked in: {'; '.join(places)}."
            f"{stopped} Add {example} to one of these files, or set site[{quoted}] = path."
        )

    def _warn_missing(self, paths: set[str]) -> None:
        """Log once per path that a file named by RELMOD_SITE does not exist."""
        for path in sorted(paths - self._warned_missing):
            if not os.path.exists(path):
                self._warned_missing.add(path)
                logger.warning(
                    "The site file %s named by %s does not exist; check the variable.",
                    path,
                    SITE_ENV,
                )


def _parse_site_file(data: bytes, path: str) -> tuple[tuple[str, str], ...]:
    """The (name, absolute path) pairs of a site file; ConfigurationError says what is wrong."""
    import json

    where = f"Skipping site file {path}:"
    fix = "Fix the file; relmod reads it again when its content changes."
    try:
        pairs = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ConfigurationError(f"{where} it is not UTF-8 text ({err.reason}). {fix}") from err
    except json.JSONDecodeError as err:
        raise ConfigurationError(
            f"{where} it is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
            f"{fix}"
        ) from err
    if not isinstance(pairs, list):
        raise ConfigurationError(
            f"{where} it holds a JSON {type(pairs).__name__} where a list of [name, path] pairs "
            f"is expected. {fix}"
        )
    folder = os.path.dirname(path)
    entries = []
    for index, pair in enumerate(pairs):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(x, str) and x for x in pair)
        ):
            raise ConfigurationError(
                f"{where} entry {index} ({json.dumps(pair)}) is not a [name, path] pair of two "
                f"non-empty strings. {fix}"
            )
        name, target = pair
        entries.append((name, os.path.normpath(os.path.join(folder, os.path.expanduser(target)))))
    return tuple(entries)


def _folder_entries(folder: str, site_file: str) -> list[tuple[str, str]]:
    """The names a '*' entry gives: sub-folders by name, .py files by name without .py."""
    try:
        listing = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        logger.warning(
            "Skipping the '*' entry of site file %s: its folder %s cannot be listed (%s).",
            site_file,
            folder,
            err,
        )
        return []
    names = []
    for entry in listing:
        if entry.name.startswith((".", "__")) or is_ignored(entry.name):
            continue
        if entry.is_dir():
            names.append((entry.name, entry.path))
        elif entry.name.endswith(".py"):
            names.append((entry.name[: -len(".py")], entry.path))
    return names


_default_site: Site[types.ModuleType] | None = None
_default_site_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Only the forking thread exists in the child: a lock another thread held stays held.
    global _default_site_lock
    _default_site_lock = threading.Lock()
    if _default_site is not None:
        _default_site._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _load(path: str) -> types.ModuleType:
    """Load a site name's file or folder as ``relmod.at`` does (this module sits below the face)."""
    return default_client().registry.load(normalize(path))


def default_site() -> Site[types.ModuleType]:
    """The process-wide site, whose names load with ``relmod.at``; made on first use.

    Returns:
        The same ``Site`` on every call.

    Example:
        >>> default_site() is default_site()
        True
    """
    global _default_site
    with _default_site_lock:
        if _default_site is None:
            _default_site = Site(_load)
        return _default_site


def site_import(
    site: Site[LoadedT],
    name: str,
    fromlist: Sequence[str] | None = None,
    globals: dict[str, Any] | None = None,
) -> LoadedT:
    """Load the module a site name stands for, optionally binding names into a namespace.

    Args:
        site: the site to look the name up in.
        name: the site name.
        fromlist: names to take from the module, as in ``from module import a, b``.
        globals: a namespace to bind into: the ``fromlist`` names when given, else the module
            under ``name``. ``None`` binds nothing.

    Returns:
        The loaded module (also when ``fromlist`` is given, like ``__import__``).

    Raises:
        relmod.errors.ModuleNotFound: no site entry has that name.
        ImportError: the module lacks a name of ``fromlist``.

    Example:
        >>> import json, types
        >>> site = Site(loader=lambda path: types.SimpleNamespace(path=path))
        >>> site['lib'] = '/tmp/lib.py'
        >>> ns = {}
        >>> site_import(site, 'lib', ['path'], ns).path, ns
        ('/tmp/lib.py', {'path': '/tmp/lib.py'})
    """
    try:
        path = site[name]
    except KeyError as err:
        raise ModuleNotFound(err.args[0], name=name) from err
    module = site._loader(path)
    if fromlist:
        values = {}
        for attr in fromlist:
            try:
                values[attr] = getattr(module, attr)
            except AttributeError as err:
                raise ImportError(
                    f"Cannot import {attr!r} from the site module {name!r} ({path}): it has no "
                    f"such name. Check the spelling, or save the file if you just added it.",
                    name=name,
                    path=path,
                ) from err
    else:
        values = {name: module}
    if globals is not None:
        globals.update(values)
    return module
