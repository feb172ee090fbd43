"""How fast the dependency graph answers "what does this change affect?" on a big project.

Builds a 10,000-file project graph of a realistic shape, then times ``affected_by`` for one change
(median of 1000 runs) and prints a small table::

    .venv/bin/python benchmarks/bench_graph.py [--files 10000] [--runs 1000] [--seed 1]

The shape: packages of 25 modules in four layers. A module imports a few earlier modules of its
own package, a few modules of lower layers (popular ones more often), and often one of ten core
utilities; each package's ``__init__.py`` re-exports three of its modules, and some modules do
``from . import name``, which closes package cycles as in real code.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
from collections.abc import Callable

from relmod.graph import DependencyGraph

PACKAGE_SIZE = 25
LAYERS = 4
CORE = [f"/proj/core/util{i}.py" for i in range(10)]


def project(files: int, rng: random.Random) -> dict[str, list[str]]:
    """file -> the files it imports, for a project of about ``files`` files."""
    packages = max(LAYERS, files // PACKAGE_SIZE)
    per_layer = max(1, packages // LAYERS)
    imports: dict[str, list[str]] = {path: [] for path in CORE}
    layers: list[list[str]] = [[] for _ in range(LAYERS)]
    for number in range(packages):
        layer = min(number // per_layer, LAYERS - 1)
        folder = f"/proj/l{layer}/p{number:04d}"
        init = f"{folder}/__init__.py"
        modules = [f"{folder}/m{i:02d}.py" for i in range(PACKAGE_SIZE - 1)]
        imports[init] = rng.sample(modules, 3)
        lower = [m for below in layers[:layer] for m in below]
        for i, module in enumerate(modules):
            deps = rng.sample(modules[:i], min(i, rng.randint(0, 4)))
            if lower:
                # Popular modules get imported more: pick from the front of the list more often.
                for _ in range(rng.randint(1, 4)):
                    deps.append(lower[int(len(lower) * rng.random() ** 3)])
            if rng.random() < 0.5:
                deps.append(rng.choice(CORE))
            if rng.random() < 0.2:
                deps.append(init)
            imports[module] = deps
        layers[layer] += modules
    return imports


def median_ns(runs: int, call: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    imports = project(args.files, random.Random(args.seed))

    graph = DependencyGraph()
    start = time.perf_counter_ns()
    for path, deps in imports.items():
        graph.set_dependencies(path, deps)
    build_ms = (time.perf_counter_ns() - start) / 1e6

    sizes = {path: len(graph.affected_by([path])) for path in imports}
    by_size = sorted(imports, key=lambda p: (sizes[p], p))
    leaf = by_size[0]
    typical = by_size[len(by_size) // 2]
    worst = by_size[-1]
    typical_set = graph.affected_by([typical])

    rows: list[tuple[str, str, str]] = [
        ("graph build", f"{len(graph)} nodes, {graph.edge_count()} edges", f"{build_ms:.1f} ms"),
    ]
    for label, path in (("leaf (no dependents)", leaf), ("median file", typical)):
        ns = median_ns(args.runs, functools.partial(graph.affected_by, [path]))
        rows.append((f"affected_by, {label}", f"{sizes[path]} affected", f"{ns / 1e3:.1f} us"))
    ns = median_ns(args.runs, lambda: graph.affected_by([worst]))
    rows.append(("affected_by, most imported", f"{sizes[worst]} affected", f"{ns / 1e3:.1f} us"))
    ns = median_ns(args.runs, lambda: graph.in_dependency_order(typical_set))
    rows.append(("in_dependency_order, median", f"{len(typical_set)} paths", f"{ns / 1e3:.1f} us"))

    print(f"relmod DependencyGraph, {args.files} files, median of {args.runs} runs")
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
