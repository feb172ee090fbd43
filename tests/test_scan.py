"""relmod.scan: the static import scan, on real files in a temporary project."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from relmod.server.imports import statements_from_ast
from relmod.server.scan import iter_python_files, scan_imports


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty project folder, symlink-free (scan answers are symlink-free)."""
    folder = (tmp_path / "proj").resolve()
    folder.mkdir()
    return folder


def make(root: Path, *files: str) -> None:
    """Create files (empty) and folders (names ending in /) under root."""
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def scan(
    root: Path, file: str, source: str, *, roots: list[Path] | None = None, exact: bool = False
) -> set[str]:
    """Write ``source`` to ``file`` and scan it; the answer relative to root, with / separators.

    Unless ``exact`` (the whole-file ast parse alone), the fast reader's answer must equal the
    whole-file parse's on every source that parses.
    """
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.encode()
    path.write_bytes(data)
    search = [str(r) for r in (roots or [root])]
    found = scan_imports(str(path), data, roots=search, exact=exact)
    if not exact and statements_from_ast(data) is not None:
        assert found == scan_imports(str(path), data, roots=search, exact=True)
    return {Path(p).relative_to(root).as_posix() if Path(p) != root else "." for p in found}


# -- absolute imports -----------------------------------------------------------------------


def test_import_of_a_module_depends_on_its_parent_packages(root: Path) -> None:
    make(root, "a/__init__.py", "a/b/__init__.py", "a/b/c.py", "a/b/other.py")
    assert scan(root, "main.py", "import a.b.c\n") == {
        "a/__init__.py",
        "a/b/__init__.py",
        "a/b/c.py",
    }


def test_import_of_a_package_depends_on_its_init(root: Path) -> None:
    make(root, "a/__init__.py", "a/b/__init__.py", "a/b/c/__init__.py", "a/b/c/deep.py")
    assert scan(root, "main.py", "import a.b.c as abc\n") == {
        "a/__init__.py",
        "a/b/__init__.py",
        "a/b/c/__init__.py",
    }


def test_import_of_a_plain_module(root: Path) -> None:
    make(root, "util.py", "tools.py")
    assert scan(root, "main.py", "import util, tools as t\n") == {"util.py", "tools.py"}


def test_from_import_depends_on_the_module_and_submodules_only(root: Path) -> None:
    make(root, "a/__init__.py", "a/b/__init__.py", "a/b/c.py", "a/b/d/__init__.py", "a/b/e.py")
    # c and d are submodules; `name` is a plain name defined in a/b/__init__.py.
    assert scan(root, "main.py", "from a.b import c, d, name\n") == {
        "a/b/__init__.py",
        "a/b/c.py",
        "a/b/d/__init__.py",
    }


def test_from_import_of_names_from_a_module_file(root: Path) -> None:
    make(root, "pkg/__init__.py", "pkg/mod.py")
    assert scan(root, "main.py", "from pkg.mod import helper as h\n") == {"pkg/mod.py"}


def test_a_namespace_folder_is_the_folder_itself(root: Path) -> None:
    make(root, "ns/inner.py", "ns/sub/leaf.py")
    assert scan(root, "main.py", "import ns\n") == {"ns"}
    assert scan(root, "two.py", "import ns.sub\n") == {"ns/sub"}
    # A namespace parent runs no code, so only the module itself counts.
    assert scan(root, "three.py", "import ns.inner\n") == {"ns/inner.py"}
    assert scan(root, "four.py", "from ns import inner\n") == {"ns", "ns/inner.py"}


def test_stdlib_and_third_party_imports_are_no_dependency(root: Path) -> None:
    make(root, "local.py")
    source = (
        "import os, sys, json.decoder\n"
        "from collections import abc\n"
        "import numpy as np\n"
        "from __future__ import annotations\n"
        "import local\n"
    )
    assert scan(root, "main.py", source) == {"local.py"}


def test_a_project_folder_named_like_a_stdlib_package_does_not_shadow_it(root: Path) -> None:
    make(root, "email/notes.txt", "json.py")
    # A folder without __init__.py loses to the real package; a module file wins, as in Python.
    assert scan(root, "main.py", "import email\nfrom email import message\nimport json\n") == {
        "json.py"
    }


def test_an_unresolvable_name_in_a_local_package_is_ignored(root: Path) -> None:
    make(root, "pkg/__init__.py", "plain.py")
    assert scan(root, "main.py", "import pkg.missing\nimport plain.sub\n") == set()
    assert scan(root, "two.py", "from pkg.missing import x\n") == set()


def test_roots_are_searched_in_order(root: Path) -> None:
    first, second = root / "first", root / "second"
    make(root, "first/shared.py", "second/shared.py", "second/only.py")
    make(root, "first/split/", "second/split/__init__.py")
    found = scan(root, "main.py", "import shared, only, split\n", roots=[first, second])
    # A regular package on a later root beats a namespace folder on an earlier one.
    assert found == {"first/shared.py", "second/only.py", "second/split/__init__.py"}


# -- relative imports -----------------------------------------------------------------------


