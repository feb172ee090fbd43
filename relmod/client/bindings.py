"""Names a notebook bound with ``from module import ...``, kept in step with the module.

A reload updates a module's functions and classes in place, so a notebook holding them runs the
new code. Two kinds of binding are not objects that can be updated: a plain value
(``from config import RATE as rate``: an int, a str) and the names a ``from module import *``
would bind now (a function the edit added). :class:`NamespaceBindings` remembers, cell by cell,
which names came from which module, and after a reload binds again each name that still holds
what the import gave it (a name the user re-bound since is left alone), and the new public names
of star-imported modules, as ``%autoreload 3`` does.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class _Binding:
    module: str
    attr: str
    value: Any  # what the name held after the import (or our last re-binding)


def _public(module: object) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return [str(n) for n in names]


class NamespaceBindings:
    """The ``from`` imports of one namespace (a notebook's ``user_ns``)."""

    def __init__(self) -> None:
        self._names: dict[str, _Binding] = {}
        self._stars: dict[str, dict[str, Any]] = {}  # module -> {name: value we bound}

    def record_cell(self, source: str, namespace: dict[str, Any]) -> None:
        """Remember the absolute ``from`` imports a cell that ran made at its top level."""
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return
        for node in tree.body:
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            module = sys.modules.get(node.module)
            if module is None:
                continue
            for alias in node.names:
                if alias.name == "*":
                    self._stars[node.module] = {
                        n: namespace[n] for n in _public(module) if n in namespace
                    }
                    continue
                key = alias.asname or alias.name
                if key in namespace:
                    self._names[key] = _Binding(node.module, alias.name, namespace[key])

    def refresh(self, namespace: dict[str, Any]) -> int:
        """Bind again what the modules now hold; returns how many names changed."""
        changed = 0
        for key, binding in list(self._names.items()):
            module = sys.modules.get(binding.module)
            if module is None or namespace.get(key, binding) is not binding.value:
                continue  # gone, or the user bound the name to something else since
            value = getattr(module, binding.attr, binding.value)
            if value is not binding.value:
                namespace[key] = binding.value = value
                changed += 1
        for name, bound in self._stars.items():
            module = sys.modules.get(name)
            if module is None:
                continue
            for attr in _public(module):
                value = getattr(module, attr)
                if attr in namespace and (attr not in bound or namespace[attr] is not bound[attr]):
                    continue  # not ours: the user's own name
                if namespace.get(attr, bound) is not value:
                    namespace[attr] = bound[attr] = value
                    changed += 1
        return changed
