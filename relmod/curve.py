"""CURVE keys, written once for the broker, its clients and the ``relmod`` command.

A broker bound to TCP (``relmod-broker --tcp HOST:PORT``) encrypts with CURVE and admits only
clients whose public key is listed, as a ``*.key`` certificate, in :func:`clients_dir`::

    <runtime dir>/<root id>.clients/*.key      public halves of the admitted clients (0700 folder)
    <runtime dir>/<root id>.local.key_secret   the key pair of this machine's own clients (0600)

The second file is the broker's gift to local clients: at every start it makes a fresh key pair,
lists its public half, and writes the pair into the private runtime folder, so ``connect()``,
``relmod status`` and ``relmod graph`` on the broker's machine speak CURVE without being told
about keys. A client on another machine brings its own certificate (:func:`create_client_key`
writes one, :func:`authorize_client` lists its public half), named by ``client_key`` or
``$RELMOD_CLIENT_KEY``.

Example:
    >>> import os, tempfile
    >>> os.environ["RELMOD_RUNTIME_DIR"] = tempfile.mkdtemp()
    >>> secret, public = create_client_key(tempfile.mkdtemp(), 'w1')
    >>> oct(secret.stat().st_mode & 0o777), public.name
    ('0o600', 'w1.key')
    >>> authorize_client(public, '/srv/proj').parent == clients_dir('/srv/proj')
    True
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import zmq

from relmod.connfile import ConnectionInfo, root_id, runtime_dir
from relmod.errors import BrokerError

__all__ = [
    "CLIENT_KEY_ENV",
    "authorize_client",
    "client_key_for",
    "clients_dir",
    "create_client_key",
    "load_certificate",
    "local_key_path",
    "make_local_key",
    "remove_local_key",
    "secure_client_socket",
]

log = logging.getLogger(__name__)

CLIENT_KEY_ENV = "RELMOD_CLIENT_KEY"
"""Names the certificate file (public and secret key) a client presents to a CURVE broker."""
LOCAL_KEY_NAME = "relmod-local"
"""The name of the local clients' public certificate in the clients folder."""


def clients_dir(root: str) -> Path:
    """The folder whose ``*.key`` files list the clients a CURVE broker admits (made 0700)."""
    folder = runtime_dir() / f"{root_id(root)}.clients"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def local_key_path(root: str) -> Path:
    """Where the broker of ``root`` leaves the key pair of its own machine's clients."""
    return runtime_dir() / f"{root_id(root)}.local.key_secret"


