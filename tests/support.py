"""Real processes for end-to-end tests: a broker, and workers driven over stdin/stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relmod.watch import ChangeBatch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "worker_main.py"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return bool(condition())


def wait_child(pid: int, timeout: float) -> int | None:
    """Wait for a forked child's exit code; None when it is still running after ``timeout``
    seconds (it hangs: it is killed then)."""
    deadline = time.monotonic() + timeout
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)
    return os.waitstatus_to_exitcode(done[1])


class Recorder:
    """A watcher's on_change callback that keeps every batch, and when it arrived."""

    def __init__(self) -> None:
        self.batches: list[ChangeBatch] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, batch: ChangeBatch) -> None:
        with self._lock:
            self.batches.append(batch)
            self.times.append(time.perf_counter())

    def snapshot(self) -> list[ChangeBatch]:
        with self._lock:
            return list(self.batches)

    def mark(self) -> int:
        """How many batches came so far (for ``since``)."""
        return len(self.snapshot())

    def paths(self, since: int = 0) -> set[str]:
        return {p for batch in self.snapshot()[since:] for p in batch.paths}

    def saw(self, *paths: Path | str, since: int = 0) -> bool:
        return {str(p) for p in paths} <= self.paths(since)

    def rescans(self, since: int = 0) -> int:
        return sum(batch.rescan for batch in self.snapshot()[since:])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # No empty entry: an empty PYTHONPATH item would put the child's cwd on its path.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def broker_status(root: Path) -> dict[str, Any]:
    """``relmod status ROOT --json`` in its own process, as a user would ask the broker."""
    out = subprocess.run(
        [sys.executable, "-m", "relmod", "status", str(root), "--json"],
        capture_output=True, text=True, env=child_env(), timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Broker:
    """A real ``relmod-broker`` process serving ``root``."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.args = args
        self.env = env or child_env()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> Broker:
        from relmod.connfile import connection_path, read_connection_file

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relmod.server", str(self.root), *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        path = connection_path(str(self.root))

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"broker exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                return read_connection_file(path)["pid"] == self.proc.pid  # type: ignore[union-attr]
            except Exception:
                return False

        wait_for(ready, timeout, "the broker's connection file")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


class Worker:
    """A Python process running tests/worker_main.py, answering one JSON command per line."""

    def __init__(self, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=env or child_env(),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Run one command in the worker; ``timeout`` is the command's own (connect, sync,
        wait_value), passed on when given."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if timeout is not None:
            args["timeout"] = timeout
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"worker {self.proc.pid} died during {op}: {err}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply["result"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def close(self, timeout: float = 15.0) -> int:
        """Ask the worker to exit; returns its exit status (fails the test if it hangs)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"worker {self.proc.pid} hung at exit") from None
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


class LineWorker:
    """A process that runs ``code`` (``python -c``), then writes one line per line it reads."""

    def __init__(
        self, code: str, cwd: Path, env: dict[str, str] | None = None, user: int | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=cwd,
            env=env or child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            user=user,
            group=user,
        )

    def read(self) -> str:
        """The process's next line (fails the test, with its stderr, if it died)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"worker {self.proc.pid} died: {err}")
        return line.strip()

    def ask(self, line: str = "") -> str:
        """Send one line; the line the process answers."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self, *, must_end: bool = False) -> str:
        """Close its stdin and wait for it to end, reading what it still writes (killed after
        15 s, which fails the test when ``must_end``); returns what it wrote on stderr."""
        try:
            _out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
            if must_end:
                raise AssertionError(
                    f"worker {self.proc.pid} did not end when its stdin closed"
                ) from None
        return err


class WorkerError(Exception):
    """An operation failed inside a worker."""


class FileView:
    """Reads the broker's file ids as a client does (tests speak paths): it learns ids from
    full answers, ``changed``/``files`` and ``names``, and turns id sets back into paths.

    Example::

        view = FileView()
        view.full_table(probe.request)          # every id, with every file's hash
        message = probe.next("invalidate")
        view.affected(message.body)             # {'/proj/leaf.py', '/proj/top.py'}
    """

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}

    def learn(self, body: dict[str, Any]) -> dict[str, str | None]:
        """Learn the ids an ``invalidate``, ``changes`` or ``hashes`` body names; returns the
        hashes it carries, by path."""
        files = body["changed"] if "changed" in body else body["files"]
        for file_id, path, _ in files:
            self.paths[file_id] = path
        for file_id, path in body["names"]:
            self.paths[file_id] = path
        return {path: digest for _, path, digest in files}

    def affected(self, body: dict[str, Any]) -> set[str]:
        """The paths of a body's ``affected`` ids (learning what it names first)."""
        from relmod.protocol import unpack_ids

        self.learn(body)
        return {self.paths[file_id] for file_id in unpack_ids(body["affected"])}

    def changed(self, body: dict[str, Any]) -> list[str]:
        """The paths an ``invalidate`` announces as changed, in its order."""
        self.learn(body)
        return [path for _, path, _ in body["changed"]]

    def full_table(self, request: Callable[..., Any]) -> dict[str, str | None]:
        """Ask for the whole table (``since`` from another epoch, then every page) with
        ``request(kind, body)`` returning the reply; returns every file's hash by path."""
        body = request("since", {"epoch": "", "seq": 0}).body
        assert body["full"] is True, body
        hashes = self.learn(body)
        after = body["next"]
        while after is not None:
            page = request("hashes", {"after": after}).body
            hashes.update(self.learn(page))
            after = page["next"]
        return hashes
