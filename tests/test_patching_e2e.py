"""References held elsewhere run the new code: real modules, imported the ordinary way, edited.

Each test writes a package to a temporary folder on ``sys.path``, calls ``relmod.enable()`` and
imports it with a plain ``import``, takes references the way application code does (``from
pkg.core import f``, instances, bound methods, callbacks in another module's dict), saves a new
version of a file, calls ``relmod.sync()`` and checks what those references run. The first tests
do the same in a separate worker process whose only relmod call is ``relmod.enable()`` or
``relmod.connect()``: nothing in its loop asks relmod for anything.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import Broker, LineWorker, wait_for

import relmod

pytestmark = pytest.mark.timeout(120)

_numbers = itertools.count()


def write(path: Path, text: str) -> Path:
    """Save as an editor does: the new content replaces the file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)
    return path


class Package:
    """A package under a name no other test uses (patching remembers versions by module name)."""

    def __init__(self, root: Path) -> None:
        self.name = f"app{next(_numbers)}"
        self.folder = root / self.name
        write(self.folder / "__init__.py", "")

    def write(self, stem: str, text: str) -> None:
        write(self.folder / f"{stem}.py", text)

    def module(self, stem: str) -> Any:
        """``import <package>.<stem>``, a plain import statement's work."""
        __import__(f"{self.name}.{stem}")
        return sys.modules[f"{self.name}.{stem}"]


@pytest.fixture
def package(tmp_path: Path) -> Package:
    root = tmp_path / "proj"
    root.mkdir()
    sys.path.insert(0, str(root))  # the conftest's autouse fixture puts sys.path back
    relmod.enable()
    return Package(root)


# ------------------------------------------------------------------ a worker loop, another process

CORE_V1 = """
    def compute(x):
        return ("v1", x)
"""
CORE_V2 = """
    def compute(x):
        return ("v2", x * 10)
"""

# The worker a user writes: its only relmod call is the first line after the imports.
LOOP = """
import json, sys
import relmod
relmod.{start}
from app.core import compute
print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(compute(int(line))), flush=True)
"""


class Loop(LineWorker):
    """A ``python -c`` worker process answering one ``compute(x)`` per line."""

    def __init__(self, root: Path, start: str) -> None:
        super().__init__(LOOP.format(start=start), root)
        assert self.read() == "ready"

    def compute(self, x: int) -> Any:
        return json.loads(self.ask(str(x)))

    def close(self, *, must_end: bool = True) -> str:
        return super().close(must_end=must_end)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "core.py", CORE_V1)
    return root


def test_a_worker_loop_holding_from_import_runs_the_edit_with_enable_alone(app: Path) -> None:
    loop = Loop(app, "enable()")
    try:
        assert loop.compute(2) == ["v1", 2]

        def edited() -> bool:
            # Saved again on every try: the worker's watcher starts on its first import, and
            # nothing in the loop waits for it to be ready, so the first save may predate it.
            write(app / "app" / "core.py", CORE_V2)
            return loop.compute(3) == ["v2", 30]

        wait_for(edited, 20, "the worker's held compute() to run the new code")
        assert loop.compute(4) == ["v2", 40]
    finally:
        loop.close()


def test_a_worker_loop_holding_from_import_runs_the_edit_with_a_broker(app: Path) -> None:
    broker = Broker(app).start()
    try:
        loop = Loop(app, "connect()")
        try:
            assert loop.compute(2) == ["v1", 2]
            write(app / "app" / "core.py", CORE_V2)  # connect() returned: the broker sees it
            wait_for(lambda: loop.compute(3) == ["v2", 30], 20, "the broker's edit in the loop")
            assert loop.compute(4) == ["v2", 40]
        finally:
            loop.close()
    finally:
        broker.stop()


# ------------------------------------------------------------------------- functions, in-process


