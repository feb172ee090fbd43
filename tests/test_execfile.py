"""relmod.execfile: run a file in a namespace and get the namespace back."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

from relmod.errors import ModuleNotFound, RelmodError
from relmod.execution import execfile


def test_runs_the_file_in_a_fresh_namespace_with_documented_defaults(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("answer = 6 * 7\nname_seen = __name__\nfile_seen = __file__\n")
    namespace = execfile(str(script))
    assert namespace["answer"] == 42
    assert namespace["__name__"] == "__execfile__"
    assert namespace["name_seen"] == "__execfile__"
    assert namespace["file_seen"] == str(script)
    assert namespace["__doc__"] is None
    assert "__builtins__" in namespace


def test_a_main_block_does_not_run_unless_asked(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("ran = False\nif __name__ == '__main__':\n    ran = True\n")
    assert execfile(script)["ran"] is False
    assert execfile(script, {"__name__": "__main__"})["ran"] is True


def test_a_relative_path_becomes_absolute_in_file_and_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "boom.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError) as info:
        execfile("boom.py")
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].filename == str(tmp_path / "boom.py")
    assert frames[-1].lineno == 2
    assert frames[-1].line == "raise RuntimeError('boom')"


def test_given_globals_are_used_as_is_and_file_is_only_added_when_missing(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.py"
    script.write_text("total = base + 1\n")
    given = {"base": 1, "__name__": "mine"}
    returned = execfile(str(script), given)
    assert returned is given
    assert given["total"] == 2
    assert given["__name__"] == "mine"
    assert given["__file__"] == str(script)

    kept = {"base": 0, "__file__": "/somewhere/else.py"}
    execfile(str(script), kept)
    assert kept["__file__"] == "/somewhere/else.py"


def test_with_locals_the_names_land_in_locals(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("y = x * 2\n")
    g: dict[str, object] = {"x": 5}
    loc: dict[str, object] = {}
    assert execfile(str(script), g, loc) is loc
    assert loc == {"y": 10}
    assert "y" not in g


def test_a_pep263_coding_cookie_is_honoured(tmp_path: Path) -> None:
    script = tmp_path / "latin.py"
    script.write_bytes("# -*- coding: latin-1 -*-\ntext = 'caf\u00e9'\n".encode("latin-1"))
    assert execfile(str(script))["text"] == "caf\u00e9"


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("ok = 1\ndef broken(:\n")
    with pytest.raises(SyntaxError) as info:
        execfile(str(script))
    assert info.value.filename == str(script)
    assert info.value.lineno == 2


def test_a_missing_file_raises_module_not_found_with_a_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(ModuleNotFound) as info:
        execfile(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "there is no such file" in message
    assert message.endswith(".")
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, RelmodError)


def test_a_folder_raises_module_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFound, match="it is a folder"):
        execfile(str(tmp_path))


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "homescript.py").write_text("here = True\n")
    namespace = execfile(os.path.join("~", "homescript.py"))
    assert namespace["here"] is True
    assert namespace["__file__"] == str(tmp_path / "homescript.py")
