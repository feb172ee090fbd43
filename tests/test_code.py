"""relmod.codecache: what a module's code imports, read from its bytecode, and the cache."""

from __future__ import annotations

import dis
import os
import textwrap
import types
from pathlib import Path

import pytest

from relmod.codecache import STDLIB_MARK, defined_names, imports_of, load_code
from relmod.sources import content_hash


def imports(source: str) -> set[tuple[str, tuple[str, ...] | None, int]]:
    """The statements read, as (name, from list or None, level)."""
    flat = imports_of(compile(textwrap.dedent(source), "/p/m.py", "exec"))
    statements: list[tuple[str, list[str] | None, int]] = []
    for item in flat:
        if item == STDLIB_MARK:
            continue
        if item.startswith(":"):
            names = statements[-1][1]
            if names is None:
                names = []
                statements[-1] = (statements[-1][0], names, statements[-1][2])
            names.append(item[1:])
        else:
            name = item.lstrip(".")
            statements.append((name, None, len(item) - len(name)))
    return {
        (name, None if names is None else tuple(names), level) for name, names, level in statements
    }


def test_every_form_of_the_import_statement_is_read() -> None:
    assert imports(
        """
        import a
        import a.b.c
        import a.b as ab
        from x import y, z as w
        from . import sib
        from .. import up
        from ..pkg.mod import name
        from star import *
        """
    ) == {
        ("a", None, 0),
        ("a.b.c", None, 0),
        ("a.b", None, 0),
        ("x", ("y", "z"), 0),
        ("", ("sib",), 1),
        ("", ("up",), 2),
        ("pkg.mod", ("name",), 2),
        ("star", ("*",), 0),
    }


def test_imports_in_functions_classes_and_branches_are_read_too() -> None:
    assert imports(
        """
        try:
            import fast
        except ImportError:
            fast = None
        class K:
            from .klass import Y
            def method(self):
                import inner_most
        def f():
            from .lazy import X
            return X
        """
    ) == {("fast", None, 0), ("klass", ("Y",), 1), ("inner_most", None, 0), ("lazy", ("X",), 1)}


def test_arguments_beyond_one_byte_are_decoded() -> None:
    # 300 constants and 300 names before the import: its arguments need EXTENDED_ARG.
    source = "".join(f"n{i} = {i}.5\n" for i in range(300)) + "from .deep.er import thing\n"
    assert imports(source) == {("deep.er", ("thing",), 1)}


def test_code_without_imports_reads_as_none() -> None:
    assert imports("x = 1\ndef f():\n    return x\n") == set()


def test_the_cache_keeps_the_imports_with_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELMOD_CACHE_DIR", str(tmp_path / "cache"))
    data = b"from . import a\nimport b.c\nimport os.path\n"
    first = load_code("/p/m.py", data, content_hash(data))
    again = load_code("/p/m.py", data, content_hash(data))
    assert again is not first  # read back from the cache
    assert imports_of(again) == imports_of(first) == (".", ":a", "b.c", STDLIB_MARK, "os.path")


def test_code_stored_for_a_new_version_replaces_the_old_one_s_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relmod.codecache import cached_file, store_code
    from relmod.sources import compile_source

    monkeypatch.setenv("RELMOD_CACHE_DIR", str(tmp_path / "cache"))
    old, new = b"X = 1\n", b"X = 2\n"
    load_code("/p/m.py", old, content_hash(old))  # a client compiled the first version
    assert cached_file("/p/m.py", content_hash(old)) is not None
    store_code(
        "/p/m.py", content_hash(new), compile_source("/p/m.py", new), replaces=content_hash(old)
    )
    assert cached_file("/p/m.py", content_hash(old)) is None
    import relmod.codecache

    def no_compile(path: str, data: bytes) -> None:
        raise AssertionError(f"compiled {path}: the stored code was not found")

    monkeypatch.setattr(relmod.codecache, "compile_source", no_compile)
    code = load_code("/p/m.py", new, content_hash(new))
    namespace: dict[str, object] = {}
    exec(code, namespace)
    assert namespace["X"] == 2
    monkeypatch.setenv("RELMOD_CACHE_DIR", "")  # caching off: nothing stored, nothing found
    store_code("/p/n.py", content_hash(new), compile_source("/p/n.py", new))
    assert cached_file("/p/n.py", content_hash(new)) is None


def test_processes_run_with_and_without_o_never_share_code(tmp_path: Path) -> None:
    """``python -O`` compiles ``__debug__`` to False and drops asserts: its code has a cache of
    its own, or the second process would run the first one's code."""
    import subprocess
    import sys

    from support import child_env

    module = tmp_path / "flag.py"
    module.write_text("DEBUG = __debug__\n")
    env = child_env(RELMOD_CACHE_DIR=str(tmp_path / "cache"))
    script = "import relmod, sys; print(relmod.at(sys.argv[1]).DEBUG)"

    def run(*flags: str) -> str:
        out = subprocess.run(
            [sys.executable, *flags, "-c", script, str(module)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert [run(), run("-O"), run(), run("-O")] == ["True", "False", "True", "False"]


def _defined_names_walked(code: types.CodeType) -> tuple[frozenset[str], bool]:
    """The same answer as defined_names, from dis's view of every instruction (slow, plain)."""
    bound: set[str] = set()
    star = False
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("STORE_NAME", "STORE_GLOBAL"):
            bound.add(instruction.argval)
        elif instruction.opname == "IMPORT_STAR" or (
            instruction.opname == "CALL_INTRINSIC_1" and instruction.arg == 2
        ):
            star = True
    return frozenset(bound), star


def test_defined_names_agrees_with_dis_on_the_standard_library() -> None:
    """Every top-level module of the standard library (a real shape each: EXTENDED_ARG
    names, globals bound in functions, star imports) reads the same as with dis."""
    folder = Path(os.__file__).parent
    checked = star = 0
    for path in sorted(folder.glob("*.py")):
        try:
            code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue  # test data that is meant not to compile
        names = defined_names(code)
        assert names == _defined_names_walked(code), path
        checked += 1
        star += names[1]
    assert checked > 150 and star > 0
    many = "\n".join(f"name_{i} = {i}" for i in range(300))  # arguments beyond one byte
    code = compile(many + "\nfrom os import *\n", "/p/m.py", "exec")
    assert defined_names(code) == _defined_names_walked(code)
    assert len(defined_names(code)[0]) == 300
