"""A real Jupyter kernel (ipykernel, driven by jupyter_client): save, then Shift-Enter at once.

Each save is followed by the next cell with no pause, as a person who saves in the editor and
runs the cell does. The modules are more than the cell hook's focus set holds, imported the
ordinary way, with and without a broker: no cell may see an older version than the disk's.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Broker, child_env

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.timeout(180)

MODULES = 30  # more than relmod.ipython.FOCUS_FILES: most saves fall outside the focus


def save(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)  # an atomic save, as editors do


class Kernel:
    """A kernel process and a blocking client that runs one cell and returns its output."""

    def __init__(self, cwd: Path) -> None:
        env = child_env()
        self.manager, self.client = jupyter_client.manager.start_new_kernel(
            kernel_name="python3", cwd=str(cwd), env=env
        )

    def run(self, code: str, timeout: float = 60.0) -> str:
        msg_id = self.client.execute(code)
        out: list[str] = []
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no answer to {code!r} within {timeout} s") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content.get("name") == "stdout":
                out.append(content["text"])
            elif kind == "error":
                raise AssertionError(f"{code!r} failed: {content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    folder = (tmp_path / "nb").resolve()
    folder.mkdir()
    for i in range(MODULES):
        save(folder / f"mod{i}.py", f"V = {i * 1000}\n")
    save(folder / "user.py", "import mod0\ndef total():\n    return mod0.V + 1\n")
    return folder


@pytest.fixture(params=["embedded", "broker"])
def kernel(request: pytest.FixtureRequest, notebook: Path) -> Iterator[Kernel]:
    broker = Broker(notebook).start() if request.param == "broker" else None
    k = Kernel(notebook)
    try:
        imports = "; ".join(f"import mod{i}" for i in range(MODULES))
        k.run(f"%load_ext relmod\n{imports}\nimport user")
        if broker is not None:
            assert "broker feed, connected" in k.run("%relmod")
        yield k
    finally:
        k.close()
        if broker is not None:
            broker.stop()


def test_a_save_followed_at_once_by_a_cell_is_never_stale(notebook: Path, kernel: Kernel) -> None:
    current = {i: i * 1000 for i in range(MODULES)}
    stale: list[tuple[int, list[str], list[str]]] = []
    for n in range(50):
        i = (n * 7) % MODULES  # modules in and out of any focus set; mod0 is user.py's dependency
        current[i] = n + 1 + i * 1000
        save(notebook / f"mod{i}.py", f"V = {current[i]}\n")
        seen = kernel.run(f"print(mod{i}.V, user.total())").split()
        expected = [str(current[i]), str(current[0] + 1)]
        if seen != expected:
            stale.append((n, expected, seen))
    assert stale == [], f"{len(stale)} of 50 cells ran old code: {stale[:5]}"
