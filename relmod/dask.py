"""Dask: every worker of a ``distributed`` cluster runs the latest saved code.

Register :class:`RelmodPlugin` once on a client. The scheduler keeps it and gives it to every
worker, including those that join later; its ``setup`` connects the worker to the project's
broker and serves the client's toplevel names to the import statement, so that the functions of
submitted tasks (pickled by reference, as ``tasks.run``) are imported from relmod modules that
reload when their files change::

    import relmod
    from relmod.dask import RelmodPlugin

    relmod.connect()                              # the broker serving this project
    relmod.toplevel('tasks', './tasks.py')
    import tasks

    client.register_plugin(RelmodPlugin())
    client.submit(tasks.run, 1, pure=False)       # runs the newest tasks.run on any worker

Dask reuses the result of a task whose key it already knows, and a key is derived from the
function's *name* and the arguments: after an edit, submit with ``pure=False`` (or new
arguments) so that the task runs again.

A worker on another machine gets the connection file as it sees it, and a path map::

    RelmodPlugin('/home/w/proj.json', path_map={'/srv/proj': '/w/proj'})
    RelmodPlugin('/home/w/proj.json', path_map={'/srv/proj': '/w/proj'},
                 remote=True, client_key='/home/w/w1.key_secret')   # no shared disk
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

from relmod.machinery.registry import OnError
from relmod.workers import DEFAULT_TIMEOUT, WorkerSetup

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["RelmodPlugin", "dask_setup"]

log = logging.getLogger(__name__)


class RelmodPlugin(WorkerPlugin):
    """A ``distributed`` worker plugin that makes each worker follow the project's edits.

    Made in the client process, it captures that process's relmod setup (toplevel names,
    broker, path map); the arguments override what it captured.

    Args:
        connection_file: the broker's connection file as the workers see it (default: the
            client's broker).
        root: a folder of the project, from which each worker finds the broker as
            ``relmod.connect`` does (instead of ``connection_file``).
        path_map: ``{broker_path: worker_path}`` prefixes for workers that see the project
            under other paths.
        toplevel: ``{name: path}`` to serve to ``import name``, paths as the broker sees
            them (default: every name the client served with ``relmod.toplevel``).
        remote: the workers do not share the project's file system; sources come from the
            broker (over TCP with CURVE, see :mod:`relmod.client.remote`).
        client_key: with ``remote``, the workers' CURVE certificate (a path on the workers).
        on_error: ``'keep'`` (default: a broken save is logged once, the worker keeps the old
            code) or ``'raise'`` (the task that touches the module fails).
        timeout: seconds a worker waits for the broker's first answer.

    Example:
        >>> client.register_plugin(RelmodPlugin())  # doctest: +SKIP
        {'tcp://127.0.0.1:40331': {'status': 'OK'}, ...}
    """

    name = "relmod"
    idempotent = False  # registering again replaces it: new toplevel names reach the workers

    def __init__(
        self,
        connection_file: str | None = None,
        *,
        root: str | None = None,
        path_map: Mapping[str, str] | None = None,
        toplevel: Mapping[str, str] | None = None,
        remote: bool = False,
        client_key: str | None = None,
        on_error: OnError = "keep",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        captured = WorkerSetup.capture(on_error=on_error, timeout=timeout)
        if connection_file is not None or root is not None:
            captured = replace(captured, connection_file=connection_file, project=root)
        if path_map is not None:
            captured = replace(captured, path_map=tuple(sorted(path_map.items())))
        if toplevel is not None:
            captured = replace(captured, toplevel=tuple(sorted(toplevel.items())))
        if remote:
            captured = replace(captured, remote=True, client_key=client_key)
        self.worker_setup = captured

    async def setup(self, worker: Worker) -> None:
        """Connect this worker and serve the toplevel names (off the event loop: it waits)."""
        await asyncio.to_thread(self.worker_setup.apply)
        log.info("relmod set up on worker %s", worker.address)

    def __repr__(self) -> str:
        return f"RelmodPlugin({self.worker_setup!r})"


def dask_setup(worker: Worker) -> None:
    """``dask worker --preload relmod.dask``: this worker follows the project's edits.

    The project is ``RELMOD_PROJECT`` or the worker's current folder: the worker connects to
    its broker (``RELMOD_BROKER`` names one explicitly), or watches the project's files itself.
    Modules of the project that tasks import, however they import them, then reload.
    """
    project = os.environ.get("RELMOD_PROJECT") or os.getcwd()
    setup = WorkerSetup(
        connection_file=os.environ.get("RELMOD_BROKER") or None,
        project=project,
        roots=(os.path.realpath(project),),
    )
    setup.apply()
    log.info("relmod set up on worker %s (project %s)", worker.address, project)
