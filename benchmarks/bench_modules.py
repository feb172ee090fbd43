"""Project modules imported the ordinary way: first import, attribute access, edit to workers.

Run: .venv/bin/python benchmarks/bench_modules.py [--quick]

Prints one Markdown table. The rows:

1. **First import of a 1,000-module package** (``import bigpkg``; generated once per run: a package
   of 9 subpackages of 110 modules each; every module has constants, three or four functions, a
   class with methods (every fifth also a dataclass), imports ``os``/``typing``, and imports 1-3
   earlier modules of the package, by ``from . import x``, ``from .x import f`` and absolute
   ``from bigpkg.sN import x``). Each measurement is a fresh process of this interpreter, timing
   ``import bigpkg`` inside itself (``import relmod; relmod.enable()`` runs before the timer; its
   cost is in the notes). Variants, interleaved in a shuffled order each round, median over the
   rounds:

   - plain Python with a warm ``__pycache__`` (written by a warm-up run),
   - relmod (``relmod.enable()`` first) with a warm code cache (``RELMOD_CACHE_DIR`` pointing at a
     folder a warm-up run filled),
   - relmod with a cold code cache (``RELMOD_CACHE_DIR`` pointing at a new empty folder each run:
     read, hash, compile, store),
   - for reference, plain Python with a cold ``__pycache__`` (``PYTHONPYCACHEPREFIX`` pointing at
     a new empty folder each run: compile and write), the fair match for the cold relmod row.

   "vs plain" divides by the warm plain median of the same run; the target for warm relmod is at
   most 1.3x. Two more rows give the CPU time the process spent in the import (all its threads,
   relmod's watcher included: ``time.process_time``), which other processes on a busy machine
   disturb much less than the wall time. Every run checks that 1,000 ``bigpkg`` modules were
   imported, and for relmod that the registry tracks all 1,000; the notes count the modules found
   stale right after the import although nothing was edited (should be none) and the modules
   that ran twice, and the time relmod takes to note the dependencies of the 1,000 modules,
   which it does when first asked (a save, ``sync()``, ``get_dependencies``) instead of during
   the import. The children run without ``PYTHONDONTWRITEBYTECODE`` (Python's own cache must
   be writable for the plain rows to mean anything).
2. **Attribute access** ``m.x`` in one process (a child of this interpreter): a plain module
   imported before ``relmod.enable()``, and a project module imported the ordinary way after it
   (``import m``: relmod's finder and loader, tracked by the registry, up to date). ``timeit``
   loops of 20 unrolled accesses with ``m`` a local, the two interleaved in random order; the
   value is the median ns per access over the repetitions, "vs plain" the ratio of the medians
   (target 1.0x).
3. **Edit -> new value in every worker**, with a real broker (``python -m relmod.server ROOT``)
   and N worker processes (3 and 32; ``--quick``: 3 and 8). Each worker calls
   ``relmod.connect(root)``, ``import app.core``, and registers a listener
   (``relmod.add_listener``) that sets a ``threading.Event`` on the ``'stale'`` event of
   ``app/core.py``; its main thread waits on the event, calls ``app.core.compute()`` (which
   reloads the module) and prints ``time.time()`` and the value on its stdout. The driver saves a
   new version of ``app/core.py`` atomically (temporary file + ``os.replace``), noting
   ``time.time()`` just before the replace, and waits until every worker has reported the new
   value. Per save: the latency of the last worker and of the median worker. Saves are spaced
   1.2 s apart so the broker's burst pacing never applies. The table gives the median and p99
   over saves (with 20 saves, p99 is the worst one). The floor row is the same saves measured at
   the ``'stale'`` event (the event's own timestamp) instead of at the new value: what the broker
   and the feed cost before any reload runs; the difference is the reload in the worker.

4. **The same for a module of real size**, at the larger worker count only: ``app/core.py``
   padded to about 67 KB (200 functions and 20 classes), twice: the broker and the workers
   sharing one code cache (``RELMOD_CACHE_DIR``), where every worker reloads the edit with the
   code the broker compiled to check it; and the broker's cache in another folder, where the
   workers compile it themselves (as all did before the broker stored its code; a worker that
   comes late may find what the first one stored). The difference is the compiling; the floor
   rows (save -> stale) hold the broker's own compile check, which every save passes before
   its publication.

p99 is nearest-rank over the samples (with few samples, the worst). Ratios only compare figures
measured in the same run; absolute figures vary between machines and with load (2 noisy cores
were the reference machine: 32 workers share them with the broker).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SUBPACKAGES = 9
MODULES_PER_SUBPACKAGE = 110
PACKAGE = "bigpkg"
MODULE_COUNT = 1 + SUBPACKAGES * (1 + MODULES_PER_SUBPACKAGE)  # 1,000 with the __init__s
IMPORT_TARGET = 1.3
UNROLL = 20
SAVE_PAUSE_S = 1.2
WORKER_TIMEOUT_S = 15.0
BIG_FUNCTIONS = 200
"""Functions in the padded app/core.py (about 60 KB, as a large module of a real project)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# -- 1. the generated package and first imports ----------------------------------------------


