"""What relmod costs inside one process: attribute access, deep reload, marking, sync.

Run: .venv/bin/python benchmarks/bench_library.py [--quick] [--no-original] [--orig-venv PATH]

Prints one Markdown table. The rows:

1. **Attribute access** (``m.X``) on a plain module (the file imported normally), on the same
   file loaded with ``relmod.at(path)``, and on the top module of a 10-file and a 50-file relmod
   chain (module ``m{i}`` does ``from . import m{i-1}``). Measured in this process, interleaved in
   random order, with ``timeit`` loops of 20 unrolled accesses (``m`` is a local, so the loop
   overhead is under 1/20 of the figure). The value is the median ns per access over many
   repetitions; "vs plain" is that median divided by the plain module's. The target is at most
   1.5x, and the chain rows must equal the one-file row: an up-to-date module does no work per
   access, whatever it depends on. A control row, a bare ``types.ModuleType`` subclass holding the
   same names, shows what any module subclass costs on this interpreter, relmod or not.
2. **The original relmod** (version 0.5.0 from the package registry), installed in its own virtual
   environment (``~/.cache/relmod-bench/orig-venv``, created on the first run and reused) and run
   in that interpreter by this same script (``--child original``). It measures its own plain
   module the same way, so its "vs plain" is a ratio within its own process. It stats the file and
   every dependency on every access, so its cost grows with the chain.
3. **Deep reload**: the leaf of a 50-module chain is edited, then ``relmod.sync()`` and one access
   to the top module; the time is from the write to the access returning the new value (median
   over several edits; the notes split it into sync and access). Every module of the project
   appends its file to an execution log when it runs; after each edit exactly the 50 chain modules
   must have run, once each, and none of 50 unrelated modules loaded from the same folder.
4. **Marking**: what the feed's background thread pays for one change that affects a 50-module
   chain: ``Registry.invalidate([leaf])`` (switch 50 classes) and ``Client.files_changed([leaf])``
   (hash the file, then invalidate). Median per call.
5. **sync() with nothing changed**, with 1, 100 and 1,000 modules loaded, each count in a fresh
   process of this interpreter (``--child sync``) so the registry holds exactly that many modules.

Ratios only compare figures measured in the same process; absolute figures vary between machines.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

UNROLL = 20
ORIGINAL_VERSION = "0.5.0"
TARGET_RATIO = 1.5
LOG_MODULE = "relmod_bench_log"
PLAIN_MODULE = "relmod_bench_one"
SYNC_COUNTS = (1, 100, 1000)


# -- fixtures (shared by this process and the child processes) -------------------------------


def _log_line(log: bool) -> str:
    return f"import {LOG_MODULE}\n{LOG_MODULE}.EXECUTED.append(__file__)\n" if log else ""


def write_chain(
    folder: Path, length: int, *, prefix: str = "m", log: bool = False, leaf_value: int = 0
) -> list[Path]:
    """Write ``{prefix}0`` .. ``{prefix}{length-1}``, each importing the previous one."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(length):
        path = folder / f"{prefix}{i}.py"
        if i == 0:
            body = f"X = {leaf_value}\n"
        else:
            body = f"from . import {prefix}{i - 1}\nX = {prefix}{i - 1}.X + 1\n"
        path.write_text(_log_line(log) + body)
        files.append(path)
    return files


