"""relmod.watch: every backend against real files on disk, waiting with deadlines."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Recorder, wait_for, wait_until

from relmod.errors import ConfigurationError
from relmod.watch import (
    ChangeBatch,
    InotifyWatcher,
    PollingWatcher,
    WatchfilesWatcher,
    find_default_watcher,
)

LINUX = sys.platform.startswith("linux")
BACKENDS = ["watchfiles", "polling"] + (["inotify"] if LINUX else [])
CLASSES = {"watchfiles": WatchfilesWatcher, "polling": PollingWatcher, "inotify": InotifyWatcher}
DEADLINE = 5.0


AnyWatcher = WatchfilesWatcher | PollingWatcher | InotifyWatcher
Factory = Callable[..., AnyWatcher]


@pytest.fixture(params=BACKENDS)
def make_watcher(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Build, start and (at teardown) stop a watcher of the parametrized backend."""
    started: list[AnyWatcher] = []

    def make(
        paths: list[Path], on_change: Callable[[ChangeBatch], None], **kw: object
    ) -> AnyWatcher:
        cls = CLASSES[request.param]
        if cls is PollingWatcher:
            kw.setdefault("interval", 0.05)
        watcher = cls([str(p) for p in paths], on_change, **kw)  # type: ignore[arg-type]
        watcher.start()
        started.append(watcher)
        assert watcher.wait_ready(DEADLINE)
        return watcher

    yield make
    for watcher in started:
        watcher.stop()


def test_a_write_is_reported(tmp_path: Path, make_watcher: Factory) -> None:
    target = tmp_path / "a.py"
    target.write_text("x = 1\n")
    seen = Recorder()
    make_watcher([tmp_path], seen)

    target.write_text("x = 2\n")

    assert wait_until(lambda: seen.saw(target))
    assert all(not batch.rescan for batch in seen.snapshot())


def test_an_atomic_save_reports_the_target(tmp_path: Path, make_watcher: Factory) -> None:
    target = tmp_path / "pkg" / "mod.py"
    target.parent.mkdir()
    target.write_text("x = 1\n")
    seen = Recorder()
    make_watcher([tmp_path], seen)

    temp = target.with_name(".mod.py.tmp123")
    temp.write_text("x = 2\n")
    os.replace(temp, target)

    assert wait_until(lambda: seen.saw(target))


def test_a_watched_file_is_reported_across_atomic_saves(
    tmp_path: Path, make_watcher: Factory
) -> None:
    # An atomic save gives the file a new inode; a watch on the old inode would go quiet.
    target = tmp_path / "settings.py"
    target.write_text("n = 0\n")
    seen = Recorder()
    make_watcher([target], seen)

    for n in (1, 2):
        mark = len(seen.snapshot())
        temp = tmp_path / "settings.py.tmp"
        temp.write_text(f"n = {n}\n")
        os.replace(temp, target)
        assert wait_until(lambda mark=mark: seen.saw(target, since=mark)), f"save {n}"
    (tmp_path / "sibling.py").write_text("x = 1\n")
    sentinel_mark = len(seen.snapshot())
    target.write_text("n = 3\n")
    assert wait_until(lambda: seen.saw(target, since=sentinel_mark))
    assert seen.paths() == {str(target)}


def test_ignored_folders_and_editor_files_are_not_reported(
    tmp_path: Path, make_watcher: Factory
) -> None:
    for folder in (".git", "__pycache__", "node_modules"):
        (tmp_path / folder).mkdir()
    seen = Recorder()
    make_watcher([tmp_path], seen)

    ignored = [
        tmp_path / ".git" / "index",
        tmp_path / "__pycache__" / "a.cpython-311.pyc",
        tmp_path / "node_modules" / "x.js",
        tmp_path / ".a.py.swp",
        tmp_path / "a.py~",
        tmp_path / ".#a.py",
    ]
    for path in ignored:
        path.write_text("noise")
    sentinel = tmp_path / "sentinel.py"
    sentinel.write_text("written last")

    assert wait_until(lambda: seen.saw(sentinel))
    assert not seen.paths() & {str(p) for p in ignored}


