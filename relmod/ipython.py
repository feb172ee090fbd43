"""IPython and Jupyter: ``%load_ext relmod`` makes every cell run on the latest saved code.

Loading the extension

1. connects to the broker serving the notebook's folder (the shell's current folder) if one runs,
   else leaves this process to watch its own files (the embedded watcher);
2. installs relmod for that folder, so ``from . import helpers`` works in cells;
3. makes the modules of that folder (or of the broker's project) reloading, however they are
   imported, and registers a ``pre_run_cell`` hook that brings stale modules up to date before
   each cell;
4. adds the ``%relmod`` line magic: ``%relmod`` prints the status, ``%relmod sync`` forces a full
   sync.

The hook's cost when nothing changed must not grow with the number of modules loaded, so it
never walks them. It reads a few counters, and walks the modules only when one of them moved:
how many invalidations marked modules stale (the feed's thread, embedded watcher or broker
connection, marks them as saves arrive), whether the broker's sequence number moved (broken
files are announced that way), and whether
modules were loaded since the last cell.

**Save, then Shift-Enter at once.** A watcher reports a save 15-20 ms after it happens (through a
broker, a little later), and before that nothing in the process knows of it. So the hook also
checks a small *focus* by ``stat`` before every cell: the :data:`FOCUS_FILES` files most recently
loaded by relmod, loaded as ordinary modules from the notebook's folder, or changed. A file whose
stat signature moved, or that was saved less than :data:`~relmod.client.session.RACY_SECONDS` ago
(two saves within one timestamp tick can share a signature), is hashed, and a new hash goes
through the client's usual content check. A file a cell has just written (``%%writefile``) and
the files one keeps editing are therefore never stale; any other file is seen within the
watcher's latency, sooner than a person switches from the editor to the notebook. ``%relmod
sync`` checks every file.

**Errors.** A reload that fails before a cell is raised in that cell, before its first statement
runs, with relmod's message (the previous version stays in use). The same broken content is
reported once, whether the reload or the broker found it first.
"""

from __future__ import annotations

import ast
import logging
import os
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relmod.client.bindings import NamespaceBindings
from relmod.client.cellwatch import CellWatch
from relmod.client.session import RACY_SECONDS, Client, default_client
from relmod.errors import BrokerError, ReloadError
from relmod.machinery.registry import Registry, normalize
from relmod.sources import Broken, display_path, file_hash

__all__ = [
    "CONNECT_TIMEOUT",
    "FOCUS_FILES",
    "CellSync",
    "load_ipython_extension",
    "unload_ipython_extension",
]

log = logging.getLogger(__name__)

FOCUS_FILES = 12
"""How many recently used files the hook checks by ``stat`` before every cell (2-3 us each)."""

CONNECT_TIMEOUT = 3.0
"""Seconds ``%load_ext relmod`` waits for the broker of the notebook's folder to answer."""

# The name a failed reload is raised through in the cell that follows it; bound in the user
# namespace (hidden from %who) only while an error waits to be shown.
_RAISER_NAME = "__relmod_reload_errors__"

_RACY_NS = int(RACY_SECONDS * 1e9)


MAGIC_HELP = """\
%relmod          the status: the feed (broker or this process's watcher), the modules, what is
                 stale or broken, the files checked before each cell
%relmod sync     check every file now and reload what changed (a barrier, like relmod.sync())
%relmod help     this list

Modules of the notebook's folder (or of the broker's project) reload before each cell, however
they were imported; relmod.configure(...) sets how failures surface and what never reloads."""

# -- what moved since the last cell -------------------------------------------------------------


