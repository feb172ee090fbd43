"""A real distributed LocalCluster of worker processes, a real broker, edits on disk."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import Broker

import relmod

distributed = pytest.importorskip("distributed")

from relmod.dask import RelmodPlugin  # noqa: E402  (needs distributed)

pytestmark = pytest.mark.timeout(120)

TASKS = """\
import os, sys

VALUE = {value}

def probe():
    '''Which process ran me, with which VALUE, from a relmod module, handling errors how.'''
    from relmod.client.session import default_client
    client = default_client()
    served = client.registry.record_of(sys.modules[__name__]) is not None
    return os.getpid(), VALUE, served, client.on_error
"""


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)  # an atomic save, as editors do


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = (tmp_path / "proj").resolve()
    root.mkdir()
    write(root / "tasks.py", TASKS.format(value=1))
    broker = Broker(root).start()
    try:
        yield root
    finally:
        broker.stop()


def on_every_worker(client: Any) -> dict[str, tuple[int, int, bool, str]]:
    """Run tasks.probe once on each worker (pure=False: a new key, so it really runs)."""
    import tasks

    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    futures = {
        w: client.submit(tasks.probe, workers=[w], allow_other_workers=False, pure=False)
        for w in workers
    }
    return {w: f.result(timeout=30) for w, f in futures.items()}


def until_every_worker_has(client: Any, value: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        results = on_every_worker(client)
        if all(r[1] == value for r in results.values()):
            return results
        assert time.monotonic() < deadline, f"not every worker has VALUE={value}: {results}"
        time.sleep(0.05)


def test_every_worker_and_a_late_joiner_run_the_saved_code(project: Path) -> None:
    relmod.connect(str(project))
    relmod.toplevel("tasks", str(project / "tasks.py"))
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(RelmodPlugin())
        first = on_every_worker(client)
        assert len(first) == 2
        assert len({r[0] for r in first.values()}) == 2, "two worker processes"
        # Imported by name from a relmod module on the worker, not shipped by value.
        assert all(r[1:] == (1, True, "keep") for r in first.values()), first

        write(project / "tasks.py", TASKS.format(value=2))
        relmod.sync()
        until_every_worker_has(client, 2)

        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        joined = on_every_worker(client)
        assert len(joined) == 3
        assert all(r[1:] == (2, True, "keep") for r in joined.values()), joined

        write(project / "tasks.py", TASKS.format(value=3))
        relmod.sync()
        last = until_every_worker_has(client, 3)
        assert len(last) == 3


def test_the_plugin_captures_the_client_and_takes_overrides(project: Path) -> None:
    relmod.connect(str(project))
    relmod.toplevel("tasks", str(project / "tasks.py"))
    plugin = RelmodPlugin()
    assert plugin.worker_setup.connection_file == os.environ["RELMOD_BROKER"]
    assert plugin.worker_setup.toplevel == (("tasks", str(project / "tasks.py")),)
    other = RelmodPlugin(
        root="/srv/proj", path_map={"/srv/proj": "/w/proj"}, toplevel={"t": "/srv/proj/t.py"}
    )
    assert other.worker_setup.connection_file is None
    assert other.worker_setup.project == "/srv/proj"
    assert other.worker_setup.path_map == (("/srv/proj", "/w/proj"),)
    assert other.worker_setup.toplevel == (("t", "/srv/proj/t.py"),)


@contextmanager
def plain_project_cluster(project: Path) -> Iterator[Any]:
    """This process connected and importing the project the ordinary way; two worker processes
    with the plugin registered."""
    sys.path.insert(0, str(project))
    relmod.connect(str(project))
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(RelmodPlugin())
        yield client


def test_plain_imports_reload_on_every_worker_without_toplevel(project: Path) -> None:
    """The client process imports the project the ordinary way; the plugin needs nothing else."""
    with plain_project_cluster(project) as client:
        import tasks  # type: ignore[import-not-found]

        first = on_every_worker(client)
        assert all(r[1:] == (1, True, "keep") for r in first.values()), first
        write(project / "tasks.py", TASKS.format(value=2))
        relmod.sync()
        assert tasks.VALUE == 2
        until_every_worker_has(client, 2)


def test_a_worker_started_with_preload_reloads_project_modules(project: Path) -> None:
    """``dask worker --preload relmod.dask`` from the project folder: no plugin, no toplevel."""
    import subprocess

    from support import child_env

    sys.path.insert(0, str(project))
    import tasks  # type: ignore[import-not-found]  # the client pickles tasks.probe by name

    with (
        distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        env = child_env(PYTHONPATH=os.pathsep.join([str(project), child_env()["PYTHONPATH"]]))
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                cluster.scheduler_address,
                "--preload",
                "relmod.dask",
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(1, timeout=60)
            first = on_every_worker(client)
            assert all(r[1:3] == (1, True) for r in first.values()), first
            write(project / "tasks.py", TASKS.format(value=2))
            until_every_worker_has(client, 2)
        finally:
            worker.terminate()
            worker.wait(30)
    assert tasks.VALUE == 1  # this process never asked relmod for anything: it runs what it ran


def test_after_the_clients_sync_no_task_runs_old_code(project: Path) -> None:
    """Edit, sync() in the client process, submit: every worker runs the edit, 30 times."""
    with plain_project_cluster(project) as client:
        on_every_worker(client)
        stale = []
        for value in range(2, 32):
            write(project / "tasks.py", TASKS.format(value=value))
            relmod.sync()
            stale += [(value, r[1]) for r in on_every_worker(client).values() if r[1] != value]
        assert stale == [], f"{len(stale)} of 60 tasks ran old code: {stale[:5]}"
