"""``relmod-broker``: run the broker of one project until SIGINT or SIGTERM.

Example:
    $ relmod-broker                      # serve the current folder
    $ relmod-broker ~/proj --poll        # a network mount: poll instead of native events
    $ relmod-broker ~/proj --tcp 0.0.0.0:5555 --log-level DEBUG

Exit status: 0 after a clean stop, 1 when the broker could not start (another broker serves the
root, the folder does not exist, a port is taken), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

import zmq

from relmod._version import __version__
from relmod.arguments import OneLineParser
from relmod.errors import BrokerError
from relmod.server.broker import Broker, BrokerConfig

__all__ = ["main"]

logger = logging.getLogger(__name__)

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise argparse.ArgumentTypeError(
            f"--tcp takes HOST:PORT with a PORT below 65535 (PORT+1 is used too), not {text!r}"
        )
    return host, int(port)


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="relmod-broker",
        description=(
            "Watch a project's Python files and tell every connected process (relmod.connect()) "
            "which modules to reload. One broker per project; stop it with Ctrl-C or SIGTERM."
        ),
        epilog=(
            "With --tcp the broker encrypts with CURVE and admits only clients whose public key "
            "is listed as a *.key file in <runtime dir>/<root id>.clients/ (created at start; "
            "see relmod.server.curve)."
        ),
    )
    parser.add_argument(
        "path", nargs="?", default=None, help="the project folder (default: the current folder)"
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="poll files instead of native events (network mounts, Docker "
        "Desktop, WSL); RELMOD_POLL=1 does the same",
    )
    parser.add_argument(
        "--tcp",
        type=_tcp,
        metavar="HOST:PORT",
        help="bind PUB on HOST:PORT and ROUTER on HOST:PORT+1 with CURVE "
        "(default: ipc sockets in the private runtime folder)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=_LEVELS,
        metavar="LEVEL",
        help="DEBUG, INFO (default), WARNING or ERROR",
    )
    parser.add_argument("--version", action="version", version=f"relmod-broker {__version__}")
    return parser


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s relmod-broker %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    # watchfiles logs every raw event at DEBUG and its own chatter at INFO.
    for name in ("watchfiles", "watchfiles.main", "watchfiles.watcher"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run ``relmod-broker`` with these arguments; returns the exit status.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        relmod-broker 1.0.0
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (already printed)
        return done.code if isinstance(done.code, int) else 1
    root = os.path.realpath(args.path if args.path is not None else os.getcwd())
    if not os.path.isdir(root):
        print(
            f"relmod-broker: {root} is not a folder; give the project folder to serve.",
            file=sys.stderr,
        )
        return 1
    _configure_logging(args.log_level)
    try:
        broker = Broker(BrokerConfig(root, poll=args.poll or None, tcp=args.tcp))
    except BrokerError as err:  # e.g. an unsafe runtime folder: one line, no traceback
        print(f"relmod-broker: {err}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        broker.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_wakeup = signal.set_wakeup_fd(broker.wake_fd, warn_on_full_buffer=False)
    try:
        try:
            broker.start()
        except BrokerError as err:
            print(f"relmod-broker: {err}", file=sys.stderr)
            return 1
        except zmq.ZMQError as err:
            print(f"relmod-broker: cannot bind the broker's sockets: {err}.", file=sys.stderr)
            return 1
        broker.serve()
        return 0
    except Exception:
        logger.exception("The broker failed; stopping.")
        return 1
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        broker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
