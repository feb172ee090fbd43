"""patch_namespace and CallGuard on real modules: written to a folder, imported, edited, re-run.

Each test imports a module from a temporary file under a unique name (it is in ``sys.modules``,
so pickle and dataclasses find it), edits the file, re-executes the new source in the same
module object the way relmod does, and checks what code that held the previous objects sees.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import itertools
import os
import pickle
import sys
import textwrap
import threading
import types
import weakref
from pathlib import Path
from typing import Any

import pytest
from support import wait_child

from relmod.machinery.patching import CallGuard, PatchReport, patch_namespace

_numbers = itertools.count()


class Project:
    """A folder of modules that a test imports, edits and re-executes in place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, source: str, stem: str = "mod") -> types.ModuleType:
        name = f"patching_{stem}_{next(_numbers)}"
        path = self.folder / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def edit(self, module: types.ModuleType, source: str) -> PatchReport:
        """Save a new version and re-run it in the same module object, then patch."""
        path = Path(module.__file__ or "")
        path.write_text(textwrap.dedent(source))
        ns = module.__dict__
        snapshot = dict(ns)
        for name in [name for name in ns if not (name.startswith("__") and name.endswith("__"))]:
            del ns[name]
        exec(compile(path.read_text(), str(path), "exec", dont_inherit=True), ns)
        return patch_namespace(snapshot, ns, module.__name__)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


# ------------------------------------------------------------------------------ functions


def test_a_function_held_by_from_import_returns_the_new_value(project: Project) -> None:
    mod = project.load("def f(x, y=1):\n    return ('v1', x, y)\n")
    f = mod.f  # from mod import f
    report = project.edit(mod, "def f(x, y=2):\n    'New doc.'\n    return ('v2', x, y)\n")
    assert f(0) == ("v2", 0, 2)
    assert mod.f is f
    assert f.__doc__ == "New doc."
    assert report.patched == 1 and report.unpatchable == [] and not report.replaced_classes


def test_every_later_edit_reaches_the_first_version(project: Project) -> None:
    mod = project.load("def f():\n    return 1\n")
    f = mod.f
    project.edit(mod, "def f():\n    return 2\n")
    project.edit(mod, "def f():\n    return 3\n")
    assert f() == 3 and mod.f is f


def test_keyword_only_defaults_and_annotations_follow(project: Project) -> None:
    mod = project.load("def f(*, k=1) -> int:\n    return k\n")
    f = mod.f
    project.edit(mod, "def f(*, k=5) -> str:\n    return str(k)\n")
    assert f() == "5"
    assert f.__annotations__ == {"return": str}


def test_a_functools_partial_of_a_function_runs_the_new_code(project: Project) -> None:
    mod = project.load(
        """
        import functools
        def add(a, b):
            return a + b
        add_one = functools.partial(add, 1)
        """
    )
    add_one = mod.add_one
    project.edit(
        mod,
        """
        import functools
        def add(a, b):
            return (a + b) * 100
        add_one = functools.partial(add, 1)
        """,
    )
    assert add_one(1) == 200


def test_a_callback_stored_in_a_dict_runs_the_new_code_after_each_edit(project: Project) -> None:
    source = """
        def on_save():
            return {version}
        HANDLERS = {{"save": on_save}}
        """
    mod = project.load(source.format(version=1))
    first = mod.HANDLERS  # a registry elsewhere that kept the first dict
    project.edit(mod, source.format(version=2))
    second = mod.HANDLERS  # ... and one that copied the dict after the first edit
    project.edit(mod, source.format(version=3))
    assert first["save"]() == 3
    assert second["save"]() == 3  # an escaped copy is patched on later runs too
    assert mod.HANDLERS["save"]() == 3


def test_a_closure_shape_change_is_reported_not_crashed(project: Project) -> None:
    mod = project.load(
        """
        def make():
            def f():
                return 1
            return f
        f = make()
        """
    )
    f = mod.f
    report = project.edit(
        mod,
        """
        def make():
            extra = 2
            def f():
                return extra
            return f
        f = make()
        """,
    )
    assert mod.f() == 2
    assert f() == 1  # holders of the previous version keep its code
    assert report.unpatchable == ["make.<locals>.f: closure shape changed"]


