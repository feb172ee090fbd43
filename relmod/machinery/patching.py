"""Give references held elsewhere the new code after a module re-executes.

relmod re-executes a changed module in its own module object, so ``mod.f`` is the new function
at once. Everything that took a reference before the run, though (``from mod import f``, a
bound method, an instance of ``mod.Cls``, a callback in another module's registry), still holds
the previous version's objects. :func:`patch_namespace` gives those objects the new code:

- a function of the module gets the new version's ``__code__``, defaults, doc, annotations and
  ``__dict__``; its closure cells get the new values. The module name is then bound to the
  *previous* function object again, so ``mod.f is f`` still holds for every holder;
- a class of the module is kept when its shape did not change (same metaclass, bases, layout,
  ``__slots__``, dataclass fields, Enum members): the new version's attributes are copied onto
  the previous class object and the module name is bound to it, so existing instances run the
  new methods and ``isinstance``, ``pickle`` and ``==`` keep working;
- what cannot be patched is left as the new version and listed in :class:`PatchReport`.

Functions and classes are matched by *where they are reached*: the module name (``f``), the
class attribute (``Cls.method``), a property part (``Cls.prop/fget``), the function behind a
``functools.wraps`` wrapper (``f/wrapped``), the ``func`` of a partial or cached property. When a
function object was both defined and reached there (its ``__qualname__`` is that place), it is
matched before aliases. Every version of a function ever seen at a place stays known (weakly),
so a copy that escaped into a container (a ``dict`` of callbacks, a web framework's route table,
a ``functools.partial``) is patched on every later run too.

:class:`CallGuard` makes a held function a use of its module: armed functions run a trampoline
that first brings the module up to date, then calls the function with its new code.

Example::

    snapshot = dict(module.__dict__)
    exec(code, module.__dict__)                      # the module's new version runs
    report = patch_namespace(snapshot, module.__dict__, module.__name__)

Known limits (the new class is kept instead, or the object is left as it is):

- ``__init_subclass__`` hooks and class registries saw the new class being created; a kept
  class puts the previous object back under the module name, so such a registry holds a class
  object nobody else uses;
- a function whose closure shape changed (other free variables) keeps its old code;
- instances of a replaced class keep their old class and methods (they are stale objects);
- async generator functions are never armed by :class:`CallGuard`; they get the new code when
  the module is patched, as any function does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CallGuard", "PatchReport", "patch_namespace"]

FunctionType = types.FunctionType
_MISSING: Any = object()

# Class attributes that belong to the class object itself, never copied from the new version.
_CLASS_OWN = frozenset(
    {"__dict__", "__weakref__", "__module__", "__qualname__", "__slots__", "_abc_impl"}
)
# Function-like class attributes: the only ones touched on a kept Enum (the rest are members).
_CALLABLE_KINDS = (FunctionType, staticmethod, classmethod, property)
_LAYOUT_KINDS = (types.MemberDescriptorType, types.GetSetDescriptorType)
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
# Types that are, or hold, a function _collect knows how to reach.
_HOLDERS = frozenset(
    {
        FunctionType,
        staticmethod,
        classmethod,
        property,
        functools.partial,
        functools.partialmethod,
        functools.cached_property,
        functools._lru_cache_wrapper,
    }
)

# Serialises every ``__code__`` swap, so a trampoline restoring the original code can never
# overwrite new code that patch_namespace assigned a moment before.
_SWAP_LOCK = threading.RLock()

# module name -> place -> weak references to every version of the function seen there (read
# elsewhere only to ask whether a module name is in it: see nothing_to_arm).
VERSIONS: dict[str, dict[str, list[weakref.ref[types.FunctionType]]]] = {}
_VERSIONS_LOCK = threading.Lock()
# (module name, qualname, reason) already logged, so a long session logs each problem once.
_LOGGED: set[tuple[str, str, str]] = set()


def _renew_locks() -> None:
    """In a forked child: a lock another thread of the parent held at the fork would stay held
    there for ever, and the child's next mark, call or reload would wait on it."""
    global _SWAP_LOCK, _VERSIONS_LOCK
    _SWAP_LOCK = threading.RLock()
    _VERSIONS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)


@dataclasses.dataclass
class PatchReport:
    """What :func:`patch_namespace` did.

    Attributes:
        patched: Functions and classes of the previous version updated in place.
        unpatchable: One line each, ``"<qualname>: <why>"``, for previous objects left as they
            were (their holders run the previous code or hold stale instances).
        replaced_classes: Previous classes that could not be kept; the module now holds the new
            class, and live instances of these are stale objects.
    """

    patched: int = 0
    unpatchable: list[str] = dataclasses.field(default_factory=list)
    replaced_classes: set[type] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class _Found:
    """Module functions and classes of one namespace, by the place they are reached."""

    functions: dict[str, tuple[types.FunctionType, bool, str | None]]  # fn, canonical, owner
    classes: dict[str, type]


def _is_own_function(obj: object, module_name: str, ns: dict[str, Any]) -> bool:
    return type(obj) is FunctionType and obj.__globals__ is ns and obj.__module__ == module_name


def _own_class(obj: object, module_name: str, place: str) -> type | None:
    """``obj`` if it is a class the module defined at ``place``, else None."""
    if not isinstance(obj, type):
        return None
    try:
        if obj.__module__ == module_name and obj.__qualname__ == place:
            return obj
    except Exception:  # a metaclass with odd properties is simply not ours to patch
        return None
    return None


