"""Where a project's absolute imports come from: its import roots, read from its layout.

Python finds ``import pkg`` on ``sys.path``; the broker has no ``sys.path`` of the project, so it
reads the places a project declares or clearly uses, in this order:

1. the project root itself (scripts and tests run from it put it on ``sys.path``);
2. the package folders ``pyproject.toml`` declares: setuptools ``[tool.setuptools] package-dir``
   (``{"" = "src"}`` makes ``src`` a root; ``{"pkg" = "lib"}`` says that ``pkg`` lives in ``lib``)
   and ``[tool.setuptools.packages.find] where``; hatch ``[tool.hatch.build.targets.wheel]
   packages`` (the folder holding each package); poetry ``packages = [{include, from}]``;
3. ``src/``, when it exists and is no package itself (the "src layout");
4. folders inside the project that clients report on their ``sys.path`` (the ``paths`` request),
   added while the broker runs.

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()).resolve()
    >>> (root / 'src' / 'pkg').mkdir(parents=True)
    >>> [pathlib.Path(r).name for r in find_import_roots(str(root)).roots][1:]
    ['src']
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

_toml: Any
if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - Python 3.10 reads pyproject.toml only with tomli installed
    try:
        import tomli as _toml  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _toml = None

__all__ = ["ImportRoots", "find_import_roots"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportRoots:
    """The folders absolute imports are searched in, and package folders found by name.

    Attributes:
        roots: absolute folders, in search order.
        aliases: top-level package name -> its folder (setuptools ``package-dir`` entries).
    """

    roots: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)

    def with_paths(self, paths: list[str]) -> ImportRoots:
        """These roots, then the given folders that are not among them yet."""
        added = tuple(p for p in dict.fromkeys(paths) if p not in self.roots)
        return ImportRoots(self.roots + added, self.aliases)


def find_import_roots(root: str) -> ImportRoots:
    """The import roots of the project at ``root`` (see the module docstring)."""
    root = os.path.realpath(root)
    roots = [root]
    aliases: dict[str, str] = {}
    config = _read_pyproject(root)
    for folder in _declared_folders(config, aliases, root):
        roots.append(folder)
    src = os.path.join(root, "src")
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "__init__.py")):
        roots.append(src)
    inside = [
        r
        for r in dict.fromkeys(os.path.realpath(r) for r in roots)
        if r == root or r.startswith(root + os.sep)
    ]
    found = ImportRoots(tuple(p for p in inside if os.path.isdir(p)), aliases)
    if len(found.roots) > 1 or aliases:
        logger.info(
            "import roots: %s%s",
            ", ".join(os.path.relpath(r, root) for r in found.roots),
            f"; packages elsewhere: {aliases}" if aliases else "",
        )
    return found


def _read_pyproject(root: str) -> dict[str, Any]:
    path = os.path.join(root, "pyproject.toml")
    if not os.path.isfile(path):
        return {}
    if _toml is None:
        logger.info("cannot read %s without tomllib (Python 3.11+) or tomli", path)
        return {}
    try:
        with open(path, "rb") as file:
            config: dict[str, Any] = _toml.load(file)
    except (OSError, ValueError) as err:  # TOMLDecodeError is a ValueError
        logger.warning("cannot read the import roots in %s: %s", path, err)
        return {}
    return config


def _table(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _declared_folders(config: dict[str, Any], aliases: dict[str, str], root: str) -> list[str]:
    """Folders pyproject.toml names as package roots; fills ``aliases`` on the way."""
    folders: list[str] = []
    tool = _table(config, "tool")
    package_dir = _table(tool, "setuptools", "package-dir")
    if isinstance(package_dir, dict):
        for name, folder in package_dir.items():
            if not isinstance(folder, str):
                continue
            if name == "":
                folders.append(os.path.join(root, folder))
            elif "." not in name:
                aliases[name] = os.path.realpath(os.path.join(root, folder))
    folders += [
        os.path.join(root, where)
        for where in _strings(_table(tool, "setuptools", "packages", "find", "where"))
    ]
    for package in _strings(_table(tool, "hatch", "build", "targets", "wheel", "packages")):
        folders.append(os.path.dirname(os.path.join(root, package.rstrip("/"))))
    poetry = _table(tool, "poetry", "packages")
    if isinstance(poetry, list):
        for entry in poetry:
            source = entry.get("from") if isinstance(entry, dict) else None
            if isinstance(source, str):
                folders.append(os.path.join(root, source))
    return [os.path.normpath(folder) for folder in folders]
