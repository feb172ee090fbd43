"""Write-to-stale latency across real client processes, against the floor measured in the same run.

Two systems carry one save to N processes, each measured at 1 client and at N (default 32):

- **relmod**: a real broker serves a small project; each client process calls
  ``relmod.connect()``, loads ``leaf.py`` and ``top.py`` (which imports it) and registers a
  listener (``relmod.add_listener``) that keeps the event's ``time.time()`` when its feed
  thread has marked ``leaf.py`` stale. After each save every client uses the module again (so
  the next save marks it again).
- **floor**: the least any system can do here. One process blocks in ``poll`` on a raw inotify
  watch of the folder (ctypes, :mod:`relmod.watchers.inotify_kernel`) and, on the save's event,
  sends one ZeroMQ PUB message; N processes sleep in a blocking SUB ``recv`` and keep
  ``time.time()`` when it arrives.
- **signed floor**, for reference: the floor, with the least an authenticated Python
  subscriber does. The publisher packs an invalidation shaped like relmod's with msgpack and
  signs it (keyed BLAKE2b, as relmod); each subscriber checks the MAC, unpacks it and looks the
  changed file's id up before it keeps the time. What relmod does beyond this is its own cost.

The driver saves ``leaf.py`` atomically (temporary file + ``os.replace``, as editors do), noting
``time.time()`` just before the replace, E times, 1.2 s apart (the broker's burst pacing never
applies), and takes per save the latency of the last process. The processes say when they had
the save only when asked, 0.15 s later, so no reporting is on the path measured. The two
systems and the two sizes alternate in rounds (a round: one save each, 0.4 s apart, so that the
reloads one save causes do not fall on the next), so machine noise falls on all alike. The table
gives medians and p99 (nearest rank; with few saves the worst), the ratios relmod / floor, and
the growth per added client, ``(median at N - median at 1) / (N - 1)``, for each.

Then the idle CPU of the N relmod clients and of the broker over a quiet period, from the
threads' ``/proc/<pid>/task/*/schedstat`` (nanoseconds).

Issue 13's targets: at N = 32, median <= 2.5x the floor and p99 <= 5x; at 1 client <= 3x; the
growth per client <= 2x the floor's; idle broker <= 0.2% of a core, idle client <= 0.05%.

Run:
    .venv/bin/python benchmarks/bench_propagation.py [--clients 32] [--edits 40] [--files 10000]
        [--quick]

With ``--files N`` the project of the N-client broker holds N more modules that no client
imports (a 10,000-file project for the idle figures); the 1-client broker's stays small.

With ``--functions K`` every version of ``leaf.py`` also defines K functions and a class with
three methods, as real modules do: each relmod client's mark then arms them for the references
held elsewhere (the floors' files are the same; they do not read them).
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENT = r"""
import sys, relmod
root = sys.argv[1]
relmod.connect(root)
top = relmod.at(root + '/top.py')
top.VALUE
leaf = root + '/leaf.py'
last = [0.0]
def on_event(event):
    if event.kind == 'stale' and event.path == leaf:
        last[0] = event.time
relmod.add_listener(on_event)
print('ready', flush=True)
for line in sys.stdin:
    if line.strip() == 'ask':
        print('stale', last[0], flush=True)
    elif line.strip() == 'use':
        top.VALUE   # reload now, as a worker's next call would
"""

# One publisher and one subscriber for both floors; {setup}, {send} and {receive} are what the
# signed floor adds (the templates hold no other braces).
PUBLISHER = r"""
import select, sys, zmq
from relmod.watchers.inotify_kernel import IN_CLOSE_WRITE, IN_MOVED_TO, Inotify
{setup}
folder, endpoint = sys.argv[1], sys.argv[2]
pub = zmq.Context().socket(zmq.PUB)
pub.bind(endpoint)
inotify = Inotify()
inotify.add_watch(folder, IN_CLOSE_WRITE | IN_MOVED_TO)
poller = select.poll()
poller.register(inotify.fd, select.POLLIN)
print('ready', flush=True)
while True:
    poller.poll()
    if any(event.name == 'leaf.py' for event in inotify.read()):
{send}
"""

SUBSCRIBER = r"""
import sys, time, zmq
{setup}
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b'')
sub.connect(sys.argv[1])
poller = zmq.Poller()
poller.register(sub, zmq.POLLIN)
poller.register(sys.stdin.fileno(), zmq.POLLIN)
last = 0.0
print('ready', flush=True)
while True:
    events = dict(poller.poll())
    if sub in events:
{receive}
    if sys.stdin.fileno() in events:
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip() == 'ask':
            print('stale', last, flush=True)
