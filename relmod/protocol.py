"""The wire protocol between the broker and its clients, written once for both ends.

Every message on every socket (PUB/SUB and DEALER/ROUTER) is one frame, signed with the
project's key; :class:`Codec` packs and checks them. The table :data:`SCHEMAS` lists every kind
of message and the shape of its body, per direction:

* ``"publish"``: the broker's PUB socket to every client's SUB socket;
* ``"request"``: a client's DEALER socket to the broker's ROUTER socket;
* ``"reply"``: the broker's ROUTER socket back to one client's DEALER socket.

Five names (``status``, ``graph``, ``hashes``, ``list``, ``source``) are both a request and a
reply. One publication, ``activity`` (what clients reported: their reloads and failures), starts
with its own version, :data:`ACTIVITY_VERSION`, instead of :data:`VERSION`: a client's feed
subscribes to :data:`FEED_TOPIC` only, so ZeroMQ, which filters on the publisher's side, never
sends a feed the fleet's chatter; ``relmod status --follow`` subscribes to everything.

Answers that grow with the project come in pages of about :data:`PAGE_BYTES`: a reply names
where the next page starts (``next``), and the asker sends the same request again with
``after`` set to it, until ``next`` is None.

File ids: the broker numbers every file (and folder) it speaks of, 0, 1, 2..., anew with each
epoch, and never gives one id to two paths within an epoch. Invalidations name the affected
files by id, packed (:func:`pack_ids`), and the changed files by id, path and hash; a client
learns the whole table from a full ``changes`` answer (every id with its path and hash, in pages
by id), and every id the broker assigns later travels with its path in ``names`` (or in
``changed``) the first time a publication uses it, so a client that applied every publication
since its full answer knows every id it meets. A client that meets an id it does not know drops
the message and asks for the whole table again.

A codec is made for one side, ``role="broker"`` or ``role="client"``: a broker sends replies and
publications and receives requests, a client the other way round, and on each side the kinds a
codec can send, and those it can receive, are unambiguous.

Example:
    >>> key = new_key()
    >>> broker, client = Codec(key, role="broker"), Codec(key, role="client")
    >>> frames = broker.encode("heartbeat", {"epoch": "e1", "seq": 0, "time": 1.5})
    >>> message = client.decode(frames)
    >>> message.kind, message.body, message.counter
    ('heartbeat', {'epoch': 'e1', 'seq': 0, 'time': 1.5}, 1)
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from hashlib import blake2b
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import msgpack  # type: ignore[import-untyped]
import zmq

from relmod.errors import ProtocolError

logger = logging.getLogger(__name__)

VERSION: Final = b"relmod/3"
ACTIVITY_VERSION: Final = b"relmod-activity/3"
"""What an ``activity`` publication starts with (the other kinds start with :data:`VERSION`)."""
_HEAD: Final = VERSION + b"\0"
_ACTIVITY_HEAD: Final = ACTIVITY_VERSION + b"\0"
FEED_TOPIC: Final = b"relmod/"
"""What a client's feed subscribes to: every publication but ``activity``."""
ACTIVITY_KINDS: Final = frozenset({"activity"})
HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds between two broker heartbeats."""

MAX_PAYLOAD: Final = 4 * 1024 * 1024
PAGE_BYTES: Final = 1024 * 1024
"""About how many bytes of paths one page of a paged answer (changes, hashes, graph, list)
carries, well below :data:`MAX_PAYLOAD` whatever the size of the project."""
MAX_STR: Final = 4096
"""Longest string field, in characters (paths, hashes, epochs, names)."""
MAX_TEXT: Final = 16384
"""Longest message-like string field (error messages), in characters."""
MAX_ITEMS: Final = 200_000
"""Most items in one list or map."""
MAX_FREEFORM_DEPTH: Final = 32
"""Deepest nesting allowed inside a free-form value (the status map)."""
REPLAY_SENDERS: Final = 4096
"""How many senders the replay guard remembers (least recently heard from is forgotten first)."""
SOCKET_HWM: Final = 10_000

MAX_FILE_ID: Final = 2**32 - 1
"""The largest file id (ids travel as unsigned 32-bit ints at most)."""
ID_FORMS: Final = {2: "H", 4: "I"}
"""A packed id set's first byte: how many bytes each id takes (and its array type code)."""

SENDER_BYTES: Final = 16
MAC_BYTES: Final = 32
MAX_COUNTER: Final = 2**63 - 1

REASONS: Final = (
    "frames", "version", "oversized", "unsigned", "forged",
    "malformed", "schema", "path", "replayed",
)  # fmt: skip
"""Every reason :meth:`Codec.decode` drops a message for, in the order it checks them."""

Role = Literal["broker", "client"]
Direction = Literal["request", "reply", "publish"]

# A type spec is a name ("str", "path", ...) or a tuple built by the helpers below.
Spec: TypeAlias = str | tuple[Any, ...]

STR: Final = "str"  # str of at most MAX_STR characters
TEXT: Final = "text"  # str of at most MAX_TEXT characters
INT: Final = "int"  # int in 0 .. 2**63-1 (every int on the wire is a count, an id or a line)
FLOAT: Final = "float"  # finite, non-negative int or float
BOOL: Final = "bool"
BLOB: Final = "bytes"  # bytes of at most max_payload
PATH: Final = "path"  # absolute, normalised str inside the codec's root
FILE_ID: Final = "id"  # int in 0 .. MAX_FILE_ID: a file id of this epoch
IDS: Final = "ids"  # a packed id set (see pack_ids), at most max_payload bytes
FREEFORM: Final = "freeform"  # map with str keys; msgpack-safe values, bounded depth
BODY: Final = "body"  # a map; the envelope's body, checked against its kind's fields afterwards