def _discover(items: Iterable[tuple[str, Any]], module_name: str, ns: dict[str, Any]) -> _Found:
    found = _Found({}, {})
    _walk(items, module_name, ns, "", None, found)
    return found


def _walk(
    items: Iterable[tuple[str, Any]],
    module_name: str,
    ns: dict[str, Any],
    prefix: str,
    owner: str | None,
    found: _Found,
) -> None:
    for name, value in items:
        if type(value) in _HOLDERS:
            place = prefix + name
            _collect(value, place, place, owner, module_name, ns, found, 0)
        elif isinstance(value, type):
            place = prefix + name
            cls = _own_class(value, module_name, place)
            if cls is not None and place not in found.classes:
                found.classes[place] = cls
                _walk(list(cls.__dict__.items()), module_name, ns, place + ".", place, found)
        # most values are data: skipped without a call


def _collect(
    value: Any,
    key: str,
    place: str,
    owner: str | None,
    module_name: str,
    ns: dict[str, Any],
    found: _Found,
    depth: int,
) -> None:
    """Record the module functions inside ``value`` (a function, method container, wrapper)."""
    if depth > 8:
        return
    kind = type(value)
    if kind is FunctionType:
        if _is_own_function(value, module_name, ns):
            found.functions[key] = (value, value.__qualname__ == place, owner)
        inner = value.__dict__.get("__wrapped__")
        if inner is not None:
            _collect(inner, key + "/wrapped", place, owner, module_name, ns, found, depth + 1)
    elif kind is staticmethod or kind is classmethod:
        _collect(value.__func__, key, place, owner, module_name, ns, found, depth + 1)
    elif kind is property:
        for part in ("fget", "fset", "fdel"):
            fn = getattr(value, part)
            if fn is not None:
                _collect(fn, f"{key}/{part}", place, owner, module_name, ns, found, depth + 1)
    elif kind in (functools.partial, functools.partialmethod, functools.cached_property):
        _collect(value.func, key + "/func", place, owner, module_name, ns, found, depth + 1)
    elif kind is functools._lru_cache_wrapper:
        _collect(value.__wrapped__, key + "/wrapped", place, owner, module_name, ns, found, depth)


# --------------------------------------------------------------------------------------------
# patch_namespace


def patch_namespace(old: dict[str, Any], ns: dict[str, Any], module_name: str) -> PatchReport:
    """Update the previous version's functions and classes in place after a re-execution.

    Call it right after the module's code ran successfully in its own namespace. Previous
    function objects get the new code; previous classes are kept where their shape allows and
    get the new attributes; ``ns`` is rebound to the previous objects wherever they now stand
    for the new ones, so holders of old objects and the module agree. Objects of other modules
    found in ``ns`` are left alone. Never call it after a failed run: restore the namespace
    instead.

    Args:
        old: A snapshot (``dict(module.__dict__)``) taken before the new version ran.
        ns: The module's own ``__dict__`` after the new version ran; updated in place.
        module_name: The module's ``__name__``.

    Returns:
        What was patched, what could not be, and which classes were replaced.

    Example::

        >>> import types
        >>> mod = types.ModuleType("demo_patch")
        >>> exec("def f(): return 1", mod.__dict__)
        >>> held = mod.f
        >>> snapshot = dict(mod.__dict__)
        >>> exec("def f(): return 2", mod.__dict__)
        >>> patch_namespace(snapshot, mod.__dict__, "demo_patch").patched
        1
        >>> held(), mod.f is held
        (2, True)
    """
    report = PatchReport()
    before = _discover(old.items(), module_name, ns)
    after = _discover(list(ns.items()), module_name, ns)
    if not (before.functions or before.classes or after.functions or after.classes):
        return report  # no function or class of the module, before or after: nothing to keep
    # id(new object) -> the previous object that stands for it from now on.
    successor: dict[int, Any] = {}
    kept_places = _decide_classes(before.classes, after.classes, successor, report, module_name)
    kept_classes: dict[int, type] = {
        id(new_cls): successor[id(new_cls)]
        for place, new_cls in after.classes.items()
        if place in kept_places
    }
    if kept_classes:
        for place, new_cls in after.classes.items():
            if place not in kept_places:
                _rebase(new_cls, successor, report, module_name)
    pairs = _function_pairs(before, after, kept_places, module_name, ns) if after.functions else []
    sources: dict[int, types.FunctionType] = {}  # id(previous function) -> its new version
    reshaped: list[str] = []
    with _SWAP_LOCK:  # no user code runs under it (logging included)
        for old_fn, new_fn, from_snapshot in pairs:
            if old_fn is new_fn or id(old_fn) in sources:
                continue
            if old_fn.__code__.co_freevars != new_fn.__code__.co_freevars:
                reshaped.append(old_fn.__qualname__)
                continue
            if kept_classes:  # defaults made from a kept class are instances of the old one
                if new_fn.__defaults__:
                    new_fn.__defaults__ = _adopt(new_fn.__defaults__, kept_classes)
                if new_fn.__kwdefaults__:
                    new_fn.__kwdefaults__ = _adopt(new_fn.__kwdefaults__, kept_classes)
            take_over = from_snapshot and id(new_fn) not in successor
            _patch_function(old_fn, new_fn, take_over)
            sources[id(old_fn)] = new_fn
            if take_over:
                successor[id(new_fn)] = old_fn
    for qualname in reshaped:
        _unpatchable(report, module_name, qualname, "closure shape changed")
    report.patched += len(sources)
    for fn, _canonical, _owner in after.functions.values():
        _map_cells(fn, successor)
    olds: dict[int, types.FunctionType] = {}
    for old_fn, _new, _snap in pairs:
        olds[id(old_fn)] = old_fn
    for key, new_fn in sources.items():
        _copy_function_state(olds[key], new_fn, successor)
    for new_cls in after.classes.values():
        old_cls = successor.get(id(new_cls))
        if old_cls is not None:
            _update_class(old_cls, new_cls, successor, kept_classes, report, module_name)
    for name, value in list(ns.items()):
        previous = old.get(name, _MISSING)
        if previous is value and not kept_classes:
            continue  # an object from before the run: no new one it could stand for
        target = _successor_of(previous, value, successor)
        if target is None and kept_classes:
            kind = type(value)
            if id(kind) in kept_classes or kind in _CONTAINERS:
                target = _adopt(value, kept_classes)
        if target is not None and target is not value:
            ns[name] = target
    if after.functions:
        _remember_versions(module_name, after, successor)
    logger.debug(
        "Patched %s: %d objects updated in place, %d left, %d classes replaced.",
        module_name,
        report.patched,
        len(report.unpatchable),
        len(report.replaced_classes),
    )
    return report


