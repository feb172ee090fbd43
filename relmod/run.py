"""``relmod run``: run a program with the project's modules reloading, without changing its code.

``relmod run script.py ARGS`` and ``relmod run -m pkg.mod ARGS`` run the program as ``python``
would, after connecting to the project's broker (found from the current folder) or, without
one, watching the project's files in this process. Every module of the project the program
imports, however it imports it, then reloads on its next use after an edit.

The project is the broker's root; without a broker, ``RELMOD_PROJECT`` or the current folder
(and the script's folder, when it lies elsewhere).
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import NoReturn

from relmod.errors import BrokerError

USAGE = "usage: relmod run [--no-broker] (SCRIPT | -m MODULE) [ARGS ...]"


def _usage(message: str) -> NoReturn:
    print(f"relmod run: {message}\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> int:
    """Run a script or a module as ``__main__`` with the project reloading; its exit status.

    Example:
        >>> main(['-m', 'app.worker', '--once'])  # doctest: +SKIP
    """
    import relmod
    from relmod.client.session import default_client

    args = list(argv)
    use_broker = True
    if args[:1] == ["--no-broker"]:
        use_broker, args = False, args[1:]
    if not args:
        _usage("name a script or -m MODULE to run")
    if args[0] == "-m":
        if len(args) < 2:
            _usage("-m needs a module name")
        module, script, rest = args[1], None, args[2:]
    else:
        module, script, rest = None, os.path.abspath(args[0]), args[1:]
        if not os.path.isfile(script):
            _usage(f"{args[0]} is not a file")
    client = default_client()
    root = os.path.realpath(os.environ.get("RELMOD_PROJECT") or os.getcwd())
    connected = False
    if use_broker:
        try:
            relmod.connect(root)
            connected = True
        except BrokerError as err:
            if "No relmod broker serves" not in str(err):
                print(f"relmod run: {err} Watching files in this process instead.", file=sys.stderr)
    if not connected:
        client.follow_project(root)
    if script is not None and not os.path.realpath(script).startswith(root + os.sep):
        client.follow_project(os.path.dirname(os.path.realpath(script)))
    return _run(script, module, rest)


def _run(script: str | None, module: str | None, rest: list[str]) -> int:
    try:
        if module is not None:
            sys.argv = [module, *rest]
            sys.path.insert(0, os.getcwd())  # as `python -m` does
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            assert script is not None
            sys.argv = [script, *rest]
            sys.path.insert(0, os.path.dirname(script))  # as `python script.py` does
            runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0
