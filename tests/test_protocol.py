"""The wire protocol: every kind crosses, every kind of bad message is dropped and counted."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability.fuzz import wire  # a message's frame from its parts, a bad mac kept bad

from relmod.errors import ProtocolError
from relmod.protocol import (  # the feed's one-function checks, held to the general one
    _CHECKS,
    _FAST_CHECKS,
    ACTIVITY_VERSION,
    FEED_TOPIC,
    HEARTBEAT_INTERVAL,
    MAC_BYTES,
    MAX_FILE_ID,
    MAX_ITEMS,
    MAX_PAYLOAD,
    MAX_STR,
    MAX_TEXT,
    REASONS,
    REPLAY_SENDERS,
    SCHEMAS,
    VERSION,
    Codec,
    Message,
    _invalidate_ok,
    _Rejected,
    configure_socket,
    count_ids,
    fuzz_one,
    new_epoch,
    new_key,
    pack_ids,
    unpack_ids,
)

ROOT = "/project"
KEY = bytes(range(32))
A = "/project/pkg/a.py"
B = "/project/pkg/b.py"

# One valid body per kind and direction. The test below fails when a kind has no sample.
SAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "publish": {
        "heartbeat": {"epoch": "e1", "seq": 7, "time": 1700000000.25},
        "invalidate": {
            "epoch": "e1",
            "seq": 8,
            "changed": [[0, A, "ab12"]],
            "affected": pack_ids([0, 1]),
            "names": [[1, B]],
        },
        "broken": {"epoch": "e1", "seq": 9, "path": A, "lineno": 3, "message": "SyntaxError"},
        "bye": {"epoch": "e1"},
        "activity": {
            "epoch": "e1",
            "client": "box:4242",
            "events": [
                {"kind": "reloaded", "path": A, "time": 1.5, "lineno": None, "message": None},
                {"kind": "failed", "path": B, "time": 1.5, "lineno": 3, "message": "OSError: x"},
            ],
            "lost": 0,
        },
    },
    "request": {
        "hello": {"client": "c1", "pid": 4242, "host": "box", "argv": "python run.py"},
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
        "graph": {"after": [A, B]},
        "hashes": {"after": 1},
        "list": {"what": "clients", "after": ""},
        "paths": {"paths": [ROOT, "/usr/lib/python3.11"]},
        "source": {"hash": "ab12"},
        "goodbye": {"client": "c1"},
        "running": {
            "client": "c1",
            "files": [
                {
                    "path": A,
                    "hash": "ab12",
                    "version": 2,
                    "failed": None,
                    "lineno": None,
                    "message": None,
                },
                {
                    "path": B,
                    "hash": None,
                    "version": 0,
                    "failed": "cd34",
                    "lineno": 3,
                    "message": "RuntimeError: boom",
                },
            ],  # fmt: skip
            "events": [
                {"kind": "reloaded", "path": A, "time": 2.0, "lineno": None, "message": None}
            ],  # fmt: skip
            "lost": 2,
        },
    },
    "reply": {
        "welcome": {"epoch": "e1", "seq": 8, "root": ROOT, "heartbeat": HEARTBEAT_INTERVAL},
        "changes": {
            "epoch": "e1",
            "seq": 9,
            "full": True,
            "files": [[0, A, "ab12"], [2, B, None]],
            "affected": pack_ids(()),
            "names": [[1, ROOT + "/pkg"]],
            "broken": [{"path": B, "lineno": None, "message": "NameError: x"}],
            "next": 2,
        },
        "ack": {},
        "status": {"status": {"clients": [{"pid": 1, "argv": "x"}], "uptime": 3.5, "ok": True}},
        "synced": {"epoch": "e1", "seq": 9},
        "graph": {"edges": [[A, B, ["helper", "VALUE"]]], "next": None, "total": 1},
        "hashes": {"files": [[3, B, "cd34"]], "names": [], "next": 3},
        "list": {"items": [{"client": "h:1", "pid": 1}], "next": None, "total": 1},
        "source": {"hash": "ab12", "data": b"x = 1\n"},
        "error": {
            "message": "No source with hash ab12 is known; save the file again.",
            "request": "source",
        },
    },
}
CASES = [(direction, kind) for direction in SAMPLES for kind in SAMPLES[direction]]


def sender_of(direction: str) -> str:
    return "client" if direction == "request" else "broker"


def receiver_of(direction: str) -> str:
    return "broker" if direction == "request" else "client"


def make(role: str, key: bytes = KEY, **options: Any) -> Codec:
    return Codec(key, role=role, root=options.pop("root", ROOT), **options)  # type: ignore[arg-type]


def pack(kind: Any, body: Any, *, sender: bytes = b"S" * 16, counter: int = 1) -> bytes:
    """A payload built by hand, so it can break the schema."""
    payload: bytes = msgpack.packb({"k": kind, "s": sender, "n": counter, "b": body})
    return payload


def signed(codec: Codec, payload: bytes, version: bytes = VERSION) -> list[bytes]:
    """A frame with a valid signature around any payload: it reaches the checks after the MAC."""
    return [codec.seal(version, payload)]


def parts(frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """A message's frame taken apart: (version, payload, mac)."""
    [frame] = frames
    version, _, rest = frame.partition(b"\0")
    return version, rest[:-MAC_BYTES], rest[-MAC_BYTES:]