def _function_pairs(
    before: _Found, after: _Found, kept_places: set[str], module_name: str, ns: dict[str, Any]
) -> list[tuple[types.FunctionType, types.FunctionType, bool]]:
    """(previous, new, previous-is-from-the-snapshot), canonical places first."""
    first: list[tuple[types.FunctionType, types.FunctionType, bool]] = []
    rest: list[tuple[types.FunctionType, types.FunctionType, bool]] = []
    with _VERSIONS_LOCK:
        versions = VERSIONS.get(module_name, {})
        for key, (new_fn, canonical, owner) in after.functions.items():
            if owner is not None and owner not in kept_places:
                continue  # a replaced class: its previous methods stay with its stale instances
            bucket = first if canonical else rest
            previous = before.functions.get(key)
            if previous is not None:
                bucket.append((previous[0], new_fn, True))
            for ref in versions.get(key, ()):
                fn = ref()
                if fn is not None and fn.__globals__ is ns:  # not a deleted, re-imported module
                    bucket.append((fn, new_fn, False))
    return first + rest


def _patch_function(old: types.FunctionType, new: types.FunctionType, take_over: bool) -> None:
    armed = _armed_by(new.__code__)
    code = new.__code__ if armed is None else armed.original
    held = _armed_by(old.__code__)
    if held is not None and held.func is old and not held.disarmed:
        # The module was armed again while it re-executed, through its previous functions: the
        # function stays armed, and its next call brings the module up to date, then runs this.
        held.original = code
    elif armed is not None and take_over and armed.func is new:
        # The module was armed again while it re-executed, through the new version's functions:
        # the function that stays in the module takes the trampoline over, so its next call
        # still brings the module up to date.
        new.__code__ = armed.original
        armed.func = old
        old.__code__ = armed.code
    else:
        old.__code__ = code
    _take_attributes(old, new)


def _take_attributes(old: types.FunctionType, new: types.FunctionType) -> None:
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__
    old.__doc__ = new.__doc__
    old.__annotations__ = new.__annotations__
    type_params = getattr(new, "__type_params__", None)  # Python 3.12+
    if type_params is not None:
        setattr(old, "__type_params__", type_params)  # noqa: B010 (3.12+ attribute)


def _copy_function_state(
    old: types.FunctionType, new: types.FunctionType, successor: dict[int, Any]
) -> None:
    """The new version's closure values and ``__dict__``, with new objects mapped to kept ones."""
    if old.__closure__:
        for old_cell, new_cell in zip(old.__closure__, new.__closure__ or (), strict=True):
            try:
                value = new_cell.cell_contents
            except ValueError:  # an empty cell: the new version has not filled it yet
                continue
            value = successor.get(id(value), value)
            try:
                if old_cell.cell_contents is value:
                    continue
            except ValueError:
                pass
            old_cell.cell_contents = value
    if old.__dict__ or new.__dict__:
        state = dict(new.__dict__)
        inner = state.get("__wrapped__")
        if inner is not None:
            state["__wrapped__"] = successor.get(id(inner), inner)
        old.__dict__ = state


def _map_cells(fn: types.FunctionType, successor: dict[int, Any]) -> None:
    """Point a new function's cells at kept objects (``__class__`` of zero-arg super())."""
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        target = successor.get(id(value))
        if target is not None:
            cell.cell_contents = target


def _successor_of(old_value: Any, new_value: Any, successor: dict[int, Any]) -> Any:
    """The previous object that can stand for ``new_value`` after patching, or None."""
    target = successor.get(id(new_value))
    if target is not None or old_value is _MISSING or old_value is new_value:
        return target
    kind = type(new_value)
    if type(old_value) is not kind:
        return None
    if kind is staticmethod or kind is classmethod:
        if successor.get(id(new_value.__func__)) is old_value.__func__:
            return old_value
    elif kind is property:
        for part in ("fget", "fset", "fdel"):
            new_part, old_part = getattr(new_value, part), getattr(old_value, part)
            if new_part is None and old_part is None:
                continue
            if new_part is None or successor.get(id(new_part)) is not old_part:
                return None
        if old_value.__doc__ != new_value.__doc__:
            try:
                old_value.__doc__ = new_value.__doc__
            except AttributeError:
                return None
        return old_value
    elif kind is functools.cached_property:
        if successor.get(id(new_value.func)) is old_value.func:
            old_value.__doc__ = new_value.__doc__
            return old_value
    elif kind is FunctionType:
        return _same_decoration(old_value, new_value, successor)
    return None


