"""relmod.watchers.inotify: the Linux backend on real files, its batching policy, its decoding."""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Recorder, wait_until

from relmod.watch import ChangeBatch, InotifyWatcher, find_default_watcher
from relmod.watchers import inotify_kernel
from relmod.watchers.inotify import _Burst
from relmod.watchers.inotify_kernel import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_ISDIR,
    IN_Q_OVERFLOW,
    Inotify,
    RawEvent,
    decode,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux inotify")

DEADLINE = 5.0


@pytest.fixture
def watch() -> Iterator[Callable[..., InotifyWatcher]]:
    started: list[InotifyWatcher] = []

    def make(
        paths: list[Path], on_change: Callable[[ChangeBatch], None], **kw: object
    ) -> InotifyWatcher:
        watcher = InotifyWatcher([str(p) for p in paths], on_change, **kw)  # type: ignore[arg-type]
        watcher.start()
        started.append(watcher)
        assert watcher.wait_ready(DEADLINE)
        return watcher

    yield make
    for watcher in started:
        watcher.stop()


# -- decoding -------------------------------------------------------------------------------------


def event_bytes(wd: int, mask: int, name: bytes = b"", cookie: int = 0, pad: int = 16) -> bytes:
    padded = name + b"\0" * (-(len(name) + 1) % pad + 1) if name else b""
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


def test_decode_reads_packed_events_with_padding_and_names() -> None:
    data = (
        event_bytes(1, IN_CLOSE_WRITE, b"a.py")
        + event_bytes(2, IN_CREATE | IN_ISDIR, b"pkg", pad=4)
        + event_bytes(-1, IN_Q_OVERFLOW)
        + event_bytes(3, IN_CLOSE_WRITE, "caf\u00e9.py".encode())
        + event_bytes(3, IN_CLOSE_WRITE, b"bad\xff.py")
    )
    assert decode(data) == [
        RawEvent(1, IN_CLOSE_WRITE, 0, "a.py"),
        RawEvent(2, IN_CREATE | IN_ISDIR, 0, "pkg"),
        RawEvent(-1, IN_Q_OVERFLOW, 0, ""),
        RawEvent(3, IN_CLOSE_WRITE, 0, "caf\u00e9.py"),
        RawEvent(3, IN_CLOSE_WRITE, 0, os.fsdecode(b"bad\xff.py")),  # round-trips to the bytes
    ]


def test_decode_drops_a_truncated_trailing_record() -> None:
    whole = event_bytes(1, IN_CLOSE_WRITE, b"a.py")
    cut = event_bytes(1, IN_CLOSE_WRITE, b"b.py")
    assert decode(whole + cut[:-3]) == [RawEvent(1, IN_CLOSE_WRITE, 0, "a.py")]
    assert decode(whole + cut[:10]) == [RawEvent(1, IN_CLOSE_WRITE, 0, "a.py")]
    assert decode(b"") == []


def test_the_kernel_writes_what_decode_reads(tmp_path: Path) -> None:
    ino = Inotify()
    events: list[RawEvent] = []
    try:
        ino.add_watch(str(tmp_path), IN_CLOSE_WRITE)
        assert ino.read() == []  # non-blocking: nothing yet
        (tmp_path / "a.py").write_text("x = 1\n")
        assert wait_until(lambda: bool(events.extend(ino.read()) or events))
        assert [(e.mask, e.name) for e in events] == [(IN_CLOSE_WRITE, "a.py")]
    finally:
        ino.close()
    ino.close()  # twice is fine