def test_a_function_held_by_from_import_returns_the_new_value(package: Package) -> None:
    package.write("core", "def compute(x):\n    return ('v1', x)\n")
    compute = package.module("core").compute  # from app.core import compute
    package.write("core", "def compute(x):\n    return ('v2', x * 10)\n")
    relmod.sync()
    assert compute(3) == ("v2", 30)
    assert package.module("core").compute is compute


def test_a_function_added_to_a_module_of_data_only_is_held_and_runs_the_next_edit(
    package: Package,
) -> None:
    """Marking skips modules whose code defines no function: the code that ran decides."""
    package.write("consts", "LIMIT = 1\n")
    package.write("user", "from . import consts\nDOUBLE = consts.LIMIT * 2\n")
    user = package.module("user")
    assert user.DOUBLE == 2
    package.write("consts", "LIMIT = 2\ndef limit(x):\n    return ('v2', x)\n")
    relmod.sync()
    limit = package.module("consts").limit  # from app.consts import limit
    assert user.DOUBLE == 4 and limit(3) == ("v2", 3)
    package.write("consts", "LIMIT = 3\ndef limit(x):\n    return ('v3', x * 10)\n")
    relmod.sync()
    assert limit(3) == ("v3", 30)  # the held function's call reloaded the module first


def test_a_function_an_edit_renamed_is_held_and_runs_the_next_edit(package: Package) -> None:
    """The edit keeps the module's size (one function out, one in): the reload's own walk of
    the namespace, not its size, tells the next mark what to arm."""
    package.write("core", "def old(x):\n    return ('old', x)\n")
    assert package.module("core").old(1) == ("old", 1)
    package.write("core", "def new(x):\n    return ('v2', x)\n")
    relmod.sync()
    new = package.module("core").new  # from app.core import new
    assert new(2) == ("v2", 2)
    package.write("core", "def new(x):\n    return ('v3', x * 10)\n")
    relmod.sync()
    assert new(2) == ("v3", 20)


def test_a_decorated_function_runs_the_new_code(package: Package) -> None:
    package.write(
        "deco",
        """
        import functools
        CALLS = []
        def logged(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                CALLS.append(fn.__name__)
                return fn(*args, **kwargs)
            return wrapper
        """,
    )
    core = """
        from .deco import logged
        @logged
        def compute(x):
            '''Version {v}.'''
            return ({v}, x)
        """
    package.write("core", core.format(v=1))
    compute = package.module("core").compute
    package.write("core", core.format(v=2))
    relmod.sync()
    assert compute(5) == (2, 5)
    assert compute.__doc__ == "Version 2."
    assert package.module("deco").CALLS == ["compute"]  # still through the decorator


def test_a_partial_made_in_another_module_runs_the_new_code(package: Package) -> None:
    package.write("core", "def scale(factor, x):\n    return factor * x\n")
    package.write(
        "jobs",
        """
        import functools
        from .core import scale
        double = functools.partial(scale, 2)
        """,
    )
    double = package.module("jobs").double
    package.write("core", "def scale(factor, x):\n    return factor * x + 1000\n")
    relmod.sync()
    assert double(5) == 1010
    assert package.module("jobs").double(5) == 1010


def test_a_callback_registered_in_another_modules_dict_runs_the_new_code(
    package: Package,
) -> None:
    package.write("registry", "CALLBACKS = {}\n")
    package.write("handlers", "def on_save(doc):\n    return ('saved v1', doc)\n")
    registry = package.module("registry")
    registry.CALLBACKS["save"] = package.module("handlers").on_save
    for version in (2, 3):
        package.write("handlers", f"def on_save(doc):\n    return ('saved v{version}', doc)\n")
        relmod.sync()
        assert registry.CALLBACKS["save"]("d") == (f"saved v{version}", "d")