class _InvalidationCount:
    """How many times :meth:`Registry.invalidate` marked modules stale, read in O(1)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def value(self) -> int:
        return self._registry.generation

    def close(self) -> None:
        pass


def _feed_position(feed: object) -> tuple[object, str | None, int]:
    """The feed, and where a broker feed stands (epoch, seq): a move means news arrived."""
    # Imported here: relmod imports this module, and zmq is loaded only by a broker's feed
    # (an IPython kernel has it loaded anyway).
    from relmod.client.connection import BrokerFeed

    if isinstance(feed, BrokerFeed):
        return feed, feed.epoch, feed.seq
    return feed, None, 0


# (mtime_ns, ctime_ns, size, inode) of a file, or None when it cannot be stat'ed
_Signature = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class _Seen:
    """What the focus check last saw of a file."""

    signature: _Signature
    digest: str | None
    trusted: bool  # the signature is old enough that a later save must change it


_UNSEEN = _Seen(None, None, trusted=False)


def _signature(path: str) -> _Signature:
    # os.stat itself, not relmod.sources.stat_signature: this runs before every cell.
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class _Focus:
    """The few files checked by ``stat`` before every cell, most recently used last.

    Example:
        >>> focus = _Focus(limit=2)
        >>> for path in ('/a.py', '/b.py', '/c.py'):
        ...     focus.add(path)
        >>> focus.paths()
        ['/b.py', '/c.py']
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, _Seen] = {}  # insertion order is recency

    def add(self, path: str) -> None:
        """Make ``path`` the most recent (keeping what was seen of it); drop the oldest."""
        self._seen[path] = self._seen.pop(path, _UNSEEN)
        while len(self._seen) > self.limit:
            del self._seen[next(iter(self._seen))]

    def paths(self) -> list[str]:
        return list(self._seen)

    def changed(self) -> list[str]:
        """The files whose content differs from what the last check saw (a stat each)."""
        out = []
        for path, seen in self._seen.items():
            signature = _signature(path)
            if seen.trusted and signature == seen.signature:
                continue
            # Stat before reading: a save between the two shows up as a moved signature next time.
            digest = file_hash(path)
            trusted = signature is None or time.time_ns() - max(signature[:2]) >= _RACY_NS
            self._seen[path] = _Seen(signature, digest, trusted)  # same key: the loop stays valid
            if digest != seen.digest:
                out.append(path)
        return out


class _RaiseBeforeCell(ast.NodeTransformer):
    """An IPython AST transformer: the cell starts by raising the reload errors held for it.

    Args:
        prepare: binds the raiser in the user namespace; False when no error waits any more.
    """

    def __init__(self, prepare: Callable[[], bool]) -> None:
        self._prepare = prepare

    def visit(self, node: ast.AST) -> ast.AST:
        if not isinstance(node, ast.Module) or not self._prepare():
            return node
        call = ast.Expr(ast.Call(ast.Name(_RAISER_NAME, ast.Load()), [], []))
        anchor = node.body[0] if node.body else None
        node.body.insert(0, ast.copy_location(call, anchor) if anchor is not None else call)
        return ast.fix_missing_locations(node)


# -- the extension --------------------------------------------------------------------------------


