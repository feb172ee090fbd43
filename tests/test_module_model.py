"""One module model: ordinary imports reload as Python would import them, in one process.

The shapes real packages have: import cycles through ``__init__`` with re-exports, dataclasses with
string annotations, pickling by reference, same-second same-size edits with bytecode caches, names
deleted from a module, threads calling in while a reload runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
import textwrap
import threading
import time
import typing
from pathlib import Path

import pytest
from support import wait_child

import relmod
from relmod.client.session import default_client


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    sys.path.insert(0, str(root))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # bytecode caches on, as usual
    return root


# A package shaped like click or requests: __init__ re-exports from submodules that import each
# other and the package itself.
CYCLE = {
    "__init__.py": """
        from .core import A, make
        from .deco import d
        from . import types
        V = {v}
    """,
    "core.py": """
        from . import types
        class A:
            kind = types.KIND
        def make():
            return A()
        V = {v}
    """,
    "types.py": """
        KIND = 'kind{v}'
    """,
    "deco.py": """
        from .core import A
        import cyc
        def d():
            return A
        def package_version():
            return cyc.V
        V = {v}
    """,
}


def write_cycle(root: Path, versions: dict[str, int]) -> None:
    for name, text in CYCLE.items():
        write(root / "cyc" / name, text.format(v=versions.get(name, 1)))


def test_a_package_with_a_cycle_through_init_reloads_each_edit_with_its_re_exports(
    project: Path,
) -> None:
    versions = dict.fromkeys(CYCLE, 1)
    write_cycle(project, versions)
    relmod.enable()
    import cyc
    import cyc.deco

    for round_ in range(2, 8):
        edited = list(CYCLE)[round_ % len(CYCLE)]
        versions[edited] = round_
        write_cycle(project, versions)
        relmod.sync()
        assert versions["deco.py"] == cyc.deco.V
        assert versions["__init__.py"] == cyc.V
        assert versions["core.py"] == cyc.core.V
        assert f"kind{versions['types.py']}" == cyc.types.KIND
        # Every re-exported name is its source module's, and new.
        assert cyc.A is cyc.core.A is cyc.deco.A
        assert cyc.make is cyc.core.make and cyc.d is cyc.deco.d
        assert cyc.A.kind == cyc.types.KIND
        assert cyc.deco.package_version() == versions["__init__.py"]
        assert isinstance(cyc.make(), cyc.A)
        assert sys.modules["cyc.core"] is cyc.core  # identity kept


def test_a_failed_reload_in_a_cycle_rolls_the_whole_unit_back_and_a_fix_reloads(
    project: Path,
) -> None:
    write_cycle(project, {})
    relmod.enable()
    import cyc

    # cyc/__init__.py and cyc/deco.py import each other: one unit. deco fails after __init__
    # started re-running with its new V.
    deco = (project / "cyc" / "deco.py").read_text()
    write(project / "cyc" / "deco.py", deco.replace("V = 1", "V = 2\nboom()"))
    init = (project / "cyc" / "__init__.py").read_text()
    (project / "cyc" / "__init__.py").write_text(init.replace("V = 1", "V = 2"))
    relmod.sync()
    with pytest.raises(relmod.ReloadError, match=r"deco\.py: NameError at line \d+: name 'boom'"):
        cyc.V  # noqa: B018
    assert cyc.V == 1 and cyc.deco.V == 1  # the whole unit is back to its last good state
    assert cyc.d is cyc.deco.d and cyc.A is cyc.core.A
    write(project / "cyc" / "deco.py", deco.replace("V = 1", "V = 3"))
    relmod.sync()
    assert cyc.deco.V == 3 and cyc.V == 2 and cyc.d is cyc.deco.d


def test_modules_run_under_their_dotted_name_in_sys_modules(project: Path) -> None:
    write(project / "shapes" / "__init__.py", "")
    write(
        project / "shapes" / "point.py",
        """
        from __future__ import annotations
        import dataclasses, sys, typing
        RAN_AS = __name__
        VISIBLE = sys.modules[__name__].__dict__ is globals()
        @dataclasses.dataclass
        class Point:
            x: "int" = 1
            y: typing.ClassVar["int"] = 2
            z: int = 3
        def area(p: Point) -> int:
            return p.x * p.z
        """,
    )
    relmod.enable()
    import shapes.point as point
    from shapes.point import Point, area

    assert point.RAN_AS == "shapes.point" and point.VISIBLE
    assert typing.get_type_hints(point.Point)["x"] is int
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "z"]
    assert pickle.loads(pickle.dumps(area)) is area
    assert pickle.loads(pickle.dumps(Point(5))) == Point(5)
    write(
        project / "shapes" / "point.py",
        (project / "shapes" / "point.py").read_text().replace("z: int = 3", "z: int = 4"),
    )
    relmod.sync()
    assert point.Point(2).z == 4 and typing.get_type_hints(point.Point)["x"] is int
    assert pickle.loads(pickle.dumps(point.area)) is point.area
    assert point.area.__module__ == "shapes.point"


def test_a_file_loaded_by_path_can_hold_dataclasses_and_pickle(tmp_path: Path) -> None:
    path = write(
        tmp_path / "records.py",
        """
        import dataclasses
        @dataclasses.dataclass
        class A:
            x: "int" = 1
        def double(v):
            return 2 * v
        """,
    )
    records = relmod.at(str(path))
    assert records.A().x == 1
    assert pickle.loads(pickle.dumps(records.double)) is records.double
    assert pickle.loads(pickle.dumps(records.A(3))) == records.A(3)


def test_same_second_same_size_edits_with_bytecode_caches_are_never_stale(project: Path) -> None:
    write(project / "leafy.py", "X = 10\n")
    write(project / "user_of_leafy.py", "from leafy import X\nY = X\n")
    relmod.enable()
    import user_of_leafy

    for value in range(11, 31):  # 20 edits, each the same size, most within one second
        (project / "leafy.py").write_text(f"X = {value}\n")
        relmod.sync()
        assert value == user_of_leafy.Y


def test_the_namespace_is_replaced_names_deleted_go_submodules_stay(project: Path) -> None:
    write(project / "pk" / "__init__.py", "A = 1\nB = 2\n")
    write(project / "pk" / "sub.py", "S = 1\n")
    relmod.enable()
    import pk
    import pk.sub

    write(project / "pk" / "__init__.py", '"""Now documented."""\nA = 3\n')
    relmod.sync()
    assert pk.A == 3 and not hasattr(pk, "B")
    assert pk.sub.S == 1 and pk.__doc__ == "Now documented."
    assert pk.__name__ == "pk" and pk.__path__ == [str(project / "pk")]


def test_state_carried_by_reload_hook_and_reload_of_an_ordinary_module(project: Path) -> None:
    write(
        project / "counter.py",
        """
        COUNT = 0
        def __reload__(old):
            global COUNT
            COUNT = old['COUNT'] + 1
        """,
    )
    relmod.enable()
    import counter

    relmod.reload(counter)
    relmod.reload(counter)
    assert counter.COUNT == 2


def test_modules_imported_before_enable_are_adopted_by_reload(project: Path) -> None:
    write(project / "early.py", "X = 1\n")
    import early  # type: ignore[import-not-found]

    write(project / "early.py", "X = 22\n")
    relmod.reload(early)
    assert early.X == 22


def test_threads_calling_in_while_reloads_run_never_see_a_half_run_module(project: Path) -> None:
    """A call that starts after the invalidation waits for the whole new version.

    Callers that go through the module (``pair.get()``) and callers holding the function
    (``from pair import get``) alike. A frame already running when the reload starts keeps
    running, as with any reload; it finds every global old or new, never missing.
    """
    source = "import time\nA = {v}\ntime.sleep(0.003)\nB = {v}\ndef get():\n    return (A, B)\n"
    write(project / "pair.py", source.format(v=0))
    marked = threading.Event()
    relmod.add_listener(lambda e: marked.set() if e.kind == "stale" and e.name == "pair" else None)
    relmod.enable()
    import pair  # type: ignore[import-not-found]
    from pair import get  # type: ignore[import-not-found]

    errors: list[BaseException] = []
    stop = threading.Event()

    def busy_caller() -> None:
        while not stop.is_set():
            try:
                pair.get()
                get()
            except BaseException as err:  # a missing name, anything at all, is a failure
                errors.append(err)
                return

    busy = [threading.Thread(target=busy_caller) for _ in range(2)]
    for t in busy:
        t.start()
    try:
        for v in range(1, 12):
            marked.clear()
            tmp = project / "pair.py.tmp"  # saved atomically, as editors do
            tmp.write_text(source.format(v=v))
            os.replace(tmp, project / "pair.py")
            assert marked.wait(10), "the watcher did not mark pair.py stale"
            results: list[tuple[int, int]] = []
            late = [
                threading.Thread(target=lambda out=results: out.append(get())),
                threading.Thread(target=lambda out=results: out.append(pair.get())),
            ]
            for t in late:
                t.start()
            for t in late:
                t.join()
            assert results == [(v, v), (v, v)]
    finally:
        stop.set()
        for t in busy:
            t.join()
    assert not errors


def test_exclude_keeps_a_module_on_its_first_version(project: Path) -> None:
    write(project / "models.py", "X = 1\n")
    relmod.configure(exclude=["models"])
    relmod.enable()
    import models  # type: ignore[import-not-found]

    write(project / "models.py", "X = 2\n")
    relmod.sync()
    assert models.X == 1
    assert relmod.get_dependencies(models) == []


def test_a_compile_error_of_any_kind_is_a_broken_save(project: Path) -> None:
    write(project / "deep.py", "X = 1\n")
    relmod.configure(on_error="keep")
    relmod.enable()
    import deep  # type: ignore[import-not-found]

    (project / "deep.py").write_text("X = " + "+".join(["1"] * 200_000) + "\n")
    relmod.sync()
    assert deep.X == 1  # RecursionError or MemoryError in compile(): kept, not raised
    (project / "deep.py").write_text("X = 3\n")
    relmod.sync()
    assert deep.X == 3


def test_importlib_import_module_with_a_computed_name_is_tracked(project: Path) -> None:
    import importlib

    write(project / "plugins" / "__init__.py", "")
    write(project / "plugins" / "alpha.py", "NAME = 'alpha'\n")
    relmod.enable()
    alpha = importlib.import_module("plugins." + "alpha")
    write(project / "plugins" / "alpha.py", "NAME = 'beta'\n")
    relmod.sync()
    assert alpha.NAME == "beta"


def test_dependencies_come_from_the_code_and_python_keeps_its_own_import(project: Path) -> None:
    import builtins

    python_import = builtins.__import__
    write(project / "deps" / "__init__.py", "from .base import VALUE\n")
    write(project / "deps" / "base.py", "VALUE = 1\n")
    write(project / "deps" / "helpers.py", "H = 1\n")
    write(project / "deps" / "klass.py", "Y = 1\n")
    write(project / "deps" / "inner.py", "Z = 1\n")
    write(project / "deps" / "lazy.py", "X = 1\n")
    write(
        project / "deps" / "user.py",
        """
        from . import base
        from .base import VALUE as V
        import deps.helpers
        from deps import helpers as h2
        class K:
            from .klass import Y
        def setup():
            from .inner import Z
            return Z
        SETUP = setup()
        def late():
            from .lazy import X
            return X
        TOTAL = V + K.Y + SETUP
        """,
    )
    relmod.enable()
    import deps.user

    assert builtins.__import__ is python_import, "an ordinary import needs no __import__ hook"
    names = {m.__name__ for m in relmod.get_dependencies(deps.user)}
    assert names == {"deps.base", "deps.helpers", "deps.klass", "deps.inner"}
    assert {m.__name__ for m in relmod.get_dependencies("deps")} == {"deps.base"}

    write(project / "deps" / "base.py", "VALUE = 10\n")
    write(project / "deps" / "klass.py", "Y = 100\n")
    relmod.sync()
    assert deps.user.TOTAL == 111
    assert deps.VALUE == 10
    assert deps.user.late() == 1  # run now: its import needed no hook either


def test_a_project_module_named_like_the_standard_library_is_a_dependency(project: Path) -> None:
    assert "colorsys" not in sys.modules
    write(project / "colorsys.py", "X = 1\n")  # shadows the standard library's colorsys
    write(project / "shade.py", "import colorsys\nV = colorsys.X\n")
    relmod.enable()
    import shade

    assert [m.__name__ for m in relmod.get_dependencies(shade)] == ["colorsys"]
    write(project / "colorsys.py", "X = 2\n")
    relmod.sync()
    assert shade.V == 2


def test_add_listener_sees_stale_reloaded_and_failed_in_order(project: Path) -> None:
    write(project / "heard.py", "X = 1\n")
    events: list[relmod.Event] = []
    relmod.add_listener(events.append)
    relmod.configure(on_error="keep")
    relmod.enable()
    import heard  # type: ignore[import-not-found]

    write(project / "heard.py", "X = 2\n")
    relmod.sync()
    assert heard.X == 2
    write(project / "heard.py", "X = (\n")
    relmod.sync()
    assert heard.X == 2
    kinds: list[tuple[str, str]] = []
    for e in events:  # a save can reach the watcher as two writes: two 'stale' marks in a row
        if not kinds or kinds[-1] != (e.kind, os.path.basename(e.path)):
            kinds.append((e.kind, os.path.basename(e.path)))
    assert kinds == [
        ("stale", "heard.py"),
        ("reloaded", "heard.py"),
        ("stale", "heard.py"),
        ("failed", "heard.py"),
    ]
    assert "line 1" in (events[-1].error or "") and events[0].name == "heard"
    assert all(isinstance(e.time, float) and e.time <= time.time() for e in events)


def test_a_raising_listener_is_logged_once_and_holds_back_neither_reloads_nor_listeners(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(project / "loud.py", "X = 1\n")
    tried: list[str] = []
    heard: list[relmod.Event] = []

    def broken(event: relmod.Event) -> None:
        tried.append(event.kind)
        raise RuntimeError("a bug in the listener")

    relmod.add_listener(broken)
    relmod.add_listener(heard.append)
    relmod.enable()
    import loud  # type: ignore[import-not-found]

    for value in (2, 3):
        write(project / "loud.py", f"X = {value}\n")
        relmod.sync()
        assert value == loud.X  # marked and reloaded although a listener raised each time
    assert tried.count("reloaded") == 2 and tried.count("stale") >= 2
    assert [e.kind for e in heard if e.kind == "reloaded"] == ["reloaded", "reloaded"]
    assert sum(e.kind == "stale" for e in heard) == tried.count("stale")  # the next one ran
    complaints = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(complaints) == 1 and "raised on a 'stale' event" in complaints[0].getMessage()
    assert "a bug in the listener" in (complaints[0].exc_text or "")


def test_a_listener_may_leave_out_stale_marks_and_marking_then_makes_no_events() -> None:
    from relmod.machinery.events import Event, Listeners

    listeners, everything, some = Listeners(), [], []
    listeners.add(everything.append)
    listeners.add(some.append, stale=False)  # as a feed's: it hears marks in batches
    for kind in ("stale", "reloaded", "failed"):
        listeners.emit(Event(kind, "/p/a.py", "a", 0.0))  # type: ignore[arg-type]
    assert [e.kind for e in everything] == ["stale", "reloaded", "failed"]
    assert [e.kind for e in some] == ["reloaded", "failed"]
    assert listeners.hear_stale
    listeners.remove(everything.append)
    assert listeners and not listeners.hear_stale  # the registry then builds no stale event


def test_a_package_that_loses_its_init_becomes_a_folder_namespace(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "X = 1\n")
    write(tmp_path / "pkg" / "sub.py", "Y = 2\n")
    pkg = relmod.at(str(tmp_path / "pkg"))
    assert pkg.X == 1 and pkg.sub.Y == 2
    (tmp_path / "pkg" / "__init__.py").unlink()
    relmod.sync()
    assert not hasattr(pkg, "X") and pkg.sub.Y == 2
    assert pkg.__file__ is None and repr(pkg).startswith("<relmod folder")
    folder = relmod.at(str(tmp_path / "pkg"))
    assert folder is pkg


def test_a_folder_namespace_has_no_file_and_imp_errors_are_import_errors(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "m.py", "A = 1\n")
    lib = relmod.at(str(tmp_path / "lib"))
    assert lib.__file__ is None
    with pytest.raises(ImportError, match="has no such name"):
        relmod.imp(str(tmp_path / "lib" / "m.py"), "nope", globals={})


def test_namespace_packages_and_the_exclude_variable(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "nsp" / "inner.py", "V = 1\n")  # no __init__.py: a namespace package
    write(project / "legacy_models.py", "V = 1\n")
    monkeypatch.setenv("RELMOD_EXCLUDE", "legacy_*")
    from relmod.client import session

    session._default = None  # a process started with the variable set
    relmod.enable()
    import legacy_models  # type: ignore[import-not-found]
    import nsp.inner  # type: ignore[import-not-found]

    write(project / "nsp" / "inner.py", "V = 2\n")
    write(project / "legacy_models.py", "V = 2\n")
    relmod.sync()
    assert nsp.inner.V == 2 and legacy_models.V == 1


def test_a_first_import_never_runs_code_older_than_the_file(project: Path) -> None:
    """relmod's code cache is judged by content, or by a stat signature too old to be racy."""
    import subprocess

    from support import child_env

    env = child_env(RELMOD_CACHE_DIR=str(project.parent / "codecache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    probe = (
        "import sys; sys.path.insert(0, '.'); import relmod; relmod.enable(); "
        "import fresh; print(fresh.V)"
    )
    for value in range(10, 16):  # same size each time, each saved and imported within a second
        (project / "fresh.py").write_text(f"V = {value}\n")
        out = subprocess.run(
            [sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True
        )
        assert out.stdout.strip() == str(value), out.stderr
    old = time.time() - 10  # a signature old enough to be trusted, then a same-size edit
    os.utime(project / "fresh.py", (old, old))
    subprocess.run(
        [sys.executable, "-c", probe], cwd=project, env=env, check=True, capture_output=True
    )
    (project / "fresh.py").write_text("V = 99\n")
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "99", out.stderr


def test_a_failed_reload_leaves_its_dependents_un_run(project: Path) -> None:
    """A module that keeps its last good version gives its dependents nothing new to run."""
    runs = project / "runs.log"
    log_line = "with open({!r}, 'a') as _f:\n    _f.write({!r})\n"
    bodies = {"base": "X = 1\n", "mid1": "from base import X\n", "top1": "import mid1\n"}
    for name, body in bodies.items():
        write(project / f"{name}.py", log_line.format(str(runs), name + " ") + body)
    relmod.configure(on_error="keep")
    relmod.enable()
    import top1  # type: ignore[import-not-found]

    runs.write_text("")
    write(
        project / "base.py",
        log_line.format(str(runs), "base ") + "X = 2\nraise RuntimeError('boom')\n",
    )
    relmod.sync()
    assert top1.mid1.X == 1
    assert runs.read_text().split() == ["base"]  # base ran (and failed); mid1 and top1 did not


def test_a_module_is_the_path_named_links_and_their_targets_included(tmp_path: Path) -> None:
    """A file replaced by a link, its target edited, a linked folder re-pointed: 20 times each."""
    root = tmp_path / "links"
    for version in ("v1", "v2"):
        write(root / version / "m.py", f"V = '{version}'\n")
    os.symlink(root / "v1", root / "current")
    write(root / "leaf.py", "X = 0\n")
    write(root / "elsewhere" / "target.py", "X = 1\n")
    m = relmod.at(str(root / "current" / "m.py"))
    leaf = relmod.at(str(root / "leaf.py"))
    assert m.V == "v1" and leaf.X == 0
    tmp = root / "leaf.tmp"
    os.symlink(root / "elsewhere" / "target.py", tmp)
    os.replace(tmp, root / "leaf.py")  # the module file is now a link to another file
    relmod.sync()
    assert leaf.X == 1
    for n in range(20):
        write(root / "elsewhere" / "target.py", f"X = {n + 2}\n")  # the link's target edited
        version = "v2" if n % 2 == 0 else "v1"
        os.symlink(root / version, root / "current.tmp")
        os.replace(root / "current.tmp", root / "current")  # the folder link re-pointed
        relmod.sync()
        assert n + 2 == leaf.X
        assert version == m.V
        assert relmod.at(str(root / "current" / "m.py")) is m  # one module for the path named


def test_the_stale_count_and_the_last_error_follow_marks_reloads_and_failures(
    project: Path,
) -> None:
    """What every client's report carries, kept as it happens rather than by a walk over every
    module: the count of stale modules, and the error of the module that failed last."""
    for name, body in {
        "base": "X = 1\n",
        "mid": "import base\n",
        "top": "import mid\n",
        "side": "Y = 1\n",
    }.items():
        write(project / f"{name}.py", body)
    relmod.configure(on_error="keep")
    relmod.enable()
    import side  # type: ignore[import-not-found]
    import top  # type: ignore[import-not-found]

    registry = default_client().registry
    assert registry.stale_count() == 0 and registry.last_error() is None
    write(project / "base.py", "X = 2\n")
    relmod.sync()
    assert registry.stale_count() == 3  # base, mid, top; not side
    assert top.mid.base.X == 2 and registry.stale_count() == 0
    write(project / "base.py", "X = (\n")
    relmod.sync()
    assert top.mid.base.X == 2  # kept: base failed first
    write(project / "side.py", "raise RuntimeError('side is broken')\n")
    relmod.sync()
    assert side.Y == 1 and top.mid.base.X == 2 and registry.stale_count() == 0
    assert "side is broken" in (registry.last_error() or "")  # the later failure
    write(project / "side.py", "Y = 2\n")
    relmod.sync()
    assert side.Y == 2
    assert "line 1" in (registry.last_error() or "")  # base's, still failing
    write(project / "base.py", "X = 3\n")
    relmod.sync()
    assert registry.stale_count() == 3
    assert top.mid.base.X == 3 and registry.last_error() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_other_threads_hold_relmod_s_locks_can_use_relmod(
    project: Path,
) -> None:
    """A pool forks while another thread is inside relmod (installing the hook, adding a root
    or a listener, loading a site name): a lock held at the fork must not stay held in the
    child, whose only thread is the forking one."""
    from relmod import sites
    from relmod.client import session

    write(project / "forkmod.py", "VALUE = 1\n")
    client = default_client()
    site = sites.default_site()
    locks = [
        client.hook._lock,
        client.finder._lock,
        client.registry.scope._lock,
        client.registry.listeners._lock,
        session._default_lock,
        sites._default_site_lock,
        site._lock,
    ]
    holding, release = threading.Barrier(2), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.wait()
        release.wait()
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: only this thread exists here, and it took no lock
            status = 1
            try:
                signal.alarm(20)  # a hang must end the child, whatever the parent does
                assert session.default_client() is client
                client.hook.install()
                client.finder.install()
                client.registry.scope.add_root(str(project))
                relmod.add_listener(print)
                relmod.remove_listener(print)
                assert sites.default_site() is site
                with site._lock:
                    pass
                assert relmod.at(str(project / "forkmod.py")).VALUE == 1
                status = 0
            finally:
                os._exit(status)
    finally:
        release.set()
        thread.join(10)
    code = wait_child(pid, 30)
    assert code is not None, "the forked child hung on a lock another thread held at the fork"
    assert code == 0
