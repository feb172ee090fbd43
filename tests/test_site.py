"""relmod.site: named paths from JSON site files, the environment and run-time entries."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from relmod.errors import ModuleNotFound
from relmod.sites import Site, site_import


class Loaded:
    """What the test loader returns: the path it was given."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.greeting = "hello"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and cwd, and no RELMOD_SITE, so only the files a test writes are read."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RELMOD_SITE", raising=False)
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def site(home: Path) -> Site[Loaded]:
    return Site(Loaded)


def write_site(path: Path, pairs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pairs))
    return path


def test_entries_set_at_run_time(site: Site[Loaded], tmp_path: Path) -> None:
    site["lib"] = str(tmp_path / "lib.py")
    assert site["lib"] == str(tmp_path / "lib.py")
    assert site.lib.path == str(tmp_path / "lib.py")
    assert "lib" in site
    del site["lib"]
    assert "lib" not in site
    with pytest.raises(KeyError):
        site["lib"]


def test_a_relative_run_time_path_is_made_absolute(site: Site[Loaded], tmp_path: Path) -> None:
    site["lib"] = "lib.py"
    assert site["lib"] == str(tmp_path / "work" / "lib.py")


def test_a_file_named_by_the_environment_is_read(
    site: Site[Loaded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_file = write_site(tmp_path / "conf" / "my.site", [["tools", "../code/tools.py"]])
    monkeypatch.setenv("RELMOD_SITE", str(site_file))
    # A relative path is taken from the folder of the site file.
    assert site["tools"] == str(tmp_path / "code" / "tools.py")
    assert site.tools.path == str(tmp_path / "code" / "tools.py")
    assert site.tools.greeting == "hello"


def test_home_is_expanded_in_site_file_paths(
    site: Site[Loaded], home: Path, tmp_path: Path
) -> None:
    write_site(tmp_path / "work" / "relmod.site", [["lib", "~/code/lib"]])
    assert site["lib"] == str(home / "code" / "lib")


def test_lookup_order_first_match_wins(
    site: Site[Loaded], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_a = write_site(tmp_path / "a.site", [["a", "/from/env_a"]])
    env_b = write_site(tmp_path / "b.site", [["a", "/from/env_b"], ["b", "/from/env_b"]])
    write_site(
        tmp_path / "work" / "relmod.site",
        [["a", "/from/cwd"], ["b", "/from/cwd"], ["c", "/from/cwd"]],
    )
    write_site(
        home / ".relmod.site",
        [["a", "/from/home"], ["c", "/from/home"], ["d", "/from/home"]],
    )
    write_site(
        home / ".config" / "relmod.site",
        [["d", "/from/config"], ["e", "/from/config"]],
    )
    monkeypatch.setenv("RELMOD_SITE", f"{env_a};{env_b}")
    site["a"] = "/from/runtime"
    assert site.paths() == {
        "a": "/from/runtime",
        "b": "/from/env_b",
        "c": "/from/cwd",
        "d": "/from/home",
        "e": "/from/config",
    }
    del site["a"]
    assert site["a"] == "/from/env_a"


def test_break_in_the_environment_skips_the_default_files(
    site: Site[Loaded], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_site(tmp_path / "only.site", [["mine", "/from/env"]])
    after = write_site(tmp_path / "after.site", [["after", "/from/after"]])
    write_site(home / ".relmod.site", [["default", "/from/home"]])
    monkeypatch.setenv("RELMOD_SITE", f"{env_file};break;{after}")
    assert site.paths() == {"mine": "/from/env"}
    with pytest.raises(KeyError, match="contains the word break"):
        site["default"]


def test_an_edited_file_is_read_again(
    site: Site[Loaded], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site_file = write_site(tmp_path / "work" / "relmod.site", [["lib", "/v1"]])
    assert site["lib"] == "/v1"
    write_site(site_file, [["lib", "/v2"], ["extra", "/extra"]])
    assert site["lib"] == "/v2"
    assert site["extra"] == "/extra"
    site_file.unlink()
    assert "lib" not in site


def test_a_malformed_file_is_skipped_with_one_warning(
    site: Site[Loaded], home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "work" / "relmod.site"
    bad.write_text('[["lib", "/from/cwd"],')
    write_site(home / ".relmod.site", [["lib", "/from/home"]])
    with caplog.at_level(logging.WARNING, logger="relmod.sites"):
        assert site["lib"] == "/from/home"
        assert site["lib"] == "/from/home"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(bad) in warnings[0]
    assert "not valid JSON" in warnings[0]
    assert "line 1" in warnings[0]
    assert warnings[0].endswith(".")

    # Fixing the file makes it count again.
    write_site(bad, [["lib", "/from/cwd"]])
    assert site["lib"] == "/from/cwd"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"lib": "/x"}', "holds a JSON dict where a list of [name, path] pairs is expected"),
        ('[["lib", "/x", "extra"]]', 'entry 0 (["lib", "/x", "extra"]) is not a [name, path]'),
        ('[["ok", "/x"], ["lib", 3]]', 'entry 1 (["lib", 3]) is not a [name, path]'),
        ('[["", "/x"]]', "is not a [name, path] pair of two non-empty strings"),
        (b"\xff\xfe[]", "is not UTF-8 text"),
    ],
)
def test_what_is_wrong_in_a_malformed_file_is_said(
    site: Site[Loaded],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: str | bytes,
    problem: str,
) -> None:
    bad = tmp_path / "work" / "relmod.site"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    with caplog.at_level(logging.WARNING, logger="relmod.sites"):
        assert site.paths() == {}
    assert f"Skipping site file {bad}:" in caplog.text
    assert problem in caplog.text
    with pytest.raises(KeyError, match="skipped because it is malformed"):
        site["ok"]


def test_a_star_entry_makes_every_entry_of_the_folder_a_name(
    site: Site[Loaded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "scratch"
    (folder / "pkg").mkdir(parents=True)
    (folder / "__pycache__").mkdir()
    (folder / "alpha.py").write_text("")
    (folder / ".hidden.py").write_text("")
    (folder / "__init__.py").write_text("")
    (folder / "notes.txt").write_text("")
    (folder / "alpha.py.swp").write_text("")
    site_file = write_site(tmp_path / "my.site", [["*", str(folder)], ["alpha", "/explicit"]])
    monkeypatch.setenv("RELMOD_SITE", str(site_file))
    assert site.paths() == {"alpha": str(folder / "alpha.py"), "pkg": str(folder / "pkg")}
    assert site.pkg.path == str(folder / "pkg")

    # The folder is listed at each lookup: a new file is a name at once.
    (folder / "beta.py").write_text("")
    assert site["beta"] == str(folder / "beta.py")


def test_a_star_entry_for_a_missing_folder_warns(
    site: Site[Loaded], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_site(tmp_path / "work" / "relmod.site", [["*", "gone"], ["lib", "/lib"]])
    with caplog.at_level(logging.WARNING, logger="relmod.sites"):
        assert site.paths() == {"lib": "/lib"}
    assert "cannot be listed" in caplog.text
    assert str(tmp_path / "work" / "gone") in caplog.text


def test_an_unknown_name_says_where_it_looked(
    site: Site[Loaded], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_site(tmp_path / "env.site", [["other", "/x"]])
    monkeypatch.setenv("RELMOD_SITE", f"{env_file};{tmp_path / 'missing.site'}")
    with pytest.raises(AttributeError) as attr_info:
        site.nothing_here  # noqa: B018
    with pytest.raises(KeyError) as key_info:
        site["nothing_here"]
    for message in (str(attr_info.value), key_info.value.args[0]):
        assert 'There is no site entry named "nothing_here"' in message
        assert "the entries set at run time" in message
        assert f"{env_file} named by RELMOD_SITE (read)" in message
        assert f"{tmp_path / 'missing.site'} named by RELMOD_SITE (not found)" in message
        assert f"{tmp_path / 'work' / 'relmod.site'} (not found)" in message
        assert str(home / ".relmod.site") in message
        assert str(home / ".config" / "relmod.site") in message
        assert '["nothing_here", "/path/to/nothing_here"]' in message
    assert "\\" not in str(key_info.value)  # the KeyError's repr needs no escaped quotes


def test_a_missing_file_named_by_the_environment_is_warned_about_once(
    site: Site[Loaded],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("RELMOD_SITE", str(tmp_path / "typo.site"))
    with caplog.at_level(logging.WARNING, logger="relmod.sites"):
        for _ in range(2):
            with pytest.raises(KeyError):
                site["lib"]
    assert caplog.text.count(f"The site file {tmp_path / 'typo.site'} named by RELMOD_SITE") == 1


def test_dir_and_paths_list_the_names(
    site: Site[Loaded], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_site(home / ".relmod.site", [["zeta", "/z"], ["alpha", "/a"]])
    site["mid"] = "/m"
    assert site.paths() == {"mid": "/m", "zeta": "/z", "alpha": "/a"}
    assert list(site) == ["mid", "zeta", "alpha"]
    assert {"alpha", "mid", "zeta"} <= set(dir(site))
    assert "paths" in dir(site)


def test_a_name_from_a_file_cannot_be_deleted_at_run_time(site: Site[Loaded], home: Path) -> None:
    write_site(home / ".relmod.site", [["lib", "/lib"]])
    with pytest.raises(KeyError, match="Remove it from that file instead"):
        del site["lib"]
    assert site["lib"] == "/lib"
    with pytest.raises(KeyError, match='There is no site entry named "ghost"'):
        del site["ghost"]


def test_a_bad_run_time_name_is_refused(site: Site[Loaded]) -> None:
    with pytest.raises(ValueError, match="non-empty string other than"):
        site["*"] = "/x"
    with pytest.raises(ValueError, match="non-empty string other than"):
        site[""] = "/x"


def test_underscore_attributes_never_look_at_site_files(site: Site[Loaded], home: Path) -> None:
    write_site(home / ".relmod.site", [["_private", "/p"]])
    assert site["_private"] == "/p"
    with pytest.raises(AttributeError):
        site._private  # noqa: B018


def test_site_import_returns_the_loaded_module_and_binds_names(
    site: Site[Loaded], home: Path
) -> None:
    write_site(home / ".relmod.site", [["lib", "/code/lib.py"]])
    module = site_import(site, "lib")
    assert isinstance(module, Loaded)
    assert module.path == "/code/lib.py"

    namespace: dict[str, object] = {}
    assert site_import(site, "lib", globals=namespace).path == "/code/lib.py"
    assert isinstance(namespace["lib"], Loaded)

    namespace = {}
    site_import(site, "lib", ["greeting", "path"], namespace)
    assert namespace == {"greeting": "hello", "path": "/code/lib.py"}


def test_site_import_errors(site: Site[Loaded], home: Path) -> None:
    write_site(home / ".relmod.site", [["lib", "/code/lib.py"]])
    with pytest.raises(ModuleNotFound, match='There is no site entry named "nope"'):
        site_import(site, "nope")
    namespace: dict[str, object] = {}
    with pytest.raises(ImportError, match="Cannot import 'missing' from the site module 'lib'"):
        site_import(site, "lib", ["greeting", "missing"], namespace)
    assert namespace == {}  # nothing is bound when one name is missing


def test_the_loader_is_called_with_the_path_on_each_access(home: Path) -> None:
    calls: list[str] = []

    def loader(path: str) -> int:
        calls.append(path)
        return len(calls)

    counting = Site(loader)
    counting["lib"] = "/lib"
    assert (counting.lib, counting.lib) == (1, 2)
    assert calls == ["/lib", "/lib"]
