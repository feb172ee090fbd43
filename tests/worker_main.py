"""A relmod client process for end-to-end tests: one JSON command per stdin line, one reply.

Commands: connect, configure, load, get, stale, wait_value, sync, status, count_compiles,
compiled, exit.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

import relmod
from relmod.client.session import default_client

loaded: dict[str, Any] = {}
conn: Any = None
compiled: list[str] = []


def value_of(name: str, attr: str) -> Any:
    try:
        return getattr(loaded[name], attr)
    except relmod.ReloadError as err:
        return {"reload_error": str(err)}


def handle(cmd: dict[str, Any]) -> Any:
    global conn
    op = cmd["op"]
    if op == "connect":
        conn = relmod.connect(cmd.get("root"), timeout=cmd.get("timeout", 10.0))
        return conn.status()["connected"]
    if op == "configure":
        relmod.configure(on_error=cmd["on_error"])
        return True
    if op == "load":
        loaded[cmd["name"]] = relmod.at(cmd["path"])
        return True
    if op == "get":
        return value_of(cmd["name"], cmd["attr"])
    if op == "stale":
        return default_client().registry.is_stale(loaded[cmd["name"]])
    if op == "wait_value":
        # Poll the module attribute (as a worker using it would) until it equals the target.
        deadline = time.monotonic() + cmd.get("timeout", 10.0)
        while time.monotonic() < deadline:
            value = value_of(cmd["name"], cmd["attr"])
            if value == cmd["value"]:
                return value
            time.sleep(0.01)
        return value_of(cmd["name"], cmd["attr"])
    if op == "sync":
        relmod.sync(cmd.get("timeout", 10.0))
        return True
    if op == "status":
        feed = default_client().feed
        status = feed.status() if feed is not None and hasattr(feed, "status") else {}
        status["feed"] = getattr(feed, "name", None)
        return status
    if op == "count_compiles":  # from now on, note each source relmod compiles here
        import relmod.codecache as codecache

        compile_source = codecache.compile_source

        def counting(path: str, data: bytes) -> Any:
            compiled.append(path)
            return compile_source(path, data)

        codecache.compile_source = counting
        return True
    if op == "compiled":
        return compiled
    if op == "exit":
        sys.exit(0)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = {"result": handle(cmd)}
        except SystemExit:
            raise
        except BaseException as err:  # report every failure to the test
            reply = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
        sys.stdout.write(json.dumps(reply, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