def _module_source(sub: int, index: int, rng: random.Random) -> str:
    """One realistic module: imports, constants, functions, a class (sometimes a dataclass)."""
    n = index
    lines = [
        f'"""Module {PACKAGE}.s{sub}.m{n}, generated by bench_modules.py."""',
        "",
        "from __future__ import annotations",
        "",
        "import os",
        "from typing import Any, Iterable",
    ]
    dataclass = n % 5 == 0
    if dataclass:
        lines.append("from dataclasses import dataclass, field")
    uses: list[str] = []  # expressions of other modules' helpers used by this module's code
    base = "object"
    if n > 0:
        j = rng.randrange(n)
        lines.append(f"from .m{j} import helper_{j}, Thing{j}")
        uses.append(f"helper_{j}(x)")
        if rng.random() < 0.3:
            base = f"Thing{j}"
    if n > 1:
        k = rng.randrange(n)
        lines.append(f"from . import m{k}")
        uses.append(f"m{k}.CONSTANT_{k}")
    if sub > 0 and rng.random() < 0.6:
        other_sub = rng.randrange(sub)
        other = rng.randrange(MODULES_PER_SUBPACKAGE)
        lines.append(f"from {PACKAGE}.s{other_sub} import m{other} as other_{other}")
        uses.append(f"other_{other}.helper_{other}(1)")
    used = " + ".join(uses) if uses else "0"
    lines += [
        "",
        f"CONSTANT_{n} = {rng.randrange(1000)}",
        f"NAMES_{n} = ({', '.join(repr(f'name{n}_{i}') for i in range(4))})",
        f"TABLE_{n} = {{'alpha': {n}, 'beta': {n * 2}, 'gamma': [1, 2, 3]}}",
        "",
        "",
        f"def helper_{n}(x: int) -> int:",
        '    """Add this module\'s constant."""',
        f"    return x + CONSTANT_{n}",
        "",
        "",
        f"def combine_{n}(x: int, *rest: int, **options: Any) -> int:",
        '    """Fold numbers together with the helpers of the modules this one imports."""',
        f"    total = {used}",
        "    for value in rest:",
        "        total += value if value > 0 else -value",
        "    return total * len(options) if options else total",
        "",
        "",
        f"def describe_{n}(items: Iterable[str]) -> str:",
        f"    return os.sep.join(sorted(items)) or NAMES_{n}[0]",
        "",
        "",
        f"def lookup_{n}(key: str, default: int = 0) -> int:",
        f"    value = TABLE_{n}.get(key, default)",
        "    return value if isinstance(value, int) else len(value)",
        "",
        "",
        f"class Thing{n}({base}):",
        f'    """A thing of module {n}."""',
        "",
        "    kind = 'thing'",
        "",
        "    def __init__(self, name: str, size: int = 0) -> None:",
        "        self.name = name",
        "        self.size = size",
        "",
        f"    def grow(self, by: int = 1) -> Thing{n}:",
        f"        return Thing{n}(self.name, self.size + by)",
        "",
        "    def label(self) -> str:",
        "        return f'{self.name}:{self.size}'",
        "",
        "    @property",
        "    def empty(self) -> bool:",
        "        return self.size == 0",
        "",
        "    def __repr__(self) -> str:",
        f"        return f'Thing{n}({{self.name!r}}, {{self.size}})'",
    ]
    if dataclass:
        lines += [
            "",
            "",
            "@dataclass",
            f"class Record{n}:",
            "    key: str",
            "    count: int = 0",
            "    tags: list[str] = field(default_factory=list)",
            "",
            "    def tagged(self, tag: str) -> bool:",
            "        return tag in self.tags",
        ]
    return "\n".join(lines) + "\n"