def _same_decoration(
    old: types.FunctionType, new: types.FunctionType, successor: dict[int, Any]
) -> types.FunctionType | None:
    """``old`` when both are the same outside decorator's wrapper around a patched function."""
    inner = new.__dict__.get("__wrapped__")
    if inner is None or old.__code__ is not new.__code__:
        return None
    for old_cell, new_cell in zip(old.__closure__ or (), new.__closure__ or (), strict=True):
        try:
            new_value = new_cell.cell_contents
            old_value = old_cell.cell_contents
        except ValueError:
            return None
        if old_value is not new_value and successor.get(id(new_value)) is not old_value:
            return None
    if successor.get(id(inner)) is not old.__dict__.get("__wrapped__"):
        return None
    old.__doc__ = new.__doc__
    old.__annotations__ = new.__annotations__
    state = dict(new.__dict__)
    state["__wrapped__"] = old.__dict__["__wrapped__"]
    old.__dict__ = state
    return old


# --------------------------------------------------------------------------------------------
# classes


def _decide_classes(
    before: dict[str, type],
    after: dict[str, type],
    successor: dict[int, Any],
    report: PatchReport,
    module_name: str,
) -> set[str]:
    """Keep every previous class whose shape allows it; return the places of the kept ones.

    A class is decided after its bases and the class it is nested in, so their mapping is known.
    """
    pending = {place: (before[place], new) for place, new in after.items() if place in before}
    pending = {place: pair for place, pair in pending.items() if pair[0] is not pair[1]}
    kept: set[str] = set()
    if not pending:
        return kept
    decided: set[str] = set()
    places_by_id = {id(cls): place for place, cls in after.items()}
    while pending:
        progress = False
        for place, (old_cls, new_cls) in list(pending.items()):
            owner = place.rpartition(".")[0]
            waits = [places_by_id.get(id(base)) for base in new_cls.__bases__]
            waits.append(owner if owner in after else None)
            if any(w is not None and w in pending and w != place for w in waits):
                continue
            del pending[place]
            decided.add(place)
            progress = True
            if owner in after and owner in before and owner not in kept:
                reason: str | None = "the class it is nested in was replaced"
            else:
                reason = _why_not_kept(old_cls, new_cls, successor)
            if reason is None:
                successor[id(new_cls)] = old_cls
                kept.add(place)
            else:
                report.replaced_classes.add(old_cls)
                _unpatchable(report, module_name, place, reason)
        if not progress:  # only a cycle can stop progress; decide the rest without waiting
            for place, (old_cls, _new) in pending.items():
                report.replaced_classes.add(old_cls)
                _unpatchable(report, module_name, place, "its bases could not be ordered")
            break
    report.patched += len(kept)
    return kept


def _why_not_kept(old: type, new: type, successor: dict[int, Any]) -> str | None:
    """Why the previous class cannot stand for the new one, or None when it can."""
    old_meta, new_meta = type(old), type(new)
    if old_meta is not new_meta and successor.get(id(new_meta)) is not old_meta:
        return f"metaclass changed ({old_meta.__qualname__} -> {new_meta.__qualname__})"
    bases = [successor.get(id(base), base) for base in new.__bases__]
    if len(bases) != len(old.__bases__) or any(
        a is not b for a, b in zip(bases, old.__bases__, strict=False)
    ):
        names = ", ".join(base.__qualname__ for base in new.__bases__)
        return f"bases changed or were replaced (now {names})"
    for layout in ("__basicsize__", "__itemsize__", "__dictoffset__", "__weakrefoffset__"):
        if getattr(old, layout) != getattr(new, layout):
            return "instance layout changed"
    if old.__dict__.get("__slots__") != new.__dict__.get("__slots__"):
        return "__slots__ changed"
    if isinstance(new, enum.EnumMeta) and _members(old) != _members(new):
        return "Enum members changed (old members stay instances of the old class)"
    if dataclasses.is_dataclass(new) and _fields(old) != _fields(new):
        return "dataclass fields or parameters changed"
    for marker in ("_fields", "__attrs_attrs__", "__match_args__"):
        if _names(old.__dict__.get(marker)) != _names(new.__dict__.get(marker)):
            return f"{marker} changed"
    return None


def _members(cls: type) -> list[tuple[str, str, str]]:
    members: dict[str, Any] = getattr(cls, "__members__", {})
    return [(name, type(m.value).__qualname__, repr(m.value)) for name, m in members.items()]


def _fields(cls: type) -> list[Any]:
    fields: dict[str, Any] = cls.__dict__.get("__dataclass_fields__", {})
    shape: list[Any] = [repr(cls.__dict__.get("__dataclass_params__"))]
    for f in fields.values():
        shape.append(
            (
                f.name,
                _type_name(f.type),
                f.init,
                f.repr,
                f.compare,
                f.hash,
                getattr(f, "kw_only", None),
                _value_name(f.default),
                _value_name(f.default_factory),
                str(getattr(f, "_field_type", "")),
            )
        )
    return shape


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__qualname__", None) or repr(tp)


def _value_name(value: Any) -> str:
    """A comparable name: qualname for callables (new objects each run), else repr."""
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(value, '__module__', '')}.{qualname}"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"


def _names(value: Any) -> Any:
    if value is None:
        return None
    try:
        return tuple(getattr(item, "name", item) for item in value)
    except TypeError:
        return repr(value)