def rejected(codec: Codec, frames: list[bytes]) -> str:
    """Decode frames that must be dropped; returns the reason after checking it was counted."""
    before = Counter(codec.dropped)
    with pytest.raises(ProtocolError) as info:
        codec.decode(frames)
    reason = info.value.reason
    assert reason in REASONS
    assert codec.dropped - before == Counter({reason: 1})
    assert str(info.value).endswith(".")  # a sentence, not a code
    return reason


# --- round trips -------------------------------------------------------------------------------


def test_every_kind_has_a_sample() -> None:
    assert {d: set(kinds) for d, kinds in SAMPLES.items()} == {
        d: set(kinds) for d, kinds in SCHEMAS.items()
    }


@pytest.mark.parametrize(("direction", "kind"), CASES)
def test_every_kind_round_trips(direction: str, kind: str) -> None:
    sender, receiver = make(sender_of(direction)), make(receiver_of(direction))
    body = SAMPLES[direction][kind]

    first = receiver.decode(sender.encode(kind, body))
    second = receiver.decode(sender.encode(kind, body))

    assert first == Message(kind=kind, body=body, sender=sender.sender, counter=1)
    assert second.counter == 2
    assert not receiver.dropped


def test_frames_have_the_documented_layout() -> None:
    import hashlib

    frames = make("broker").encode("bye", {"epoch": "e1"})

    [frame] = frames  # one frame: version, 0x00, payload, mac
    assert frame.startswith(b"relmod/3\0") and VERSION == b"relmod/3"
    payload = msgpack.unpackb(frame[len(VERSION) + 1 : -32])
    assert payload["k"] == "bye" and payload["n"] == 1 and payload["b"] == {"epoch": "e1"}
    assert isinstance(payload["s"], bytes) and len(payload["s"]) == 16
    assert frame[-32:] == hashlib.blake2b(frame[:-32], key=KEY, digest_size=32).digest()


def test_activity_has_its_own_first_frame_and_no_other_kind_may_borrow_it() -> None:
    broker, client = make("broker"), make("client")
    activity = broker.encode("activity", SAMPLES["publish"]["activity"])
    heartbeat = broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"])
    assert parts(activity)[0] == ACTIVITY_VERSION and parts(heartbeat)[0] == VERSION
    assert heartbeat[0].startswith(FEED_TOPIC) and not activity[0].startswith(FEED_TOPIC)
    assert client.decode(activity).kind == "activity"
    # Signed, but under the other version: dropped, so a feed never reads activity.
    swapped_activity = signed(broker, parts(activity)[1], version=VERSION)
    assert rejected(client, swapped_activity) == "version"
    payload = pack("heartbeat", SAMPLES["publish"]["heartbeat"], counter=99)
    assert rejected(client, signed(broker, payload, version=ACTIVITY_VERSION)) == "version"


def test_tuples_may_be_sent_where_lists_are_expected() -> None:
    frames = make("client").encode("edges", {"edges": [(A, B)]})

    assert make("broker").decode(frames).body == {"edges": [[A, B]]}


def test_each_codec_has_its_own_sender() -> None:
    assert make("broker").sender != make("broker").sender


def test_a_forked_child_signs_as_a_new_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    parent, broker = make("client"), make("broker")
    broker.decode(parent.encode("sync", {}))
    child = copy.copy(parent)  # what fork leaves in the child: the same sender and counter

    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: -1)
        from_child = child.encode("sync", {})
    from_parent = parent.encode("sync", {})

    # Both take counter 2 after the fork; with one sender, the second to arrive would be dropped.
    assert broker.decode(from_child).sender != parent.sender
    assert broker.decode(from_parent).counter == 2


def test_publications_and_replies_keep_separate_counters() -> None:
    # The same broker codec signs both; they travel on two sockets and may arrive in any order.
    broker, client = make("broker"), make("client")
    reply = broker.encode("ack", {})
    publication = broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"])

    assert client.decode(publication).counter == 2
    assert client.decode(reply).counter == 1


