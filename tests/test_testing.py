"""runtest, testfocus, testmod and testonly as a user sees them: the runner's output, results."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
import unittest
from pathlib import Path

import pytest

import relmod
from relmod.testing import runtest, testfocus, testmod, testonly

REPO_ROOT = str(Path(relmod.__file__).resolve().parent.parent)


# TestCase classes are made inside functions so that pytest does not collect them itself.
def make_sums(*, fail_sub: bool = False) -> type[unittest.TestCase]:
    class Sums(unittest.TestCase):
        def test_add(self) -> None:
            self.assertEqual(1 + 1, 2)

        def test_sub(self) -> None:
            self.assertEqual(2 - 1, 0 if fail_sub else 1)

    return Sums


def test_runtest_prints_verbose_unittest_output_and_returns_the_result() -> None:
    class Single(unittest.TestCase):
        def test_a(self) -> None:
            pass

    stream = io.StringIO()
    result = runtest(Single, stream=stream)
    out = stream.getvalue()
    assert "test_a (" in out
    assert "... ok" in out
    assert "Ran 1 test" in out
    assert isinstance(result, unittest.TestResult)
    assert result.wasSuccessful()


def test_runtest_writes_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    runtest(make_sums())
    captured = capsys.readouterr()
    assert "Ran 2 tests" in captured.err
    assert captured.out == ""


def test_runtest_reports_failures() -> None:
    stream = io.StringIO()
    result = runtest(make_sums(fail_sub=True), stream=stream)
    assert not result.wasSuccessful()
    assert len(result.failures) == 1
    assert "test_sub (" in stream.getvalue()
    assert "FAIL" in stream.getvalue()


def test_runtest_runs_only_the_comma_separated_names() -> None:
    stream = io.StringIO()
    result = runtest(make_sums(fail_sub=True), " test_add ,", stream=stream)
    assert result.testsRun == 1
    assert result.wasSuccessful()
    assert "test_add (" in stream.getvalue()
    assert "test_sub" not in stream.getvalue()

    both = runtest(make_sums(), "test_add, test_sub", stream=io.StringIO())
    assert both.testsRun == 2


def test_runtest_verbosity_is_passed_to_the_runner() -> None:
    stream = io.StringIO()
    runtest(make_sums(), verbosity=1, stream=stream)
    assert "test_add (" not in stream.getvalue()
    assert "Ran 2 tests" in stream.getvalue()


def test_an_unknown_name_raises_a_value_error_naming_class_and_method() -> None:
    with pytest.raises(ValueError) as info:
        runtest(make_sums(), "test_add, test_mul", stream=io.StringIO())
    message = str(info.value)
    assert "Sums" in message
    assert "'test_mul'" in message
    assert "test_add, test_sub" in message  # what the class does have


def test_runtest_without_a_class_is_a_decorator_that_runs_and_returns_the_class() -> None:
    stream = io.StringIO()

    @runtest(names="test_a", stream=stream)
    class Decorated(unittest.TestCase):
        def test_a(self) -> None:
            pass

        def test_b(self) -> None:
            pass

    assert isinstance(Decorated, type)
    assert issubclass(Decorated, unittest.TestCase)
    assert "test_a (" in stream.getvalue()
    assert "test_b" not in stream.getvalue()
    assert "Ran 1 test" in stream.getvalue()


def test_testfocus_runs_only_marked_methods_and_prints_their_lines() -> None:
    class Focused(unittest.TestCase):
        def test_a(self) -> None:
            pass

        @testfocus
        def test_b(self) -> None:
            pass

        @testfocus
        def test_c(self) -> None:
            pass

    stream = io.StringIO()
    result = runtest(Focused, stream=stream)
    out = stream.getvalue()
    assert result.testsRun == 2
    assert "test_a (" not in out
    line_b = Focused.test_b.__code__.co_firstlineno
    line_c = Focused.test_c.__code__.co_firstlineno
    assert f"test_b (line {line_b}), test_c (line {line_c})" in out
    assert "Focused" in out
    assert "ignoring" not in out


def test_testfocus_says_it_ignored_explicit_names() -> None:
    class Focused(unittest.TestCase):
        def test_a(self) -> None:
            pass

        @testfocus
        def test_b(self) -> None:
            pass

    stream = io.StringIO()
    result = runtest(Focused, "test_a", stream=stream)
    assert result.testsRun == 1
    assert "test_b (" in stream.getvalue()
    assert "ignoring the names given to runtest ('test_a')" in stream.getvalue()


def test_testmod_runs_every_class_and_keys_results_by_name() -> None:
    class Failing(unittest.TestCase):
        def test_no(self) -> None:
            self.fail("no")

    module = types.ModuleType("sample_tests")
    module.Sums = make_sums()  # type: ignore[attr-defined]
    module.Failing = Failing  # type: ignore[attr-defined]
    module.TestCase = unittest.TestCase  # type: ignore[attr-defined]  # imported, not a test
    module.helper = 3  # type: ignore[attr-defined]
    stream = io.StringIO()
    results = testmod(module, stream=stream)
    assert list(results) == ["Failing", "Sums"]
    assert results["Sums"].testsRun == 2
    assert results["Sums"].wasSuccessful()
    assert not results["Failing"].wasSuccessful()
    assert stream.getvalue().index("test_no (") < stream.getvalue().index("test_add (")


def test_testonly_outside_main_returns_the_class_without_running_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sums = make_sums(fail_sub=True)
    assert testonly()(sums) is sums
    assert testonly(sums) is sums
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


SCRIPT = """\
import unittest
from relmod.testing import testonly

class Other(unittest.TestCase):
    def test_other(self):
        pass

{decorator}
class Mine(unittest.TestCase):
    def test_mine(self):
        self.assertTrue({passes})

    def test_second(self):
        pass

print("code after the class ran")
"""


@pytest.mark.parametrize(
    ("decorator", "passes", "status", "ran"),
    [
        ("@testonly()", True, 0, 2),
        ("@testonly", True, 0, 2),
        ("@testonly()", False, 1, 2),
        ("@testonly('test_second')", False, 0, 1),
    ],
)
def test_testonly_in_a_script_runs_only_that_class_and_exits(
    tmp_path: Path, decorator: str, passes: bool, status: int, ran: int
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(decorator=decorator, passes=passes))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert proc.returncode == status, proc.stderr
    assert "Mine is marked with @testonly" in proc.stderr
    assert f"Ran {ran} test" in proc.stderr
    assert "test_other" not in proc.stderr
    assert "code after the class ran" not in proc.stdout


def test_testonly_script_imported_as_a_module_runs_nothing(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT.format(decorator="@testonly()", passes=False))
    proc = subprocess.run(
        [sys.executable, "-c", "import script; print(script.Mine.__name__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO_ROOT])},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["code after the class ran", "Mine"]
    assert "Ran" not in proc.stderr
