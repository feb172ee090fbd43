"""relmod: files and folders as modules that reload lazily and deeply, in every process.

Example:
    >>> import relmod
    >>> myfunc = relmod.at('./myfunc.py')   # doctest: +SKIP
    >>> myfunc.add(3, 4)                    # doctest: +SKIP
    7
"""

from relmod._version import __version__
from relmod.api import (
    add_listener,
    at,
    configure,
    connect,
    connect_remote,
    deps,
    disable,
    enable,
    get_dependencies,
    imp,
    install,
    reload,
    remove_listener,
    stale_objects,
    sync,
    toplevel,
    unwrap,
    up,
    use,
    wrap,
)
from relmod.autoimport import auto
from relmod.errors import (
    BrokerError,
    BrokerNotFound,
    ModuleNotFound,
    ProtocolError,
    RelmodError,
    ReloadError,
)
from relmod.execution import execfile
from relmod.ipython import load_ipython_extension, unload_ipython_extension
from relmod.machinery.events import Event
from relmod.sites import default_site as _default_site
from relmod.testing import runtest, testfocus, testmod, testonly
from relmod.workers import pool_options

site = _default_site()

__all__ = [
    "BrokerError",
    "BrokerNotFound",
    "Event",
    "ModuleNotFound",
    "ProtocolError",
    "RelmodError",
    "ReloadError",
    "__version__",
    "add_listener",
    "at",
    "auto",
    "configure",
    "connect",
    "connect_remote",
    "deps",
    "disable",
    "enable",
    "execfile",
    "get_dependencies",
    "imp",
    "install",
    "load_ipython_extension",
    "pool_options",
    "reload",
    "remove_listener",
    "runtest",
    "site",
    "stale_objects",
    "sync",
    "testfocus",
    "testmod",
    "testonly",
    "toplevel",
    "unload_ipython_extension",
    "unwrap",
    "up",
    "use",
    "wrap",
]