def test_closure_values_follow_the_new_version(project: Project) -> None:
    mod = project.load(
        """
        def make(n):
            def f():
                return n
            return f
        f = make(1)
        """
    )
    f = mod.f
    project.edit(
        mod,
        """
        def make(n):
            def f():
                return n * 10
            return f
        f = make(2)
        """,
    )
    assert f() == 20 and mod.f is f


def test_a_lambda_bound_to_a_name_is_patched(project: Project) -> None:
    mod = project.load("double = lambda x: x * 2\ntriple = lambda x: x * 3\n")
    double, triple = mod.double, mod.triple
    project.edit(mod, "double = lambda x: x * 20\ntriple = lambda x: x * 30\n")
    assert (double(1), triple(1)) == (20, 30)


def test_another_modules_objects_are_left_alone(project: Project) -> None:
    helper = project.load("def shared():\n    return 'helper'\n", stem="helper")
    source = f"from os.path import join\nfrom {helper.__name__} import shared\n"
    mod = project.load(source + "def f():\n    return 1\n")
    join_code = mod.join.__code__
    shared_code = helper.shared.__code__
    report = project.edit(mod, source + "def shared():\n    return 'shadowed'\n")
    assert mod.join.__code__ is join_code
    assert helper.shared.__code__ is shared_code and helper.shared() == "helper"
    assert report.unpatchable == []


# ------------------------------------------------------------------------------ decorators

DECORATORS = """
import functools
def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return ("logged", func(*args, **kwargs))
    return wrapper
"""


def test_a_functools_wraps_decorated_function_runs_the_new_code(project: Project) -> None:
    decorators = project.load(DECORATORS, stem="decorators")
    source = f"from {decorators.__name__} import logged\n@logged\ndef f():\n    return {{}}\n"
    mod = project.load(source.format(1))
    f = mod.f
    report = project.edit(mod, source.format(2))
    assert f() == ("logged", 2)
    assert mod.f is f  # the same decoration: the previous wrapper stays the module's
    assert f.__wrapped__ is mod.f.__wrapped__
    assert report.unpatchable == []


def test_a_decorator_defined_in_the_module_itself(project: Project) -> None:
    source = DECORATORS + "@logged\ndef f():\n    return {}\n"
    mod = project.load(source.format(1))
    f = mod.f
    project.edit(mod, source.format(2))
    assert f() == ("logged", 2) and mod.f is f


def test_an_lru_cached_function_runs_the_new_code_once_its_cache_is_cleared(
    project: Project,
) -> None:
    source = "import functools\n@functools.lru_cache\ndef f(x):\n    return x + {}\n"
    mod = project.load(source.format(1))
    f = mod.f
    project.edit(mod, source.format(100))
    assert f(1) == 101  # nothing was cached yet
    assert mod.f(1) == 101


# ------------------------------------------------------------------------------ classes

SHAPES = """
import dataclasses, functools
class Shape:
    sides = {sides}
    def __init__(self, size):
        self.size = size
    def area(self):
        return {area}
    @property
    def label(self):
        return "shape-{version}"
    @label.setter
    def label(self, value):
        self.custom = (value, {version})
    @classmethod
    def make(cls):
        return (cls.__name__, {version})
    @staticmethod
    def unit():
        return {version}
    @functools.cached_property
    def cached(self):
        return {version}
    def __eq__(self, other):
        return isinstance(other, Shape) and other.size == self.size
    __hash__ = None
"""


def shapes(version: int, area: str = "self.size ** 2", sides: int = 4) -> str:
    return SHAPES.format(version=version, area=area, sides=sides)


def test_an_instance_made_before_the_edit_runs_the_new_method(project: Project) -> None:
    mod = project.load(shapes(1))
    Shape = mod.Shape
    square = Shape(3)
    area = square.area  # a bound method held somewhere
    report = project.edit(mod, shapes(2, area="self.size * 100", sides=5))
    assert square.area() == 300 and area() == 300
    assert mod.Shape is Shape and isinstance(square, mod.Shape)
    assert square.sides == 5
    assert square == mod.Shape(3)
    again = pickle.loads(pickle.dumps(square))
    assert type(again) is mod.Shape and again.area() == 300
    assert report.replaced_classes == set() and report.unpatchable == []