def write_plain_lib(folder: Path) -> Path:
    """A folder for sys.path with the plain module and the execution log module."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{PLAIN_MODULE}.py").write_text("X = 1\n")
    (folder / f"{LOG_MODULE}.py").write_text("EXECUTED: list[str] = []\n")
    return folder / f"{PLAIN_MODULE}.py"


def import_plain(lib: Path) -> types.ModuleType:
    sys.path.insert(0, str(lib))
    return importlib.import_module(PLAIN_MODULE)


# -- attribute access timing ---------------------------------------------------------------


def _timer(module: object) -> timeit.Timer:
    # setup runs inside timeit's inner function, so ``m`` is a local there.
    return timeit.Timer("; ".join(["m.X"] * UNROLL), "m = _module", globals={"_module": module})


def _calibrate(timer: timeit.Timer, sample_s: float) -> int:
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= sample_s / 4:
            return max(1, round(number * sample_s / elapsed))
        number *= 4


def access_ns(subjects: dict[str, object], rounds: int, sample_s: float) -> dict[str, list[float]]:
    """ns per ``m.X`` for each subject: ``rounds`` samples each, subjects interleaved."""
    timers = {name: _timer(module) for name, module in subjects.items()}
    numbers = {name: _calibrate(timer, sample_s) for name, timer in timers.items()}
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    order = list(subjects)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            elapsed = timers[name].timeit(numbers[name])  # timeit turns gc off while it runs
            samples[name].append(elapsed / (numbers[name] * UNROLL) * 1e9)
    return samples


def spread(values: list[float]) -> tuple[float, float]:
    """The 10th and 90th percentiles."""
    deciles = statistics.quantiles(values, n=10)
    return deciles[0], deciles[-1]


# -- the original relmod, in its own interpreter -----------------------------------------------


def child_original(rounds: int, sample_s: float) -> None:
    """Run by the original relmod's interpreter: print its access costs as JSON."""
    import relmod  # the original, from that environment's site-packages

    with tempfile.TemporaryDirectory(prefix="relmod-bench-orig-") as tmp:
        root = Path(tmp)
        one = write_plain_lib(root / "lib")
        plain = import_plain(root / "lib")
        write_chain(root / "chain10", 10)
        write_chain(root / "chain50", 50)
        subjects: dict[str, object] = {
            "plain": plain,
            "one": relmod.at(str(one)),
            "chain10": relmod.at(str(root / "chain10" / "m9.py")),
            "chain50": relmod.at(str(root / "chain50" / "m49.py")),
        }
        values = {name: getattr(module, "X") for name, module in subjects.items()}  # noqa: B009
        if values != {"plain": 1, "one": 1, "chain10": 9, "chain50": 49}:
            raise SystemExit(f"the original relmod loaded wrong values: {values}")
        samples = access_ns(subjects, rounds, sample_s)
    print(json.dumps({
        "version": getattr(relmod, "__version__", "?"),
        "python": sys.version.split()[0],
        "samples": samples,
    }))


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tempfile.gettempdir()
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def ensure_original(venv: Path) -> Path:
    """The python of a venv holding relmod==0.5.0; creates or repairs it. Raises RuntimeError."""
    python = _venv_python(venv)
    check = [str(python), "-c", "import relmod; print(relmod.__version__)"]
    if python.exists():
        done = _run(check, 60)
        if done.returncode == 0 and done.stdout.strip() == ORIGINAL_VERSION:
            return python
    else:
        base = getattr(sys, "_base_executable", sys.executable)
        done = _run([base, "-m", "venv", str(venv)], 120)
        if done.returncode != 0:
            raise RuntimeError(f"python -m venv failed: {_last_line(done.stderr)}")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
           "--retries", "1", "--timeout", "20", f"relmod=={ORIGINAL_VERSION}"]
    done = _run(pip, 300)
    if done.returncode != 0:
        raise RuntimeError(f"pip install relmod=={ORIGINAL_VERSION} failed: "
                           f"{_last_line(done.stderr or done.stdout)}")
    done = _run(check, 60)
    if done.returncode != 0 or done.stdout.strip() != ORIGINAL_VERSION:
        raise RuntimeError(f"relmod {ORIGINAL_VERSION} does not import after install: "
                           f"{_last_line(done.stderr or done.stdout)}")
    return python


def measure_original(venv: Path, rounds: int, sample_s: float) -> dict[str, Any] | str:
    """The original's samples, or the reason they are unavailable."""
    try:
        python = ensure_original(venv)
        cmd = [str(python), os.path.abspath(__file__), "--child", "original",
               "--rounds", str(rounds), "--sample", str(sample_s)]
        done = _run(cmd, 300)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode != 0:
        return f"the measurement failed: {_last_line(done.stderr)}"
    try:
        result: dict[str, Any] = json.loads(_last_line(done.stdout))
    except ValueError:
        return f"the measurement printed no JSON: {_last_line(done.stdout)}"
    return result


# -- relmod in this process ------------------------------------------------------------------


class BareModule(types.ModuleType):
    """The control: a module subclass with nothing in it."""


