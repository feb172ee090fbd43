"""When a file's stat signature may stand for its content: git's "racy" rule, written once.

Two saves within one timestamp tick (1 s on some file systems) can leave the same (mtime, ctime,
size, inode). So a signature whose mtime is younger than :data:`RACY_SECONDS` says nothing about
the content; an older one does, since a later save sets the mtime to its own time and so changes
it. (An mtime set back with ``utime``, as ``cp -p`` and unpackers do, is old by this rule, and
rightly: the next save moves it.) The broker's scan cache and sync, and a
client's ``sync()``, all decide with :func:`signature_trusted`.

Example:
    >>> from relmod.sources import StatSignature
    >>> old = StatSignature(mtime_ns=0, ctime_ns=0, size=1, ino=1)
    >>> signature_trusted(old, now=10.0), signature_trusted(old, now=1.0)
    (True, False)
"""

from __future__ import annotations

import time

from relmod.sources import StatSignature

__all__ = ["RACY_SECONDS", "signature_trusted"]

RACY_SECONDS = 2.0
"""A stat signature younger than this is not trusted."""


def signature_trusted(signature: StatSignature | None, now: float | None = None) -> bool:
    """Whether ``signature`` is old enough (at ``now``, seconds since the epoch) to trust.

    No signature (the file cannot be stat'ed) is never trusted.
    """
    if signature is None:
        return False
    now = time.time() if now is None else now
    return now - signature.mtime_ns / 1e9 >= RACY_SECONDS
