"""Per-cell cost in IPython when nothing changed: relmod's extension vs ``%autoreload 2``.

For 1,000 and 5,000 ordinary modules (real files in a temporary folder, imported through
``sys.path``), each configuration runs in a fresh process with a real ``InteractiveShell``, and
every figure is the median time of ``shell.run_cell('pass')``:

(a) no extension: the modules imported, nothing else per cell;
(b) ``%load_ext relmod`` with ``relmod.enable()`` turned on before the imports (the tracker knows
    every module, the embedded watcher watches their folder) and a notebook folder whose helpers,
    loaded with ``from . import``, fill relmod's per-cell focus
    (:data:`relmod.ipython.FOCUS_FILES` files, the most it stats before a cell);
(c) ``%load_ext autoreload`` + ``%autoreload 2``.

An overhead is measured in one process by switching the extension's per-cell parts on and off in
alternating blocks of cells (so machine drift falls on both sides alike): for (b) relmod's
``pre_run_cell`` hook and its import hook (``relmod.enable()`` routes every import statement, and
IPython runs three per cell, through it), for (c) autoreload's callbacks. The watcher thread and
the loaded modules stay as they are. "cell hook only" switches relmod's ``pre_run_cell`` alone.

Run: .venv/bin/python benchmarks/bench_ipython.py [--quick] [--cells 200] [--modules 1000 5000]
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SETTLE_SECONDS = 2.5  # the watcher's first rescan, and focus files older than relmod's racy window
BLOCK = 20  # cells per block of the on/off alternation

Switch = Callable[[bool], None]


def make_project(root: Path, counts: list[int], helpers: int) -> None:
    """``lib<N>/m<i>.py`` for each N (a tree of imports), and ``nb/h<i>.py`` helpers."""
    for count in counts:
        lib = root / f"lib{count}"
        lib.mkdir()
        for i in range(count):
            dep = f"import m{(i - 1) // 8}\n" if i else ""
            text = f'"""Module {i}."""\n{dep}\n\ndef f(x):\n    return x + {i}\n'
            (lib / f"m{i}.py").write_text(text)
    nb = root / "nb"
    nb.mkdir()
    for i in range(helpers):
        (nb / f"h{i}.py").write_text(f"def helper():\n    return {i}\n")


def samples(shell: Any, cells: int) -> list[float]:
    """Seconds of each of ``cells`` runs of an empty cell."""
    out = []
    for _ in range(cells):
        start = time.perf_counter()
        shell.run_cell("pass")
        out.append(time.perf_counter() - start)
    return out


def median_ms(shell: Any, cells: int) -> float:
    samples(shell, BLOCK)  # warm up
    return statistics.median(samples(shell, cells)) * 1e3


def paired(shell: Any, switch: Switch, cells: int) -> tuple[float, float]:
    """Median ms per cell with ``switch(True)`` and with ``switch(False)``, blocks alternating."""
    on: list[float] = []
    off: list[float] = []
    for round_ in range(max(1, cells // BLOCK)):
        for state in (True, False) if round_ % 2 else (False, True):
            switch(state)
            shell.run_cell("pass")  # the first cell after a switch is not timed
            (on if state else off).extend(samples(shell, BLOCK))
    switch(True)
    return statistics.median(on) * 1e3, statistics.median(off) * 1e3


def callbacks_switch(shell: Any, module: str) -> Switch:
    """Registers or unregisters every IPython event callback of objects defined in ``module``."""
    owned = [
        (event, cb)
        for event, callbacks in shell.events.callbacks.items()
        for cb in callbacks
        if type(getattr(cb, "__self__", None)).__module__ == module
    ]
    assert owned, f"no callbacks from {module}"

    def switch(on: bool) -> None:
        for event, cb in owned:
            if on:
                shell.events.register(event, cb)
            elif cb in shell.events.callbacks[event]:
                shell.events.unregister(event, cb)

    return switch


def import_hook_switch() -> Switch:
    """Puts relmod's ``__import__`` hook in place, or the one it wraps."""
    hook = builtins.__import__
    original = hook.__self__.original  # type: ignore[attr-defined]

    def switch(on: bool) -> None:
        builtins.__import__ = hook if on else original

    return switch


