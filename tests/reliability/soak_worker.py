"""The client process of the soak: loads every module of the project and answers the driver.

Run as ``python soak_worker.py MANIFEST``, where MANIFEST is a JSON file
``{"root": ..., "modules": [relative paths], "probes": [relative paths], "latency": bool}``.
It calls ``relmod.connect()`` (or, when no broker answers right now, lets the first load start
the broker feed named by ``RELMOD_BROKER``, which keeps retrying and watches files meanwhile),
loads every module with ``relmod.at``, prints one JSON line ``{"ready": ...}``, then answers
one JSON command per stdin line with one JSON line:

- ``{"op": "values", "sync": bool}``: ``relmod.sync()`` first if asked, then every module's
  ``VALUE`` (a module that cannot be loaded or reloaded gives ``{"error": ...}``);
- ``{"op": "status"}``: the feed's ``status()``, and ``heartbeats``: how many arrived, and how
  often (``gaps``) the broker's clock jumped by more than ``$SOAK_HEARTBEAT_GAP`` seconds between
  two of them: heartbeats were dropped, so the queue overflowed;
- ``{"op": "marks"}``: with ``latency``, the ``(time.time(), probe)`` of every moment the feed
  thread marked a probe module stale (an invalidation listener records them);
- ``{"op": "exit"}``.

Its log (relmod's warnings and reload errors) goes to stderr, which the driver sends to a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any

import relmod
from relmod.client.session import default_client
from relmod.protocol import Codec, Message

# Evidence that a stopped client's queue overflowed: heartbeats carry the broker's clock, so a
# jump between two consecutive heartbeats far beyond the interval means some were dropped.
heartbeats = {"last": 0.0, "gaps": 0, "max_gap": 0.0, "count": 0}
_decode = Codec.decode


def _counting_decode(self: Codec, frames: Any) -> Message:
    message = _decode(self, frames)
    if message.kind == "heartbeat":
        sent = float(message.body["time"])
        gap = sent - heartbeats["last"]
        if heartbeats["last"] and gap > float(os.environ.get("SOAK_HEARTBEAT_GAP", "0.25")):
            heartbeats["gaps"] += 1
        if heartbeats["last"]:
            heartbeats["max_gap"] = max(heartbeats["max_gap"], gap)
        heartbeats["last"] = sent
        heartbeats["count"] += 1
    return message


Codec.decode = _counting_decode  # type: ignore[method-assign]


def main() -> int:
    with open(sys.argv[1]) as file:
        manifest = json.load(file)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s worker {os.getpid()} %(name)s %(levelname)s %(message)s",
    )
    root: str = manifest["root"]
    names: list[str] = manifest["modules"]
    relmod.configure(on_error="keep")  # a worker keeps serving its last good code
    connected = True
    try:
        relmod.connect(root, timeout=float(manifest.get("connect_timeout", 5.0)))
    except relmod.RelmodError as err:
        connected = False
        logging.getLogger("soak").warning("connect() failed (%s); the feed will retry", err)
    client = default_client()
    marks: list[tuple[float, int]] = []
    if manifest.get("latency"):
        probe_index = {
            os.path.realpath(os.path.join(root, p)): i for i, p in enumerate(manifest["probes"])
        }

        def on_invalidate(keys: set[str]) -> None:
            now = time.time()
            for key in keys:
                index = probe_index.get(key)
                if index is not None:
                    marks.append((now, index))

        client.registry.add_invalidate_listener(on_invalidate)
    modules: dict[str, Any] = {}

    def load_missing() -> None:
        for name in names:
            if name not in modules:
                # Deleted or broken right now: tried again at the next query.
                with contextlib.suppress(Exception):
                    modules[name] = relmod.at(os.path.join(root, name))

    load_missing()
    print(json.dumps({"ready": True, "connected": connected, "loaded": len(modules)}), flush=True)

    def values(sync: bool) -> dict[str, Any]:
        if sync:
            relmod.sync(30.0)
        load_missing()
        out: dict[str, Any] = {}
        for name in names:
            module = modules.get(name)
            if module is None:
                out[name] = {"error": "not loaded"}
                continue
            try:
                out[name] = module.VALUE
            except Exception as err:
                out[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        return out

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "values":
                result: Any = values(bool(command.get("sync")))
            elif op == "status":
                feed = client.feed
                result = feed.status() if feed is not None and hasattr(feed, "status") else {}
                result["feed"] = getattr(feed, "name", None)
                result["heartbeats"] = dict(heartbeats)
            elif op == "marks":
                result, marks[:] = list(marks), []
            elif op == "exit":
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"result": result}
        except Exception as err:
            reply = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
        sys.stdout.write(json.dumps(reply, default=str) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
