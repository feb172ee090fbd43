"""Detection latency of one write, for each watcher backend.

Starts a watcher on a small temporary project, saves one file at a time and measures the time from
the end of the write to the on_change call that names the file. The polling backend is sampled at
a random phase of its interval, so its median is about interval / 2 plus one walk.

Run: python benchmarks/bench_watch.py [--writes 20] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from relmod.watch import ChangeBatch, PollingWatcher, WatchfilesWatcher


def measure(backend: str, writes: int, interval: float) -> list[float]:
    """Return the latency in seconds of each of ``writes`` saves."""
    with tempfile.TemporaryDirectory(prefix="relmod-bench-") as folder:
        root = Path(folder)
        for i in range(50):  # a small project, so the polling walk is realistic but short
            (root / "pkg" / f"sub{i % 5}").mkdir(parents=True, exist_ok=True)
            (root / "pkg" / f"sub{i % 5}" / f"m{i}.py").write_text(f"x = {i}\n")
        target = root / "pkg" / "target.py"
        target.write_text("x = 0\n")
        seen_at: list[float] = []
        arrived = threading.Event()

        def on_change(batch: ChangeBatch) -> None:
            if str(target) in batch.paths:
                seen_at.append(time.perf_counter())
                arrived.set()

        watcher: WatchfilesWatcher | PollingWatcher
        if backend == "watchfiles":
            watcher = WatchfilesWatcher([folder], on_change)
        else:
            watcher = PollingWatcher([folder], on_change, interval=interval)
        watcher.start()
        latencies: list[float] = []
        try:
            if not watcher.wait_ready(10.0):
                raise SystemExit(f"the {backend} watcher did not become ready")
            for n in range(writes):
                # Let the previous batch close, and land at a random phase of the poll interval.
                time.sleep(0.05 + (random.uniform(0, interval) if backend == "polling" else 0))
                arrived.clear()
                target.write_text(f"x = {n + 1}\n")
                written = time.perf_counter()
                if not arrived.wait(10.0):
                    raise SystemExit(f"the {backend} watcher missed write {n}")
                latencies.append(seen_at[-1] - written)
        finally:
            watcher.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="polling interval, seconds")
    args = parser.parse_args()
    rows = []
    for backend in ("watchfiles", "polling"):
        ms = sorted(x * 1000 for x in measure(backend, args.writes, args.interval))
        rows.append(
            (backend, len(ms), statistics.median(ms), ms[0], ms[int(0.9 * (len(ms) - 1))], ms[-1])
        )
    print(f"{'backend':<12}{'writes':>7}{'median ms':>11}{'min ms':>9}{'p90 ms':>9}{'max ms':>9}")
    for name, n, med, low, p90, high in rows:
        print(f"{name:<12}{n:>7}{med:>11.1f}{low:>9.1f}{p90:>9.1f}{high:>9.1f}")
    print(f"(watchfiles: step 10 ms, debounce 1600 ms; polling: interval {args.interval} s)")


if __name__ == "__main__":
    main()
