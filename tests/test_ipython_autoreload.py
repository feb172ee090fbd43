"""What IPython's ``%autoreload`` promises, kept by ``%load_ext relmod`` in a real shell.

The scenarios are those IPython's own autoreload suite checks (functions imported with ``from``,
old instances, removed and added methods, properties, Enums, class attributes whose ``==`` is
not a bool, new names after ``from mod import *``, a broken save reported once, a deleted file),
written for relmod: a module of the notebook's folder, imported with a plain ``import`` in a
cell, saved again on disk, and the next cell run. No sleeps: relmod compares content, and the
extension checks recently used files before every cell.
"""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import relmod
import relmod.ipython
from relmod.errors import ReloadError

InteractiveShell = pytest.importorskip("IPython.core.interactiveshell").InteractiveShell
Config = pytest.importorskip("traitlets.config").Config

pytestmark = pytest.mark.timeout(60)

_numbers = itertools.count()


def run(shell: Any, code: str) -> Any:
    """Run one cell; fail the test with the cell's own error if it raised."""
    result = shell.run_cell(textwrap.dedent(code))
    if not result.success:
        raise AssertionError(f"cell failed: {code!r}") from (
            result.error_in_exec or result.error_before_exec
        )
    return result.result


def fails(shell: Any, code: str) -> BaseException:
    """Run one cell that must fail; its error."""
    result = shell.run_cell(textwrap.dedent(code))
    assert not result.success, f"cell did not fail: {code!r}"
    err = result.error_in_exec or result.error_before_exec
    assert err is not None
    return err  # type: ignore[no-any-return]


