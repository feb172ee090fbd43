"""The public face: exactly these names, every one documented."""

from __future__ import annotations

import inspect

import relmod


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(relmod) if not name.startswith("_")} - {
        # submodules of the package are not part of the face
        name
        for name, value in vars(relmod).items()
        if inspect.ismodule(value)
    }
    assert sorted(relmod.__all__) == relmod.__all__
    assert set(relmod.__all__) - {"__version__"} == public


def test_every_public_callable_has_a_docstring() -> None:
    for name in relmod.__all__:
        value = getattr(relmod, name)
        if callable(value) and not isinstance(value, type):
            assert inspect.getdoc(value), f"relmod.{name} has no docstring"


def test_auto_site_and_execfile_are_reachable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert relmod.auto.json.dumps([1]) == "[1]"
    script = tmp_path / "s.py"
    script.write_text("Y = 6 * 7\n")
    assert relmod.execfile(str(script), {})["Y"] == 42
    relmod.site["mine"] = str(script)
    assert relmod.site.mine.Y == 42
    ns: dict[str, object] = {}
    relmod.imp.site("mine", "Y", globals=ns)
    assert ns["Y"] == 42 and "mine" in ns
