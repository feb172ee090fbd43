"""One process's relmod client: the registry, the import hook, and the feed that marks stale.

A feed is either the embedded watcher (a lone process) or a broker connection; both call
:meth:`Client.files_changed` or :meth:`Client.apply_invalidation`, so there is one path from
"these files changed" to "these modules are stale".
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from relmod.client.embedded import EmbeddedFeed
from relmod.errors import BrokerNotFound, ConfigurationError, ConnectionFileError, ReloadError
from relmod.machinery.finder import ProjectFinder
from relmod.machinery.imports import ImportHook
from relmod.machinery.registry import OnError, Registry
from relmod.machinery.scope import is_installed
from relmod.sources import StatSignature, file_hash, stat_signature
from relmod.stattrust import RACY_SECONDS as RACY_SECONDS  # noqa: PLC0414 (ipython reads it here)
from relmod.stattrust import signature_trusted

if TYPE_CHECKING:
    from relmod.client.barrier import SyncCounter
    from relmod.client.connection import BrokerFeed

log = logging.getLogger(__name__)


class Feed(Protocol):
    """Something that tells the client which files changed."""

    name: str

    def start(self) -> None: ...
    def follow(self) -> None: ...
    def forked(self) -> Feed: ...
    def sync(self, timeout: float) -> None: ...
    def stop(self) -> None: ...


class Client:
    """Everything relmod keeps in one process: the registry, its two hooks, and the feed."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.hook = ImportHook(self.registry)
        self.finder = ProjectFinder(self.registry)
        self.feed: Feed | None = None
        self.poll: bool | None = None
        self.tracking = False  # enable(): every module imported from now on reloads
        # path -> (stat signature, content hash) last seen on disk, so sync() re-reads only
        # the files whose signature moved (or that changed too recently to trust it).
        self._seen: dict[str, tuple[StatSignature, str | None]] = {}
        self._feed_lock = threading.Lock()
        self._counter: SyncCounter | None = None  # our syncs, as seen by our pool workers
        self.registry.add_folder_listener(self._on_new_folder)

    # -- feeds -------------------------------------------------------------------------

    def _on_new_folder(self, path: str) -> None:
        # Before the module's file is read: the feed watches its folder from now on.
        feed = self.feed
        if feed is None:
            self.ensure_feed()
        else:
            feed.follow()

    def ensure_feed(self) -> Feed:
        """The current feed; starts the embedded watcher when nothing feeds us yet."""
        with self._feed_lock:
            if self.feed is None:
                feed = self._default_feed()
                feed.start()
                self.feed = feed
            return self.feed

    def _default_feed(self) -> Feed:
        # A spawned child or a container names its broker in RELMOD_BROKER.
        named = os.environ.get("RELMOD_BROKER")
        if named:
            from relmod.client.connection import BrokerFeed

            return BrokerFeed(self, Path(named))
        return EmbeddedFeed(
            self.watched_folders,
            self.files_changed,
            self.known_files,
            poll=self.poll,
            verify_files=self.verify_files,
        )

    def use_feed(self, feed: Feed | None) -> None:
        """Replace the feed (a broker connection takes over from the embedded watcher)."""
        with self._feed_lock:
            old, self.feed = self.feed, feed
        if feed is not None:
            feed.start()
        if old is not None and old is not feed:
            old.stop()

    def watched_folders(self) -> set[str]:
        return self.registry.folders()

    def known_files(self) -> list[str]:
        return list(self.registry.files())

    # -- the one door: these files may have changed -> stale marks ---------------------

    def files_changed(self, paths: Iterable[str]) -> set[str]:
        """Mark stale the modules whose file content differs from the version in use.

        Runs on a feed's thread; cheap: hashes the reported files, runs no user code.
        """
        files = self.registry.files()
        changed: list[str] = []
        for reported in paths:
            for path in self.registry.names_of(reported):
                self._check_one(path, files, changed)
        return self.registry.invalidate(changed) if changed else set()

    def _check_one(self, path: str, files: dict[str, str | None], changed: list[str]) -> None:
        if path in files:
            sig = stat_signature(path)
            digest = file_hash(path)
            if sig is not None:
                self._seen[path] = (sig, digest)
            if digest != files[path]:
                changed.append(path)
        elif path in self.registry or self.registry.has_modules_under(path):  # a folder
            changed.append(path)

    def verify_files(self, paths: Iterable[str]) -> set[str]:
        """Like :meth:`files_changed`, but skips files whose stat signature has not moved.

        A signature younger than :data:`~relmod.stattrust.RACY_SECONDS` is not trusted (two
        saves within one timestamp tick can share it), the same rule git uses for its index.
        """
        suspects = []
        now = time.time()
        for path in paths:
            sig = stat_signature(path)
            seen = self._seen.get(path)
            if seen is None or seen[0] != sig or not signature_trusted(sig, now):
                suspects.append(path)
        return self.files_changed(suspects) if suspects else set()

    def apply_invalidation(
        self, affected: Iterable[str], changed: Iterable[str] | None = None
    ) -> set[str]:
        """Mark stale what a broker said is affected (it already compared hashes).

        ``changed``, the files whose content changed, are read again on reload; the other
        affected files only when their stat signature moved (by default: all of them).
        """
        return self.registry.invalidate(affected, changed=changed)

    # -- user-thread operations -------------------------------------------------------

    def sync(self, timeout: float = 10.0) -> None:
        """Return once every change saved before the call is marked stale in this process."""
        feed = self.ensure_feed()
        feed.sync(timeout)
        linked = self.registry.linked_files()
        if linked:  # a broker knows real paths only: a re-pointed link is ours to see
            self.verify_files(linked)
        if self._counter is not None:
            self._counter.bump()

    def sync_counter(self) -> str:
        """The file counting this process's syncs, for the workers it starts (made on demand)."""
        with self._feed_lock:
            if self._counter is None:
                from relmod.client.barrier import SyncCounter  # pools only
                from relmod.connfile import runtime_dir

                self._counter = SyncCounter(str(runtime_dir()))
            return self._counter.path

    def follow_syncs(self, path: str, timeout: float = 10.0) -> None:
        """In a worker: before each task's import, catch up with the parent's ``sync()``."""
        from relmod.client.barrier import SyncFollower

        try:
            follower = SyncFollower(path, lambda: self.sync(timeout))
        except OSError as err:
            log.warning(
                "relmod: cannot follow the parent's syncs (%s): tasks may start before this "
                "worker has seen the saves the parent synced.",
                err,
            )
            return
        self.hook.gate = follower.check
        self.hook.install()

    def configure(
        self,
        *,
        on_error: str | None = None,
        poll: bool | None = None,
        exclude: Iterable[str] | None = None,
    ) -> None:
        if on_error is not None:
            if on_error not in ("raise", "keep"):
                raise ConfigurationError(
                    f"on_error={on_error!r} is not a choice; use 'raise' (interactive: the "
                    f"error surfaces at the access) or 'keep' (workers: log it, keep the old code)."
                )
            self.registry.on_error = on_error  # type: ignore[assignment]
        if poll is not None:
            self.poll = poll
        if exclude is not None:
            if isinstance(exclude, str):
                raise ConfigurationError(
                    f"exclude={exclude!r} is one string; give a list of module-name patterns, "
                    f"for example exclude=['myapp.models', 'legacy.*']."
                )
            self.registry.scope.exclude(exclude)

    def reload(self, target: Any) -> Any:
        """Force a deep reload of a path, or of a module relmod reloads (or can adopt)."""
        if isinstance(target, str):
            return self.registry.reload(target)
        if isinstance(target, types.ModuleType):
            if self.registry.record_of(target) is None and self.adopt(target) is None:
                raise ReloadError(
                    f"Cannot reload {target.__name__}: it has no Python source file of its own "
                    f"that relmod can run (an installed, built-in or frozen module).",
                    path=str(getattr(target, "__file__", target.__name__)),
                )
            return self.registry.reload(target)
        raise TypeError(f"relmod.reload() takes a path or a module, not {type(target).__name__}.")

    def adopt(self, module: types.ModuleType) -> Any:
        """Start reloading a module imported before relmod was asked to (None if it cannot)."""
        path = getattr(module, "__file__", None)
        name = getattr(module, "__name__", None)
        if not isinstance(path, str) or not isinstance(name, str) or not path.endswith(".py"):
            return None
        real = os.path.realpath(path)
        if name == "__main__" or name.startswith("relmod") or is_installed(real):
            return None
        return self.registry.adopt(module, real)

    def adopt_project(self) -> int:
        """Adopt every module already imported whose file the scope accepts."""
        scope = self.registry.scope
        count = 0
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if not isinstance(module, types.ModuleType) or not isinstance(path, str):
                continue
            if name != getattr(module, "__name__", None):
                continue  # an alias; the module is adopted under its own name
            if scope.accepts(name, os.path.realpath(path)) and self.adopt(module) is not None:
                count += 1
        return count

    def enable(self, blacklist: Iterable[str] = ()) -> None:
        """Every module imported from now on reloads (not only the project's)."""
        self.registry.frozen = frozenset(blacklist)
        self.registry.scope.everything = True
        self.tracking = True
        self.finder.install()

    def disable(self) -> None:
        """Stop making new imports reloading, and forget the modules enable() added."""
        self.registry.scope.everything = False
        self.registry.frozen = frozenset()
        self.tracking = False
        scope = self.registry.scope
        for rec in self.registry.records():
            if not rec.by_path and not rec.key.startswith(scope.roots):
                self.registry.forget(rec)

    def follow_project(self, root: str) -> None:
        """Make the modules under ``root`` reloading: those imported so far, and from now on."""
        self.registry.scope.add_root(root)
        self.finder.install()
        self.adopt_project()

    def connect(
        self,
        start: str | None = None,
        *,
        timeout: float = 5.0,
        path_map: dict[str, str] | None = None,
        connection_file: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        feed_type: type[BrokerFeed] | None = None,
    ) -> BrokerFeed:
        """Switch this process's feed to a broker: the one path for every broker connection.

        ``relmod.connect`` finds the broker serving ``start``; ``connect_remote`` names its
        ``connection_file`` and a ``feed_type`` whose plug-in serves sources from the broker.
        A process reading its disk then follows the broker's project, and processes started
        from it find the same broker (``RELMOD_BROKER``).
        """
        from relmod.client.connection import BrokerFeed
        from relmod.connfile import find_connection_file, read_connection_file

        kind = feed_type if feed_type is not None else BrokerFeed
        where = start if start is not None else os.fspath(connection_file or os.getcwd())
        if connection_file is not None:
            found: Path | None = Path(os.path.abspath(os.fspath(connection_file)))
        else:
            found = find_connection_file(where)
        if found is None:
            if start is not None and not os.path.exists(start):
                raise BrokerNotFound(
                    f"No relmod broker serves {where}: there is no such folder. Name the "
                    f"project's folder (or a folder inside it), or call connect() with no "
                    f"argument for the current folder's project."
                )
            raise BrokerNotFound(
                f"No relmod broker serves {where}. Start one with `relmod-broker {where}`, or "
                f"use relmod without connect(): it then watches files in this process."
            )
        current = self.feed
        if isinstance(current, kind) and current.path == found:
            return current
        if os.path.lexists(found):
            # An unsafe or unusable connection file does not mend itself: say so at once
            # instead of after the timeout (a missing one may still appear: a broker starting).
            try:
                read_connection_file(found)
            except ConnectionFileError as err:
                raise BrokerNotFound(
                    f"Cannot connect to the relmod broker of {where}: {err}"
                ) from err
        feed = kind(self, found, path_map=path_map, client_key=client_key)
        served = feed.plugin.sources if feed.plugin is not None else None
        previous = self.registry.sources
        if served is not None:
            # Before the handshake: it may mark loaded modules stale, and their reload must
            # ask the broker, not the disk.
            self.registry.sources = served
        feed.start()
        if not feed.wait_connected(timeout):
            why = feed.last_error or "it did not answer"
            feed.stop()
            self.registry.sources = previous
            raise BrokerNotFound(
                f"Cannot connect to the relmod broker of {where} ({why}). Check that it runs "
                f"(`relmod-broker <project>` starts it) and, over TCP, that this machine reaches "
                f"its endpoints and that this client's public key is listed in its clients "
                f"folder (relmod.curve.authorize_client)."
            )
        self.use_feed(feed)
        if feed.reads_disk:
            if feed.info is not None:
                self.follow_project(feed.path_map.to_local(feed.info["root"]))
            # Spawned children, pools and notebooks started from here find the same broker.
            os.environ["RELMOD_BROKER"] = str(found)
        return feed

    def close(self) -> None:
        """Stop the feed and take relmod's hooks out of the interpreter."""
        self.use_feed(None)
        self.hook.uninstall()
        self.finder.uninstall()

    @property
    def on_error(self) -> OnError:
        return self.registry.on_error


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client, created on first use (and anew in a forked child)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
            atexit.register(_close_at_exit)
        return _default


def _close_at_exit() -> None:
    # Say goodbye to the broker and close the sockets; every wait here is bounded (LINGER 0,
    # a 2 s join), so interpreter exit never hangs.
    client = _default
    if client is not None and client.feed is not None:
        try:
            client.feed.stop()
        except Exception:  # exit must go on; say what went wrong
            log.exception("relmod: closing the feed at exit failed")


def _after_fork_in_child() -> None:
    # Only the forking thread exists in the child: a lock another thread held at the fork
    # would stay held for ever, so every lock of ours is made anew. The parent's feed thread
    # and sockets are abandoned untouched, and the same kind of feed starts anew, so the child
    # keeps up with edits by itself.
    global _default_lock
    _default_lock = threading.Lock()
    client = _default
    if client is not None:
        client._feed_lock = threading.Lock()
        client.hook.after_fork()
        client.finder.after_fork()
        client.registry.after_fork()
        old, client.feed = client.feed, None
        if old is not None:
            client.feed = old.forked()
            client.feed.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
