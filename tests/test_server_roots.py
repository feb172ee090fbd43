"""Import roots: absolute imports resolve where the project keeps its packages, before any client
has run a line (a src/ layout, pyproject.toml's package folders), and where clients' sys.path
says they are found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Worker, child_env, wait_for
from test_broker import BrokerProcess, Probe

from relmod.server.project import Project
from relmod.server.roots import find_import_roots

pytestmark = pytest.mark.timeout(60)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def edges_of(root: Path) -> set[tuple[str, str]]:
    project = Project(str(root), find_import_roots(str(root)))
    project.load_all(processes=1, check=False)
    return {
        (os.path.relpath(a, root), os.path.relpath(b, root)) for a, b, _ in project.graph.edges()
    }


@pytest.fixture
def src_layout(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "src" / "mypkg" / "__init__.py", "from mypkg import core\n")
    write(root / "src" / "mypkg" / "core.py", "from mypkg.util import helper\n")
    write(root / "src" / "mypkg" / "util.py", "def helper(): pass\n")
    write(root / "tests" / "test_core.py", "import mypkg.core\n")
    return root


@pytest.fixture
def broker(src_layout: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(src_layout, tmp_path / "broker.log").start()
    yield process
    process.stop()


def test_a_src_layout_has_its_edges_before_any_client_runs(
    src_layout: Path, broker: BrokerProcess
) -> None:
    probe = Probe(broker.info)
    try:
        body = probe.request("graph", {"after": None}).body
        edges = {(os.path.relpath(a, src_layout), os.path.relpath(b, src_layout))
                 for a, b, _ in body["edges"]}  # fmt: skip
        assert ("src/mypkg/core.py", "src/mypkg/util.py") in edges
        assert ("src/mypkg/__init__.py", "src/mypkg/core.py") in edges
        assert ("tests/test_core.py", "src/mypkg/core.py") in edges
        status = probe.request("status").body["status"]
        assert status["roots"] == [str(src_layout), str(src_layout / "src")]
    finally:
        probe.close()


@pytest.mark.parametrize(
    "pyproject, folder",
    [
        ('[tool.setuptools]\npackage-dir = {"" = "lib"}\n', "lib"),
        ('[tool.setuptools.packages.find]\nwhere = ["code"]\n', "code"),
        ('[tool.hatch.build.targets.wheel]\npackages = ["python/mypkg"]\n', "python"),
        ('[tool.poetry]\npackages = [{include = "mypkg", from = "sources"}]\n', "sources"),
    ],
    ids=["setuptools-package-dir", "setuptools-find-where", "hatch", "poetry"],
)
def test_pyproject_package_folders_are_import_roots(
    tmp_path: Path, pyproject: str, folder: str
) -> None:
    root = (tmp_path / "proj").resolve()
    write(root / "pyproject.toml", pyproject)
    write(root / folder / "mypkg" / "__init__.py", "")
    write(root / folder / "mypkg" / "core.py", "from mypkg import util\n")
    write(root / folder / "mypkg" / "util.py", "")
    write(root / "run.py", "import mypkg.core\n")
    edges = edges_of(root)
    assert (f"{folder}/mypkg/core.py", f"{folder}/mypkg/util.py") in edges
    assert ("run.py", f"{folder}/mypkg/core.py") in edges


def test_a_package_dir_alias_names_where_one_package_lives(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    write(root / "pyproject.toml", '[tool.setuptools]\npackage-dir = {"mypkg" = "lib/impl"}\n')
    write(root / "lib" / "impl" / "__init__.py", "")
    write(root / "lib" / "impl" / "util.py", "")
    write(root / "run.py", "from mypkg import util\n")
    assert ("run.py", "lib/impl/util.py") in edges_of(root)


def test_a_broken_pyproject_leaves_the_root_and_src(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    write(root / "pyproject.toml", "[tool.setuptools\n")
    write(root / "src" / "a.py", "")
    assert find_import_roots(str(root)).roots == (str(root), str(root / "src"))


def test_folders_on_a_clients_sys_path_become_import_roots(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    write(root / "vendor" / "libs" / "shared.py", "")
    write(root / "app.py", "import shared\nfrom .leaf import VALUE\n")
    write(root / "leaf.py", "VALUE = 1\n")
    broker = BrokerProcess(root, tmp_path / "broker.log").start()
    path = f"{root / 'vendor' / 'libs'}{os.pathsep}{child_env()['PYTHONPATH']}"
    worker = Worker(env=child_env(PYTHONPATH=path))
    probe = Probe(broker.info)
    try:

        def app_edges() -> set[str]:
            body = probe.request("graph", {"after": None}).body
            return {b for a, b, _ in body["edges"] if a == str(root / "app.py")}

        assert str(root / "vendor" / "libs" / "shared.py") not in app_edges()
        assert worker.call("connect", root=str(root)) is True
        wait_for(lambda: str(root / "vendor" / "libs" / "shared.py") in app_edges(), 10,
                 "the edge through the client's sys.path")  # fmt: skip
    finally:
        probe.close()
        worker.close()
        broker.stop()