def optional(spec: Spec) -> Spec:
    """The spec of a value that may also be None."""
    return ("optional", spec)


def list_of(spec: Spec) -> Spec:
    """The spec of a list whose items all match ``spec``."""
    return ("list", spec)


def map_of(key: Spec, value: Spec) -> Spec:
    """The spec of a map from ``key`` to ``value``."""
    return ("map", key, value)


def tuple_of(*items: Spec) -> Spec:
    """The spec of a fixed-length list whose i-th item matches ``items[i]``."""
    return ("tuple", *items)


def record(**fields: Spec) -> Spec:
    """The spec of a map with exactly these str keys."""
    return ("record", fields)


_BROKEN_ENTRY: Final = record(path=PATH, lineno=optional(INT), message=TEXT)
# What a client runs of one file: the hash of the version in use and how often it ran; the hash
# of a version that failed, with where and why ("RuntimeError: boom" at line 3), or None.
_RUN_ENTRY: Final = record(
    path=PATH,
    hash=optional(STR),
    version=INT,
    failed=optional(STR),
    lineno=optional(INT),
    message=optional(TEXT),
)
# One thing that happened in a client: kind "reloaded" or "failed" (then lineno and message).
_CLIENT_EVENT: Final = record(
    kind=STR, path=PATH, time=FLOAT, lineno=optional(INT), message=optional(TEXT)
)

# A file the broker names: [id, path, content hash], the hash None for a deleted file.
_FILE: Final = tuple_of(FILE_ID, PATH, optional(STR))
# An id and its path, without a hash (a folder, or a file whose content is not the point).
_NAME: Final = tuple_of(FILE_ID, PATH)

SCHEMAS: Final[dict[Direction, dict[str, dict[str, Spec]]]] = {
    "publish": {
        "heartbeat": {"epoch": STR, "seq": INT, "time": FLOAT},
        "invalidate": {
            "epoch": STR,
            "seq": INT,
            "changed": list_of(_FILE),  # the files whose content changed (or that vanished)
            "affected": IDS,  # every file to mark stale: the changed ones and their dependents
            "names": list_of(_NAME),  # ids of "affected" this epoch's publications never named
        },
        "broken": {
            "epoch": STR,
            "seq": INT,
            "path": PATH,
            "lineno": optional(INT),
            "message": TEXT,
        },
        "bye": {"epoch": STR},
        # What one client reported, republished for `relmod status --follow`; starts with
        # ACTIVITY_VERSION and carries no seq (it changes no module anywhere).
        "activity": {
            "epoch": STR,
            "client": STR,
            "events": list_of(_CLIENT_EVENT),
            "lost": INT,  # events the client could not keep (too many at once)
        },
    },
    "request": {
        "hello": {"client": STR, "pid": INT, "host": STR, "argv": STR},
        "since": {"epoch": STR, "seq": INT},
        "edges": {"edges": list_of(tuple_of(PATH, PATH))},
        "report": {
            "client": STR,
            "seq": INT,
            "stale": INT,
            "error": optional(TEXT),
            "patched": optional(INT),
            "unpatched": optional(INT),
        },
        # What changed in the files a client runs since its last "running" (a delta, sent a
        # moment after reloads happen), and the reloads and failures themselves.
        "running": {
            "client": STR,
            "files": list_of(_RUN_ENTRY),
            "events": list_of(_CLIENT_EVENT),
            "lost": INT,
        },
        "status": {},
        "sync": {},
        "graph": {"after": optional(tuple_of(PATH, PATH))},
        "hashes": {"after": FILE_ID},
        "list": {"what": STR, "after": STR},
        "paths": {"paths": list_of(STR)},
        "source": {"hash": STR},
        "goodbye": {"client": STR},
    },
    "reply": {
        "welcome": {"epoch": STR, "seq": INT, "root": PATH, "heartbeat": FLOAT},
        "changes": {
            "epoch": STR,
            "seq": INT,
            "full": BOOL,
            # full: the first page of every id with its path and hash; else the files changed
            # after the asker's seq, each with its newest hash
            "files": list_of(_FILE),
            "affected": IDS,  # not full: every id invalidated after the asker's seq
            # full: the page's ids without content (folders); else the ids named after the
            # asker's seq that "files" does not carry
            "names": list_of(_NAME),
            "broken": list_of(_BROKEN_ENTRY),
            "next": optional(FILE_ID),  # a full answer continues with "hashes" after this id
        },
        "ack": {},
        "status": {"status": FREEFORM},
        "synced": {"epoch": STR, "seq": INT},
        "graph": {
            "edges": list_of(tuple_of(PATH, PATH, list_of(STR))),
            "next": optional(tuple_of(PATH, PATH)),  # ask "graph" again after this edge
            "total": INT,
        },
        "hashes": {"files": list_of(_FILE), "names": list_of(_NAME), "next": optional(FILE_ID)},
        "list": {"items": list_of(FREEFORM), "next": optional(STR), "total": INT},
        "source": {"hash": STR, "data": optional(BLOB)},
        "error": {"message": TEXT, "request": STR},
    },
}
"""kind -> {field: type spec} per direction. Every field is required and no other is allowed."""

_ENVELOPE: Final[dict[str, Spec]] = {"k": STR, "s": BLOB, "n": INT, "b": BODY}

_SENDS: Final[dict[Role, tuple[Direction, ...]]] = {
    "broker": ("reply", "publish"),
    "client": ("request",),
}
_RECEIVES: Final[dict[Role, tuple[Direction, ...]]] = {
    "broker": ("request",),
    "client": ("reply", "publish"),
}
# A client reads replies and publications with one codec, so their kinds must not overlap.
assert not SCHEMAS["reply"].keys() & SCHEMAS["publish"].keys()