def test_from_dot_import_in_a_module(root: Path) -> None:
    make(root, "pkg/__init__.py", "pkg/x.py", "pkg/y/__init__.py")
    assert scan(root, "pkg/a.py", "from . import x, y, name\n") == {
        "pkg/__init__.py",  # `name` may come from the package itself
        "pkg/x.py",
        "pkg/y/__init__.py",
    }


def test_relative_imports_in_a_package_init(root: Path) -> None:
    make(root, "pkg/a.py", "pkg/b.py")
    # In __init__.py the folder is the package itself; the file never depends on itself.
    found = scan(root, "pkg/__init__.py", "from . import a\nfrom .b import thing\n")
    assert found == {"pkg/a.py", "pkg/b.py"}


def test_star_import_from_a_sibling(root: Path) -> None:
    make(root, "pkg/__init__.py", "pkg/b.py")
    assert scan(root, "pkg/a.py", "from .b import *\n") == {"pkg/b.py"}


def test_relative_import_two_levels_up(root: Path) -> None:
    make(root, "top/__init__.py", "top/sub/__init__.py", "top/pkg/__init__.py", "top/pkg/c.py")
    make(root, "top/pkg/c/X.py")  # a folder c next to c.py: c.py still wins, as in Python
    assert scan(root, "top/sub/m.py", "from ..pkg.c import X\nfrom .. import pkg\n") == {
        "top/pkg/c.py",
        "top/__init__.py",
        "top/pkg/__init__.py",
    }


def test_relative_import_of_a_submodule_package(root: Path) -> None:
    make(root, "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py")
    assert scan(root, "pkg/a.py", "from .sub import leaf\n") == {
        "pkg/sub/__init__.py",
        "pkg/sub/leaf.py",
    }


def test_from_dot_import_in_a_namespace_folder(root: Path) -> None:
    make(root, "ns/x.py")
    assert scan(root, "ns/a.py", "from . import x\n") == {"ns", "ns/x.py"}


def test_a_relative_import_of_something_missing_is_ignored(root: Path) -> None:
    make(root, "pkg/__init__.py")
    assert scan(root, "pkg/a.py", "from .gone import x\nfrom ...far import y\n") == set()


# -- relmod calls ---------------------------------------------------------------------------


def test_relmod_calls_with_literal_paths(root: Path) -> None:
    make(root, "app/f.py", "app/g.py", "lib/h.py", "app/sub/__init__.py", "app/ns/x.py")
    source = (
        "import relmod\n"
        "f = relmod.at('./f.py')\n"
        "g = relmod.use('g')\n"  # no suffix: the client tries g.py
        "relmod.imp('../lib/h.py as hh', 'name')\n"
        "relmod.imp(spec='./sub')\n"
        "ns = relmod.use(path='ns')\n"
        "relmod.imp('./gone.py')\n"
        "relmod.at(some_variable)\n"
        "relmod.imp.site('tools')\n"
    )
    assert scan(root, "app/main.py", source) == {
        "app/f.py",
        "app/g.py",
        "lib/h.py",
        "app/sub/__init__.py",
        "app/ns",
    }


def test_relmod_imp_of_the_own_folder(root: Path) -> None:
    make(root, "app/helper.py")
    assert scan(root, "app/main.py", "import relmod\nrelmod.imp('. as here')\n") == {"app"}


def test_relmod_under_other_names(root: Path) -> None:
    make(root, "a.py", "b.py", "c.py", "d.py")
    source = (
        "import relmod as rm\n"
        "from relmod import use, imp as grab\n"
        "from relmod.api import at\n"
        "rm.at('./a.py')\n"
        "use('./b.py')\n"
        "grab('./c.py as cc')\n"
        "at('./d.py')\n"
        "other.at('./a.py')\n"
    )
    assert scan(root, "main.py", source) == {"a.py", "b.py", "c.py", "d.py"}


