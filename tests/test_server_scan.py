"""The broker's scan: the fast import reader against the whole-file parse, the scan cache, and
broken files found by the compile pass. Real files on disk; the broker's own scan code."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from relmod.server.imports import ImportStatement, find_statements, statements_from_ast
from relmod.server.project import Project
from relmod.server.roots import ImportRoots
from relmod.server.scancache import ScanCache

# Real-shaped sources: every way an import is written, hidden or not.
SOURCES = {
    "multi_line_parens": '''
        """A module docstring.

        import not_this
        from nor import this
        """
        from __future__ import annotations

        import os, sys as system
        from pkg.sub import (
            alpha,
            beta as b,  # a comment (with parentheses)
            gamma,
        )
        from . import (a, b)
        from .. import c
        from ...deep.er import thing
        ''',
    "backslashes": """
        import pkg.one, \\
            pkg.two
        from pkg.three \\
            import four
        x = 1; y = 2
        """,
    "strings_and_comments": """
        TEMPLATE = '''
        import inside_a_triple_string
        '''
        OTHER = "import not_a_statement"
        RAW = r'from x import y'
        # import commented_out
        message = f"{'import'} nothing"
        def f():
            '''Docstring with
            from fake import module
            '''
            return "\\\\"  # import after_a_string
        import real_one
        """,
    "nested_blocks": """
        def f():
            import in_function
            if x:
                from in_if import y
            try:
                import in_try
            except ImportError:
                import in_except
            finally:
                pass
        class C:
            import in_class
            def m(self):
                with open('x') as fh:
                    from in_with import z
        while True:
            import in_while
            break
        try: import one_line_try
        except ImportError: pass
        """,
    "guards": """
        import typing
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from only_for_types import T
            import also_types
        else:
            import at_runtime
        if typing.TYPE_CHECKING:
            import typing_types
        if __name__ == "__main__":
            import only_as_script
            main()
        if "__main__" == __name__:  # reversed
            import also_script
        elif TYPE_CHECKING:
            import elif_types
        if TYPE_CHECKING or DEBUG:
            import maybe
        def g():
            if TYPE_CHECKING:
                import nested_types
            import nested_runtime
        """,
    "relmod_calls": """
        import relmod
        import relmod as rm
        from relmod import at, use, imp as grab
        a = relmod.at('./a.py')
        b = rm.use('b')
        c = grab('../c.py as cc', 'name')
        d = relmod.imp(spec='./d')
        e = relmod.at(computed)
        other.at('./not_relmod.py')
        """,
    "cookie_and_tabs": (
        "# -*- coding: latin-1 -*-\nname = 'caf\xe9'\nif x:\n\timport tabbed\nimport after\n"
    ),
    "yield_from_in_parens": """
        def gen():
            x = (yield
                 from other())
            import after_yield
        """,
    "match_and_async": """
        async def f():
            import in_async
            async with x:
                from in_async_with import y
        match command:
            case "go":
                import in_case
        """,
}


def _source(name: str) -> bytes:
    text = SOURCES[name]
    if name == "cookie_and_tabs":
        return text.encode("latin-1")
    return textwrap.dedent(text).lstrip("\n").encode()


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_fast_reader_finds_what_the_whole_parse_finds(name: str) -> None:
    data = _source(name)
    reference = statements_from_ast(data)
    assert reference is not None, "every sample parses"
    assert find_statements(data) == reference


def test_what_the_fast_reader_finds_in_detail() -> None:
    found = {(s.kind, s.level, s.module) for s in find_statements(_source("strings_and_comments"))}
    assert found == {("import", 0, "real_one")}
    guards = {s.module for s in find_statements(_source("guards"))}
    assert guards == {"typing", "at_runtime", "maybe", "nested_runtime"}
    parens = find_statements(_source("multi_line_parens")) or []
    assert ImportStatement("from", 0, "pkg.sub", ("alpha", "beta", "gamma")) in parens
    assert ImportStatement("from", 1, "", ("a", "b")) in parens
    slashes = {s.module for s in find_statements(_source("backslashes")) or []}
    assert slashes == {"pkg.one", "pkg.two", "pkg.three"}
    calls = {s.module for s in find_statements(_source("relmod_calls")) or [] if s.kind == "path"}
    assert calls == {"./a.py", "b", "../c.py", "./d"}


def test_the_fast_reader_agrees_on_the_installed_libraries() -> None:
    # Thousands of real files written by many hands: the same statements, file for file.
    import email
    import json
    import logging
    import unittest

    files = []
    for package in (email, json, logging, unittest, pytest):
        folder = Path(package.__file__).parent
        files += sorted(folder.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        data = path.read_bytes()
        reference = statements_from_ast(data, str(path))
        if reference is not None:
            assert find_statements(data, str(path)) == reference, path


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_warm_start_reads_only_the_files_that_changed(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    for index in range(50):
        write(
            root / "pkg" / f"m{index}.py", f"from . import m{index - 1}\n" if index else "X = 1\n"
        )
    write(root / "pkg" / "__init__.py", "")
    # Signatures younger than the trust window are not stored: age the files.
    old = os.stat(root).st_mtime - 60
    for path in root.rglob("*.py"):
        os.utime(path, (old, old))
    cache_file = tmp_path / "proj.scan"
    cold = Project(str(root), cache=ScanCache(cache_file))
    assert cold.load_all(processes=1) == 51
    cold.cache.save(cold.current_hashes())
    edges = cold.graph.edges()

    write(root / "pkg" / "m7.py", "import os\n")  # changed: read again, its edge is gone
    warm = Project(str(root), cache=ScanCache.load(cache_file))
    from relmod.server.scanner import ProjectScan

    scan = ProjectScan(str(root), warm.roots, warm.cache, warm.receive, processes=1)
    scan.run()
    assert scan.progress.cached == 50 and scan.progress.scanned == 51
    assert warm.graph.edges() == [e for e in edges if e[0] != str(root / "pkg" / "m7.py")]
    changed = str(root / "pkg" / "m7.py")
    assert warm.full_hashes() == {**cold.full_hashes(), changed: warm.full_hashes()[changed]}


def test_a_damaged_cache_is_ignored(tmp_path: Path) -> None:
    cache_file = tmp_path / "bad.scan"
    cache_file.write_bytes(b"\x93not msgpack at all")
    assert len(ScanCache.load(cache_file)) == 0


def test_files_broken_from_the_start_are_found_by_the_compile_pass(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    write(root / "util.py", "X = 1\n")
    write(root / "broken.py", "import util\ndef f(:\n")
    write(root / "good.py", "import util\n")
    project = Project(str(root), ImportRoots((str(root),)))
    project.load_all(processes=1)
    assert [b.path for b in project.broken()] == [str(root / "broken.py")]
    # As before the fast reader: a file that never compiled has no edges.
    assert project.graph.dependencies_of(str(root / "broken.py")) == frozenset()
    assert project.graph.dependencies_of(str(root / "good.py")) == {str(root / "util.py")}


def test_a_change_is_published_before_its_imports_are_found_and_they_follow(
    tmp_path: Path,
) -> None:
    """apply(scan_later=True) gives what a save affects (its dependents) without reading its
    imports; scan_edits then finds them, unless the file was saved again meanwhile."""
    root = (tmp_path / "proj").resolve()
    write(root / "util.py", "X = 1\n")
    write(root / "other.py", "Y = 1\n")
    write(root / "app.py", "import util\n")
    project = Project(str(root), ImportRoots((str(root),)))
    project.load_all(processes=1)
    app, util, other = (str(root / name) for name in ("app.py", "util.py", "other.py"))

    write(root / "app.py", "import util\nimport other\n")
    update = project.apply([app], scan_later=True)
    assert update.changed == [app] and update.affected == [app]
    assert project.graph.dependencies_of(app) == {util}  # the edges of the version before
    project.scan_edits()
    assert project.graph.dependencies_of(app) == {util, other}

    # Saved again before its scan: left to the batch of that save, which reads it anew.
    write(root / "app.py", "import util\n")
    project.apply([app], scan_later=True)
    write(root / "app.py", "import other\n")
    project.scan_edits()
    assert project.graph.dependencies_of(app) == {util, other}
    update = project.apply([app])  # the next batch: scans left over go first, then this one
    assert project.graph.dependencies_of(app) == {other} and update.changed == [app]
