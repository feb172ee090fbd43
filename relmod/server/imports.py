"""What a source file imports, read from its bytes alone (so the answer can be cached by hash).

An :class:`ImportStatement` is one thing a file imports, before anyone looks at the disk:
``import a.b`` is ``("import", 0, "a.b", ())``, ``from ..x import y, z`` is
``("from", 2, "x", ("y", "z"))``, and ``relmod.at('./f.py')`` is ``("path", 0, "./f.py", ())``.
:mod:`relmod.server.resolve` turns statements into files of the project.

Two readers give the same statements:

- :func:`statements_from_ast` parses the whole file with :mod:`ast`: the reference.
- :func:`find_statements` is the one the broker uses. A single regular expression walks the
  file's strings, comments and ``import`` keywords (strings and comments are skipped whole, so an
  import in a docstring never counts); each statement found at the start of a line is cut out and
  parsed on its own, a few hundred bytes instead of the whole file. Where the fast reader cannot be
  sure, it parses the whole file instead: an ``import`` keyword not at the start of a line
  (``try: import x``), a statement that does not parse alone (``(yield\\n from g)``), a file that
  mentions ``relmod`` (path literals in calls), a coding cookie, a null byte, an ``elif`` guard.

Imports under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) and
``if __name__ == "__main__":`` are no dependencies: the first never run, the second run only when
the file is the main script, never when it is imported. Their ``else`` branches count. The fast
reader finds such a guard by its header line, takes the lines indented below it as its block and
proves the cut by parsing the block alone.

Example:
    >>> source = b"import os\\nfrom . import (a,\\n    b)\\ndoc = '''\\nimport nothing\\n'''\\n"
    >>> [tuple(s) for s in find_statements(source)]
    [('import', 0, 'os', ()), ('from', 1, '', ('a', 'b'))]
    >>> find_statements(source) == statements_from_ast(source)
    True
"""

from __future__ import annotations

import ast
import re
import threading
import warnings
from typing import NamedTuple

__all__ = ["ImportStatement", "find_statements", "statements_from_ast"]

_LOADERS = frozenset({"at", "use", "imp"})  # relmod functions that take a path literal
_RELMOD_MODULES = frozenset({"relmod", "relmod.api"})
_PARSE_LOCK = threading.Lock()


class ImportStatement(NamedTuple):
    """One import of a source file, as written (see the module docstring).

    Attributes:
        kind: ``"import"`` (``import a.b``), ``"from"`` (``from a import b``) or ``"path"`` (a
            path literal given to ``relmod.at/use/imp``).
        level: the dots of a relative ``from`` import; 0 otherwise.
        module: the dotted name (``""`` for ``from . import x``), or the path literal.
        names: the names a ``from`` import takes (``"*"`` included); empty otherwise.
    """

    kind: str
    level: int
    module: str
    names: tuple[str, ...]


# -- the reference: the whole file through ast ----------------------------------------------------


def statements_from_ast(data: bytes, path: str = "<source>") -> list[ImportStatement] | None:
    """Every import of a source, found by parsing all of it; None when it does not parse.

    The statements come sorted and each once.
    """
    try:
        tree = _parse(data, path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    found: set[ImportStatement] = set()
    modules, loaders = _relmod_names(tree)
    for node in _unguarded_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_from_node(node))
        elif isinstance(node, ast.Call):
            literal = _loader_literal(node, modules, loaders)
            if literal is not None:
                found.add(ImportStatement("path", 0, literal, ()))
    return sorted(found)


def _parse(data: bytes | str, path: str) -> ast.Module:
    # Parsing warns about such things as invalid escape sequences. The broker scans a file on
    # every save, so the warning would repeat what the user sees when running the file; and
    # under `-W error` it would become a SyntaxError and cost the file all its edges. Warning
    # filters are process-wide, so parses take turns.
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(data, filename=path)