class CellSync:
    """Keeps one IPython shell's code current: reloads what is stale before each cell.

    Made and started by :func:`load_ipython_extension`; see the module docstring for what it
    checks and what that costs.

    Args:
        shell: the ``InteractiveShell``.
        client: the relmod client of this process.
        folder: the notebook's folder (``from . import x`` resolves there).

    Example:
        >>> sync = relmod.ipython.load_ipython_extension(get_ipython())  # doctest: +SKIP
        >>> sync.status()['feed']                                         # doctest: +SKIP
        'embedded'
    """

    def __init__(self, shell: Any, client: Client, folder: str) -> None:
        self._shell_ref = weakref.ref(shell)
        self.client = client
        self.folder = folder
        self.cells = 0
        self.catch_ups = 0
        self.reloads = 0
        self.repeats_hidden = 0
        self._focus = _Focus(FOCUS_FILES)
        self._queue = CellWatch.create()  # saves the kernel has queued, for every loaded folder
        self._bindings = NamespaceBindings()  # names cells bound with `from module import ...`
        self._invalidations = _InvalidationCount(client.registry)
        self._caught_up_at = -1  # forces a first catch-up
        self._feed_state: tuple[Any, ...] = ()
        self._loaded: list[str] = []  # relmod modules loaded since the last cell
        self._errors: list[ReloadError] = []  # raised in the next cell
        self._shown: dict[str, tuple[str | None, str]] = {}  # path -> (digest, message)
        self._transformer = _RaiseBeforeCell(self._bind_raiser)
        self._transformer_on = False
        self._closed = False

    @property
    def shell(self) -> Any:
        shell = self._shell_ref()
        if shell is None:
            raise RuntimeError("The IPython shell of this relmod extension no longer exists.")
        return shell

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Install relmod for the notebook's folder, register the hook and the magic."""
        from relmod.api import install

        shell = self.shell
        install(shell.user_ns)
        self.client.follow_project(self.folder)
        if self._queue is not None:
            self._queue.follow(self.client.watched_folders())  # modules imported before us
        self.client.registry.add_load_listener(self._on_load)
        self.client.ensure_feed()
        shell.events.register("pre_run_cell", self.pre_run_cell)
        shell.events.register("post_run_cell", self.post_run_cell)
        shell.register_magic_function(self.magic, magic_kind="line", magic_name="relmod")

    def close(self) -> None:
        """Unregister everything :meth:`start` registered (the client keeps running)."""
        self._closed = True
        if self._queue is not None:
            self._queue.close()
        self._invalidations.close()
        shell = self._shell_ref()
        if shell is None:
            return
        if self.pre_run_cell in shell.events.callbacks["pre_run_cell"]:
            shell.events.unregister("pre_run_cell", self.pre_run_cell)
        if self.post_run_cell in shell.events.callbacks["post_run_cell"]:
            shell.events.unregister("post_run_cell", self.post_run_cell)
        if self._transformer in shell.ast_transformers:
            shell.ast_transformers.remove(self._transformer)
        shell.magics_manager.magics["line"].pop("relmod", None)
        self._unbind_raiser(shell)
        self.client.hook.installed_namespaces.pop(id(shell.user_ns), None)

    def _on_load(self, path: str) -> None:
        if not self._closed:
            self._loaded.append(path)

    # -- before each cell -----------------------------------------------------------------

    def pre_run_cell(self, info: Any = None) -> None:
        """The ``pre_run_cell`` hook: cheap checks, and a catch-up only when one moved."""
        self.cells += 1
        self._check_saves()
        feed = self.client.feed
        if (
            self._invalidations.value() != self._caught_up_at
            or self._loaded
            or self._feed_state != _feed_position(feed)
        ):
            self._hold(self.catch_up())
        if self._transformer_on and not self._errors:
            self._transformer_on = False
            transformers = self.shell.ast_transformers
            if self._transformer in transformers:
                transformers.remove(self._transformer)

    def post_run_cell(self, result: Any = None) -> None:
        """Remember the cell's ``from`` imports, to bind their names again after reloads."""
        source = getattr(getattr(result, "info", None), "raw_cell", None)
        if not source or "import" not in source:
            return
        shell = self.shell
        try:
            code = shell.transform_cell(source)  # magics and the like become plain Python
        except Exception:  # IPython's transformers raise on cells it could not run either
            return
        self._bindings.record_cell(code, shell.user_ns)

    def catch_up(self) -> list[ReloadError]:
        """Reload every stale module now; return the failures not reported before."""
        self.catch_ups += 1
        self._follow_new_files()
        self._check_saves()
        count = self._invalidations.value()  # read first: a later mark triggers the next catch-up
        before = self.reloads
        errors = self._reload_stale()
        if self.reloads != before and self.client.registry.patch:
            self._bindings.refresh(self.shell.user_ns)
        self._caught_up_at = count
        errors += self._broker_broken()
        return self._not_shown_yet(errors)

    def _check_saves(self) -> None:
        """Hand every save made before this cell to the client's content check."""
        changed = self._focus.changed()
        if self._queue is not None:
            changed += self._queue.changed()
            if self._queue.overflowed:  # the kernel dropped events: check every file
                self._queue.overflowed = False
                changed += self.client.known_files()
        if changed:
            self.client.files_changed(changed)

    def _follow_new_files(self) -> None:
        """Put newly loaded files in focus, and have the feed watch new folders."""
        loaded, self._loaded = self._loaded, []
        for path in loaded:
            if os.path.isfile(path):
                self._focus.add(path)
        if self._queue is not None and loaded:
            self._queue.follow(self.client.watched_folders())
        feed = self.client.feed
        self._feed_state = _feed_position(feed)

    def _reload_stale(self) -> list[ReloadError]:
        """Reload every stale module; collect the failures."""
        registry = self.client.registry
        errors: list[ReloadError] = []
        for rec in registry.records():
            if not registry.is_stale(rec.module):
                continue
            if rec.folder is None or rec.key != rec.folder:  # a file, not a folder namespace
                self._focus.add(rec.key)
            before = registry.reloads
            try:
                registry.refresh(rec.module)
            except ReloadError as err:
                errors.append(err)
            self.reloads += registry.reloads - before
        return errors

    def _broker_broken(self) -> list[ReloadError]:
        """Files this process runs that the broker reports broken (it holds such saves back).

        A report is outdated once the file on disk is the version in use again (a fix saved and
        reloaded here before the broker's word about it arrived).
        """
        broken: dict[str, tuple[int | None, str]] = dict(getattr(self.client.feed, "broken", {}))
        if not broken:
            return []
        in_use = self.client.registry.files()
        out = []
        for path, (lineno, message) in sorted(broken.items()):
            if path in in_use and file_hash(path) != in_use[path]:
                text = Broken(path, lineno, message).describe()
                out.append(ReloadError(text, path=path, lineno=lineno))
        return out

    def _not_shown_yet(self, errors: list[ReloadError]) -> list[ReloadError]:
        """Drop failures of content already reported (a reload and the broker may both see it)."""
        for path, (digest, _) in list(self._shown.items()):
            if file_hash(path) != digest:
                del self._shown[path]  # saved again since: report its next failure
        out = []
        for err in errors:
            path = os.path.realpath(err.path)
            digest = file_hash(path)
            shown = self._shown.get(path)
            if shown is not None and shown[0] == digest:
                self.repeats_hidden += 1
                log.debug("not showing again: %s", err)
                continue
            self._shown[path] = (digest, str(err))
            out.append(err)
        return out

    # -- raising in the cell --------------------------------------------------------------

    def _hold(self, errors: list[ReloadError]) -> None:
        """Raise ``errors`` in the cell about to run, before its first statement."""
        if not errors:
            return
        self._errors.extend(errors)
        transformers = self.shell.ast_transformers
        if self._transformer not in transformers:
            transformers.append(self._transformer)
        self._transformer_on = True

    def _bind_raiser(self) -> bool:
        if not self._errors:
            return False
        shell = self.shell
        shell.user_ns[_RAISER_NAME] = self._raise_held
        shell.user_ns_hidden[_RAISER_NAME] = self._raise_held
        return True

    def _unbind_raiser(self, shell: Any) -> None:
        shell.user_ns.pop(_RAISER_NAME, None)
        shell.user_ns_hidden.pop(_RAISER_NAME, None)

    def _raise_held(self) -> None:
        __tracebackhide__ = True  # noqa: F841  (IPython hides this frame)
        self._unbind_raiser(self.shell)
        errors, self._errors = self._errors, []
        if errors:
            raise _presented(errors, self._shell_ref) from errors[0].__cause__

    # -- the magic --------------------------------------------------------------------------

    def magic(self, line: str) -> None:
        """``%relmod``: print the status. ``%relmod sync``: check every file, reload now.

        Example:
            In [1]: %relmod
            relmod: embedded feed, this process watches its files (watchfiles)
              notebook folder: /home/me/nb  (from . import name)
              ...
        """
        command = line.strip() or "status"
        if command in ("help", "-h", "--help", "?"):
            print(MAGIC_HELP)
        elif command == "status":
            print(self.describe())
        elif command == "sync":
            before = self.reloads
            self.client.sync()
            errors = self.catch_up()
            if errors:
                raise _presented(errors, self._shell_ref) from errors[0].__cause__
            print(f"relmod: in sync; {self.reloads - before} module(s) reloaded.")
        else:
            from IPython.core.error import UsageError

            raise UsageError(
                f"%relmod takes 'status', 'sync' or 'help', not {command!r}. "
                f"`%relmod help` lists them."
            )

    def status(self) -> dict[str, Any]:
        """What the extension knows: the feed, the modules, what is stale or broken.

        Walks every module (for the magic, not for every cell).
        """
        from relmod.client.connection import BrokerFeed
        from relmod.client.embedded import EmbeddedFeed

        client = self.client
        feed = client.feed
        registry = client.registry
        by_path = sum(1 for r in registry.records() if r.by_path and r.kind != "folder")
        out: dict[str, Any] = {
            "folder": self.folder,
            "feed": feed.name if feed is not None else "none",
            "connected": False,
            "epoch": None,
            "seq": None,
            "relmod_modules": by_path,
            "tracked_modules": len(registry.files()) - by_path,
            "stale": registry.stale_count(),
            "focus": self._focus.paths(),
            "cells": self.cells,
            "catch_ups": self.catch_ups,
            "reloads": self.reloads,
            "patched": registry.patched,
            "unpatchable": registry.unpatchable,
            "patching": registry.patch,
        }
        broken = {path: message for path, (_, message) in self._shown.items()}
        broken.update({r.key: r.last_error for r in registry.records() if r.last_error})
        if isinstance(feed, BrokerFeed) and feed.reads_disk:
            state = feed.status()
            out.update(
                connected=state["connected"],
                epoch=state["epoch"],
                seq=state["seq"],
                connection_file=state["connection_file"],
                broker_pid=state["broker_pid"],
                fallback=state["fallback"],
            )
            for error in self._broker_broken():
                broken.setdefault(error.path, str(error))
        elif isinstance(feed, EmbeddedFeed):
            out["backend"] = feed.backend
        out["broken"] = dict(sorted(broken.items()))
        return out

    def describe(self) -> str:
        """The status as a few lines of text (what ``%relmod`` prints)."""
        s = self.status()
        if s["feed"] == "broker":
            state = (
                "connected" if s["connected"] else "not connected (watching files here meanwhile)"
            )
            head = (
                f"relmod: broker feed, {state}; broker pid {s['broker_pid']}, epoch {s['epoch']}, "
                f"seq {s['seq']}"
            )
        elif s["feed"] == "embedded":
            head = f"relmod: embedded feed, this process watches its files ({s['backend']})"
        else:
            head = "relmod: no feed yet (it starts with the first module loaded)"
        lines = [
            head,
            f"  notebook folder: {s['folder']}  (from . import name)",
            f"  modules: {s['tracked_modules']} imported, {s['relmod_modules']} loaded by path "
            f"(relmod.at/use/imp); {s['stale']} stale",
            f"  cells: {s['cells']}, {s['catch_ups']} with a catch-up, {s['reloads']} reload(s); "
            f"{len(s['focus'])} recent file(s) checked before each cell",
            (
                f"  held references: {s['patched']} object(s) updated in place, "
                f"{s['unpatchable']} left as they were (relmod.stale_objects() lists instances)"
                if s["patching"]
                else "  held references: not updated (relmod.configure(patch=False))"
            ),
        ]
        if s["broken"]:
            lines.append(f"  broken: {len(s['broken'])} file(s)")
            lines += [f"    {display_path(p, s['folder'])}: {m}" for p, m in s["broken"].items()]
        else:
            lines.append("  broken: none")
        return "\n".join(lines)


