"""Detection latency of one save and idle cost, for each watcher backend and for raw inotify.

In one run, on one small temporary project (50 files in 5 folders), measures:

- ``raw inotify``: the floor. A minimal ctypes loop: one inotify watch on the folder, a thread
  blocked in ``os.read`` on the descriptor, an ``Event`` set when ``IN_CLOSE_WRITE`` names the file.
- ``inotify``: :class:`relmod.watch.InotifyWatcher` (the Linux default), at the broker's
  ``step_ms=3``.
- ``watchfiles``: :class:`relmod.watch.WatchfilesWatcher` with ``step_ms=3`` (the broker's setting).
- ``polling``: :class:`relmod.watch.PollingWatcher` at ``--interval``, each save landing at a
  random phase of the interval (its median is about interval / 2 plus one walk).

Saves are made by a separate writer process, as an editor would (in one process, the watcher
thread competes with the saving thread for the GIL). Latency is the time from the writer's
``close()`` that completes a save (it takes a timestamp just before; ``time.perf_counter`` is
the system-wide monotonic clock on Linux) to the callback that names the file, over ``--writes``
saves ``--gap`` apart.
Idle cost is the process CPU time and the number of context switches of all its threads (each one
a wake-up) over ``--idle`` seconds with the watcher running and nothing changing.

Run: python benchmarks/bench_watch.py [--writes 50] [--idle 3] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from relmod.watch import ChangeBatch, InotifyWatcher, PollingWatcher, WatchfilesWatcher

IN_CLOSE_WRITE = 0x8
BROKER_STEP_MS = 3


class RawInotify:
    """The floor: a blocking read on one inotify watch, and nothing else."""

    backend = "raw inotify"

    def __init__(self, folder: str, on_change: Callable[[ChangeBatch], None]) -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(os.O_CLOEXEC)  # blocking reads
        if self._fd < 0 or libc.inotify_add_watch(self._fd, folder.encode(), IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify setup failed")
        self._folder = folder
        self._on_change = on_change
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="raw-inotify", daemon=True)

    def _run(self) -> None:
        while True:
            data = os.read(self._fd, 4096)
            if self._stopping:
                return
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].split(b"\0", 1)[0]
                offset += 16 + length
                self._on_change(ChangeBatch(frozenset({os.path.join(self._folder, name.decode())})))

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        return True  # the watch exists since __init__

    def stop(self) -> None:
        self._stopping = True
        Path(self._folder, ".stop").write_text("")  # one more event unblocks the read
        self._thread.join(2)
        os.close(self._fd)


WRITER = """
import sys, time
from pathlib import Path
target = Path(sys.argv[1])
for line in sys.stdin:
    file = open(target, "w")
    file.write(f"x = {line.strip()}\\n")
    file.flush()
    closing = time.perf_counter()
    file.close()  # the kernel queues IN_CLOSE_WRITE here
    print(closing, flush=True)
"""


class Writer:
    """A separate process that saves the target file when asked, and says when it did."""

    def __init__(self, target: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def save(self, n: int) -> float:
        """Save once; returns when the writer began to close the file (shared monotonic clock)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{n}\n")
        self._process.stdin.flush()
        return float(self._process.stdout.readline())

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(5)


def make_project(root: Path) -> Path:
    for i in range(50):  # a small project, so the polling walk is realistic but short
        folder = root / "pkg" / f"sub{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i}.py").write_text(f"x = {i}\n")
    target = root / "pkg" / "target.py"
    target.write_text("x = 0\n")
    return target


def build(backend: str, root: Path, on_change: Callable[[ChangeBatch], None], interval: float):
    if backend == "raw inotify":
        return RawInotify(str(root / "pkg"), on_change)
    if backend == "inotify":
        return InotifyWatcher([str(root)], on_change, step_ms=BROKER_STEP_MS)
    if backend == "watchfiles":
        return WatchfilesWatcher([str(root)], on_change, step_ms=BROKER_STEP_MS)
    return PollingWatcher([str(root)], on_change, interval=interval)


def context_switches() -> int:
    """Voluntary and involuntary context switches of every thread of this process."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        except OSError:
            continue  # a thread that just ended
    return total


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(backend: str, args: argparse.Namespace) -> dict[str, float]:
    """Latencies (ms) of ``args.writes`` saves, then idle CPU % and wake-ups per second."""
    with tempfile.TemporaryDirectory(prefix="relmod-bench-") as folder:
        root = Path(folder)
        target = make_project(root)
        seen_at: list[float] = []
        arrived = threading.Event()

        def on_change(batch: ChangeBatch) -> None:
            if str(target) in batch.paths:
                seen_at.append(time.perf_counter())
                arrived.set()

        watcher = build(backend, root, on_change, args.interval)
        writer = Writer(target)
        watcher.start()
        latencies: list[float] = []
        try:
            if not watcher.wait_ready(10.0):
                raise SystemExit(f"the {backend} watcher did not become ready")
            polling = backend == "polling"
            for n in range(args.writes):
                # Let the previous batch close, and land at a random phase of the poll interval.
                time.sleep(args.gap + (random.uniform(0, args.interval) if polling else 0))
                arrived.clear()
                closing = writer.save(n + 1)
                if not arrived.wait(10.0):
                    raise SystemExit(f"the {backend} watcher missed save {n}")
                latencies.append((seen_at[-1] - closing) * 1000)
            time.sleep(0.5)  # let the last batch and its quiet period pass
            cpu, switches, started = cpu_seconds(), context_switches(), time.perf_counter()
            time.sleep(args.idle)
            elapsed = time.perf_counter() - started
            idle_cpu = (cpu_seconds() - cpu) / elapsed * 100
            wakeups = (context_switches() - switches) / elapsed
        finally:
            watcher.stop()
            writer.close()
    ms = sorted(latencies)
    return {
        "saves": len(ms),
        "median": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        "max": ms[-1],
        "idle_cpu": idle_cpu,
        "wakeups": wakeups,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--writes", type=int, default=50, help="saves per backend")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between saves")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle measurement")
    parser.add_argument("--interval", type=float, default=0.5, help="polling interval, seconds")
    parser.add_argument(
        "--backends",
        default="raw inotify,inotify,watchfiles,polling",
        help="comma-separated subset of: raw inotify, inotify, watchfiles, polling",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",")]
    if not sys.platform.startswith("linux"):
        backends = [b for b in backends if "inotify" not in b]
    rows = [(backend, measure(backend, args)) for backend in backends]
    print(
        f"{'backend':<13}{'saves':>6}{'median ms':>11}{'p99 ms':>9}{'max ms':>9}"
        f"{'idle CPU %':>12}{'wake-ups/s':>12}"
    )
    for name, r in rows:
        print(
            f"{name:<13}{r['saves']:>6.0f}{r['median']:>11.3f}{r['p99']:>9.3f}{r['max']:>9.3f}"
            f"{r['idle_cpu']:>12.2f}{r['wakeups']:>12.1f}"
        )
    print(
        f"(inotify and watchfiles: step {BROKER_STEP_MS} ms, debounce 1600 ms; polling: interval "
        f"{args.interval} s; idle over {args.idle} s, whole process: the main thread wakes once)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
