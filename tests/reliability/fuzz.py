"""Fuzzing the message decoder and its schema check (``relmod.protocol``), driven by hypothesis.

Hypothesis draws structured messages of six families:

- ``raw``: any list of up to five byte strings (most fail on frames, version or signature);
- ``signed``: random payload bytes with a valid signature (they reach the msgpack decoder);
- ``envelope``: a signed msgpack envelope of any kind (known or not) around any msgpack value;
- ``near``: a signed, valid message of a real kind with one to three fields dropped, added,
  replaced by any value, or with a path replaced by a traversal;
- ``path``: a signed, well-formed message of a kind that carries paths, with one path replaced
  by a traversal (``/proj/../etc/passwd``, ``//``, a NUL, a relative path, a 5,000-character
  one, ``/projx/...``) or by the root followed by any text;
- ``ids``: a signed, valid invalidation whose ids the client's table may not know, or that names
  a known id with another path.

Each drawn message is decoded as it is, then :data:`MUTATIONS_PER_EXAMPLE` times mutated by a
random generator that hypothesis seeds: bytes flipped, inserted or cut (re-signed or not), a
frame added or the message split into three (as relmod/2 sent it), the version or signature
replaced, the whole message replayed, the payload swapped for a nesting or expansion bomb, or
padded past a small codec's ``max_payload``. Every input goes through
:func:`relmod.protocol.fuzz_one` on the codec of the side that receives it (the broker's, with a
ROUTER identity frame), or for a client through its codec and then, for a message that carries
file ids, its id table (:meth:`relmod.client.fileids.FileTable.apply`, as the feed applies
them): the only allowed outcomes are ``"ok"``, a drop reason of :data:`relmod.protocol.REASONS`,
and :data:`FILE_IDS` (the table refused the ids). Any other exception escaping is recorded with
its input. Memory is the process's RSS, sampled as the run goes.

Example:
    >>> report = run_fuzz(300, seed=1)
    >>> report.inputs >= 300 and report.escaped == []
    True
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from relmod.client.fileids import FileTable
from relmod.errors import ProtocolError
from relmod.protocol import (
    MAC_BYTES,
    REASONS,
    REPLAY_SENDERS,
    SCHEMAS,
    VERSION,
    Codec,
    pack_ids,
)

ROOT = "/proj"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
A, B = f"{ROOT}/pkg/a.py", f"{ROOT}/b.py"
MUTATIONS_PER_EXAMPLE = 24
SMALL_PAYLOAD = 2048
"""The ``max_payload`` of a third codec, so that oversized inputs stay cheap to make."""
BATCH_EXAMPLES = 400
"""Hypothesis examples per run of the property; RSS is sampled between runs."""
RSS_LIMIT_KB = 64 * 1024
FILE_IDS = "file ids"
"""The outcome of a valid message whose ids the client's table refuses (unknown, contradicting):
dropped by the feed, which then asks for the whole table."""
"""Most RSS growth a fuzz run may show (after a warm-up) and still pass."""

SAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "publish": {
        "heartbeat": {"epoch": "e1", "seq": 7, "time": 1.5},
        "invalidate": {"epoch": "e1", "seq": 8, "changed": [[0, A, "ab12"]],
                       "affected": pack_ids([0, 1]), "names": [[1, B]]},
        "broken": {"epoch": "e1", "seq": 9, "path": A, "lineno": 3, "message": "SyntaxError"},
        "bye": {"epoch": "e1"},
        "activity": {"epoch": "e1", "client": "box:42", "lost": 0,
                     "events": [{"kind": "failed", "path": A, "time": 1.5, "lineno": 3,
                                 "message": "RuntimeError: boom"}]},
    },
    "request": {
        "hello": {"client": "c1", "pid": 42, "host": "box", "argv": "python run.py"},
        "since": {"epoch": "e1", "seq": 0},
        "edges": {"edges": [[A, B]]},
        "report": {
            "client": "c1",
            "seq": 8,
            "stale": 2,
            "error": None,
            "patched": 3,
            "unpatched": 0,
        },
        "status": {},
        "sync": {},
        "graph": {"after": None},
        "hashes": {"after": 7},
        "list": {"what": "broken", "after": ""},
        "paths": {"paths": [ROOT]},
        "source": {"hash": "ab12"},
        "goodbye": {"client": "c1"},
        "running": {"client": "c1", "lost": 0,
                    "files": [{"path": A, "hash": "ab12", "version": 2, "failed": "cd34",
                               "lineno": 3, "message": "RuntimeError: boom"}],
                    "events": [{"kind": "reloaded", "path": B, "time": 2.0, "lineno": None,
                                "message": None}]},
    },
    "reply": {
        "welcome": {"epoch": "e1", "seq": 8, "root": ROOT, "heartbeat": 1.0},
        "changes": {"epoch": "e1", "seq": 9, "full": False, "files": [[0, A, "h"]],
                    "affected": pack_ids([0, 1]), "names": [[1, B]],
                    "broken": [{"path": B, "lineno": None, "message": "NameError: x"}],
                    "next": None},
        "ack": {},
        "status": {"status": {"clients": [{"pid": 1}], "uptime": 3.5}},
        "synced": {"epoch": "e1", "seq": 9},
        "graph": {"edges": [[A, B, ["static"]]], "next": [A, B], "total": 2},
        "hashes": {"files": [[0, A, "h"], [1, B, None]], "names": [[2, ROOT]], "next": None},
        "list": {"items": [{"path": B, "lineno": 1, "message": "m"}], "next": B, "total": 3},
        "source": {"hash": "ab12", "data": b"x = 1\n"},
        "error": {"message": "No source with hash ab12 is known.", "request": "source"},
    },
}  # fmt: skip
assert all(SAMPLES[d].keys() == SCHEMAS[d].keys() for d in SCHEMAS), "a kind lacks a sample"

PATH_ATTACKS = [
    f"{ROOT}/../etc/passwd", "/etc/passwd", "proj/a.py", f"/{ROOT}/a.py", f"{ROOT}/a.py\x00.txt",
    f"{ROOT}/./a.py", f"{ROOT}/pkg/../../x.py", "", ROOT, f"{ROOT}/{'a' * 5000}.py",
    f"{ROOT}x/a.py", "\\proj\\a.py", f"{ROOT}/a.py/", "/", "~/a.py",
]  # fmt: skip

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=24)
    | st.binary(max_size=24)
    | st.sampled_from([A, B, ROOT, "e1", *PATH_ATTACKS])
)
msgpack_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["epoch", "seq", "path"]), children,
                      max_size=5),
    max_leaves=16,
)  # fmt: skip
counters = st.integers(min_value=1, max_value=2**63 - 1) | st.integers(-2, 2**64 - 1)
senders = st.binary(min_size=16, max_size=16) | st.binary(max_size=24)


def _pack(envelope: Any) -> bytes:
    try:
        return bytes(msgpack.packb(envelope, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb(None)  # type: ignore[no-any-return]


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real kind's valid body with up to three fields broken; (receiver, payload)."""
    direction = draw(st.sampled_from(sorted(SAMPLES)))
    kind = draw(st.sampled_from(sorted(SAMPLES[direction])))
    body: Any = copy.deepcopy(SAMPLES[direction][kind])
    for operation, slot, value in draw(
        st.lists(st.tuples(st.sampled_from(["drop", "add", "replace", "path", "body"]),
                           st.integers(0, 50), msgpack_values), max_size=3)
    ):  # fmt: skip
        names = sorted(body) if isinstance(body, dict) else []
        if operation == "body":
            body = value
        elif operation == "add" and isinstance(body, dict):
            body[f"extra{slot}"] = value
        elif names and operation == "drop":
            del body[names[slot % len(names)]]
        elif names and operation == "replace":
            body[names[slot % len(names)]] = value
        elif names and operation == "path":
            body = _swap_a_path(body, PATH_ATTACKS[slot % len(PATH_ATTACKS)])
    if draw(st.integers(0, 9)) < 8:  # mostly a well-formed envelope, so the body is checked
        kind_drawn, sender, counter = (
            kind,
            draw(st.binary(min_size=16, max_size=16)),
            draw(st.integers(1, 2**63 - 1)),
        )
    else:
        kind_drawn = draw(st.sampled_from([kind, "x", "bye" if kind != "bye" else "ack"]))
        sender, counter = draw(senders), draw(counters)
    envelope = {"k": kind_drawn, "s": sender, "n": counter, "b": body}
    receiver = "broker" if direction == "request" else "client"
    return receiver, _pack(envelope)