def write_package(root: Path) -> None:
    """Write the 1,000-module package ``bigpkg`` under ``root``."""
    rng = random.Random(7)
    top = root / PACKAGE
    top.mkdir(parents=True)
    subs = ", ".join(f"s{s}" for s in range(SUBPACKAGES))
    (top / "__init__.py").write_text(f'"""The generated package."""\n\nfrom . import {subs}\n')
    for sub in range(SUBPACKAGES):
        folder = top / f"s{sub}"
        folder.mkdir()
        names = [f"m{i}" for i in range(MODULES_PER_SUBPACKAGE)]
        init = [f'"""Subpackage {sub}."""', ""]
        init += [f"from . import {name}" for name in names]
        init += ["", f"__all__ = {names!r}"]
        (folder / "__init__.py").write_text("\n".join(init) + "\n")
        for i in range(MODULES_PER_SUBPACKAGE):
            (folder / f"m{i}.py").write_text(_module_source(sub, i, rng))


IMPORT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
relmod_on = sys.argv[1] == "relmod"
if relmod_on:
    import relmod
    relmod.enable()
t1 = time.perf_counter()
c1 = time.process_time()
import bigpkg
c2 = time.process_time()
t2 = time.perf_counter()
mods = [m for n, m in sys.modules.items() if n == "bigpkg" or n.startswith("bigpkg.")]
out = {"enable": t1 - t0, "import": t2 - t1, "cpu": c2 - c1, "modules": len(mods)}
if relmod_on:
    from relmod.client.session import default_client
    reg = default_client().registry
    t3 = time.perf_counter()
    reg.graph  # the first question notes the dependencies of every module imported
    out["noting"] = time.perf_counter() - t3
    out["tracked"] = sum(1 for m in mods if reg.record_of(m) is not None)
    out["stale"] = sum(1 for m in mods if reg.is_stale(m))
    out["reloads"] = reg.reloads
print(json.dumps(out))
"""


def _import_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("RELMOD_CACHE_DIR", None)
    env.update(extra)
    return env


def run_import(root: Path, mode: str, env: dict[str, str]) -> dict[str, Any]:
    """One fresh process importing the package; its own timings, and the wall time around it."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHILD, mode],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the {mode} import child failed:\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    if out["modules"] != MODULE_COUNT:
        raise SystemExit(f"the {mode} child imported {out['modules']} modules, not {MODULE_COUNT}")
    if mode == "relmod" and out["tracked"] != MODULE_COUNT:
        raise SystemExit(f"relmod tracked {out['tracked']} of {MODULE_COUNT} imported modules")
    return out


def _count_files(folder: Path, suffix: str = "") -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffix))