def measure_access(root: Path, rounds: int, sample_s: float) -> dict[str, list[float]]:
    import relmod

    one = write_plain_lib(root / "lib")
    plain = import_plain(root / "lib")
    bare = BareModule("bare")
    bare.X = 1  # type: ignore[attr-defined]
    write_chain(root / "chain10", 10)
    write_chain(root / "chain50", 50)
    subjects: dict[str, object] = {
        "plain": plain,
        "bare": bare,
        "one": relmod.at(str(one)),
        "chain10": relmod.at(str(root / "chain10" / "m9.py")),
        "chain50": relmod.at(str(root / "chain50" / "m49.py")),
    }
    for name in ("one", "chain10", "chain50"):
        cls = type(subjects[name])
        if cls.__getattribute__ is not types.ModuleType.__getattribute__:
            raise SystemExit(f"relmod handed out a module of class {cls.__qualname__} with its "
                             f"own __getattribute__: it is stale")
    return access_ns(subjects, rounds, sample_s)


def _wait_feed() -> None:
    from relmod.client.session import default_client

    feed = default_client().ensure_feed()
    wait_ready = getattr(feed, "wait_ready", None)
    if callable(wait_ready):
        wait_ready(10.0)


def measure_deep_reload(root: Path, edits: int, settle_s: float) -> dict[str, Any]:
    """Edit the leaf of a 50-chain, sync, access the top; check what ran."""
    import relmod

    log = importlib.import_module(LOG_MODULE)
    folder = root / "deep"
    chain = write_chain(folder, 50, log=True)
    unrelated = write_chain(folder, 50, prefix="u", log=True)
    top = relmod.at(str(chain[-1]))
    other = relmod.at(str(unrelated[-1]))
    chain_keys = {os.path.realpath(p) for p in chain}
    unrelated_keys = {os.path.realpath(p) for p in unrelated}
    if set(log.EXECUTED) != chain_keys | unrelated_keys:
        raise SystemExit("the execution log missed the first load of the deep-reload project")
    _wait_feed()
    leaf = chain[0]
    totals, syncs, accesses, checks = [], [], [], []
    for n in range(1, edits + 1):
        time.sleep(settle_s)  # let the watcher deliver the previous write before the next one
        log.EXECUTED.clear()
        start = time.perf_counter()
        leaf.write_text(_log_line(True) + f"X = {n}\n")
        relmod.sync()
        synced = time.perf_counter()
        value = top.X
        done = time.perf_counter()
        if value != n + 49:
            raise SystemExit(f"after edit {n} the top of the chain says {value}, not {n + 49}")
        ran = list(log.EXECUTED)
        if other.X != 49:
            raise SystemExit("an unrelated module lost its value")
        ran += log.EXECUTED[len(ran):]  # anything the unrelated access ran counts too
        totals.append(done - start)
        syncs.append(synced - start)
        accesses.append(done - synced)
        checks.append((
            len(set(ran) & chain_keys),
            len(set(ran) & unrelated_keys),
            len(ran),
        ))
    return {"total": totals, "sync": syncs, "access": accesses, "checks": checks,
            "leaf": os.path.realpath(leaf), "top": top, "log": log}


def measure_marking(deep: dict[str, Any], calls: int, cycles: int) -> dict[str, Any]:
    """Registry.invalidate and Client.files_changed for one change under a 50-module chain."""
    from relmod.client.session import default_client as _client
    from relmod.client.session import default_client

    client = default_client()
    leaf, top, log = deep["leaf"], deep["top"], deep["log"]
    value = top.X - 49
    invalidate_us, marked_counts = [], set()
    log.EXECUTED.clear()
    for _ in range(calls):
        start = time.perf_counter()
        marked = client.registry.invalidate([leaf])
        invalidate_us.append((time.perf_counter() - start) * 1e6)
        marked_counts.add(len(marked))
        stale = _client().registry.is_stale(top)
        seen = top.X  # the access refreshes; the content is unchanged, so nothing runs
        if not stale or seen != value + 49:
            raise SystemExit("invalidate() did not mark the top of the chain stale")
    ran_after_invalidate = len(log.EXECUTED)
    files_changed_us = []
    for n in range(cycles):
        value += 1
        Path(leaf).write_text(_log_line(True) + f"X = {value}\n")
        start = time.perf_counter()
        marked = client.files_changed([leaf])
        files_changed_us.append((time.perf_counter() - start) * 1e6)
        marked_counts.add(len(marked))
        seen = top.X
        if seen != value + 49:
            raise SystemExit(f"files_changed() cycle {n}: the top did not see the edit")
    return {"invalidate": invalidate_us, "files_changed": files_changed_us,
            "marked": sorted(marked_counts), "ran_after_invalidate": ran_after_invalidate}


