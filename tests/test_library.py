"""The library in one process: files and folders as modules, imports, and lazy deep reloads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from support import wait_for

import relmod
from relmod.client.session import default_client as _client
from relmod.machinery import registry as registry_module
from relmod.machinery.registry import DiskSources


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def logging_module(path: Path, name: str, body: str = "", log: Path | None = None) -> Path:
    """A module that appends its name to a log file each time it executes."""
    log = log or path.parent / "runs.log"
    return write(
        path,
        f"with open({str(log)!r}, 'a') as _f:\n    _f.write({name!r} + ' ')\n"
        + textwrap.dedent(body),
    )


# -- files and folders as modules --------------------------------------------------------


def test_file_module_behaves_like_a_module(tmp_path: Path) -> None:
    write(tmp_path / "myfunc.py", '"""Doc of myfunc."""\ndef add(x, y):\n    return x + y\n')
    os.chdir(tmp_path)
    myfunc = relmod.at("./myfunc.py")
    assert myfunc.add(3, 4) == 7
    assert myfunc.__file__ == str(tmp_path / "myfunc.py")
    # It runs as Python runs modules: in sys.modules under its __name__, which names its path
    # (so it can never shadow a top-level module of the same name).
    assert myfunc.__name__ == "relmod.files." + str(tmp_path / "myfunc")
    assert sys.modules[myfunc.__name__] is myfunc and "myfunc" not in sys.modules
    assert myfunc.__doc__ == "Doc of myfunc."
    assert "add" in myfunc.__dict__
    assert str(tmp_path / "myfunc.py") in repr(myfunc)
    assert relmod.at(str(tmp_path / "myfunc.py")) is myfunc
    assert type(myfunc) is type(os)  # a plain module object: the fastest attribute access
    (tmp_path / "myfunc.py").unlink()  # (the watcher marks it stale at once: its class changes)
    assert repr(myfunc).endswith(", missing)>")


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    with pytest.raises(relmod.ModuleNotFound, match="no such file or folder"):
        relmod.at("./nope.py")


def test_folder_namespace_and_odd_names(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "a.py", "X = 'a'\n")
    write(tmp_path / "lib" / "Documents and Settings" / "sub" / "folders.py", "Y = 'deep'\n")
    write(tmp_path / "other.py", "Z = 'up'\n")
    os.chdir(tmp_path / "lib")
    lib = relmod.at(".")
    assert lib.a.X == "a"
    assert lib["./Documents and Settings"].sub.folders.Y == "deep"
    assert lib["../"].other.Z == "up"
    assert {"a"} <= set(dir(lib))
    assert "Documents and Settings" not in dir(lib)
    assert repr(lib).startswith("<relmod folder")
    with pytest.raises(AttributeError, match="has no file nothing.py"):
        lib.nothing  # noqa: B018


def test_package_folder_runs_init_and_exposes_entries(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "NAME = 'pkg'\n")
    write(tmp_path / "pkg" / "mod.py", "V = 1\n")
    pkg = relmod.at(str(tmp_path / "pkg"))
    assert pkg.NAME == "pkg"
    assert pkg.mod.V == 1
    assert pkg.__file__ == str(tmp_path / "pkg" / "__init__.py")
    assert "<relmod package" in repr(pkg)


def test_pep562_getattr_and_dir_inside_modules(tmp_path: Path) -> None:
    write(
        tmp_path / "lazy.py",
        """
        def __getattr__(name):
            if name == 'magic':
                return 42
            raise AttributeError(name)
        def __dir__():
            return ['magic']
        """,
    )
    lazy = relmod.at(str(tmp_path / "lazy.py"))
    assert lazy.magic == 42
    assert dir(lazy) == ["magic"]
    with pytest.raises(AttributeError):
        lazy.other  # noqa: B018


def test_relative_imports_at_any_depth_record_edges(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "b.py", "B = 'b'\n__all__ = ['B']\n")
    write(tmp_path / "proj" / "pkg" / "c.py", "X = 'x'\n")
    write(
        tmp_path / "proj" / "sub" / "a.py",
        """
        from .. import b
        from ..pkg.c import X
        from ..b import *
        from . import sibling
        """,
    )
    write(tmp_path / "proj" / "sub" / "sibling.py", "S = 1\n")
    a = relmod.at(str(tmp_path / "proj" / "sub" / "a.py"))
    assert a.b.B == "b" and a.X == "x" and a.B == "b" and a.sibling.S == 1
    deps = {
        os.path.basename(m.__file__)
        for m in relmod.get_dependencies(a)
        if getattr(m, "__file__", None)
    }
    assert {"b.py", "c.py", "sibling.py"} <= deps
    assert "a.py" in repr(relmod.deps())


def test_at_and_up_use_the_cwd_and_expand_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "home" / "h.py", "H = 'home'\n")
    write(tmp_path / "dir" / "f.py", "F = 1\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.chdir(tmp_path / "dir")
    assert relmod.at("~/h.py").H == "home"
    assert relmod.at("f.py").F == 1
    assert relmod.up("./f.py").f.F == 1


def test_use_and_imp_resolve_against_the_callers_file(tmp_path: Path) -> None:
    write(
        tmp_path / "code" / "helper.py",
        "def add(x, y):\n    return x + y\ndef sub(x, y):\n    return x - y\n",
    )
    script = write(
        tmp_path / "code" / "main.py",
        """
        import relmod
        h = relmod.use('./helper.py')
        relmod.imp('./helper.py', 'add as add2')
        relmod.imp('./helper.py', 'add, sub')
        relmod.imp('./helper.py as mfunc')
        relmod.imp('. as lib')
        relmod.imp('./helper.py', '*')
        print(h.add(1, 2), add2(3, 4), sub(5, 1), mfunc.add(1, 1), lib.helper.sub(9, 4))
        """,
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "7", "4", "2", "5"]


def test_imp_injects_all_or_nothing(tmp_path: Path) -> None:
    write(tmp_path / "m.py", "a = 1\nb = 2\n")
    os.chdir(tmp_path)
    ns: dict[str, object] = {}
    relmod.imp("./m.py", "a, b as bb", globals=ns)
    assert ns == {"a": 1, "bb": 2}
    ns2: dict[str, object] = {}
    with pytest.raises(relmod.RelmodError, match="has no such name"):
        relmod.imp("./m.py", "a, missing", globals=ns2)
    assert ns2 == {}


def test_install_in_a_script_and_in_cell_mode(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "myfunc.py", "def add(x, y):\n    return x + y\n")
    script = write(
        tmp_path / "proj" / "run.py",
        """
        import relmod
        here = relmod.install(globals())
        from . import myfunc
        from .myfunc import add
        print(myfunc.add(3, 4), add(1, 1), here.myfunc is myfunc)
        """,
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["7", "2", "True"]

    os.chdir(tmp_path / "proj")
    cell_ns: dict[str, object] = {"__name__": "__main__"}
    exec(
        "import relmod\nhere = relmod.install(globals())\n"
        "from . import myfunc\nR = myfunc.add(2, 2)",
        cell_ns,
    )
    assert cell_ns["R"] == 4


def test_toplevel_serves_the_import_statement(tmp_path: Path) -> None:
    write(tmp_path / "myfunc.py", "def add(x, y):\n    return x + y\n")
    write(tmp_path / "pkg" / "sub.py", "V = 'sub'\n")
    os.chdir(tmp_path)
    relmod.toplevel("myfunc_tl", "./myfunc.py")
    relmod.toplevel("pkg_tl", "./pkg")
    import myfunc_tl  # type: ignore[import-not-found]
    import pkg_tl.sub  # type: ignore[import-not-found]

    assert myfunc_tl.add(3, 4) == 7
    assert pkg_tl.sub.V == "sub"
    write(tmp_path / "myfunc.py", "def add(x, y):\n    return x * y\n")
    relmod.sync()
    import myfunc_tl as again  # type: ignore[import-not-found]

    assert again is myfunc_tl and again.add(3, 4) == 12


# -- reloading -------------------------------------------------------------------------


def test_deep_reload_in_dependency_order_and_only_dependents(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    logging_module(tmp_path / "leaf.py", "leaf", "VALUE = 1\n")
    logging_module(tmp_path / "mid.py", "mid", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    logging_module(tmp_path / "top.py", "top", "from . import mid\nQUAD = mid.DOUBLE * 2\n")
    logging_module(tmp_path / "other.py", "other", "from . import leaf as _unused\n")
    logging_module(tmp_path / "bystander.py", "bystander", "B = 0\n")
    top = relmod.at(str(tmp_path / "top.py"))
    bystander = relmod.at(str(tmp_path / "bystander.py"))
    assert top.QUAD == 4 and bystander.B == 0
    log.write_text("")
    logging_module(tmp_path / "leaf.py", "leaf", "VALUE = 5\n")
    relmod.sync()
    assert top.QUAD == 20
    assert runs(log) == ["leaf", "mid", "top"]
    assert bystander.B == 0
    assert runs(log) == ["leaf", "mid", "top"]


def test_identical_save_and_touch_reexecute_nothing(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    path = logging_module(tmp_path / "m.py", "m", "X = 1\n")
    mod = relmod.at(str(path))
    assert mod.X == 1
    log.write_text("")
    path.write_bytes(path.read_bytes())
    os.utime(path, None)
    relmod.sync()
    assert mod.X == 1
    assert runs(log) == []


def test_same_size_same_mtime_edit_reloads(tmp_path: Path) -> None:
    path = write(tmp_path / "m.py", "X = 1\n")
    mod = relmod.at(str(path))
    assert mod.X == 1
    st = path.stat()
    path.write_text("X = 2\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    relmod.sync()
    assert mod.X == 2


class _CountingDisk(DiskSources):
    """The local disk, counting the reads of each file."""

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}

    def read(self, path: str) -> bytes:
        self.reads[path] = self.reads.get(path, 0) + 1
        return super().read(path)


def test_a_dependent_that_no_invalidation_named_is_not_read_again(tmp_path: Path) -> None:
    write(tmp_path / "leaf.py", "X = 1\n")
    top_path = write(tmp_path / "top.py", "from . import leaf\nY = leaf.X + 1\n")
    top = relmod.at(str(top_path))
    assert top.Y == 2
    registry = _client().registry
    disk = registry.sources = _CountingDisk()
    for value in (2, 3, 4):  # the files are seconds younger than the stat-trust limit
        write(tmp_path / "leaf.py", f"X = {value}\n")
        relmod.sync()
        assert value + 1 == top.Y
    # Never read again (the first import kept its signature, young as it was); the leaf, which
    # the feed named each time, was read each time (the watcher may report a write twice, once
    # while a reload runs: then it is read once more).
    assert str(top_path) not in disk.reads and disk.reads[str(tmp_path / "leaf.py")] >= 3


def test_a_broker_names_the_changed_files_apart_from_the_affected_ones(tmp_path: Path) -> None:
    leaf = write(tmp_path / "leaf.py", "X = 1\n")
    top_path = write(tmp_path / "top.py", "from . import leaf\nY = leaf.X + 1\n")
    top = relmod.at(str(top_path))
    client = _client()
    write(leaf, "X = 2\n")
    relmod.sync()
    assert top.Y == 3  # top's young signature is kept from here
    disk = client.registry.sources = _CountingDisk()
    write(leaf, "X = 3\n")
    # A broker's message, split in two parts: the changed file is marked whichever part names it.
    client.apply_invalidation([str(top_path)], changed=[str(leaf)])
    assert client.registry.is_stale(top) and top.Y == 4
    assert disk.reads.get(str(leaf)) and str(top_path) not in disk.reads
    client.apply_invalidation([str(leaf), str(top_path)])  # no word on what changed
    assert top.Y == 4
    assert disk.reads[str(top_path)] == 1


def test_a_named_dependent_is_read_again_when_its_signature_stayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two saves within one timestamp tick, of the same size, can leave the same signature."""
    write(tmp_path / "leaf.py", "X = 1\n")
    top_path = write(tmp_path / "top.py", "from . import leaf\nY = leaf.X + 1\n")
    top = relmod.at(str(top_path))
    write(tmp_path / "leaf.py", "X = 2\n")
    relmod.sync()
    assert top.Y == 3  # this reload kept top's signature, young as it is
    seen = os.stat(top_path)
    real_stat = registry_module._stat
    monkeypatch.setattr(  # top's file keeps the signature the kernel gave it before the edit
        registry_module, "_stat", lambda p: seen if p == str(top_path) else real_stat(p)
    )
    write(tmp_path / "leaf.py", "X = 3\n")
    write(top_path, "from . import leaf\nY = leaf.X + 5\n")  # the same size
    relmod.sync()
    assert top.Y == 8


