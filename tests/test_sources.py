"""relmod.sources: reading, hashing, decoding and compile-checking real files."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import traceback
from pathlib import Path

import pytest

from relmod.sources import (
    Broken,
    StatSignature,
    check_compiles,
    compile_source,
    content_hash,
    decode_source,
    display_path,
    file_hash,
    read_source,
    stat_signature,
)

LATIN1_SOURCE = b"# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n"
BOM = b"\xef\xbb\xbf"


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def run(path: str, data: bytes) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "checked"}
    exec(compile_source(path, data), namespace)
    return namespace


# -- reading and hashing ----------------------------------------------------------------------


def test_read_source_returns_the_exact_bytes(tmp_path: Path) -> None:
    data = BOM + b"x = 1\r\ny = 2\n"
    assert read_source(write(tmp_path / "a.py", data)) == data


def test_read_source_lets_os_errors_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_source(str(tmp_path / "missing.py"))
    with pytest.raises(IsADirectoryError if sys.platform != "win32" else PermissionError):
        read_source(str(tmp_path))


def test_content_hash_is_blake2b_128_hex_of_the_bytes() -> None:
    digest = content_hash(b"x = 1\n")
    assert digest == hashlib.blake2b(b"x = 1\n", digest_size=16).hexdigest()
    assert len(digest) == 32
    assert content_hash(b"x = 1\n") == digest
    assert content_hash(b"x = 2\n") != digest


def test_file_hash_follows_the_content_not_the_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path / "a.py", b"x = 1\n")
    first = file_hash(path)
    assert first == content_hash(b"x = 1\n")
    os.utime(path, ns=(1, 1))  # a touch: new timestamps, same bytes
    assert file_hash(path) == first
    Path(path).write_bytes(b"x = 2\n")
    assert file_hash(path) == content_hash(b"x = 2\n") != first


def test_file_hash_is_none_for_a_missing_file_or_a_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="relmod.sources"):
        assert file_hash(str(tmp_path / "gone.py")) is None
        assert file_hash(str(tmp_path)) is None
    assert "no such file" in caplog.text
    assert "folder" in caplog.text


def test_file_hash_is_none_below_a_file(tmp_path: Path) -> None:
    # NotADirectoryError: another OSError that must not escape.
    assert file_hash(write(tmp_path / "a.py", b"") + "/b.py") is None


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_file_hash_is_none_for_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.py", b"x = 1\n")
    os.chmod(path, 0)
    try:
        assert file_hash(path) is None
    finally:
        os.chmod(path, 0o600)


# -- decoding and compiling -----------------------------------------------------------------


def test_decode_source_honours_a_latin1_coding_cookie() -> None:
    assert decode_source(LATIN1_SOURCE).splitlines()[1] == "name = 'café'"


def test_decode_source_drops_a_utf8_bom_and_normalises_line_ends() -> None:
    assert decode_source(BOM + "s = 'é'\r\n".encode()) == "s = 'é'\n"


def test_decode_source_rejects_bytes_invalid_in_the_declared_encoding() -> None:
    with pytest.raises(UnicodeDecodeError):
        decode_source(b"# coding: ascii\nx = '\xe9'\n")


def test_compile_source_runs_a_latin1_file_with_the_right_text(tmp_path: Path) -> None:
    path = write(tmp_path / "latin.py", LATIN1_SOURCE)
    assert run(path, read_source(path))["name"] == "café"


def test_compile_source_accepts_a_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.py", BOM + "name = 'café'\n".encode())
    assert run(path, read_source(path))["name"] == "café"


def test_compiled_code_names_its_file_in_tracebacks(tmp_path: Path) -> None:
    path = write(tmp_path / "boom.py", b"x = 1\n\ndef boom():\n    raise KeyError('k')\n")
    namespace = run(path, read_source(path))
    with pytest.raises(KeyError) as info:
        namespace["boom"]()  # type: ignore[operator]
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno, last.line) == (path, 4, "raise KeyError('k')")


def test_compiled_code_does_not_inherit_relmods_future_flags(tmp_path: Path) -> None:
    # relmod's own modules use `from __future__ import annotations`; user code must not get it.
    path = write(tmp_path / "ann.py", b"def f(x: int) -> str: ...\n")
    f = run(path, read_source(path))["f"]
    assert f.__annotations__ == {"x": int, "return": str}


# -- check_compiles and Broken ----------------------------------------------------------------


def test_check_compiles_passes_good_sources(tmp_path: Path) -> None:
    for name, data in {
        "plain.py": b"x = 1\n",
        "latin.py": LATIN1_SOURCE,
        "bom.py": BOM + b"x = 1\n",
        "empty.py": b"",
    }.items():
        assert check_compiles(write(tmp_path / name, data), data) is None, name


def test_a_syntax_error_is_reported_at_its_line(tmp_path: Path) -> None:
    data = b"".join(b"x%d = %d\n" % (i, i) for i in range(11)) + b"def broken(:\n    pass\n"
    path = write(tmp_path / "pkg" / "a.py", data)
    broken = check_compiles(path, data)
    assert broken == Broken(path, 12, "SyntaxError: invalid syntax")
    assert broken.describe(relative_to=str(tmp_path)) == (
        f"Cannot reload .{os.sep}pkg{os.sep}a.py: SyntaxError at line 12: invalid syntax. "
        "The last good version stays in use; save a fixed version to reload."
    )


def test_an_indentation_error_keeps_its_name(tmp_path: Path) -> None:
    data = b"if True:\nprint(1)\n"
    broken = check_compiles(write(tmp_path / "a.py", data), data)
    assert broken is not None
    assert broken.lineno == 2
    assert broken.message.startswith("IndentationError: expected an indented block")


def test_an_unclosed_bracket_points_at_its_opening_line(tmp_path: Path) -> None:
    data = b"a = 1\nb = (1,\n     2,\n"
    broken = check_compiles(write(tmp_path / "a.py", data), data)
    assert broken is not None
    assert broken.lineno == 2
    assert "never closed" in broken.message


def test_null_bytes_are_reported_at_their_line(tmp_path: Path) -> None:
    data = b"x = 1\ny = 2\nz = '\x00'\n"
    path = write(tmp_path / "nul.py", data)
    broken = check_compiles(path, data)
    assert broken is not None
    assert broken.lineno == 3
    assert "null bytes" in broken.message
    assert "at line 3" in broken.describe()


def test_invalid_utf8_is_reported_at_its_line(tmp_path: Path) -> None:
    data = b"x = 1\n\ny = '\xff'\n"
    broken = check_compiles(write(tmp_path / "bad.py", data), data)
    assert broken is not None
    assert broken.lineno == 3
    assert "utf-8" in broken.message


def test_invalid_utf8_after_a_bom_is_reported_at_its_line(tmp_path: Path) -> None:
    data = BOM + b"x = 1\n\n\ny = '\xff'\n"
    broken = check_compiles(write(tmp_path / "bad.py", data), data)
    assert broken is not None
    assert broken.lineno == 4


def test_bytes_invalid_in_the_cookie_encoding_are_reported_at_their_line(tmp_path: Path) -> None:
    data = b"# coding: ascii\nok = 1\nname = 'caf\xe9'\n"
    broken = check_compiles(write(tmp_path / "ascii.py", data), data)
    assert broken is not None
    assert broken.lineno == 3
    assert "ascii" in broken.message


def test_an_unknown_coding_cookie_is_reported_at_the_cookie(tmp_path: Path) -> None:
    data = b"#!/usr/bin/env python\n# -*- coding: klingon -*-\nx = 1\n"
    broken = check_compiles(write(tmp_path / "k.py", data), data)
    assert broken is not None
    assert broken.lineno == 2
    assert "klingon" in broken.message


def test_a_cookie_contradicting_the_bom_is_broken(tmp_path: Path) -> None:
    data = BOM + b"# coding: latin-1\nx = 1\n"
    broken = check_compiles(write(tmp_path / "both.py", data), data)
    assert broken is not None
    assert broken.lineno == 1


def test_describe_without_a_line_or_a_folder_names_the_absolute_path() -> None:
    broken = Broken("/p/a.py", None, "SyntaxError: unknown encoding: klingon")
    assert broken.describe() == (
        "Cannot reload /p/a.py: SyntaxError: unknown encoding: klingon. "
        "The last good version stays in use; save a fixed version to reload."
    )


def test_describe_shows_paths_outside_the_folder_in_full() -> None:
    text = Broken("/elsewhere/a.py", 3, "SyntaxError: invalid syntax.").describe("/p")
    assert text.startswith("Cannot reload /elsewhere/a.py: SyntaxError at line 3: invalid syntax.")
    assert ".." not in text  # no doubled full stop, no ../ path


def test_broken_survives_the_wire() -> None:
    for broken in (Broken("/p/a.py", 12, "SyntaxError: x"), Broken("/p/b.py", None, "E: y")):
        wire = broken.to_wire()
        assert wire == {"path": broken.path, "lineno": broken.lineno, "message": broken.message}
        assert Broken.from_wire(wire) == broken


@pytest.mark.parametrize(
    "wire",
    [
        {"path": "/p/a.py", "message": "m"},
        {"path": 1, "lineno": None, "message": "m"},
        {"path": "/p/a.py", "lineno": "12", "message": "m"},
        {"path": "/p/a.py", "lineno": True, "message": "m"},
        {"path": "/p/a.py", "lineno": 1, "message": None},
    ],
)
def test_a_malformed_wire_record_is_refused(wire: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="broken-file record"):
        Broken.from_wire(wire)


def test_broken_is_immutable_and_hashable() -> None:
    broken = Broken("/p/a.py", 1, "SyntaxError: x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        broken.lineno = 2  # type: ignore[misc]
    assert {broken, Broken("/p/a.py", 1, "SyntaxError: x")} == {broken}


# -- stat signatures and display paths --------------------------------------------------------


def test_stat_signature_describes_the_file_and_changes_with_it(tmp_path: Path) -> None:
    path = write(tmp_path / "a.py", b"abc")
    first = stat_signature(path)
    assert isinstance(first, StatSignature)
    assert first.size == 3
    assert first.ino == os.stat(path).st_ino
    os.utime(path, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    second = stat_signature(path)
    assert second is not None
    assert second.mtime_ns == first.mtime_ns + 10**9
    assert second != first


def test_stat_signature_is_none_for_a_missing_file(tmp_path: Path) -> None:
    assert stat_signature(str(tmp_path / "gone.py")) is None


def test_display_path() -> None:
    assert display_path("/p/pkg/a.py", "/p") == os.path.join(".", "pkg", "a.py")
    assert display_path("/p", "/p") == "."
    assert display_path("/q/a.py", "/p") == "/q/a.py"
    assert display_path("/p/a.py") == "/p/a.py"
