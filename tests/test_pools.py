"""Real process pools, fork and spawn, with a real broker and without one, picking up edits."""

from __future__ import annotations

import multiprocessing
import os
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import Broker

import relmod
import relmod.workers
from relmod.client.session import default_client
from relmod.workers import WorkerSetup

pytestmark = pytest.mark.timeout(180)

WORKERS = 3

TASKS = """\
import os, time

VALUE = {value}

def probe(delay):
    '''Who ran me, when, with which VALUE, and how a failed reload is handled there.'''
    time.sleep(delay)
    from relmod.client.session import default_client
    return os.getpid(), time.monotonic(), VALUE, default_client().on_error, os.environ.get("TAG")

def tag(text):
    os.environ["TAG"] = text
"""

Result = tuple[int, float, Any, str, "str | None"]


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)  # an atomic save, as editors do


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    root.mkdir()
    write(root / "tasks.py", TASKS.format(value=1))
    return root


@pytest.fixture(params=["broker", "embedded"])
def feed(request: pytest.FixtureRequest, project: Path) -> Iterator[str]:
    """The parent follows edits through a real broker, or through its own watcher."""
    if request.param == "embedded":
        yield "embedded"
        return
    broker = Broker(project).start()
    try:
        relmod.connect(str(project))
        yield "broker"
    finally:
        broker.stop()


class Pool:
    """One interface over ProcessPoolExecutor and multiprocessing.Pool."""

    def __init__(self, kind: str, method: str, **options: Any) -> None:
        context = multiprocessing.get_context(method)
        self.kind = kind
        if kind == "executor":
            self.pool: Any = ProcessPoolExecutor(
                WORKERS, mp_context=context, **relmod.workers.pool_options(**options)
            )
        else:
            self.pool = context.Pool(
                WORKERS,
                initializer=relmod.workers.init,
                initargs=relmod.workers.initargs(**options),
            )

    def batch(self, delay: float) -> list[Result]:
        """One probe per worker, submitted together so that every worker gets work."""
        import tasks  # the parent's module, served by relmod.toplevel

        if self.kind == "executor":
            futures = [self.pool.submit(tasks.probe, delay) for _ in range(WORKERS)]
            return [f.result(timeout=60) for f in futures]
        return list(self.pool.map(tasks.probe, [delay] * WORKERS, chunksize=1))

    def close(self) -> None:
        if self.kind == "executor":
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.terminate()
            self.pool.join()


def start_all(pool: Pool, timeout: float = 60.0) -> list[Result]:
    """Probe until every worker process has answered; returns every result."""
    results: list[Result] = []
    deadline = time.monotonic() + timeout
    while len({r[0] for r in results}) < WORKERS:
        assert time.monotonic() < deadline, f"only {len({r[0] for r in results})} workers ran"
        results += pool.batch(0.05)
    return results


def run_until(pool: Pool, value: object, pids: set[int], timeout: float = 30.0) -> list[Result]:
    """Probe until every pid returned ``value``, then a few batches more; every result."""
    results: list[Result] = []
    deadline = time.monotonic() + timeout
    while not pids <= {r[0] for r in results if r[2] == value}:
        if time.monotonic() > deadline:
            stale = sorted(pids - {r[0] for r in results if r[2] == value})
            raise AssertionError(f"workers {stale} never returned {value!r}: {results[-9:]}")
        results += pool.batch(0.02)
    for _ in range(3):
        results += pool.batch(0.01)
    return results


def assert_monotonic(results: list[Result], old: object, new: object) -> None:
    """No worker returns the old value after it has returned the new one."""
    for pid in {r[0] for r in results}:
        values = [r[2] for r in sorted(r for r in results if r[0] == pid)]
        seen_new = values.index(new) if new in values else len(values)
        assert old not in values[seen_new:], (pid, values)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("kind", ["executor", "pool"])
def test_every_worker_picks_up_an_edit_between_tasks(
    project: Path, feed: str, kind: str, method: str
) -> None:
    tasks = relmod.toplevel("tasks", str(project / "tasks.py"))
    assert tasks.VALUE == 1
    pool = Pool(kind, method)
    try:
        before = start_all(pool)
        pids = {r[0] for r in before}
        assert len(pids) == WORKERS
        assert {r[2] for r in before} == {1}
        # Workers keep the last good code when a save is broken, whatever the parent does.
        assert {r[3] for r in before} == {"keep"}
        assert default_client().on_error == "raise"

        write(project / "tasks.py", TASKS.format(value=2))
        relmod.sync()  # the parent has seen the save; each worker's own feed marks it too
        assert tasks.VALUE == 2
        after = run_until(pool, 2, pids)
        assert {r[0] for r in after} == pids, "a worker process was replaced"
        assert_monotonic(after, 1, 2)
        assert {r[2] for r in after[-WORKERS:]} == {2}
    finally:
        pool.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_broken_save_is_logged_and_workers_keep_the_last_good_code(
    project: Path, feed: str, method: str
) -> None:
    tasks = relmod.toplevel("tasks", str(project / "tasks.py"))
    relmod.configure(on_error="keep")  # the parent too: it must still pickle tasks.probe
    pool = Pool("executor", method)
    try:
        pids = {r[0] for r in start_all(pool)}
        write(project / "tasks.py", "VALUE = (\n")
        relmod.sync()
        time.sleep(0.5)  # time for every worker's feed to see the broken save
        during = [r for _ in range(10) for r in pool.batch(0.01)]
        assert {r[2] for r in during} == {1}, "a worker ran the broken save or lost its code"
        assert tasks.VALUE == 1

        write(project / "tasks.py", TASKS.format(value=3))
        relmod.sync()
        after = run_until(pool, 3, pids)
        assert_monotonic(after, 1, 3)
    finally:
        pool.close()


