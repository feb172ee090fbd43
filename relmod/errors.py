"""Every exception relmod raises, in one tree.

::

    RelmodError
    ├── ModuleNotFound        a path given to at/use/imp/toplevel names nothing on disk
    ├── ImportSpecError       an imp() spec such as 'add as' cannot be parsed (an ImportError)
    ├── ReloadError           a reload failed; the last good version stays in use
    ├── ConfigurationError    a bad argument to configure(), a bad site file
    ├── BrokerError
    │   ├── BrokerNotFound        no live broker serves this project
    │   ├── BrokerAlreadyRunning  a second broker for a root that has a live one
    │   ├── BrokerTimeout         the broker did not answer a request in time
    │   └── ConnectionFileError   a connection file is unreadable, malformed or unsafe
    └── ProtocolError         a message was rejected (unsigned, forged, replayed, malformed, ...)

Messages are full sentences that say what happened and what to do.
"""

from __future__ import annotations


class RelmodError(Exception):
    """Base class of every error relmod raises."""


class ModuleNotFound(RelmodError, ImportError):
    """A path given to relmod names no file or folder."""


class ImportSpecError(RelmodError, ImportError, ValueError):
    """An ``imp()`` name list cannot be parsed, or names what the module does not have.

    An ``ImportError``, as the import statement's own failures are (and a ``ValueError``, as it
    was before).
    """


class ReloadError(RelmodError):
    """A reload failed and the previous version of the module stays in service.

    Attributes:
        path: the file whose execution failed.
        lineno: the line of the error in that file, when known.
    """

    def __init__(self, message: str, *, path: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.lineno = lineno


class ConfigurationError(RelmodError, ValueError):
    """A bad value was given to a relmod setting."""


class BrokerError(RelmodError):
    """Something went wrong talking to, or starting, a broker."""


class BrokerNotFound(BrokerError):
    """No live broker serves the project."""


class BrokerAlreadyRunning(BrokerError):
    """A live broker already serves this root."""

    def __init__(self, message: str, *, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


class BrokerTimeout(BrokerError, TimeoutError):
    """The broker did not answer in time."""


class ConnectionFileError(BrokerError):
    """A connection file cannot be trusted or read."""


class ProtocolError(RelmodError):
    """A message was rejected at the boundary.

    Attributes:
        reason: a short counter key such as ``"forged"`` or ``"replayed"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
