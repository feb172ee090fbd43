"""What patching adds to a reload, and what an armed-then-disarmed function costs per call.

Generates a module of 1,000 functions and 50 classes (6 methods, a property, a classmethod and
a staticmethod each), imports it, then re-executes it in its own namespace ``--runs`` times and
prints medians::

    .venv/bin/python benchmarks/bench_patching.py [--functions 1000] [--classes 50] [--runs 30]
        [--saves 200]

"Re-execution" is what relmod does for a changed module: compile the source, run it in the same
module dict. ``patch_namespace`` is timed on the snapshot and the namespace right after the run;
the target is under 20% of re-execution. The call rows compare a plain function with the same
function after ``CallGuard.arm`` + ``disarm`` and after being patched (target 1.0x).

The last memory row is a user's session in a fresh process: a package imported the ordinary
way, a held function and an old instance, its 300-function module saved ``--saves`` times with
``relmod.sync()`` after each (the held ones are checked every time), and the process's RSS after
save 20 and after the last.

The cycle is the registry's: arm (the feed marks the module stale), re-execute, patch, replan
(the reloading thread walks the namespace again, so the next arm need not), disarm. The first
arm of a namespace walks it itself; it is timed once, apart.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
import timeit
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relmod.machinery.patching import CallGuard, patch_namespace  # noqa: E402

MODULE = "bench_patching_generated"


def generate(functions: int, classes: int, version: int) -> str:
    """Source of a module of ordinary shape: small functions calling each other, some classes."""
    lines = ["import functools", "import dataclasses", f"VERSION = {version}", ""]
    for i in range(functions):
        callee = f"f{i - 1}(x) + " if i % 3 and i else ""
        lines += [
            f"def f{i}(x, y={i}, *, scale=1):",
            f'    """Function {i}."""',
            "    total = 0",
            "    for item in range(3):",
            "        total += item * scale",
            f"    return {callee}x + y + total + VERSION",
            "",
        ]
    for c in range(classes):
        lines += [
            f"class C{c}:",
            f"    kind = {c}",
            "    def __init__(self, value):",
            "        self.value = value",
        ]
        for m in range(6):
            lines += [f"    def m{m}(self, x):", f"        return self.value + x * {m} + VERSION"]
        lines += [
            "    @property",
            "    def doubled(self):",
            "        return self.value * 2",
            "    @classmethod",
            "    def make(cls):",
            "        return cls(1)",
            "    @staticmethod",
            "    def helper(x):",
            "        return x + VERSION",
            "",
        ]
    return "\n".join(lines) + "\n"


def median_s(samples: list[float]) -> float:
    return statistics.median(samples)


def reload_times(functions: int, classes: int, runs: int) -> dict[str, float]:
    module = types.ModuleType(MODULE)
    sys.modules[MODULE] = module
    ns = module.__dict__
    exec(compile(generate(functions, classes, 0), "<bench>", "exec"), ns)
    compile_s: list[float] = []
    exec_s: list[float] = []
    patch_s: list[float] = []
    arm_s: list[float] = []
    disarm_s: list[float] = []
    replan_s: list[float] = []
    guard = CallGuard()
    start = time.perf_counter()
    guard.arm(ns, MODULE, lambda: None)  # the first arm of a namespace walks it
    first_arm = time.perf_counter() - start
    guard.disarm(ns)
    for run in range(1, runs + 1):
        source = generate(functions, classes, run)
        start = time.perf_counter()
        armed = guard.arm(ns, MODULE, lambda: None)
        arm_s.append(time.perf_counter() - start)
        assert armed >= functions, armed
        start = time.perf_counter()
        code = compile(source, "<bench>", "exec", dont_inherit=True)
        compile_s.append(time.perf_counter() - start)
        snapshot = dict(ns)
        start = time.perf_counter()
        for name in [n for n in ns if not (n.startswith("__") and n.endswith("__"))]:
            del ns[name]
        exec(code, ns)
        exec_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = patch_namespace(snapshot, ns, MODULE)
        patch_s.append(time.perf_counter() - start)
        assert not report.unpatchable and report.patched >= functions, report
        start = time.perf_counter()
        guard.replan(ns, MODULE)
        replan_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        guard.disarm(ns)
        disarm_s.append(time.perf_counter() - start)
    del sys.modules[MODULE]
    return {
        "compile": median_s(compile_s),
        "exec": median_s(exec_s),
        "patch": median_s(patch_s),
        "first_arm": first_arm,
        "arm": median_s(arm_s),
        "replan": median_s(replan_s),
        "disarm": median_s(disarm_s),
    }


def kept_per_arm(functions: int, arms: int) -> float:
    """Bytes still allocated per function per arm + disarm after ``arms`` cycles (target 0:
    a trampoline is made once per function, and freed with its namespace)."""
    module = types.ModuleType(MODULE)
    exec(compile(generate(functions, 0, 0), "<bench>", "exec"), module.__dict__)
    guard, ns = CallGuard(), module.__dict__
    for _ in range(3):  # the first arm makes the trampolines
        guard.arm(ns, MODULE, lambda: None)
        guard.disarm(ns)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(arms):
            guard.arm(ns, MODULE, lambda: None)
            guard.disarm(ns)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return max(0, after - before) / functions / arms


# A user's session in a fresh process: an ordinary package, a held function and an old
# instance, a module of 300 functions and 10 classes saved again and again, relmod.sync().
SESSION = r"""
import gc, os, sys, tempfile
from pathlib import Path
saves = int(sys.argv[1])
root = Path(tempfile.mkdtemp(prefix="relmod-bench-session-")).resolve()
pkg = root / "shop"
pkg.mkdir()
(pkg / "__init__.py").write_text("from .pricing import total\n")
def version(v):
    body = "".join(f"def f{i}(x):\n    return x + {i} + V\n" for i in range(300))
    body += "".join(f"class C{i}:\n    def m(self):\n        return {i} + V\n" for i in range(10))
    return f"V = {v}\n" + body + "def total(x):\n    return f0(x) * 1\n"