def test_spawned_workers_run_your_initializer_after_relmod(project: Path) -> None:
    tasks = relmod.toplevel("tasks", str(project / "tasks.py"))
    pool = Pool("executor", "spawn", initializer=tasks.tag, initargs=("mine",))
    try:
        results = start_all(pool)
        # tasks.tag was unpickled in each worker: the toplevel name existed before it ran.
        assert {r[4] for r in results} == {"mine"}
    finally:
        pool.close()


def test_setup_captures_the_parent(project: Path) -> None:
    relmod.toplevel("tasks", str(project / "tasks.py"))
    setup = WorkerSetup.capture()
    assert setup.toplevel == (("tasks", str(project / "tasks.py")),)
    assert setup.connection_file is None  # embedded: workers watch files themselves
    assert setup.on_error == "keep"
    options = relmod.workers.pool_options(on_error="raise")
    assert options["initializer"] is relmod.workers.init
    assert options["initargs"][0].on_error == "raise"


def test_setup_captures_the_broker_and_its_path_map(project: Path, tmp_path: Path) -> None:
    broker = Broker(project).start()
    try:
        view = str(tmp_path / "view")  # where this process sees the project (a copy here)
        os.mkdir(view)
        (Path(view) / "tasks.py").write_text((project / "tasks.py").read_text())
        relmod.connect(str(project), path_map={str(project): view})
        relmod.toplevel("tasks", os.path.join(view, "tasks.py"))
        setup = WorkerSetup.capture()
        assert setup.connection_file == os.environ["RELMOD_BROKER"]
        assert setup.path_map == ((str(project), view),)
        # Stored as the broker names it; each worker maps it to its own view.
        assert setup.toplevel == (("tasks", str(project / "tasks.py")),)
    finally:
        broker.stop()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_plain_imports_reload_in_every_worker_without_toplevel(
    project: Path, feed: str, method: str
) -> None:
    """The project imported the ordinary way: connect() (or enable()) is all the parent says."""
    import sys

    sys.path.insert(0, str(project))
    if feed == "embedded":
        relmod.enable()
    import tasks  # type: ignore[import-not-found]

    assert tasks.VALUE == 1 and tasks.__name__ == "tasks"
    pool = Pool("executor", method)
    try:
        pids = {r[0] for r in start_all(pool)}
        write(project / "tasks.py", TASKS.format(value=2))
        relmod.sync()
        assert tasks.VALUE == 2
        after = run_until(pool, 2, pids)
        assert {r[0] for r in after} == pids, "a worker process was replaced"
        assert_monotonic(after, 1, 2)
    finally:
        pool.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_after_the_parents_sync_no_task_runs_old_code(
    project: Path, feed: str, method: str
) -> None:
    """Edit, sync() in the parent, submit: every task sees the edit, with no retry, 30 times."""
    import sys

    sys.path.insert(0, str(project))
    if feed == "embedded":
        relmod.enable()
    import tasks  # type: ignore[import-not-found]

    pool = Pool("executor", method)
    try:
        start_all(pool)
        stale = []
        for value in range(2, 32):
            write(project / "tasks.py", TASKS.format(value=value))
            relmod.sync()
            results = pool.batch(0.0)
            stale += [(value, r[2]) for r in results if r[2] != value]
        assert stale == [], f"{len(stale)} of {30 * WORKERS} tasks ran old code: {stale[:5]}"
        assert tasks.VALUE == 31
    finally:
        pool.close()


def test_joblib_loky_workers_follow_the_parents_sync(project: Path, feed: str) -> None:
    """joblib's loky backend, the pool most scientific code uses, given relmod's initializer."""
    import sys

    joblib = pytest.importorskip("joblib")
    sys.path.insert(0, str(project))
    if feed == "embedded":
        relmod.enable()
    import tasks  # type: ignore[import-not-found]

    with joblib.parallel_config(backend="loky", **relmod.pool_options()):
        parallel = joblib.Parallel(n_jobs=2)
        first = parallel(joblib.delayed(tasks.probe)(0.0) for _ in range(4))
        assert {r[2] for r in first} == {1} and {r[3] for r in first} == {"keep"}
        stale = []
        for value in range(2, 32):
            write(project / "tasks.py", TASKS.format(value=value))
            relmod.sync()
            results = parallel(joblib.delayed(tasks.probe)(0.0) for _ in range(4))
            stale += [(value, r[2]) for r in results if r[2] != value]
        assert stale == [], f"{len(stale)} of 120 tasks ran old code: {stale[:5]}"