def _presented(errors: list[ReloadError], shell_ref: weakref.ref[Any]) -> ReloadError:
    """The first error, shown by IPython as every error's message and cause, without our frames."""
    first = errors[0].with_traceback(None)

    def render() -> list[str]:
        shell = shell_ref()
        lines: list[str] = []
        for err in errors:
            cause = err.__cause__
            if shell is not None and cause is not None and not isinstance(cause, OSError):
                if isinstance(cause, SyntaxError):  # the line with a caret, as for a cell
                    lines += shell.SyntaxTB.structured_traceback(type(cause), cause, None)
                else:
                    tb = _from_file(cause.__traceback__, os.path.realpath(err.path))
                    lines += shell.InteractiveTB.structured_traceback(type(cause), cause, tb)
            lines.append(f"{type(err).__name__}: {err}")
        return lines

    first._render_traceback_ = render  # type: ignore[attr-defined]  # IPython's display protocol
    return first


def _from_file(tb: types.TracebackType | None, path: str) -> types.TracebackType | None:
    """The part of a traceback from the first frame in ``path`` on (relmod's frames are noise)."""
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != path:
        tb = tb.tb_next
    return tb


# -- the IPython extension protocol -------------------------------------------------------------


def _loaded_in(shell: Any) -> CellSync | None:
    for callback in shell.events.callbacks["pre_run_cell"]:
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, CellSync):
            return owner
    return None


