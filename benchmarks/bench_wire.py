"""The size and cost of one invalidation on the wire, for a change affecting 5,000 modules.

Prints a table, the protocol of today (relmod/3: affected files as a packed id set, the changed
file as [id, path, hash]) next to the one before (relmod/1: every affected path, and a path ->
hash map), in one run::

    .venv/bin/python benchmarks/bench_wire.py [--files 10000] [--affected 5000] [--runs 200]

For a project of ``--files`` files, one file changes and ``--affected`` files are affected.

- size: the message's frames (relmod/3: one; relmod/1: version, payload, mac);
- encode (broker): from the affected paths to the frames (ids looked up, packed, signed);
- client decode: verify the signature, unpack, check the schema (every path inside the root),
  and turn the message into what the registry needs: the local paths to mark. relmod/3 does
  this as a client's feed does (``FileTable.apply``: learn the named ids, check that every id
  is known, intersect the ids with those of loaded modules), once with every affected module
  loaded, once with 50 loaded. relmod/1 maps every affected path to a local path, as its feed
  did. relmod/1's body is checked with the protocol's own schema machinery and the old field
  specs (``list_of(PATH)``, ``map_of(PATH, optional(STR))``), packed and signed as
  :class:`~relmod.protocol.Codec` does.

Medians of ``--runs`` runs each; the target (issue 13) is <= 40 KB and <= 1 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from relmod.client.fileids import FileTable  # noqa: E402
from relmod.protocol import (  # noqa: E402
    MAX_ITEMS,
    MAX_PAYLOAD,
    PATH,
    STR,
    Codec,
    _compile_fields,
    _refuse_ext,
    list_of,
    map_of,
    new_epoch,
    new_key,
    optional,
    pack_ids,
)
from relmod.server.fileids import FileIds  # noqa: E402

ROOT = "/home/someone/projects/example-service/src"
OLD_INVALIDATE = {
    "epoch": STR,
    "seq": "int",
    "changed": list_of(PATH),
    "affected": list_of(PATH),
    "hashes": map_of(PATH, optional(STR)),
}
CHECK_OLD_INVALIDATE = _compile_fields(OLD_INVALIDATE)


def project_paths(files: int) -> list[str]:
    """Paths shaped like a real project's: packages of 25 modules, two levels deep."""
    return [
        f"{ROOT}/service/layer{n // 2500}/package{n // 25:04d}/module_{n % 25:02d}.py"
        for n in range(files)
    ]


def median_ms(runs: int, call: Callable[[], object]) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


class OldWire:
    """relmod/1's invalidation: packed, signed and checked as its Codec did."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0

    def sign(self, payload: bytes) -> bytes:
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for frame in (b"relmod/1", payload):
            mac.update(len(frame).to_bytes(8, "big"))
            mac.update(frame)
        return mac.digest()

    def encode(self, body: dict[str, Any]) -> list[bytes]:
        CHECK_OLD_INVALIDATE(body, ROOT, MAX_PAYLOAD)
        self.counter += 1
        envelope = {"k": "invalidate", "s": b"s" * 16, "n": self.counter, "b": body}
        payload: bytes = msgpack.packb(envelope, use_bin_type=True)
        return [b"relmod/1", payload, self.sign(payload)]

    def decode(self, frames: list[bytes]) -> dict[str, Any]:
        _, payload, mac = frames
        assert hmac.compare_digest(mac, self.sign(payload))
        envelope = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
            max_str_len=65536, max_bin_len=MAX_PAYLOAD, max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS, max_ext_len=0,
        )  # fmt: skip
        body: dict[str, Any] = envelope["b"]
        CHECK_OLD_INVALIDATE(body, ROOT, MAX_PAYLOAD)
        return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--affected", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="50 runs")
    args = parser.parse_args(argv)
    runs = 50 if args.quick else args.runs

    paths = project_paths(args.files)
    changed = paths[len(paths) // 2]
    step = max(1, args.files // args.affected)
    others = [p for p in paths[::step] if p != changed][: args.affected - 1]
    affected = sorted([changed, *others])
    digest = "0123456789abcdef0123456789abcdef"
    key, epoch = new_key(), new_epoch()
    ids = FileIds()
    for path in paths:  # numbered as the scan numbers them
        ids.id_of(path)

    broker = Codec(key, role="broker", root=ROOT)
    client = Codec(key, role="client", root=ROOT)

    def encode_new() -> list[bytes]:
        changed_id = ids.id_of(changed)
        body = {
            "epoch": epoch,
            "seq": 1,
            "changed": [[changed_id, changed, digest]],
            "affected": pack_ids([ids.id_of(p) for p in affected]),
            "names": [],
        }
        return broker.encode("invalidate", body)

    tables = {}
    for label, loaded in (("every affected module loaded", affected), ("50 loaded", affected[:50])):
        table = FileTable()
        table.replace((ids.id_of(p), p) for p in paths)
        table.loaded(loaded, root=ROOT)
        tables[label] = table

    def decode_new(frames: list[bytes], table: FileTable) -> list[str]:
        body = client.decode(frames).body
        changed, reached, problem = table.apply(body["changed"], body["affected"], body["names"])
        assert problem is None
        return changed + reached

    old = OldWire(key)

    def encode_old() -> list[bytes]:
        body = {
            "epoch": epoch,
            "seq": 1,
            "changed": [changed],
            "affected": affected,
            "hashes": {changed: digest},
        }
        return old.encode(body)

    def decode_old(frames: list[bytes]) -> list[str]:
        body = old.decode(frames)
        to_local = os.path.normpath  # stands for the path map's lookup (no map: identity)
        return [to_local(p) for p in body["affected"]]

    # The client's codec drops a replay: every decode gets frames of its own.
    fresh = iter([encode_new() for _ in range(len(tables) * (runs + 1))])
    new_frames, old_frames = encode_new(), encode_old()
    for table in tables.values():
        marked = set(decode_new(next(fresh), table))  # the registry takes them as a set
        assert marked == set(table.reaching(range(len(paths)))) & set(affected) | {changed}
    rows = [
        ("message size (frames)",
         f"{sum(map(len, new_frames)) / 1000:.1f} KB", f"{sum(map(len, old_frames)) / 1000:.1f} KB",
         "<= 40 KB"),
        ("encode (broker: look up ids, pack, sign)",
         f"{median_ms(runs, encode_new):.2f} ms", f"{median_ms(runs, encode_old):.2f} ms", ""),
    ]  # fmt: skip
    old_decode = median_ms(runs, lambda: decode_old(old_frames))
    for label, table in tables.items():
        new_decode = median_ms(runs, lambda t=table: decode_new(next(fresh), t))
        rows.append(
            (f"client decode -> paths to mark, {label}",
             f"{new_decode:.3f} ms", f"{old_decode:.3f} ms", "<= 1 ms")
        )  # fmt: skip
    print(
        f"\none invalidation: 1 file changed, {len(affected):,} affected, "
        f"{args.files:,} files in the project (median of {runs})\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | relmod/3 (ids) | relmod/1 (paths) | target |")
    print(f"|{'-' * (width + 2)}|----------------|------------------|--------|")
    for name, new, before, goal in rows:
        print(f"| {name:<{width}} | {new:<14} | {before:<16} | {goal} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