class Message(NamedTuple):
    """One decoded, verified message.

    Attributes:
        kind: the message kind, a key of :data:`SCHEMAS`.
        body: the body, already checked against the kind's schema.
        sender: the 16 random bytes naming the codec that sent it.
        counter: the sender's message counter (strictly increasing per sender).
    """

    kind: str
    body: dict[str, Any]
    sender: bytes
    counter: int


_new_message = functools.partial(tuple.__new__, Message)
"""``Message`` from a tuple of its fields, with no Python frame (the decoder's hot path)."""


class _Rejected(Exception):
    """A value broke its schema; ``reason`` is "schema" or "path".

    Raised where the value is checked, with what is wrong (``problem``); each container it
    passes on the way out adds where it sits (``at``, innermost first), so no location text is
    made for a value that is fine.
    """

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem
        self.at: list[str] = []

    def inside(self, where: str) -> _Rejected:
        """Note the container the rejected value sits in (outward from the value); returns
        self, to raise."""
        self.at.append(where)
        return self

    @property
    def detail(self) -> str:
        """``where: problem``, e.g. ``invalidate.changed[3][1]: ... is not an absolute path``."""
        if not self.at:
            return self.problem
        return f"{''.join(reversed(self.at))}: {self.problem}"


Check: TypeAlias = Callable[[Any, str | None, int], None]
"""A compiled spec: ``check(value, root, max_bytes)`` raises :class:`_Rejected`, else None."""


def _compile(spec: Spec) -> Check:
    """The checker of one spec, made once per spec when the module loads.

    Checking walks the spec's closures, never the value's shape, so its depth is that of the
    schema; and a value pays for its own checks only, not for finding which ones apply.
    """
    if isinstance(spec, tuple):
        shape = spec[0]
        if shape == "optional":
            return _check_optional(_compile(spec[1]))
        if shape == "list":
            return _check_list(_compile(spec[1]))
        if shape == "tuple":
            return _check_tuple(tuple(_compile(item) for item in spec[1:]))
        if shape == "map":
            return _check_map(_compile(spec[1]), _compile(spec[2]))
        if shape == "record":
            return _compile_fields(spec[1])
        raise AssertionError(f"unknown spec {spec!r}")
    try:
        return _LEAVES[spec]
    except KeyError:
        raise AssertionError(f"unknown spec {spec!r}") from None


def _compile_fields(fields: Mapping[str, Spec]) -> Check:
    """The checker of a map that must have exactly ``fields``."""
    names = frozenset(fields)
    checks = tuple((name, _compile(spec)) for name, spec in fields.items())

    def check_fields(value: Any, root: str | None, max_bytes: int) -> None:
        if not isinstance(value, dict):
            raise _Rejected("schema", f"expected a map, got {type(value).__name__}")
        if value.keys() != names:
            missing = names - value.keys()
            extra = value.keys() - names
            parts = []
            if missing:
                parts.append(f"missing {', '.join(sorted(missing))}")
            if extra:
                parts.append(f"unexpected {', '.join(sorted(map(repr, extra)))}")
            raise _Rejected("schema", "; ".join(parts))
        name = ""
        try:
            for name, check in checks:
                check(value[name], root, max_bytes)
        except _Rejected as rejected:
            rejected.inside(f".{name}")
            raise

    return check_fields


def _check_optional(inner: Check) -> Check:
    def check_optional(value: Any, root: str | None, max_bytes: int) -> None:
        if value is not None:
            inner(value, root, max_bytes)

    return check_optional


def _check_list(item: Check) -> Check:
    def check_list(value: Any, root: str | None, max_bytes: int) -> None:
        _check_array(value, None)
        index = 0
        try:
            for index in range(len(value)):
                item(value[index], root, max_bytes)
        except _Rejected as rejected:
            rejected.inside(f"[{index}]")
            raise

    return check_list


def _check_tuple(items: tuple[Check, ...]) -> Check:
    length = len(items)

    def check_tuple(value: Any, root: str | None, max_bytes: int) -> None:
        _check_array(value, length)
        index = 0
        try:
            for index, check in enumerate(items):
                check(value[index], root, max_bytes)
        except _Rejected as rejected:
            rejected.inside(f"[{index}]")
            raise

    return check_tuple


def _check_map(key_check: Check, item_check: Check) -> Check:
    def check_map(value: Any, root: str | None, max_bytes: int) -> None:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise _Rejected("schema", f"expected a map of at most {MAX_ITEMS} items")
        for key, item in value.items():
            try:
                key_check(key, root, max_bytes)
            except _Rejected as rejected:
                rejected.inside(" key")
                raise
            try:
                item_check(item, root, max_bytes)
            except _Rejected as rejected:
                rejected.inside(f"[{key!r:.80}]")
                raise

    return check_map


def _check_str(value: Any, root: str | None, max_bytes: int) -> None:
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise _Rejected("schema", f"expected a str of at most {MAX_STR} characters")


def _check_text(value: Any, root: str | None, max_bytes: int) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Rejected("schema", f"expected a str of at most {MAX_TEXT} characters")


def _check_int(value: Any, root: str | None, max_bytes: int) -> None:
    if type(value) is not int or not 0 <= value <= MAX_COUNTER:
        raise _Rejected("schema", f"expected an int in 0..2**63-1, got {value!r:.40}")


def _check_float(value: Any, root: str | None, max_bytes: int) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise _Rejected("schema", f"expected a finite number >= 0, got {value!r:.40}")


def _check_bool(value: Any, root: str | None, max_bytes: int) -> None:
    if type(value) is not bool:
        raise _Rejected("schema", f"expected a bool, got {type(value).__name__}")