# --- encode refuses programming errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "kind", "body", "words"),
    [
        ("client", "heartbeat", SAMPLES["publish"]["heartbeat"], "cannot send"),
        ("broker", "hello", SAMPLES["request"]["hello"], "cannot send"),
        ("broker", "nonsense", {}, "cannot send"),
        ("broker", "bye", {}, "missing epoch"),
        ("broker", "bye", {"epoch": "e", "extra": 1}, "unexpected 'extra'"),
        ("broker", "heartbeat", {"epoch": "e", "seq": "1", "time": 1.0}, "heartbeat.seq"),
        ("broker", "heartbeat", {"epoch": "e", "seq": True, "time": 1.0}, "heartbeat.seq"),
        ("broker", "heartbeat", {"epoch": "e", "seq": 1, "time": math.nan}, "heartbeat.time"),
        ("broker", "broken", {**SAMPLES["publish"]["broken"], "path": "/etc/x.py"}, "outside"),
        ("broker", "broken", {**SAMPLES["publish"]["broken"], "path": "a.py"}, "absolute"),
        ("broker", "status", {"status": {"when": object()}}, "msgpack-safe"),
        ("client", "status", {"status": {}}, "unexpected"),
        (
            "broker",
            "invalidate",
            {**SAMPLES["publish"]["invalidate"], "names": [[1, B], [2, "/etc/passwd"]]},
            r"invalidate\.names\[1\]\[1\]: '/etc/passwd' lies outside",
        ),
        (
            "client",
            "running",
            {"client": "c", "files": [{}], "events": [], "lost": 0},
            r"running\.files\[0\]: missing failed, hash",
        ),
    ],
)
def test_encode_refuses_a_body_that_breaks_the_schema(
    role: str, kind: str, body: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        make(role).encode(kind, body)


def test_encode_refuses_a_payload_over_the_limit() -> None:
    broker = make("broker", max_payload=1000)

    with pytest.raises(ValueError, match="more than the 1000 allowed"):
        broker.encode("source", {"hash": "h", "data": b"x" * 1000})


@given(
    st.lists(st.sampled_from(["", ".", "..", "a", "b.py", "...", ".x"]), max_size=5).map("/".join)
)
def test_a_path_is_normalised_exactly_when_normpath_leaves_it_alone(tail: str) -> None:
    """The schema's substring rules say what ``os.path.normpath`` says (and refuse "//x")."""
    codec = Codec(KEY, role="broker")  # no root: any absolute path may be named
    for path in ("/" + tail, "//" + tail, tail):
        expected = (
            path.startswith("/") and not path.startswith("//") and os.path.normpath(path) == path
        )
        body = {**SAMPLES["publish"]["broken"], "path": path}
        if expected:
            assert codec.encode("broken", body)
        else:
            with pytest.raises(ValueError, match="absolute, normalised"):
                codec.encode("broken", body)


def test_codec_refuses_a_short_or_long_key_and_a_bad_role() -> None:
    for key in (b"short", b"x" * 65):  # keyed BLAKE2b takes at most 64 bytes
        with pytest.raises(ValueError, match="16 to 64 bytes"):
            Codec(key, role="broker")
    with pytest.raises(ValueError, match="role"):
        Codec(KEY, role="server")  # type: ignore[arg-type]


# --- decode drops bad messages with the right reason ------------------------------------------


def _heartbeat() -> tuple[bytes, bytes, bytes]:
    """A good heartbeat, as its parts (version, payload, mac)."""
    return parts(make("broker").encode("heartbeat", SAMPLES["publish"]["heartbeat"]))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _nested(depth: int) -> Any:
    value: Any = A
    for _ in range(depth):
        value = [value]
    return value


NEST = "@@nest@@"


def _nested_payload(kind: str, body: dict[str, Any], depth: int) -> bytes:
    """A payload with [[[...[A]...]]] where NEST is in the body; msgpack itself won't pack it."""
    nested = b"\x91" * depth + msgpack.packb(A)
    return pack(kind, body).replace(msgpack.packb(NEST), nested)


BODY = SAMPLES["publish"]["invalidate"]
Build = Callable[[Codec], list[bytes]]

DROPS: dict[str, tuple[Build, str]] = {
    # wrong frame counts
    "no frames": (lambda c: [], "frames"),
    "two frames": (lambda c: [*wire(*_heartbeat()), b"x"], "frames"),
    "three frames, as relmod/2 sent": (lambda c: list(_heartbeat()), "frames"),
    "with an identity frame": (lambda c: [b"id", *wire(*_heartbeat())], "frames"),
    "not bytes": (lambda c: [12], "frames"),  # type: ignore[list-item]
    # version
    "other version": (lambda c: wire(b"relmod/1", *_heartbeat()[1:]), "version"),
    "no version end": (lambda c: [b"relmod/3"], "version"),
    "other version, signed": (
        lambda c: signed(c, _heartbeat()[1], version=b"relmod/1"),
        "version",
    ),
    # signature
    "unsigned": (lambda c: [VERSION + b"\0" + b"\x80" * MAC_BYTES], "unsigned"),
    "other key": (
        lambda c: make("broker", key=new_key()).encode(
            "heartbeat", SAMPLES["publish"]["heartbeat"]
        ),
        "forged",
    ),
    "flipped payload bit": (
        lambda c: wire(VERSION, _flip(_heartbeat()[1], 5), _heartbeat()[2]),
        "forged",
    ),
    "flipped mac bit": (lambda c: wire(*_heartbeat()[:2], _flip(_heartbeat()[2], 0)), "forged"),
    "short mac": (lambda c: wire(*_heartbeat()[:2], _heartbeat()[2][:31]), "forged"),
    "cut payload": (lambda c: wire(VERSION, _heartbeat()[1][:-3], _heartbeat()[2]), "forged"),
    # msgpack
    "cut payload, signed": (lambda c: signed(c, _heartbeat()[1][:-3]), "malformed"),
    "garbage": (lambda c: signed(c, b"\xc1\xc1\xc1"), "malformed"),
    "empty payload": (lambda c: signed(c, b""), "unsigned"),  # nothing but the mac
    "trailing bytes": (lambda c: signed(c, _heartbeat()[1] + b"\x00"), "malformed"),
    "bad utf-8": (lambda c: signed(c, b"\x81\xa1k\xa2\xff\xfe"), "malformed"),
    "int map key": (lambda c: signed(c, msgpack.packb({1: 2})), "malformed"),
    "ext type": (
        lambda c: signed(c, pack("bye", {"epoch": msgpack.ExtType(5, b"x")})),
        "malformed",
    ),
    "empty ext type": (
        lambda c: signed(c, pack("bye", {"epoch": msgpack.ExtType(5, b"")})),
        "malformed",
    ),
    "timestamp": (
        lambda c: signed(c, pack("bye", {"epoch": msgpack.Timestamp(1, 0)})),
        "malformed",
    ),
    "deeply nested arrays": (
        lambda c: signed(c, _nested_payload("invalidate", {**BODY, "changed": NEST}, 100_000)),
        "malformed",
    ),
    "list over the item limit": (
        lambda c: signed(c, pack("invalidate", {**BODY, "changed": [A] * (MAX_ITEMS + 1)})),
        "malformed",
    ),
    # schema
    "payload is a list": (lambda c: signed(c, msgpack.packb(["bye", {}])), "schema"),
    "payload lacks the counter": (
        lambda c: signed(c, msgpack.packb({"k": "bye", "s": b"S" * 16, "b": {"epoch": "e"}})),
        "schema",
    ),
    "payload has an extra key": (
        lambda c: signed(
            c, msgpack.packb({"k": "bye", "s": b"S" * 16, "n": 1, "b": {"epoch": "e"}, "x": 0})
        ),
        "schema",
    ),
    "counter 0": (lambda c: signed(c, pack("bye", {"epoch": "e"}, counter=0)), "schema"),
    "negative counter": (lambda c: signed(c, pack("bye", {"epoch": "e"}, counter=-1)), "schema"),
    "short sender": (lambda c: signed(c, pack("bye", {"epoch": "e"}, sender=b"s")), "schema"),
    "kind is not a str": (lambda c: signed(c, pack(7, {"epoch": "e"})), "schema"),
    "unknown kind": (lambda c: signed(c, pack("explode", {})), "schema"),
    "a request sent to a client": (lambda c: signed(c, pack("sync", {})), "schema"),
    "body is a list": (lambda c: signed(c, pack("bye", ["e"])), "schema"),
    "missing field": (lambda c: signed(c, pack("bye", {})), "schema"),
    "extra field": (lambda c: signed(c, pack("bye", {"epoch": "e", "why": "x"})), "schema"),
    "str for int": (
        lambda c: signed(c, pack("heartbeat", {"epoch": "e", "seq": "1", "time": 1.0})),
        "schema",
    ),
    "bool for int": (
        lambda c: signed(c, pack("heartbeat", {"epoch": "e", "seq": True, "time": 1.0})),
        "schema",
    ),
    "negative int": (
        lambda c: signed(c, pack("heartbeat", {"epoch": "e", "seq": -1, "time": 1.0})),
        "schema",
    ),
    "nan time": (
        lambda c: signed(c, pack("heartbeat", {"epoch": "e", "seq": 1, "time": math.nan})),
        "schema",
    ),
    "infinite time": (
        lambda c: signed(c, pack("heartbeat", {"epoch": "e", "seq": 1, "time": math.inf})),
        "schema",
    ),
    "bytes for str": (lambda c: signed(c, pack("bye", {"epoch": b"e"})), "schema"),
    "str over 4096": (lambda c: signed(c, pack("bye", {"epoch": "e" * (MAX_STR + 1)})), "schema"),
    "message over 16384": (
        lambda c: signed(c, pack("error", {"message": "m" * (MAX_TEXT + 1), "request": "x"})),
        "schema",
    ),
    "int for hash": (
        lambda c: signed(c, pack("invalidate", {**BODY, "changed": [[0, A, 5]]})),
        "schema",
    ),
    # file ids
    "ids as a list of ints": (
        lambda c: signed(c, pack("invalidate", {**BODY, "affected": [0, 1]})),
        "schema",
    ),
    "id set of an unknown width": (
        lambda c: signed(c, pack("invalidate", {**BODY, "affected": b"\x08" + bytes(8)})),
        "schema",
    ),
    "id set cut inside an id": (
        lambda c: signed(c, pack("invalidate", {**BODY, "affected": b"\x04" + bytes(6)})),
        "schema",
    ),
    "empty id set": (lambda c: signed(c, pack("invalidate", {**BODY, "affected": b""})), "schema"),
    "id above 2**32": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[2**32, B]]})),
        "schema",
    ),
    "negative id": (
        lambda c: signed(c, pack("invalidate", {**BODY, "changed": [[-1, A, None]]})),
        "schema",
    ),
    "str for id": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [["1", B]]})),
        "schema",
    ),
    "bool for id": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[True, B]]})),
        "schema",
    ),
    "name without its path": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[1]]})),
        "schema",
    ),
    "page after a path": (lambda c: signed(c, pack("hashes", {"after": A})), "schema"),
    "nested arrays where paths go": (
        lambda c: signed(c, _nested_payload("invalidate", {**BODY, "changed": NEST}, 1000)),
        "schema",
    ),
    "edge of three paths": (
        lambda c: signed(c, pack("graph", {"edges": [[A, B, [], A]], "next": None, "total": 1})),
        "schema",
    ),
    "free-form status nested 1000 deep": (
        lambda c: signed(c, _nested_payload("status", {"status": {"x": NEST}}, 1000)),
        "schema",
    ),
    "free-form status nested too deep": (
        lambda c: signed(c, pack("status", {"status": {"x": _nested(40)}})),
        "schema",
    ),
    "free-form status with a bytes key": (
        lambda c: signed(c, pack("status", {"status": {b"x": 1}})),
        "schema",
    ),
    # paths
    "dot-dot traversal": (
        lambda c: signed(
            c, pack("invalidate", {**BODY, "changed": [[0, "/project/../etc/passwd", None]]})
        ),
        "path",
    ),
    "relative path": (
        lambda c: signed(c, pack("invalidate", {**BODY, "changed": [[0, "pkg/a.py", None]]})),
        "path",
    ),
    "path outside the root": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[1, "/etc/passwd"]]})),
        "path",
    ),
    "sibling sharing the root's prefix": (
        lambda c: signed(
            c, pack("broken", {**SAMPLES["publish"]["broken"], "path": "/projectx/a.py"})
        ),
        "path",
    ),
    "double slash": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[1, "//project/a.py"]]})),
        "path",
    ),
    "dot segment": (
        lambda c: signed(
            c, pack("invalidate", {**BODY, "changed": [[0, "/project/./a.py", None]]})
        ),
        "path",
    ),
    "NUL in path": (
        lambda c: signed(c, pack("invalidate", {**BODY, "names": [[1, "/project/a\x00.py"]]})),
        "path",
    ),
    "welcome to another root": (
        lambda c: signed(c, pack("welcome", {**SAMPLES["reply"]["welcome"], "root": "/"})),
        "path",
    ),
    "graph edge outside": (
        lambda c: signed(
            c, pack("graph", {"edges": [[A, "/usr/lib/os.py", []]], "next": None, "total": 1})
        ),
        "path",
    ),
    "broken entry outside": (
        lambda c: signed(
            c,
            pack(
                "changes",
                {
                    **SAMPLES["reply"]["changes"],
                    "broken": [{"path": "/tmp/x.py", "lineno": 1, "message": "m"}],
                },
            ),
        ),
        "path",
    ),
}