def child(config: str, lib: str, count: int, nb: str, cells: int) -> dict[str, float]:
    """One configuration, in this fresh process."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    import relmod
    import relmod.ipython

    if not hasattr(relmod, "load_ipython_extension"):  # until relmod/__init__ re-exports it
        relmod.load_ipython_extension = relmod.ipython.load_ipython_extension  # type: ignore[attr-defined]
        relmod.unload_ipython_extension = relmod.ipython.unload_ipython_extension  # type: ignore[attr-defined]

    os.chdir(nb)
    sys.path.insert(0, lib)
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    shell: Any = InteractiveShell.instance(config=cfg)

    def run(code: str) -> None:
        shell.run_cell(code).raise_error()

    out: dict[str, float] = {}
    if config == "autoreload":
        run("import " + ", ".join(f"m{i}" for i in range(count)))
        out["none"] = median_ms(shell, cells)
        run("%load_ext autoreload\n%autoreload 2")
        out["with"], out["without"] = paired(
            shell, callbacks_switch(shell, "IPython.extensions.autoreload"), cells
        )
        return out

    run("import relmod\nrelmod.enable()")
    run("import " + ", ".join(f"m{i}" for i in range(count)))
    imports = import_hook_switch()
    imports(False)
    out["none"] = median_ms(shell, cells)
    imports(True)
    run("%load_ext relmod")
    helpers = sorted(p.stem for p in Path(nb).glob("h*.py"))
    run("from . import " + ", ".join(helpers))
    run("pass")
    time.sleep(SETTLE_SECONDS)
    cell_hook = callbacks_switch(shell, "relmod.ipython")

    def both(on: bool) -> None:
        cell_hook(on)
        imports(on)

    out["with"], out["without"] = paired(shell, both, cells)
    on, off = paired(shell, cell_hook, cells)
    out["cell_hook"] = on - off

    sync = relmod.ipython.load_ipython_extension(shell)  # the running one
    status = sync.status()
    assert len(status["focus"]) == relmod.ipython.FOCUS_FILES, status["focus"]
    assert status["tracked_modules"] >= count, status["tracked_modules"]
    assert status["catch_ups"] <= 3, f"{status['catch_ups']} catch-ups: something kept changing"
    return out


def spawn(config: str, lib: Path, count: int, nb: Path, cells: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", config, "--lib", str(lib), "--count", str(count),
           "--nb", str(nb), "--cells", str(cells)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{config} with {count} modules failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 cells per measurement")
    parser.add_argument("--cells", type=int, default=200, help="timed cells per measurement")
    parser.add_argument("--modules", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nb", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.lib, args.count, args.nb, args.cells)))
        return 0

    from relmod.ipython import FOCUS_FILES

    cells = 60 if args.quick else args.cells
    rows = []
    with tempfile.TemporaryDirectory(prefix="relmod-bench-ipython-") as folder:
        root = Path(folder)
        make_project(root, args.modules, FOCUS_FILES + 4)
        for count in args.modules:
            lib = root / f"lib{count}"
            ours = spawn("relmod", lib, count, root / "nb", cells)
            theirs = spawn("autoreload", lib, count, root / "nb", cells)
            rows.append((count, ours, theirs))

    print(f"Empty cell (`shell.run_cell('pass')`), nothing changed; medians of {cells} cells.")
    print(f"relmod checks {FOCUS_FILES} recently used files by stat before each cell.")
    print()
    print(
        "| modules imported | (a) no extension, ms/cell | (b) relmod + enable(), overhead ms/cell "
        "| (b) cell hook only, ms | (c) %autoreload 2, overhead ms/cell | (c) / (b) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for count, ours, theirs in rows:
        base = (ours["none"] + theirs["none"]) / 2
        b = ours["with"] - ours["without"]
        c = theirs["with"] - theirs["without"]
        ratio = f"{c / b:.0f}x" if b > 0.001 else "n/a"
        print(f"| {count:,} | {base:.3f} | {b:.3f} | {ours['cell_hook']:.3f} | {c:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