def test_a_callback_the_module_registers_on_import_runs_the_newest_code(package: Package) -> None:
    package.write(
        "registry",
        """
        CALLBACKS = {}
        def register(name):
            def add(fn):
                CALLBACKS[name] = fn
                return fn
            return add
        """,
    )
    handlers = """
        from .registry import register
        @register("save")
        def on_save():
            return {v}
        """
    package.write("handlers", handlers.format(v=1))
    registry = package.module("registry")
    package.module("handlers")
    first = registry.CALLBACKS["save"]
    for version in (2, 3, 4):
        package.write("handlers", handlers.format(v=version))
        relmod.sync()
        package.module("handlers")  # the registration re-ran
        assert registry.CALLBACKS["save"]() == version
        assert first() == version


# ---------------------------------------------------------------------------------------- classes

SHAPE = """
    class Shape:
        sides = {v}

        def __init__(self, size):
            self.size = size

        def area(self):
            return ("v{v}", self.size * {v})

        @property
        def label(self):
            return "shape v{v}"

        @classmethod
        def unit(cls):
            return (cls.__name__, "v{v}", cls(1))

        @staticmethod
        def describe():
            return "static v{v}"
    """


def test_an_instance_made_before_the_edit_runs_the_new_method_and_pickles(
    package: Package,
) -> None:
    package.write("shapes", SHAPE.format(v=1))
    shapes = package.module("shapes")
    Shape = shapes.Shape
    before = Shape(3)
    area = before.area  # a bound method held somewhere
    package.write("shapes", SHAPE.format(v=2))
    relmod.sync()
    assert before.area() == ("v2", 6)
    assert area() == ("v2", 6)
    assert shapes.Shape is Shape and isinstance(before, shapes.Shape)
    assert before.sides == 2
    copy = pickle.loads(pickle.dumps(before))
    assert type(copy) is shapes.Shape and copy.area() == ("v2", 6)
    assert not any(obj is before for obj in relmod.stale_objects())


def test_a_property_of_an_old_instance_runs_the_new_getter(package: Package) -> None:
    package.write("shapes", SHAPE.format(v=1))
    before = package.module("shapes").Shape(1)
    package.write("shapes", SHAPE.format(v=2))
    relmod.sync()
    assert before.label == "shape v2"


def test_a_held_classmethod_runs_the_new_code(package: Package) -> None:
    package.write("shapes", SHAPE.format(v=1))
    Shape = package.module("shapes").Shape
    unit = Shape.unit  # a bound classmethod held elsewhere (a factory in a registry)
    package.write("shapes", SHAPE.format(v=2))
    relmod.sync()
    name, version, made = unit()
    assert (name, version) == ("Shape", "v2")
    assert type(made) is package.module("shapes").Shape is Shape


def test_a_held_staticmethod_runs_the_new_code(package: Package) -> None:
    package.write("shapes", SHAPE.format(v=1))
    describe = package.module("shapes").Shape.describe
    package.write("shapes", SHAPE.format(v=2))
    relmod.sync()
    assert describe() == "static v2"


def test_a_method_removed_and_one_added_are_seen_by_old_instances(package: Package) -> None:
    package.write("shapes", "class Shape:\n    def square(self):\n        return 1\n")
    shapes = package.module("shapes")
    before = shapes.Shape()
    package.write("shapes", "class Shape:\n    def cube(self):\n        return 2\n")
    relmod.sync()
    assert shapes.Shape is type(before)  # a use of the module: it reloads here
    assert before.cube() == 2
    assert not hasattr(before, "square")


def test_a_method_the_edit_added_is_found_on_an_old_instance_before_any_other_use(
    package: Package,
) -> None:
    package.write("shapes", "class Shape:\n    def square(self):\n        return 1\n")
    before = package.module("shapes").Shape()
    package.write("shapes", "class Shape:\n    def cube(self):\n        return 2\n")
    relmod.sync()
    assert before.cube() == 2