def _is_guard(test: ast.expr) -> bool:
    """``TYPE_CHECKING``, ``typing.TYPE_CHECKING`` or ``__name__ == "__main__"`` (either way)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return (
            test.attr == "TYPE_CHECKING"
            and isinstance(test.value, ast.Name)
            and test.value.id == "typing"
        )
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and len(test.comparators) == 1
    ):
        sides = (test.left, test.comparators[0])
        names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
        mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
        return len(names) == 1 and len(mains) == 1
    return False


def _unguarded_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except those in the body of a guard (see the module docstring)."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_guard(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return nodes


def _from_node(node: ast.Import | ast.ImportFrom) -> list[ImportStatement]:
    if isinstance(node, ast.Import):
        return [ImportStatement("import", 0, alias.name, ()) for alias in node.names]
    names = tuple(sorted({alias.name for alias in node.names}))
    return [ImportStatement("from", node.level or 0, node.module or "", names)]


def _relmod_names(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """The local names bound to relmod, and to its at/use/imp (local name -> function)."""
    modules = {"relmod"}
    loaders: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "relmod":
                    modules.add(alias.asname or "relmod")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in _RELMOD_MODULES:
            for alias in node.names:
                if alias.name in _LOADERS:
                    loaders[alias.asname or alias.name] = alias.name
    return modules, loaders


def _loader_literal(call: ast.Call, modules: set[str], loaders: dict[str, str]) -> str | None:
    """The path literal of a relmod.at/use/imp call, without an imp ``as name``; else None."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id not in modules or func.attr not in _LOADERS:
            return None
        kind = func.attr
    elif isinstance(func, ast.Name) and func.id in loaders:
        kind = loaders[func.id]
    else:
        return None
    arg: ast.expr | None = call.args[0] if call.args else None
    if arg is None:
        keyword = "spec" if kind == "imp" else "path"
        arg = next((k.value for k in call.keywords if k.arg == keyword), None)
    if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
        return None  # a computed path: only the runtime edge will know it
    literal = arg.value
    if kind == "imp":
        head, sep, _alias = literal.rpartition(" as ")
        if sep:
            literal = head
    return literal.strip()


# -- the fast reader -------------------------------------------------------------------------------

# One pass over the file. Strings and comments are matched whole so that nothing inside them is
# seen; the other alternatives only ever match outside them. The order matters: a triple quote
# must be tried before an empty one-line string. Every alternative starts with one of five bytes
# (line starts are matched with their newline), which the leading lookahead lets the engine skip
# to: it makes the pass about 1.6 times faster.
_TOKENS = re.compile(
    rb"""(?=[\#'"\ni])(?:
      \#[^\n]*
    | '''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''
    | \"\"\"[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*\"\"\"
    | '[^'\\\n]*(?:\\.[^'\\\n]*)*'
    | "[^"\\\n]*(?:\\.[^"\\\n]*)*"
    | (?P<start>\n[ \t]*(?:import|from)\b)
    | (?P<guard>\n[ \t]*(?:el)?if\b[^\n]*?\b(?:TYPE_CHECKING|__name__)\b)
    | (?P<keyword>\bimport\b))
    """,
    re.DOTALL | re.VERBOSE,
)
_START, _GUARD, _KEYWORD = (_TOKENS.groupindex[name] for name in ("start", "guard", "keyword"))
_STRICT_GUARD = re.compile(
    rb"""[ \t]*if[ \t]+(?:(?:typing\.)?TYPE_CHECKING
        |__name__[ \t]*==[ \t]*(?P<q1>['"])__main__(?P=q1)
        |(?P<q2>['"])__main__(?P=q2)[ \t]*==[ \t]*__name__)
       [ \t]*:[ \t]*(?:\#[^\n]*)?$""",
    re.VERBOSE,
)
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.MULTILINE)
# Encodings in which every ASCII byte means its ASCII character, so the byte patterns hold.
_ASCII_BASED = (
    b"utf-8",
    b"utf8",
    b"ascii",
    b"us-ascii",
    b"latin",
    b"iso-8859",
    b"iso8859",
    b"cp125",
    b"windows-125",
    b"koi8",
    b"euc",
    b"gb",
    b"big5",
    b"shift-jis",
    b"cp9",
)
_GUARD_FORMS = frozenset(
    {
        b"TYPE_CHECKING",
        b"typing.TYPE_CHECKING",
        b"__name__=='__main__'",
        b'__name__=="__main__"',
        b"'__main__'==__name__",
        b'"__main__"==__name__',
    }
)
_BLOCK_END = "(?m)^[ \t]{{0,{indent}}}[^ \t\n\r#\\\\]"


class _Unsure(Exception):
    """The fast reader cannot vouch for its answer; the whole file is parsed instead."""


def find_statements(data: bytes, path: str = "<source>") -> list[ImportStatement] | None:
    """Every import of a source, like :func:`statements_from_ast` but usually much faster.

    Returns the same answer as :func:`statements_from_ast` on any file that parses. On a file
    that does not parse it may return the statements it found instead of None (the broker
    compile-checks files separately).

    Example:
        >>> find_statements(b'def f():\\n    import json\\n')
        [ImportStatement(kind='import', level=0, module='json', names=())]
    """
    try:
        found = _fast(data)
    except _Unsure:
        return statements_from_ast(data, path)
    return found


