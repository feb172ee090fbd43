"""``relmod``: look at a project's broker from the shell.

Example:
    $ relmod status            # the broker serving the current folder: clients, broken files, ...
    $ relmod status ~/proj --json
    $ relmod status --follow   # saves, publications, each client's reloads and failures, live
    $ relmod graph --dot | dot -Tsvg > graph.svg
    $ relmod demo              # a guided demonstration with a broker and four workers

Exit status: 0 on success, 1 when no live broker answers (one line on stderr says why), 2 for
bad arguments. The broker itself is started with ``relmod-broker`` (see ``relmod.server``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from relmod._version import __version__
from relmod.arguments import OneLineParser
from relmod.client.connection import broker_socket
from relmod.connfile import ConnectionInfo, find_connection_file, read_live_broker
from relmod.curve import client_key_for
from relmod.errors import BrokerError, BrokerNotFound, BrokerTimeout, ProtocolError
from relmod.graph import DependencyGraph
from relmod.protocol import Codec, Message, count_ids, heartbeat_interval
from relmod.sources import Broken, display_path

__all__ = ["main"]

DEFAULT_TIMEOUT = 5.0


# -- talking to the broker ---------------------------------------------------------------------


def find_broker(path: str | None) -> ConnectionInfo:
    """The connection file of the live broker serving ``path`` (default: the current folder).

    Raises:
        BrokerNotFound: no connection file, or its broker is dead.
        ConnectionFileError: the file is unsafe or unreadable.
    """
    start = os.path.abspath(path if path is not None else os.getcwd())
    found = find_connection_file(start)
    if found is None:
        raise BrokerNotFound(
            f"No relmod broker serves {start}; start one with 'relmod-broker {start}'."
        )
    return read_live_broker(found)


class BrokerLine:
    """One DEALER connection to a broker, for a few requests in a row (a page at a time).

    Example:
        >>> with BrokerLine(find_broker(None)) as line:  # doctest: +SKIP
        ...     status = line.ask("status", {}, "status").body["status"]
    """

    def __init__(self, info: ConnectionInfo, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self.codec = Codec(bytes.fromhex(info["key"]), role="client", root=info["root"])
        self.context: zmq.Context[Any] = zmq.Context()
        try:
            # The feed's own way to the broker: CURVE when the connection file says so, with
            # this machine's key pair (or $RELMOD_CLIENT_KEY).
            self.dealer = broker_socket(
                self.context,
                zmq.DEALER,
                info,
                client_key_for(info, None, local=True),
                handshake_timeout=timeout,
            )
        except BaseException:
            self.context.term()
            raise

    def ask(self, kind: str, body: dict[str, Any], expect: str) -> Message:
        """Send one request and return its reply.

        Raises:
            BrokerTimeout: no valid reply within the timeout.
            BrokerError: the broker answered with an error.
        """
        info, dealer, codec = self.info, self.dealer, self.codec
        dealer.send_multipart(codec.encode(kind, body))
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not dealer.poll(int(remaining * 1000) + 1):
                break
            try:
                reply = codec.decode(dealer.recv_multipart())
            except ProtocolError:
                continue  # counted in codec.dropped; a valid reply may still come
            if reply.kind == "error":
                raise BrokerError(f"The broker could not answer {kind!r}: {reply.body['message']}")
            if reply.kind == expect:
                return reply
        raise BrokerTimeout(
            f"The relmod broker of {info['root']} (pid {info['pid']}) did not answer {kind!r} "
            f"within {self.timeout:g} s; it may be frozen or overloaded."
        )

    def pages(self, kind: str, first: dict[str, Any], field: str) -> list[Any]:
        """Every item of a paged answer: ask with ``after`` = each reply's ``next``."""
        items: list[Any] = []
        body = dict(first)
        while True:
            reply = self.ask(kind, body, kind).body
            items += reply[field]
            if reply["next"] is None:
                return items
            body["after"] = reply["next"]

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.context.term()

    def __enter__(self) -> BrokerLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask(
    info: ConnectionInfo,
    kind: str,
    body: dict[str, Any],
    expect: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> Message:
    """Send one request to a broker and return its reply.

    Raises:
        BrokerTimeout: no valid reply within ``timeout`` seconds.
        BrokerError: the broker answered with an error.
    """
    with BrokerLine(info, timeout) as line:
        return line.ask(kind, body, expect)


# -- status -------------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:.0f}s"
    return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:.0f}m"


