"""The dependency graph of a project's files, shared by the broker and the clients.

Nodes are strings, normally absolute paths of files or folders (the import tracker uses module
names). An edge points from a dependent to its dependency: ``a.py -> b.py`` means "a.py imports
b.py", so when ``b.py`` changes ``a.py`` is affected too. Every edge carries the set of its origins:
``"static"`` for edges found by scanning the source (:mod:`relmod.scan`), ``"runtime"`` for imports
that actually ran. One edge may have both; it disappears when its last origin goes.

The graph is thread-safe: one internal lock guards it, and no method calls out (to the caller's
iterables, or to logging) while holding the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

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
        # Every node is a key of _deps and of _dependents; every edge a key of _origins, whose
        # origin sets are never empty.
        self._deps: dict[str, set[str]] = {}
        self._dependents: dict[str, set[str]] = {}
        # Origin sets are shared, immutable and few (static, runtime, both): one per edge would
        # cost ~200 bytes each, and a big project has ~100,000 edges.
        self._origins: dict[tuple[str, str], frozenset[str]] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        self._single: dict[str, frozenset[str]] = {}  # origin -> the interned {origin}

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
        wanted = set(dependencies)  # read the caller's iterable before taking the lock
        dropped_self = path in wanted
        wanted.discard(path)
        with self._lock:
            self._add_node(path)
            for dep in list(self._deps[path]):
                if dep not in wanted and origin in self._origins[path, dep]:
                    self._unlink(path, dep, origin)
            for dep in wanted:
                self._add_node(dep)
                self._link(path, dep, origin)
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
            self._add_node(dependent)
            self._add_node(dependency)
            self._link(dependent, dependency, origin)

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
                self._dependents[dep].discard(path)
                del self._origins[path, dep]
            for dependent in self._dependents.pop(path):
                self._deps[dependent].discard(path)
                del self._origins[dependent, path]

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
            return frozenset(dep for dep in deps if origin in self._origins[path, dep])

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
            return len(self._origins)

    def __len__(self) -> int:
        with self._lock:
            return len(self._deps)

    def __contains__(self, path: object) -> bool:
        with self._lock:
            return path in self._deps

    def __repr__(self) -> str:
        with self._lock:
            nodes, edges = len(self._deps), len(self._origins)
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
        return [(a, b, tuple(sorted(origins))) for (a, b), origins in self._origins.items()]

    def _add_node(self, path: str) -> None:
        if path not in self._deps:
            self._deps[path] = set()
            self._dependents[path] = set()

    def _intern(self, origins: frozenset[str]) -> frozenset[str]:
        return self._interned.setdefault(origins, origins)

    def _link(self, dependent: str, dependency: str, origin: str) -> None:
        self._deps[dependent].add(dependency)
        self._dependents[dependency].add(dependent)
        edge = (dependent, dependency)
        old = self._origins.get(edge)
        if old is None:  # a new edge, as most are: no set to build
            single = self._single.get(origin)
            if single is None:
                single = self._single[origin] = self._intern(frozenset((origin,)))
            self._origins[edge] = single
        elif origin not in old:
            self._origins[edge] = self._intern(old | {origin})

    def _unlink(self, dependent: str, dependency: str, origin: str | None) -> None:
        edge = (dependent, dependency)
        origins = self._origins.get(edge)
        if origins is None:
            return
        left = frozenset() if origin is None else origins - {origin}
        if left:
            self._origins[edge] = self._intern(left)
        else:
            del self._origins[edge]
            self._deps[dependent].discard(dependency)
            self._dependents[dependency].discard(dependent)


def _reachable(start: list[str], adjacency: Mapping[str, AbstractSet[str]]) -> set[str]:
    """``start`` and every node reachable from it along ``adjacency``; iterative, no recursion."""
    seen = set(start)
    todo = list(seen)
    while todo:
        nexts = adjacency.get(todo.pop())
        if nexts:
            fresh = nexts - seen
            if fresh:
                seen |= fresh
                todo.extend(fresh)
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
