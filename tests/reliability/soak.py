"""The bounded soak: a broker, client processes, random edits and faults, and a final reckoning.

A real broker (``python -m relmod.server``) serves a generated project of ``--modules`` modules
with import chains (:mod:`.project`); ``--clients`` real client processes (:mod:`.soak_worker`)
connect and load every module. The driver then does ``--edits`` random actions on the files:

========================  =====================================================================
action                    what the driver does
========================  =====================================================================
edit                      a new ``BASE``, saved in place (truncate, write)
atomic                    a new ``BASE``, saved to a temporary file renamed over the module
imports                   new imports (the dependency graph changes), saved atomically
identical                 the same bytes saved again (in place or atomically): nothing changes
touch                     ``os.utime``: nothing changes
rename_over               ``mv mA.py mB.py`` within a folder, then ``mA.py`` written anew
delete                    the file is removed, and re-created at once or a few actions later
broken                    a syntax error, or a module that raises when run; fixed later
burst                     ``--burst`` files (100) rewritten at once, as a formatter does
========================  =====================================================================

and, at random moments, these faults:

- the broker is killed with SIGKILL and restarted 0.5-3 s later (the edits go on meanwhile);
- a client is SIGSTOPped for 1.5-3 s, long enough for its queue to overflow (the soak runs every
  process with ``RELMOD_HWM=4`` and ``RELMOD_HEARTBEAT=0.002``: four messages per socket and 500
  heartbeats a second), then SIGCONTed;
- a client is killed and a new one started.

Checkpoints (``--checkpoints`` during the run, and one at the end) count what matters:

1. the broker is asked to ``sync`` (every save made so far is published, up to seq S);
2. each client must catch up (its feed connected, same epoch, seq >= S) *without* ``sync()``;
   then every module's ``VALUE`` it returns is compared with what the files on disk say. A wrong
   value here is an **invalidation lost**: the stream plus the gap repair did not mark it stale.
   A client that never catches up counts as lost too;
3. each client calls ``relmod.sync()`` and answers again: a wrong value now is a client that
   **ran stale code after sync()**.

Only modules whose file and every dependency's file hold a good module have an expected value.

Propagation latency is measured at ``--latency-clients`` clients that are never stopped or
killed: from the moment a write to a dependency-free module begins to the moment that client's
feed thread marked it stale (a registry invalidation listener). The broker's peak RSS is the
kernel's VmHWM, read before every kill and at the end.

Run ``python -m tests.reliability.soak`` (or ``python tests/reliability/soak.py``) from the
repository root with the project's virtual environment; ``--help`` lists the options. It also
runs the protocol fuzzer (:mod:`.fuzz`) on ``--fuzz`` inputs. Exit status 0 when nothing was
lost, nothing ran stale, nothing crashed and no fuzz input escaped the decoder.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # python tests/reliability/soak.py
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(importlib.import_module("tests.reliability.soak").main())

from .procs import BrokerProc, WorkerProc  # noqa: E402
from .project import SoakProject, atomic_write, expected_values, inplace_write  # noqa: E402

ACTION_WEIGHTS = {
    "edit": 24, "atomic": 16, "imports": 8, "identical": 10, "touch": 8,
    "rename_over": 6, "delete": 6, "broken": 6, "burst": 2,
}  # fmt: skip


@dataclass
class Options:
    """How big a soak is, and how hard it pushes (see the module docstring)."""

    actions: int = 1000
    clients: int = 8
    modules: int = 200
    seed: int = 1
    latency_clients: int = 2
    broker_kills: int | None = None  # default: one per 200 actions, at least one
    stops: int | None = None  # default: one per 100 actions, at least two
    replacements: int | None = None  # default: one per 200 actions, at least one
    checkpoints: int | None = None  # mid-run checkpoints; default one per 100 actions
    burst: int = 100
    hwm: int = 4
    heartbeat: float = 0.002
    pause: float = 0.03  # most seconds between two actions
    isolated: int = 2  # isolated saves of a probe module after each checkpoint (latency)
    stop_seconds: tuple[float, float] = (1.5, 3.0)
    down_seconds: tuple[float, float] = (0.5, 3.0)
    workdir: Path | None = None
    keep: bool = False


@dataclass
class Results:
    """What a soak measured; :func:`markdown` prints it."""

    options: dict[str, Any] = field(default_factory=dict)
    actions: Counter[str] = field(default_factory=Counter)
    edits: int = 0
    saves: int = 0
    broker_kills: int = 0
    broker_starts: int = 0
    client_stops: int = 0
    stops_checked: int = 0  # stops without a broker restart meanwhile
    stops_overflowed: int = 0  # of those: the client's queue overflowed (heartbeats lost)
    stops_repaired: int = 0  # of those: the client resynchronised (it had lost publications)
    client_replacements: int = 0
    replacements_started_without_broker: int = 0
    checkpoints: int = 0
    compared: int = 0
    lost: int = 0
    lost_clients: int = 0
    not_caught_up: int = 0
    stale_after_sync: int = 0
    stale_clients: int = 0
    latency_ms: list[float] = field(default_factory=list)
    latency_up_ms: list[float] = field(default_factory=list)
    latency_isolated_ms: list[float] = field(default_factory=list)
    latency_unmatched: int = 0
    peak_broker_rss_kb: int = 0
    broker_status: dict[str, Any] = field(default_factory=dict)
    broker_log_errors: int = 0
    worker_tracebacks: int = 0
    resyncs: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        status = self.broker_status
        return (
            self.lost == 0
            and self.not_caught_up == 0
            and self.stale_after_sync == 0
            and self.broker_log_errors == 0
            and self.worker_tracebacks == 0
            and self.latency_unmatched == 0
            and status.get("request_errors", 0) == 0
            and status.get("publish_errors", 0) == 0
            and status.get("batch_errors", 0) == 0
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Soak:
    """One soak run (see the module docstring); :meth:`run` returns its :class:`Results`."""

    def __init__(self, options: Options, log: Callable[[str], None] = lambda _: None) -> None:
        self.o = options
        self.say = log
        self.rng = random.Random(options.seed)
        self.r = Results(options={k: str(v) for k, v in asdict(options).items()})
        self.work = Path(options.workdir or tempfile.mkdtemp(prefix="relmod-soak-")).resolve()
        self.root = self.work / "proj"
        self.logs = self.work / "logs"
        runtime = self.work / "run"
        for folder in (self.root, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.chmod(runtime, 0o700)
        # The driver reads the broker's connection file too: same runtime folder, but not the
        # tiny queues (its own requests are not part of the experiment).
        os.environ["RELMOD_RUNTIME_DIR"] = str(runtime)
        os.environ.pop("RELMOD_BROKER", None)
        from relmod.connfile import connection_path

        self.env = dict(os.environ)
        self.env.pop("RELMOD_POLL", None)
        self.env.update(
            RELMOD_RUNTIME_DIR=str(runtime),
            RELMOD_BROKER=str(connection_path(str(self.root))),
            RELMOD_HWM=str(options.hwm),
            RELMOD_HEARTBEAT=str(options.heartbeat),
        )
        self.project = SoakProject(self.root, options.modules, self.rng)
        self.broker = BrokerProc(self.root, self.env, self.logs / "broker.log")
        self.workers: list[WorkerProc] = []
        self.latency_workers: list[WorkerProc] = []
        self.pending: dict[int, tuple[str, int]] = {}  # module -> (recreate | fix, due action)
        # (module, when the write began, broker up, an isolated save)
        self.probe_writes: list[tuple[int, float, bool, bool]] = []
        self._isolated = False
        self.timers: list[tuple[float, int, str, Callable[[], None]]] = []
        self._timer_seq = 0
        self._worker_count = 0
        self._sampling = threading.Event()
        self._in_fault: set[WorkerProc] = set()  # stopped, or resumed and not checked yet

    # -- processes ------------------------------------------------------------------------------

    def _manifest(self, latency: bool) -> Path:
        path = self.work / f"manifest-{'latency' if latency else 'plain'}.json"
        if not path.exists():
            names = self.project.names
            path.write_text(json.dumps({
                "root": str(self.root), "modules": names, "probes": names[: self.project.free],
                "latency": latency, "connect_timeout": 5.0,
            }))  # fmt: skip
        return path

    def _start_worker(self, latency: bool) -> WorkerProc:
        self._worker_count += 1
        name = f"client-{self._worker_count}{'-latency' if latency else ''}"
        worker = WorkerProc(self._manifest(latency), self.env, self.logs / f"{name}.log", name)
        self.workers.append(worker)
        if latency:
            self.latency_workers.append(worker)
        return worker

    def _sampler(self) -> None:
        while not self._sampling.wait(0.25):
            self.broker.sample()

    # -- timers ---------------------------------------------------------------------------------

    def _later(self, seconds: float, kind: str, action: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (time.monotonic() + seconds, self._timer_seq, kind, action))

    def _run_timers(self, everything: bool = False) -> None:
        """Run the timers that are due; with ``everything``, wait for each one and run it too
        (a checkpoint lets every stop last its full time, and every restart happen)."""
        while self.timers and (everything or self.timers[0][0] <= time.monotonic()):
            due, _, _, action = heapq.heappop(self.timers)
            time.sleep(max(0.0, due - time.monotonic()))
            action()

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> Results:
        o = self.o
        began = time.monotonic()
        self.project.create()
        self.broker.start()
        self.broker.wait_ready()
        self.r.broker_starts = 1
        sampler = threading.Thread(target=self._sampler, daemon=True)
        sampler.start()
        for index in range(o.clients):
            self._start_worker(latency=index < o.latency_clients)
        for worker in self.workers:
            worker.wait_ready()
        self.say(f"soak: {o.clients} clients on {o.modules} modules in {self.root}")
        finished = False
        try:
            self._main_loop()
            self._finish()
            finished = True
        finally:
            self._sampling.set()
            sampler.join(2)
            for worker in self.workers:
                worker.close()
            self.broker.stop()
            self.r.peak_broker_rss_kb = self.broker.peak_rss_kb
            self.r.broker_starts = self.broker.starts
            self.r.seconds = round(time.monotonic() - began, 1)
            self._scan_logs()
            if o.keep or not (finished and self.r.ok):
                self.say(f"soak: logs and project kept in {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.r

    def _faults(self) -> dict[int, list[str]]:
        o = self.o
        per = max(1, o.actions // 200)
        counts = {
            "kill_broker": per if o.broker_kills is None else o.broker_kills,
            "stop_client": 2 * per if o.stops is None else o.stops,
            "replace_client": per if o.replacements is None else o.replacements,
            "checkpoint": max(1, o.actions // 100) if o.checkpoints is None else o.checkpoints,
        }
        low, high = max(1, o.actions // 10), max(2, o.actions - o.actions // 10)
        at: dict[int, list[str]] = defaultdict(list)
        for kind, count in counts.items():
            for index in sorted(self.rng.randrange(low, high) for _ in range(count)):
                at[index].append(kind)
        return at

    def _main_loop(self) -> None:
        o = self.o
        faults = self._faults()
        names = list(ACTION_WEIGHTS)
        weights = list(ACTION_WEIGHTS.values())
        index = 0
        while index < o.actions:
            self._run_timers()
            self._settle_pending(index)
            for fault in faults.pop(index, []):
                if not getattr(self, f"_fault_{fault}")():
                    faults[index + 3].append(fault)  # not possible right now: try again soon
            action = self.rng.choices(names, weights)[0]
            if getattr(self, f"_do_{action}")():
                self.r.actions[action] += 1
                index += 1
            time.sleep(self.rng.uniform(0, o.pause))
        for index in sorted(faults):  # faults pushed past the end still happen
            for fault in faults[index]:
                getattr(self, f"_fault_{fault}")()

    def _finish(self) -> None:
        self._settle_pending(None)
        self._checkpoint(final=True)
        marks = [w.call("marks") for w in self.latency_workers]
        self._latencies(marks)
        self.r.broker_status = self.broker.request("status", "status")["status"]
        self.r.resyncs = sum(w.call("status")["resyncs"] for w in self.workers)

    # -- actions on files -----------------------------------------------------------------------

    def _available(self) -> list[int]:
        return [i for i in range(len(self.project)) if i not in self.pending]

    def _pick(self) -> int | None:
        available = self._available()
        return self.rng.choice(available) if available else None

    def _save(self, index: int, data: bytes, *, atomic: bool, changes: bool = True) -> None:
        began = time.time()
        path = self.project.path(index)
        if atomic:
            atomic_write(path, data, self.rng)
        else:
            inplace_write(path, data)
        self.r.saves += 1
        if changes:
            self.r.edits += 1
            if index < self.project.free:
                self.probe_writes.append((index, began, self.broker.ready, self._isolated))

    def _write_new(self, index: int, *, atomic: bool, keep_deps: bool = True) -> None:
        spec = self.project.new_spec(index, keep_deps=keep_deps)
        self._save(index, self.project.render(index, spec), atomic=atomic)

    def _do_edit(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        self._write_new(index, atomic=False)
        return True

    def _do_atomic(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        self._write_new(index, atomic=True)
        return True

    def _do_imports(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        self._write_new(index, atomic=True, keep_deps=False)
        return True

    def _do_identical(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        data = self.project.path(index).read_bytes()
        self._save(index, data, atomic=self.rng.random() < 0.5, changes=False)
        return True

    def _do_touch(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        os.utime(self.project.path(index))
        return True

    def _do_rename_over(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        group = index // 20
        later = [j for j in self._available() if j > index and j // 20 == group]
        if not later:
            return False
        target = self.rng.choice(later)
        began = time.time()
        os.replace(self.project.path(index), self.project.path(target))
        self.project.specs[target] = self.project.specs[index]
        self.r.saves += 1
        self.r.edits += 1
        if target < self.project.free:
            self.probe_writes.append((target, began, self.broker.ready, False))
        self._write_new(index, atomic=True)
        return True

    def _do_delete(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        began = time.time()
        self.project.path(index).unlink()
        self.r.edits += 1
        if index < self.project.free:
            self.probe_writes.append((index, began, self.broker.ready, False))
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0, 0.1))
            self._write_new(index, atomic=self.rng.random() < 0.5)
        else:
            self.pending[index] = ("recreate", self.r.actions.total() + self.rng.randint(1, 10))
        return True

    def _do_broken(self) -> bool:
        index = self._pick()
        if index is None:
            return False
        how = self.rng.choice(["syntax", "syntax", "raise"])
        spec = self.project.new_spec(index, keep_deps=True)
        data = self.project.render(index, spec, broken=how)
        # A syntax error is announced as "broken", not invalidated: no mark to wait for.
        self._save(index, data, atomic=self.rng.random() < 0.5, changes=how == "raise")
        self.pending[index] = ("fix", self.r.actions.total() + self.rng.randint(1, 10))
        return True

    def _do_burst(self) -> bool:
        available = self._available()
        chosen = self.rng.sample(available, min(self.o.burst, len(available)))
        atomic = self.rng.random() < 0.5
        for index in chosen:
            self._write_new(index, atomic=atomic)
        return True

    def _settle_pending(self, now: int | None) -> None:
        """Re-create deleted modules and fix broken ones whose time came (all, when now is None)."""
        for index, (_, due) in sorted(self.pending.items()):
            if now is None or due <= now:
                del self.pending[index]
                self._write_new(index, atomic=self.rng.random() < 0.5)

    # -- faults ---------------------------------------------------------------------------------

    def _fault_checkpoint(self) -> bool:
        self._checkpoint(final=False)
        return True

    def _fault_kill_broker(self) -> bool:
        if not self.broker.is_ready():
            return False
        self.broker.kill(signal.SIGKILL)
        self.r.broker_kills += 1
        down = self.rng.uniform(*self.o.down_seconds)
        self.say(f"  broker killed (#{self.r.broker_kills}); restarting in {down:.1f}s")
        self._later(down, "restart", self._restart_broker)
        return True

    def _restart_broker(self) -> None:
        if not self.broker.alive:
            self.broker.start()

    def _fault_stop_client(self) -> bool:
        candidates = [
            w
            for w in self.workers
            if w not in self.latency_workers and w not in self._in_fault and w.proc.poll() is None
        ]
        if not candidates:
            return False
        worker = self.rng.choice(candidates)
        try:
            before = worker.call("status", timeout=30)
        except RuntimeError:
            return False  # not ready yet
        worker.signal(signal.SIGSTOP)
        self._in_fault.add(worker)  # until its repair was checked
        self.r.client_stops += 1
        hold = self.rng.uniform(*self.o.stop_seconds)
        starts = self.broker.starts
        self.say(f"  {worker.name} stopped for {hold:.1f}s")

        def resume() -> None:
            if worker.proc.poll() is not None or not worker.stopped:
                self._in_fault.discard(worker)
                return
            worker.signal(signal.SIGCONT)
            self._check_repaired(worker, before, starts)

        self._later(hold, "resume", resume)
        return True

    def _check_repaired(self, worker: WorkerProc, before: dict[str, Any], starts: int) -> None:
        """Did the resumed client's queue overflow, and did it ask the broker what it missed?

        Waits (at most 10 s) until the client has read a heartbeat sent after the resume: by
        then it has drained its queue, seen any gap in the heartbeats, and resynchronised if
        publications were among what the full queue dropped.
        """
        self._in_fault.discard(worker)
        resumed = time.time()
        deadline = time.monotonic() + 10
        status = before
        while time.monotonic() < deadline:
            status = worker.call("status")
            if status["connected"] and status["heartbeats"]["last"] >= resumed:
                break
            time.sleep(0.05)
        gaps = status["heartbeats"]["gaps"] - before["heartbeats"]["gaps"]
        self.say(
            f"  {worker.name} resumed: {gaps} heartbeat gap(s), resyncs "
            f"{before['resyncs']} -> {status['resyncs']}"
        )
        if self.broker.starts != starts:
            return  # a broker restart during the stop: gaps and resyncs have another cause
        self.r.stops_checked += 1
        if gaps > 0:
            self.r.stops_overflowed += 1
        if status["resyncs"] > before["resyncs"]:
            self.r.stops_repaired += 1

    def _fault_replace_client(self) -> bool:
        candidates = [
            w
            for w in self.workers
            if w not in self.latency_workers and w not in self._in_fault and w.proc.poll() is None
        ]
        if not candidates:
            return False
        victim = self.rng.choice(candidates)
        victim.kill()
        self.workers.remove(victim)
        if not self.broker.is_ready():
            self.r.replacements_started_without_broker += 1
        self._start_worker(latency=False)
        self.r.client_replacements += 1
        self.say(f"  {victim.name} killed and replaced")
        return True

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint(self, final: bool) -> None:
        self._run_timers(everything=True)  # resume every client, restart the broker
        if not self.broker.alive:
            self.broker.start()
        self.broker.wait_ready()
        for worker in self.workers:
            worker.wait_ready()
        self.r.checkpoints += 1
        self._isolated_saves()  # before the sync: they are verified like every other write
        # The broker's sync re-reads the files it tracks, but does not wait for the watcher to
        # report files it has not seen yet (a re-created module): give the watcher a moment.
        # tests/test_reliability_regressions.py::test_sync_covers_a_file_created_just_before_it
        time.sleep(0.3)
        synced = self.broker.request("sync", "synced", timeout=30)
        epoch, seq = synced["epoch"], synced["seq"]
        behind = []
        for worker in self.workers:
            if not self._caught_up(worker, epoch, seq):
                behind.append(worker)
        self.r.not_caught_up += len(behind)
        expected = expected_values(self.root, self.project.names)
        valid = [name for name, value in expected.items() if value is not None]
        lost_here = 0
        for worker in self.workers:
            wrong = self._compare(worker, expected, sync=False)
            self.r.compared += len(valid)
            if wrong and worker not in behind:
                self.r.lost += len(wrong)
                self.r.lost_clients += 1
                lost_here += len(wrong)
                self._sample(f"lost at {worker.name}", wrong)
        stale_here = 0
        for worker in self.workers:
            wrong = self._compare(worker, expected, sync=True)
            if wrong:
                self.r.stale_after_sync += len(wrong)
                self.r.stale_clients += 1
                stale_here += len(wrong)
                self._sample(f"stale after sync at {worker.name}", wrong)
        self.say(
            f"  checkpoint {self.r.checkpoints}{' (final)' if final else ''} at seq {seq}: "
            f"{len(valid)}/{len(expected)} modules with a value, {len(self.workers)} clients, "
            f"lost {lost_here}, behind {len(behind)}, stale after sync {stale_here}"
        )

    def _isolated_saves(self) -> None:
        """Saves of a probe module alone, after a quiet second: latency without burst pacing."""
        self._isolated = True
        try:
            for _ in range(self.o.isolated):
                time.sleep(1.1)  # longer than the broker's longest burst gap
                index = self.rng.randrange(self.project.free)
                if index not in self.pending:
                    self._write_new(index, atomic=True)
        finally:
            self._isolated = False

    def _caught_up(self, worker: WorkerProc, epoch: str, seq: int, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = worker.call("status")
            if status.get("connected") and status.get("epoch") == epoch and status["seq"] >= seq:
                return True
            time.sleep(0.02)
        self._sample(f"{worker.name} did not catch up with {epoch}/{seq}", [json.dumps(status)])
        return False

    def _compare(
        self, worker: WorkerProc, expected: dict[str, int | None], sync: bool
    ) -> list[str]:
        values = worker.call("values", sync=sync, timeout=120)
        return [
            f"{name}: {values.get(name)!r} != {want}"
            for name, want in expected.items()
            if want is not None and values.get(name) != want
        ]

    def _sample(self, what: str, wrong: list[str]) -> None:
        if len(self.r.samples) < 20:
            self.r.samples.append(f"{what}: {len(wrong)} e.g. {'; '.join(wrong[:3])}")

    # -- figures --------------------------------------------------------------------------------

    def _latencies(self, marks_per_client: list[list[list[float]]]) -> None:
        for marks in marks_per_client:
            by_probe: dict[int, list[float]] = defaultdict(list)
            for when, probe in marks:
                by_probe[int(probe)].append(when)
            for times in by_probe.values():
                times.sort()
            for probe, began, up, isolated in self.probe_writes:
                times = by_probe[probe]
                k = bisect.bisect_left(times, began)
                if k == len(times):
                    self.r.latency_unmatched += 1
                    continue
                ms = (times[k] - began) * 1000
                self.r.latency_ms.append(ms)
                if up:
                    self.r.latency_up_ms.append(ms)
                if isolated:
                    self.r.latency_isolated_ms.append(ms)

    def _scan_logs(self) -> None:
        broker_log = self.broker.log.read_text(errors="replace") if self.broker.log.exists() else ""
        self.r.broker_log_errors = sum(
            1 for line in broker_log.splitlines() if " ERROR " in line or "Traceback" in line
        )
        for log in self.logs.glob("client-*.log"):
            self.r.worker_tracebacks += log.read_text(errors="replace").count("Traceback")


def markdown(r: Results, command: str) -> str:
    """The soak's figures as a Markdown table."""

    def lat(values: list[float]) -> str:
        if not values:
            return "n/a"
        return f"{statistics.median(values):.0f} / {percentile(values, 0.99):.0f} ms"

    o = r.options
    status = r.broker_status
    dropped_by = status.get("dropped", {})
    reasons = ", ".join(f"{k} {v}" for k, v in dropped_by.items() if v and k != "total")
    dropped = f"{dropped_by.get('total', 'n/a')}" + (f" ({reasons})" if reasons else "")
    errors = sum(status.get(k, 0) for k in ("request_errors", "publish_errors", "batch_errors"))
    rows = [
        (
            "actions (random, on files)",
            f"{sum(r.actions.values())}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(r.actions.items())),
        ),
        ("edits made (writes that change a module)", f"{r.edits}"),
        (
            "clients / modules",
            f"{o.get('clients')} / {o.get('modules')} (HWM {o.get('hwm')}, "
            f"heartbeat {o.get('heartbeat')} s)",
        ),
        ("broker kills survived (SIGKILL + restart)", f"{r.broker_kills}"),
        (
            "clients stopped and resumed (SIGSTOP/SIGCONT)",
            f"{r.client_stops}: of {r.stops_checked} without a broker restart meanwhile, "
            f"{r.stops_overflowed} overflowed the queue (heartbeats lost), "
            f"{r.stops_repaired} resynchronised (publications lost)",
        ),
        (
            "clients killed and replaced",
            f"{r.client_replacements} "
            f"({r.replacements_started_without_broker} while the "
            "broker was down)",
        ),
        ("checkpoints (every client, every module)", f"{r.checkpoints} ({r.compared} values)"),
        ("**invalidations lost**", f"**{r.lost}** (clients behind: {r.not_caught_up})"),
        (
            "**clients that ran stale code after sync()**",
            f"**{r.stale_clients}** ({r.stale_after_sync} values)",
        ),
        ("propagation p50 / p99, a lone save (after a quiet second)", lat(r.latency_isolated_ms)),
        ("propagation p50 / p99, during the run, broker up", lat(r.latency_up_ms)),
        ("propagation p50 / p99, whole run (incl. bursts, broker down)", lat(r.latency_ms)),
        (
            "latency samples: all / lone saves (unmatched)",
            f"{len(r.latency_ms)} / {len(r.latency_isolated_ms)} ({r.latency_unmatched})",
        ),
        ("peak broker RSS (VmHWM)", f"{r.peak_broker_rss_kb / 1024:.1f} MiB"),
        (
            "broker: dropped messages / internal errors / ERROR log lines",
            f"{dropped} / {errors} / {r.broker_log_errors}",
        ),
        ("client tracebacks in logs", f"{r.worker_tracebacks}"),
        ("client resyncs (total)", f"{r.resyncs}"),
        ("duration", f"{r.seconds:.0f} s"),
    ]
    lines = [f"Soak: `{command}` (seed {o.get('seed')})", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if r.samples:
        lines += ["", "Mismatches (first ones):"] + [f"- {s}" for s in r.samples]
    return "\n".join(lines)


def plain(figures: Any) -> dict[str, Any]:
    """A results dataclass as JSON-ready data (``asdict`` would mangle its Counters)."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(figures).items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak",
        description="relmod's bounded soak (broker, clients, random edits and faults) and "
        "protocol fuzz; prints Markdown tables of the figures.",
    )
    parser.add_argument(
        "--edits",
        "--actions",
        dest="actions",
        type=int,
        default=1000,
        help="random actions on files (default 1000)",
    )
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--modules", type=int, default=200, help="modules (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--fuzz",
        type=int,
        default=100_000,
        help="fuzz inputs for the decoder (default 100000; 0 skips)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 actions, 8 clients, 100 modules, 10000 fuzz inputs",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.actions, args.modules, args.fuzz = 200, 100, 10_000
    command = "python -m tests.reliability.soak " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    options = Options(
        actions=args.actions,
        clients=args.clients,
        modules=args.modules,
        seed=args.seed,
        workdir=args.workdir,
        keep=args.keep,
    )
    results = Soak(options, log=lambda text: print(text, flush=True)).run()
    print()
    print(markdown(results, command.strip()))
    out: dict[str, Any] = {"soak": {**plain(results), "ok": results.ok}}
    fuzz_ok = True
    if args.fuzz:
        from .fuzz import markdown as fuzz_markdown
        from .fuzz import run_fuzz

        report = run_fuzz(args.fuzz, seed=args.seed)
        print()
        print(fuzz_markdown(report))
        out["fuzz"] = {**plain(report), "ok": report.ok}
        fuzz_ok = report.ok
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if results.ok and fuzz_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
