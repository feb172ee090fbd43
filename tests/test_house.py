"""The house rules of relmod's layout (docs/design.md, "The parts, and which may import which").

Every import in ``relmod/`` is read with ``ast``: at module level, inside functions, and under
``if TYPE_CHECKING``. A circle of imports among relmod's modules fails, and so does an import
between ``relmod/server/`` and ``relmod/client/`` (either way), or from ``relmod/machinery/``
into either of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "relmod"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The relmod modules ``name`` imports, wherever the import statement stands."""

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str] = set()
    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from relmod.client import session" imports the module relmod.client.session
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            resolved = owner(target)
            if resolved is not None and resolved != name:
                found.add(resolved)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def in_part(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


# -- the checker itself can fail ---------------------------------------------------------------


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (package / "d.py").write_text("import pkg.sub.b as b\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.sub.b"}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


# -- the rules ---------------------------------------------------------------------------------


def test_no_module_of_relmod_imports_itself_back_through_others() -> None:
    found = circles(import_graph())
    assert found == [], "import circles (module-level, function-level or TYPE_CHECKING): " + (
        "; ".join(" <-> ".join(c) for c in found)
    )


@pytest.mark.parametrize(
    ("part", "forbidden"),
    [
        ("relmod.server", "relmod.client"),
        ("relmod.client", "relmod.server"),
        ("relmod.machinery", "relmod.client"),
        ("relmod.machinery", "relmod.server"),
    ],
)
def test_a_part_never_imports_the_parts_it_must_not(part: str, forbidden: str) -> None:
    graph = import_graph()
    crossings = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if in_part(module, part)
        for target in targets
        if in_part(target, forbidden)
    )
    assert crossings == []