def test_a_held_function_whose_dependency_changed_runs_with_the_new_dependency(
    package: Package,
) -> None:
    package.write("util", "def rate():\n    return 2\n")
    package.write("core", "from .util import rate\ndef price(x):\n    return x * rate()\n")
    price = package.module("core").price
    package.write("util", "def rate():\n    return 3\n")
    relmod.sync()
    assert price(10) == 30  # only util.py changed; core, its dependent, ran again too
    assert package.module("core").rate is package.module("util").rate


def test_a_held_function_whose_module_fails_to_reload_raises_once_then_keeps_the_old_code(
    package: Package,
) -> None:
    package.write("core", "def compute():\n    return 1\n")
    compute = package.module("core").compute
    package.write("core", "def compute():\n    return 2\nboom()\n")
    relmod.sync()
    with pytest.raises(relmod.ReloadError, match=r"core\.py: NameError at line 3: name 'boom'"):
        compute()
    assert compute() == 1  # the last good version, and the error is not raised again
    package.write("core", "def compute():\n    return 3\n")
    relmod.sync()
    assert compute() == 3


# -------------------------------------------------------------------- what is not kept, by design

COLOR = """
    import enum
    class Color(enum.Enum):
        RED = 1
        GREEN = 2
    {extra}
    """


def test_an_enum_with_a_new_member_is_replaced_and_old_members_are_stale_objects(
    package: Package,
) -> None:
    package.write("colors", COLOR.format(extra=""))
    colors = package.module("colors")
    OldColor, red = colors.Color, colors.Color.RED
    package.write("colors", COLOR.format(extra="    BLUE = 3"))
    relmod.sync()
    assert colors.Color is not OldColor  # the module holds the new class
    assert [m.name for m in colors.Color] == ["RED", "GREEN", "BLUE"]
    assert colors.Color(1) is colors.Color.RED and red is not colors.Color.RED
    assert any(obj is red for obj in relmod.stale_objects())
    assert not any(obj is colors.Color.RED for obj in relmod.stale_objects())


def test_a_dataclass_with_a_new_field_is_replaced_and_old_instances_are_stale_objects(
    package: Package,
) -> None:
    point = """
        import dataclasses
        @dataclasses.dataclass
        class Point:
            x: "int"
            y: "int"
            {extra}
        """
    package.write("geometry", point.format(extra=""))
    geometry = package.module("geometry")
    Old = geometry.Point
    before = Old(1, 2)
    package.write("geometry", point.format(extra="z: int = 0"))
    relmod.sync()
    assert geometry.Point is not Old
    assert geometry.Point(1, 2, 3).z == 3
    assert type(before) is Old and not isinstance(before, geometry.Point)
    assert any(obj is before for obj in relmod.stale_objects())


def test_a_closure_shape_change_is_logged_once_and_the_holder_keeps_the_old_code(
    package: Package, caplog: pytest.LogCaptureFixture
) -> None:
    package.write(
        "core",
        """
        def make():
            def compute():
                return 1
            return compute
        compute = make()
        """,
    )
    core = package.module("core")
    held = core.compute
    reshaped = """
        def make():
            offset = {v}
            def compute():
                return offset
            return compute
        compute = make()
        """
    caplog.set_level(logging.WARNING, logger="relmod")
    package.write("core", reshaped.format(v=2))
    relmod.sync()
    assert held() == 1  # no crash: the previous version's code, as before
    assert core.compute() == 2
    package.write("core", reshaped.format(v=3))
    relmod.sync()
    assert core.compute() == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{package.name}.core.make.<locals>.compute" in warnings[0]
    assert "closure shape changed" in warnings[0]


def test_configure_patch_false_leaves_held_references_on_the_old_code(package: Package) -> None:
    relmod.configure(patch=False)
    package.write("core", "def compute():\n    return 1\n")
    core = package.module("core")
    compute = core.compute
    package.write("core", "def compute():\n    return 2\n")
    relmod.sync()
    assert compute() == 1
    assert core.compute() == 2 and core.compute is not compute
