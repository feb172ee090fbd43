"""Real processes for the soak: the broker and the soak workers, their logs in files.

Unlike ``tests/support.py`` (whose processes write stderr to a pipe nobody reads, fine for a short
test), a soak runs for minutes and its broker logs every invalidation: every log goes to a file so
that no process ever blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relmod.cli import ask
from relmod.connfile import ConnectionInfo, connection_path, read_connection_file

HERE = Path(__file__).resolve().parent
WORKER = HERE / "soak_worker.py"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in kB, from /proc; {} when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


class BrokerProc:
    """One ``python -m relmod.server ROOT`` process at a time, restartable, logging to a file."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        self.root = root
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.peak_rss_kb = 0
        self.starts = 0

    def start(self) -> None:
        """Start a broker; returns at once (see :meth:`wait_ready`)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relmod.server", str(self.root)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.ready = False
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def info(self) -> ConnectionInfo:
        return read_connection_file(connection_path(str(self.root)))

    def is_ready(self) -> bool:
        """Whether the running broker wrote its connection file (it then answers requests)."""
        if self.ready:
            return True
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            raise RuntimeError(f"the broker exited with {self.proc.returncode}; see {self.log}")
        try:
            self.ready = self.info()["pid"] == self.proc.pid
        except Exception:
            return False
        return self.ready

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker was not ready within {timeout}s; see {self.log}")
            time.sleep(0.02)

    def sample(self) -> None:
        """Note the peak RSS the kernel recorded for the running broker."""
        proc = self.proc  # the driver's thread may kill and forget it meanwhile
        if proc is not None and proc.poll() is None:
            hwm = proc_status(proc.pid).get("VmHWM", 0)
            self.peak_rss_kb = max(self.peak_rss_kb, hwm)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sample()
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None  # gone on purpose: not ready, and not a failure to report
        self.ready = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sample()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.ready = False

    def request(self, kind: str, expect: str, timeout: float = 10.0) -> dict[str, Any]:
        """One request to the running broker, as ``relmod status`` sends it; the reply body."""
        return ask(self.info(), kind, {}, expect, timeout=timeout).body


class WorkerProc:
    """A soak worker process; one thread reads its stdout so that calls can time out."""

    def __init__(self, manifest: Path, env: dict[str, str], log: Path, name: str) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(manifest)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                bufsize=1,
            )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stopped = False
        self.ready_reply: dict[str, Any] | None = None
        threading.Thread(target=self._read, daemon=True, name=f"read-{name}").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.put(line)
        finally:
            self.lines.put(None)
            self.proc.stdout.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _next_line(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) gave no answer to {what} "
                f"within {timeout}s; see {self.log}"
            ) from None
        if line is None:
            raise RuntimeError(f"{self.name} (pid {self.pid}) died during {what}; see {self.log}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        if self.ready_reply is None:
            self.ready_reply = self._next_line(timeout, "start-up")
        return self.ready_reply

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        self.wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._next_line(timeout, op)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {op} failed: {reply['error']}")
        return reply["result"]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close_streams()

    def close(self, timeout: float = 15.0) -> int:
        """Ask the worker to exit; kill it when it does not (returns its exit status)."""
        if self.stopped:
            self.signal(signal.SIGCONT)
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_streams()
        return self.proc.returncode

    def _close_streams(self) -> None:
        # stdout belongs to the reader thread, which closes it at end of file.
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
