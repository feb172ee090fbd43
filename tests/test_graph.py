"""relmod.graph: the dependency graph shared by the broker and the clients."""

from __future__ import annotations

import itertools
import random
import sys
import threading
from collections.abc import Iterator

import pytest

from relmod.graph import DependencyGraph


def chain(length: int) -> tuple[DependencyGraph, list[str]]:
    """f0 -> f1 -> ... : each file depends on the next."""
    names = [f"/p/f{i:05d}.py" for i in range(length)]
    graph = DependencyGraph()
    for dependent, dependency in itertools.pairwise(names):
        graph.set_dependencies(dependent, [dependency])
    return graph, names


@pytest.fixture
def diamond() -> DependencyGraph:
    """app -> left, right -> base, as in a project where two modules share a helper."""
    graph = DependencyGraph()
    graph.set_dependencies("/p/app.py", ["/p/left.py", "/p/right.py"])
    graph.set_dependencies("/p/left.py", ["/p/base.py"])
    graph.set_dependencies("/p/right.py", ["/p/base.py"])
    return graph


def assert_in_order(order: list[str], graph: DependencyGraph) -> None:
    """Every edge between two listed paths points backwards in the list."""
    position = {path: i for i, path in enumerate(order)}
    for dependent, dependency, _ in graph.edges():
        if dependent in position and dependency in position:
            assert position[dependency] < position[dependent], (dependent, dependency)


# -- building and changing ----------------------------------------------------------------


def test_set_dependencies_makes_nodes_and_edges() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/a.py", ["/p/b.py", "/p/c.py"])
    graph.set_dependencies("/p/lonely.py", [])
    assert graph.dependencies_of("/p/a.py") == {"/p/b.py", "/p/c.py"}
    assert graph.dependents_of("/p/b.py") == {"/p/a.py"}
    assert graph.files() == {"/p/a.py", "/p/b.py", "/p/c.py", "/p/lonely.py"}
    assert len(graph) == 4
    assert graph.edge_count() == 2
    assert "/p/lonely.py" in graph
    assert "/p/never.py" not in graph


def test_set_dependencies_replaces_only_its_own_origin() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/a.py", ["/p/b.py", "/p/c.py"], origin="static")
    graph.add_edge("/p/a.py", "/p/c.py", origin="runtime")
    graph.add_edge("/p/a.py", "/p/d.py", origin="runtime")

    # The file was edited: the scan now finds only b and e.
    graph.set_dependencies("/p/a.py", ["/p/b.py", "/p/e.py"], origin="static")

    assert graph.edges() == [
        ("/p/a.py", "/p/b.py", ("static",)),
        ("/p/a.py", "/p/c.py", ("runtime",)),  # c lost its static origin, kept its runtime one
        ("/p/a.py", "/p/d.py", ("runtime",)),
        ("/p/a.py", "/p/e.py", ("static",)),
    ]
    assert graph.dependencies_of("/p/a.py", origin="static") == {"/p/b.py", "/p/e.py"}
    assert graph.dependencies_of("/p/a.py", origin="runtime") == {"/p/c.py", "/p/d.py"}

    graph.set_dependencies("/p/a.py", [], origin="runtime")
    assert graph.dependencies_of("/p/a.py") == {"/p/b.py", "/p/e.py"}
    assert graph.affected_by(["/p/d.py"]) == {"/p/d.py"}


def test_an_edge_with_both_origins_is_one_edge() -> None:
    graph = DependencyGraph()
    graph.add_edge("/p/a.py", "/p/b.py", origin="static")
    graph.add_edge("/p/a.py", "/p/b.py", origin="runtime")
    graph.add_edge("/p/a.py", "/p/b.py", origin="runtime")
    assert graph.edges() == [("/p/a.py", "/p/b.py", ("runtime", "static"))]
    assert graph.edge_count() == 1


def test_add_edge_defaults_to_runtime_and_set_dependencies_to_static() -> None:
    graph = DependencyGraph()
    graph.add_edge("/p/a.py", "/p/b.py")
    graph.set_dependencies("/p/a.py", ["/p/c.py"])
    assert graph.edges() == [
        ("/p/a.py", "/p/b.py", ("runtime",)),
        ("/p/a.py", "/p/c.py", ("static",)),
    ]