def _check_blob(value: Any, root: str | None, max_bytes: int) -> None:
    if not isinstance(value, bytes) or len(value) > max_bytes:
        raise _Rejected("schema", f"expected bytes of at most {max_bytes} bytes")


def _check_file_id(value: Any, root: str | None, max_bytes: int) -> None:
    if type(value) is not int or not 0 <= value <= MAX_FILE_ID:
        raise _Rejected("schema", f"expected a file id in 0..2**32-1, got {value!r:.40}")


def _check_body(value: Any, root: str | None, max_bytes: int) -> None:
    if not isinstance(value, dict):
        raise _Rejected("schema", f"expected a map, got {type(value).__name__}")


def _check_array(value: Any, length: int | None) -> None:
    """Check a list (a tuple is accepted too: the sender may build one, msgpack packs it alike)."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
        raise _Rejected("schema", f"expected a list of at most {MAX_ITEMS} items")
    if length is not None and len(value) != length:
        raise _Rejected("schema", f"expected a list of {length} items, got {len(value)}")


def _check_path(value: Any, root: str | None, max_bytes: int) -> None:
    """A path is an absolute, normalised str; with a root it must also lie inside the root
    (:func:`_path_ok` says whether; this says why not)."""
    if _path_ok(value, root):
        return
    if not isinstance(value, str) or len(value) > MAX_STR:
        raise _Rejected("schema", f"expected a path str of at most {MAX_STR} characters")
    if root is not None and _path_ok(value, None):
        raise _Rejected("path", f"{value!r:.200} lies outside the project {root}")
    raise _Rejected("path", f"{value!r:.200} is not an absolute, normalised path")


def _check_ids(value: Any, root: str | None, max_bytes: int) -> None:
    """A packed id set: a known width byte, then whole ids (checked in O(1): no id is read)."""
    if not isinstance(value, bytes) or not 0 < len(value) <= max_bytes:
        raise _Rejected("schema", f"expected a packed id set of at most {max_bytes} bytes")
    width = value[0]
    if width not in ID_FORMS or (len(value) - 1) % width:
        raise _Rejected("schema", f"not a packed id set (width byte {width}, {len(value)} bytes)")


def pack_ids(ids: Iterable[int]) -> bytes:
    """Pack file ids for an ``IDS`` field: a width byte (2 or 4), then the sorted ids, each an
    unsigned little-endian int of that width (2 bytes while every id is below 65,536).

    5,000 ids of a 10,000-file project take 10,001 bytes; unpacking them is one copy.

    >>> pack_ids([3, 1, 3]).hex(), pack_ids([70000]).hex()
    ('0201000300', '0470110100')
    >>> list(unpack_ids(pack_ids([5, 2])))
    [2, 5]

    Raises:
        ValueError: an id outside 0..MAX_FILE_ID.
    """
    ordered = sorted(set(ids))
    if ordered and not 0 <= ordered[0] <= ordered[-1] <= MAX_FILE_ID:
        raise ValueError(f"file ids lie in 0..{MAX_FILE_ID}; got {ordered[0]}..{ordered[-1]}")
    width = 2 if not ordered or ordered[-1] < 2**16 else 4
    packed = array(ID_FORMS[width], ordered)
    if sys.byteorder != "little":
        packed.byteswap()
    return bytes((width,)) + packed.tobytes()


def unpack_ids(data: bytes) -> array[int]:
    """The ids of a packed id set (one the codec checked: see :func:`pack_ids`)."""
    ids = array(ID_FORMS[data[0]])
    ids.frombytes(memoryview(data)[1:])
    if sys.byteorder != "little":
        ids.byteswap()
    return ids


def count_ids(data: bytes) -> int:
    """How many ids a (checked) packed id set holds, without unpacking it.

    >>> count_ids(pack_ids(range(10)))
    10
    """
    return (len(data) - 1) // data[0]


def _check_freeform(value: Any, root: str | None, max_bytes: int) -> None:
    """A str-keyed map of msgpack-safe values, walked without recursion so depth is bounded."""
    if not isinstance(value, dict):
        raise _Rejected("schema", f"expected a map, got {type(value).__name__}")
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_FREEFORM_DEPTH:
            raise _Rejected("schema", f"nested deeper than {MAX_FREEFORM_DEPTH} levels")
        if item is None or type(item) in (bool, int, float):
            continue
        if isinstance(item, str):
            if len(item) > MAX_TEXT:
                raise _Rejected("schema", f"a str longer than {MAX_TEXT} characters")
        elif isinstance(item, bytes):
            if len(item) > max_bytes:
                raise _Rejected("schema", f"bytes longer than {max_bytes} bytes")
        elif isinstance(item, (list, tuple)):
            if len(item) > MAX_ITEMS:
                raise _Rejected("schema", f"a list longer than {MAX_ITEMS} items")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            if len(item) > MAX_ITEMS:
                raise _Rejected("schema", f"a map larger than {MAX_ITEMS} items")
            if not all(isinstance(key, str) for key in item):
                raise _Rejected("schema", "a map key that is not a str")
            stack.extend((child, depth + 1) for child in item.values())
        else:
            raise _Rejected("schema", f"{type(item).__name__} is not msgpack-safe")


_LEAVES: Final[dict[str, Check]] = {
    STR: _check_str,
    TEXT: _check_text,
    INT: _check_int,
    FLOAT: _check_float,
    BOOL: _check_bool,
    BLOB: _check_blob,
    PATH: _check_path,
    FILE_ID: _check_file_id,
    IDS: _check_ids,
    FREEFORM: _check_freeform,
    BODY: _check_body,
}
_CHECKS: Final[dict[Direction, dict[str, Check]]] = {
    direction: {kind: _compile_fields(fields) for kind, fields in kinds.items()}
    for direction, kinds in SCHEMAS.items()
}
""":data:`SCHEMAS`, compiled: direction -> kind -> the body's checker."""
_CHECK_ENVELOPE: Final = _compile_fields(_ENVELOPE)


