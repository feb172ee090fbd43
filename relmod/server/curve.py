"""CURVE encryption and client authentication for a broker bound to TCP with ``--tcp``.

On ipc (the default) and on tcp://127.0.0.1 the runtime folder's permissions and the signing key
keep other users out. A broker listening on another interface encrypts with CURVE and admits only
known clients:

* The broker makes a fresh CURVE key pair at every start. The public key goes into the connection
  file (``curve_server_public``); the secret key never leaves the broker's memory.
* A client proves itself with its own key pair. Its public key must be listed in the folder
  :func:`relmod.curve.clients_dir` as a ``*.key`` file in ZeroMQ's certificate format
  (:func:`relmod.curve.create_client_key` writes one, :func:`relmod.curve.authorize_client`
  lists it). Keys can be added or removed while the broker runs; each connection attempt reads
  the folder again when it changed. Clients on the broker's own machine use the key pair the
  broker leaves in the private runtime folder at every start (:func:`relmod.curve.make_local_key`).
* A ZAP handler (:class:`zmq.auth.thread.ThreadAuthenticator`, on its own thread with its own
  socket) accepts a connection only when the client's public key is listed. Without it CURVE would
  admit anyone who knows the server's public key.

Example:
    >>> import tempfile
    >>> keys = ClientKeys(tempfile.mkdtemp())
    >>> keys.callback("relmod", b"not-a-listed-key")
    False
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from relmod.curve import clients_dir, make_local_key, remove_local_key

__all__ = ["ZAP_DOMAIN", "ClientKeys", "CurveServer", "clients_dir"]

logger = logging.getLogger(__name__)

ZAP_DOMAIN = "relmod"


class ClientKeys:
    """The public keys listed in a folder, re-read whenever the folder changes.

    ``callback`` is what pyzmq's authenticator calls, on its thread, for each CURVE handshake.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._keys: frozenset[bytes] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self.denied = 0
        self.allowed = 0

    def _refresh(self) -> None:
        try:
            st = os.stat(self.folder)
        except OSError as err:
            logger.warning("cannot read the CURVE client keys in %s: %s", self.folder, err)
            self._keys, self._stamp = frozenset(), None
            return
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return
        keys = set()
        for path in sorted(self.folder.glob("*.key")):
            try:
                public, _secret = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as err:
                logger.warning("skipping CURVE client key %s: %s", path, err)
                continue
            keys.add(public)
        self._keys, self._stamp = frozenset(keys), stamp
        logger.info("%d CURVE client keys listed in %s", len(keys), self.folder)

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether a client with this (z85) public key may connect."""
        self._refresh()
        if key in self._keys:
            self.allowed += 1
            return True
        self.denied += 1
        logger.warning(
            "refused a CURVE client whose public key %s is not listed in %s",
            key.decode("ascii", "replace"),
            self.folder,
        )
        return False


class CurveServer:
    """The broker's CURVE key pair and ZAP handler.

    Args:
        context: the broker's ZeroMQ context.
        root: the project root (names the folder of client keys).
    """

    def __init__(self, context: zmq.Context[Any], root: str) -> None:
        self.root = root
        self.public, self._secret = zmq.curve_keypair()
        self.keys = ClientKeys(clients_dir(root))
        self._auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))

    def start(self) -> None:
        """List a fresh local key pair and start the ZAP handler; call before binding."""
        make_local_key(self.root)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.keys)

    def secure(self, sock: zmq.Socket[Any]) -> None:
        """Make a socket a CURVE server that asks the ZAP handler about every client."""
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        """Stop the ZAP handler and take the local key pair away."""
        self._auth.stop()
        remove_local_key(self.root)