def _format_code_cache(folder: str | None) -> str:
    if folder is None:
        return (
            "  code cache: off in the broker (PYTHONDONTWRITEBYTECODE, or RELMOD_CACHE_DIR "
            "empty): each worker compiles every edit itself; RELMOD_CACHE_DIR=<folder>, for "
            "the broker and the workers, shares the broker's compiled edits"
        )
    return f"  code cache: {folder} (the broker's compiled edits, for workers that share it)"


def format_status(status: dict[str, Any]) -> str:
    """A status reply as lines for a person to read."""
    root = status["root"]
    watcher = status["watcher"]
    graph = status["graph"]
    lines = [
        f"relmod broker {status['version']} for {root}",
        f"  pid {status['pid']} on {status['host']}, up {_ago(status['uptime'])}, "
        f"epoch {status['epoch']}, seq {status['seq']}",
        f"  watching {status['files']:,} Python files with {watcher['backend']}"
        + (f" ({watcher['errors']} callback errors)" if watcher["errors"] else ""),
        f"  {format_scan(status['scan'])}",
        _format_code_cache(status.get("code_cache")),
        f"  graph: {graph['files']:,} files, {graph['edges']:,} edges"
        + (f" ({graph['runtime_edges']:,} reported by clients)" if graph["runtime_edges"] else ""),
        f"  endpoints: PUB {status['endpoints']['pub']}, ROUTER {status['endpoints']['router']}"
        + (" (CURVE)" if status["endpoints"]["curve"] else ""),
    ]
    if status["pending"]["git_hold"]:
        lines.append(f"  holding {status['pending']['paths']} changed paths while git works")
    clients = status["clients"]
    total = status["clients_total"]
    lines.append(f"clients ({total}):" if clients else "clients: none connected")
    for client in clients:
        seq = "-" if client["seq"] is None else client["seq"]
        lines.append(
            f"  pid {client['pid'] or '?'} on {client['host'] or '?'}: seq {seq}, "
            f"{client['stale']} stale, {client.get('patched', 0)} held object(s) patched"
            + (f" ({client['unpatched']} not)" if client.get("unpatched") else "")
            + f", seen {_ago(client['last_seen_ago'])} ago"
            + (f"  {client['argv'][:60]}" if client["argv"] else "")
        )
        if client["error"]:
            lines.append(f"    last reload error: {client['error'].splitlines()[0][:200]}")
    if total > len(clients):
        lines.append(f"  and {total - len(clients)} more (relmod status --all lists them)")
    broken = status["broken"]
    total = status["broken_total"]
    lines.append(f"broken files ({total}):" if broken else "broken files: none")
    for entry in broken:
        where = display_path(entry["path"], root)
        line = f" line {entry['lineno']}" if entry["lineno"] is not None else ""
        text = f"  {where}{line}: {entry['message']}"
        if entry.get("clients_failed"):
            when = "to reload" if entry.get("compiles", True) else "to reload an earlier version"
            text += f" (failed {when} in {entry['clients_failed']} of {entry['clients']} clients)"
        lines.append(text)
    if total > len(broken):
        lines.append(f"  and {total - len(broken)} more (relmod status --all lists them)")
    lines += format_fleet(status.get("fleet"), root)
    recent = status["recent"]
    lines.append("recent publications (newest first):" if recent else "recent publications: none")
    for entry in recent[:10]:
        when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
        names = ", ".join(display_path(p, root) for p in entry["changed"][:3])
        more = entry["changed_count"] - min(3, len(entry["changed"]))
        names += f" and {more} more" if more > 0 else ""
        what = "broken" if entry["kind"] == "broken" else f"{entry['affected']} affected"
        lines.append(f"  #{entry['seq']} {when} {names} ({what})")
    dropped = {k: v for k, v in status["dropped"].items() if k != "total" and v}
    lines.append(
        "messages dropped: "
        + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) if dropped else "none")
    )
    lines.append(f"request errors: {status['request_errors']}")
    refused = {k: v for k, v in status["refused"].items() if v}
    if refused:
        lines.append("refused: " + ", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())))
    return "\n".join(lines)


def format_fleet(fleet: dict[str, Any] | None, root: str) -> list[str]:
    """The per-file view: files not at their newest version in every client that runs them.

    >>> format_fleet({"clients": 4, "files_total": 1, "files": [{"path": "/p/f.py",
    ...     "clients": 4, "newest": 1, "older": 0, "failed": 3, "errors": [{"lineno": 303,
    ...     "message": "RuntimeError: boom", "clients": 3}]}]}, "/p")[2].strip()
    '3 of 4 clients failed to reload ./f.py: RuntimeError at line 303: boom'
    """
    if not fleet:
        return []
    files, total = fleet["files"], fleet["files_total"]
    if not files:
        reporting = fleet["clients"]
        return [
            f"file versions: the same in every client ({reporting} reporting)"
            if reporting
            else "file versions: no client has reported what it runs yet"
        ]
    lines = [f"file versions ({total} not the same in every client):"]
    for entry in files:
        where = display_path(entry["path"], root)
        count = entry["clients"]
        lines.append(
            f"  {where}: {entry['newest']} of {count} clients run the newest version, "
            f"{entry['older']} an older one, {entry['failed']} failed"
        )
        for error in entry["errors"]:
            lines.append(
                f"    {error['clients']} of {count} clients failed to reload {where}: "
                + _error_text(error["lineno"], error["message"])
            )
    if total > len(files):
        lines.append(f"  and {total - len(files)} more")
    return lines


def _error_text(lineno: int | None, message: str) -> str:
    """``RuntimeError at line 3: boom`` from line 3 and ``RuntimeError: boom``."""
    kind, sep, text = message.partition(": ")
    if lineno is None:
        return message
    if sep and kind.replace(".", "").isidentifier():
        return f"{kind} at line {lineno}: {text}"
    return f"{message} (line {lineno})"


def format_scan(scan: dict[str, Any]) -> str:
    """The first scan's progress in one line ("scanning 4,210 of 10,934 files").

    >>> format_scan({"state": "scanning", "total": 10934, "scanned": 4210, "cached": 0})
    'scanning 4,210 of 10,934 files'
    """
    state = scan["state"]
    if state == "walking":
        return "scanning: listing the files"
    if state == "scanning":
        return f"scanning {scan['scanned']:,} of {scan['total']:,} files"
    if state == "none":
        return "scan: not started"
    took = f" in {scan['scan_seconds']:.2f} s" if scan.get("scan_seconds") is not None else ""
    cached = f", {scan['cached']:,} unchanged since the last run" if scan.get("cached") else ""
    line = f"scanned {scan['total']:,} files{took}{cached}"
    if state == "checking":
        line += f"; compile-checking {scan['checked']:,} of {scan['to_check']:,}"
    elif state == "stopped":
        line += " (stopped early)"
    return line


def _status(args: argparse.Namespace) -> int:
    info = find_broker(args.path)
    if args.follow:
        return follow(info, args.timeout)
    with BrokerLine(info, args.timeout) as line:
        status = line.ask("status", {}, "status").body["status"]
        if args.all or args.json:
            for what, key in (("clients", "clients"), ("broken", "broken")):
                if status[f"{key}_total"] > len(status[key]):
                    status[key] = line.pages("list", {"what": what, "after": ""}, "items")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=_bytes_as_hex))
    else:
        print(format_status(status))
    return 0