def _update_class(
    old: type,
    new: type,
    successor: dict[int, Any],
    kept_classes: dict[int, type],
    report: PatchReport,
    module_name: str,
) -> None:
    """Copy the new version's attributes onto the kept previous class."""
    only_callables = isinstance(new, enum.EnumMeta)  # the rest of an Enum's dict are members
    old_dict, new_dict = dict(old.__dict__), dict(new.__dict__)
    named: list[tuple[str, Any]] = []
    for name, value in new_dict.items():
        if name in _CLASS_OWN or (type(value) in _LAYOUT_KINDS and value.__objclass__ is new):
            continue  # __slots__ members and __dict__/__weakref__ describe the old layout
        if only_callables and not isinstance(value, _CALLABLE_KINDS):
            continue
        current = old_dict.get(name, _MISSING)
        target = _successor_of(current, value, successor)
        if target is None:
            target = _adopt(value, kept_classes)
        if target is current:
            continue
        try:
            type.__setattr__(old, name, target)
        except (AttributeError, TypeError) as err:
            _unpatchable(report, module_name, f"{old.__qualname__}.{name}", str(err))
            continue
        if target is value and hasattr(type(value), "__set_name__"):
            named.append((name, value))
    for name, current in old_dict.items():
        if name in new_dict or name in _CLASS_OWN:
            continue
        if type(current) in _LAYOUT_KINDS and current.__objclass__ is old:
            continue
        if only_callables and not isinstance(current, _CALLABLE_KINDS):
            continue
        try:
            type.__delattr__(old, name)
        except (AttributeError, TypeError) as err:
            _unpatchable(report, module_name, f"{old.__qualname__}.{name}", str(err))
    for name, value in named:
        try:
            value.__set_name__(old, name)
        except Exception as err:  # user code: report, the class is still usable
            _unpatchable(report, module_name, f"{old.__qualname__}.{name}", repr(err))


def _rebase(cls: type, successor: dict[int, Any], report: PatchReport, module_name: str) -> None:
    """A new class that stays derives from the kept previous classes, not their discarded twins."""
    bases = tuple(successor.get(id(base), base) for base in cls.__bases__)
    try:
        if any(a is not b for a, b in zip(bases, cls.__bases__, strict=True)):
            cls.__bases__ = bases
        meta = successor.get(id(type(cls)))
        if meta is not None:
            cls.__class__ = meta
    except TypeError as err:
        _unpatchable(report, module_name, cls.__qualname__, f"cannot derive from kept bases: {err}")


def _adopt(value: Any, classes: dict[int, type], depth: int = 0) -> Any:
    """``value`` with instances of discarded new classes turned into instances of kept ones.

    Objects the new version made at import (``ORIGIN = Point(0, 0)``, a default argument, a
    registry dict's values) are instances of the new class, which the module no longer holds.
    ``classes`` maps ``id(new class)`` to the kept class. Looks one container deep (dict, list,
    tuple, set); deeper instances keep the new class.
    """
    kind = type(value)
    old_cls = classes.get(id(kind))
    if old_cls is not None:
        if isinstance(old_cls, enum.EnumMeta):
            return old_cls.__members__.get(value.name, value)  # the kept class's own member
        try:
            value.__class__ = old_cls
        except TypeError as err:  # a layout the kept class cannot take: it keeps the new class
            logger.debug("%r keeps its class %s: %s", value, kind.__qualname__, err)
        return value
    if kind not in _CONTAINERS or depth > 1 or not value:
        return value
    if kind is dict:
        for key, item in list(value.items()):
            if id(type(item)) in classes or type(item) in _CONTAINERS:
                adopted = _adopt(item, classes, depth + 1)
                if adopted is not item:
                    value[key] = adopted
    elif kind is list:
        for index, item in enumerate(value):
            if id(type(item)) in classes or type(item) in _CONTAINERS:
                adopted = _adopt(item, classes, depth + 1)
                if adopted is not item:
                    value[index] = adopted
    else:
        for item in value:
            if id(type(item)) in classes or type(item) in _CONTAINERS:
                items = [_adopt(item, classes, depth + 1) for item in value]
                if any(a is not b for a, b in zip(items, value, strict=False)):
                    return kind(items)
                break
    return value


def _unpatchable(report: PatchReport, module_name: str, qualname: str, why: str) -> None:
    report.unpatchable.append(f"{qualname}: {why}")
    key = (module_name, qualname, why)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.warning(
            "%s.%s keeps its previous version for objects that already hold it: %s.",
            module_name,
            qualname,
            why,
        )


def _remember_versions(module_name: str, after: _Found, successor: dict[int, Any]) -> None:
    """Keep weak references to every module-level function version, so escaped copies (a
    callback dict, a partial, a framework's route table) are patched on later runs too."""
    with _VERSIONS_LOCK:
        versions = VERSIONS.setdefault(module_name, {})
        for key, (fn, _canonical, owner) in after.functions.items():
            if owner is not None:
                # A method is reached through its class; a discarded new class's methods live on
                # until the garbage collector frees the class, and would only pile up here.
                continue
            kept = successor.get(id(fn))
            live: list[weakref.ref[types.FunctionType]] = []
            has_fn = has_kept = False
            for ref in versions.get(key, ()):
                version = ref()
                if version is not None:
                    live.append(ref)
                    has_fn = has_fn or version is fn
                    has_kept = has_kept or version is kept
            if not has_fn:
                live.append(weakref.ref(fn))
            if kept is not None and not has_kept:
                live.append(weakref.ref(kept))
            versions[key] = live