def test_property_classmethod_staticmethod_and_cached_property(project: Project) -> None:
    mod = project.load(shapes(1))
    Shape = mod.Shape
    old = Shape(2)
    make, unit = Shape.make, Shape.unit
    project.edit(mod, shapes(2))
    assert old.label == "shape-2"
    old.label = "x"
    assert old.custom == ("x", 2)
    assert make() == ("Shape", 2) and Shape.make() == ("Shape", 2)
    assert unit() == 2 and Shape.unit() == 2
    assert old.cached == 2


def test_attributes_removed_from_the_class_are_removed(project: Project) -> None:
    mod = project.load("class A:\n    x = 1\n    def gone(self):\n        return 1\n")
    a = mod.A()
    project.edit(mod, "class A:\n    y = 2\n")
    assert not hasattr(a, "gone") and not hasattr(a, "x") and a.y == 2


def test_zero_argument_super_keeps_working_in_a_patched_method(project: Project) -> None:
    source = """
        class Base:
            def hello(self):
                return "base"
        class Child(Base):
            def hello(self):
                return ("{}", super().hello(), __class__.__name__)
            def other(self):
                return {}
        """
    mod = project.load(source.format("v1", "1"))
    child = mod.Child()
    report = project.edit(mod, source.format("v2", "1"))
    assert child.hello() == ("v2", "base", "Child")
    assert report.unpatchable == []


def test_a_method_that_starts_using_super_runs_on_old_instances(project: Project) -> None:
    source = """
        class Base:
            def hello(self):
                return "base"
        class Child(Base):
            def hello(self):
                return {}
        """
    mod = project.load(source.format('"plain"'))
    child = mod.Child()
    held = child.hello
    report = project.edit(mod, source.format('("new", super().hello())'))
    assert report.unpatchable == ["Child.hello: closure shape changed"]
    assert child.hello() == ("new", "base")  # the class is kept; its new method finds the class
    assert held() == "plain"  # a bound method of the previous function keeps its code
    assert mod.Child is type(child)


def test_nested_classes_are_kept(project: Project) -> None:
    source = "class Outer:\n    class Inner:\n        def f(self):\n            return {}\n"
    mod = project.load(source.format(1))
    inner = mod.Outer.Inner()
    project.edit(mod, source.format(2))
    assert inner.f() == 2 and isinstance(inner, mod.Outer.Inner)


def test_a_class_with_slots_is_kept_until_its_slots_change(project: Project) -> None:
    source = "class P:\n    __slots__ = {}\n    def __init__(self):\n        self.x = 1\n"
    source += "    def f(self):\n        return {}\n"
    mod = project.load(source.format("('x',)", 1))
    P = mod.P
    p = P()
    assert project.edit(mod, source.format("('x',)", 2)).replaced_classes == set()
    assert p.f() == 2 and p.x == 1 and mod.P is P
    report = project.edit(mod, source.format("('x', 'y')", 3))
    assert report.replaced_classes == {P} and mod.P is not P
    assert report.unpatchable == ["P: instance layout changed"]


def test_changed_bases_replace_the_class(project: Project) -> None:
    source = "class A:\n    pass\nclass B:\n    pass\n"
    source += "class C({}):\n    def f(self):\n        return 1\n"
    mod = project.load(source.format("A"))
    C = mod.C
    report = project.edit(mod, source.format("B"))
    assert mod.C is not C and issubclass(mod.C, mod.B)
    assert report.replaced_classes == {C}
    assert report.unpatchable[0].startswith("C: bases changed")


def test_a_replaced_base_replaces_its_subclasses(project: Project) -> None:
    source = "class A:\n    __slots__ = {}\nclass B(A):\n    pass\n"
    mod = project.load(source.format("()"))
    A, B = mod.A, mod.B
    report = project.edit(mod, source.format("('x',)"))
    assert report.replaced_classes == {A, B}
    assert issubclass(mod.B, mod.A)