def child_sync(count: int, reps: int) -> None:
    """Load ``count`` modules in this fresh process and print sync() times as JSON."""
    import relmod

    with tempfile.TemporaryDirectory(prefix="relmod-bench-sync-") as tmp:
        root = Path(tmp)
        for i in range(count):
            folder = root / f"d{i // 100}"
            folder.mkdir(exist_ok=True)
            path = folder / f"f{i}.py"
            path.write_text(f"X = {i}\n")
            relmod.at(str(path))
        _wait_feed()
        # A save younger than 2 s is re-read on every sync (its stat signature is not trusted
        # yet, as in git's racy-index rule); measure the steady state of a project at rest.
        time.sleep(2.1)
        relmod.sync()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            relmod.sync()
            samples.append((time.perf_counter() - start) * 1e6)
    print(json.dumps({"modules": count, "sync_us": samples}))


def measure_sync(reps: int) -> dict[int, list[float] | str]:
    out: dict[int, list[float] | str] = {}
    for count in SYNC_COUNTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "sync",
               "--modules", str(count), "--reps", str(reps)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            out[count] = "timed out"
            continue
        if done.returncode != 0:
            out[count] = f"failed: {_last_line(done.stderr)}"
            continue
        out[count] = json.loads(_last_line(done.stdout))["sync_us"]
    return out


# -- the table -------------------------------------------------------------------------------