def test_a_project_inside_a_folder_with_an_ignored_name_is_watched(
    tmp_path: Path, make_watcher: Factory
) -> None:
    # Ignore rules apply below the watched folder, not to where the project happens to live.
    project = tmp_path / "build" / "proj"
    project.mkdir(parents=True)
    seen = Recorder()
    make_watcher([project], seen)

    (project / "a.py").write_text("x = 1\n")

    assert wait_until(lambda: seen.saw(project / "a.py"))


def test_set_paths_adds_and_removes_folders(tmp_path: Path, make_watcher: Factory) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    seen = Recorder()
    watcher = make_watcher([first], seen)

    watcher.set_paths([str(first), str(second)])
    assert watcher.paths == (str(first), str(second))
    assert watcher.wait_ready(DEADLINE)
    (second / "new.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(second / "new.py"))
    # The watch was rebuilt: edits while neither watch was live cannot be named, so a rescan.
    assert wait_until(lambda: seen.rescans() >= 1)

    watcher.set_paths([str(second)])
    assert watcher.wait_ready(DEADLINE)
    mark = len(seen.snapshot())
    (first / "dropped.py").write_text("x = 1\n")
    (second / "kept.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(second / "kept.py", since=mark))
    assert not seen.saw(first / "dropped.py", since=mark)


def test_a_missing_path_is_skipped_then_watched_once_it_appears(
    tmp_path: Path, make_watcher: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    later = tmp_path / "later"
    seen = Recorder()
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        make_watcher([later], seen)
    assert any("does not exist" in r.getMessage() for r in caplog.records)

    later.mkdir()
    (later / "first.py").write_text("x = 1\n")
    # Polling reports the file that appeared; the native backend rebuilds its watch when it
    # notices the folder (within about a second) and sends a rescan.
    assert wait_until(lambda: bool(seen.snapshot()))
    (later / "second.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(later / "second.py"))


def test_non_recursive_watch_reports_only_direct_entries(
    tmp_path: Path, make_watcher: Factory
) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    seen = Recorder()
    make_watcher([tmp_path], seen, recursive=False)

    (sub / "deep.py").write_text("x = 1\n")
    (tmp_path / "top.py").write_text("x = 1\n")

    assert wait_until(lambda: seen.saw(tmp_path / "top.py"))
    assert not seen.saw(sub / "deep.py")


def test_stop_returns_within_its_timeout_and_the_thread_ends(
    tmp_path: Path, make_watcher: Factory
) -> None:
    watcher = make_watcher([tmp_path], Recorder())
    assert watcher.running

    started = time.monotonic()
    watcher.stop(timeout=2.0)

    assert time.monotonic() - started < 1.0
    assert not watcher.running
    assert not [t for t in threading.enumerate() if t.name == f"relmod-watch-{watcher.backend}"]


def test_an_exception_in_on_change_is_counted_and_later_changes_still_arrive(
    tmp_path: Path, make_watcher: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()

    def explode_once(batch: ChangeBatch) -> None:
        seen(batch)
        if len(seen.snapshot()) == 1:
            raise ValueError("consumer bug")

    watcher = make_watcher([tmp_path], explode_once)
    (tmp_path / "first.py").write_text("x = 1\n")
    assert wait_until(lambda: watcher.errors == 1)

    (tmp_path / "second.py").write_text("x = 1\n")

    assert wait_until(lambda: seen.saw(tmp_path / "second.py"))
    assert watcher.errors == 1
    failures = [r for r in caplog.records if r.name == "relmod.watch" and r.exc_info]
    assert failures and "consumer bug" in str(failures[0].exc_info)


def test_a_burst_of_200_files_arrives_complete_in_few_batches(
    tmp_path: Path, make_watcher: Factory
) -> None:
    seen = Recorder()
    make_watcher([tmp_path], seen)

    files = [tmp_path / f"m{i:03}.py" for i in range(200)]
    for path in files:
        path.write_text("x = 1\n")

    assert wait_until(lambda: {str(p) for p in files} <= seen.paths())
    assert len(seen.snapshot()) <= 10


def test_polling_does_not_loop_through_a_symlink_to_a_parent(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "up").symlink_to(tmp_path, target_is_directory=True)
    seen = Recorder()
    watcher = PollingWatcher([str(tmp_path)], seen, interval=0.05)
    watcher.start()
    try:
        assert watcher.wait_ready(DEADLINE)
        (tmp_path / "a.py").write_text("x = 1\n")
        assert wait_until(lambda: seen.saw(tmp_path / "a.py"))
        # One level through the link is walked (like notify does), never up and around again.
        assert all(p.count("/up/") <= 1 for p in seen.paths())
    finally:
        watcher.stop()


def test_polling_reports_deleted_files(tmp_path: Path) -> None:
    target = tmp_path / "gone.py"
    target.write_text("x = 1\n")
    seen = Recorder()
    watcher = PollingWatcher([str(tmp_path)], seen, interval=0.05)
    watcher.start()
    try:
        assert watcher.wait_ready(DEADLINE)
        target.unlink()
        assert wait_until(lambda: seen.saw(target))
    finally:
        watcher.stop()


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE"])
def test_find_default_watcher_polls_when_relmod_poll_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    monkeypatch.setenv("RELMOD_POLL", value)
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        watcher = find_default_watcher([str(tmp_path)], Recorder())
    assert isinstance(watcher, PollingWatcher)
    assert watcher.backend == "polling"
    assert any(
        "polling" in r.getMessage() and "RELMOD_POLL" in r.getMessage() for r in caplog.records
    )


NATIVE = "inotify" if LINUX else "watchfiles"


@pytest.mark.parametrize("value", [None, "0", "false", ""])
def test_find_default_watcher_uses_the_native_backend_otherwise(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str | None,
) -> None:
    monkeypatch.delenv("RELMOD_WATCHER", raising=False)
    if value is None:
        monkeypatch.delenv("RELMOD_POLL", raising=False)
    else:
        monkeypatch.setenv("RELMOD_POLL", value)
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        watcher = find_default_watcher([str(tmp_path)], Recorder(), recursive=False)
    watcher.stop()
    assert isinstance(watcher, CLASSES[NATIVE])
    assert watcher.backend == NATIVE
    assert not watcher.recursive
    assert any(NATIVE in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "backend"),
    [
        ("inotify", "inotify"),
        ("watchfiles", "watchfiles"),
        ("poll", "polling"),
        ("POLLING", "polling"),
    ],
)
def test_relmod_watcher_forces_a_backend_and_the_choice_is_logged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    backend: str,
) -> None:
    if backend == "inotify" and not LINUX:
        pytest.skip("inotify exists only on Linux")
    monkeypatch.delenv("RELMOD_POLL", raising=False)
    monkeypatch.setenv("RELMOD_WATCHER", value)
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        watcher = find_default_watcher([str(tmp_path)], Recorder())
    watcher.stop()
    assert watcher.backend == backend
    assert any(f"RELMOD_WATCHER={value}" in r.getMessage() for r in caplog.records)


def test_an_unknown_relmod_watcher_is_reported_and_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RELMOD_POLL", raising=False)
    monkeypatch.setenv("RELMOD_WATCHER", "fsevents-please")
    watcher = find_default_watcher([str(tmp_path)], Recorder())
    watcher.stop()
    assert watcher.backend == NATIVE
    assert any("fsevents-please" in r.getMessage() for r in caplog.records)


def test_find_default_watcher_argument_beats_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELMOD_WATCHER", raising=False)
    monkeypatch.setenv("RELMOD_POLL", "1")
    native = find_default_watcher([str(tmp_path)], Recorder(), poll=False)
    native.stop()
    assert native.backend == NATIVE
    monkeypatch.setenv("RELMOD_WATCHER", "poll")
    native = find_default_watcher([str(tmp_path)], Recorder(), poll=False)
    native.stop()
    assert native.backend == NATIVE
    monkeypatch.setenv("RELMOD_WATCHER", "watchfiles")
    assert find_default_watcher([str(tmp_path)], Recorder(), poll=False).backend == "watchfiles"
    monkeypatch.setenv("RELMOD_WATCHER", "inotify")
    monkeypatch.delenv("RELMOD_POLL")
    assert find_default_watcher([str(tmp_path)], Recorder(), poll=True).backend == "polling"


def test_find_default_watcher_falls_back_to_polling_without_watchfiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RELMOD_POLL", raising=False)
    monkeypatch.setenv("RELMOD_WATCHER", "watchfiles")
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # makes `import watchfiles` fail
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        watcher = find_default_watcher([str(tmp_path)], Recorder())
    assert watcher.backend == "polling"
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_poll_interval_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RELMOD_POLL_INTERVAL", "0.25")
    assert PollingWatcher([str(tmp_path)], Recorder()).interval == 0.25
    monkeypatch.setenv("RELMOD_POLL_INTERVAL", "soon")
    assert PollingWatcher([str(tmp_path)], Recorder()).interval == 0.5
    assert any("RELMOD_POLL_INTERVAL" in r.getMessage() for r in caplog.records)


def test_polling_spaces_its_walks_when_a_walk_costs_much_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk that takes 20 ms of CPU is followed by a pause of at least 0.38 s (5% of a core),
    whatever the interval; a cheap walk keeps the interval."""
    import relmod.watchers.polling as polling

    walk = polling._walk
    walks: list[float] = []

    def costly_walk(root: str, recursive: bool, out: dict[str, Any]) -> None:
        began = time.thread_time()
        while time.thread_time() - began < 0.02:  # a big project's stat walk, in CPU
            pass
        walk(root, recursive, out)
        walks.append(time.monotonic())

    monkeypatch.setattr(polling, "_walk", costly_walk)
    watcher = PollingWatcher([str(tmp_path)], Recorder(), interval=0.01)
    assert watcher.pause_after(0.0001) == 0.01
    watcher.start()
    try:
        wait_for(lambda: len(walks) >= 3, 15, "three walks")
    finally:
        watcher.stop()
    assert min(b - a for a, b in zip(walks, walks[1:], strict=False)) >= 0.38


def test_the_polling_cpu_cap_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RELMOD_POLL_CPU", "0.2")
    watcher = PollingWatcher([str(tmp_path)], Recorder(), interval=0.5)
    assert watcher.cpu_share == 0.2 and watcher.pause_after(0.25) == pytest.approx(1.0)
    for bad in ("0", "1.5", "lots"):
        monkeypatch.setenv("RELMOD_POLL_CPU", bad)
        assert PollingWatcher([str(tmp_path)], Recorder()).cpu_share == 0.05
    assert sum("RELMOD_POLL_CPU" in r.getMessage() for r in caplog.records) == 3


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        WatchfilesWatcher([str(tmp_path)], Recorder(), step_ms=0)
    with pytest.raises(ConfigurationError):
        InotifyWatcher([str(tmp_path)], Recorder(), step_ms=0)
    with pytest.raises(ConfigurationError):
        PollingWatcher([str(tmp_path)], Recorder(), interval=0)


def test_a_watcher_starts_only_once(tmp_path: Path) -> None:
    watcher = PollingWatcher([str(tmp_path)], Recorder(), interval=0.05)
    watcher.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            watcher.start()
    finally:
        watcher.stop()