def test_an_enum_with_a_new_member_is_replaced(project: Project) -> None:
    source = "import enum\nclass Color(enum.Enum):\n    RED = 1\n{}"
    mod = project.load(source.format(""))
    Color = mod.Color
    report = project.edit(mod, source.format("    BLUE = 2\n"))
    assert mod.Color is not Color and mod.Color.BLUE.value == 2
    assert report.replaced_classes == {Color}
    assert report.unpatchable == [
        "Color: Enum members changed (old members stay instances of the old class)"
    ]


def test_an_enum_with_the_same_members_is_kept(project: Project) -> None:
    source = "import enum\nclass Color(enum.Enum):\n    RED = 1\n    def warm(self):\n"
    source += "        return {}\n"
    mod = project.load(source.format(1))
    red = mod.Color.RED
    report = project.edit(mod, source.format(2))
    assert mod.Color.RED is red and red.warm() == 2
    assert report.replaced_classes == set()


def test_a_dataclass_with_a_new_field_is_replaced(project: Project) -> None:
    source = "import dataclasses\n@dataclasses.dataclass\nclass Point:\n    x: int\n{}"
    mod = project.load(source.format(""))
    Point = mod.Point
    report = project.edit(mod, source.format("    y: int = 0\n"))
    assert mod.Point is not Point and mod.Point(1).y == 0
    assert report.replaced_classes == {Point}
    assert report.unpatchable == ["Point: dataclass fields or parameters changed"]


def test_a_dataclass_with_only_a_method_change_is_kept(project: Project) -> None:
    source = "import dataclasses\n@dataclasses.dataclass\nclass Point:\n    x: int\n"
    source += "    y: 'int' = 0\n    def norm(self):\n        return {}\n"
    mod = project.load(source.format("abs(self.x)"))
    Point = mod.Point
    p = Point(-3)
    report = project.edit(mod, source.format("self.x * 10"))
    assert mod.Point is Point and p.norm() == -30
    assert p == mod.Point(-3) and repr(p) == "Point(x=-3, y=0)"
    assert pickle.loads(pickle.dumps(p)) == p
    assert report.replaced_classes == set() and report.unpatchable == []


# ------------------------------------------------------------------------------ CallGuard

COUNTER = "def f(x):\n    return ({}, x)\n"


def guarded(project: Project, mod: types.ModuleType, source: str) -> tuple[CallGuard, list[int]]:
    """A guard whose on_call re-executes ``mod`` from ``source`` (and counts its calls)."""
    guard, calls = CallGuard(), []

    def on_call() -> None:
        calls.append(1)
        project.edit(mod, source)
        guard.disarm(mod.__dict__)

    assert guard.arm(mod.__dict__, mod.__name__, on_call) >= 1
    return guard, calls


def test_an_armed_held_function_reloads_its_module_and_returns_the_new_result(
    project: Project,
) -> None:
    mod = project.load(COUNTER.format(1))
    f = mod.f
    _guard, calls = guarded(project, mod, COUNTER.format(2))
    assert f(7) == (2, 7)
    assert f(8) == (2, 8) and calls == [1]
    assert "trampoline" not in repr(f.__code__)


def test_an_armed_method_reloads_through_an_old_instance(project: Project) -> None:
    mod = project.load(shapes(1))
    square = mod.Shape(2)
    guard, calls = guarded(project, mod, shapes(2, area="-1"))
    assert square.area() == -1 and calls == [1]