def measure_imports(work: Path, rounds: int) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    root = work / "imports"
    root.mkdir()
    write_package(root)
    warm_cache = work / "relmod-cache-warm"
    notes = []
    # Warm-ups: Python's __pycache__ next to the sources, and relmod's code cache.
    run_import(root, "plain", _import_env())
    run_import(root, "relmod", _import_env(RELMOD_CACHE_DIR=str(warm_cache)))
    pycs = _count_files(root, ".pyc")
    cached = _count_files(warm_cache)
    if pycs < MODULE_COUNT or cached < MODULE_COUNT:
        raise SystemExit(f"warm-up wrote {pycs} .pyc files and {cached} relmod cache files")
    notes.append(f"warm caches: {pycs} .pyc files, {cached} relmod code-cache files")
    variants = ("plain-warm", "relmod-warm", "relmod-cold", "plain-cold")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    rng = random.Random(3)
    for n in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            fresh = work / f"cold-{variant}-{n}"
            if variant == "plain-warm":
                out = run_import(root, "plain", _import_env())
            elif variant == "relmod-warm":
                out = run_import(root, "relmod", _import_env(RELMOD_CACHE_DIR=str(warm_cache)))
            elif variant == "relmod-cold":
                out = run_import(root, "relmod", _import_env(RELMOD_CACHE_DIR=str(fresh)))
                if _count_files(fresh) < MODULE_COUNT:
                    raise SystemExit("a cold relmod run did not fill its code cache")
            else:
                out = run_import(root, "plain", _import_env(PYTHONPYCACHEPREFIX=str(fresh)))
                if _count_files(fresh, ".pyc") < MODULE_COUNT:
                    raise SystemExit("a cold plain run did not write its __pycache__")
            shutil.rmtree(fresh, ignore_errors=True)
            results[variant].append(out)
    enable_ms = statistics.median(
        r["enable"] * 1000 for v in ("relmod-warm", "relmod-cold") for r in results[v]
    )
    notes.append(
        f"`import relmod; relmod.enable()` before the timer: median {enable_ms:.0f} ms per process"
    )
    relmod_runs = [r for v in ("relmod-warm", "relmod-cold") for r in results[v]]
    noting_ms = statistics.median(r["noting"] * 1000 for r in relmod_runs)
    notes.append(
        f"dependencies of the {MODULE_COUNT:,} modules, noted when first asked (the first save, "
        f"sync or get_dependencies), not during the import: median {noting_ms:.1f} ms, once"
    )
    stale = [r["stale"] for r in relmod_runs]
    reloads = [r["reloads"] for r in relmod_runs]
    notes.append(
        f"modules found stale right after the first import, with no edit (should be 0): "
        f"median {statistics.median(stale):.0f}, max {max(stale)} of {MODULE_COUNT} per process; "
        f"modules that ran twice during it: max {max(reloads)}"
    )
    walls = {v: statistics.median(r["wall"] for r in results[v]) * 1000 for v in variants}
    notes.append(
        "whole child process (interpreter start to exit), medians: "
        + ", ".join(f"{v} {walls[v]:.0f} ms" for v in variants)
    )
    return results, notes


# -- 2. attribute access ------------------------------------------------------------------------


ACCESS_CHILD = r"""
import json, random, sys, time, timeit, types
folder = sys.argv[1]
rounds, sample_s, unroll = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, folder + "/lib")
import plain_mod                        # before enable(): an ordinary module
import relmod
relmod.enable()
sys.path.insert(0, folder + "/project")
import project_mod                      # the ordinary way, through relmod's finder and loader
from relmod.client.session import default_client
reg = default_client().registry
rec = reg.record_of(project_mod)
assert rec is not None and rec.name == "project_mod", "project_mod is not a relmod module"
project_mod.x; time.sleep(0.5); project_mod.x  # a stale mark at load time is cleared by a use
assert not reg.is_stale(project_mod), "project_mod is stale"
assert reg.record_of(plain_mod) is None and type(plain_mod) is types.ModuleType
assert type(project_mod.__loader__).__name__ == "ProjectLoader", project_mod.__loader__
subjects = {"plain": plain_mod, "relmod": project_mod}
timers = {
    k: timeit.Timer("; ".join(["m.x"] * unroll), "m = _module", globals={"_module": v})
    for k, v in subjects.items()
}
numbers = {}
for k, t in timers.items():
    number = 1
    while True:
        elapsed = t.timeit(number)
        if elapsed >= sample_s / 4:
            numbers[k] = max(1, round(number * sample_s / elapsed))
            break
        number *= 4
samples = {k: [] for k in subjects}
order, rng = list(subjects), random.Random(1)
for _ in range(rounds):
    rng.shuffle(order)
    for k in order:
        samples[k].append(timers[k].timeit(numbers[k]) / (numbers[k] * unroll) * 1e9)
print(json.dumps({"samples": samples, "class": type(project_mod).__name__,
                  "stale": reg.is_stale(project_mod)}))
"""