# -- certificates ------------------------------------------------------------------------------


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    """The text of a ZeroMQ certificate (what ``zmq.auth.load_certificate`` reads)."""
    lines = [
        "#   relmod CURVE client " + ("secret key: keep it private" if secret else "public key"),
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _write(path: Path, data: bytes, mode: int, *, replace: bool = False) -> None:
    """Write a file created with ``mode`` from the start (never readable by others meanwhile)."""
    target = path
    if replace:  # a new version appears whole: write aside, then rename over
        path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask did
        os.write(fd, data)
    finally:
        os.close(fd)
    if replace:
        os.replace(path, target)


def load_certificate(key_file: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The (public, secret) keys of a client certificate.

    Raises:
        BrokerError: the file cannot be read, or holds no secret key.
    """
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(os.fspath(key_file))
    except (OSError, ValueError) as err:
        raise BrokerError(f"Cannot read the CURVE certificate {key_file}: {err}.") from err
    if secret is None:
        raise BrokerError(
            f"The CURVE certificate {key_file} holds no secret key; give the <name>.key_secret "
            "file that create_client_key() wrote."
        )
    return public, secret


def create_client_key(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Make a CURVE key pair for a client, in ZeroMQ's certificate format.

    The secret certificate is created with mode 0600 from the start (``zmq.auth`` writes it with
    the umask's mode and leaves it readable by others). It holds both keys: give its path to
    ``connect_remote``. The public certificate goes to the broker's machine.

    Args:
        folder: where to write the two files (created 0700 when missing).
        name: the files are ``<name>.key_secret`` and ``<name>.key``.

    Returns:
        ``(secret_file, public_file)``.

    Raises:
        FileExistsError: a certificate of that name exists; remove it or choose another name.

    Example:
        >>> import tempfile
        >>> secret, public = create_client_key(tempfile.mkdtemp(), 'w1')
        >>> secret.name, oct(public.stat().st_mode & 0o777)
        ('w1.key_secret', '0o644')
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not a certificate name; use letters, digits, - and _.")
    where = Path(os.path.expanduser(os.fspath(folder)))
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    secret_file, public_file = where / f"{name}.key_secret", where / f"{name}.key"
    _write(secret_file, _certificate(public, secret), 0o600)
    _write(public_file, _certificate(public, None), 0o644)
    return secret_file, public_file


def authorize_client(public_key_file: str | os.PathLike[str], root: str) -> Path:
    """List a client's public certificate with the broker of ``root`` (run on its machine).

    The broker re-reads the folder at the next connection attempt; no restart is needed.

    Returns:
        The path of the copy in :func:`clients_dir`.

    Raises:
        ValueError: the file is not a public certificate (or holds a secret key, which must
            never be copied to the broker).

    Example:
        >>> authorize_client('w1.key', '/srv/proj')  # doctest: +SKIP
        PosixPath('/run/user/1000/relmod/5d1c....clients/w1.key')
    """
    import zmq.auth

    source = Path(public_key_file)
    public, secret = zmq.auth.load_certificate(source)
    if secret is not None:
        raise ValueError(
            f"{source} holds a secret key. Copy only the public certificate (<name>.key) to the "
            "broker; the secret one stays with the client."
        )
    target = clients_dir(root) / (source.stem + ".key")
    shutil.copyfile(source, target)
    log.info("authorised CURVE client %s for %s", public.decode(), root)
    return target


# -- the local clients' key pair (the broker writes it, local clients read it) ----------------


def make_local_key(root: str) -> Path:
    """A fresh key pair for this machine's clients of ``root``: listed, and left 0600.

    Called by a starting ``--tcp`` broker before it writes its connection file.
    """
    public, secret = zmq.curve_keypair()
    listed = clients_dir(root) / f"{LOCAL_KEY_NAME}.key"
    _write(listed, _certificate(public, None), 0o600, replace=True)
    path = local_key_path(root)
    _write(path, _certificate(public, secret), 0o600, replace=True)
    return path


def remove_local_key(root: str) -> None:
    """Take the local clients' key pair away again (the broker stops)."""
    for path in (local_key_path(root), clients_dir(root) / f"{LOCAL_KEY_NAME}.key"):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.debug("could not remove %s: %s", path, err)


def client_key_for(
    info: ConnectionInfo, given: str | os.PathLike[str] | None, *, local: bool
) -> str | None:
    """The certificate a client presents to the broker of ``info``.

    ``given`` wins, then ``$RELMOD_CLIENT_KEY``, then (for a client on the broker's machine,
    ``local``) the pair the broker left in the runtime folder. None when there is none.
    """
    if given is not None:
        return os.fspath(given)
    named = os.environ.get(CLIENT_KEY_ENV)
    if named:
        return named
    if local:
        path = local_key_path(info["root"])
        if path.exists():
            return str(path)
    return None


def secure_client_socket(
    sock: zmq.Socket[Any], info: ConnectionInfo, key_file: str | os.PathLike[str] | None
) -> None:
    """Make ``sock`` a CURVE client of a broker that uses CURVE; nothing for one that does not.

    Call before ``connect``.

    Raises:
        BrokerError: the broker uses CURVE and no usable certificate was given.
    """
    server = info["curve_server_public"]
    if server is None:
        return
    if key_file is None:
        raise BrokerError(
            f"The broker of {info['root']} uses CURVE; pass client_key= or set {CLIENT_KEY_ENV} "
            "to a certificate (public and secret key) whose public half is listed in the "
            "broker's clients folder."
        )
    public, secret = load_certificate(key_file)
    sock.curve_serverkey = server.encode()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
