"""What happens to modules, as events: one small listener type for every "something happened".

A listener is any callable taking an :class:`Event`. ``'stale'`` events are emitted on the feed's
thread, ``'reloaded'`` and ``'failed'`` on the thread that ran the reload. A listener that raises is
logged once (with its traceback) and otherwise ignored: it never delays or breaks the feed beyond
its own running time, so keep listeners quick.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

log = logging.getLogger(__name__)

EventKind = Literal["stale", "reloaded", "failed"]


class Event(NamedTuple):
    """One thing that happened to one module.

    Attributes:
        kind: ``'stale'`` (an invalidation marked it), ``'reloaded'`` (it ran again) or
            ``'failed'`` (its reload failed; the last good version stays in use).
        path: the file that runs (for a package, its ``__init__.py``).
        name: the module's name in ``sys.modules``.
        time: when it happened, as ``time.time()``.
        error: for ``'failed'``, the message, naming file and line; else None.
    """

    kind: EventKind
    path: str
    name: str
    time: float
    error: str | None = None


Listener = Callable[[Event], object]

_new_event = functools.partial(tuple.__new__, Event)
"""``Event`` from a tuple of its five fields, with no Python frame (see emit_stale)."""


class Listeners:
    """A set of listeners, each called for every event.

    Example:
        >>> seen = []; listeners = Listeners(); listeners.add(seen.append)
        >>> listeners.emit(Event('stale', '/p/a.py', 'a', 0.0)); [e.kind for e in seen]
        ['stale']
    """

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self._stale: tuple[Listener, ...] = ()  # those that also hear 'stale' events
        self.hear_stale = False
        """Whether a listener hears ``'stale'`` events (else marking makes none); an attribute,
        not a property: marking reads it on every client's feed, once per save."""
        self._complained: set[int] = set()
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork is free again."""
        self._lock = threading.Lock()

    def add(self, listener: Listener, *, stale: bool = True) -> None:
        """Call ``listener(event)`` for every event from now on; with ``stale=False``, for
        every event but ``'stale'`` ones (a feed hears of marks in batches instead)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
            if stale:
                self._stale = (*self._stale, listener)
                self.hear_stale = True

    def remove(self, listener: Listener) -> None:
        """Stop calling a listener (no error when it was not added).

        Listeners are compared with ``==``: ``obj.method`` makes a new bound method each time,
        equal to the one added, never the same object.
        """
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x != listener)
            self._stale = tuple(x for x in self._stale if x != listener)
            self.hear_stale = bool(self._stale)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit_stale(self, marks: Iterable[tuple[str, str]], when: float) -> None:
        """Emit a ``'stale'`` event per ``(path, name)`` marked at ``when``, in one call.

        What :meth:`emit` does for each, without a Python call per event to build or send it:
        every client's feed marks modules once per save, mostly with cold caches.
        """
        for path, name in marks:
            event = _new_event(("stale", path, name, when, None))
            for listener in self._stale:
                try:
                    listener(event)
                except Exception:
                    self._complain(listener, event)

    def emit(self, event: Event) -> None:
        """Call every listener; one that raises is logged once and the others still run."""
        for listener in self._stale if event.kind == "stale" else self._listeners:
            try:
                listener(event)
            except Exception:
                self._complain(listener, event)

    def _complain(self, listener: Listener, event: Event) -> None:
        """Log a listener's exception, the first time that listener raises (call in except)."""
        if id(listener) not in self._complained:
            self._complained.add(id(listener))
            log.exception(
                "relmod: the listener %r raised on a %r event; it stays registered, and "
                "further errors from it are not logged",
                listener,
                event.kind,
            )