def measure_access(work: Path, rounds: int, sample_s: float) -> dict[str, Any]:
    folder = work / "access"
    (folder / "lib").mkdir(parents=True)
    (folder / "project").mkdir()
    for where, name in (("lib", "plain_mod"), ("project", "project_mod")):
        (folder / where / f"{name}.py").write_text("x = 1\n\n\ndef f():\n    return x\n")
    done = subprocess.run(
        [sys.executable, "-c", ACCESS_CHILD, str(folder), str(rounds), str(sample_s), str(UNROLL)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"the attribute-access child failed:\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if out["stale"]:
        raise SystemExit("the relmod module became stale during the timing")
    return out


# -- 3. edit -> new value in every worker -----------------------------------------------------


WORKER = r"""
import os, sys, threading, time
root = sys.argv[1]
sys.path.insert(0, root)
import relmod
relmod.connect(root)
import app.core
target = os.path.realpath(os.path.join(root, "app", "core.py"))
stale = threading.Event()
stale_at = [0.0]
def on_event(event):
    if event.kind == "stale" and event.path == target:
        stale_at[0] = event.time
        stale.set()
relmod.add_listener(on_event)
print("ready", app.core.compute(), flush=True)
while True:
    stale.wait()
    stale.clear()
    value = app.core.compute()          # app.core is stale: this reloads it
    print("value", time.time(), stale_at[0], value, flush=True)
"""

CORE = '''"""The module the benchmark edits."""

from app import util

VERSION = {version}


def compute() -> int:
    return util.identity(VERSION)


class Service:
    def handle(self, request: str) -> str:
        return f"{{request}} handled by version {{VERSION}}"
'''


def _wait_broker(root: Path, broker: subprocess.Popen[bytes], err_file: Path) -> None:
    from relmod.connfile import connection_path, read_connection_file

    deadline = time.monotonic() + 30
    while True:
        if broker.poll() is not None:
            raise SystemExit(f"the broker exited:\n{err_file.read_text()}")
        try:
            if read_connection_file(connection_path(str(root)))["pid"] == broker.pid:
                return
        except Exception as err:
            if time.monotonic() > deadline:
                raise SystemExit(
                    "the broker did not write its connection file within 30 s"
                ) from err
        time.sleep(0.05)


def big_padding(functions: int = BIG_FUNCTIONS) -> str:
    """What makes app/core.py a module of real size: functions with bodies, and classes."""
    parts = []
    for n in range(functions):
        parts.append(
            f"\n\ndef step_{n}(items: list[int], scale: int = {n % 7 + 1}) -> list[int]:\n"
            f'    """Scale the even items, drop the rest (step {n})."""\n'
            "    kept = []\n"
            "    for item in items:\n"
            "        if item % 2 == 0:\n"
            "            kept.append(item * scale + VERSION)\n"
            "        elif item > scale:\n"
            "            kept.append(item - scale)\n"
            "    return kept\n"
        )
        if n % 10 == 0:
            parts.append(
                f"\n\nclass Stage{n}:\n"
                "    def __init__(self, name: str) -> None:\n"
                "        self.name = name\n"
                "        self.count = 0\n\n"
                "    def run(self, items: list[int]) -> list[int]:\n"
                "        self.count += 1\n"
                f"        return step_{n}(items)\n"
            )
    return "".join(parts)


def measure_edits(
    work: Path, workers: int, edits: int, *, padding: str = "", caches: str = "shared"
) -> dict[str, Any]:
    """Latencies of ``edits`` saves of app/core.py (its source followed by ``padding``) until
    all ``workers`` have the new value. ``caches``: ``"shared"``, the broker and the workers
    use one code cache (the default); ``"apart"``, the broker's is another folder, so each
    worker compiles the edit itself (or takes it from the worker that stored it first)."""
    tag = f"{workers}-{len(padding)}-{caches}"
    root = (work / f"project-{tag}").resolve()
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "util.py").write_text("def identity(x):\n    return x\n")
    core = root / "app" / "core.py"
    core.write_text(CORE.format(version=0) + padding)
    logs = work / f"logs-{tag}"
    logs.mkdir()
    env = dict(os.environ)
    env.pop("RELMOD_BROKER", None)
    env["RELMOD_CACHE_DIR"] = str(work / f"cache-{tag}")
    broker_env = dict(env)
    if caches == "apart":
        broker_env["RELMOD_CACHE_DIR"] = str(work / f"broker-cache-{tag}")
    broker_err = logs / "broker.err"
    with open(broker_err, "wb") as err:
        broker = subprocess.Popen(
            [sys.executable, "-m", "relmod.server", str(root), "--log-level", "WARNING"],
            env=broker_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    procs: list[subprocess.Popen[str]] = []
    try:
        _wait_broker(root, broker, broker_err)
        reports: queue.Queue[tuple[int, list[str]]] = queue.Queue()
        for i in range(workers):
            with open(logs / f"worker-{i}.err", "wb") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", WORKER, str(root)],
                        cwd=root,
                        env=env,
                        text=True,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=err,
                    )
                )

        def read(index: int, proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                reports.put((index, line.split()))

        for index, proc in enumerate(procs):
            threading.Thread(target=read, args=(index, proc), daemon=True).start()

        def failure(what: str) -> SystemExit:
            tails = []
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    text = (logs / f"worker-{i}.err").read_text()[-2000:]
                    tails.append(f"worker {i} exited {proc.returncode}:\n{text}")
            return SystemExit(f"{what}\n" + "\n".join(tails[:3]))

        ready: set[int] = set()
        deadline = time.monotonic() + 30 + 3 * workers
        while len(ready) < workers:
            try:
                index, parts = reports.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise failure(f"only {len(ready)} of {workers} workers started") from None
            if parts[:2] == ["ready", "0"]:
                ready.add(index)
        time.sleep(1.0)  # let start-up work (connections, first syncs) settle

        last: list[float] = []
        median_worker: list[float] = []
        floor: list[float] = []
        for version in range(1, edits + 1):
            tmp = root / "app" / ".core.py.tmp"
            tmp.write_text(CORE.format(version=version) + padding)
            written = time.time()
            os.replace(tmp, core)
            got: dict[int, tuple[float, float]] = {}
            until = time.monotonic() + WORKER_TIMEOUT_S
            while len(got) < workers:
                try:
                    index, parts = reports.get(timeout=max(0.01, until - time.monotonic()))
                except queue.Empty:
                    raise failure(
                        f"save {version}: only {len(got)} of {workers} workers reported the new "
                        f"value within {WORKER_TIMEOUT_S:.0f} s"
                    ) from None
                if parts[0] == "value" and int(parts[3]) == version:
                    got[index] = (float(parts[1]), float(parts[2]))
            latencies = [(value_at - written) * 1000 for value_at, _ in got.values()]
            last.append(max(latencies))
            median_worker.append(statistics.median(latencies))
            floor.append(max((stale_at - written) * 1000 for _, stale_at in got.values()))
            time.sleep(SAVE_PAUSE_S)
        return {"last": last, "median": median_worker, "floor": floor}
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)