# -- the feed's common case, checked in one function ------------------------------------------
#
# Every client's feed decodes a heartbeat a second and an invalidation per save, woken from
# sleep, when every line of code it runs is a cache miss: the general checker's closures (one
# per field and item) cost an invalidation 50 us there. These say "valid" for the common case in
# one function each; any doubt (False) goes to the general checker, which gives the reason. So
# each must accept only what the general checker accepts (tests/test_protocol.py holds them to
# it with generated bodies).


_PART = r"(?!\.\.?(?:/|\Z))[^/\x00]+"  # a path's part: not empty, ".", "..", nor holding a NUL


@functools.lru_cache(maxsize=8)
def _path_pattern(root: str | None) -> re.Pattern[str]:
    """What a good path matches: absolute, normalised, and (with a root) the root or below it.

    Normalised as ``os.path.normpath`` leaves it: no empty, "." or ".." part, no trailing "/".
    ``"//x"``, which normpath keeps on POSIX but which names the same file as ``"/x"``, is
    refused as an alias. A pattern, so that checking a path is one call into C (the feed's hot
    path checks every path of every publication).

    >>> bool(_path_pattern("/p").fullmatch("/p/a.py")), bool(_path_pattern("/p").fullmatch("/pa"))
    (True, False)
    """
    below = f"(?:/{_PART})*"
    if root is None or root == "/":
        return re.compile(f"/(?:{_PART}{below})?")
    return re.compile(re.escape(root) + below)


def _path_ok(value: Any, root: str | None) -> bool:
    """Whether ``value`` is a path str, absolute, normalised and (with a root) inside the root
    (see :func:`_path_pattern`)."""
    return (
        type(value) is str
        and len(value) <= MAX_STR
        and _path_pattern(root).fullmatch(value) is not None
    )


_INVALIDATE_FIELDS: Final = frozenset(SCHEMAS["publish"]["invalidate"])
_HEARTBEAT_FIELDS: Final = frozenset(SCHEMAS["publish"]["heartbeat"])
_ENVELOPE_FIELDS: Final = frozenset(_ENVELOPE)


def _invalidate_ok(body: Any, root: str | None, max_bytes: int) -> bool:
    """Whether an ``invalidate`` body is valid (the general checker's verdict, in one go: no
    Python call per entry)."""
    if type(body) is not dict or body.keys() != _INVALIDATE_FIELDS:
        return False
    epoch, seq, changed, affected, names = (
        body["epoch"], body["seq"], body["changed"], body["affected"], body["names"]
    )  # fmt: skip
    if not (
        type(epoch) is str
        and len(epoch) <= MAX_STR
        and type(seq) is int
        and 0 <= seq <= MAX_COUNTER
        and type(affected) is bytes
        and 0 < len(affected) <= max_bytes
        and affected[0] in ID_FORMS
        and (len(affected) - 1) % affected[0] == 0
        and type(changed) is list
        and len(changed) <= MAX_ITEMS
        and type(names) is list
        and len(names) <= MAX_ITEMS
    ):
        return False
    path_ok = _path_pattern(root).fullmatch
    # "changed" holds [id, path, hash or None] (_FILE), "names" [id, path] (_NAME).
    for size, entries in ((3, changed), (2, names)):
        for entry in entries:
            if type(entry) is not list or len(entry) != size:
                return False
            file_id, path = entry[0], entry[1]
            if not (
                type(file_id) is int
                and 0 <= file_id <= MAX_FILE_ID
                and type(path) is str
                and len(path) <= MAX_STR
                and path_ok(path) is not None
            ):
                return False
            if size == 3 and not (
                entry[2] is None or (type(entry[2]) is str and len(entry[2]) <= MAX_STR)
            ):
                return False
    return True


def _heartbeat_ok(body: Any, root: str | None, max_bytes: int) -> bool:
    """Whether a ``heartbeat`` body is valid (the general checker's verdict, in one go)."""
    if type(body) is not dict or body.keys() != _HEARTBEAT_FIELDS:
        return False
    epoch, seq, when = body["epoch"], body["seq"], body["time"]
    return (
        type(epoch) is str
        and len(epoch) <= MAX_STR
        and type(seq) is int
        and 0 <= seq <= MAX_COUNTER
        and type(when) in (int, float)
        and math.isfinite(when)
        and when >= 0
    )


