"""The soak's generated project, and what its files on disk say every module's value must be.

``count`` modules live in folders of :data:`GROUP_SIZE` (``g00/m000.py``, ``g00/m001.py``, ...,
``g01/m020.py``, ...). Module ``i`` imports the ``VALUE`` of zero to three modules with a lower
index, often ``i - 1``, so long import chains run through the project, within a folder
(``from .m044 import VALUE as D0``) and across folders (``from ..g01.m012 import VALUE as D1``).
Its own value folds theirs::

    BASE = 123456
    VALUE = (BASE + 3 * D0 + 5 * D1) % 1000000007

so a dependent that did not re-execute after a dependency changed shows a wrong value. The first
:attr:`SoakProject.free` modules never import anything: a change of one of them is the only thing
that can mark it stale, which makes them the probes for propagation latency.

:func:`expected_values` reads the files back from disk, independently of what the driver meant to
write: a missing file, one that does not compile, one that raises on purpose, or one whose
dependencies are such, has no expected value (None).

Example:
    >>> import random, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> project = SoakProject(root, 30, random.Random(1))
    >>> project.create()
    >>> values = expected_values(root, project.names)
    >>> len(values) == 30 and all(isinstance(v, int) for v in values.values())
    True
"""

from __future__ import annotations

import codecs
import os
import random
import re
from dataclasses import dataclass
from importlib.util import decode_source
from pathlib import Path

GROUP_SIZE = 20
MODULUS = 1_000_000_007
ENCODINGS = ("utf-8", "utf-8-bom", "latin-1")
"""How a module's file is encoded: plain UTF-8, UTF-8 with a byte order mark, or latin-1 with a
PEP 263 coding cookie (and a latin-1 character in a comment and a string)."""

_IMPORT = re.compile(r"^from (\.+)([\w.]+) import VALUE as D(\d+)$", re.MULTILINE)
_BASE = re.compile(r"^BASE = (\d+)$", re.MULTILINE)
_RAISES = re.compile(r"^raise ", re.MULTILINE)


@dataclass(frozen=True)
class Spec:
    """What one module's file says: its base number, what it imports, how it is encoded."""

    base: int
    deps: tuple[int, ...]
    encoding: str = "utf-8"


def module_name(index: int) -> str:
    """The path of module ``index`` below the root, e.g. ``g02/m045.py``."""
    return f"g{index // GROUP_SIZE:02d}/m{index:03d}.py"