# -- the table ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="5 import rounds, 3 and 8 workers, 5 saves each"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = 5 if quick else 15
    access_rounds, sample_s = (15, 0.02) if quick else (60, 0.05)
    worker_counts = (3, 8) if quick else (3, 32)
    edits = 5 if quick else 20

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="relmod-bench-modules-")).resolve()
    try:
        imports, notes = measure_imports(work, rounds)
        access = measure_access(work, access_rounds, sample_s)
        propagation = {n: measure_edits(work, n, edits) for n in worker_counts}
        many, padding = worker_counts[-1], big_padding()
        big = {
            caches: measure_edits(work, many, edits, padding=padding, caches=caches)
            for caches in ("shared", "apart")
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    command = ".venv/bin/python benchmarks/bench_modules.py" + (" --quick" if quick else "")
    print(f"\n### `{command}`\n")
    print(
        f"Python {sys.version.split()[0]} on {os.cpu_count()} cores; {rounds} fresh processes "
        f"per import variant; {access_rounds} access samples; {edits} saves per worker count.\n"
    )
    print("| measurement | median | p99 | vs plain | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    plain_ms = statistics.median(r["import"] for r in imports["plain-warm"]) * 1000
    plain_cpu = statistics.median(r["cpu"] for r in imports["plain-warm"]) * 1000
    labels = {
        "plain-warm": ("plain Python, warm `__pycache__`", ""),
        "relmod-warm": ("relmod `enable()`, warm code cache", f"<= {IMPORT_TARGET}x"),
        "relmod-cold": ("relmod `enable()`, cold code cache", ""),
        "plain-cold": ("plain Python, cold `__pycache__` (reference)", ""),
    }
    for variant, (label, target) in labels.items():
        ms = [r["import"] * 1000 for r in imports[variant]]
        med = statistics.median(ms)
        print(
            f"| first import of {MODULE_COUNT:,} modules: {label} (ms) | {med:.0f} | "
            f"{percentile(ms, 0.99):.0f} | {med / plain_ms:.2f}x | {target} |"
        )
    for variant in ("plain-warm", "relmod-warm"):
        cpu = [r["cpu"] * 1000 for r in imports[variant]]
        med = statistics.median(cpu)
        target = f"<= {IMPORT_TARGET}x" if variant == "relmod-warm" else ""
        print(
            f"| the same, CPU time of the process: {labels[variant][0]} (ms) | {med:.0f} | "
            f"{percentile(cpu, 0.99):.0f} | {med / plain_cpu:.2f}x | {target} |"
        )
    plain_ns = statistics.median(access["samples"]["plain"])
    for key, label, target in (
        ("plain", "plain module", ""),
        ("relmod", "project module under relmod, up to date", "1.0x"),
    ):
        ns = access["samples"][key]
        print(
            f"| `m.x`, {label} (ns) | {statistics.median(ns):.1f} | {percentile(ns, 0.99):.1f} "
            f"| {statistics.median(ns) / plain_ns:.2f}x | {target} |"
        )
    for workers, result in propagation.items():
        for key, label in (
            ("last", f"save -> new value in all {workers} workers (last worker)"),
            ("median", f"save -> new value, median of {workers} workers"),
            ("floor", f"floor: save -> all {workers} workers marked stale"),
        ):
            ms = result[key]
            print(
                f"| {label} (ms) | {statistics.median(ms):.1f} | {percentile(ms, 0.99):.1f} | | |"
            )
    size = len((CORE.format(version=0) + padding).encode()) / 1000
    for caches, label in (
        ("shared", "the broker's code, from the shared code cache"),
        ("apart", "each worker compiling it (broker's cache apart)"),
    ):
        for key, what in (
            ("last", "new value in all {n} workers (last worker)"),
            ("median", "new value, median of {n} workers"),
            ("floor", "floor: all {n} workers marked stale"),
        ):
            ms = big[caches][key]
            print(
                f"| save of a {size:.0f} KB module -> {what.format(n=many)}; {label} (ms) | "
                f"{statistics.median(ms):.1f} | {percentile(ms, 0.99):.1f} | | |"
            )
    print()
    for note in notes:
        print(f"- {note}")
    print(f"- relmod module class while timed: `{access['class']}`")
    print(f"- whole run: {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
