"""``relmod demo``: one broker, four workers, and a module edited while they run.

The demonstration creates a small project in a temporary folder, starts a broker and four worker
processes that print what they compute, then edits a module on a timer: a good edit, a broken
edit, and the fix. Every line it prints says what happened, so someone who has never heard of
relmod can follow it. It cleans up after itself and exits 0 when every step was seen.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

PRICING_V1 = '''\
"""Prices: the module we edit while the workers run."""
VERSION = "v1: 10% tax"

def price(amount):
    return round(amount * 1.10, 2)
'''
PRICING_V2 = PRICING_V1.replace("v1: 10% tax", "v2: 20% tax").replace("1.10", "1.20")
PRICING_BROKEN = PRICING_V2.replace("v2: 20% tax", "v3").replace("return round(", "return round((")
PRICING_V3 = PRICING_V1.replace("v1: 10% tax", "v3: 5% tax plus a 2.00 fee").replace(
    "round(amount * 1.10, 2)", "round(amount * 1.05 + 2.00, 2)"
)
ORDERS = '''\
"""Orders: depends on pricing, so it reloads after pricing does."""
from .pricing import price, VERSION

def total(amounts):
    return round(sum(price(a) for a in amounts), 2)
'''

WORKER_CODE = """
import os, sys, time
import relmod

root, ident = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
conn = relmod.connect(root)         # all a worker needs
relmod.configure(on_error='keep')   # a worker logs a broken edit and keeps the last good code
from shop import orders             # the project, imported the ordinary way
while True:
    broken = conn.status()['broken']
    held = '; '.join(f"line {b['lineno']}: {b['message']}" for b in broken.values())
    held = held.replace('|', '/').replace(chr(10), ' ')
    print(f'{ident}|{orders.total([10, 20, 30])}|{orders.VERSION}|{held}|{os.getpid()}', flush=True)
    time.sleep(0.1)