def _connect(client: Client, folder: str) -> str:
    """Connect to the broker of ``folder`` if one runs; a line saying what happened."""
    from relmod.connfile import find_connection_file  # json, sockets: only in a kernel

    if find_connection_file(folder) is None:
        return (
            f"relmod: no broker serves {folder}; this process watches its own files "
            f"(`relmod-broker {folder}` shares one watcher between processes)."
        )
    try:
        feed = client.connect(folder, timeout=CONNECT_TIMEOUT)
    except BrokerError as err:
        return f"relmod: {err} Until then, this process watches its own files."
    info = feed.info
    root, pid = (info["root"], info["pid"]) if info is not None else (folder, None)
    return f"relmod: connected to the broker of {root} (pid {pid})."


def load_ipython_extension(ipython: Any) -> CellSync:
    """``%load_ext relmod``: connect, install relmod for the cwd, reload before every cell.

    Calling it again for the same shell returns the running extension.

    Args:
        ipython: the ``InteractiveShell`` (``get_ipython()``).

    Returns:
        The :class:`CellSync` serving the shell.

    Example:
        In [1]: %load_ext relmod
        relmod: no broker serves /home/me/nb; this process watches its own files (...).
        In [2]: from . import helpers
    """
    running = _loaded_in(ipython)
    if running is not None:
        return running
    client = default_client()
    folder = normalize(os.getcwd())
    line = _connect(client, folder)
    print(line)
    sync = CellSync(ipython, client, folder)
    sync.start()
    return sync


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext relmod``: stop reloading before cells; loaded modules stay as they are.

    Args:
        ipython: the ``InteractiveShell``.
    """
    running = _loaded_in(ipython)
    if running is not None:
        running.close()
