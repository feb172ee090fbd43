"""Import edges clients report from what ran, each owned by the clients that reported it.

A client sends ``edges`` as its modules import each other. The broker takes an edge only when
both ends are files it tracks (or folders holding them), keeps at most
:data:`MAX_EDGES_PER_CLIENT` per client, and forgets a client's edges when the client goes
(goodbye, its process died, or silence), unless another client reported them too. So a peer can
neither grow the broker's memory with made-up paths nor leave edges behind.

Example:
    >>> from relmod.graph import DependencyGraph
    >>> graph = DependencyGraph()
    >>> edges = RuntimeEdges(graph, is_tracked=lambda p: p.startswith('/p/'))
    >>> edges.add('h:1', [('/p/a.py', '/p/b.py'), ('/etc/x.py', '/p/b.py')])
    1
    >>> graph.edge_count(), edges.refused['untracked']
    (1, 1)
    >>> edges.drop('h:1'); graph.edge_count()
    0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from relmod.graph import RUNTIME, DependencyGraph

__all__ = ["MAX_EDGES_PER_CLIENT", "RuntimeEdges"]

MAX_EDGES_PER_CLIENT = 100_000
"""The most runtime edges one client may own."""


class RuntimeEdges:
    """The runtime edges of the graph and who reported them (see the module docstring).

    Args:
        graph: the graph the edges go into (origin ``"runtime"``).
        is_tracked: whether a path is a file (or folder) the broker tracks.

    Attributes:
        refused: edges refused, by reason (``"untracked"``, ``"limit"``).
    """

    def __init__(self, graph: DependencyGraph, is_tracked: Callable[[str], bool]) -> None:
        self._graph = graph
        self._is_tracked = is_tracked
        self._owners: dict[tuple[str, str], set[str]] = {}
        self._by_client: dict[str, set[tuple[str, str]]] = {}
        self.refused: Counter[str] = Counter()
        self.changes = 0

    def __len__(self) -> int:
        return len(self._owners)

    def add(self, client: str, edges: Iterable[tuple[str, str]]) -> int:
        """Record edges ``client`` saw; returns how many were new for it."""
        mine = self._by_client.setdefault(client, set())
        added = 0
        for dependent, dependency in edges:
            edge = (dependent, dependency)
            if edge in mine or dependent == dependency:
                continue
            if len(mine) >= MAX_EDGES_PER_CLIENT:
                self.refused["limit"] += 1
                continue
            if not (self._is_tracked(dependent) and self._is_tracked(dependency)):
                self.refused["untracked"] += 1
                continue
            mine.add(edge)
            owners = self._owners.get(edge)
            if owners is None:
                self._owners[edge] = {client}
                self._graph.add_edge(dependent, dependency, origin=RUNTIME)
                self.changes += 1
            else:
                owners.add(client)
            added += 1
        if not mine:
            del self._by_client[client]
        return added

    def drop(self, client: str) -> int:
        """Forget the edges only ``client`` reported; returns how many left the graph."""
        removed = 0
        for edge in self._by_client.pop(client, ()):
            owners = self._owners.get(edge)
            if owners is None:
                continue
            owners.discard(client)
            if not owners:
                del self._owners[edge]
                self._graph.remove_edge(*edge, origin=RUNTIME)
                removed += 1
        self.changes += removed
        return removed

    def clients(self) -> int:
        """How many clients own edges."""
        return len(self._by_client)
