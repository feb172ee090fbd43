"""Run unittest classes from a module you are editing, without a test-runner command line.

``runtest`` runs one ``TestCase`` class, ``testmod`` every class of a module, ``testfocus``
narrows a class to the methods you are working on, and ``testonly`` turns a script into a
one-class test run when it is executed directly. Output goes through unittest's
``TextTestRunner``, so it looks the way unittest users expect.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    import unittest

__all__ = ["runtest", "testfocus", "testmod", "testonly"]

TestCaseT = TypeVar("TestCaseT", bound="type[unittest.TestCase]")
FuncT = TypeVar("FuncT", bound=Callable[..., Any])

# The mark testfocus leaves on a method; a plain attribute survives functools.wraps and inheritance.
_FOCUS_ATTRIBUTE = "__relmod_testfocus__"


def testfocus(func: FuncT) -> FuncT:
    """Mark a test method so that ``runtest`` runs only the marked methods of its class.

    The note ``runtest`` prints gives each marked method's line number: the line where its
    decorators start, which is the ``@testfocus`` line when that decorator comes first.

    Args:
        func: a test method.

    Returns:
        The same function, marked.

    Example:
        >>> import io, unittest
        >>> class Sums(unittest.TestCase):
        ...     def test_other(self): pass
        ...     @testfocus
        ...     def test_mine(self): pass
        >>> runtest(Sums, stream=io.StringIO()).testsRun
        1
    """
    setattr(func, _FOCUS_ATTRIBUTE, True)
    return func


@overload
def runtest(
    case: None = None, names: str = "", verbosity: int = 2, **runner_kwargs: Any
) -> Callable[[TestCaseT], TestCaseT]: ...


@overload
def runtest(
    case: type[unittest.TestCase], names: str = "", verbosity: int = 2, **runner_kwargs: Any
) -> unittest.TestResult: ...


def runtest(
    case: type[unittest.TestCase] | None = None,
    names: str = "",
    verbosity: int = 2,
    **runner_kwargs: Any,
) -> unittest.TestResult | Callable[[TestCaseT], TestCaseT]:
    """Run one ``TestCase`` class with unittest's ``TextTestRunner``.

    When methods of the class are marked with :func:`testfocus`, only those run, ``names`` is
    ignored, and a note listing them with their line numbers is written to the runner's stream.

    Args:
        case: the class to run. ``None`` returns a class decorator that runs the class it decorates
            and returns that class unchanged.
        names: comma-separated method names to run, such as ``'test_a, test_b'``; empty runs every
            test method.
        verbosity: the runner's verbosity; 2 prints one line per test.
        **runner_kwargs: passed on to ``unittest.TextTestRunner`` (``stream``, ``failfast``,
            ``buffer``, ...). ``stream`` defaults to ``sys.stderr`` as it is at call time.

    Returns:
        The ``unittest.TestResult`` of the run, or the decorator when ``case`` is ``None``.

    Raises:
        ValueError: ``names`` names a method the class does not have.

    Example:
        >>> import io, unittest
        >>> class Sums(unittest.TestCase):
        ...     def test_add(self): self.assertEqual(1 + 1, 2)
        ...     def test_sub(self): self.assertEqual(2 - 1, 1)
        >>> runtest(Sums, 'test_add', stream=io.StringIO()).testsRun
        1
    """
    if case is None:

        def decorator(cls: TestCaseT) -> TestCaseT:
            runtest(cls, names, verbosity, **runner_kwargs)
            return cls

        return decorator

    import unittest  # here: every worker imports relmod, few of them run tests

    stream: IO[str] = runner_kwargs.get("stream") or sys.stderr
    focused = _focused_methods(case)
    if focused:
        stream.write(_focus_note(case, focused, names))
        stream.flush()
        method_names = [name for name, _ in focused]
    else:
        method_names = _parse_names(case, names)
    if method_names:
        suite = unittest.TestSuite(case(name) for name in method_names)
    else:
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(case)
    runner = unittest.TextTestRunner(verbosity=verbosity, **{**runner_kwargs, "stream": stream})
    return runner.run(suite)


def testmod(module: types.ModuleType, **kw: Any) -> dict[str, unittest.TestResult]:
    """Run every ``TestCase`` class found in a module's namespace, sorted by name.

    Classes that belong to unittest itself (``unittest.TestCase`` imported by name) are skipped, and
    a class bound to two names runs once, under the first name.

    Args:
        module: the module whose classes to run.
        **kw: passed on to :func:`runtest` for each class (``verbosity``, ``stream``, ...).

    Returns:
        The result of each class, keyed by its name in the module.

    Example:
        >>> import io, types, unittest
        >>> mod = types.ModuleType('demo')
        >>> class Sums(unittest.TestCase):
        ...     def test_add(self): self.assertEqual(1 + 1, 2)
        >>> mod.Sums = Sums
        >>> {name: r.wasSuccessful() for name, r in testmod(mod, stream=io.StringIO()).items()}
        {'Sums': True}
    """
    import unittest

    results: dict[str, unittest.TestResult] = {}
    seen: set[int] = set()
    for name, value in sorted(vars(module).items()):
        if not (isinstance(value, type) and issubclass(value, unittest.TestCase)):
            continue
        if value.__module__.split(".")[0] == "unittest" or id(value) in seen:
            continue
        seen.add(id(value))
        results[name] = runtest(value, **kw)
    return results


@overload
def testonly(names: TestCaseT) -> TestCaseT: ...


@overload
def testonly(names: str = "", **kw: Any) -> Callable[[TestCaseT], TestCaseT]: ...


def testonly(
    names: str | TestCaseT = "", **kw: Any
) -> TestCaseT | Callable[[TestCaseT], TestCaseT]:
    """Make a script run only the decorated ``TestCase`` class when it is executed directly.

    When the class is defined in ``__main__`` (``python script.py``), a note is written to the
    runner's stream, the class runs with :func:`runtest`, and the process exits with status 0 if
    every test passed and 1 otherwise, so nothing below the class runs. When the module is
    imported, the class is returned untouched. Works as ``@testonly``, ``@testonly()`` and
    ``@testonly('test_a, test_b')``.

    Args:
        names: comma-separated method names to run; empty runs every test method.
        **kw: passed on to :func:`runtest` (``verbosity``, ``stream``, ...).

    Returns:
        A class decorator, or the class itself when used without parentheses.

    Example:
        >>> import unittest
        >>> @testonly()
        ... class Sums(unittest.TestCase):
        ...     def test_add(self): self.assertEqual(1 + 1, 2)
        >>> Sums.__name__  # defined outside __main__: returned untouched, nothing ran
        'Sums'
    """
    if isinstance(names, type):
        return _run_if_main(names, "", kw)

    def decorator(cls: TestCaseT) -> TestCaseT:
        return _run_if_main(cls, names, kw)

    return decorator


# pytest collects callables named test* that a test file imports; these are tools, not tests.
_TOOLS: tuple[Any, ...] = (testfocus, testmod, testonly)
for _tool in _TOOLS:
    _tool.__test__ = False


def _run_if_main(cls: TestCaseT, names: str, kw: dict[str, Any]) -> TestCaseT:
    """Run ``cls`` and exit when it was defined in ``__main__``; return it otherwise."""
    if cls.__module__ != "__main__":
        return cls
    stream: IO[str] = kw.get("stream") or sys.stderr
    stream.write(
        f"relmod.testonly: {cls.__name__} is marked with @testonly, so this script runs only "
        f"its tests and exits.\n"
    )
    stream.flush()
    result = runtest(cls, names, **{**kw, "stream": stream})
    sys.exit(0 if result.wasSuccessful() else 1)


def _parse_names(case: type[unittest.TestCase], names: str) -> list[str]:
    """Split ``'test_a, test_b'`` and check that the class has each method."""
    import unittest

    wanted = [name.strip() for name in names.split(",") if name.strip()]
    for name in wanted:
        if not callable(getattr(case, name, None)):
            available = ", ".join(unittest.defaultTestLoader.getTestCaseNames(case)) or "none"
            raise ValueError(
                f"{case.__qualname__} has no test method named {name!r}. "
                f"Its test methods are: {available}. Check the spelling of the names given "
                f"to runtest."
            )
    return wanted


def _focused_methods(case: type[unittest.TestCase]) -> list[tuple[str, int | None]]:
    """The names and first line numbers of the methods marked with testfocus, sorted by name."""
    focused = []
    for name in sorted(dir(case)):
        attr = getattr(case, name, None)
        if callable(attr) and getattr(attr, _FOCUS_ATTRIBUTE, False):
            code = getattr(inspect.unwrap(attr), "__code__", None)
            focused.append((name, code.co_firstlineno if code is not None else None))
    return focused


def _focus_note(
    case: type[unittest.TestCase], focused: list[tuple[str, int | None]], names: str
) -> str:
    """The note runtest prints before running only the focused methods."""
    listed = ", ".join(name if line is None else f"{name} (line {line})" for name, line in focused)
    note = f"relmod.runtest: running only the methods of {case.__qualname__} marked with "
    note += f"@testfocus: {listed}.\n"
    if names.strip():
        note += f"relmod.runtest: ignoring the names given to runtest ({names.strip()!r}); "
        note += "remove @testfocus to run them.\n"
    return note