def _known_versions(module_name: str) -> list[types.FunctionType]:
    with _VERSIONS_LOCK:
        places = list(VERSIONS.get(module_name, {}).values())
    return [fn for refs in places for ref in refs if (fn := ref()) is not None]


# --------------------------------------------------------------------------------------------
# CallGuard

_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ITERABLE_COROUTINE = 0x100
_CO_ASYNC_GENERATOR = 0x200
# The flags a trampoline takes from the function it stands in for: its kind.
_KIND_FLAGS = _CO_GENERATOR | _CO_COROUTINE | _CO_ITERABLE_COROUTINE | _CO_ASYNC_GENERATOR
_SENTINEL = "__relmod_call_guard__"
_GUARD_FILE = "<relmod call guard>"  # every trampoline's co_filename: how one is recognised
# The trampoline's body per kind. Its only constant is replaced by a weak reference to the
# per-function _Trampoline, so the code never looks anything up in the user's module namespace.
# Weak, because code objects are not tracked by the garbage collector: a trampoline whose code
# held it strongly would never be freed. (``.__call__()``, because the compiler warns of a
# constant called directly.)
_BODIES = {
    "function": 'return "%s".__call__().enter(__relmod_args, __relmod_kwargs)',
    "generator": 'return (yield from "%s".__call__().enter(__relmod_args, __relmod_kwargs))',
    "coroutine": 'return await "%s".__call__().enter(__relmod_args, __relmod_kwargs)',
}
_TEMPLATES: dict[tuple[str, tuple[str, ...]], tuple[types.CodeType, int]] = {}
_running = threading.local()


def _template(kind: str, freevars: tuple[str, ...]) -> tuple[types.CodeType, int]:
    """Trampoline code with exactly ``freevars`` (so ``func.__code__ = ...`` is legal), and the
    index of the constant that the armed function's _Trampoline replaces."""
    key = (kind, freevars)
    cached = _TEMPLATES.get(key)
    if cached is None:
        prefix = "async " if kind == "coroutine" else ""
        names = "".join(f"{name}, " for name in freevars)
        source = (
            "def __relmod_outer__():\n"
            + "".join(f"    {name} = None\n" for name in freevars)
            + f"    {prefix}def __relmod_trampoline__(*__relmod_args, **__relmod_kwargs):\n"
            # Never runs: only makes the names free variables of the trampoline.
            + (f"        if 0:\n            ({names})\n" if freevars else "")
            + f"        {_BODIES[kind] % _SENTINEL}\n"
            + "    return __relmod_trampoline__\n"
        )
        scope: dict[str, Any] = {}
        exec(compile(source, _GUARD_FILE, "exec", dont_inherit=True), scope)
        code = scope["__relmod_outer__"]().__code__
        if code.co_freevars != freevars:  # the compiler orders free variables as given
            raise RuntimeError(f"Trampoline free variables {code.co_freevars} != {freevars}.")
        cached = _TEMPLATES[key] = (code, code.co_consts.index(_SENTINEL))
    return cached


def _not_armed() -> None:
    """A trampoline's ``on_call`` until it is first armed (never called: it is disarmed)."""