"""

FLOOR_PUBLISHER = PUBLISHER.format(setup="", send="        pub.send(b'x')")

FLOOR_SUBSCRIBER = SUBSCRIBER.format(
    setup="",
    receive="""\
        sub.recv()
        last = time.time()""",
)

SIGNED_PUBLISHER = PUBLISHER.format(
    setup="""\
import msgpack
from hashlib import blake2b
seq = 0""",
    send="""\
        seq += 1
        body = {'epoch': 'e' * 30, 'seq': seq, 'changed': [[3, folder + '/leaf.py', 'h' * 32]],
                'affected': bytes([2, 3, 0, 4, 0]), 'names': []}
        payload = msgpack.packb({'k': 'invalidate', 's': b's' * 16, 'n': seq, 'b': body})
        frame = b'signed/1\\0' + payload
        pub.send(frame + blake2b(frame, key=b'k' * 32, digest_size=32).digest())""",
)

SIGNED_SUBSCRIBER = SUBSCRIBER.format(
    setup="""\
import hmac, msgpack
from hashlib import blake2b
watched = {3: 'leaf'}""",
    receive="""\
        frame = sub.recv()
        end = len(frame) - 32
        view = memoryview(frame)
        mac = blake2b(view[:end], key=b'k' * 32, digest_size=32).digest()
        if hmac.compare_digest(frame[end:], mac):
            message = msgpack.unpackb(view[9:end], raw=False)
            if message['b']['changed'][0][0] in watched:
                last = time.time()""",
)

SAVE_PAUSE_S = 1.2
WAIT_S = 5.0
SETTLE_S = 0.4
"""After one system's save, before the next system's: what the first one's clients do then
(reload the module) must not fall on the next one's measurement."""
ASK_AFTER_S = 0.15
"""How long after a save the processes are asked when they had it (far above any latency)."""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads, in nanoseconds resolution (``schedstat``), where
    ``/proc/<pid>/stat`` counts 10 ms ticks: too coarse for 0.05% of a core over 10 s."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _start(argv: list[str], *, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        text=True,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_ready(procs: list[subprocess.Popen[str]], what: str) -> None:
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            why = proc.stderr.read().strip().splitlines()[-3:]
            raise SystemExit(f"a {what} process did not start: {' / '.join(why)}")
        proc.stderr.close()  # nothing reads it from now on: it must not fill up


class Fleet:
    """N processes that print ``stale <time>`` per save, and the folder they watch."""

    def __init__(
        self, name: str, folder: Path, procs: list[subprocess.Popen[str]], body: str = ""
    ) -> None:
        self.name = name
        self.folder = folder
        self.procs = procs
        self.body = body  # what every version of leaf.py holds besides VALUE
        self.marks: queue.Queue[tuple[int, float]] = queue.Queue()
        self.latencies: list[float] = []
        self.missing = 0
        for index, proc in enumerate(procs):
            threading.Thread(target=self._read, args=(index, proc), daemon=True).start()

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts and parts[0] == "stale":
                self.marks.put((index, float(parts[1])))

    def save(self, value: int, *, record: bool = True) -> bool:
        """Save leaf.py once; True when every process had it within :data:`WAIT_S`.

        Nothing is reported while the save travels: each process keeps the time it had the
        save, and tells it when asked, a settling moment later (so no pipe to this driver, and
        none of its reader threads, are on the path being measured).
        """
        tmp = self.folder / ".leaf.py.tmp"
        tmp.write_text(f"VALUE = {value}\n{self.body}")
        written = time.time()
        os.replace(tmp, self.folder / "leaf.py")
        seen: dict[int, float] = {}
        until = time.monotonic() + WAIT_S
        while len(seen) < len(self.procs) and time.monotonic() < until:
            time.sleep(ASK_AFTER_S)
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write("ask\n")
                proc.stdin.flush()
            answers: dict[int, float] = {}
            while len(answers) < len(self.procs):
                try:
                    index, when = self.marks.get(timeout=WAIT_S)
                except queue.Empty:
                    break
                answers[index] = when
            seen = {i: t for i, t in answers.items() if t >= written}
        for proc in self.procs:  # relmod clients use the module: the next save marks it again
            assert proc.stdin is not None
            proc.stdin.write("use\n")
            proc.stdin.flush()
        if len(seen) < len(self.procs):
            if record:
                self.missing += len(self.procs) - len(seen)
            return False
        if record:
            self.latencies.append(max(seen.values()) - written)
        return True


