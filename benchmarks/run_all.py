"""Run every benchmark script in this folder, one after the other, and print their tables.

Run: .venv/bin/python benchmarks/run_all.py [--quick] [--timeout 600] [NAME ...]

The known scripts run first in a fixed order (bench_library, bench_watch, bench_graph,
bench_broker), then any other ``bench_*.py`` found here, alphabetically; a known script that is not
in the folder yet is skipped with a note. NAME (``library`` or ``bench_library.py``) restricts the
run to those scripts. ``--quick`` is passed on to each script that offers a ``--quick`` option.
Each script runs in its own process with this interpreter; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOWN = ("bench_library.py", "bench_watch.py", "bench_graph.py", "bench_broker.py")


def scripts() -> list[tuple[str, Path | None]]:
    """Every script to consider, known ones first; None where a known one is missing."""
    found = {p.name: p for p in sorted(HERE.glob("bench_*.py"))}
    out: list[tuple[str, Path | None]] = [(name, found.pop(name, None)) for name in KNOWN]
    out.extend(sorted(found.items()))
    return out


def _wanted(name: str, only: list[str]) -> bool:
    if not only:
        return True
    stem = name.removesuffix(".py")
    return any(pick in (name, stem, stem.removeprefix("bench_")) for pick in only)


def offers_quick(script: Path) -> bool:
    """Whether the script declares a ``--quick`` option."""
    return '"--quick"' in script.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these scripts")
    parser.add_argument("--quick", action="store_true", help="short runs where a script offers one")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per script")
    args = parser.parse_args(argv)

    summary: list[tuple[str, str, float]] = []
    for name, script in scripts():
        if not _wanted(name, args.names):
            continue
        print(f"## {name}\n", flush=True)
        if script is None:
            print("(not in benchmarks/ yet: skipped)\n", flush=True)
            summary.append((name, "missing", 0.0))
            continue
        cmd = [sys.executable, str(script)]
        if args.quick and offers_quick(script):
            cmd.append("--quick")
        shown = [Path(sys.executable).name, f"benchmarks/{name}", *cmd[2:]]
        print(f"`{' '.join(shown)}`\n", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=HERE.parent, timeout=args.timeout)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f} s"
        summary.append((name, status, time.perf_counter() - started))
        print(flush=True)

    print("## summary\n")
    print("| script | status | seconds |")
    print("| --- | --- | ---: |")
    for name, status, seconds in summary:
        print(f"| {name} | {status} | {seconds:.0f} |")
    failed = [s for s in summary if s[1] not in ("ok", "missing")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