class _Trampoline:
    """One function's stand-in code, made once and armed again on every later mark.

    ``code`` is the trampoline (its constant is a weak reference to this object); ``original``
    is what the function ran when it was last armed, put back by ``restore``. ``epoch`` counts
    the armings, so a call that entered an earlier one never disarms a later one. Whoever arms
    it keeps it alive until it is disarmed (a plan, and CallGuard's list of armed ones).
    """

    __slots__ = ("func", "original", "code", "on_call", "disarmed", "epoch", "shape", "__weakref__")

    def __init__(
        self, func: types.FunctionType, kind: str, original: types.CodeType | None = None
    ) -> None:
        self.func = func
        self.original = func.__code__ if original is None else original
        self.on_call: Callable[[], None] = _not_armed
        self.disarmed = True
        self.epoch = 0
        self._build(kind)

    def _build(self, kind: str) -> None:
        """Make ``code`` for the function's current code: its free variables, kind and name."""
        original = self.original
        template, slot = _template(kind, original.co_freevars)
        consts = list(template.co_consts)
        consts[slot] = weakref.ref(self)
        flags = template.co_flags | (original.co_flags & _CO_ITERABLE_COROUTINE)
        if sys.version_info >= (3, 11):  # tracebacks name the armed function
            self.code = template.replace(
                co_consts=tuple(consts),
                co_flags=flags,
                co_name=original.co_name,
                co_qualname=original.co_qualname,
            )
        else:
            self.code = template.replace(
                co_consts=tuple(consts), co_flags=flags, co_name=original.co_name
            )
        self.shape = (original.co_freevars, original.co_flags & _KIND_FLAGS)

    def arm(self, on_call: Callable[[], None]) -> bool:
        """Give the function this trampoline; the caller holds ``_SWAP_LOCK``.

        Returns False when the function already runs a trampoline (this one or another
        guard's), or has become an async generator function.
        """
        current = self.func.__code__
        if current.co_filename == _GUARD_FILE:
            return False
        self.original = current
        if (current.co_freevars, current.co_flags & _KIND_FLAGS) != self.shape:
            kind = _kind(current)  # patched into another kind since it was last armed
            if kind is None:
                return False
            self._build(kind)
        self.on_call = on_call
        self.disarmed = False
        self.epoch += 1
        self.func.__code__ = self.code
        return True

    def enter(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run by the trampoline: bring the module up to date, then call the function again."""
        running: set[int] | None = getattr(_running, "ids", None)
        if running is None:
            running = _running.ids = set()
        if self.disarmed or id(self) in running:
            # Disarmed while this call was on its way in, or called again from inside on_call
            # (the module's own re-execution): run whatever is current, never loop.
            return self._call_current(args, kwargs)
        epoch = self.epoch
        running.add(id(self))
        try:
            self.on_call()
        except BaseException:
            self.restore(epoch)
            raise
        finally:
            running.discard(id(self))
        self.restore(epoch)  # a no-op when patch_namespace gave the function its new code
        return self.func(*args, **kwargs)

    def restore(self, epoch: int | None = None) -> None:
        """Put the original code back unless the function was patched since, or (given the
        ``epoch`` a call entered) armed again since."""
        with _SWAP_LOCK:
            if epoch is not None and epoch != self.epoch:
                return
            self.disarmed = True
            if self.func.__code__ is self.code:
                self.func.__code__ = self.original

    def _call_current(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        func = self.func
        if func.__code__ is not self.code:
            return func(*args, **kwargs)
        original = types.FunctionType(
            self.original, func.__globals__, func.__name__, func.__defaults__, func.__closure__
        )
        original.__kwdefaults__ = func.__kwdefaults__
        return original(*args, **kwargs)


def _armed_by(code: types.CodeType) -> _Trampoline | None:
    """The _Trampoline whose code ``code`` is, or None for any other code."""
    if code.co_filename != _GUARD_FILE:
        return None
    for const in code.co_consts:
        if type(const) is weakref.ref:
            trampoline = const()
            if type(trampoline) is _Trampoline:
                return trampoline
    return None


def _kind(code: types.CodeType) -> str | None:
    if code.co_flags & _CO_ASYNC_GENERATOR:
        return None  # an async generator cannot forward asend/athrow through a trampoline
    if code.co_flags & _CO_COROUTINE:
        return "coroutine"
    if code.co_flags & _CO_GENERATOR:
        return "generator"
    return "function"


def makes_functions(code: types.CodeType) -> bool:
    """Whether a module's code defines a function, class, lambda or comprehension."""
    return types.CodeType in map(type, code.co_consts)  # no Python frame per constant


def nothing_to_arm(module_name: str, code: types.CodeType | None) -> bool:
    """Whether :meth:`CallGuard.arm` would arm nothing, known without walking the namespace:
    the module's code (finished running) makes no function or class, and no version of a
    function of the module was ever seen. Most modules of a deep chain are such."""
    return code is not None and module_name not in VERSIONS and not makes_functions(code)


_HOOK = "__relmod_missing__"


def _hook_missing(cls: type, on_call: Callable[[], None]) -> bool:
    """Make a missing attribute of an instance a use of the stale module (a method the edit
    added is then found on an old instance); classes with a ``__getattr__`` of their own, or
    whose ``__dict__`` cannot take one, are left alone."""
    if "__getattr__" in vars(cls) or any("__getattr__" in vars(b) for b in cls.__mro__[1:-1]):
        return False

    def __getattr__(self: Any, name: str) -> Any:  # noqa: N807
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        hook = type(self).__dict__.get("__getattr__")
        if getattr(hook, _HOOK, False):
            on_call()  # reloads (and patching removes this hook: disarm runs after it)
        return object.__getattribute__(self, name)

    setattr(__getattr__, _HOOK, True)
    try:
        cls.__getattr__ = __getattr__  # type: ignore[attr-defined]
    except (TypeError, AttributeError):
        return False
    return True


def _unhook_missing(cls: type) -> None:
    hook = vars(cls).get("__getattr__")
    if hook is not None and getattr(hook, _HOOK, False):
        with contextlib.suppress(TypeError, AttributeError):  # a class made read-only since
            delattr(cls, "__getattr__")


@dataclasses.dataclass
class _Plan:
    """What arming one namespace touches, found by one walk and kept for the next arms."""

    ns: dict[str, Any]
    size: int  # len(ns) when walked: a namespace that grew or shrank since is walked again
    trampolines: list[_Trampoline]  # one per function found in the namespace
    escaped: list[weakref.ref[types.FunctionType]]  # earlier versions held elsewhere
    classes: list[type]  # given a missing-attribute hook when armed


class CallGuard:
    """Makes a held function a use of its module: its next call brings the module up to date.

    ``arm`` gives every function of a stale module (module level, methods, property parts,
    functions behind ``functools.wraps``, copies that escaped earlier runs) a trampoline code
    object with the same free variables. A trampoline's first call, in whatever thread, runs
    ``on_call()`` (which re-executes the module and calls :func:`patch_namespace`), then calls
    the function again with the same arguments, so the caller gets the new code's result. When
    the function was not patched (deleted, unpatchable, or ``on_call`` did not reload), the
    original code is put back and runs. When ``on_call`` raises, the original code is put back
    and the error reaches the caller. A function that is not armed runs its own code at no cost.

    ``on_call`` must be safe to call from several threads at once and from inside itself: a
    function of the module may be called while the module re-executes, and then runs its
    original code without calling ``on_call`` again.

    Generator and coroutine functions are armed with a trampoline of the same kind (so
    ``inspect.isgeneratorfunction`` and ``iscoroutinefunction`` still hold): the module is brought
    up to date when the generator is first iterated or the coroutine first awaited, not at the
    call. Async generator functions are not armed.

    While armed, ``inspect.signature`` of a function shows ``(*args, **kwargs)``.

    Example::

        >>> import types
        >>> mod = types.ModuleType("demo_guard")
        >>> exec("def f(): return 1", mod.__dict__)
        >>> guard = CallGuard()
        >>> guard.arm(mod.__dict__, "demo_guard", lambda: print("reloading"))
        1
        >>> mod.f()
        reloading
        1
    """

    def __init__(self) -> None:
        self._armed: dict[int, list[_Trampoline]] = {}
        self._hooked: dict[int, list[type]] = {}  # classes given a missing-attribute hook
        self._plans: dict[int, _Plan] = {}
        self._lock = threading.Lock()

    def arm(
        self,
        ns: dict[str, Any],
        module_name: str,
        on_call: Callable[[], None],
        *,
        code: types.CodeType | None = None,
    ) -> int:
        """Arm every function of the module; safe while other threads call them.

        The first arm of a namespace walks it and keeps what it found (its plan): a trampoline
        per function, made once. Later arms reuse the plan while the namespace keeps its size,
        so marking a module costs a code swap per function. Call :meth:`replan` after the
        module's code ran again (and was patched), :meth:`forget` when the module goes.

        Args:
            ns: The module's ``__dict__``.
            module_name: The module's ``__name__``.
            on_call: Brings the module up to date; called by the first armed call.
            code: The code object that made the namespace, when it is known and has finished
                running. A module code without nested code objects makes no function and no
                class, so when no version of a function of the module was ever seen either,
                there is nothing to arm and the namespace is not walked.

        Returns:
            How many functions were armed (already armed ones are not counted again).
        """
        if nothing_to_arm(module_name, code):
            return 0  # a module of data only (most of a deep chain): nothing anyone can hold
        plan = self._plans.get(id(ns))
        if plan is None or plan.ns is not ns or plan.size != len(ns):
            plan = self._plan(ns, module_name, plan)
        armed: list[_Trampoline] = []
        with _SWAP_LOCK:
            for trampoline in plan.trampolines:
                if trampoline.arm(on_call):
                    armed.append(trampoline)
        for ref in plan.escaped:  # copies from earlier runs that escaped: rare, made each time
            fn = ref()
            if fn is None or fn.__globals__ is not ns:
                continue
            made = self._trampoline(fn, module_name)
            if made is not None:
                with _SWAP_LOCK:
                    if made.arm(on_call):
                        armed.append(made)
        hooked = [cls for cls in plan.classes if _hook_missing(cls, on_call)]
        with self._lock:
            self._armed.setdefault(id(ns), []).extend(armed)
            self._hooked.setdefault(id(ns), []).extend(hooked)
        return len(armed)

    def replan(self, ns: dict[str, Any], module_name: str) -> None:
        """Walk a namespace that ran again now (in the reloading thread), so that its next
        arm, on the feed's thread, does not. Does nothing for a namespace never armed."""
        plan = self._plans.get(id(ns))
        if plan is not None and plan.ns is ns:
            self._plan(ns, module_name, plan)

    def forget(self, ns: dict[str, Any]) -> None:
        """Drop what this guard keeps for a namespace (its module is no longer reloaded)."""
        self.disarm(ns)
        with self._lock:
            plan = self._plans.get(id(ns))
            if plan is not None and plan.ns is ns:
                del self._plans[id(ns)]

    def _plan(self, ns: dict[str, Any], module_name: str, previous: _Plan | None) -> _Plan:
        """Walk the namespace; keep the trampolines of the previous plan for the same functions."""
        found = _discover(list(ns.items()), module_name, ns)
        made = {}
        if previous is not None and previous.ns is ns:
            made = {id(t.func): t for t in previous.trampolines}
        trampolines: list[_Trampoline] = []
        seen: set[int] = set()
        for fn, _canonical, _owner in found.functions.values():
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            trampoline = made.get(id(fn))
            if trampoline is None or trampoline.func is not fn:
                trampoline = self._trampoline(fn, module_name)
            if trampoline is not None:
                trampolines.append(trampoline)
        escaped = [
            weakref.ref(fn)
            for fn in _known_versions(module_name)
            if fn.__globals__ is ns and id(fn) not in seen
        ]
        plan = _Plan(ns, len(ns), trampolines, escaped, list(found.classes.values()))
        with self._lock:
            self._plans[id(ns)] = plan
        logger.debug("Planned %d functions of %s.", len(trampolines), module_name)
        return plan

    @staticmethod
    def _trampoline(fn: types.FunctionType, module_name: str) -> _Trampoline | None:
        code = fn.__code__
        armed = _armed_by(code)
        if armed is not None:  # armed by another guard now: what it stands in for tells
            code = armed.original
        kind = _kind(code)
        if kind is None:
            return None
        try:
            return _Trampoline(fn, kind, code)
        except RuntimeError as err:  # never seen on 3.10-3.13; the function stays unarmed
            logger.debug("Cannot arm %s.%s: %s", module_name, fn.__qualname__, err)
            return None

    def after_fork(self) -> None:
        """In a forked child: free the lock another thread may have held at the fork."""
        self._lock = threading.Lock()

    def disarm(self, ns: dict[str, Any]) -> None:
        """Give every still-armed function of the namespace its original code back.

        Call it when the module turned out unchanged, and after patching. Functions that were
        patched meanwhile keep their new code.
        """
        with self._lock:
            armed = self._armed.pop(id(ns), [])
            hooked = self._hooked.pop(id(ns), [])
        for trampoline in armed:
            trampoline.restore()
        for cls in hooked:
            _unhook_missing(cls)
