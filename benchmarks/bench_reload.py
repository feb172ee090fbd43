"""Deep reload of a 50-module chain: relmod against ``importlib.reload`` of the same modules.

Run: .venv/bin/python benchmarks/bench_reload.py [--quick]

Two copies of one package of 50 modules, each importing the previous one (``from . import
mN``, ``X = mN.X + 1``), imported the ordinary way in this process: ``chain`` reloads through
relmod (``relmod.enable()``), ``plainchain`` is excluded from relmod and reloaded with
``importlib.reload`` in dependency order, as a careful user would. Each round saves a new leaf
in both (the same bytes), then times:

- relmod: from ``Registry.invalidate([leaf])`` (what a feed does when a save arrives: mark the
  leaf and its 49 dependents stale) to the first read of the top module's value, which reloads
  the 50 modules, dependencies first (with patching on, the default, and off);
- importlib: ``importlib.reload`` of the 50 plain modules in order, then the same read.

The table gives medians over the rounds and the ratio relmod / importlib (issue 13's target:
at most 1.15x). Both sides compile the changed leaf from source and write it to their bytecode
cache; ``importlib`` also re-reads and re-validates the bytecode of the 49 unchanged modules from
``__pycache__``, while relmod stats each of them once and re-runs the code object it kept: no
invalidation named them as changed and their stat signatures are the ones taken before their
last read (the first round reads them once; the median does not see it).

Both caches are on whatever the environment says: Python writes ``__pycache__`` even under
``PYTHONDONTWRITEBYTECODE`` (which would make ``importlib`` compile all 50 sources each round),
and relmod's code cache is a temporary folder (``RELMOD_CACHE_DIR``), never ``~/.cache/relmod``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LENGTH = 50


def write_chain(folder: Path, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    (folder / "m0.py").write_text(f"X = {value}\n")
    for i in range(1, LENGTH):
        (folder / f"m{i}.py").write_text(f"from . import m{i - 1}\nX = m{i - 1}.X + 1\n")


def save(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 rounds instead of 40")
    args = parser.parse_args(argv)
    rounds = 10 if args.quick else 40

    root = Path(tempfile.mkdtemp(prefix="relmod-bench-reload-"))
    sys.dont_write_bytecode = False  # the same caching on both sides, whatever the environment
    os.environ["RELMOD_CACHE_DIR"] = str(root / "relmod-cache")

    import relmod
    from relmod.client.session import default_client

    write_chain(root / "chain", 0)
    write_chain(root / "plainchain", 0)
    sys.path.insert(0, str(root))
    relmod.configure(exclude=["plainchain"])
    relmod.enable()
    top = importlib.import_module(f"chain.m{LENGTH - 1}")
    plain = [importlib.import_module(f"plainchain.m{i}") for i in range(LENGTH)]
    registry = default_client().registry
    leaf = os.path.realpath(root / "chain" / "m0.py")

    timings: dict[str, list[float]] = {"relmod": [], "relmod, patch=False": [], "importlib": []}
    for n in range(1, rounds + 1):
        for label in ("relmod", "relmod, patch=False"):
            registry.patch = label == "relmod"
            value = 2 * n + (label == "relmod")
            save(root / "chain" / "m0.py", f"X = {value}\n")
            start = time.perf_counter()
            registry.invalidate([leaf])
            got = top.X
            timings[label].append(time.perf_counter() - start)
            assert got == value + LENGTH - 1, (got, value)
        # A different size each time: importlib would otherwise run a stale .pyc of the same
        # size written within the same second (relmod's own leaf needs no such help).
        save(root / "plainchain" / "m0.py", f"X = {n}\n" + "#" * n + "\n")
        start = time.perf_counter()
        for module in plain:
            importlib.reload(module)
        got = plain[-1].X
        timings["importlib"].append(time.perf_counter() - start)
        assert got == n + LENGTH - 1, got

    base = statistics.median(timings["importlib"])
    version = sys.version.split()[0]
    print(f"Deep reload of a {LENGTH}-module chain, {rounds} rounds, Python {version}\n")
    print("| reload | median ms | vs importlib.reload |")
    print("| --- | ---: | ---: |")
    for label, values in timings.items():
        median = statistics.median(values)
        print(f"| {label} | {median * 1000:.2f} | {median / base:.2f}x |")
    print("\nrelmod: from marking the chain stale to the top's new value; importlib: reload of the")
    print("50 plain modules in dependency order, then the same read.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