def test_module_identity_survives_reloads(tmp_path: Path) -> None:
    path = write(tmp_path / "m.py", "X = 1\nREMOVED = True\n")
    mod = relmod.at(str(path))
    held = mod
    path.write_text("X = 2\n")
    relmod.sync()
    assert held.X == 2 and relmod.at(str(path)) is held
    assert not hasattr(held, "REMOVED")


def test_syntax_error_keeps_last_good_version_then_recovers(tmp_path: Path) -> None:
    path = write(tmp_path / "m.py", "X = 1\n")
    mod = relmod.at(str(path))
    assert mod.X == 1
    path.write_text("X = 2\ndef broken(:\n")
    relmod.sync()
    with pytest.raises(relmod.ReloadError) as info:
        mod.X  # noqa: B018
    assert info.value.path == str(path) and info.value.lineno == 2
    assert "SyntaxError at line 2" in str(info.value)
    assert "last good version stays in use" in str(info.value)
    assert mod.X == 1  # served from the last good version
    path.write_text("X = 3\n")
    relmod.sync()
    assert mod.X == 3


def test_runtime_error_never_leaves_a_half_executed_module(tmp_path: Path) -> None:
    path = write(tmp_path / "m.py", "A = 1\nB = 1\n")
    mod = relmod.at(str(path))
    path.write_text("A = 2\nraise RuntimeError('boom')\nB = 2\n")
    relmod.sync()
    with pytest.raises(relmod.ReloadError, match="RuntimeError at line 2: boom"):
        mod.A  # noqa: B018
    assert (mod.A, mod.B) == (1, 1)


