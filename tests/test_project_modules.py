"""Project modules imported the ordinary way reload in every process: real broker, real workers.

A worker's only relmod call is ``relmod.connect()`` (or none at all, under ``relmod run``); it
imports the project as any program does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Broker, LineWorker, child_env, wait_for


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)  # an atomic save, as editors do
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "util.py", "def scale(x):\n    return x * 2\n")
    write(
        root / "app" / "core.py",
        "from app.util import scale\ndef compute(x):\n    return scale(x) + 1\n",
    )
    write(
        root / "app" / "tasks.py", "from .core import compute\ndef run(x):\n    return compute(x)\n"
    )
    return root


@pytest.fixture
def broker(project: Path) -> Iterator[Broker]:
    b = Broker(project).start()
    yield b
    b.stop()


WORKER = """
    import sys, relmod
    relmod.connect()
    import app.core
    from app.tasks import run
    for line in sys.stdin:
        print(app.core.compute(10), run(10), flush=True)
"""


def test_workers_whose_only_call_is_connect_reload_plain_imports(
    project: Path, broker: Broker
) -> None:
    workers = [LineWorker(WORKER, cwd=project) for _ in range(3)]
    try:
        assert [w.ask() for w in workers] == ["21 21"] * 3
        write(project / "app" / "util.py", "def scale(x):\n    return x * 3\n")  # a dependency
        for w in workers:
            wait_for(lambda w=w: w.ask() == "31 31", 10, "the new util in every worker")
        write(
            project / "app" / "core.py",
            "from app.util import scale\ndef compute(x):\n    return scale(x) + 5\n",
        )
        for w in workers:
            wait_for(lambda w=w: w.ask() == "35 35", 10, "the new core in every worker")
    finally:
        for w in workers:
            w.close()


def test_relmod_run_needs_no_code_change(project: Path, broker: Broker) -> None:
    write(
        project / "app" / "loop.py",
        """
        import sys
        from app.core import compute
        import app.core
        for line in sys.stdin:
            print(app.core.compute(1), compute(1), flush=True)
        """,
    )
    for command in (["-m", "app.loop"], [str(project / "app" / "loop.py")]):
        worker = LineWorker(
            f"import sys; from relmod.cli import main; sys.exit(main(['run', *{command!r}]))",
            cwd=project,
        )
        try:
            before = worker.ask()
            write(
                project / "app" / "util.py", f"def scale(x):\n    return x * {len(before) + 40}\n"
            )
            expected = f"{len(before) + 41} {len(before) + 41}"
            wait_for(lambda w=worker, e=expected: w.ask() == e, 10, "the loop to run the new code")
        finally:
            worker.close()


def test_relmod_run_without_a_broker_watches_the_project_itself(tmp_path: Path) -> None:
    root = (tmp_path / "alone").resolve()
    write(root / "mod.py", "V = 1\n")
    write(
        root / "main.py",
        "import sys\nimport mod\nfor line in sys.stdin:\n    print(mod.V, flush=True)\n",
    )
    worker = LineWorker(
        "import sys; from relmod.cli import main; sys.exit(main(['run', 'main.py']))", cwd=root
    )
    try:
        assert worker.ask() == "1"
        write(root / "mod.py", "V = 2\n")
        wait_for(lambda: worker.ask() == "2", 10, "the embedded watcher to reload mod")
    finally:
        worker.close()


def test_modules_imported_before_connect_are_adopted(project: Path, broker: Broker) -> None:
    worker = LineWorker(
        """
        import sys
        import app.core
        import relmod
        relmod.connect()
        for line in sys.stdin:
            print(app.core.compute(10), flush=True)
        """,
        cwd=project,
    )
    try:
        assert worker.ask() == "21"
        write(
            project / "app" / "core.py",
            "from app.util import scale\ndef compute(x):\n    return scale(x) + 7\n",
        )
        wait_for(lambda: worker.ask() == "27", 10, "the adopted module to reload")
    finally:
        worker.close()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["src", "mapped"])
def test_a_package_installed_editable_into_a_fresh_venv(tmp_path: Path, layout: str) -> None:
    """``pip install -e .`` into a fresh venv, then a broker, as a new user would.

    A src/ layout is put on the path by a .pth entry; a package whose folder has another name
    (``package-dir``) is served by setuptools' own meta-path finder.
    """
    root = (tmp_path / "srcproj").resolve()
    folder = "src/mysrcpkg" if layout == "src" else "code_of_mysrcpkg"
    config = (
        '[tool.setuptools.packages.find]\nwhere = ["src"]\n'
        if layout == "src"
        else '[tool.setuptools]\npackages = ["mysrcpkg"]\n'
        '[tool.setuptools.package-dir]\nmysrcpkg = "code_of_mysrcpkg"\n'
    )
    write(
        root / "pyproject.toml",
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mysrcpkg"\nversion = "0.1"\n' + config,
    )
    write(root / folder / "__init__.py", "")
    write(root / folder / "x.py", "def f():\n    return 'one'\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The fresh venv sees relmod and its dependencies from this one (no download needed).
    here = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "outer.pth").write_text(
        here + "\n" + str(Path(__file__).resolve().parents[1]) + "\n"
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    env = child_env()
    env.pop("PYTHONPATH", None)
    b = Broker(root).start()
    worker = subprocess.Popen(
        [
            str(python),
            "-c",
            textwrap.dedent("""
            import sys, relmod
            relmod.connect()
            from mysrcpkg.x import f
            import mysrcpkg.x
            for line in sys.stdin:
                print(mysrcpkg.x.f(), f(), mysrcpkg.x.__file__, flush=True)
        """),
        ],
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    try:

        def ask() -> str:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            assert line, worker.stderr.read()  # type: ignore[union-attr]
            return line.strip()

        first = ask()
        assert first.startswith("one one ") and first.endswith(f"{folder}/x.py")
        write(root / folder / "x.py", "def f():\n    return 'two'\n")
        wait_for(lambda: ask().startswith("two two "), 10, "the editable package to reload")
    finally:
        for stream in (worker.stdin, worker.stdout, worker.stderr):
            if stream is not None:
                stream.close()
        worker.wait(10)
        b.stop()


def test_with_a_broker_a_re_pointed_folder_link_is_a_change_after_sync(
    project: Path, broker: Broker
) -> None:
    for version in ("v1", "v2"):
        write(project / version / "m.py", f"V = '{version}'\n")
    os.symlink(project / "v1", project / "current")
    worker = LineWorker(
        """
        import sys, relmod
        relmod.connect()
        m = relmod.at('current/m.py')
        for line in sys.stdin:
            relmod.sync()
            print(m.V, flush=True)
        """,
        cwd=project,
    )
    try:
        assert worker.ask() == "v1"
        for n in range(20):
            version = "v2" if n % 2 == 0 else "v1"
            os.symlink(project / version, project / "current.tmp")
            os.replace(project / "current.tmp", project / "current")
            assert worker.ask() == version
    finally:
        worker.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_a_file_made_unreadable_then_readable_again_is_never_stale_after_sync() -> None:
    """chmod 000 (the client, another user, cannot read it) then 644: new code after sync()."""
    import shutil
    import tempfile

    nobody = 65534
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import relmod"],
            user=nobody,
            group=nobody,
            capture_output=True,
            env=child_env(HOME="/tmp"),
            cwd="/",
            timeout=60,
        )
    except PermissionError as err:
        pytest.skip(f"the interpreter cannot run as uid {nobody} here ({err})")
    if probe.returncode != 0:
        pytest.skip(f"relmod cannot be imported as uid {nobody}: {probe.stderr[-200:]!r}")
    base = Path(tempfile.mkdtemp(prefix="relmod-perm-"))
    try:
        base.chmod(0o755)
        root = base / "proj"
        write(root / "perm.py", "V = 0\n")
        root.chmod(0o755)
        (root / "perm.py").chmod(0o644)
        private = base / "private"
        private.mkdir(mode=0o700)
        os.chown(private, nobody, nobody)
        env = child_env(
            RELMOD_RUNTIME_DIR=str(private / "run"),
            RELMOD_CACHE_DIR=str(private / "cache"),
            HOME=str(private),
        )
        code = """
            import sys, relmod
            relmod.configure(on_error='keep')
            perm = relmod.at('perm.py')
            for line in sys.stdin:
                relmod.sync()
                print(perm.V, flush=True)
        """
        worker = LineWorker(code, cwd=root, env=env, user=nobody)
        try:
            assert worker.ask() == "0"
            for value in range(1, 21):
                (root / "perm.py").chmod(0o000)
                write(root / "perm.py", f"V = {value}\n")  # a save the client cannot read yet
                (root / "perm.py").chmod(0o000)
                assert worker.ask() == str(value - 1)  # unreadable: the last good version
                (root / "perm.py").chmod(0o644)
                assert worker.ask() == str(value)
        finally:
            worker.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