@pytest.mark.parametrize("case", list(DROPS))
def test_decode_drops_a_bad_message_with_its_reason(case: str) -> None:
    client = make("client")
    build, reason = DROPS[case]

    assert rejected(client, build(client)) == reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/project/../etc/passwd", "path"), ("pkg/a.py", "path"), ("/etc/a.py", "ok")],
)
def test_without_a_root_paths_must_still_be_absolute_and_normalised(path: str, reason: str) -> None:
    broker = make("broker", root=None)
    frames = signed(broker, pack("edges", {"edges": [[path, "/x.py"]]}))

    assert fuzz_one(broker, frames) == reason


def test_the_longest_message_is_accepted() -> None:
    body = {"message": "m" * MAX_TEXT, "request": "status"}

    assert make("client").decode(make("broker").encode("error", body)).body == body


def test_replayed_frames_are_dropped() -> None:
    broker, client = make("broker"), make("client")
    first = broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"])
    second = broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"])

    client.decode(first)
    assert rejected(client, first) == "replayed"
    client.decode(second)
    assert rejected(client, first) == "replayed"  # older than the last one seen
    assert client.dropped == Counter({"replayed": 2})


def test_a_routed_request_is_split_and_replays_are_dropped() -> None:
    broker, client = make("broker"), make("client")
    frames = [b"\x00peer", *client.encode("hello", SAMPLES["request"]["hello"])]

    identity, message = broker.decode_routed(frames)

    assert identity == b"\x00peer" and message.kind == "hello"
    with pytest.raises(ProtocolError, match="replayed"):
        broker.decode_routed(frames)
    with pytest.raises(ProtocolError) as info:
        broker.decode_routed(frames[1:2])
    assert info.value.reason == "frames"
    assert broker.dropped == Counter({"replayed": 1, "frames": 1})