def test_an_overflow_is_delivered_as_a_rescan_and_folders_made_meanwhile_get_watches(
    tmp_path: Path, watch: Callable[..., InotifyWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Recorder()
    watcher = watch([tmp_path], seen)
    fds = watcher._fds
    assert fds is not None
    real_read = fds.inotify.read
    overflow = decode(event_bytes(-1, IN_Q_OVERFLOW))
    injected = threading.Event()

    def lossy_read() -> list[RawEvent]:
        real_read()  # what the kernel had is lost, as after a real overflow
        if injected.is_set():
            return []
        injected.set()
        return overflow

    monkeypatch.setattr(fds.inotify, "read", lossy_read)
    lost = tmp_path / "made_during_overflow"
    lost.mkdir()
    assert wait_until(lambda: any(b.rescan for b in seen.snapshot()))
    monkeypatch.setattr(fds.inotify, "read", real_read)
    assert watcher.overflows == 1

    (lost / "m.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(lost / "m.py"))


# -- the batching policy, with a hand-held clock ---------------------------------------------------


def test_a_lone_change_goes_out_at_once() -> None:
    burst = _Burst(step=0.010, max_delay=1.0)
    assert burst.add(100.0, {"/p/a.py"}, set(), False) == (frozenset({"/p/a.py"}), False)
    assert burst.timeout(100.0) is None  # nothing held: the thread may sleep forever
    # The next lone change, after a quiet step, goes out at once too.
    assert burst.add(100.020, {"/p/b.py"}, set(), False) == (frozenset({"/p/b.py"}), False)


def test_a_burst_after_its_first_change_is_gathered_until_a_quiet_step() -> None:
    burst = _Burst(step=0.010, max_delay=1.0)
    assert burst.add(0.0, {"/p/0.py"}, set(), False) is not None
    for i in range(1, 100):
        assert burst.add(i * 0.001, {f"/p/{i}.py"}, set(), False) is None
    assert burst.due(0.100) is None
    assert burst.timeout(0.099) == pytest.approx(0.010)
    paths, rescan = burst.due(0.109) or (frozenset(), True)
    assert len(paths) == 99 and not rescan
    assert burst.timeout(0.2) is None


def test_a_storm_goes_out_at_least_every_max_delay() -> None:
    burst = _Burst(step=0.010, max_delay=0.050)
    burst.add(0.0, {"/p/first.py"}, set(), False)
    sent = []
    for i in range(1, 200):  # one change every 2 ms for 0.4 s: never a quiet step
        now = i * 0.002
        burst.add(now, {f"/p/{i}.py"}, set(), False)
        batch = burst.due(now)
        if batch:
            sent.append((now, batch))
    assert 6 <= len(sent) <= 9
    assert all(b - a <= 0.055 for (a, _), (b, _) in zip(sent, sent[1:], strict=False))


def test_an_editors_temporary_file_does_not_hold_back_the_save_that_renames_it() -> None:
    burst = _Burst(step=0.010, max_delay=1.0)
    # Written and closed first (one drain), renamed over the module a moment later (the next).
    assert burst.add(0.0, {"/p/.a.py.tmp"}, set(), False) is None  # not Python: set aside
    batch = burst.add(0.0003, {"/p/a.py", "/p/.a.py.tmp"}, set(), False)
    assert batch == (frozenset({"/p/a.py", "/p/.a.py.tmp"}), False)  # at once: the lone save
    assert burst.timeout(0.0003) is None
    # Alone, such a path goes out after step, and a change after it is still a lone save.
    assert burst.add(1.0, {"/p/notes.txt"}, set(), False) is None
    assert burst.timeout(1.0) == pytest.approx(0.010) and burst.due(1.005) is None
    assert burst.due(1.010) == (frozenset({"/p/notes.txt"}), False)
    assert burst.add(1.011, {"/p/b.py"}, set(), False) == (frozenset({"/p/b.py"}), False)


def test_a_created_file_waits_for_its_close_but_not_forever() -> None:
    burst = _Burst(step=0.010, max_delay=1.0)
    assert burst.add(0.0, set(), {"/p/new.py"}, False) is None  # created, not closed yet
    assert burst.timeout(0.0) == pytest.approx(0.010)
    # Closed soon after: reported at once, as the lone change it is.
    assert burst.add(0.001, {"/p/new.py"}, set(), False) == (frozenset({"/p/new.py"}), False)
    assert burst.timeout(0.001) is None
    # A link or a file left open is reported after a quiet step.
    assert burst.add(1.0, set(), {"/p/link.py"}, False) is None
    assert burst.due(1.005) is None
    assert burst.due(1.010) == (frozenset({"/p/link.py"}), False)


def test_a_rescan_alone_goes_out() -> None:
    burst = _Burst(step=0.010, max_delay=1.0)
    assert burst.add(0.0, set(), set(), True) == (frozenset(), True)


# -- real files -----------------------------------------------------------------------------------


def test_a_lone_save_does_not_wait_for_the_quiet_period(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    target = tmp_path / "a.py"
    target.write_text("x = 0\n")
    seen = Recorder()
    watch([tmp_path], seen, step_ms=500)
    for n in range(5):
        mark = seen.mark()
        target.write_text(f"x = {n}\n")
        written = time.perf_counter()
        assert wait_until(lambda mark=mark: seen.saw(target, since=mark))
        assert seen.times[mark] - written < 0.2  # a quiet-period wait would be >= 0.5 s
        time.sleep(0.6)  # each save starts a new quiet period


def test_new_nested_folders_and_the_files_written_in_them_at_once_are_reported(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    seen = Recorder()
    watcher = watch([tmp_path], seen)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    files = [tmp_path / "a" / "top.py", tmp_path / "a" / "b" / "mid.py", deep / "low.py"]
    for path in files:
        path.write_text("x = 1\n")  # right away: the watches may not exist yet
    assert wait_until(lambda: seen.saw(*files))
    assert wait_until(lambda: watcher.watches == 4)

    mark = seen.mark()
    (deep / "low.py").write_text("x = 2\n")
    assert wait_until(lambda: seen.saw(deep / "low.py", since=mark))


def test_deletes_of_files_and_folders_are_reported(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    lone = tmp_path / "lone.py"
    inner = tmp_path / "pkg" / "sub" / "m.py"
    for path in (lone, inner):
        path.write_text("x = 1\n")
    seen = Recorder()
    watcher = watch([tmp_path], seen)
    assert watcher.watches == 3

    lone.unlink()
    inner.unlink()
    (tmp_path / "pkg" / "sub").rmdir()
    (tmp_path / "pkg").rmdir()
    assert wait_until(lambda: seen.saw(lone, inner, tmp_path / "pkg"))
    assert wait_until(lambda: watcher.watches == 1)


def test_a_renamed_folder_is_reported_and_watched_under_its_new_name(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    (tmp_path / "old" / "sub").mkdir(parents=True)
    (tmp_path / "old" / "sub" / "m.py").write_text("x = 1\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    project = tmp_path
    seen = Recorder()
    watcher = watch([project], seen)

    os.rename(project / "old", project / "new")
    assert wait_until(lambda: seen.saw(project / "old", project / "new", project / "new/sub/m.py"))
    mark = seen.mark()
    (project / "new" / "sub" / "m.py").write_text("x = 2\n")
    assert wait_until(lambda: seen.saw(project / "new/sub/m.py", since=mark))
    assert not any("/old" in p for p in seen.paths(mark))

    # Moved out of the project: reported once, then no longer watched.
    os.rename(project / "new", outside)
    try:
        assert wait_until(lambda: seen.saw(project / "new", since=mark))
        assert wait_until(lambda: watcher.watches == 1)
        mark = seen.mark()
        (outside / "sub" / "m.py").write_text("x = 3\n")
        (project / "sentinel.py").write_text("x = 1\n")
        assert wait_until(lambda: seen.saw(project / "sentinel.py", since=mark))
        assert seen.paths(mark) == {str(project / "sentinel.py")}
    finally:
        for path in sorted(outside.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        outside.rmdir()


def test_atomic_saves_chmod_and_touch_are_reported(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    target = tmp_path / "mod.py"
    target.write_text("x = 1\n")
    seen = Recorder()
    watch([tmp_path], seen)

    temp = tmp_path / "mod.py.new"  # a temporary name the ignore rules do not know
    temp.write_text("x = 2\n")
    os.replace(temp, target)
    assert wait_until(lambda: seen.saw(target))

    mark = seen.mark()
    target.chmod(0o600)
    assert wait_until(lambda: seen.saw(target, since=mark))

    mark = seen.mark()
    os.utime(target, (1, 1))
    assert wait_until(lambda: seen.saw(target, since=mark))


def test_a_burst_of_500_files_arrives_complete_in_a_few_batches(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    seen = Recorder()
    watch([tmp_path], seen)
    (tmp_path / "pkg").mkdir()
    files = [tmp_path / "pkg" / f"m{i:03}.py" for i in range(500)]
    for path in files:
        path.write_text("x = 1\n")

    assert wait_until(lambda: seen.saw(*files))
    assert len(seen.snapshot()) <= 8, [len(b.paths) for b in seen.snapshot()]


def test_ignored_folders_get_no_watch_and_a_watched_file_only_reports_itself(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    for folder in (".git/objects", "__pycache__", "node_modules/x", "pkg"):
        (tmp_path / folder).mkdir(parents=True)
    assert watch([tmp_path], Recorder()).watches == 2  # the root and pkg

    other = tmp_path / "elsewhere"
    (other / "sub").mkdir(parents=True)
    settings = other / "settings.py"
    settings.write_text("x = 1\n")
    seen = Recorder()
    watcher = watch([settings], seen)
    assert watcher.watches == 1  # its folder, not the folders below
    (other / "sibling.py").write_text("x = 1\n")
    (other / "sub" / "deep.py").write_text("x = 1\n")
    settings.write_text("x = 2\n")
    assert wait_until(lambda: seen.saw(settings))
    assert seen.paths() == {str(settings)}


def test_a_symlink_back_up_the_tree_is_watched_once(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "up").symlink_to(tmp_path, target_is_directory=True)
    seen = Recorder()
    watcher = watch([tmp_path], seen)
    assert watcher.watches == 2
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(tmp_path / "pkg" / "a.py"))


def test_a_deleted_root_is_watched_again_when_it_comes_back(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    seen = Recorder()
    watcher = watch([root], seen)
    root.rmdir()
    assert wait_until(lambda: seen.saw(root))
    assert wait_until(lambda: watcher.watches == 0)

    mark = seen.mark()
    root.mkdir()  # looked for once a second while it is missing
    assert wait_until(lambda: watcher.watches == 1, timeout=3)
    assert wait_until(lambda: any(b.rescan for b in seen.snapshot()[mark:]))
    (root / "a.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(root / "a.py"))


def test_set_paths_from_a_file_to_its_folder_watches_the_folders_below(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    (tmp_path / "sub").mkdir()
    settings = tmp_path / "settings.py"
    settings.write_text("x = 1\n")
    seen = Recorder()
    watcher = watch([settings], seen)
    assert watcher.watches == 1

    watcher.set_paths([str(tmp_path)])
    assert watcher.wait_ready(DEADLINE)
    assert watcher.watches == 2
    (tmp_path / "sub" / "deep.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(tmp_path / "sub" / "deep.py"))

    watcher.set_paths([])
    assert watcher.wait_ready(DEADLINE)
    assert watcher.watches == 0


def test_watch_now_is_live_on_return_and_sends_no_rescan(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    first, later, missing = tmp_path / "first", tmp_path / "later", tmp_path / "missing"
    first.mkdir()
    later.mkdir()
    seen = Recorder()
    watcher = watch([first], seen, recursive=False)

    assert watcher.watch_now([str(later), str(first)])
    (later / "mod.py").write_text("x = 1\n")  # at once: no wait for the watcher's thread
    assert wait_until(lambda: seen.saw(later / "mod.py"))
    assert watcher.watches == 2
    assert str(later) in watcher.paths
    assert not any(batch.rescan for batch in seen.snapshot())

    # What it cannot add at once is left to set_paths: a folder that does not exist.
    assert not watcher.watch_now([str(missing)])
    # A later rebuild keeps the folder watch_now added.
    watcher.set_paths([*watcher.paths, str(tmp_path)])
    assert watcher.wait_ready(DEADLINE)
    mark = seen.mark()
    (later / "mod.py").write_text("x = 2\n")
    assert wait_until(lambda: seen.saw(later / "mod.py", since=mark))


def test_watch_now_leaves_a_recursive_watch_to_set_paths(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    watcher = watch([tmp_path / "a"], Recorder())
    assert not watcher.watch_now([str(tmp_path / "b")])
    assert watcher.watches == 1


def test_stop_is_prompt_and_leaves_no_thread_and_no_descriptor(
    tmp_path: Path, watch: Callable[..., InotifyWatcher]
) -> None:
    before = set(os.listdir("/proc/self/fd"))
    watcher = watch([tmp_path], Recorder())
    time.sleep(0.05)  # asleep in poll() with no timeout
    started = time.monotonic()
    watcher.stop(timeout=2.0)
    assert time.monotonic() - started < 0.5
    assert not watcher.running
    assert not [t for t in threading.enumerate() if t.name == "relmod-watch-inotify"]
    assert set(os.listdir("/proc/self/fd")) <= before

    primed = InotifyWatcher([str(tmp_path)], Recorder())
    primed.prime()
    primed.stop()  # never started: stop closes what prime opened
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_watcher_run_by_its_callers_loop_reports_on_that_thread_and_gathers_bursts(
    tmp_path: Path,
) -> None:
    """The broker's way: no thread of the watcher's own; the caller polls the descriptor,
    waits at most due_in(), calls step(), and on_change runs on the caller's thread."""
    import select

    before = set(os.listdir("/proc/self/fd"))
    batches: list[tuple[ChangeBatch, int]] = []
    watcher = InotifyWatcher(
        [str(tmp_path)], lambda b: batches.append((b, threading.get_ident())), step_ms=50
    )
    fd = watcher.start_in_caller()
    assert watcher.wait_ready(0) and not watcher.running  # live at once, and no thread
    with pytest.raises(RuntimeError, match="already"):
        watcher.start()
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def run_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < deadline, batches
            wait = watcher.due_in()
            left = deadline - time.monotonic()
            poller.poll(max(1, int(1000 * (left if wait is None else min(wait, left)))))
            watcher.step()

    assert watcher.due_in() is None  # idle: nothing due, the caller may sleep until an event
    (tmp_path / "a.py").write_text("A = 1\n")
    run_until(lambda: len(batches) == 1)
    assert batches[0][0].paths == {str(tmp_path / "a.py")}
    assert batches[0][1] == threading.get_ident()

    # A burst: the files after the first wait for a quiet step, which due_in() tells the loop.
    for name in ("b.py", "c.py", "d.py"):
        (tmp_path / name).write_text("B = 1\n")
    run_until(
        lambda: (
            set().union(*(b.paths for b, _ in batches))
            >= {str(tmp_path / n) for n in ("a.py", "b.py", "c.py", "d.py")}
        )
    )
    assert len(batches) <= 3 and watcher.due_in() is None
    watcher.stop()  # no thread to join: it closes the descriptors
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_used_up_watch_limit_falls_back_to_polling_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "pkg").mkdir()
    real_add = Inotify.add_watch

    def add_watch(self: Inotify, path: str, mask: int) -> int:
        if path.endswith("pkg"):
            raise OSError(errno.ENOSPC, "inotify_add_watch failed: No space left on device.")
        return real_add(self, path, mask)

    monkeypatch.setattr(Inotify, "add_watch", add_watch)
    monkeypatch.delenv("RELMOD_POLL", raising=False)
    monkeypatch.delenv("RELMOD_WATCHER", raising=False)
    before = set(os.listdir("/proc/self/fd"))
    with caplog.at_level(logging.INFO, logger="relmod.watch"):
        watcher = find_default_watcher([str(tmp_path)], Recorder())
    assert watcher.backend == "polling"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "inotify" in warning[0] and "No space left" in warning[0]
    assert any(
        "polling" in r.getMessage() and "inotify failed" in r.getMessage() for r in caplog.records
    )
    assert set(os.listdir("/proc/self/fd")) <= before  # the failed instance was closed


def test_a_folder_refused_at_run_time_is_logged_and_the_rest_keeps_working(
    tmp_path: Path,
    watch: Callable[..., InotifyWatcher],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()
    watcher = watch([tmp_path], seen)
    real_add = Inotify.add_watch

    def add_watch(self: Inotify, path: str, mask: int) -> int:
        if path.endswith("toomany"):
            raise inotify_kernel.os_error(errno.ENOSPC, f"inotify_add_watch on {path}")
        return real_add(self, path, mask)

    monkeypatch.setattr(Inotify, "add_watch", add_watch)
    (tmp_path / "toomany").mkdir()
    (tmp_path / "fine.py").write_text("x = 1\n")
    assert wait_until(lambda: seen.saw(tmp_path / "fine.py", tmp_path / "toomany"))
    assert watcher.backend_errors == 1 and watcher.running
    assert any("max_user_watches" in r.getMessage() for r in caplog.records)


IDLE_PROBE = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    from relmod.watch import InotifyWatcher

    watcher = InotifyWatcher([sys.argv[1]], lambda batch: None)
    watcher.start()
    assert watcher.wait_ready(5)
    thread = next(t for t in threading.enumerate() if t.name == "relmod-watch-inotify")

    def switches():
        with open(f"/proc/self/task/{thread.native_id}/status") as status:
            return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    time.sleep(0.2)
    cpu0, switches0 = cpu(), switches()
    time.sleep(2.0)
    cpu1, switches1 = cpu(), switches()
    watcher.stop()
    print(json.dumps({"cpu": cpu1 - cpu0, "wakeups": switches1 - switches0}))
    """
)


def test_an_idle_watcher_uses_no_cpu_and_never_wakes(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"pkg{i}").mkdir()
        (tmp_path / f"pkg{i}" / "m.py").write_text("x = 1\n")
    result = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    idle = json.loads(result.stdout)
    assert idle["cpu"] < 0.020, idle  # over 2 s; watchfiles at step=3 ms wakes ~660 times
    assert idle["wakeups"] <= 2, idle