def test_on_error_keep_logs_once_and_serves_old_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relmod.configure(on_error="keep")
    path = write(tmp_path / "m.py", "X = 1\n")
    mod = relmod.at(str(path))
    path.write_text("X = (\n")
    relmod.sync()
    assert mod.X == 1 and mod.X == 1
    errors = [r for r in caplog.records if "Cannot reload" in r.getMessage()]
    assert len(errors) == 1
    with pytest.raises(relmod.RelmodError, match="not a choice"):
        relmod.configure(on_error="ignore")


def test_reload_forces_a_deep_reload(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    logging_module(tmp_path / "leaf.py", "leaf", "")
    logging_module(tmp_path / "top.py", "top", "from . import leaf\n")
    top = relmod.at(str(tmp_path / "top.py"))
    assert top.leaf is relmod.at(str(tmp_path / "leaf.py"))
    log.write_text("")
    relmod.reload(str(tmp_path / "leaf.py"))
    assert runs(log) == ["leaf", "top"]


def test_two_threads_touching_a_stale_module_reload_it_once(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    path = logging_module(tmp_path / "slow.py", "slow", "import time\ntime.sleep(0.2)\nV = 1\n")
    mod = relmod.at(str(path))
    log.write_text("")
    logging_module(tmp_path / "slow.py", "slow", "import time\ntime.sleep(0.2)\nV = 2\n")
    relmod.sync()
    barrier = threading.Barrier(2)
    seen: list[int] = []

    def touch() -> None:
        barrier.wait()
        seen.append(mod.V)

    threads = [threading.Thread(target=touch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [2, 2]
    assert runs(log) == ["slow"]


def test_the_watcher_marks_stale_and_the_user_thread_reloads(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.py",
        "import threading\nV = 1\nTHREAD = threading.current_thread().name\n",
    )
    mod = relmod.at(str(path))
    feed = relmod.client.session.default_client().ensure_feed()
    assert feed.wait_ready(10)  # type: ignore[attr-defined]
    path.write_text("import threading\nV = 2\nTHREAD = threading.current_thread().name\n")
    wait_for(
        lambda: _client().registry.is_stale(mod), what="the embedded watcher to mark m.py stale"
    )
    assert mod.V == 2
    assert threading.current_thread().name == mod.THREAD


# -- ordinary modules ------------------------------------------------------------------


def test_enable_tracks_ordinary_imports_and_reloads_deeply(tmp_path: Path) -> None:
    write(tmp_path / "leaf_o.py", "X = 1\n")
    write(tmp_path / "mid_o.py", "from leaf_o import X\nY = X + 1\n")
    write(
        tmp_path / "stateful_o.py",
        """
        import leaf_o
        COUNTER = 0
        def __reload__(old_state):
            global COUNTER
            COUNTER = old_state['COUNTER'] + 1
        """,
    )
    sys.path.insert(0, str(tmp_path))
    relmod.enable(blacklist=["os"])
    import leaf_o  # type: ignore[import-not-found]
    import mid_o  # type: ignore[import-not-found]
    import stateful_o  # type: ignore[import-not-found]

    assert leaf_o in relmod.get_dependencies(mid_o)
    write(tmp_path / "leaf_o.py", "X = 10\n")
    relmod.reload(leaf_o)
    assert mid_o.Y == 11
    assert stateful_o.COUNTER == 1
    relmod.reload(leaf_o)
    assert stateful_o.COUNTER == 2
    relmod.disable()
    assert relmod.get_dependencies(mid_o) == []


def test_blacklisted_modules_stay_in_the_graph_but_never_reload(tmp_path: Path) -> None:
    write(tmp_path / "leaf_b.py", "X = 1\n")
    write(tmp_path / "frozen_b.py", "from leaf_b import X\n")
    sys.path.insert(0, str(tmp_path))
    relmod.enable(blacklist=["frozen_b"])
    import frozen_b  # type: ignore[import-not-found]
    import leaf_b  # type: ignore[import-not-found]

    assert leaf_b in relmod.get_dependencies(frozen_b)
    write(tmp_path / "leaf_b.py", "X = 2\n")
    relmod.reload(leaf_b)
    assert leaf_b.X == 2 and frozen_b.X == 1


def test_failed_ordinary_reload_keeps_the_old_module(tmp_path: Path) -> None:
    write(tmp_path / "bad_o.py", "X = 1\n")
    sys.path.insert(0, str(tmp_path))
    relmod.enable()
    import bad_o  # type: ignore[import-not-found]

    write(tmp_path / "bad_o.py", "X = 2\nraise ValueError('nope')\n")
    with pytest.raises(relmod.ReloadError, match="last good version stays in use"):
        relmod.reload(bad_o)
    assert bad_o.X == 1 and sys.modules["bad_o"] is bad_o


def test_stale_objects_lists_instances_of_replaced_classes(tmp_path: Path) -> None:
    path = write(tmp_path / "shapes.py", "class Point:\n    pass\nclass Keep:\n    pass\n")
    relmod.configure(patch=False)  # with patching on, these classes would be kept, not replaced
    shapes = relmod.at(str(path))
    old_point = shapes.Point()
    keep = shapes.Keep()
    assert relmod.stale_objects() == []
    path.write_text("class Point:\n    x = 1\nclass Keep:\n    pass\n")
    relmod.sync()
    new_point = shapes.Point()
    stale = relmod.stale_objects()
    assert any(o is old_point for o in stale)
    assert not any(o is new_point for o in stale)
    assert any(o is keep for o in stale)  # Keep was re-executed too: a new class object
    assert not isinstance(old_point, shapes.Point)