(pkg / "pricing.py").write_text(version(0))
sys.path.insert(0, str(root))
import relmod
relmod.enable()
import shop
from shop.pricing import f0, C0
old = C0()
def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
at = {}
for v in range(1, saves + 1):
    tmp = pkg / ".pricing.py.tmp"
    tmp.write_text(version(v))
    os.replace(tmp, pkg / "pricing.py")
    relmod.sync()
    if (f0(1), old.m(), shop.total(1)) != (1 + v, v, 1 + v):
        raise SystemExit(f"save {v}: a held reference ran old code")
    if v in (20, saves):
        gc.collect()
        at[v] = rss_mb()
print(at[20], at[saves])
"""


def session_growth(saves: int) -> tuple[float, float]:
    """RSS (MB) of a fresh process after 20 and after ``saves`` saves of SESSION's module."""
    done = subprocess.run(
        [sys.executable, "-c", SESSION, str(saves)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the session failed:\n{done.stdout}{done.stderr}")
    first, last = (float(x) for x in done.stdout.split())
    return first, last


def call_ns(
    calls: dict[str, Callable[[], object]], number: int = 200_000, repeat: int = 9
) -> dict[str, float]:
    """Nanoseconds per call of each, the best of ``repeat`` rounds; the calls take turns in
    every round, so a host that changes speed meanwhile weighs on all of them alike."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for name, call in calls.items():
            best[name] = min(best[name], timeit.timeit(call, number=number) / number * 1e9)
    return best


def call_costs() -> dict[str, float]:
    source = "def f(x, y=2):\n    return x + y\n"
    plain = types.ModuleType("bench_plain")
    exec(source, plain.__dict__)
    guarded = types.ModuleType("bench_guarded")
    sys.modules["bench_guarded"] = guarded
    exec(source, guarded.__dict__)
    guard = CallGuard()
    guard.arm(guarded.__dict__, "bench_guarded", lambda: None)
    guard.disarm(guarded.__dict__)
    patched = types.ModuleType("bench_patched")
    sys.modules["bench_patched"] = patched
    exec(source, patched.__dict__)
    snapshot = dict(patched.__dict__)
    exec(source.replace("x + y", "y + x"), patched.__dict__)
    patch_namespace(snapshot, patched.__dict__, "bench_patched")
    f_plain, f_guarded, f_patched = plain.f, guarded.f, patched.f
    costs = call_ns(
        {
            "plain": lambda: f_plain(1),
            "guarded": lambda: f_guarded(1),
            "patched": lambda: f_patched(1),
        }
    )
    del sys.modules["bench_guarded"], sys.modules["bench_patched"]
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--saves", type=int, default=200, help="saves in the session row")
    args = parser.parse_args(argv)
    t = reload_times(args.functions, args.classes, args.runs)
    reexec = t["compile"] + t["exec"]
    print(
        f"Python {sys.version.split()[0]}: {args.functions} functions, {args.classes} classes "
        f"(x9 methods), median of {args.runs} runs"
    )
    print(f"{'step':<40}{'ms':>10}{'vs re-execution':>18}")
    rows = [
        ("re-execution (compile + exec)", reexec),
        ("  compile", t["compile"]),
        ("  exec in the module dict", t["exec"]),
        ("patch_namespace", t["patch"]),
        ("CallGuard.replan (reloading thread)", t["replan"]),
        ("CallGuard.arm (feed thread)", t["arm"]),
        ("  first arm of the module (walks it)", t["first_arm"]),
        ("CallGuard.disarm", t["disarm"]),
    ]
    for label, seconds in rows:
        print(f"{label:<40}{seconds * 1e3:>10.2f}{seconds / reexec:>17.1%}")
    print(f"patch_namespace vs exec alone: {t['patch'] / t['exec']:.1f}x")
    kept = kept_per_arm(args.functions, 200)
    print(f"memory kept per function per arm + disarm (200 cycles): {kept:.1f} bytes (target 0)")
    first, last = session_growth(args.saves)
    print(
        f"a session of {args.saves} saves (300 functions, 10 classes, held ones right each "
        f"time): RSS {first:.1f} MB at save 20, {last:.1f} MB at save {args.saves} "
        f"({last - first:+.1f} MB; target 0)"
    )
    costs = call_costs()
    print(f"\n{'call f(1)':<40}{'ns':>10}{'vs plain':>18}")
    for label, key in (
        ("plain function", "plain"),
        ("after CallGuard.arm + disarm", "guarded"),
        ("after patch_namespace", "patched"),
    ):
        print(f"{label:<40}{costs[key]:>10.1f}{costs[key] / costs['plain']:>17.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