_FAST_CHECKS: Final[dict[str, Callable[[Any, str | None, int], bool]]] = {
    "invalidate": _invalidate_ok,
    "heartbeat": _heartbeat_ok,
}
"""Publications with a one-function check (see above); the others take the general one."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not part of the relmod protocol")


def _describe(data: bytes) -> str:
    return repr(data[:40]) + ("..." if len(data) > 40 else "")


class Codec:
    """Signs, packs, checks and unpacks the messages of one side of a relmod connection.

    Every message is one ZeroMQ frame (one part: a multipart message costs a receiver a
    system call and a Python call per part, on every client's feed for every save)::

        version   b"relmod/3" (b"relmod-activity/3" for an ``activity`` publication, so that
                  a feed's subscription to b"relmod/" leaves it out)
        0x00      ends the version (no version holds one)
        payload   msgpack map {"k": kind (str), "s": sender (16 bytes),
                               "n": counter (int >= 1), "b": body (map)}
        mac       32 bytes: keyed BLAKE2b-256(key, version + 0x00 + payload)

    A ROUTER socket receives ``[identity, frame]`` and sends ``[identity, *codec.encode(...)]``;
    :meth:`decode_routed` splits the identity off. A client's feed reads its subscription frame
    by frame, so a publication of several frames comes apart there, each dropped on its own.

    The body's fields per kind are in :data:`SCHEMAS`. The bodies that name files use file ids
    (see the module docstring)::

        invalidate  {"epoch", "seq",
                     "changed":  [[id, path, hash or None (deleted)], ...],
                     "affected": packed ids,
                     "names":    [[id, path], ...]}      ids a client may not know yet
        changes     {"epoch", "seq", "full",
                     "files":    full: a page of [id, path, hash or None], in id order;
                                 else the files changed since the asker's seq
                     "affected": packed ids (empty when full), "names": [[id, path], ...],
                     "broken":   [...], "next": the id after which "hashes" continues}
        hashes      request {"after": id}; reply {"files", "names", "next"} as in changes

        packed ids  byte 0: width w (2 or 4); then the sorted ids, w bytes each,
                    unsigned little-endian (pack_ids / unpack_ids)

    The sender is 16 random bytes per codec (new ones in a forked child), and the counter goes
    up by one with every :meth:`encode`. The receiver remembers the last counter of each
    (direction, sender) pair, for the :data:`REPLAY_SENDERS` senders heard from most recently,
    and drops anything not newer. ZeroMQ keeps order on one connection only, which is why a
    broker's publications and replies are tracked apart. Encode and send on the thread that
    owns the socket, so the counters leave in the order they were taken.

    Attributes:
        role: ``"broker"`` or ``"client"``.
        root: the project folder every path must lie in, or None not to check containment.
        max_payload: the largest payload frame accepted or sent, in bytes.
        dropped: how many messages :meth:`decode` dropped, per reason (see :data:`REASONS`).

    Example:
        >>> key = new_key()
        >>> broker = Codec(key, role="broker", root="/project")
        >>> client = Codec(key, role="client", root="/project")
        >>> frames = client.encode("source", {"hash": "abc"})
        >>> identity, message = broker.decode_routed([b"\\x00id", *frames])
        >>> message.kind, message.body
        ('source', {'hash': 'abc'})
        >>> try:
        ...     broker.decode_routed([b"\\x00id", *frames])  # the same frames again
        ... except ProtocolError as err:
        ...     print(err.reason, broker.dropped[err.reason])
        replayed 1
    """

    def __init__(
        self,
        key: bytes,
        *,
        role: Role,
        root: str | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        """Make a codec.

        Args:
            key: the shared secret, 16 to 64 bytes (see :func:`new_key`).
            role: ``"broker"`` (sends replies and publications, receives requests) or
                ``"client"`` (sends requests, receives replies and publications).
            root: when given, paths in messages must lie inside this folder (give it in the
                form the broker sends paths in, i.e. its real path).
            max_payload: the largest payload frame, in bytes.

        Raises:
            ValueError: a short key, an unknown role, a relative root or a bad max_payload.
        """
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            raise ValueError("The protocol key must be 16 to 64 bytes; use new_key().")
        if role not in _SENDS:
            raise ValueError(f"The codec role must be 'broker' or 'client', not {role!r}.")
        if root is not None:
            if not os.path.isabs(root):
                raise ValueError(f"The codec root must be an absolute path, not {root!r}.")
            root = os.path.normpath(root)
        if max_payload < 1:
            raise ValueError(f"max_payload must be positive, not {max_payload!r}.")
        self.role: Role = role
        self.root = root
        self.max_payload = max_payload
        self.dropped: Counter[str] = Counter()
        # The MAC, keyed once (sign and decode share it; a partial is no Python call).
        self._mac = functools.partial(blake2b, key=key, digest_size=MAC_BYTES)
        # msgpack's strict limits, bound once: a call with ten keywords costs the feed's hot
        # path more than the unpacking of a small invalidation.
        self._unpack = functools.partial(
            msgpack.unpackb,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=4 * MAX_TEXT,  # UTF-8 takes at most 4 bytes per character
            max_bin_len=max_payload,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=0,  # no ext types, and so no msgpack timestamps (ext -1) either
        )
        self._send_directions = {
            kind: direction for direction in _SENDS[role] for kind in SCHEMAS[direction]
        }
        self._receive_directions = {
            kind: direction for direction in _RECEIVES[role] for kind in SCHEMAS[direction]
        }
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._sender = secrets.token_bytes(SENDER_BYTES)
        self._counter = 0
        self._last_seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    @property
    def sender(self) -> bytes:
        """The 16 bytes that name this codec's messages."""
        return self._sender

    def sign(self, signed: bytes | memoryview) -> bytes:
        """The MAC of what a frame signs: its version, the 0x00 after it, and its payload."""
        # BLAKE2b in its keyed mode is a MAC by design (no length extension, so no HMAC
        # construction around it), and CPython carries it itself: one call costs a client's
        # feed about 13 us after a quiet second, where HMAC-SHA256 through OpenSSL's lookup by
        # name cost 50-100 us.
        return self._mac(signed).digest()

    def seal(self, version: bytes, payload: bytes) -> bytes:
        """The signed frame of a version and a payload (see the class docstring)."""
        signed = b"".join((version, b"\0", payload))
        return signed + self.sign(signed)

    def encode(self, kind: str, body: Mapping[str, Any]) -> list[bytes]:
        """Pack and sign a message this side may send.

        Args:
            kind: a kind of the directions this codec's role sends.
            body: the fields of that kind, all of them and nothing else.

        Returns:
            The message's one frame, in a list for ``send_multipart``.

        Raises:
            ValueError: the kind is not one this side sends, or the body does not match its
                schema, or the packed payload exceeds ``max_payload``. These are bugs in the
                caller, never the peer's doing.
        """
        direction = self._send_directions.get(kind)
        if direction is None:
            raise ValueError(
                f"A {self.role} cannot send a {kind!r} message; "
                f"it sends {', '.join(sorted(self._send_directions))}."
            )
        body = dict(body)
        fast = _FAST_CHECKS.get(kind)  # (a publication's usual kinds: the broker's save path)
        try:
            if fast is None or not fast(body, self.root, self.max_payload):
                _CHECKS[direction][kind](body, self.root, self.max_payload)
        except _Rejected as rejected:
            rejected.inside(kind)
            raise ValueError(f"Refusing to send an invalid message: {rejected.detail}.") from None
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child continues the parent's counter; a fresh sender keeps the two
                # from replaying each other's counters at the receiver.
                self._pid = os.getpid()
                self._sender = secrets.token_bytes(SENDER_BYTES)
                self._counter = 0
            self._counter += 1
            envelope = {"k": kind, "s": self._sender, "n": self._counter, "b": body}
        try:
            payload: bytes = msgpack.packb(envelope, use_bin_type=True)
        except Exception as err:
            raise ValueError(f"Cannot pack a {kind!r} message: {err}.") from err
        if len(payload) > self.max_payload:
            raise ValueError(
                f"A {kind!r} message packs to {len(payload)} bytes, more than the "
                f"{self.max_payload} allowed; send less, or raise max_payload on both sides."
            )
        version = ACTIVITY_VERSION if kind in ACTIVITY_KINDS else VERSION
        return [self.seal(version, payload)]

    def split_identity(self, frames: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
        """Split what a ROUTER socket received into the peer's identity and the message frames.

        Raises:
            ProtocolError: reason ``"frames"``, when there is no non-empty identity frame.
        """
        try:
            parts = [_as_bytes(frame) for frame in frames]
        except TypeError:
            raise self._drop("frames", "Dropped a message whose frames are not bytes.") from None
        if len(parts) < 2 or not parts[0]:
            raise self._drop(
                "frames", "Dropped a routed message without an identity frame before the message."
            )
        return parts[0], parts[1:]

    def decode_routed(self, frames: Sequence[bytes]) -> tuple[bytes, Message]:
        """Decode what a ROUTER socket received: ``(identity, message)``.

        Raises:
            ProtocolError: as :meth:`decode`.
        """
        identity, rest = self.split_identity(frames)
        return identity, self.decode(rest)

    def decode(self, frames: Sequence[bytes]) -> Message:
        """Verify and unpack a message this side may receive (identity frame already stripped).

        Checks, in this order: frame count, version, size, presence of a MAC, the MAC itself
        (before anything is unpacked), msgpack validity with strict limits, the schema, the
        paths, and last the replay guard, whose table changes only for a message that passed
        every other check.

        Raises:
            ProtocolError: the message was dropped; ``reason`` is one of :data:`REASONS`, and
                ``dropped[reason]`` was incremented.
        """
        if len(frames) != 1:
            raise self._drop(
                "frames",
                f"Dropped a message of {len(frames)} frames; a relmod message is one frame "
                "(version, payload and mac).",
            )
        frame = frames[0]
        if type(frame) is not bytes:
            try:
                frame = _as_bytes(frame)
            except TypeError:
                raise self._drop("frames", "Dropped a message whose frame is not bytes.") from None
        if frame.startswith(_HEAD):
            start, activity = len(_HEAD), False
        elif frame.startswith(_ACTIVITY_HEAD):
            start, activity = len(_ACTIVITY_HEAD), True
        else:
            version = frame.partition(b"\0")[0]
            raise self._drop(
                "version",
                f"Dropped a message for protocol {_describe(version)}; this side speaks "
                f"{VERSION.decode()}. Run the same relmod version on both sides.",
            )
        end = len(frame) - MAC_BYTES
        if end - start > self.max_payload:
            raise self._drop(
                "oversized",
                f"Dropped a message of {end - start} bytes, more than the {self.max_payload} "
                "allowed.",
            )
        if end <= start:
            raise self._drop(
                "unsigned", "Dropped an unsigned message (too short to carry a payload and a mac)."
            )
        view = memoryview(frame)
        if not hmac.compare_digest(frame[end:], self._mac(view[:end]).digest()):  # self.sign
            raise self._drop(
                "forged",
                "Dropped a message whose signature does not match: it was signed with another "
                "key or changed on the way. Check that both sides read the same connection file.",
            )
        payload = view[start:end]
        try:
            envelope = self._unpack(payload)
        except Exception as err:  # msgpack raises many types on bad input; all mean the same
            raise self._drop(
                "malformed",
                f"Dropped a signed message whose payload is not valid relmod msgpack "
                f"({type(err).__name__}: {err}).",
            ) from err
        kind, sender, counter, body, direction = self._check_envelope(envelope)
        if activity != (kind in ACTIVITY_KINDS):
            version = ACTIVITY_VERSION if activity else VERSION
            raise self._drop(
                "version",
                f"Dropped a {kind!r} message that starts with {_describe(version)}; "
                f"{', '.join(sorted(ACTIVITY_KINDS))} start with {ACTIVITY_VERSION.decode()}, "
                f"every other kind with {VERSION.decode()}.",
            )
        with self._lock:
            key = (direction, sender)
            last = self._last_seen.get(key)
            if last is not None and counter <= last:
                raise self._drop(
                    "replayed",
                    f"Dropped a replayed {kind!r} {direction}: counter {counter} is not above "
                    f"{last}, the last one seen from this sender.",
                )
            self._last_seen[key] = counter
            self._last_seen.move_to_end(key)
            while len(self._last_seen) > REPLAY_SENDERS:
                self._last_seen.popitem(last=False)
        return _new_message((kind, body, sender, counter))

    def _check_envelope(self, envelope: Any) -> tuple[str, bytes, int, dict[str, Any], str]:
        """Check the payload map and the body; returns (kind, sender, counter, body, direction)."""
        # The feed's common case first, in this one frame (see _FAST_CHECKS): the general
        # checker's verdict on the envelope, then the kind's fast check.
        if type(envelope) is dict and envelope.keys() == _ENVELOPE_FIELDS:
            common, sender, counter = envelope["k"], envelope["s"], envelope["n"]
            fast = _FAST_CHECKS.get(common) if type(common) is str else None
            if (
                fast is not None
                and type(sender) is bytes
                and len(sender) == SENDER_BYTES
                and type(counter) is int
                and 1 <= counter <= MAX_COUNTER
                and fast(envelope["b"], self.root, self.max_payload)
            ):
                known = self._receive_directions.get(common)
                if known is not None:
                    return common, sender, counter, envelope["b"], known
        try:
            try:
                _CHECK_ENVELOPE(envelope, None, SENDER_BYTES)
                if len(envelope["s"]) != SENDER_BYTES:
                    raise _Rejected("schema", f"expected {SENDER_BYTES} bytes").inside(".s")
                if envelope["n"] < 1:
                    raise _Rejected("schema", "a counter starts at 1").inside(".n")
            except _Rejected as rejected:
                raise rejected.inside("payload") from None
            kind: str = envelope["k"]
            direction = self._receive_directions.get(kind)
            if direction is None:
                raise _Rejected("schema", f"a {self.role} does not receive {kind!r:.80} messages")
            body: dict[str, Any] = envelope["b"]
            try:
                _CHECKS[direction][kind](body, self.root, self.max_payload)
            except _Rejected as rejected:
                raise rejected.inside(kind) from None
        except _Rejected as rejected:
            if rejected.reason == "path":
                text = f"Dropped a message with an unsafe path: {rejected.detail}."
            else:
                text = f"Dropped a message that breaks the protocol schema: {rejected.detail}."
            raise self._drop(rejected.reason, text) from None
        return kind, envelope["s"], envelope["n"], body, direction

    def _drop(self, reason: str, message: str) -> ProtocolError:
        """Count and log a dropped message; returns the error for the caller to raise."""
        self.dropped[reason] += 1
        logger.debug("%s (reason %s)", message, reason)
        return ProtocolError(message, reason=reason)


def _as_bytes(frame: Any) -> bytes:
    """A frame as bytes: bytes itself, or anything with the buffer protocol (zmq.Frame)."""
    if isinstance(frame, bytes):
        return frame
    return bytes(memoryview(frame))


def fuzz_one(codec: Codec, frames: Sequence[bytes]) -> str:
    """Decode untrusted frames and say what happened: ``"ok"`` or the drop reason.

    Any other exception escaping is a bug; fuzz tests and soaks call this in a loop.

    >>> fuzz_one(Codec(new_key(), role="client"), [VERSION + b"\\0"])
    'unsigned'
    """
    try:
        codec.decode(frames)
    except ProtocolError as err:
        return err.reason
    return "ok"


def new_epoch() -> str:
    """A fresh epoch: start time, pid and randomness, so a restarted broker never repeats one.

    >>> new_epoch() != new_epoch()
    True
    """
    return f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"


def new_key() -> bytes:
    """A fresh 32-byte signing key."""
    return secrets.token_bytes(32)


def configure_socket(sock: zmq.Socket[Any], *, max_payload: int = MAX_PAYLOAD) -> None:
    """Set the options every relmod socket needs; call before bind or connect.

    LINGER 0 so that closing a socket (and exiting the interpreter) never waits on unsent
    messages; MAXMSGSIZE so that ZeroMQ disconnects a peer sending a frame far larger than any
    valid payload before we ever see it; high-water marks of :data:`SOCKET_HWM` messages, or of
    ``$RELMOD_HWM`` (tests set a tiny one to make a stopped client's queue overflow).
    To still deliver a last message (the broker's "bye"), close with a short linger:
    ``sock.close(linger=100)``.

    >>> import zmq
    >>> ctx = zmq.Context()
    >>> sock = ctx.socket(zmq.PUB)
    >>> configure_socket(sock)
    >>> sock.getsockopt(zmq.LINGER), sock.getsockopt(zmq.SNDHWM)
    (0, 10000)
    >>> sock.close(); ctx.term()
    """
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_payload + 1024)
    hwm = _hwm()
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if hwm < SOCKET_HWM:
        # A tiny HWM alone does not make a stopped peer's queue overflow: the kernel's socket
        # buffers hold thousands of small messages first. Shrink them too.
        sock.setsockopt(zmq.SNDBUF, 4096)
        sock.setsockopt(zmq.RCVBUF, 4096)


def heartbeat_interval() -> float:
    """Seconds between heartbeats: :data:`HEARTBEAT_INTERVAL`, or ``$RELMOD_HEARTBEAT``.

    Tests set a tiny interval to flood a stopped client's queue.
    """
    try:
        return max(0.001, float(os.environ.get("RELMOD_HEARTBEAT", HEARTBEAT_INTERVAL)))
    except ValueError:
        return HEARTBEAT_INTERVAL


def _hwm() -> int:
    try:
        return max(1, int(os.environ.get("RELMOD_HWM", SOCKET_HWM)))
    except ValueError:
        logger.warning(
            "RELMOD_HWM=%r is not a whole number; using %d", os.environ["RELMOD_HWM"], SOCKET_HWM
        )
        return SOCKET_HWM