def test_relmod_paths_expand_the_home_folder(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("USERPROFILE", str(root / "home"))
    make(root, "home/lib.py")
    assert scan(root, "app/main.py", "import relmod\nrelmod.at('~/lib.py')\n") == {"home/lib.py"}


# -- where imports hide -----------------------------------------------------------------------


def test_imports_inside_functions_try_blocks_and_classes(root: Path) -> None:
    make(root, "lazy.py", "fallback.py", "cls.py", "other.py")
    source = (
        "try:\n"
        "    import fast_missing\n"
        "except ImportError:\n"
        "    import fallback\n"
        "def f():\n"
        "    import lazy\n"
        "class C:\n"
        "    def m(self):\n"
        "        from cls import thing\n"
        "if x: import other\n"
    )
    assert scan(root, "main.py", source) == {"lazy.py", "fallback.py", "cls.py", "other.py"}


def test_type_checking_and_main_guards_are_no_dependencies(root: Path) -> None:
    make(root, "typed.py", "typed2.py", "script.py", "script2.py", "runtime.py", "nested.py")
    make(root, "either.py", "kept.py")
    source = (
        "import typing\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import typed\n"
        "    from typed2 import T  # a comment\n"
        "else:\n"
        "    import runtime\n"
        "if typing.TYPE_CHECKING:  # pragma: no cover\n"
        "    import typed2\n"
        "def f():\n"
        "    if TYPE_CHECKING:\n"
        "        import nested\n"
        "    import kept\n"
        "if TYPE_CHECKING or sys.flags.debug:\n"  # not a guard: it may run
        "    import either\n"
        "if __name__ == '__main__':\n"
        "    import script\n"
        "    from script2 import main\n"
        "    main()\n"
    )
    found = {"runtime.py", "kept.py", "either.py"}
    assert scan(root, "main.py", source) == found
    assert scan(root, "exact.py", source, exact=True) == found


def test_a_file_never_depends_on_itself(root: Path) -> None:
    make(root, "pkg/__init__.py")
    assert scan(root, "me.py", "import me\nimport relmod\nrelmod.at('./me.py')\n") == set()
    assert scan(root, "pkg/__init__.py", "from . import x\n") == set()


def test_a_file_that_does_not_parse_has_no_dependencies(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make(root, "util.py")
    with caplog.at_level(logging.DEBUG, logger="relmod.server.scan"):
        assert scan(root, "main.py", "import util\ndef broken(:\n", exact=True) == set()
    assert "does not parse" in caplog.text
    # The fast reader may read what it can; the broker compile-checks every file and gives a
    # broken one no edges (see test_server_scan.py).
    assert scan(root, "fast.py", "import util\ndef broken(:\n") <= {"util.py"}
    path = root / "nul.py"
    assert scan_imports(str(path), b"import util\x00\n", roots=[str(root)]) == set()


def test_encodings_are_honoured(root: Path) -> None:
    make(root, "util.py", "other.py")
    latin = b"# -*- coding: latin-1 -*-\nname = 'caf\xe9'\nimport util\n"
    bom = b"\xef\xbb\xbfimport other\n"
    assert scan_imports(str(root / "l.py"), latin, roots=[str(root)]) == {str(root / "util.py")}
    assert scan_imports(str(root / "b.py"), bom, roots=[str(root)]) == {str(root / "other.py")}


def test_a_source_that_warns_while_parsing_keeps_its_edges(root: Path) -> None:
    # pytest turns warnings into errors here, as `python -W error` would; the invalid escape
    # sequence warns at parse time, and must not cost the file its dependencies.
    make(root, "util.py")
    assert scan(root, "main.py", "import util\npattern = '\\d+'\n") == {"util.py"}


def test_answers_are_absolute_existing_symlink_free_paths(root: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "target.py").touch()
    (root / "linked.py").symlink_to(real / "target.py")
    make(root, "pkg/__init__.py", "pkg/x.py")
    found = scan_imports(
        str(root / "main.py"), b"import linked\nfrom pkg import x\n", roots=[str(root)]
    )
    assert found == {
        str((real / "target.py").resolve()),
        str(root / "pkg" / "__init__.py"),
        str(root / "pkg" / "x.py"),
    }
    assert all(os.path.isabs(p) and os.path.exists(p) for p in found)


# -- iter_python_files --------------------------------------------------------------------------


def names(root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in iter_python_files(str(root))]


def test_iter_python_files_walks_in_a_stable_order_and_skips_ignored_paths(root: Path) -> None:
    make(
        root,
        "b.py",
        "a.py",
        "README.md",
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/deeper/leaf.py",
        "zed/z.py",
        ".git/hooks/pre-commit.py",
        ".venv/lib/site.py",
        "pkg/__pycache__/mod.cpython-311.py",
        "node_modules/x/y.py",
        "build/lib/pkg/mod.py",
        "x.egg-info/setup.py",
        ".#a.py",
        "#b.py#",
        "a.py.swp",
    )
    assert names(root) == [
        "a.py",
        "b.py",
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/deeper/leaf.py",
        "zed/z.py",
    ]


def test_iter_python_files_judges_paths_below_the_root(tmp_path: Path) -> None:
    # A project that itself lives in a folder called build/ is still walked.
    root = (tmp_path / "build" / "proj").resolve()
    make(root, "a.py", "dist/skipped.py")
    assert names(root) == ["a.py"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_iter_python_files_survives_symlink_loops(root: Path) -> None:
    make(root, "pkg/mod.py", "pkg/sub/leaf.py")
    (root / "pkg" / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "pkg" / "again").symlink_to(root / "pkg", target_is_directory=True)
    (root / "alias.py").symlink_to(root / "pkg" / "mod.py")
    assert names(root) == ["pkg/mod.py", "pkg/sub/leaf.py"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_iter_python_files_follows_a_link_to_outside_once(root: Path, tmp_path: Path) -> None:
    shared = (tmp_path / "shared").resolve()
    make(shared, "common.py", "up/")
    (shared / "up" / "back").symlink_to(shared, target_is_directory=True)  # a loop outside
    make(root, "main.py")
    (root / "vendored").symlink_to(shared, target_is_directory=True)
    (root / "twice").symlink_to(shared, target_is_directory=True)
    found = list(iter_python_files(str(root)))
    assert found == [str(root / "main.py"), str(shared / "common.py")]


def test_iter_python_files_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert list(iter_python_files(str(tmp_path / "nowhere"))) == []