def functions_source(count: int) -> str:
    """``count`` small functions and a class, the shape of an ordinary module's code."""
    if not count:
        return ""
    lines = [f"def f{i}(x, y={i}):\n    return x + y * VALUE\n" for i in range(count)]
    methods = "".join(f"    def m{i}(self):\n        return {i} + VALUE\n" for i in range(3))
    return "\n" + "".join(lines) + "\nclass Shape:\n" + methods


def start_relmod(
    work: Path, clients: int, broker: list[subprocess.Popen[str]], files: int = 0, body: str = ""
) -> Fleet:
    from relmod.connfile import connection_path, read_connection_file

    root = work / f"relmod-{clients}"
    root.mkdir()
    (root / "leaf.py").write_text(f"VALUE = 0\n{body}")
    (root / "top.py").write_text("from .leaf import VALUE\n")
    for index in range(files):  # the rest of a big project, which no client imports
        folder = root / "more" / f"p{index // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{index % 100}.py").write_text(f"import os\nX = {index}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relmod.server", str(root), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker.append(proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            if read_connection_file(connection_path(str(root)))["pid"] == proc.pid:
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    _wait_quiet(proc.pid)  # the scan of a big project is over
    procs = [_start([sys.executable, "-c", CLIENT, str(root)], stdin=True) for _ in range(clients)]
    _wait_ready(procs, "relmod client")
    return Fleet(f"relmod, {clients}", root, procs, body)


def _wait_quiet(pid: int, timeout: float = 120.0) -> None:
    """Until the process used less than 5% of a core over half a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return
    raise SystemExit(f"process {pid} did not settle within {timeout:.0f} s")


def start_floor(
    work: Path, clients: int, extra: list[subprocess.Popen[str]], *, signed: bool = False
) -> Fleet:
    kind = "signed" if signed else "floor"
    folder = work / f"{kind}-{clients}"
    folder.mkdir()
    (folder / "leaf.py").write_text("VALUE = 0\n")
    endpoint = f"ipc://{work}/{kind}-{clients}.sock"
    publisher_code = SIGNED_PUBLISHER if signed else FLOOR_PUBLISHER
    publisher = _start([sys.executable, "-c", publisher_code, str(folder), endpoint])
    extra.append(publisher)
    _wait_ready([publisher], "floor publisher")
    subscriber_code = SIGNED_SUBSCRIBER if signed else FLOOR_SUBSCRIBER
    procs = [
        _start([sys.executable, "-c", subscriber_code, endpoint], stdin=True)
        for _ in range(clients)
    ]
    _wait_ready(procs, "floor subscriber")
    fleet = Fleet(f"{kind}, {clients}", folder, procs)
    # ZeroMQ's slow joiner: saves until every subscriber hears one.
    deadline = time.monotonic() + 30
    while not fleet.save(0, record=False):
        if time.monotonic() > deadline:
            raise SystemExit("the floor's subscribers never all heard the publisher")
    return fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    parser.add_argument(
        "--files",
        type=int,
        default=0,
        help="more files in the project of the N relmod clients (none imported), e.g. 10000",
    )
    parser.add_argument(
        "--functions",
        type=int,
        default=0,
        help="functions (and a class) in every version of leaf.py, e.g. 30",
    )
    parser.add_argument("--quick", action="store_true", help="8 clients, 12 edits, 3 s idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.edits, args.idle = 8, 12, 3.0
    sizes = (1, args.clients)
    body = functions_source(args.functions)

    work = Path(tempfile.mkdtemp(prefix="relmod-bench-prop-")).resolve()
    brokers: list[subprocess.Popen[str]] = []
    others: list[subprocess.Popen[str]] = []
    fleets: dict[tuple[str, int], Fleet] = {}
    try:
        for n in sizes:
            files = args.files if n > 1 else 0
            fleets["relmod", n] = start_relmod(work, n, brokers, files, body)
            fleets["floor", n] = start_floor(work, n, others)
            fleets["signed", n] = start_floor(work, n, others, signed=True)
            for kind in ("floor", "signed"):
                fleets[kind, n].body = body
        for fleet in fleets.values():  # one unrecorded save each: first-use costs out of the way
            fleet.save(0, record=False)
        time.sleep(SAVE_PAUSE_S)
        for edit in range(1, args.edits + 1):
            started = time.monotonic()
            for fleet in fleets.values():
                fleet.save(edit)
                time.sleep(SETTLE_S)  # its clients' reloads are over before the next save
            time.sleep(max(0.0, SAVE_PAUSE_S - (time.monotonic() - started)))

        relmod_big = fleets["relmod", args.clients]
        time.sleep(1.0)
        before = {p.pid: cpu_seconds(p.pid) for p in relmod_big.procs}
        broker = brokers[-1]
        broker_before = cpu_seconds(broker.pid)
        time.sleep(args.idle)
        client_pct = [
            (cpu_seconds(p.pid) - before[p.pid]) / args.idle * 100 for p in relmod_big.procs
        ]
        broker_pct = (cpu_seconds(broker.pid) - broker_before) / args.idle * 100
    finally:
        for proc in [*(p for f in fleets.values() for p in f.procs), *others]:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        for proc in brokers:
            proc.terminate()
            proc.wait(10)

    def ms(kind: str, n: int) -> list[float]:
        return [x * 1000 for x in fleets[kind, n].latencies]

    big = args.clients
    command = ".venv/bin/python benchmarks/bench_propagation.py" + " --quick" * args.quick
    command += f" --files {args.files}" * bool(args.files)
    command += f" --functions {args.functions}" * bool(args.functions)
    print(f"\n### `{command}`\n")
    print(
        f"{args.edits} saves per system and size, on {os.cpu_count()} cores; the floor is raw "
        f"inotify + one ZeroMQ PUB message to processes sleeping in recv, measured in the same "
        f"run.\n"
    )
    print(
        "| save -> last process has it | relmod median | relmod p99 | floor median | floor p99 "
        "| median ratio | p99 ratio | target |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    missing = sum(f.missing for f in fleets.values())
    medians: dict[tuple[str, int], float] = {}
    for n in sizes:
        rel, flo = ms("relmod", n), ms("floor", n)
        if not rel or not flo:
            print(f"| {n} client(s) | no complete save | | | | | | |")
            continue
        medians["relmod", n] = statistics.median(rel)
        medians["floor", n] = statistics.median(flo)
        r99, f99 = percentile(rel, 0.99), percentile(flo, 0.99)
        target = "median <= 3x" if n == 1 else "median <= 2.5x, p99 <= 5x"
        print(
            f"| {n} client{'s' if n > 1 else ''} (ms) | {medians['relmod', n]:.2f} | {r99:.2f} "
            f"| {medians['floor', n]:.2f} | {f99:.2f} "
            f"| {medians['relmod', n] / medians['floor', n]:.2f}x | {r99 / f99:.2f}x | {target} |"
        )
    if len(medians) == 4:
        growth = {
            kind: (medians[kind, big] - medians[kind, 1]) / (big - 1)
            for kind in ("relmod", "floor")
        }
        print(
            f"| growth per added client (ms) | {growth['relmod']:.3f} | | {growth['floor']:.3f} | "
            f"| {growth['relmod'] / growth['floor']:.2f}x | | <= 2x |"
            if growth["floor"] > 0
            else f"| growth per added client (ms) | {growth['relmod']:.3f} | | "
            f"{growth['floor']:.3f} | | | | <= 2x |"
        )
    signed = {n: ms("signed", n) for n in sizes}
    if all(signed.values()) and len(medians) == 4:
        print(
            "\nFor reference, the signed floor (MAC checked, msgpack unpacked, one id looked up; "
            "no more):\n"
        )
        print("| save -> last process has it | signed floor median | p99 | / floor |")
        print("| --- | ---: | ---: | ---: |")
        for n in sizes:
            median = statistics.median(signed[n])
            print(
                f"| {n} client{'s' if n > 1 else ''} (ms) | {median:.2f} | "
                f"{percentile(signed[n], 0.99):.2f} | {median / medians['floor', n]:.2f}x |"
            )
        grown = (statistics.median(signed[big]) - statistics.median(signed[1])) / (big - 1)
        floor_growth = (medians["floor", big] - medians["floor", 1]) / (big - 1)
        ratio = f"{grown / floor_growth:.2f}x" if floor_growth > 0 else ""
        print(f"| growth per added client (ms) | {grown:.3f} | | {ratio} |")
    print()
    print("| idle, relmod | median | p99 | max | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(
        f"| client CPU (% of a core, {args.idle:.0f} s, {big} clients) | "
        f"{statistics.median(client_pct):.3f} | {percentile(client_pct, 0.99):.3f} | "
        f"{max(client_pct):.3f} | <= 0.05% |"
    )
    size = f"{args.files + 2:,} files" if args.files else "2 files"
    print(f"| broker CPU (% of a core, its project: {size}) | {broker_pct:.3f} | | | <= 0.2% |")
    print(f"\nreports missing (a process never reported a save within {WAIT_S:.0f} s): {missing}")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