class SoakProject:
    """The modules of a soak on disk, and the driver's memory of what it wrote.

    Attributes:
        root: the project folder.
        names: every module's path below the root, by index.
        free: modules ``0 .. free-1`` never import anything (the latency probes).
        specs: the last spec written for each module (the disk is the truth; see
            :func:`expected_values`).
    """

    def __init__(self, root: Path, count: int, rng: random.Random, free: int | None = None) -> None:
        if count < 2:
            raise ValueError("a soak project needs at least 2 modules")
        self.root = root
        self.rng = rng
        self.names = [module_name(i) for i in range(count)]
        self.free = free if free is not None else max(1, count // 5)
        self.specs: dict[int, Spec] = {}
        self.revisions = [0] * count

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.root / self.names[index]

    def create(self) -> None:
        """Write every module, and an ``__init__``-less folder per group (namespace folders)."""
        for index in range(len(self)):
            self.path(index).parent.mkdir(parents=True, exist_ok=True)
            self.path(index).write_bytes(self.render(index, self.new_spec(index)))

    def new_spec(self, index: int, *, keep_deps: bool = False) -> Spec:
        """A fresh spec for a module: a new base, and (unless kept) newly drawn imports."""
        rng = self.rng
        old = self.specs.get(index)
        if index < self.free:
            deps: tuple[int, ...] = ()
        elif keep_deps and old is not None:
            deps = old.deps
        else:
            picked = {index - 1} if rng.random() < 0.6 else set()
            for _ in range(rng.randint(1, 3) - len(picked)):
                picked.add(rng.randrange(index))
            deps = tuple(sorted(picked, reverse=True))
        encoding = rng.choices(ENCODINGS, weights=(8, 1, 1))[0]
        spec = Spec(rng.randrange(1, 10**9), deps, encoding)
        self.specs[index] = spec
        return spec

    def render(self, index: int, spec: Spec, *, broken: str | None = None) -> bytes:
        """The bytes of a module's file.

        Args:
            broken: None for a good module; ``"syntax"`` for one that does not compile;
                ``"raise"`` for one that compiles but raises when it runs.
        """
        self.revisions[index] += 1
        name = self.names[index]
        folder = name.split("/")[0]
        lines = []
        if spec.encoding == "latin-1":
            lines.append("# -*- coding: latin-1 -*-")
        lines.append(f"# relmod soak module {name}, revision {self.revisions[index]}")
        terms = []
        for slot, dep in enumerate(spec.deps):
            dep_folder, dep_file = module_name(dep).split("/")
            stem = dep_file[:-3]
            source = f".{stem}" if dep_folder == folder else f"..{dep_folder}.{stem}"
            lines.append(f"from {source} import VALUE as D{slot}")
            terms.append(f" + {2 * slot + 3} * D{slot}")
        if spec.encoding == "latin-1":
            lines.append("LABEL = 'caf\u00e9'  # a latin-1 \u00e9")
        lines.append(f"BASE = {spec.base}")
        if broken == "raise":
            lines.append("raise RuntimeError('broken on purpose by the soak')")
        lines.append(f"VALUE = (BASE{''.join(terms)}) % {MODULUS}")
        if broken == "syntax":
            lines.append("BROKEN = (")
        text = "\n".join(lines) + "\n"
        if spec.encoding == "latin-1":
            return text.encode("latin-1")
        data = text.encode("utf-8")
        return codecs.BOM_UTF8 + data if spec.encoding == "utf-8-bom" else data


def _parse(path: Path, name: str) -> tuple[int, list[str]] | None:
    """(base, dependency names) of a module file on disk, or None when it has no value."""
    try:
        data = path.read_bytes()
    except OSError:
        return None  # missing, or not a file
    try:
        compile(data, str(path), "exec", dont_inherit=True)
        text = decode_source(data)
    except (SyntaxError, ValueError):
        return None
    if _RAISES.search(text):
        return None
    base = _BASE.search(text)
    if base is None:
        return None
    folder = name.split("/")[0]
    deps = []
    for match in sorted(_IMPORT.finditer(text), key=lambda m: int(m.group(3))):
        dots, dotted = match.group(1), match.group(2)
        parts = dotted.split(".")
        if len(dots) == 1 and len(parts) == 1:
            deps.append(f"{folder}/{parts[0]}.py")
        elif len(dots) == 2 and len(parts) == 2:
            deps.append(f"{parts[0]}/{parts[1]}.py")
        else:
            return None
    return int(base.group(1)), deps


def expected_values(root: Path, names: list[str]) -> dict[str, int | None]:
    """What every module's ``VALUE`` must be, from the files on disk now (None: no value)."""
    parsed = {name: _parse(root / name, name) for name in names}
    values: dict[str, int | None] = {}

    def value(name: str, depth: int = 0) -> int | None:
        if name in values:
            return values[name]
        entry = parsed.get(name)
        if entry is None or depth > len(names):
            result = None
        else:
            base, deps = entry
            total = base
            result = None
            for slot, dep in enumerate(deps):
                dep_value = value(dep, depth + 1)
                if dep_value is None:
                    break
                total += (2 * slot + 3) * dep_value
            else:
                result = total % MODULUS
        values[name] = result
        return result

    for name in names:
        value(name)
    return {name: values[name] for name in names}


def atomic_write(path: Path, data: bytes, rng: random.Random) -> None:
    """Save as most editors do: a temporary file in the same folder, renamed over the file."""
    temp = path.with_name(f".{path.name}.{rng.randrange(1 << 30):x}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def inplace_write(path: Path, data: bytes) -> None:
    """Save in place: truncate, then write (a reader may see the file empty in between)."""
    with open(path, "wb") as file:
        file.write(data)
