"""The dependency graph of a project's files, shared by the broker and the clients.

Nodes are strings, normally absolute paths of files or folders (the import tracker uses module
names). An edge points from a dependent to its dependency: ``a.py -> b.py`` means "a.py imports
b.py", so when ``b.py`` changes ``a.py`` is affected too. Every edge carries the set of its origins:
``"static"`` for edges found by scanning the source (:mod:`relmod.scan`), ``"runtime"`` for imports
that actually ran. One edge may have both; it disappears when its last origin goes.

The graph is thread-safe: one internal lock guards it, and no method calls out (to the caller's
iterables, or to logging) while holding the lock.

Memory: a broker holds the graph of a whole project (10,000 files, over 100,000 edges), so it is
stored once and lean: each node is one interned string, shared by every edge that names it;
the edges of a node are a list in each direction (a set costs four times as much); and an
edge's origins are stored only when they are not just ``"static"``, the origin of nearly every
edge a broker holds.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Collection, Iterable, Mapping

from relmod.sources import display_path

__all__ = ["RUNTIME", "STATIC", "DependencyGraph"]

log = logging.getLogger(__name__)

STATIC = "static"
"""The origin of edges found by the static import scan."""
RUNTIME = "runtime"
"""The origin of edges recorded from imports that ran."""


class DependencyGraph:
    """Files and the files they depend on, with fast "who is affected by this change" queries.

    Example:
        >>> g = DependencyGraph()
        >>> g.set_dependencies('/p/app.py', ['/p/lib.py'])
        >>> g.set_dependencies('/p/lib.py', ['/p/util.py'])
        >>> sorted(g.affected_by(['/p/util.py']))
        ['/p/app.py', '/p/lib.py', '/p/util.py']
        >>> g.in_dependency_order(['/p/app.py', '/p/util.py', '/p/lib.py'])
        ['/p/util.py', '/p/lib.py', '/p/app.py']
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Every node is a key of _deps and of _dependents (one interned str); b is in
        # _deps[a] exactly when a is in _dependents[b]. Lists, not sets: nodes have a handful
        # of edges each, and a broker holds a whole project's.
        self._deps: dict[str, list[str]] = {}
        self._dependents: dict[str, list[str]] = {}
        # The origins of every edge that is not just "static" (an edge missing here is). Origin
        # sets are shared and immutable: one per edge would cost ~200 bytes each.
        self._origins: dict[tuple[str, str], frozenset[str]] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {_STATIC_ONLY: _STATIC_ONLY}
        self._edge_count = 0

    # -- changing the graph -----------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: a lock held by another thread at the fork would never be freed."""
        self._lock = threading.Lock()

    def set_dependencies(
        self, path: str, dependencies: Iterable[str], *, origin: str = STATIC
    ) -> None:
        """Replace the edges of one origin that leave ``path``; edges of other origins stay.

        ``path`` and every dependency become nodes. A dependency on ``path`` itself is dropped.

        Args:
            path: the dependent.
            dependencies: everything ``path`` now depends on, as far as ``origin`` knows.
            origin: whose knowledge this is, such as ``"static"`` or ``"runtime"``.

        Example:
            >>> g = DependencyGraph()
            >>> g.set_dependencies('/p/a.py', ['/p/b.py', '/p/c.py'])
            >>> g.set_dependencies('/p/a.py', ['/p/c.py'])
            >>> sorted(g.dependencies_of('/p/a.py')), '/p/b.py' in g
            (['/p/c.py'], True)
        """
        wanted = {sys.intern(dep) for dep in dependencies}  # read it before taking the lock
        dropped_self = path in wanted
        wanted.discard(path)
        with self._lock:
            path = self._add_node(path)
            current = set(self._deps[path])
            for dep in current - wanted:
                if origin in self._origins_of(path, dep):
                    self._unlink(path, dep, origin)
            for dep in wanted:
                self._add_node(dep)
                self._link(path, dep, origin, known=dep in current)
        if dropped_self:
            log.debug("dropped a %s dependency of %s on itself", origin, path)

    def add_edge(self, dependent: str, dependency: str, *, origin: str = RUNTIME) -> None:
        """Record that ``dependent`` depends on ``dependency`` (both become nodes).

        An edge from a node to itself is dropped.

        Example:
            >>> g = DependencyGraph(); g.add_edge('/p/a.py', '/p/b.py')
            >>> g.edges()
            [('/p/a.py', '/p/b.py', ('runtime',))]
        """
        if dependent == dependency:
            log.debug("dropped a %s edge from %s to itself", origin, dependent)
            return
        with self._lock:
            dependent = self._add_node(dependent)
            dependency = self._add_node(dependency)
            self._link(dependent, dependency, origin, known=dependency in self._deps[dependent])

    def remove_edge(self, dependent: str, dependency: str, *, origin: str | None = None) -> None:
        """Forget one origin of an edge, or with ``origin=None`` the whole edge; nodes stay.

        Removing an edge that does not exist does nothing.

        Example:
            >>> g = DependencyGraph()
            >>> g.add_edge('/p/a.py', '/p/b.py', origin='static')
            >>> g.add_edge('/p/a.py', '/p/b.py', origin='runtime')
            >>> g.remove_edge('/p/a.py', '/p/b.py', origin='static'); g.edges()
            [('/p/a.py', '/p/b.py', ('runtime',))]
        """
        with self._lock:
            self._unlink(dependent, dependency, origin)

    def remove(self, path: str) -> None:
        """Forget a node and every edge into or out of it; an unknown node is ignored.

        Example:
            >>> g = DependencyGraph(); g.add_edge('/p/a.py', '/p/b.py'); g.remove('/p/b.py')
            >>> '/p/b.py' in g, g.dependencies_of('/p/a.py')
            (False, frozenset())
        """
        with self._lock:
            deps = self._deps.pop(path, None)
            if deps is None:
                return
            for dep in deps:
                self._dependents[dep].remove(path)
                self._origins.pop((path, dep), None)
            dependents = self._dependents.pop(path)
            for dependent in dependents:
                if dependent != path:
                    self._deps[dependent].remove(path)
                    self._origins.pop((dependent, path), None)
            self._edge_count -= len(deps) + len(dependents)

    # -- questions ----------------------------------------------------------------------------

    def dependencies_of(self, path: str, *, origin: str | None = None) -> frozenset[str]:
        """The direct dependencies of ``path``: of one origin, or with None of any origin.

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', ['/p/b.py'])
            >>> g.dependencies_of('/p/a.py'), g.dependencies_of('/p/a.py', origin='runtime')
            (frozenset({'/p/b.py'}), frozenset())
        """
        with self._lock:
            deps = self._deps.get(path, ())
            if origin is None:
                return frozenset(deps)
            return frozenset(dep for dep in deps if origin in self._origins_of(path, dep))

    def dependents_of(self, path: str) -> frozenset[str]:
        """The nodes that depend directly on ``path``, of any origin.

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', ['/p/b.py'])
            >>> g.dependents_of('/p/b.py')
            frozenset({'/p/a.py'})
        """
        with self._lock:
            return frozenset(self._dependents.get(path, ()))

    def transitive_dependencies(self, path: str) -> set[str]:
        """Everything ``path`` depends on, directly or not; never ``path`` itself.

        Example:
            >>> g = DependencyGraph(); g.add_edge('/p/a.py', '/p/b.py')
            >>> g.add_edge('/p/b.py', '/p/a.py'); g.add_edge('/p/b.py', '/p/c.py')
            >>> sorted(g.transitive_dependencies('/p/a.py'))
            ['/p/b.py', '/p/c.py']
        """
        with self._lock:
            found = _reachable([path], self._deps)
        found.discard(path)
        return found

    def affected_by(self, paths: Iterable[str]) -> set[str]:
        """The changed ``paths`` themselves plus every node depending on them, directly or not.

        Nodes that only share a dependency with a changed path (its siblings) are not affected.
        Paths the graph does not know are still part of the answer.

        Example:
            >>> g = DependencyGraph()
            >>> g.set_dependencies('/p/a.py', ['/p/util.py'])
            >>> g.set_dependencies('/p/b.py', ['/p/util.py'])
            >>> sorted(g.affected_by(['/p/a.py'])), sorted(g.affected_by(['/p/util.py']))
            (['/p/a.py'], ['/p/a.py', '/p/b.py', '/p/util.py'])
        """
        start = list(paths)
        with self._lock:
            return _reachable(start, self._dependents)

    def in_dependency_order(self, paths: Iterable[str]) -> list[str]:
        """The given paths, each after the ones among them that it depends on.

        Only edges between the given paths count, and each path comes out once. Ties are broken
        by path order, so the answer is the same every time. Paths in a cycle come out together;
        the smallest path of a cycle comes out last of it (for a package and a submodule that
        import each other: the submodule, then the ``__init__.py``).

        Example:
            >>> g = DependencyGraph()
            >>> g.set_dependencies('/p/app.py', ['/p/lib.py'])
            >>> g.in_dependency_order(['/p/app.py', '/p/other.py', '/p/lib.py'])
            ['/p/lib.py', '/p/app.py', '/p/other.py']
        """
        given = sorted(set(paths))
        wanted = set(given)
        with self._lock:
            among = {
                path: sorted(dep for dep in self._deps.get(path, ()) if dep in wanted)
                for path in given
            }
        order: list[str] = []
        # Tarjan's algorithm closes a strongly connected component only after every component it
        # depends on, so the components come out dependencies first. Within a cycle,
        # _postorder starts at the smallest path, which therefore comes out last of its cycle.
        for component in _components(given, among):
            if len(component) == 1:
                order += component
            else:
                members = set(component)
                inside = {node: [d for d in among[node] if d in members] for node in component}
                order += _postorder(sorted(component), inside)
        return order

    def units_in_dependency_order(self, paths: Iterable[str]) -> list[list[str]]:
        """The given paths grouped into units that must run together, dependencies first.

        A unit is one path, or the paths of an import cycle among them (a strongly connected
        component): the modules of a cycle see each other while they run, so they re-execute
        as one. Only edges between the given paths count.

        Example:
            >>> g = DependencyGraph()
            >>> g.set_dependencies('/p/pkg/__init__.py', ['/p/pkg/core.py'])
            >>> g.set_dependencies('/p/pkg/core.py', ['/p/pkg/__init__.py', '/p/util.py'])
            >>> g.units_in_dependency_order(['/p/pkg/core.py', '/p/pkg/__init__.py', '/p/util.py'])
            [['/p/util.py'], ['/p/pkg/__init__.py', '/p/pkg/core.py']]
        """
        given = sorted(set(paths))
        wanted = set(given)
        with self._lock:
            among = {
                path: sorted(dep for dep in self._deps.get(path, ()) if dep in wanted)
                for path in given
            }
        return [sorted(component) for component in _components(given, among)]

    def edges(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Every edge as ``(dependent, dependency, sorted origins)``, sorted.

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', ['/p/b.py'])
            >>> g.add_edge('/p/a.py', '/p/b.py'); g.edges()
            [('/p/a.py', '/p/b.py', ('runtime', 'static'))]
        """
        with self._lock:
            found = self._edge_list()
        found.sort()
        return found

    def files(self) -> set[str]:
        """Every node, including those with no edges.

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', [])
            >>> g.files()
            {'/p/a.py'}
        """
        with self._lock:
            return set(self._deps)

    def edge_count(self) -> int:
        """How many edges there are (an edge with two origins counts once).

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', ['/p/b.py', '/p/c.py'])
            >>> g.edge_count(), len(g)
            (2, 3)
        """
        with self._lock:
            return self._edge_count

    def __len__(self) -> int:
        with self._lock:
            return len(self._deps)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._deps

    def __repr__(self) -> str:
        with self._lock:
            nodes, edges = len(self._deps), self._edge_count
        return f"<DependencyGraph: {nodes} nodes, {edges} edges>"

    # -- pictures -------------------------------------------------------------------------------

    def to_dot(self, relative_to: str | None = None) -> str:
        """The graph in Graphviz DOT; edges known only at runtime are dashed.

        Args:
            relative_to: show paths inside this folder as ``./sub/file.py``.

        Example:
            >>> g = DependencyGraph(); g.add_edge('/p/a.py', '/p/b.py')
            >>> print(g.to_dot(relative_to='/p'))
            digraph relmod {
              rankdir=LR;
              node [shape=box];
              "./a.py";
              "./b.py";
              "./a.py" -> "./b.py" [style=dashed];
            }
            <BLANKLINE>
        """
        with self._lock:
            nodes = list(self._deps)
            edges = self._edge_list()
        edges.sort()
        lines = ["digraph relmod {", "  rankdir=LR;", "  node [shape=box];"]
        lines += sorted(f"  {_dot_id(display_path(node, relative_to))};" for node in nodes)
        for dependent, dep, origins in edges:
            style = " [style=dashed]" if origins == (RUNTIME,) else ""
            lines.append(
                f"  {_dot_id(display_path(dependent, relative_to))} -> "
                f"{_dot_id(display_path(dep, relative_to))}{style};"
            )
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self, relative_to: str | None = None) -> str:
        """One line per node, each followed by its direct dependencies indented; all sorted.

        Args:
            relative_to: show paths inside this folder as ``./sub/file.py``.

        Example:
            >>> g = DependencyGraph(); g.set_dependencies('/p/a.py', ['/p/c.py', '/p/b.py'])
            >>> print(g.to_text(relative_to='/p'))
            ./a.py
                ./b.py
                ./c.py
            ./b.py
            ./c.py
        """
        with self._lock:
            snapshot = {node: list(deps) for node, deps in self._deps.items()}
        lines: list[str] = []
        for node in sorted(snapshot, key=lambda n: display_path(n, relative_to)):
            lines.append(display_path(node, relative_to))
            lines += sorted("    " + display_path(dep, relative_to) for dep in snapshot[node])
        return "\n".join(lines)

    # -- under the lock -------------------------------------------------------------------------

    def _edge_list(self) -> list[tuple[str, str, tuple[str, ...]]]:
        origins = self._origins
        return [
            (a, b, _sorted_origins(origins.get((a, b), _STATIC_ONLY)))
            for a, deps in self._deps.items()
            for b in deps
        ]

    def _origins_of(self, dependent: str, dependency: str) -> frozenset[str]:
        """The origins of an edge that exists."""
        return self._origins.get((dependent, dependency), _STATIC_ONLY)

    def _add_node(self, path: str) -> str:
        """Make ``path`` a node; returns the one string the graph keeps for it."""
        path = sys.intern(path)
        if path not in self._deps:
            self._deps[path] = []
            self._dependents[path] = []
        return path

    def _intern(self, origins: frozenset[str]) -> frozenset[str]:
        return self._interned.setdefault(origins, origins)

    def _link(self, dependent: str, dependency: str, origin: str, *, known: bool) -> None:
        """Add ``origin`` to an edge; ``known``: whether the edge exists already."""
        if not known:
            self._deps[dependent].append(dependency)
            self._dependents[dependency].append(dependent)
            self._edge_count += 1
            if origin != STATIC:
                self._origins[dependent, dependency] = self._intern(frozenset((origin,)))
            return
        old = self._origins_of(dependent, dependency)
        if origin not in old:
            self._origins[dependent, dependency] = self._intern(old | {origin})

    def _unlink(self, dependent: str, dependency: str, origin: str | None) -> None:
        deps = self._deps.get(dependent)
        if deps is None or dependency not in deps:
            return
        edge = (dependent, dependency)
        origins = self._origins.get(edge, _STATIC_ONLY)
        left = frozenset() if origin is None else origins - {origin}
        if left == _STATIC_ONLY:
            self._origins.pop(edge, None)
        elif left:
            self._origins[edge] = self._intern(left)
        else:
            self._origins.pop(edge, None)
            deps.remove(dependency)
            self._dependents[dependency].remove(dependent)
            self._edge_count -= 1


_STATIC_ONLY: frozenset[str] = frozenset((STATIC,))
_SORTED: dict[frozenset[str], tuple[str, ...]] = {}


def _sorted_origins(origins: frozenset[str]) -> tuple[str, ...]:
    found = _SORTED.get(origins)
    if found is None:
        found = _SORTED[origins] = tuple(sorted(origins))
    return found


def _reachable(start: list[str], adjacency: Mapping[str, Collection[str]]) -> set[str]:
    """``start`` and every node reachable from it along ``adjacency``; iterative, no recursion."""
    seen = set(start)
    todo = list(seen)
    add, push = seen.add, todo.append
    while todo:
        for node in adjacency.get(todo.pop(), ()):
            if node not in seen:
                add(node)
                push(node)
    return seen


def _postorder(roots: list[str], adjacency: Mapping[str, list[str]]) -> list[str]:
    """Depth-first post-order from each root in turn: every node after what it leads to, except
    along an edge that closes a cycle. Iterative, so chains of any length are fine."""
    order: list[str] = []
    seen: set[str] = set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(adjacency[root]))]
        while stack:
            node, nexts = stack[-1]
            for nxt in nexts:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, iter(adjacency[nxt])))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def _components(roots: list[str], adjacency: Mapping[str, list[str]]) -> list[list[str]]:
    """The strongly connected components (Tarjan, iterative), each closed after all it reaches."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in roots:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(adjacency[root]))]
        while work:
            node, nexts = work[-1]
            for nxt in nexts:
                if nxt not in index:
                    visit(nxt)
                    work.append((nxt, iter(adjacency[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