class Notebook:
    """The notebook's folder (the cwd, on ``sys.path`` as in Jupyter) and its modules."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def new_module(self, text: str) -> str:
        """A module under a fresh name (patching remembers functions by module name)."""
        name = f"nbmod{next(_numbers)}"
        self.save(name, text)
        return name

    def save(self, name: str, text: str) -> None:
        """Save in place, as an editor or ``%%writefile`` does; the next cell follows at once."""
        (self.folder / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Notebook:
    folder = (tmp_path / "nb").resolve()
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    return Notebook(folder)


@pytest.fixture
def shell(tmp_path: Path, notebook: Notebook, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real InteractiveShell with ``%load_ext relmod`` run in its first cell."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipythondir"))
    monkeypatch.setattr(
        relmod, "load_ipython_extension", relmod.ipython.load_ipython_extension, raising=False
    )
    monkeypatch.setattr(
        relmod, "unload_ipython_extension", relmod.ipython.unload_ipython_extension, raising=False
    )
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    ip = InteractiveShell.instance(config=config)
    run(ip, "%load_ext relmod")
    yield ip
    relmod.ipython.unload_ipython_extension(ip)
    InteractiveShell.clear_instance()


# ------------------------------------------------------------------------------------ functions


def test_a_function_imported_with_from_runs_the_new_code_in_the_next_cell(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("def some_function():\n    return 42\n")
    run(shell, f"from {name} import some_function")
    assert run(shell, "some_function()") == 42
    for value in (43, 44, 45):  # same size each time: only the content differs
        notebook.save(name, f"def some_function():\n    return {value}\n")
        assert run(shell, "some_function()") == value
    assert run(shell, f"import {name}\n{name}.some_function is some_function") is True


def test_module_names_follow_the_file_new_ones_appear_deleted_ones_go(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("x = 9\nz = 123\ndef func1():\n    return 1\n")
    run(shell, f"import {name}")
    assert run(shell, f"({name}.x, {name}.z, {name}.func1())") == (9, 123, 1)
    notebook.save(name, "x = 10\ndef func1():\n    return 2\ndef func2():\n    return 3\nm = 5\n")
    assert run(shell, f"({name}.x, {name}.func1(), {name}.func2(), {name}.m)") == (10, 2, 3, 5)
    assert run(shell, f"hasattr({name}, 'z')") is False


def test_from_import_of_one_name_binds_no_other_name_after_an_edit(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("n = 1\ndef func1():\n    return 1\n")
    run(shell, f"from {name} import n")
    notebook.save(name, "n = 1\ndef func1():\n    return 1\ndef func2():\n    return 2\nm = 5\n")
    run(shell, "n")
    for missing in ("func1", "func2", "m"):
        assert isinstance(fails(shell, missing), NameError)
    assert run(shell, f"from {name} import m, func2\n(m, func2())") == (5, 2)


# -------------------------------------------------------------------------------------- classes

BAZ = """
    class Baz:
        def __init__(self, x):
            self.x = x

        def bar(self, y):
            return self.x + y{plus}

        @property
        def quux(self):
            return {quux}
    {extra}
    """


def test_an_instance_made_before_the_edit_runs_the_new_methods_and_property(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module(
        BAZ.format(plus="", quux=42, extra="    def zzz(self):\n            return 99")
    )
    run(shell, f"from {name} import Baz\nold = Baz(9)\nbar = old.bar")
    assert run(shell, "(old.bar(1), old.quux, old.zzz())") == (10, 42, 99)
    notebook.save(name, BAZ.format(plus=" + 1", quux=43, extra=""))
    assert run(shell, "(old.bar(1), bar(1), old.quux, Baz(9).bar(1))") == (11, 11, 43, 11)
    assert run(shell, "hasattr(old, 'zzz'), hasattr(Baz(9), 'zzz')") == (False, False)


def test_an_old_instance_is_of_the_modules_class_and_pickles(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("class Test:\n    def meth(self):\n        return 'old'\n")
    run(shell, f"from {name} import Test\ntest = Test()")
    notebook.save(name, "class Test:\n    def meth(self):\n        return 'new'\n")
    run(shell, "pass")
    test = shell.user_ns["test"]
    current = getattr(sys.modules[name], type(test).__qualname__)  # what pickle looks up
    assert isinstance(test, current)
    assert run(shell, "import pickle\npickle.loads(pickle.dumps(test)).meth()") == "new"


def test_methods_removed_and_added_and_a_new_init_on_old_and_new_instances(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module(
        """
        class MyClass:
            def __init__(self, a=10):
                self.a = a
                self.b = 22
            def square(self):
                return self.a * self.a
        """
    )
    run(shell, f"from {name} import MyClass\nfirst = MyClass(5)")
    assert run(shell, "first.square()") == 25
    assert isinstance(fails(shell, "first.power(3)"), AttributeError)
    notebook.save(
        name,
        """
        class MyClass:
            def __init__(self, a=10):
                self.a = a
                self.b = 11
            def power(self, p):
                return self.a ** p
        """,
    )
    run(shell, "second = MyClass(5)")
    for obj in ("first", "second"):
        assert run(shell, f"{obj}.power(3)") == 125
        assert isinstance(fails(shell, f"{obj}.square()"), AttributeError)
        assert isinstance(fails(shell, f"{obj}.toto"), AttributeError)
    # __init__ ran once for each: the old instance keeps what the old __init__ set.
    assert run(shell, "(first.b, second.b)") == (22, 11)


def test_a_class_attribute_whose_equality_is_not_a_bool_reloads(
    shell: Any, notebook: Notebook
) -> None:
    # Like numpy arrays: == is elementwise, and asking for its truth raises.
    notebook.save(
        "arraylike",
        """
        class Array:
            def __init__(self, *items):
                self.items = items
            def __eq__(self, other):
                return Array(*(a == b for a, b in zip(self.items, other.items)))
            def __bool__(self):
                raise ValueError("The truth value of an array is ambiguous.")
            __hash__ = None
        """,
    )
    source = """
        from arraylike import Array
        class MyClass:
            a = (Array({x}, 0.2), Array(0.2, 0.3))
            def first(self):
                return self.a[0].items[0]
        """
    name = notebook.new_module(source.format(x=0.1))
    run(shell, f"from {name} import MyClass\nobj = MyClass()")
    notebook.save(name, source.format(x=0.3))
    assert run(shell, "obj.first(), MyClass.a[0].items[0]") == (0.3, 0.3)


def test_an_enum_gaining_a_member_reloads_and_the_old_class_is_reported_stale(
    shell: Any, notebook: Notebook
) -> None:
    source = "from enum import Enum\nclass MyEnum(Enum):\n    A = 'A'\n    B = 'B'\n"
    name = notebook.new_module(source)
    run(shell, f"import {name}\nfrom {name} import MyEnum\nheld_a = MyEnum.A")
    notebook.save(name, source + "    C = 'C'\n")
    assert run(shell, f"{name}.MyEnum.C.value") == "C"  # no reload error in the cell
    # An Enum with other members cannot be updated in place: the notebook's name bound by
    # `from ... import MyEnum` follows the module to the new class (as %autoreload 3 does), and
    # the members held from the previous class are what stale_objects() lists.
    assert run(shell, f"MyEnum is {name}.MyEnum") is True
    assert run(shell, "import relmod\nany(o is held_a for o in relmod.stale_objects())") is True


# ---------------------------------------------------------------------------- failures, deletions


def test_a_broken_save_fails_one_cell_keeps_the_old_code_and_a_fix_reloads(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module(BAZ.format(plus="", quux=42, extra=""))
    run(shell, f"import {name}\nfrom {name} import Baz\nold = Baz(9)")
    notebook.save(name, "a syntax error\n")
    err = fails(shell, "x = 1")
    assert isinstance(err, ReloadError)
    assert f"{name}.py: SyntaxError at line 1" in str(err)
    assert "The last good version stays in use" in str(err)
    assert "x" not in shell.user_ns  # the cell did not run
    relmod.sync()  # the watcher's report of the same save does not repeat the error
    assert run(shell, "old.bar(1), old.quux") == (10, 42)
    notebook.save(name, BAZ.format(plus=" + 1", quux=43, extra=""))
    assert run(shell, "old.bar(1), old.quux") == (11, 43)


def test_a_module_raising_while_it_reloads_keeps_the_old_code(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("def foo(y):\n    return y + 3\n")
    run(shell, f"from {name} import foo")
    notebook.save(name, "def foo(y):\n    return y + 4\nLIMIT = 1 / 0\n")
    err = fails(shell, "foo(0)")
    assert isinstance(err, ReloadError) and "ZeroDivisionError at line 3" in str(err)
    assert run(shell, "foo(0)") == 3


def test_a_deleted_file_keeps_the_last_good_code(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("x = 9\ndef foo(y):\n    return y + 3\n")
    run(shell, f"import {name}\nfrom {name} import foo")
    os.unlink(notebook.folder / f"{name}.py")
    relmod.sync()
    assert run(shell, f"{name}.x, foo(0), {name}.foo(0)") == (9, 3, 3)


# ---------------------------------------------------------------------------------- odds and ends


def test_a_user_variable_named_in_does_not_stop_reloading(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("def hello():\n    return 'Hello'\n")
    run(shell, f"import {name}")
    run(shell, "In = 'some value'")
    notebook.save(name, "def hello():\n    return 'Changed'\n")
    assert run(shell, f"{name}.hello()") == "Changed"


def test_each_edit_is_one_reload_event(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("def func1():\n    return 0\n")
    run(shell, f"import relmod, {name}\nevents = []\nrelmod.add_listener(events.append)")
    try:
        for value in (1, 2):
            notebook.save(name, f"def func1():\n    return {value}\n")
            assert run(shell, f"{name}.func1()") == value
        reloads = run(shell, "[e.name for e in events if e.kind == 'reloaded']")
        assert reloads == [name, name]
    finally:
        run(shell, "relmod.remove_listener(events.append)")


def test_with_patching_off_a_name_imported_with_from_keeps_the_old_code(
    shell: Any, notebook: Notebook
) -> None:
    name = notebook.new_module("def foo():\n    return 'old'\n")
    run(shell, f"import relmod, {name}\nrelmod.configure(patch=False)\nfrom {name} import foo")
    notebook.save(name, "def foo():\n    return 'new'\n")
    assert run(shell, f"foo(), {name}.foo()") == ("old", "new")


# -------------------------------------------------------------------- %autoreload 3


def test_new_names_appear_after_from_import_star(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("def func1():\n    return 1\n")
    run(shell, f"from {name} import *")
    notebook.save(
        name,
        """
        def func1():
            return 1
        def func2():
            return 2
        class Test:
            pass
        number = 0
        """,
    )
    assert run(shell, "func2(), type(Test()).__name__, number") == (2, "Test", 0)


def test_a_value_imported_with_from_follows_the_module(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("n = 1\n")
    run(shell, f"from {name} import n as foo")
    notebook.save(name, "n = 100\n")
    assert run(shell, "foo") == 100


def test_relmod_magic_counts_what_was_patched(shell: Any, notebook: Notebook) -> None:
    name = notebook.new_module("def f():\n    return 1\n")
    run(shell, f"from {name} import f")
    notebook.save(name, "def f():\n    return 2\n")
    assert run(shell, "f()") == 2
    status = run(shell, "from relmod.ipython import _loaded_in\n_loaded_in(get_ipython()).status()")
    assert status["patched"] >= 1 and status["unpatchable"] == 0
    described = run(shell, "_loaded_in(get_ipython()).describe()")
    assert "object(s) updated in place" in described