def test_remove_edge_by_origin_then_whole() -> None:
    graph = DependencyGraph()
    graph.add_edge("/p/a.py", "/p/b.py", origin="static")
    graph.add_edge("/p/a.py", "/p/b.py", origin="runtime")
    graph.remove_edge("/p/a.py", "/p/b.py", origin="static")
    assert graph.affected_by(["/p/b.py"]) == {"/p/a.py", "/p/b.py"}
    graph.remove_edge("/p/a.py", "/p/b.py")
    assert graph.affected_by(["/p/b.py"]) == {"/p/b.py"}
    assert graph.edges() == []
    assert graph.files() == {"/p/a.py", "/p/b.py"}  # nodes stay
    graph.remove_edge("/p/a.py", "/p/nowhere.py")  # no such edge: nothing happens
    graph.remove_edge("/p/nowhere.py", "/p/a.py")


def test_a_file_never_depends_on_itself() -> None:
    graph = DependencyGraph()
    graph.add_edge("/p/a.py", "/p/a.py")
    graph.set_dependencies("/p/b.py", ["/p/b.py", "/p/c.py"])
    assert graph.edges() == [("/p/b.py", "/p/c.py", ("static",))]
    assert graph.transitive_dependencies("/p/b.py") == {"/p/c.py"}


def test_remove_forgets_a_node_and_its_edges_both_ways(diamond: DependencyGraph) -> None:
    diamond.remove("/p/left.py")
    assert "/p/left.py" not in diamond
    assert diamond.dependencies_of("/p/app.py") == {"/p/right.py"}
    assert diamond.dependents_of("/p/base.py") == {"/p/right.py"}
    assert diamond.affected_by(["/p/left.py"]) == {"/p/left.py"}
    assert all("/p/left.py" not in edge[:2] for edge in diamond.edges())
    diamond.remove("/p/left.py")  # already gone: nothing happens
    assert len(diamond) == 3


def test_unknown_paths_have_no_neighbours() -> None:
    graph = DependencyGraph()
    assert graph.dependencies_of("/p/x.py") == frozenset()
    assert graph.dependents_of("/p/x.py") == frozenset()
    assert graph.transitive_dependencies("/p/x.py") == set()
    assert graph.affected_by(["/p/x.py"]) == {"/p/x.py"}
    assert graph.in_dependency_order(["/p/x.py"]) == ["/p/x.py"]
    assert len(graph) == 0
    assert graph.to_text() == ""


# -- affected sets ------------------------------------------------------------------------


def test_a_change_affects_every_dependent_of_a_diamond(diamond: DependencyGraph) -> None:
    assert diamond.affected_by(["/p/base.py"]) == {
        "/p/base.py",
        "/p/left.py",
        "/p/right.py",
        "/p/app.py",
    }


def test_siblings_are_not_affected(diamond: DependencyGraph) -> None:
    # left and right share base; a change to left must not reload right, nor base.
    assert diamond.affected_by(["/p/left.py"]) == {"/p/left.py", "/p/app.py"}
    assert diamond.affected_by(["/p/app.py"]) == {"/p/app.py"}


def test_affected_by_several_changes_is_their_union(diamond: DependencyGraph) -> None:
    diamond.set_dependencies("/p/other.py", ["/p/tool.py"])
    assert diamond.affected_by(iter(["/p/left.py", "/p/tool.py"])) == {
        "/p/left.py",
        "/p/app.py",
        "/p/tool.py",
        "/p/other.py",
    }


def test_transitive_dependencies(diamond: DependencyGraph) -> None:
    assert diamond.transitive_dependencies("/p/app.py") == {
        "/p/left.py",
        "/p/right.py",
        "/p/base.py",
    }
    assert diamond.transitive_dependencies("/p/base.py") == set()


def test_a_cycle_affects_all_its_members_once() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/a.py", ["/p/b.py"])
    graph.set_dependencies("/p/b.py", ["/p/c.py"])
    graph.set_dependencies("/p/c.py", ["/p/a.py"])
    graph.set_dependencies("/p/user.py", ["/p/b.py"])
    assert graph.affected_by(["/p/a.py"]) == {"/p/a.py", "/p/b.py", "/p/c.py", "/p/user.py"}
    assert graph.transitive_dependencies("/p/a.py") == {"/p/b.py", "/p/c.py"}
    assert graph.transitive_dependencies("/p/user.py") == {"/p/a.py", "/p/b.py", "/p/c.py"}