def test_a_dropped_message_does_not_advance_the_replay_table() -> None:
    client = make("client")
    bad = signed(client, pack("bye", {"epoch": 5}, counter=9))
    good = signed(client, pack("bye", {"epoch": "e"}, counter=1))

    assert fuzz_one(client, bad) == "schema"
    assert fuzz_one(client, good) == "ok"


def test_the_replay_table_is_bounded() -> None:
    client = make("client")
    first = make("broker").encode("bye", {"epoch": "e"})
    client.decode(first)

    for _ in range(REPLAY_SENDERS):
        client.decode(make("broker").encode("bye", {"epoch": "e"}))

    # The first sender was forgotten: memory stays bounded, at the price of this old replay.
    assert fuzz_one(client, first) == "ok"


def test_oversized_is_checked_before_the_signature() -> None:
    client = make("client", max_payload=100)
    frames = make("broker").encode("error", {"message": "m" * 200, "request": "x"})

    assert rejected(client, frames) == "oversized"
    assert rejected(client, wire(*parts(frames)[:2], b"not a mac")) == "oversized"
    assert client.dropped == Counter({"oversized": 2})


def test_drops_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    client = make("client")
    with caplog.at_level(logging.DEBUG, logger="relmod.protocol"):
        fuzz_one(client, [VERSION + b"\0"])

    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "unsigned" in caplog.records[0].getMessage()


