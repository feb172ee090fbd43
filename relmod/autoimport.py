"""Import top-level modules by touching an attribute: ``relmod.auto.json.dumps([1])``.

Handy at an interactive prompt and in one-off expressions, where an ``import`` line is in the way.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["AutoImport", "auto"]


class AutoImport:
    """An object whose attributes are top-level modules, imported on first access and cached.

    Names starting with ``_`` are never imported, so protocols that probe for dunder methods
    (``copy``, ``pickle``, IPython's display hooks) see a plain object. Errors raised while a found
    module executes (anything other than ``ImportError``) propagate unchanged.

    Example:
        >>> auto = AutoImport()
        >>> auto.json.dumps([1, 2])
        '[1, 2]'
        >>> 'json' in dir(auto)
        True
    """

    def __getattr__(self, name: str) -> types.ModuleType:
        """Import the top-level module ``name``, cache it on this object and return it.

        Args:
            name: the name of a top-level module.

        Returns:
            The module.

        Raises:
            AttributeError: ``name`` starts with ``_``, contains a dot, or cannot be imported.

        Example:
            >>> AutoImport().math.floor(2.5)
            2
        """
        if name.startswith("_"):
            raise AttributeError(
                f"relmod.auto does not import names starting with '_' such as {name!r}; "
                f"use importlib.import_module({name!r}) instead."
            )
        if "." in name:
            raise AttributeError(
                f"relmod.auto imports only top-level modules, and {name!r} contains a dot; "
                f"use importlib.import_module({name!r}) instead."
            )
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise AttributeError(
                f"relmod.auto could not import a module named {name!r}: {err}. "
                "Check the spelling, or install the package that provides it."
            ) from err
        # Stored on the instance, so the next access is a plain attribute hit.
        self.__dict__[name] = module
        return module

    def __dir__(self) -> list[str]:
        """The top-level modules already imported in this process, plus those cached here."""
        loaded = {
            name
            for name, module in list(sys.modules.items())
            if module is not None and "." not in name and not name.startswith("_")
        }
        return sorted(loaded | set(self.__dict__))

    def __reduce__(self) -> tuple[type[AutoImport], tuple[()]]:
        # Modules cannot be pickled; a copy starts with an empty cache and imports again.
        return (AutoImport, ())

    def __repr__(self) -> str:
        return "<relmod.auto: attribute access imports the top-level module of that name>"


auto = AutoImport()
