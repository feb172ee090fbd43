"""Every test leaves the interpreter as it found it."""

from __future__ import annotations

import builtins
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_INSTALLED = tuple({sys.prefix, sys.base_prefix})


def _keep(name: str, module: object) -> bool:
    """Library modules imported during a test stay: importing them twice makes twin classes."""
    file = getattr(module, "__file__", None) or ""
    return name == "relmod" or name.startswith("relmod.") or str(file).startswith(_INSTALLED)


@pytest.fixture(autouse=True)
def _restore_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    modules = dict(sys.modules)
    path = list(sys.path)
    meta_path = list(sys.meta_path)
    environ = dict(os.environ)
    cwd = os.getcwd()
    handlers = list(logging.getLogger().handlers)
    original_import = builtins.__import__
    monkeypatch.setenv("RELMOD_RUNTIME_DIR", str(tmp_path / "_runtime"))
    monkeypatch.delenv("RELMOD_BROKER", raising=False)
    yield
    from relmod.client import session

    client = session._default
    if client is not None:
        client.close()
        session._default = None
    builtins.__import__ = original_import
    sys.meta_path[:] = meta_path
    for name in set(sys.modules) - set(modules):
        if not _keep(name, sys.modules[name]):
            del sys.modules[name]
    sys.modules.update(modules)
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    logging.getLogger().handlers[:] = handlers
