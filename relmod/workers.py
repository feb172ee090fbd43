"""Worker processes that keep up with edits: process pools, Dask workers, containers.

A worker process must end up where its parent is: the same modules served to the ``import``
statement (:func:`relmod.toplevel`), a feed from the same broker (or its own watcher when the
parent has none), and ``on_error='keep'``, so that a broken save is logged once and the worker
keeps serving the last good code instead of failing every task.

A forked worker inherits all of that (its feed is renewed after the fork); a spawned one starts
empty. :func:`init` sets either up from a :class:`WorkerSetup` captured in the parent, and is
what the pool runs in each worker before its first task::

    with ProcessPoolExecutor(**relmod.pool_options()) as pool:   # or multiprocessing.Pool
        pool.submit(tasks.run, 1)

Tasks must be picklable, so their functions come from modules imported by name: serve them with
``relmod.toplevel('tasks', './tasks.py')`` *before* creating the pool.

What a worker sees, and when:

* With a broker, every worker has its own subscription. After ``relmod.sync()`` returns in the
  parent, the broker has published every save made before the call; each worker marks the
  modules stale as its subscription delivers that (typically well under 10 ms), and a task that
  touches them afterwards runs the new code. A task that calls ``relmod.sync()`` first (one
  round trip to the broker) runs code at least as new as every save made before that call.
* Without a broker, each worker watches the files of its modules itself (as the parent does),
  and ``relmod.sync()`` in a task checks them directly.
* A broken save never reaches a task: the worker keeps the last good version.

``python -m relmod.workers FILE.py:FUNCTION`` is a small worker of its own (used by ``docker/``):
it connects, then calls the function every ``--every`` seconds with the latest code and prints
each result that differs from the previous one.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relmod.api import at, toplevel
from relmod.client.session import Client, default_client
from relmod.errors import BrokerNotFound, RelmodError
from relmod.machinery.registry import OnError, normalize

if TYPE_CHECKING:
    from relmod.arguments import OneLineParser

__all__ = ["WorkerSetup", "init", "initargs", "main", "pool_options"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds a worker waits for the broker's first answer before watching files itself."""


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs to mirror its parent's relmod setup; picklable.

    Make one with :func:`initargs` (which captures the calling process) and apply it with
    :func:`init` in the worker.

    Attributes:
        toplevel: ``(name, path)`` pairs served to the import statement. With a broker the
            paths are the broker's, translated by ``path_map`` in the worker; without one they
            are local paths.
        connection_file: the broker's connection file as the worker sees it; None with
            ``project`` to find it from a folder, or None for no broker.
        project: a folder inside the project, to find the broker from (as ``relmod.connect``
            does) when ``connection_file`` is None; None for no broker.
        path_map: ``(broker_prefix, local_prefix)`` pairs for a worker that sees the project
            under other paths.
        remote: the worker does not share the project's file system: sources come from the
            broker (:func:`relmod.client.remote.connect_remote`).
        client_key: for ``remote`` with a CURVE broker, the worker's certificate file.
        on_error: ``'keep'`` (log a failed reload once, keep the old code) or ``'raise'``.
        poll: force (True) or forbid (False) polling for a worker's own watcher; None lets
            ``RELMOD_POLL`` decide.
        roots: folders whose modules reload however they are imported (the project's).
        everything: every module imported reloads (the parent called ``relmod.enable()``).
        frozen: names that never reload (``enable(blacklist=...)``).
        exclude: module-name patterns excluded with ``relmod.configure(exclude=...)``.
        syncs: the file counting the parent's ``relmod.sync()`` calls: a worker catches up
            with each before its next task (same machine only).
        timeout: seconds to wait for the broker's first answer.
        initializer: the pool's own initializer, run after relmod is set up.
        initargs: its arguments.

    Example:
        >>> setup = WorkerSetup(toplevel=(('tasks', '/proj/tasks.py'),))
        >>> setup.on_error
        'keep'
    """

    toplevel: tuple[tuple[str, str], ...] = ()
    connection_file: str | None = None
    project: str | None = None
    path_map: tuple[tuple[str, str], ...] = ()
    remote: bool = False
    client_key: str | None = None
    on_error: OnError = "keep"
    poll: bool | None = None
    roots: tuple[str, ...] = ()
    everything: bool = False
    frozen: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    syncs: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = field(default=())
    # (initializer, initargs) still pickled: see __reduce__.
    _deferred: bytes | None = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Callable[..., WorkerSetup], tuple[Any, ...]]:
        # A spawned worker unpickles its initargs before anything runs in it, when a function
        # of a toplevel module (tasks.setup) cannot be imported yet. So the initializer
        # travels as bytes, unpickled by apply() once the toplevel names are served.
        import pickle

        deferred = self._deferred
        if self.initializer is not None:
            deferred = pickle.dumps((self.initializer, self.initargs))
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        state.update(initializer=None, initargs=(), _deferred=deferred)
        return _restore, (state,)

    @classmethod
    def capture(cls, client: Client | None = None, **overrides: Any) -> WorkerSetup:
        """The setup of the calling process: its toplevel names, broker, path map and poll."""
        from relmod.client.connection import BrokerFeed, PathMap

        client = client if client is not None else default_client()
        feed = client.feed
        connection_file = os.environ.get("RELMOD_BROKER") or None
        mapping: dict[str, str] = {}
        remote, client_key = False, None
        if isinstance(feed, BrokerFeed):
            connection_file = str(feed.path)
            mapping = dict(feed.path_map.mapping)
            if not feed.reads_disk:
                remote, client_key = True, feed.client_key
        to_broker = PathMap(mapping).to_broker if connection_file else _same
        toplevel = tuple(
            sorted((name, to_broker(path)) for name, path in client.finder.toplevel.items())
        )
        scope = client.registry.scope
        setup = cls(
            toplevel=toplevel,
            connection_file=connection_file,
            path_map=tuple(sorted(mapping.items())),
            remote=remote,
            client_key=client_key,
            poll=client.poll,
            roots=tuple(to_broker(r.rstrip(os.sep)) for r in scope.roots),
            everything=scope.everything,
            frozen=tuple(sorted(client.registry.frozen)),
            exclude=scope.excluded,
            syncs=None if remote else client.sync_counter(),
        )
        return replace(setup, **overrides)

    def apply(self) -> None:
        """Set up relmod in this process (idempotent); what :func:`init` runs.

        Raises:
            BrokerNotFound: ``remote`` is set and the broker does not answer (such a worker has
                no other source of code). A local worker only logs a warning and watches its
                files itself until the broker answers.
        """
        from relmod.client.connection import PathMap

        client = default_client()
        client.configure(on_error=self.on_error, poll=self.poll, exclude=self.exclude)
        if self.everything:
            client.enable(self.frozen)
        connected = self._connect(client)
        local = PathMap(dict(self.path_map)).to_local if connected else _same
        for root in self.roots:
            client.follow_project(local(root))
        if self.syncs is not None and os.path.exists(self.syncs):
            client.follow_syncs(self.syncs, self.timeout)
        for name, path in self.toplevel:
            target = normalize(local(path))
            if client.finder.toplevel.get(name) != target:
                toplevel(name, target)
        initializer, args = self.initializer, self.initargs
        if self._deferred is not None:
            import pickle

            initializer, args = pickle.loads(self._deferred)
        if initializer is not None:
            initializer(*args)

    def _connect(self, client: Client) -> bool:
        """Follow the parent's broker; False when this worker has none (it watches files)."""
        from relmod.client.connection import BrokerFeed

        connection_file = self.connection_file
        if connection_file is None and self.project is not None:
            from relmod.connfile import find_connection_file

            found = find_connection_file(normalize(self.project))
            connection_file = str(found) if found is not None else None
        if connection_file is None:
            # Like the parent: no broker. A RELMOD_BROKER inherited from elsewhere must not
            # make this worker's first load connect to one.
            os.environ.pop("RELMOD_BROKER", None)
            return False
        path_map = dict(self.path_map) or None
        if self.remote:
            from relmod.client.remote import connect_remote

            connect_remote(
                connection_file,
                path_map=path_map,
                client_key=self.client_key,
                timeout=self.timeout,
            )
            return True
        feed = client.feed
        if isinstance(feed, BrokerFeed) and feed.path == Path(connection_file):
            # Forked: the feed renewed after the fork resynchronises by itself. Wait for it,
            # so the first task already sees every save the broker knows of.
            if not feed.wait_connected(self.timeout):
                log.warning(
                    "worker %d: the broker has not answered yet; tasks may run "
                    "older code until it does",
                    os.getpid(),
                )
            return True
        os.environ["RELMOD_BROKER"] = connection_file
        try:
            client.connect(os.getcwd(), timeout=self.timeout, path_map=path_map)
        except BrokerNotFound as err:
            # The next load starts a feed that keeps trying and watches files meanwhile.
            log.warning(
                "worker %d: %s Watching files in this worker until it answers.", os.getpid(), err
            )
        return True


def _same(path: str) -> str:
    return path


def _restore(state: dict[str, Any]) -> WorkerSetup:
    return WorkerSetup(**state)


def initargs(
    *,
    initializer: Callable[..., object] | None = None,
    initargs: Sequence[Any] = (),
    **options: Any,
) -> tuple[WorkerSetup]:
    """The ``initargs`` for a pool whose ``initializer`` is :func:`init`.

    Captures the calling process's relmod setup now (toplevel names, broker, path map); names
    served with ``relmod.toplevel`` after this call are not known to spawned workers.

    Args:
        initializer: your own pool initializer, run in each worker after relmod's setup.
        initargs: its arguments.
        **options: any :class:`WorkerSetup` field to override, e.g. ``on_error='raise'``.

    Example:
        >>> from concurrent.futures import ProcessPoolExecutor
        >>> pool = ProcessPoolExecutor(initializer=init, initargs=initargs())  # doctest: +SKIP
    """
    return (WorkerSetup.capture(initializer=initializer, initargs=tuple(initargs), **options),)


def init(setup: WorkerSetup | None = None) -> None:
    """Pool initializer: make this worker process follow edits the way its parent does.

    Registers the parent's toplevel names, connects to the parent's broker (or, without one,
    leaves the worker to watch its files itself), and sets ``on_error='keep'``. Safe under
    fork, spawn and forkserver, and safe to call twice. Without ``setup`` (a pool given
    ``initializer=init`` but no initargs), only what the worker inherited is used.

    Example:
        >>> import multiprocessing, relmod.workers
        >>> pool = multiprocessing.get_context('spawn').Pool(
        ...     2, initializer=relmod.workers.init, initargs=relmod.workers.initargs()
        ... )  # doctest: +SKIP
    """
    if setup is None:
        setup = WorkerSetup(connection_file=os.environ.get("RELMOD_BROKER") or None)
    setup.apply()


def pool_options(
    *,
    initializer: Callable[..., object] | None = None,
    initargs: Sequence[Any] = (),
    **options: Any,
) -> dict[str, Any]:
    """``initializer`` and ``initargs`` for a process pool, as keyword arguments.

    Works for ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool`` alike.
    The arguments are those of :func:`initargs`.

    Example:
        >>> import relmod
        >>> from concurrent.futures import ProcessPoolExecutor
        >>> relmod.toplevel('tasks', './tasks.py')                      # doctest: +SKIP
        >>> import tasks                                                # doctest: +SKIP
        >>> with ProcessPoolExecutor(4, **relmod.pool_options()) as pool:  # doctest: +SKIP
        ...     print(pool.submit(tasks.run, 1).result())
    """
    setup = WorkerSetup.capture(initializer=initializer, initargs=tuple(initargs), **options)
    return {"initializer": init, "initargs": (setup,)}


# -- python -m relmod.workers -----------------------------------------------------------------


def _pair(text: str) -> tuple[str, str]:
    import argparse  # this command line only: workers import relmod, not it

    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise argparse.ArgumentTypeError(f"expected A=B, not {text!r}")
    return left, right


def _parser() -> OneLineParser:
    from relmod.arguments import OneLineParser

    parser = OneLineParser(
        prog="python -m relmod.workers",
        description=(
            "Call FUNCTION every few seconds with the latest saved code and print each result "
            "that differs from the previous one. Connects to the broker named by "
            "--connection-file or RELMOD_BROKER, or to the one serving the target's folder; "
            "without a broker it watches the files itself."
        ),
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="FILE.py:FUNCTION, or MODULE:FUNCTION for a --toplevel name or an importable module",
    )
    parser.add_argument(
        "--every",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two calls (default 1)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="stop after N calls (default: run until SIGTERM or Ctrl-C)",
    )
    parser.add_argument(
        "--toplevel",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve PATH to 'import NAME' (repeatable)",
    )
    parser.add_argument(
        "--connection-file",
        metavar="FILE",
        help="the broker's connection file (default: $RELMOD_BROKER)",
    )
    parser.add_argument(
        "--path-map",
        type=_pair,
        action="append",
        default=[],
        metavar="BROKER=LOCAL",
        help="where this worker sees a broker path",
    )
    parser.add_argument(
        "--remote", action="store_true", help="no shared file system: fetch sources from the broker"
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        help="CURVE certificate for --remote (default: $RELMOD_CLIENT_KEY)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the broker at start (default 30)",
    )
    parser.add_argument(
        "--on-error",
        choices=("keep", "raise"),
        default="keep",
        help="a broken save: keep the old code (default) or raise in the call",
    )
    return parser


def _resolve(target: str) -> tuple[types.ModuleType, str]:
    """The module and function name of ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``."""
    where, sep, function = target.rpartition(":")
    if not sep or not where or not function.isidentifier():
        raise ValueError(f"{target!r} is not FILE.py:FUNCTION or MODULE:FUNCTION.")
    if where.endswith(".py") or os.sep in where:
        return at(where), function
    return importlib.import_module(where), function


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m relmod.workers``; returns the exit status.

    Example:
        >>> main(['app.py:main', '--count', '1'])  # doctest: +SKIP
        myhost:4242 app.py:main() -> 'hello'
        0
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (already printed)
        return done.code if isinstance(done.code, int) else 1
    root_logger, level = logging.getLogger(), logging.getLogger().level
    log_handler = logging.StreamHandler(sys.stderr)
    log_handler.setFormatter(
        logging.Formatter("%(asctime)s relmod-worker %(levelname)s %(message)s")
    )
    root_logger.addHandler(log_handler)
    root_logger.setLevel(logging.INFO)

    where = args.target.rpartition(":")[0]
    connection_file = args.connection_file or os.environ.get("RELMOD_BROKER") or None
    setup = WorkerSetup(
        toplevel=tuple(args.toplevel),
        connection_file=connection_file,
        project=os.path.dirname(os.path.abspath(where)) if where.endswith(".py") else os.getcwd(),
        path_map=tuple(args.path_map),
        remote=args.remote,
        client_key=args.client_key,
        on_error=args.on_error,
        timeout=args.wait,
    )
    import signal
    import socket

    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    # SIGTERM is what `docker compose down` sends: finish the current call, exit 0. The
    # previous handlers come back on return (tests call main() in their own process).
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    label = f"{socket.gethostname()}:{os.getpid()}"
    try:
        try:
            setup.apply()
            module, function = _resolve(args.target)
        except (RelmodError, ImportError, ValueError, OSError) as err:
            print(f"python -m relmod.workers: {err}", file=sys.stderr)
            return 1
        return _serve(module, function, f"{label} {args.target}()", args.every, args.count, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        root_logger.removeHandler(log_handler)
        root_logger.setLevel(level)


def _serve(
    module: types.ModuleType,
    function: str,
    label: str,
    every: float,
    count: int | None,
    stop: threading.Event,
) -> int:
    """Call ``module.function`` until stopped; print each new result or new error."""
    last: object = object()
    calls = 0
    while not stop.is_set() and (count is None or calls < count):
        calls += 1
        try:
            # Looked up on every call: a stale module reloads here, on its first use.
            result = f"-> {getattr(module, function)()!r}"
        except Exception as err:  # the worker reports it and keeps going
            result = f"raised {type(err).__name__}: {err}"
        if result != last:
            print(f"{label} {result}", flush=True)
            last = result
        if count is None or calls < count:
            stop.wait(every)
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: pools pickle WorkerSetup by the
    # name relmod.workers, and two copies of the class would not be the same class.
    from relmod.workers import main as _main

    sys.exit(_main())
