"""The broker's two sockets: where they bind, how they are secured, and how they close.

=========================  ===================================================================
transport                  when
=========================  ===================================================================
ipc (default)              two socket files in the private 0700 runtime folder
                           (:func:`relmod.connfile.ipc_endpoints`)
tcp with ``--tcp H:P``     PUB on ``H:P``, ROUTER on ``H:P+1``, CURVE-encrypted and admitting
                           only listed clients (:mod:`relmod.server.curve`)
=========================  ===================================================================

There is no fallback to clear-text TCP: when the ipc socket paths would be too long for the
operating system, or ipc cannot be bound, the broker refuses to start with one line naming the
path to shorten (``RELMOD_RUNTIME_DIR``), or ``--tcp`` to use instead. On clear-text TCP any local
user could connect, read every invalidation and queue requests.

The ROUTER socket queues at most :data:`REPLY_HWM` replies for one peer (ZeroMQ's high-water mark
is per peer), with ``ROUTER_MANDATORY`` so that a reply beyond it, or to a peer that is gone,
raises instead of vanishing, and the broker counts it.

Only the broker's loop thread uses the sockets, from binding to closing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

import zmq

from relmod.connfile import ipc_endpoints, ipc_refusal
from relmod.errors import BrokerError
from relmod.protocol import configure_socket
from relmod.server.curve import CurveServer

__all__ = ["BrokerSockets"]

logger = logging.getLogger(__name__)

REPLY_HWM = 100
"""Most replies queued for one peer that does not read them (a page is at most about 1 MB)."""
BYE_LINGER_MS = 200
"""How long closing waits for the last publication (the "bye") to leave."""
_ANY_HOST = ("0.0.0.0", "*", "::")


class BrokerSockets:
    """A ZeroMQ context with the broker's PUB and ROUTER sockets, bound.

    Attributes:
        pub: the socket invalidations, broken-file notices and heartbeats go out on.
        router: the socket requests arrive on and replies leave from.
        pub_endpoint: where clients connect their SUB socket.
        router_endpoint: where clients connect their DEALER socket.
        curve: the CURVE server (keys and ZAP handler), or None without ``--tcp``.

    Example:
        >>> sockets = BrokerSockets.bind("/project", tcp=None)   # doctest: +SKIP
        >>> sockets.pub_endpoint                                  # doctest: +SKIP
        'ipc:///run/user/1000/relmod/3f2a....pub'
    """

    def __init__(self, context: zmq.Context[Any], curve: CurveServer | None) -> None:
        self.context = context
        self.curve = curve
        self.pub, self.router = self._make()
        self.pub_endpoint = ""
        self.router_endpoint = ""
        self._ipc_paths: list[str] = []

    def _make(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        pub = self.context.socket(zmq.PUB)
        router = self.context.socket(zmq.ROUTER)
        for sock in (pub, router):
            configure_socket(sock)
        router.setsockopt(zmq.SNDHWM, min(REPLY_HWM, router.getsockopt(zmq.SNDHWM)))
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        return pub, router

    @classmethod
    def bind(cls, root: str, tcp: tuple[str, int] | None) -> BrokerSockets:
        """Make the context and sockets and bind them (see the module docstring).

        Raises:
            zmq.ZMQError: a socket could not be bound (a ``--tcp`` port in use, for example);
                everything made so far is closed again.
        """
        context: zmq.Context[Any] = zmq.Context()
        curve = CurveServer(context, root) if tcp is not None else None
        sockets = cls(context, curve)
        try:
            if tcp is not None:
                sockets._bind_tcp(*tcp)
            else:
                sockets._bind_local(root)
        except BaseException:
            sockets.close()
            raise
        return sockets

    def _bind_tcp(self, host: str, port: int) -> None:
        assert self.curve is not None
        self.curve.start()
        for sock in (self.pub, self.router):
            self.curve.secure(sock)
            sock.ipv6 = ":" in host
        bound = f"[{host}]" if ":" in host else host
        self.pub.bind(f"tcp://{bound}:{port}")
        self.router.bind(f"tcp://{bound}:{port + 1}")
        # Clients need an address they can reach, not the wildcard that was bound.
        shown = socket.gethostname() if host in _ANY_HOST else bound
        self.pub_endpoint = f"tcp://{shown}:{port}"
        self.router_endpoint = f"tcp://{shown}:{port + 1}"
        logger.info("CURVE is on; client public keys are read from %s", self.curve.keys.folder)

    def _bind_local(self, root: str) -> None:
        endpoints = ipc_endpoints(root)
        if endpoints is None:
            raise BrokerError(ipc_refusal(root))
        try:
            self.pub.bind(endpoints[0])
            self.router.bind(endpoints[1])
        except zmq.ZMQError as err:
            raise BrokerError(
                f"Cannot bind the broker's ipc sockets at {endpoints[1][len('ipc://') :]}: {err}. "
                "Set RELMOD_RUNTIME_DIR to a short private folder, or serve with --tcp HOST:PORT "
                "(CURVE-encrypted)."
            ) from err
        self.pub_endpoint, self.router_endpoint = endpoints
        self._ipc_paths = [e[len("ipc://") :] for e in endpoints]

    @property
    def curve_public(self) -> str | None:
        """The server's CURVE public key (z85) for the connection file, or None."""
        return self.curve.public.decode() if self.curve is not None else None

    def close(self, last: list[bytes] | None = None) -> None:
        """Publish ``last`` (the frames of a "bye") if given, then close everything.

        The PUB socket lingers :data:`BYE_LINGER_MS` so the last message can leave; nothing else
        waits. The ipc socket files are removed: libzmq leaves them behind unless it made the
        folder itself.
        """
        if not self.pub.closed:
            if last is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self.pub.send_multipart(last, zmq.NOBLOCK)
            self.pub.close(linger=BYE_LINGER_MS)
        if not self.router.closed:
            self.router.close(linger=0)
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
        self.context.term()
        for path in self._ipc_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._ipc_paths = []