def test_the_forged_check_comes_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpacked an unverified payload")

    monkeypatch.setattr(msgpack, "unpackb", explode)
    client = make("client")
    frames = make("broker", key=new_key()).encode("bye", {"epoch": "e"})

    assert fuzz_one(client, frames) == "forged"


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ_CODEC = make("client")
FUZZ_BROKER = make("broker")
OUTCOMES = {"ok", *REASONS}
VALID = [
    FUZZ_BROKER.encode(kind, body)
    for d in ("publish", "reply")
    for kind, body in SAMPLES[d].items()
]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from([A, B, ROOT, "/etc/passwd", "../x", "e1"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["epoch", "seq", "path"]), children, max_size=4
        )
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=5))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    assert fuzz_one(FUZZ_CODEC, frames) in REASONS


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_signed_payloads(payload: bytes) -> None:
    assert fuzz_one(FUZZ_CODEC, signed(FUZZ_CODEC, payload)) in OUTCOMES


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("sid")),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
    st.integers(0, 2),
)
def test_fuzz_mutated_valid_frames(
    frames: list[bytes], edits: list[tuple[int, int, str]], resign: bool, target: int
) -> None:
    """Edits to one part of a valid message (version, payload or mac), re-signed or not."""
    mutated = [bytearray(part) for part in parts(frames)]
    data = mutated[target]
    for position, value, operation in edits:
        index = position % (len(data) + 1)
        if operation == "s" and index < len(data):
            data[index] = value
        elif operation == "i":
            data.insert(index, value)
        elif index < len(data):
            del data[index]
    version, payload, mac = (bytes(part) for part in mutated)
    out = signed(FUZZ_CODEC, payload, version) if resign else wire(version, payload, mac)

    assert fuzz_one(FUZZ_CODEC, out) in OUTCOMES


