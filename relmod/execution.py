"""Execute a Python file in a namespace, the way Python 2's ``execfile`` did.

The file is compiled from its bytes, so a PEP 263 coding cookie is honoured, and under its absolute
path, so tracebacks and debuggers show its source lines.
"""

from __future__ import annotations

import os
from typing import Any

from relmod.errors import ModuleNotFound

__all__ = ["EXECFILE_NAME", "execfile"]

# Not "__main__": a file run by execfile should not start its `if __name__ == "__main__":` block
# unless the caller asks for it by passing globals with that name.
EXECFILE_NAME = "__execfile__"


def execfile(
    path: str | os.PathLike[str],
    globals: dict[str, Any] | None = None,
    locals: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compile and execute a Python file, and return the namespace its names were bound in.

    Without ``globals`` the file runs in a fresh dict holding ``__name__ = "__execfile__"``,
    ``__file__`` (the absolute path), ``__doc__ = None`` and ``__builtins__``. Given ``globals`` is
    used as is: only ``__file__`` is added, and only when missing. Pass
    ``{"__name__": "__main__"}`` to run the file's main block.

    Args:
        path: the file to run; ``~`` is expanded and a relative path is taken from the cwd.
        globals: the global namespace to execute in.
        locals: a separate local namespace, as for ``exec``; when given, it is what is returned.

    Returns:
        ``locals`` when given, else the global namespace.

    Raises:
        relmod.errors.ModuleNotFound: there is no file at ``path``.
        SyntaxError: the file does not compile; the error names the file and line.

    Example:
        >>> import pathlib, tempfile
        >>> script = pathlib.Path(tempfile.mkdtemp(), 'answer.py')
        >>> _ = script.write_text('answer = 6 * 7\\n')
        >>> ns = execfile(script)
        >>> ns['answer'], ns['__name__']
        (42, '__execfile__')
    """
    filename = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        with open(filename, "rb") as file:
            source = file.read()
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ModuleNotFound(
            f"Cannot execute {filename}: there is no such file. Check the path; relative paths "
            f"are taken from the current folder {os.getcwd()}."
        ) from err
    except IsADirectoryError as err:
        raise ModuleNotFound(
            f"Cannot execute {filename}: it is a folder, and execfile runs one Python file. "
            "Give the path of a file inside it."
        ) from err
    code = compile(source, filename, "exec", dont_inherit=True)
    if globals is None:
        globals = {"__name__": EXECFILE_NAME, "__file__": filename, "__doc__": None}
    else:
        globals.setdefault("__file__", filename)
    exec(code, globals, locals)
    return locals if locals is not None else globals
