"""relmod.auto: attribute access imports top-level modules."""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import pytest

from relmod.autoimport import AutoImport, auto


def test_attribute_access_imports_the_module() -> None:
    assert auto.json is json
    assert auto.json.dumps([1, 2]) == "[1, 2]"


def test_a_module_not_yet_imported_is_imported_on_first_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fresh_auto_mod.py").write_text("VALUE = 42\nimport_count = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "fresh_auto_mod" not in sys.modules
    importer = AutoImport()
    assert importer.fresh_auto_mod.VALUE == 42
    assert sys.modules["fresh_auto_mod"] is importer.fresh_auto_mod


def test_the_module_is_cached_on_the_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    importer = AutoImport()
    first = importer.json
    # Even if the module leaves sys.modules, the instance keeps handing out the one it imported.
    monkeypatch.delitem(sys.modules, "json")
    assert importer.json is first
    assert vars(importer)["json"] is first


def test_dir_lists_top_level_modules_already_imported() -> None:
    names = dir(AutoImport())
    assert "json" in names
    assert "sys" in names
    assert "os.path" not in names
    assert not [name for name in names if "." in name or name.startswith("_")]
    assert names == sorted(names)


def test_an_unknown_name_raises_attribute_error_saying_why() -> None:
    with pytest.raises(AttributeError) as info:
        AutoImport().no_such_module_xyz  # noqa: B018
    message = str(info.value)
    assert "could not import a module named 'no_such_module_xyz'" in message
    assert "No module named 'no_such_module_xyz'" in message
    assert isinstance(info.value.__cause__, ImportError)
    assert not hasattr(AutoImport(), "no_such_module_xyz")


def test_a_module_whose_own_import_fails_names_the_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import missing_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AttributeError, match="No module named 'missing_dep_xyz'"):
        AutoImport().needs_missing_dep  # noqa: B018


def test_underscore_names_are_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    importer = AutoImport()
    with pytest.raises(AttributeError):
        importer._thread  # noqa: B018
    with pytest.raises(AttributeError):
        importer.__deepcopy__  # noqa: B018
    assert not hasattr(importer, "__getstate_xyz__")


def test_copy_and_pickle_make_a_working_instance() -> None:
    importer = AutoImport()
    assert importer.json is json  # a module in the cache must not break pickling
    for clone in (
        copy.copy(importer),
        copy.deepcopy(importer),
        pickle.loads(pickle.dumps(importer)),
    ):
        assert isinstance(clone, AutoImport)
        assert clone.json is json


def test_dotted_names_are_refused() -> None:
    with pytest.raises(AttributeError, match="only top-level modules"):
        getattr(AutoImport(), "os.path")


def test_repr_says_what_it_is() -> None:
    assert "relmod.auto" in repr(auto)
