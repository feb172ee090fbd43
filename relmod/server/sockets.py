"""The broker's two sockets: where they bind, how they are secured, and how they close.

=========================  ===================================================================
transport                  when
=========================  ===================================================================
ipc (default)              two socket files in the private 0700 runtime folder
                           (:func:`relmod.connfile.ipc_endpoints`)
tcp on 127.0.0.1           ipc is unavailable, or its paths would be too long; random ports
tcp with ``--tcp H:P``     PUB on ``H:P``, ROUTER on ``H:P+1``, CURVE-encrypted and admitting
                           only listed clients (:mod:`relmod.server.curve`)
=========================  ===================================================================

Only the broker's loop thread uses the sockets, from binding to closing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

import zmq

from relmod.connfile import ipc_endpoints
from relmod.protocol import configure_socket
from relmod.server.curve import CurveServer

__all__ = ["BrokerSockets"]

logger = logging.getLogger(__name__)

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
        if endpoints is not None:
            try:
                self.pub.bind(endpoints[0])
                self.router.bind(endpoints[1])
            except zmq.ZMQError as err:
                logger.warning("Cannot bind ipc sockets (%s); using tcp on 127.0.0.1.", err)
                self.pub.close(linger=0)
                self.router.close(linger=0)
                self.pub, self.router = self._make()  # unbound, for tcp
            else:
                self.pub_endpoint, self.router_endpoint = endpoints
                self._ipc_paths = [e[len("ipc://") :] for e in endpoints]
                return
        pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        router_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.pub_endpoint = f"tcp://127.0.0.1:{pub_port}"
        self.router_endpoint = f"tcp://127.0.0.1:{router_port}"

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
