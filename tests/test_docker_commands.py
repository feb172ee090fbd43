"""docker/compose.yaml, run outside Docker: the exact commands and environment of its services,
against a temporary copy of the example project, with container paths mapped to temporary
folders. Also the worker entry those services run, ``python -m relmod.workers``."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import child_env, wait_for

from relmod.connfile import connection_path, read_connection_file, root_id
from relmod.workers import main as worker_main

pytestmark = pytest.mark.timeout(120)

DOCKER = Path(__file__).resolve().parent.parent / "docker"
PROJECT, RUNTIME = "/project", "/run/relmod"  # the container paths compose.yaml uses


def read_services(text: str) -> dict[str, dict[str, Any]]:
    """``{service: {"command": [...], "environment": {...}}}`` from compose.yaml.

    A parser for the shape compose.yaml keeps (see its header): services at indent 2, their
    keys at indent 4, environment entries at indent 6; commands are one-line JSON lists.
    """
    services: dict[str, dict[str, Any]] = {}
    section = service = key = None
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name, _, value = line.strip().partition(":")
        value = value.strip()
        if indent == 0:
            section = name
        elif section == "services" and indent == 2:
            service = name
            services[service] = {"environment": {}}
        elif section == "services" and indent == 4 and service:
            key = name
            if key == "command":
                services[service]["command"] = json.loads(value)
        elif section == "services" and indent == 6 and service and key == "environment":
            services[service]["environment"][name] = json.loads(value)
    return services


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    text = (DOCKER / "compose.yaml").read_text()
    parsed = read_services(text)
    try:
        import yaml
    except ImportError:
        return parsed
    full = yaml.safe_load(text)["services"]  # the tiny parser must agree with a real one
    for name, service in full.items():
        assert parsed[name]["command"] == service["command"]
        assert parsed[name]["environment"] == service.get("environment", {})
    return parsed


def test_compose_runs_a_polling_broker_and_workers_on_a_shared_runtime_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    broker, worker = services["broker"], services["worker"]
    assert broker["command"][:2] == ["relmod-broker", "--poll"]
    assert broker["command"][-1] == PROJECT
    for service in (broker, worker):
        assert service["environment"]["RELMOD_POLL"] == "1"
        assert service["environment"]["RELMOD_RUNTIME_DIR"] == RUNTIME
    # The file the broker of /project writes, as relmod computes it inside a container.
    assert worker["environment"]["RELMOD_BROKER"] == f"{RUNTIME}/{root_id(PROJECT)}.json"
    assert worker["command"][:3] == ["python", "-m", "relmod.workers"]


class Process:
    """A service's command running here, its stdout lines collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.log: list[str] = []  # stderr, read too so that a full pipe never blocks it
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.log.append)),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, put: Any) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def printed(self, text: str) -> bool:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return any(text in line for line in self.seen)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # what `docker compose down` sends
        code = self.proc.wait(15)
        for reader in self.readers:
            reader.join(5)  # they end with the pipes
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict[str, Path]]:
    project = tmp_path / "project"
    shutil.copytree(DOCKER / "example", project, ignore=shutil.ignore_patterns("__pycache__"))
    yield {"project": project.resolve(), "runtime": tmp_path / "runtime"}


def on_host(value: str, host: dict[str, Path]) -> str:
    """A container path or command word, as it is outside the container."""
    project, runtime = str(host["project"]), str(host["runtime"])
    container_file = f"{RUNTIME}/{root_id(PROJECT)}.json"
    if value == container_file:
        return f"{runtime}/{root_id(project)}.json"
    if value == "python":
        return sys.executable
    if value == "relmod-broker":
        found = shutil.which("relmod-broker", path=os.path.dirname(sys.executable))
        assert found, "relmod-broker is not installed next to this interpreter"
        return found
    return value.replace(RUNTIME, runtime).replace(PROJECT, project)


def start(service: dict[str, Any], host: dict[str, Path]) -> Process:
    env = child_env(**{k: on_host(v, host) for k, v in service["environment"].items()})
    argv = [on_host(word, host) for word in service["command"]]
    return Process(argv, env, host["project"])


def test_the_services_commands_run_and_an_edit_reaches_every_worker(
    services: dict[str, dict[str, Any]], host: dict[str, Path]
) -> None:
    # Workers first: in Docker they may start before the broker, and must wait for it.
    workers = [start(services["worker"], host) for _ in range(2)]
    broker = start(services["broker"], host)
    try:
        os.environ["RELMOD_RUNTIME_DIR"] = str(host["runtime"])
        path = connection_path(str(host["project"]))
        wait_for(
            lambda: path.exists() and read_connection_file(path)["pid"] == broker.proc.pid,
            30,
            "the broker's connection file",
        )
        for w in workers:
            wait_for(lambda w=w: w.printed("-> 'hello from version 1'"), 30, "a first result")

        greeting = host["project"] / "greeting.py"
        tmp = greeting.with_suffix(".tmp~")
        tmp.write_text('TEXT = "hello from version 2"\n')
        os.replace(tmp, greeting)
        for w in workers:
            wait_for(lambda w=w: w.printed("-> 'hello from version 2'"), 30, "the edit")
            assert sum("->" in line for line in w.seen) == 2, w.seen  # printed on change only
            # Through the broker, not a watcher of its own.
            assert any("connected to the relmod broker" in line for line in w.log), w.log

        # A broken save: every worker logs it and keeps printing nothing new (old code runs).
        tmp.write_text('TEXT = "unterminated\n')
        os.replace(tmp, greeting)
        for w in workers:
            wait_for(lambda w=w: any("SyntaxError" in line for line in w.log), 30, "a log")
        tmp.write_text('TEXT = "hello from version 3"\n')
        os.replace(tmp, greeting)
        for w in workers:
            wait_for(lambda w=w: w.printed("-> 'hello from version 3'"), 30, "the fix")
            assert not any("raised" in line for line in w.seen), w.seen
    finally:
        codes = [w.stop() for w in workers] + [broker.stop()]
    assert codes == [0, 0, 0], codes


# -- the worker entry, in this process -------------------------------------------------------


def test_the_worker_entry_prints_each_new_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.py").write_text("def run():\n    return 41 + 1\n")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert worker_main([f"{tmp_path}/job.py:run", "--count", "3", "--every", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith(f"{tmp_path}/job.py:run() -> 42"), out
    # Its SIGTERM handler must not outlive it: forked pool workers would ignore terminate().
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_worker_entry_reports_errors_and_bad_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.py").write_text("def run():\n    raise KeyError('k')\n")
    assert worker_main([f"{tmp_path}/job.py:run", "--count", "2", "--every", "0"]) == 0
    assert capsys.readouterr().out.strip().endswith("raised KeyError: 'k'")
    assert worker_main([f"{tmp_path}/missing.py:run", "--count", "1"]) == 1
    assert "missing.py" in capsys.readouterr().err
    assert worker_main(["no-colon"]) == 1
    assert worker_main(["--every"]) == 2
