"""``%load_ext relmod`` in a real IPython shell: every cell runs on the latest saved code."""

from __future__ import annotations

import os
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Broker, wait_for

import relmod
import relmod.ipython
from relmod.client.session import default_client
from relmod.errors import ReloadError

InteractiveShell = pytest.importorskip("IPython.core.interactiveshell").InteractiveShell
Config = pytest.importorskip("traitlets.config").Config

pytestmark = pytest.mark.timeout(60)


def write(path: Path, text: str) -> Path:
    """Save in place, as a notebook's editor or ``%%writefile`` does (no sleep follows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run(shell: Any, code: str) -> Any:
    """Run one cell; fail the test with the cell's own error if it raised."""
    result = shell.run_cell(textwrap.dedent(code))
    if not result.success:
        raise AssertionError(f"cell failed: {code!r}") from (
            result.error_in_exec or result.error_before_exec
        )
    return result.result


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The notebook's folder, with a helpers.py; it is the cwd, as in Jupyter."""
    folder = (tmp_path / "nb").resolve()
    write(folder / "helpers.py", "def f():\n    return 1\n")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def shell(tmp_path: Path, notebook: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipythondir"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    ip = InteractiveShell.instance(config=config)
    yield ip
    relmod.ipython.unload_ipython_extension(ip)
    InteractiveShell.clear_instance()


@pytest.fixture
def load_ext_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the package's ``__init__`` re-exports, so that ``%load_ext relmod`` finds it."""
    ext = relmod.ipython
    monkeypatch.setattr(relmod, "load_ipython_extension", ext.load_ipython_extension, raising=False)
    monkeypatch.setattr(
        relmod, "unload_ipython_extension", ext.unload_ipython_extension, raising=False
    )


def load(shell: Any) -> relmod.ipython.CellSync:
    return relmod.ipython.load_ipython_extension(shell)


def test_load_ext_relmod_makes_relative_imports_work_and_says_it_is_embedded(
    shell: Any, notebook: Path, load_ext_names: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "%load_ext relmod")
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "no broker serves" in said[0] and str(notebook) in said[0]
    assert run(shell, "from . import helpers\nhelpers.f()") == 1
    run(shell, "%load_ext relmod")  # already loaded: one hook, not two
    hooks = [
        cb
        for cb in shell.events.callbacks["pre_run_cell"]
        if isinstance(getattr(cb, "__self__", None), relmod.ipython.CellSync)
    ]
    assert len(hooks) == 1


def test_a_save_is_seen_by_the_very_next_cell(shell: Any, notebook: Path) -> None:
    load(shell)
    run(shell, "from . import helpers")
    # Same size every time: only the content tells the versions apart.
    for value in range(2, 8):
        write(notebook / "helpers.py", f"def f():\n    return {value}\n")
        assert run(shell, "helpers.f()") == value


def test_a_save_right_after_the_import_cell_is_seen(shell: Any, notebook: Path) -> None:
    load(shell)
    run(shell, "from . import helpers")
    write(notebook / "helpers.py", "def f():\n    return 2\n")
    assert run(shell, "helpers.f()") == 2


def test_a_module_written_by_a_cell_serves_the_next_cell(shell: Any, notebook: Path) -> None:
    load(shell)
    run(shell, "from . import helpers")
    run(shell, "%%writefile helpers.py\ndef f():\n    return 5\n")
    assert run(shell, "helpers.f()") == 5


def test_a_dependency_saved_at_once_reloads_with_its_dependents(shell: Any, notebook: Path) -> None:
    write(notebook / "leaf.py", "VALUE = 1\n")
    write(notebook / "mid.py", "from .leaf import VALUE\nDOUBLE = VALUE * 2\n")
    load(shell)
    assert run(shell, "from . import mid\nmid.DOUBLE") == 2
    write(notebook / "leaf.py", "VALUE = 5\n")
    assert run(shell, "mid.DOUBLE") == 10


def test_an_ordinary_module_of_the_notebook_folder_reloads_before_the_next_cell(
    shell: Any, notebook: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(notebook))
    write(notebook / "plain.py", "def g():\n    return 'old'\n")
    load(shell)
    run(shell, "import relmod\nrelmod.enable()")
    assert run(shell, "import plain\nplain.g()") == "old"
    write(notebook / "plain.py", "def g():\n    return 'new'\n")
    assert run(shell, "plain.g()") == "new"


def test_an_ordinary_module_elsewhere_reloads_once_the_watcher_saw_it(
    shell: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    write(lib / "faraway.py", "def g():\n    return 'old'\n")
    monkeypatch.syspath_prepend(str(lib))
    load(shell)
    run(shell, "import relmod\nrelmod.enable()")
    assert run(shell, "import faraway\nfaraway.g()") == "old"
    run(shell, "pass")  # the cell after the import has the watcher follow lib/
    feed = default_client().feed
    assert feed is not None
    wait_for(lambda: feed.wait_ready(0.1), 10, "the watcher on lib/")  # type: ignore[attr-defined]
    write(lib / "faraway.py", "def g():\n    return 'new'\n")
    # lib/ is not the notebook's folder: no stat per cell for it; the watcher reports the save.
    wait_for(lambda: run(shell, "faraway.g()") == "new", 10, "the reload of faraway")


def test_a_broken_save_fails_the_next_cell_with_relmods_message_and_a_fix_recovers(
    shell: Any, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(shell)
    run(shell, "from . import helpers")
    write(notebook / "helpers.py", "def f(:\n    return 2\n")
    result = shell.run_cell("x = helpers.f()")
    err = result.error_in_exec
    assert isinstance(err, ReloadError)
    assert str(err).startswith(f"Cannot reload {notebook / 'helpers.py'}: SyntaxError at line 1")
    assert "The last good version stays in use" in str(err)
    assert "x" not in shell.user_ns  # the cell did not run on half-updated code
    shown = capsys.readouterr().out
    assert str(err) in shown and "def f(:" in shown  # the message and the offending line
    # The last good version serves the next cells, and the watcher's report of the same save
    # (forced here with a sync) does not repeat the error.
    relmod.sync()
    assert run(shell, "helpers.f()") == 1
    write(notebook / "helpers.py", "def f():\n    return 3\n")
    assert run(shell, "helpers.f()") == 3


def test_a_module_that_raises_while_reloading_shows_its_own_line(
    shell: Any, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load(shell)
    run(shell, "from . import helpers")
    capsys.readouterr()
    write(notebook / "helpers.py", "def f():\n    return 2\nLIMIT = 1 / 0\n")
    err = shell.run_cell("helpers.f()").error_in_exec
    assert isinstance(err, ReloadError) and "ZeroDivisionError at line 3" in str(err)
    shown = capsys.readouterr().out
    assert "LIMIT = 1 / 0" in shown
    assert "registry.py" not in shown  # relmod's own frames are not the user's business


def test_a_broken_ordinary_module_is_reported_once(
    shell: Any, notebook: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(notebook))
    write(notebook / "plain.py", "def g():\n    return 'old'\n")
    load(shell)
    run(shell, "import relmod\nrelmod.enable()\nimport plain")
    write(notebook / "plain.py", "def g(:\n    return 'new'\n")
    err = shell.run_cell("plain.g()").error_in_exec
    assert isinstance(err, ReloadError) and "Cannot reload " in str(err)
    assert "plain.py: SyntaxError at line 1" in str(err)
    relmod.sync()  # the watcher reports the same broken save again
    assert run(shell, "plain.g()") == "old"
    write(notebook / "plain.py", "def g():\n    return 'fixed'\n")
    assert run(shell, "plain.g()") == "fixed"


def test_relmod_magic_prints_the_status_and_syncs(
    shell: Any, notebook: Path, load_ext_names: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "%load_ext relmod")
    run(shell, "from . import helpers")
    capsys.readouterr()
    run(shell, "%relmod")
    status = capsys.readouterr().out
    assert "relmod: embedded feed" in status
    assert "1 loaded by path (relmod.at/use/imp)" in status
    assert "broken: none" in status

    write(notebook / "helpers.py", "def f(:\n")
    assert isinstance(shell.run_cell("pass").error_in_exec, ReloadError)
    capsys.readouterr()
    run(shell, "%relmod status")
    status = capsys.readouterr().out
    assert "broken: 1 file(s)" in status and "./helpers.py: Cannot reload" in status

    write(notebook / "helpers.py", "def f():\n    return 9\n")
    run(shell, "%relmod sync")
    assert "relmod: in sync" in capsys.readouterr().out
    assert run(shell, "helpers.f()") == 9

    result = shell.run_cell("%relmod bogus")
    assert "takes 'status', 'sync' or 'help'" in str(result.error_in_exec)


def test_unload_ext_stops_reloading_before_cells(
    shell: Any, notebook: Path, load_ext_names: None
) -> None:
    run(shell, "%load_ext relmod")
    registry = default_client().registry
    assert "invalidate" in vars(registry) or hasattr(registry, "generation")
    run(shell, "%unload_ext relmod")
    assert not any(
        isinstance(getattr(cb, "__self__", None), relmod.ipython.CellSync)
        for cb in shell.events.callbacks["pre_run_cell"]
    )
    assert "relmod" not in shell.magics_manager.magics["line"]
    assert "invalidate" not in vars(registry)


def test_the_per_cell_check_stats_a_few_files_not_every_module(
    shell: Any, notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    focus = relmod.ipython.FOCUS_FILES
    lib = tmp_path / "lib"
    for i in range(300):
        write(lib / f"mod{i}.py", f"VALUE = {i}\n")
    for i in range(focus + 5):
        write(notebook / f"h{i}.py", f"VALUE = {i}\n")
    monkeypatch.syspath_prepend(str(lib))
    sync = load(shell)
    run(shell, "import relmod\nrelmod.enable()")
    run(shell, "import " + ", ".join(f"mod{i}" for i in range(300)))
    run(shell, "from . import " + ", ".join(f"h{i}" for i in range(focus + 5)))
    run(shell, "pass")

    stat = os.stat
    stats: list[str] = []
    main = threading.main_thread()

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if threading.current_thread() is main and str(path).startswith(str(tmp_path)):
            stats.append(str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    quiet_cells = []  # stats of each cell that found nothing to catch up on
    for _ in range(20):
        before, catch_ups = len(stats), sync.catch_ups
        run(shell, "pass")
        if sync.catch_ups == catch_ups:
            quiet_cells.append(stats[before:])
    monkeypatch.setattr(os, "stat", stat)
    assert len(quiet_cells) >= 10
    for cell in quiet_cells:
        assert 0 < len(cell) <= focus
        assert not any(path.startswith(str(lib)) for path in cell)


@pytest.mark.timeout(120)
def test_with_a_broker_the_notebook_connects_and_stays_current(
    shell: Any, notebook: Path, load_ext_names: None, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(notebook).start()
    try:
        run(shell, "%load_ext relmod")
        assert "connected to the broker of" in capsys.readouterr().out
        run(shell, "from . import helpers")
        run(shell, "%relmod")
        assert "broker feed, connected" in capsys.readouterr().out

        write(notebook / "helpers.py", "def f():\n    return 2\n")
        assert run(shell, "helpers.f()") == 2

        write(notebook / "helpers.py", "def f(:\n")
        assert isinstance(shell.run_cell("pass").error_in_exec, ReloadError)
        feed = default_client().feed
        wait_for(lambda: feed.broken, 10, "the broker's report of the broken save")  # type: ignore[union-attr]
        assert run(shell, "helpers.f()") == 2  # reported once, not again for the broker's word

        write(notebook / "helpers.py", "def f():\n    return 3\n")
        assert run(shell, "helpers.f()") == 3
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_a_dead_brokers_connection_file_leaves_the_notebook_embedded(
    shell: Any, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(notebook).start()
    broker.kill()  # SIGKILL: its connection file stays behind
    try:
        load(shell)
        said = capsys.readouterr().out.strip().splitlines()
        assert len(said) == 1 and "this process watches its own files" in said[0]
        run(shell, "from . import helpers")
        write(notebook / "helpers.py", "def f():\n    return 2\n")
        assert run(shell, "helpers.f()") == 2
        run(shell, "%relmod")
        assert "relmod: embedded feed" in capsys.readouterr().out
    finally:
        broker.stop()


def test_relmod_magic_help_lists_the_subcommands(
    shell: Any, notebook: Path, load_ext_names: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "%load_ext relmod")
    capsys.readouterr()
    run(shell, "%relmod help")
    shown = capsys.readouterr().out
    assert "%relmod sync" in shown and "%relmod help" in shown and "%relmod " in shown