def _swap_a_path(value: Any, attack: str) -> Any:
    """The same value with its first path (a str starting with ROOT) replaced by ``attack``."""
    done = False

    def walk(item: Any) -> Any:
        nonlocal done
        if done:
            return item
        if isinstance(item, str) and item.startswith(ROOT):
            done = True
            return attack
        if isinstance(item, list):
            return [walk(x) for x in item]
        if isinstance(item, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in item.items()}
        return item

    return walk(value)


_WITH_PATHS = [(d, k) for d in sorted(SAMPLES) for k in sorted(SAMPLES[d])
               if ROOT in repr(SAMPLES[d][k])]  # fmt: skip


@st.composite
def path_attack(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid, well-formed message whose one path is a traversal; (receiver, payload)."""
    direction, kind = draw(st.sampled_from(_WITH_PATHS))
    attack = draw(st.sampled_from(PATH_ATTACKS) | st.text(max_size=30).map(lambda t: ROOT + t))
    body = _swap_a_path(copy.deepcopy(SAMPLES[direction][kind]), attack)
    envelope = {"k": kind, "s": draw(st.binary(min_size=16, max_size=16)),
                "n": draw(st.integers(1, 2**63 - 1)), "b": body}  # fmt: skip
    return ("broker" if direction == "request" else "client"), _pack(envelope)


@st.composite
def id_attack(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid, well-signed invalidation whose ids the client's table may not know, or that
    names a known id with another path; (receiver, payload)."""
    ids = draw(st.lists(st.integers(0, 70_000), min_size=1, max_size=20))
    names = draw(st.lists(st.tuples(st.integers(0, 70_000), st.sampled_from([A, B])), max_size=3))
    body = {
        **SAMPLES["publish"]["invalidate"],
        "affected": pack_ids(ids),
        "names": [list(name) for name in names],
    }
    envelope = {"k": "invalidate", "s": draw(st.binary(min_size=16, max_size=16)),
                "n": draw(st.integers(1, 2**63 - 1)), "b": body}  # fmt: skip
    return "client", _pack(envelope)


@st.composite
def random_envelope(draw: st.DrawFn) -> tuple[str, bytes]:
    kinds = sorted({*SCHEMAS["publish"], *SCHEMAS["reply"], *SCHEMAS["request"], "x", ""})
    envelope: Any = {
        "k": draw(st.sampled_from(kinds) | st.text(max_size=8)),
        "s": draw(senders),
        "n": draw(counters),
        "b": draw(msgpack_values),
    }
    if draw(st.integers(0, 9)) == 0:
        envelope = draw(msgpack_values)  # not even a map
    return draw(st.sampled_from(["broker", "client"])), _pack(envelope)


@dataclass
class FuzzReport:
    """What a fuzz run did; :func:`markdown` prints it."""

    inputs: int = 0
    examples: int = 0
    families: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    escaped: list[str] = field(default_factory=list)
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    rss_max_growth_kb: int = 0
    replay_table: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.escaped and self.rss_max_growth_kb < RSS_LIMIT_KB


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Targets:
    """The receiving codecs and the bookkeeping of one fuzz run."""

    def __init__(self, report: FuzzReport) -> None:
        self.report = report
        self.codecs = {
            "broker": Codec(KEY, role="broker", root=ROOT),
            "client": Codec(KEY, role="client", root=ROOT),
            "small": Codec(KEY, role="client", root=ROOT, max_payload=SMALL_PAYLOAD),
        }
        self.signer = Codec(KEY, role="client")  # only its sign() and seal() are used
        # The client's id table, as a feed holds it after a full answer: ids 0 and 1 known, and
        # a loaded module at A (so invalidations reach it).
        self.start_table = [(0, A), (1, B)]
        self.table = FileTable()
        self.table.replace(self.start_table)
        self.table.loaded([A], root=ROOT)
        self.other = Codec(OTHER_KEY, role="client")

    def sign(self, version: bytes, payload: bytes) -> bytes:
        """The mac of a message of these parts."""
        return self.signer.sign(version + b"\0" + payload)

    def seal(self, version: bytes, payload: bytes) -> list[bytes]:
        """The frames (one) of a well-signed message of these parts."""
        return [self.signer.seal(version, payload)]

    def feed(self, receiver: str, frames: list[bytes]) -> None:
        codec = self.codecs[receiver]
        if receiver == "broker":
            frames = [b"\x00id", *frames]
            try:
                outcome = fuzz_one_routed(codec, frames)
            except Exception as err:  # the bug we are looking for
                self._escaped(receiver, frames, err)
                return
        else:
            try:
                outcome = self._client_decode(codec, frames)
            except Exception as err:
                self._escaped(receiver, frames, err)
                return
        if outcome not in ("ok", FILE_IDS) and outcome not in REASONS:
            self._escaped(receiver, frames, ValueError(f"unknown outcome {outcome!r}"))
        self.report.reasons[outcome] += 1
        self.report.inputs += 1

    def _client_decode(self, codec: Codec, frames: list[bytes]) -> str:
        """What a client's feed does with a publication or reply: decode it, and when it carries
        file ids, apply them to its id table (:meth:`FileTable.apply`); returns ``"ok"``, the
        codec's drop reason, or :data:`FILE_IDS` when the table refused the ids."""
        try:
            message = codec.decode(frames)
        except ProtocolError as err:
            return err.reason
        body = message.body
        if message.kind == "hashes":
            problem = self.table.learn((entry[0], entry[1]) for entry in body["files"])
            problem = problem or self.table.learn((entry[0], entry[1]) for entry in body["names"])
        elif message.kind in ("invalidate", "changes"):
            changed = body["changed"] if message.kind == "invalidate" else body["files"]
            _, _, problem = self.table.apply(changed, body["affected"], body["names"])
        else:
            problem = None
        if problem is not None:
            self.table.replace(self.start_table)  # what a feed does next: the whole table again
            return FILE_IDS
        return "ok"

    def _escaped(self, receiver: str, frames: list[bytes], err: Exception) -> None:
        self.report.inputs += 1
        self.report.reasons["ESCAPED"] += 1
        if len(self.report.escaped) < 20:
            shown = [f[:60] for f in frames]
            self.report.escaped.append(f"{receiver}: {type(err).__name__}: {err} <- {shown!r}")


def fuzz_one_routed(codec: Codec, frames: list[bytes]) -> str:
    """:func:`fuzz_one` for a ROUTER's input (identity frame first)."""
    from relmod.errors import ProtocolError

    try:
        codec.decode_routed(frames)
    except ProtocolError as err:
        return err.reason
    return "ok"


def wire(version: bytes, payload: bytes, mac: bytes) -> list[bytes]:
    """The frames (one) of a message made of these parts, as they are."""
    return [version + b"\0" + payload + mac]


def _mutate(rng: random.Random, frames: list[bytes], t: _Targets) -> list[bytes]:
    """A message's parts (version, payload, mac), changed in one of many ways; returns the
    frames to send."""
    version, payload, mac = (frames + [b"", b"", b""])[:3]
    choice = rng.randrange(16)
    data = bytearray(payload)
    resign = True
    if choice == 0 and data:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:  # cut
        del data[rng.randrange(len(data) + 1) :]
    elif choice == 2:  # insert
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    elif choice == 3:  # flip without re-signing: a forgery
        if data:
            data[rng.randrange(len(data))] ^= 1 + rng.randrange(255)
        resign = False
    elif choice == 4:
        return [version, payload, mac]  # three frames, as relmod/2 sent them
    elif choice == 5:
        return [*wire(version, payload, mac), rng.randbytes(rng.randint(0, 8))]  # one too many
    elif choice == 6:
        other = rng.choice([b"relmod/1", b"relmod/2", b"", b"RELMOD/3", rng.randbytes(8)])
        return t.seal(other, payload)  # wrong version, signed
    elif choice == 7:
        return [version + b"\0" + payload[: rng.randrange(MAC_BYTES + 1)]]  # unsigned
    elif choice == 8:
        return [t.other.seal(version, payload)]  # another key
    elif choice == 9:
        return wire(version, payload, mac[: rng.randrange(len(mac) + 1)])  # a cut mac
    elif choice == 10:  # nesting bomb: msgpack's stack limit
        data = bytearray(b"\x91" * rng.randint(100, 5000) + b"\xc0")
    elif choice == 11:  # expansion bomb: a map whose body is tens of thousands of empty arrays
        count = 65535 if rng.random() < 0.05 else rng.randint(100, 3000)
        bomb = b"\xdc" + count.to_bytes(2, "big") + b"\x90" * count
        data = bytearray(b"\x84\xa1k\xa9heartbeat\xa1s\xc4\x10" + b"S" * 16 + b"\xa1n\x01\xa1b"
                         + bomb)  # fmt: skip
    elif choice == 12:  # a declared length far beyond the data
        data = bytearray(
            rng.choice(
                [
                    b"\xdb\xff\xff\xff\xff",
                    b"\xc6\xff\xff\xff\xff",
                    b"\xdd\xff\xff\xff\xff",
                    b"\xdf\xff\xff\xff\xff",
                ]
            )
        )
        data += rng.randbytes(rng.randint(0, 16))
    elif choice == 13:  # an ext type (timestamps included): refused
        data = bytearray(rng.choice([b"\xd6\xff" + b"\x00" * 4, b"\xc7\x01\x05x", b"\xd4\x01\x01"]))
    elif choice == 14:  # a float or integer where the envelope wants bytes, and the like
        data = bytearray(_pack({"k": "heartbeat", "s": rng.random(), "n": True, "b": []}))
    else:
        resign = rng.random() < 0.5  # swap the payload with random bytes
        data = bytearray(rng.randbytes(rng.randint(0, 64)))
    payload = bytes(data)
    return t.seal(version, payload) if resign else wire(version, payload, mac)


def run_fuzz(count: int, *, seed: int = 0, mutations: int = MUTATIONS_PER_EXAMPLE) -> FuzzReport:
    """Decode at least ``count`` generated inputs; returns what happened.

    Args:
        count: the least number of inputs to decode.
        seed: seeds hypothesis and the mutator, so a run can be repeated.
        mutations: mutated variants decoded per drawn message.
    """
    report = FuzzReport()
    targets = _Targets(report)
    began = time.monotonic()

    def one(
        family: str, receiver: str, first: list[bytes], frames: list[bytes], mutation_seed: int
    ) -> None:
        """Feed ``first`` (frames), then mutations of ``frames`` (a message's parts)."""
        report.examples += 1
        report.families[family] += 1
        targets.feed(receiver, first)
        rng = random.Random(mutation_seed)
        for _ in range(mutations):
            if rng.random() < 0.1:
                targets.feed(receiver, first)  # the same frames again: a replay
                continue
            payload = (frames + [b"", b""])[1]
            if len(payload) <= SMALL_PAYLOAD and rng.random() < 0.05:
                padded = payload + b"\x00" * (SMALL_PAYLOAD + 1 - len(payload))
                targets.feed("small", targets.seal(VERSION, padded))  # oversized for "small"
                continue
            mutated = _mutate(rng, frames, targets)
            targets.feed(receiver if rng.random() < 0.8 else rng.choice(["broker", "client"]),
                         mutated)  # fmt: skip

    strategy = st.one_of(
        st.tuples(st.just("raw"), st.sampled_from(["broker", "client"]),
                  st.lists(st.binary(max_size=120), max_size=5).map(lambda f: ("raw", f))),
        st.tuples(st.just("signed"), st.sampled_from(["broker", "client"]),
                  st.binary(max_size=300).map(lambda p: ("signed", [p]))),
        st.tuples(st.just("envelope"), st.just(""), random_envelope().map(lambda e: ("env", e))),
        st.tuples(st.just("near"), st.just(""), near_valid().map(lambda e: ("env", e))),
        st.tuples(st.just("path"), st.just(""), path_attack().map(lambda e: ("env", e))),
        st.tuples(st.just("ids"), st.just(""), id_attack().map(lambda e: ("env", e))),
    )  # fmt: skip

    def inner(drawn: tuple[str, str, tuple[str, Any]], mutation_seed: int) -> None:
        family, receiver, (shape, value) = drawn
        if shape == "raw":
            frames = list(value)
            one(family, receiver, frames, frames, mutation_seed)
            return
        if shape == "signed":
            payload = value[0]
        else:
            receiver, payload = value
        parts = [VERSION, payload, targets.sign(VERSION, payload)]
        one(family, receiver, wire(*parts), parts, mutation_seed)

    per_example = mutations + 1
    batch = 0
    while report.inputs < count:
        # Small batches: the RSS after the first one (hypothesis warmed up) is the baseline.
        left = -(-(count - report.inputs) // per_example)
        wanted = max(1, min(BATCH_EXAMPLES, left))
        test = hypothesis_seed(seed * 1000 + batch)(
            settings(max_examples=wanted, database=None, deadline=None, derandomize=False,
                     phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
                given(strategy, st.integers(0, 2**32))(inner)
            )
        )  # fmt: skip
        started, before = time.monotonic(), report.inputs
        test()
        report.rates.append((report.inputs - before) / max(1e-9, time.monotonic() - started))
        if batch == 0:
            report.rss_start_kb = _rss_kb()
        report.rss_max_growth_kb = max(report.rss_max_growth_kb, _rss_kb() - report.rss_start_kb)
        batch += 1
    report.rss_end_kb = _rss_kb()
    growth = report.rss_end_kb - report.rss_start_kb
    report.rss_max_growth_kb = max(report.rss_max_growth_kb, growth)
    report.replay_table = max(len(c._last_seen) for c in targets.codecs.values())
    if report.replay_table > REPLAY_SENDERS:
        report.escaped.append(f"the replay table holds {report.replay_table} senders")
    report.seconds = round(time.monotonic() - began, 1)
    return report


def markdown(report: FuzzReport) -> str:
    """The fuzz figures as a Markdown table."""
    reasons = ", ".join(f"{k} {v}" for k, v in report.reasons.most_common())
    families = ", ".join(f"{k} {v}" for k, v in sorted(report.families.items()))
    rate = statistics.median(report.rates) if report.rates else 0.0
    rows = [
        ("inputs decoded (broker and client codecs)", f"{report.inputs}"),
        ("hypothesis examples (families)", f"{report.examples} ({families})"),
        ("outcomes", reasons),
        ("**exceptions escaping the decoder**", f"**{len(report.escaped)}**"),
        (
            "RSS growth, max (start -> end)",
            f"{report.rss_max_growth_kb / 1024:.1f} MiB ({report.rss_start_kb / 1024:.0f} -> "
            f"{report.rss_end_kb / 1024:.0f} MiB)",
        ),
        ("replay table (bounded by REPLAY_SENDERS)", f"{report.replay_table} <= {REPLAY_SENDERS}"),
        ("duration", f"{report.seconds:.0f} s ({rate:.0f} inputs/s)"),
    ]
    lines = ["Fuzz: message decoder + schema check", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if report.escaped:
        lines += ["", "Escaped:"] + [f"- {e}" for e in report.escaped]
    return "\n".join(lines)