@FUZZ
@given(
    st.sampled_from(sorted({*SCHEMAS["publish"], *SCHEMAS["reply"], *SCHEMAS["request"], "x"})),
    msgpack_values,
    st.integers(min_value=-1, max_value=2**64 - 1),
)
def test_fuzz_signed_envelopes_with_random_bodies(kind: str, body: Any, counter: int) -> None:
    payload = msgpack.packb({"k": kind, "s": b"F" * 16, "n": counter, "b": body})

    assert fuzz_one(FUZZ_CODEC, signed(FUZZ_CODEC, payload)) in OUTCOMES


# --- constants and sockets --------------------------------------------------------------------


def test_epochs_and_keys_are_fresh() -> None:
    assert len({new_epoch() for _ in range(100)}) == 100
    assert len(new_key()) == 32 and new_key() != new_key()


Sockets = Callable[[int], "zmq.Socket[bytes]"]


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    """Make configured sockets; all are closed, and the context ended, after the test."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    made: list[zmq.Socket[bytes]] = []

    def make_socket(kind: int) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        configure_socket(sock)
        made.append(sock)
        return sock

    yield make_socket
    for sock in made:
        sock.close()
    ctx.term()  # returns at once only because configure_socket set LINGER 0


def receive(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), "nothing arrived in time"
    return sock.recv_multipart()


def test_configure_socket_sets_the_options(sockets: Sockets) -> None:
    sock = sockets(zmq.DEALER)

    assert sock.getsockopt(zmq.LINGER) == 0
    assert sock.getsockopt(zmq.MAXMSGSIZE) == MAX_PAYLOAD + 1024
    assert sock.getsockopt(zmq.SNDHWM) == sock.getsockopt(zmq.RCVHWM) == 10_000


def test_pub_sub_carries_signed_messages_and_drops_forged_ones(
    sockets: Sockets, tmp_path: Path
) -> None:
    broker, client, intruder = make("broker"), make("client"), make("broker", key=new_key())
    pub, sub = sockets(zmq.PUB), sockets(zmq.SUB)
    endpoint = f"ipc://{tmp_path}/pub"
    pub.bind(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    # A SUB misses what is published before its subscription is live: heartbeat until one lands.
    while not sub.poll(20):
        pub.send_multipart(broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"]))

    pub.send_multipart(intruder.encode("invalidate", BODY))
    pub.send_multipart(broker.encode("invalidate", BODY))
    seen: list[str] = []
    while "invalidate" not in seen:
        try:
            message = client.decode(receive(sub))
        except ProtocolError as err:
            seen.append(err.reason)
        else:
            if message.kind != "heartbeat":
                seen.append(message.kind)
                assert message.body == BODY and message.sender == broker.sender

    assert seen == ["forged", "invalidate"]
    assert client.dropped == Counter({"forged": 1})


def test_dealer_router_carries_requests_and_replies(
    sockets: Sockets,
) -> None:
    broker, client, intruder = make("broker"), make("client"), make("client", key=new_key())
    router, dealer = sockets(zmq.ROUTER), sockets(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")

    hello = client.encode("hello", SAMPLES["request"]["hello"])
    dealer.send_multipart(hello)
    identity, request = broker.decode_routed(receive(router))
    router.send_multipart([identity, *broker.encode("welcome", SAMPLES["reply"]["welcome"])])
    reply = client.decode(receive(dealer))

    dealer.send_multipart(intruder.encode("sync", {}))
    dealer.send_multipart(hello)  # captured and sent again
    reasons = []
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            broker.decode_routed(receive(router))
        reasons.append(info.value.reason)

    assert request.kind == "hello" and request.body == SAMPLES["request"]["hello"]
    assert reply.kind == "welcome" and reply.body["root"] == ROOT
    assert reasons == ["forged", "replayed"]
    assert broker.dropped == Counter({"forged": 1, "replayed": 1})


def test_a_feed_subscription_never_receives_activity(sockets: Sockets, tmp_path: Path) -> None:
    broker, client = make("broker"), make("client")
    pub, feed, follower = sockets(zmq.PUB), sockets(zmq.SUB), sockets(zmq.SUB)
    endpoint = f"ipc://{tmp_path}/pub"
    pub.bind(endpoint)
    feed.setsockopt(zmq.SUBSCRIBE, FEED_TOPIC)
    follower.setsockopt(zmq.SUBSCRIBE, b"")
    for sub in (feed, follower):
        sub.connect(endpoint)
    while not (feed.poll(20) and follower.poll(20)):
        pub.send_multipart(broker.encode("heartbeat", SAMPLES["publish"]["heartbeat"]))
    for sub in (feed, follower):
        while sub.poll(50):
            sub.recv_multipart()

    pub.send_multipart(broker.encode("activity", SAMPLES["publish"]["activity"]))
    pub.send_multipart(broker.encode("bye", {"epoch": "e1"}))

    assert client.decode(receive(follower)).kind == "activity"
    assert client.decode(receive(follower)).kind == "bye"
    assert make("client").decode(receive(feed)).kind == "bye"  # the activity never came


# -- file ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "width"),
    [([], 2), ([0], 2), ([65535, 3, 3], 2), ([65536], 4), ([0, MAX_FILE_ID], 4)],
)
def test_packed_ids_come_back_sorted_and_unique_in_the_narrowest_width(
    ids: list[int], width: int
) -> None:
    packed = pack_ids(ids)
    assert packed[0] == width and len(packed) == 1 + width * len(set(ids))
    assert unpack_ids(packed).tolist() == sorted(set(ids))
    assert count_ids(packed) == len(set(ids))


@pytest.mark.parametrize("bad", [-1, MAX_FILE_ID + 1])
def test_an_id_outside_32_bits_cannot_be_packed(bad: int) -> None:
    with pytest.raises(ValueError, match="file ids lie in"):
        pack_ids([1, bad])


def test_a_change_affecting_5000_modules_is_a_small_invalidation() -> None:
    """The wire format's size for issue 13's case (its speed is in benchmarks/bench_wire.py)."""
    broker, client = Codec(KEY, role="broker", root=ROOT), Codec(KEY, role="client", root=ROOT)
    body = {
        "epoch": new_epoch(),
        "seq": 1,
        "changed": [[17, A, "ab" * 16]],
        "affected": pack_ids(range(3000, 8000)),
        "names": [],
    }
    frames = broker.encode("invalidate", body)
    assert len(frames[0]) < 11_000  # 2 bytes an id, and the rest
    message = client.decode(frames)
    assert unpack_ids(message.body["affected"]).tolist() == list(range(3000, 8000))


def test_a_codec_refuses_to_send_a_malformed_id_set() -> None:
    broker = Codec(KEY, role="broker", root=ROOT)
    body = {**SAMPLES["publish"]["invalidate"], "affected": b"\x02\x00"}
    with pytest.raises(ValueError, match="packed id set"):
        broker.encode("invalidate", body)


# --- the feed's one-function checks agree with the general checker -----------------------------


def _general_verdict(kind: str, body: Any) -> bool:
    try:
        _CHECKS["publish"][kind](body, ROOT, MAX_PAYLOAD)
    except _Rejected:
        return False
    return True


@st.composite
def near_publications(draw: st.DrawFn) -> tuple[str, Any]:
    """A heartbeat or invalidation body, valid or with fields and items changed at random."""
    kind = draw(st.sampled_from(sorted(_FAST_CHECKS)))
    body: Any = copy.deepcopy(SAMPLES["publish"][kind])
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(body)))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            body[field] = draw(msgpack_values)
        elif choice == 1 and isinstance(body[field], list):  # an entry changed or added
            entry = draw(st.lists(msgpack_values | st.sampled_from([0, 1, 2**32]), max_size=4))
            body[field] = [*body[field], entry]
        elif choice == 2:
            del body[field]
        else:
            body[draw(st.text(max_size=6))] = 1
    return kind, body


@FUZZ
@given(near_publications())
def test_a_fast_check_says_valid_only_when_the_general_one_does(drawn: tuple[str, Any]) -> None:
    kind, body = drawn
    if _FAST_CHECKS[kind](body, ROOT, MAX_PAYLOAD):
        assert _general_verdict(kind, body)


def test_the_fast_checks_pass_the_samples_and_a_codec_drops_what_they_doubt() -> None:
    for kind, check in _FAST_CHECKS.items():
        assert check(SAMPLES["publish"][kind], ROOT, MAX_PAYLOAD)
    broken = {**SAMPLES["publish"]["invalidate"], "names": [[1, "/etc/passwd"]]}
    assert not _invalidate_ok(broken, ROOT, MAX_PAYLOAD)
    frames = signed(FUZZ_CODEC, pack("invalidate", broken))
    assert rejected(make("client"), frames) == "path"  # the general checker said why