def _fast(data: bytes) -> list[ImportStatement]:
    if b"relmod" in data or b"\0" in data or b"\r" in data:
        raise _Unsure  # path literals in calls; null bytes; old Mac line ends
    head = data[: data.find(b"\n", data.find(b"\n") + 1) + 1] if b"\n" in data else data
    cookie = _COOKIE.search(head)
    if cookie and not cookie.group(1).lower().replace(b"_", b"-").startswith(_ASCII_BASED):
        raise _Unsure  # UTF-16 and such: leave decoding to the parser
    data = b"\n" + data  # so that the first line starts with a newline too
    pieces: list[bytes] = []
    covered = -1  # end of the last statement cut out; "import" keywords before it belong to it
    guards: list[tuple[int, int]] = []  # (start, end) of guard blocks
    for match in _TOKENS.finditer(data):
        group = match.lastindex
        if group is None:
            continue  # a string or a comment
        start = match.start() + (group != _KEYWORD)  # after the newline
        if group == _KEYWORD:
            if start >= covered:
                raise _Unsure  # `try: import x`, `x = 1; import y`, ...
        elif group == _START:
            if start < covered:
                continue  # `from a \\` + newline + `import b`: the line continues a statement
            covered = _statement_end(data, start)
            if not any(g_start <= start < g_end for g_start, g_end in guards):
                pieces.append(data[start:covered].strip())
        elif group == _GUARD:
            guard = _guard_block(data, start)
            if guard is not None:
                guards.append(guard)
    if not pieces:
        return []
    # One parse for all the pieces; `from __future__` must come first to parse at all.
    pieces.sort(key=lambda piece: not piece.startswith(b"from __future__"))
    return sorted(set(_parse_statements(b"\n".join(pieces))))


def _statement_end(data: bytes, start: int) -> int:
    """Where the statement starting at ``start`` ends: its line, or its parentheses' or
    backslashes' continuation lines. A wrong guess is caught when the piece is parsed."""
    end = data.find(b"\n", start)
    end = len(data) if end < 0 else end
    comment = data.find(b"#", start, end)
    opening = data.find(b"(", start, end if comment < 0 else comment)
    if opening >= 0:
        closing = data.find(b")", opening)
        if closing < 0:
            raise _Unsure
        end = data.find(b"\n", closing)
        end = len(data) if end < 0 else end
    while data[start:end].rstrip(b" \t").endswith(b"\\"):
        following = data.find(b"\n", end + 1)
        end = len(data) if following < 0 else following
        if end >= len(data):
            break
    return end


def _parse_statements(pieces: bytes) -> list[ImportStatement]:
    try:
        tree = _parse(pieces, "<imports>")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Unsure from None
    statements: list[ImportStatement] = []
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            raise _Unsure  # `import a; if x: ...`: leave it to the whole parse
        statements += _from_node(node)
    return statements


def _guard_block(data: bytes, start: int) -> tuple[int, int] | None:
    """The extent of the guard whose header line starts at ``start``, or None if the line
    is no guard header (``if TYPE_CHECKING or x:`` is none, and its imports count)."""
    line_end = data.find(b"\n", start)
    line_end = len(data) if line_end < 0 else line_end
    line = data[start:line_end]
    if not _STRICT_GUARD.fullmatch(line):
        test = re.sub(rb"[ \t()]", b"", line.partition(b":")[0]).removeprefix(b"el")
        if b"\\" in line or test.removeprefix(b"if") in _GUARD_FORMS:
            raise _Unsure  # `elif TYPE_CHECKING:`, `if (TYPE_CHECKING):`: rare, be exact
        # `if TYPE_CHECKING or x:` is an ordinary `if` whose imports count; a one-line
        # `if TYPE_CHECKING: import x` is caught by the keyword check (not at a line start).
        return None
    indent = len(line) - len(line.lstrip(b" \t"))
    pattern = re.compile(_BLOCK_END.format(indent=indent).encode())
    following = pattern.search(data, line_end + 1)
    end = len(data) if following is None else following.start()
    block = data[start:end]
    # Prove the cut: the block alone must parse, as an `if` with the guard as its test.
    source = b"if 1:\n" + block if indent else block
    try:
        tree = _parse(source, "<guard>")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Unsure from None
    node = tree.body[0]
    if indent:
        node = node.body[0] if isinstance(node, ast.If) and len(node.body) == 1 else node
    if not isinstance(node, ast.If) or not _is_guard(node.test) or node.orelse:
        raise _Unsure
    return start, end