def test_a_failing_on_call_restores_the_function_and_propagates(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    f, original = mod.f, mod.f.__code__

    def on_call() -> None:
        raise SyntaxError("Cannot reload: SyntaxError at line 1.")

    guard = CallGuard()
    guard.arm(mod.__dict__, mod.__name__, on_call)
    with pytest.raises(SyntaxError, match="Cannot reload"):
        f(1)
    assert f.__code__ is original and f(1) == (1, 1)


def test_a_function_the_new_version_deleted_runs_its_original_code(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    f = mod.f
    _guard, calls = guarded(project, mod, "def g():\n    return 0\n")
    assert f(3) == (1, 3) and calls == [1]


def test_on_call_calling_the_armed_function_does_not_loop(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    f, seen = mod.f, []

    def on_call() -> None:
        seen.append(f(0))  # e.g. a dependent module's top level uses f while reloading
        project.edit(mod, COUNTER.format(2))

    guard = CallGuard()
    guard.arm(mod.__dict__, mod.__name__, on_call)
    assert f(1) == (2, 1) and seen == [(1, 0)]
    guard.disarm(mod.__dict__)


def test_disarm_restores_the_original_code_and_nothing_is_called(project: Project) -> None:
    mod = project.load(shapes(1) + "def g(*args, key=1):\n    return (args, key)\n")

    def codes() -> dict[str, types.CodeType]:
        return {n: f.__code__ for n, f in vars(mod.Shape).items() if inspect.isfunction(f)}

    originals, g_code = codes(), mod.g.__code__
    guard, calls = CallGuard(), []
    armed = guard.arm(mod.__dict__, mod.__name__, lambda: calls.append(1))
    assert armed >= 8 and mod.g.__code__ is not g_code
    assert all(codes()[name] is not code for name, code in originals.items())
    guard.disarm(mod.__dict__)
    assert mod.g.__code__ is g_code and mod.g(1, key=2) == ((1,), 2)
    assert codes() == originals and all(codes()[n] is c for n, c in originals.items())
    assert calls == []


def test_arming_twice_arms_each_function_once(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    guard = CallGuard()
    assert guard.arm(mod.__dict__, mod.__name__, lambda: None) == 1
    assert guard.arm(mod.__dict__, mod.__name__, lambda: None) == 0
    guard.disarm(mod.__dict__)
    assert mod.f(1) == (1, 1)


def test_arming_with_the_code_that_ran_skips_only_modules_that_define_no_function(
    project: Project,
) -> None:
    mod = project.load("X = 1\n")
    guard, data_only = CallGuard(), compile("X = 1", "m", "exec")
    assert guard.arm(mod.__dict__, mod.__name__, lambda: None, code=data_only) == 0
    mod = project.load(COUNTER.format(1))
    code = compile(Path(mod.__file__ or "").read_text(), "m", "exec")
    assert guard.arm(mod.__dict__, mod.__name__, lambda: None, code=code) == 1
    guard.disarm(mod.__dict__)
    assert mod.f(1) == (1, 1)


def test_a_generator_function_reloads_when_first_iterated(project: Project) -> None:
    source = "def gen(n):\n    for i in range(n):\n        yield i * {}\n"
    mod = project.load(source.format(1))
    gen = mod.gen
    _guard, calls = guarded(project, mod, source.format(10))
    assert inspect.isgeneratorfunction(gen)
    iterator = gen(3)
    assert inspect.isgenerator(iterator) and calls == []
    assert list(iterator) == [0, 10, 20] and calls == [1]


def test_a_coroutine_function_reloads_when_awaited(project: Project) -> None:
    source = "async def fetch(x):\n    return x * {}\n"
    mod = project.load(source.format(1))
    fetch = mod.fetch
    _guard, calls = guarded(project, mod, source.format(10))
    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(4)) == 40 and calls == [1]


def test_an_async_generator_function_is_not_armed(project: Project) -> None:
    source = "async def agen():\n    yield {}\n"
    mod = project.load(source.format(1))
    code = mod.agen.__code__
    guard = CallGuard()
    assert guard.arm(mod.__dict__, mod.__name__, lambda: None) == 0
    assert mod.agen.__code__ is code
    agen = mod.agen
    project.edit(mod, source.format(2))  # ... and is still patched like any function

    async def first() -> Any:
        return await agen().__anext__()

    assert asyncio.run(first()) == 2


def test_a_thread_calling_in_a_loop_while_arm_and_disarm_run_never_crashes(
    project: Project,
) -> None:
    mod = project.load(shapes(1) + COUNTER.format(1))
    f, square = mod.f, mod.Shape(2)
    stop, errors, results = threading.Event(), [], set()

    def caller() -> None:
        while not stop.is_set():
            try:
                results.add(f(1))
                results.add(square.area())
                results.add(sum(1 for _ in range(3)))
            except BaseException as err:  # pragma: no cover - the failure this test looks for
                errors.append(err)
                return

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    guard = CallGuard()
    try:
        for _ in range(300):
            guard.arm(mod.__dict__, mod.__name__, lambda: None)
            guard.disarm(mod.__dict__)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    assert results == {(1, 1), 4, 3}


def test_concurrent_first_calls_reload_once_and_all_see_the_new_code(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    f = mod.f
    lock, calls = threading.Lock(), []

    def on_call() -> None:  # what the reload path promises: one reload, others wait for it
        with lock:
            if not calls:
                calls.append(1)
                project.edit(mod, COUNTER.format(2))

    guard = CallGuard()
    guard.arm(mod.__dict__, mod.__name__, on_call)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(f(0))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    guard.disarm(mod.__dict__)
    assert results == [(2, 0)] * 8 and calls == [1]


def test_an_unarmed_function_keeps_its_own_code_object(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    code = mod.f.__code__
    guard = CallGuard()
    guard.arm(mod.__dict__, mod.__name__, lambda: None)
    guard.disarm(mod.__dict__)
    assert mod.f.__code__ is code


def test_objects_the_new_version_makes_are_instances_of_the_kept_class(project: Project) -> None:
    source = """
        import enum
        class Point:
            def __init__(self, x):
                self.x = x
            def show(self):
                return ("v{0}", self.x)
        class Color(enum.Enum):
            RED = 1
        class Point3(Point):
            pass
        ORIGIN = Point(0)
        NAMED = {{"one": Point(1)}}
        FAVOURITE = Color.RED
        def at(p=Point(2)):
            return p
        """
    mod = project.load(source.format(1))
    Point, red = mod.Point, mod.Color.RED
    project.edit(mod, source.format(2))
    assert mod.Point is Point and mod.Color.RED is red
    assert type(mod.ORIGIN) is Point and type(mod.NAMED["one"]) is Point
    assert type(mod.at()) is Point and mod.FAVOURITE is red
    assert issubclass(mod.Point3, Point) and mod.Point3(3).show() == ("v2", 3)


def test_arming_while_the_module_re_executes_patches_with_the_real_code(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    f, ns = mod.f, mod.__dict__
    snapshot = dict(ns)
    del ns["f"]
    exec(compile(COUNTER.format(2), "<edit>", "exec"), ns)
    guard, calls = CallGuard(), []
    guard.arm(ns, mod.__name__, lambda: calls.append(1))  # marked stale again meanwhile
    patch_namespace(snapshot, ns, mod.__name__)
    assert f(0) == (2, 0) and calls == [1]
    guard.disarm(ns)
    assert f(0) == (2, 0) and calls == [1]


def test_a_replanned_guard_arms_what_the_edit_renamed_and_no_longer_the_deleted(
    project: Project,
) -> None:
    """The namespace keeps its size (f out, g in), so only replan can tell the guard."""
    mod = project.load(COUNTER.format(1))
    ns, f, guard = mod.__dict__, mod.f, CallGuard()
    assert guard.arm(ns, mod.__name__, lambda: None) == 1
    guard.disarm(ns)
    project.edit(mod, "def g(x):\n    return ('g', x)\n")
    guard.replan(ns, mod.__name__)
    g, calls = mod.g, []
    assert guard.arm(ns, mod.__name__, lambda: calls.append(1)) == 1
    assert g.__code__.co_filename == "<relmod call guard>"
    assert f(0) == (1, 0) and calls == []  # deleted: not armed, runs its own code
    assert g(0) == ("g", 0) and calls == [1]


def test_a_forgotten_namespace_is_no_longer_kept_by_the_guard(project: Project) -> None:
    mod = project.load(COUNTER.format(1))
    ns, guard = mod.__dict__, CallGuard()
    guard.arm(ns, mod.__name__, lambda: None)
    held = weakref.ref(ns.pop("f"))
    gc.collect()
    kept = held() is not None  # (not in the assert: pytest would keep the object alive)
    assert kept  # the guard's walk holds it, and it is armed
    guard.forget(ns)
    gc.collect()
    released = held() is None
    assert released


def test_an_arm_while_the_module_re_executes_keeps_the_previous_function_armed(
    project: Project,
) -> None:
    """A save arrives while the module re-runs, before the run reached ``def f``: the arm,
    reusing the first walk, arms the previous f. Patching gives f the new code and leaves it
    armed, so its next call brings the module up to date again."""
    mod = project.load(COUNTER.format(1))
    f, ns, guard, calls = mod.f, mod.__dict__, CallGuard(), []
    guard.arm(ns, mod.__name__, lambda: None)
    guard.disarm(ns)
    snapshot = dict(ns)
    assert guard.arm(ns, mod.__name__, lambda: calls.append(1)) == 1
    exec(compile(COUNTER.format(2), "<edit>", "exec"), ns)  # the run reaches def f
    patch_namespace(snapshot, ns, mod.__name__)
    assert ns["f"] is f and calls == []
    assert f(0) == (2, 0) and calls == [1]
    guard.disarm(ns)
    assert f(0) == (2, 0) and calls == [1]


def test_a_call_that_entered_an_earlier_arm_leaves_a_later_one_armed(project: Project) -> None:
    """A save arrives while a held call reloads the module: the feed arms it again. The call,
    once its reload is done, must not disarm that later arm: it calls through it, so it runs
    the latest version."""
    mod = project.load(COUNTER.format(1))
    f, ns, guard, calls = mod.f, mod.__dict__, CallGuard(), []

    def second() -> None:
        calls.append("second")
        project.edit(mod, COUNTER.format(3))
        guard.disarm(ns)

    def first() -> None:
        calls.append("first")
        project.edit(mod, COUNTER.format(2))
        guard.disarm(ns)
        guard.arm(ns, mod.__name__, second)  # stale again, before this call goes on

    guard.arm(ns, mod.__name__, first)
    assert f(0) == (3, 0) and calls == ["first", "second"]
    assert f.__code__.co_filename != "<relmod call guard>"
    assert f(1) == (3, 1) and calls == ["first", "second"]


def test_arming_again_and_again_reuses_one_trampoline_that_goes_with_the_namespace(
    project: Project,
) -> None:
    mod = project.load(COUNTER.format(1))
    f, ns, guard = mod.f, mod.__dict__, CallGuard()
    codes = set()
    for _ in range(20):
        assert guard.arm(ns, mod.__name__, lambda: None) == 1
        codes.add(f.__code__)
        guard.disarm(ns)
    assert len(codes) == 1  # made once: marking costs a code swap per function
    trampoline = weakref.ref(codes.pop())
    guard.forget(ns)
    gc.collect()
    released = trampoline() is None
    assert released


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_arms_can_patch_call_and_arm(
    project: Project,
) -> None:
    """A pool forks while the feed thread marks (arms) modules: the lock that thread held at the
    fork must not stay held in the child, or its first reload or call would wait for ever."""
    source = COUNTER + "".join(f"def g{i}():\n    return {i}\n" for i in range(40))
    mod = project.load(source.format(1))
    f, ns, guard, stop = mod.f, mod.__dict__, CallGuard(), threading.Event()

    def feed() -> None:
        while not stop.is_set():
            guard.arm(ns, mod.__name__, lambda: None)
            guard.disarm(ns)

    thread = threading.Thread(target=feed)
    thread.start()
    hung = None
    try:
        for attempt in range(20):
            pid = os.fork()
            if pid == 0:  # the child: only this thread exists here
                status = 1
                try:
                    project.edit(mod, source.format(2))  # patching takes both locks
                    guard.after_fork()  # as Registry.after_fork does for its guard
                    guard.arm(ns, mod.__name__, lambda: None)
                    guard.disarm(ns)
                    status = 0 if f(0) == (2, 0) else 2
                finally:
                    os._exit(status)
            code = wait_child(pid, 5)
            if code is None:
                hung = attempt
                break
            assert code == 0
    finally:
        stop.set()
        thread.join(10)
    assert hung is None, f"child {hung} hung on a lock held at the fork"