"""


class Demo:
    """Runs the demonstration and narrates it."""

    def __init__(self, workers: int, pace: float) -> None:
        self.n_workers = workers
        self.pace = pace
        self.root = Path(tempfile.mkdtemp(prefix="relmod-demo-")).resolve()
        self.started = time.monotonic()
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        self.broker: subprocess.Popen[str] | None = None
        self.last: dict[str, tuple[str, str, int]] = {}
        self.held: dict[str, str] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}", flush=True)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.cleanup()

    def _run(self) -> int:
        (self.root / "shop").mkdir()
        (self.root / "shop" / "__init__.py").write_text("# A small shop.\n")
        (self.root / "shop" / "pricing.py").write_text(PRICING_V1)
        (self.root / "shop" / "orders.py").write_text(ORDERS)
        self.say(
            f"Created a project in {self.root}: the package shop, with shop/pricing.py and "
            f"shop/orders.py, which imports it."
        )
        self.start_broker()
        self.start_workers()
        if not self.wait_all(lambda v, h: v.startswith("v1"), 30, "start"):
            return 1
        self.say(
            f"All {self.n_workers} workers compute orders.total([10, 20, 30]) with pricing v1."
        )
        self.pause()

        self.say(
            "EDIT 1: saving shop/pricing.py with a new tax rate (v2), while the workers run ..."
        )
        saved = time.monotonic()
        self.save(PRICING_V2)
        if not self.wait_all(lambda v, h: v.startswith("v2"), 20, "the good edit", since=saved):
            return 1
        self.say("Every worker switched to v2 on its next call: no restart, no polling.")
        self.pause()

        self.say("EDIT 2: saving a BROKEN shop/pricing.py (a syntax error) ...")
        saved = time.monotonic()
        self.save(PRICING_BROKEN)
        if not self.wait_all(
            lambda v, h: v.startswith("v2") and h, 20, "the broken edit", since=saved
        ):
            return 1
        for ident in sorted(self.last):
            value, version, _pid = self.last[ident]
            self.say(
                f"  worker {ident}: still {value} [pricing {version}]; held back: "
                f"{self.held[ident]}"
            )
        self.say(
            "The broker compiled the save, found the error and held it back: every worker "
            "keeps running the last good code (v2)."
        )
        self.pause()

        self.say("EDIT 3: saving the fix (v3) ...")
        saved = time.monotonic()
        self.save(PRICING_V3)
        if not self.wait_all(lambda v, h: v.startswith("v3") and not h, 20, "the fix", since=saved):
            return 1
        self.say("Recovered: every worker runs v3. Same processes throughout:")
        for ident in sorted(self.last):
            value, version, pid = self.last[ident]
            self.say(f"  worker {ident} (pid {pid}) -> {value}  [{version}]")
        self.say("Demo complete. Cleaning up the broker, the workers and the temporary project.")
        return 0

    def pause(self) -> None:
        end = time.monotonic() + self.pace
        while time.monotonic() < end:
            self.drain(0.05)

    def save(self, text: str) -> None:
        tmp = self.root / "shop" / ".pricing.py.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.root / "shop" / "pricing.py")  # how editors save: write, rename

    def start_broker(self) -> None:
        from relmod.connfile import connection_path, read_connection_file

        self.broker = subprocess.Popen(
            [sys.executable, "-m", "relmod.server", str(self.root), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        path = connection_path(str(self.root))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if read_connection_file(path)["pid"] == self.broker.pid:
                    self.say(
                        f"Started relmod-broker (pid {self.broker.pid}): it watches the "
                        f"project and publishes what changed."
                    )
                    return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("the broker did not start within 30 s")

    def start_workers(self) -> None:
        for i in range(1, self.n_workers + 1):
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER_CODE, str(self.root), str(i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        self.say(
            f"Started {self.n_workers} worker processes; each called relmod.connect() and "
            f"imports the project the ordinary way: from shop import orders."
        )

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    def drain(self, timeout: float) -> list[tuple[float, str, str, str, int]]:
        """Read the workers' lines; print a line when a worker's pricing version changes."""
        seen = []
        try:
            when, line = self.lines.get(timeout=timeout)
            while True:
                parts = line.split("|")
                if len(parts) == 5:
                    ident, value, version, held, pid = parts
                    previous = self.last.get(ident)
                    self.last[ident] = (value, version, int(pid))
                    self.held[ident] = held
                    if previous is None or previous[1] != version:
                        self.say(
                            f"  worker {ident}: orders.total([10, 20, 30]) = {value:>6}"
                            f"   [pricing {version}]"
                        )
                    seen.append((when, ident, version, held, int(pid)))
                when, line = self.lines.get_nowait()
        except queue.Empty:
            pass
        return seen

    def wait_all(self, ok, timeout: float, what: str, since: float | None = None) -> bool:  # type: ignore[no-untyped-def]
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(done) < self.n_workers:
            for when, ident, version, held, _pid in self.drain(0.1):
                if ident not in done and ok(version, held):
                    done[ident] = when
        if len(done) < self.n_workers:
            self.say(f"FAILED: only {len(done)} of {self.n_workers} workers showed {what}.")
            return False
        if since is not None:
            worst = max(done.values()) - since
            self.say(
                f"  (all {self.n_workers} workers showed it within {worst * 1000:.0f} ms "
                f"of the save, counting their 100 ms print interval)"
            )
        return True

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self.broker is not None:
            self.broker.terminate()
            try:
                self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; returns 0 when every step was seen.

    Example:
        $ relmod demo
    """
    parser = argparse.ArgumentParser(prog="relmod demo", description=textwrap.dedent(__doc__ or ""))
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--pace", type=float, default=1.5, help="seconds between steps")
    args = parser.parse_args(argv)
    return Demo(args.workers, args.pace).run()


if __name__ == "__main__":
    sys.exit(main())