# -- follow -------------------------------------------------------------------------------------


def follow(info: ConnectionInfo, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Print what happens across the fleet, one line each, until Ctrl-C or the broker stops.

    Subscribes to the broker's publications as a client's feed does (the same socket, CURVE
    included), and to the ``activity`` the clients report: saves, broken files, each client's
    reloads and failures. Returns 0 after Ctrl-C or the broker's goodbye, 1 when it falls silent.
    """
    root = info["root"]
    codec = Codec(bytes.fromhex(info["key"]), role="client", root=root)
    context: zmq.Context[Any] = zmq.Context()
    sub = None
    try:
        sub = broker_socket(
            context,
            zmq.SUB,
            info,
            client_key_for(info, None, local=True),
            handshake_timeout=timeout,
            everything=True,
        )
        silence = max(3 * heartbeat_interval(), timeout)
        # The subscription is live once anything arrives (a heartbeat within a second): only
        # then is nothing that follows missed.
        if not sub.poll(int(silence * 1000)):
            raise BrokerTimeout(f"The relmod broker of {root} (pid {info['pid']}) is silent.")
        print(f"following the relmod broker of {root} (pid {info['pid']}); Ctrl-C stops")
        sys.stdout.flush()
        while True:
            if not sub.poll(int(silence * 1000)):
                print(f"{_clock(time.time())} the broker fell silent for {silence:g} s", flush=True)
                return 1
            try:
                message = codec.decode(sub.recv_multipart())
            except ProtocolError:
                continue  # counted in codec.dropped
            for line in format_publication(message, root):
                print(line, flush=True)
            if message.kind == "bye":
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if sub is not None:
            sub.close(linger=0)
        context.term()


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"


def format_publication(message: Message, root: str) -> list[str]:
    """The lines ``relmod status --follow`` prints for one publication (none for heartbeats).

    >>> body = {"epoch": "e", "client": "h:7", "lost": 0, "events": [{"kind": "failed",
    ...     "path": "/p/a.py", "time": 0.0, "lineno": 3, "message": "RuntimeError: boom"}]}
    >>> format_publication(Message("activity", body, b"", 1), "/p")[0][13:]  # doctest: +ELLIPSIS
    'h:7 failed: Cannot reload ./a.py: RuntimeError at line 3: boom. The last good version ...'
    """
    body = message.body
    if message.kind == "invalidate":
        shown = body["changed"][:5]  # [id, path, hash or None: deleted]
        names = [display_path(path, root) for _, path, _ in shown]
        more = len(body["changed"]) - len(names)
        gone = [path for _, path, digest in shown if digest is None]
        what = "deleted" if gone and len(gone) == len(names) else "saved"
        return [
            f"{_clock(time.time())} #{body['seq']} {what} {', '.join(names)}"
            + (f" and {more} more" if more > 0 else "")
            + f" ({count_ids(body['affected'])} modules affected)"
        ]
    if message.kind == "broken":
        text = Broken(body["path"], body["lineno"], body["message"]).describe(relative_to=root)
        return [f"{_clock(time.time())} #{body['seq']} {text}"]
    if message.kind == "bye":
        return [f"{_clock(time.time())} the broker stopped"]
    if message.kind != "activity":
        return []
    lines = []
    for event in body["events"]:
        where = display_path(event["path"], root)
        if event["kind"] == "failed":
            what = "failed: " + Broken(
                event["path"], event["lineno"], event["message"] or "an unknown error"
            ).describe(relative_to=root)
        else:
            what = f"{event['kind']} {where}"
        lines.append(f"{_clock(event['time'])} {body['client']} {what}")
    if body["lost"]:
        lines.append(
            f"{_clock(time.time())} {body['client']}: {body['lost']} more reloads or failures "
            "not reported (too many at once)"
        )
    return lines


def _bytes_as_hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- graph --------------------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    info = find_broker(args.path)
    with BrokerLine(info, args.timeout) as line:
        edges = line.pages("graph", {"after": None}, "edges")
    graph = DependencyGraph()
    for dependent, dependency, origins in edges:
        for origin in origins:
            graph.add_edge(dependent, dependency, origin=origin)
    if args.dot:
        sys.stdout.write(graph.to_dot(relative_to=info["root"]))
    else:
        text = graph.to_text(relative_to=info["root"])
        print(text if text else "(no dependencies between the project's files)")
    return 0


# -- demo ---------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module("relmod.demo")
    except ImportError:
        print("relmod: the demo is not available in this installation.", file=sys.stderr)
        return 1
    run: Callable[[list[str]], int] = demo.main
    return run(list(args.demo_args))


# -- the command --------------------------------------------------------------------------------


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="relmod", description="Look at a project's relmod broker.")
    parser.add_argument("--version", action="version", version=f"relmod {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    status = commands.add_parser("status", help="show the broker serving a project")
    status.add_argument("path", nargs="?", help="a folder of the project (default: here)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument(
        "--all", action="store_true", help="list every client and broken file (JSON always does)"
    )
    status.add_argument(
        "--follow",
        action="store_true",
        help="print saves, publications and each client's reloads and failures as they happen",
    )
    status.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    status.set_defaults(run=_status)

    graph = commands.add_parser("graph", help="print the project's dependency graph")
    graph.add_argument("path", nargs="?", help="a folder of the project (default: here)")
    graph.add_argument("--dot", action="store_true", help="print Graphviz DOT")
    graph.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    graph.set_defaults(run=_graph)

    demo = commands.add_parser("demo", help="watch relmod reload modules in four processes")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help="options for the demo")
    demo.set_defaults(run=_demo)

    run = commands.add_parser(
        "run", help="run a script (or -m module) with the project's modules reloading"
    )
    run.add_argument("program", nargs=argparse.REMAINDER, help="SCRIPT ARGS, or -m MODULE ARGS")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``relmod`` with these arguments; returns the exit status.

    Example:
        >>> main(["status", "/no/broker/here"])  # doctest: +SKIP
        relmod: No relmod broker serves /no/broker/here; start one with 'relmod-broker ...'.
        1
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # The demo parses its own options (argparse's REMAINDER cannot pass "--pace" through).
        return _demo(argparse.Namespace(demo_args=argv[1:]))
    if argv[:1] == ["run"]:
        # The program's own arguments follow, whatever they look like: no parsing here.
        from relmod.run import main as run

        return run(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (already printed)
        return done.code if isinstance(done.code, int) else 1
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.run(args)
    except BrokerError as err:
        print(f"relmod: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
