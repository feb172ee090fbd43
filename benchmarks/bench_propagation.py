"""Write-to-stale latency across many real client processes, and their idle cost.

A real broker serves a small project; N client processes (default 32) call ``relmod.connect()``,
load ``leaf.py`` and ``top.py`` (which imports it), and register an invalidation listener that
prints ``time.time()`` the moment their feed thread has marked the modules stale. The driver
saves ``leaf.py`` (atomically, as editors do) E times, spaced so that the broker's burst pacing
never applies, and records for each save the time until the LAST client had marked it stale.

It then measures the idle CPU of the clients and of the broker over a quiet period, from
``/proc/<pid>/stat``.

Run:
    .venv/bin/python benchmarks/bench_propagation.py [--clients 32] [--edits 40] [--quick]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENT = r"""
import sys, time, relmod
from relmod.client.session import default_client
root = sys.argv[1]
relmod.connect(root)
top = relmod.at(root + '/top.py')
top.VALUE
def on_invalidate(keys):
    print('stale', time.time(), flush=True)
default_client().registry.add_invalidate_listener(on_invalidate)
print('ready', flush=True)
for line in sys.stdin:
    if line.strip() == 'use':
        top.VALUE   # reload now, as a worker's next call would
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    parser.add_argument("--quick", action="store_true", help="8 clients, 15 edits, 3 s idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.edits, args.idle = 8, 15, 3.0

    from relmod.connfile import connection_path, read_connection_file

    root = Path(tempfile.mkdtemp(prefix="relmod-bench-prop-")).resolve()
    (root / "leaf.py").write_text("VALUE = 0\n")
    (root / "top.py").write_text("from .leaf import VALUE\n")
    env = dict(os.environ)
    broker = subprocess.Popen(
        [sys.executable, "-m", "relmod.server", str(root), "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if read_connection_file(connection_path(str(root)))["pid"] == broker.pid:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        marks: queue.Queue[tuple[int, float]] = queue.Queue()
        for i in range(args.clients):
            proc = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(root)],
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            clients.append(proc)
        for proc in clients:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a client did not start")

        def read(index: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if parts and parts[0] == "stale":
                    marks.put((index, float(parts[1])))

        for index, proc in enumerate(clients):
            threading.Thread(target=read, args=(index, proc), daemon=True).start()

        all_marked: list[float] = []
        each: list[float] = []
        missing = 0
        for edit in range(1, args.edits + 1):
            tmp = root / ".leaf.py.tmp"
            tmp.write_text(f"VALUE = {edit}\n")
            written = time.time()
            os.replace(tmp, root / "leaf.py")
            seen: dict[int, float] = {}
            until = time.monotonic() + 5
            while len(seen) < len(clients) and time.monotonic() < until:
                try:
                    index, when = marks.get(timeout=0.1)
                except queue.Empty:
                    continue
                seen.setdefault(index, when)
            if len(seen) < len(clients):
                missing += len(clients) - len(seen)
            else:
                latencies = [(t - written) * 1000 for t in seen.values()]
                each.extend(latencies)
                all_marked.append(max(latencies))
            for proc in clients:  # every client uses the module: the next save marks it again
                assert proc.stdin is not None
                proc.stdin.write("use\n")
                proc.stdin.flush()
            time.sleep(1.2)  # longer than the broker's burst pacing: every save stands alone

        time.sleep(1.0)
        before = {p.pid: cpu_seconds(p.pid) for p in clients}
        broker_before = cpu_seconds(broker.pid)
        time.sleep(args.idle)
        client_pct = [(cpu_seconds(p.pid) - before[p.pid]) / args.idle * 100 for p in clients]
        broker_pct = (cpu_seconds(broker.pid) - broker_before) / args.idle * 100

        print(f"\n{len(clients)} client processes, {args.edits} saves, on {os.cpu_count()} cores\n")
        print("| measurement | median | p99 | max |")
        print("| --- | ---: | ---: | ---: |")
        if all_marked:
            print(
                f"| write -> every client marked stale (ms) | {statistics.median(all_marked):.1f} "
                f"| {percentile(all_marked, 0.99):.1f} | {max(all_marked):.1f} |"
            )
            print(
                f"| write -> one client marked stale (ms) | {statistics.median(each):.1f} "
                f"| {percentile(each, 0.99):.1f} | {max(each):.1f} |"
            )
        print(
            f"| idle client CPU (% of a core, {args.idle:.0f} s) | "
            f"{statistics.median(client_pct):.3f} | {percentile(client_pct, 0.99):.3f} | "
            f"{max(client_pct):.3f} |"
        )
        print(f"| idle broker CPU (% of a core) | {broker_pct:.2f} | | |")
        print(f"\nmarks missing (a client never marked within 5 s): {missing}")
        return 0 if missing == 0 else 1
    finally:
        for proc in clients:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    sys.exit(main())