def _ns(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ns"


def _unit(values: list[float], scale: float, unit: str) -> str:
    median = statistics.median(values) * scale
    return f"{median:,.2f} {unit}" if median < 100 else f"{median:,.0f} {unit}"


def _p10_p90(values: list[float], fmt: Callable[[float], str]) -> str:
    if len(values) < 2:
        return ""
    low, high = spread(values)
    return f"p10-p90 {fmt(low)}-{fmt(high)}"


def build_rows(
    access: dict[str, list[float]],
    original: dict[str, Any] | str | None,
    deep: dict[str, Any],
    marking: dict[str, Any],
    sync: dict[int, list[float] | str],
) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    plain = statistics.median(access["plain"])

    def ns_fmt(x: float) -> str:
        return f"{x:.1f}"

    one = statistics.median(access["one"])
    labels = {
        "plain": "1. access: plain module (imported normally)",
        "bare": "1. access: control, bare `types.ModuleType` subclass",
        "one": "1. access: relmod module, `relmod.at(file)`",
        "chain10": "1. access: relmod, top of a 10-file chain",
        "chain50": "1. access: relmod, top of a 50-file chain",
    }
    for name, label in labels.items():
        ratio = statistics.median(access[name]) / plain
        note = _p10_p90(access[name], ns_fmt)
        if name in ("one", "chain10", "chain50"):
            verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
            note += f"; {verdict} the {TARGET_RATIO}x target"
        if name in ("chain10", "chain50"):
            note += f"; {statistics.median(access[name]) / one:.2f}x the one-file module"
        rows.append((label, _ns(access[name]), f"{ratio:.2f}x", note))

    if original is None:
        rows.append((f"2. original relmod {ORIGINAL_VERSION}", "skipped", "", "--no-original"))
    elif isinstance(original, str):
        rows.append((f"2. original relmod {ORIGINAL_VERSION}", "unavailable", "", original))
    else:
        samples = original["samples"]
        their_plain = statistics.median(samples["plain"])
        rows.append((
            f"2. original {original['version']}: its plain module (its own process)",
            _ns(samples["plain"]), "1.00x", f"Python {original['python']}",
        ))
        for name, what in (("one", "one file"), ("chain10", "10-file chain"),
                           ("chain50", "50-file chain")):
            value = statistics.median(samples[name])
            ours = statistics.median(access[name])
            rows.append((
                f"2. original {original['version']}: {what}",
                _ns(samples[name]),
                f"{value / their_plain:,.0f}x",
                f"{value / ours:,.0f}x relmod's {what} figure above",
            ))

    checks = deep["checks"]
    chain_ok = all(c[0] == 50 for c in checks)
    worst = max(checks, key=lambda c: (c[0] != 50, c[1], c[2]))
    rows.append((
        "3. deep reload: edit leaf of a 50-chain, sync(), access top",
        _unit(deep["total"], 1e3, "ms"),
        "",
        f"re-executed: {worst[0]}/50, unrelated: {worst[1]}"
        + ("" if worst[2] == worst[0] + worst[1] else f", executions: {worst[2]} (repeats!)")
        + ("" if chain_ok and worst[1] == 0 else " (WRONG)")
        + f"; over {len(checks)} edits; sync {_unit(deep['sync'], 1e3, 'ms')}"
        + f" + access {_unit(deep['access'], 1e3, 'ms')}",
    ))

    marked = ", ".join(str(n) for n in marking["marked"])
    rows.append((
        "4. marking: `Registry.invalidate([leaf])`, 50-chain",
        _unit(marking["invalidate"], 1, "us"), "",
        f"marks {marked} modules; {statistics.median(marking['invalidate']) / 50 * 1e3:.0f} ns "
        f"per module; refresh after it re-ran {marking['ran_after_invalidate']} modules",
    ))
    rows.append((
        "4. marking: `Client.files_changed([leaf])`, 50-chain",
        _unit(marking["files_changed"], 1, "us"), "",
        "hashes the file, then invalidate; the feed thread's cost per change",
    ))

    for count, samples_or_reason in sync.items():
        label = f"5. `relmod.sync()`, nothing changed, {count:,} module(s) loaded"
        if isinstance(samples_or_reason, str):
            rows.append((label, "unavailable", "", samples_or_reason))
        else:
            rows.append((label, _unit(samples_or_reason, 1, "us"), "",
                         _p10_p90(samples_or_reason, lambda x: f"{x:,.0f}")))
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    print("| measurement | median | vs plain | notes |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


def default_venv() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "relmod-bench" / "orig-venv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, about 15 s")
    parser.add_argument("--no-original", action="store_true", help="skip the original relmod")
    parser.add_argument("--orig-venv", type=Path, default=default_venv(),
                        help="virtual environment for relmod==0.5.0 (created if missing)")
    parser.add_argument("--child", choices=("original", "sync"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--modules", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "original":
        child_original(args.rounds, args.sample)
        return 0
    if args.child == "sync":
        child_sync(args.modules, args.reps)
        return 0

    quick = args.quick
    # A full run takes about a minute, a quick one about 15 s (plus, once, creating the venv).
    rounds, sample_s = (200, 0.005) if quick else (400, 0.01)
    edits, settle_s = (20, 0.1) if quick else (40, 0.15)
    calls, cycles = (200, 30) if quick else (1000, 100)
    sync_reps = 20 if quick else 100

    started = time.perf_counter()
    original = (None if args.no_original
                else measure_original(args.orig_venv, rounds // 2, sample_s))
    import relmod

    with tempfile.TemporaryDirectory(prefix="relmod-bench-") as tmp:
        root = Path(tmp)
        access = measure_access(root, rounds, sample_s)
        deep = measure_deep_reload(root, edits, settle_s)
        marking = measure_marking(deep, calls, cycles)
        sync = measure_sync(sync_reps)
        rows = build_rows(access, original, deep, marking, sync)
    gc.collect()

    print(f"relmod {relmod.__version__}, Python {sys.version.split()[0]} on {sys.platform}; "
          f"{'quick' if quick else 'full'} run, {rounds} rounds of {UNROLL}-access timeit loops, "
          f"{time.perf_counter() - started:.0f} s")
    print()
    print_table(rows)
    ratio = statistics.median(access["chain50"]) / statistics.median(access["plain"])
    growth = statistics.median(access["chain50"]) / statistics.median(access["one"])
    print()
    print(f"Access on an up-to-date relmod module: {ratio:.2f}x a plain module "
          f"(target <= {TARGET_RATIO}x); a 50-file chain costs {growth:.2f}x a single file.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