def test_ten_thousand_files_give_exact_affected_sets() -> None:
    # Heap-shaped project: file i imports its parent (i - 1) // 2, and every file imports core.
    # A change to file k affects exactly the files below k in the heap.
    size = 10_000
    names = [f"/proj/m{i:05d}.py" for i in range(size)]
    graph = DependencyGraph()
    graph.set_dependencies(names[0], ["/proj/core.py"])
    for i in range(1, size):
        graph.set_dependencies(names[i], [names[(i - 1) // 2], "/proj/core.py"])
    assert len(graph) == size + 1
    assert graph.edge_count() == 2 * size - 1

    def below(k: int) -> set[str]:
        found = set()
        for i in range(size):
            j = i
            while j > k:
                j = (j - 1) // 2
            if j == k:
                found.add(names[i])
        return found

    for k in (0, 1, 2, 7, 150, 4999, 9999):
        assert graph.affected_by([names[k]]) == below(k), k
    assert names[8] not in graph.affected_by([names[7]])  # the sibling of 7 is not touched
    assert graph.affected_by(["/proj/core.py"]) == set(names) | {"/proj/core.py"}
    assert graph.transitive_dependencies(names[9999]) == {
        "/proj/core.py",
        *(names[j] for j in (4999, 2499, 1249, 624, 311, 155, 77, 38, 18, 8, 3, 1, 0)),
    }
    order = graph.in_dependency_order(graph.affected_by([names[3]]))
    assert order[0] == names[3]
    assert_in_order(order, graph)


def test_a_long_chain_needs_no_recursion() -> None:
    length = max(500, sys.getrecursionlimit() + 100)
    graph, names = chain(length)
    assert graph.affected_by([names[-1]]) == set(names)
    assert graph.transitive_dependencies(names[0]) == set(names[1:])
    assert graph.in_dependency_order(names) == names[::-1]


def test_a_long_cycle_needs_no_recursion() -> None:
    length = max(500, sys.getrecursionlimit() + 100)
    graph, names = chain(length)
    graph.add_edge(names[-1], names[0])
    assert graph.affected_by([names[250]]) == set(names)
    assert graph.transitive_dependencies(names[0]) == set(names[1:])
    order = graph.in_dependency_order(reversed(names))
    assert sorted(order) == names
    # Broken at the smallest path: f00000 comes last, and the rest follow their edges.
    assert order == names[1:][::-1] + [names[0]]


# -- dependency order ---------------------------------------------------------------------


def test_dependency_order_of_a_diamond(diamond: DependencyGraph) -> None:
    order = diamond.in_dependency_order(["/p/app.py", "/p/right.py", "/p/base.py", "/p/left.py"])
    assert order == ["/p/base.py", "/p/left.py", "/p/right.py", "/p/app.py"]


def test_dependency_order_is_deterministic(diamond: DependencyGraph) -> None:
    paths = ["/p/app.py", "/p/right.py", "/p/base.py", "/p/left.py", "/p/zzz.py", "/p/aaa.py"]
    orders = set()
    for seed in range(20):
        random.Random(seed).shuffle(paths)
        orders.add(tuple(diamond.in_dependency_order(paths)))
    assert len(orders) == 1


def test_dependency_order_counts_only_edges_among_the_given_paths(
    diamond: DependencyGraph,
) -> None:
    assert diamond.in_dependency_order(["/p/left.py", "/p/app.py"]) == ["/p/left.py", "/p/app.py"]
    assert diamond.in_dependency_order(["/p/right.py", "/p/left.py"]) == [
        "/p/left.py",
        "/p/right.py",
    ]
    assert diamond.in_dependency_order(["/p/app.py", "/p/app.py"]) == ["/p/app.py"]


def test_a_package_cycle_reloads_the_submodule_before_the_package() -> None:
    # pkg/__init__.py does `from .a import f`, pkg/a.py does `from . import helper`.
    graph = DependencyGraph()
    init, sub, app = "/p/pkg/__init__.py", "/p/pkg/a.py", "/p/app.py"
    graph.set_dependencies(init, [sub])
    graph.set_dependencies(sub, [init])
    graph.set_dependencies(app, [sub])  # app enters the cycle through the submodule
    for given in ([app, sub, init], [init, sub, app], [sub, app, init]):
        assert graph.in_dependency_order(given) == [sub, init, app]


def test_a_cycle_comes_out_after_its_dependencies_and_before_its_dependents() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/b.py", ["/p/c.py", "/p/base.py"])
    graph.set_dependencies("/p/c.py", ["/p/b.py"])
    graph.set_dependencies("/p/a.py", ["/p/c.py"])
    graph.set_dependencies("/p/z.py", ["/p/a.py"])
    everything = sorted(graph.files())
    order = graph.in_dependency_order(everything)
    assert sorted(order) == everything
    assert order[0] == "/p/base.py"
    assert set(order[1:3]) == {"/p/b.py", "/p/c.py"}
    assert order[3:] == ["/p/a.py", "/p/z.py"]


def test_dependency_order_of_random_dags_respects_every_edge() -> None:
    rng = random.Random(7)
    for _ in range(30):
        graph = DependencyGraph()
        names = [f"/p/{rng.random():.8f}.py" for _ in range(40)]
        for i, name in enumerate(names):
            graph.set_dependencies(name, rng.sample(names[i + 1 :], min(3, len(names) - i - 1)))
        order = graph.in_dependency_order(names)
        assert sorted(order) == sorted(names)
        assert_in_order(order, graph)


# -- pictures -----------------------------------------------------------------------------


def test_to_text_lists_each_file_then_its_dependencies() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/b.py", ["/p/lib/z.py", "/p/a.py"])
    graph.add_edge("/p/a.py", "/outside/x.py")
    assert graph.to_text(relative_to="/p").splitlines() == [
        "./a.py",
        "    /outside/x.py",
        "./b.py",
        "    ./a.py",
        "    ./lib/z.py",
        "./lib/z.py",
        "/outside/x.py",
    ]
    assert graph.to_text().splitlines()[0] == "/outside/x.py"
    assert "    /p/lib/z.py" in graph.to_text().splitlines()


def test_to_dot_draws_runtime_only_edges_dashed() -> None:
    graph = DependencyGraph()
    graph.set_dependencies("/p/a.py", ["/p/b.py"])
    graph.add_edge("/p/a.py", "/p/b.py")  # static and runtime: solid
    graph.add_edge("/p/a.py", "/p/c.py")  # runtime only: dashed
    graph.set_dependencies("/p/c.py", ['/p/we"ird.py'])
    dot = graph.to_dot(relative_to="/p")
    assert dot.startswith("digraph relmod {\n")
    assert dot.endswith("}\n")
    lines = dot.splitlines()
    assert '  "./a.py" -> "./b.py";' in lines
    assert '  "./a.py" -> "./c.py" [style=dashed];' in lines
    assert '  "./c.py" -> "./we\\"ird.py";' in lines
    assert '  "./a.py";' in lines
    assert '"/p/a.py"' in graph.to_dot()


# -- threads --------------------------------------------------------------------------------


def test_arguments_are_read_before_the_lock_is_taken(diamond: DependencyGraph) -> None:
    # A caller may pass a generator that asks the graph questions; that must not deadlock.
    def asking(paths: list[str]) -> Iterator[str]:
        for path in paths:
            diamond.dependencies_of(path)
            yield path

    assert diamond.affected_by(asking(["/p/left.py"])) == {"/p/left.py", "/p/app.py"}
    assert diamond.in_dependency_order(asking(["/p/app.py", "/p/left.py"])) == [
        "/p/left.py",
        "/p/app.py",
    ]
    diamond.set_dependencies("/p/new.py", asking(["/p/app.py"]))
    assert diamond.dependents_of("/p/app.py") == {"/p/new.py"}


def test_concurrent_writers_and_readers_keep_the_graph_consistent() -> None:
    graph = DependencyGraph()
    names = [f"/p/m{i:03d}.py" for i in range(60)]
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(1500):
                a, b = rng.sample(names, 2)
                action = rng.random()
                if action < 0.5:
                    graph.add_edge(a, b, origin=rng.choice(["static", "runtime"]))
                elif action < 0.8:
                    graph.set_dependencies(a, rng.sample(names, 3), origin="static")
                elif action < 0.95:
                    graph.remove_edge(a, b)
                else:
                    graph.remove(a)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def reader() -> None:
        try:
            for _ in range(500):
                affected = graph.affected_by([names[0]])
                assert names[0] in affected
                order = graph.in_dependency_order(affected)
                assert sorted(order) == sorted(affected)
                graph.to_text()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Forward and backward views agree edge for edge.
    edges = graph.edges()
    assert graph.edge_count() == len(edges)
    for dependent, dependency, origins in edges:
        assert origins
        assert dependent in graph.dependents_of(dependency)
        assert dependency in graph.dependencies_of(dependent)
    for node in graph.files():
        for dependency in graph.dependencies_of(node):
            assert (node, dependency) in {(a, b) for a, b, _ in edges}
