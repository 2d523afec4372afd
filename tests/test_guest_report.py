"""The guest's pytest plugin writes every outcome, failure text and report section to JSON."""

import json
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def test_outcomes_and_sections_reach_the_json(pytester):
    pytester.makepyfile(
        test_sample="""
        import pytest

        def test_ok():
            pass

        def test_fails(request):
            request.node.add_report_section("call", "log of pluto@client", "pluto said no")
            assert 1 == 2, "the reason"

        def test_skipped():
            pytest.skip("no reason really")

        @pytest.fixture
        def broken():
            raise RuntimeError("setup broke")

        def test_error(broken):
            pass
        """
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest("-p", "netns_tests.harness.guest_report", "--guest-report", str(report),
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1, errors=1)
    data = json.loads(report.read_text())
    tests = data["tests"]
    assert data["exitstatus"] == 1
    assert tests["test_sample.py::test_ok"]["outcome"] == "passed"
    failed = tests["test_sample.py::test_fails"]
    assert failed["outcome"] == "failed" and "the reason" in failed["longrepr"]
    assert ["Captured log of pluto@client call", "pluto said no"] in failed["sections"]
    assert tests["test_sample.py::test_skipped"]["outcome"] == "skipped"
    error = tests["test_sample.py::test_error"]
    assert error["outcome"] == "error" and "setup broke" in error["longrepr"]


def test_a_run_killed_midway_keeps_the_tests_that_finished(monkeypatch, pytester):
    """The VM can be killed at its time limit: the report is rewritten after each test, not only at the end."""
    report = pytester.path / "report.json"
    pytester.makepyfile(
        test_sample=f"""
        import json, os, signal

        def test_first():
            pass

        def test_killed():
            seen = json.load(open({str(report)!r}))
            assert seen["exitstatus"] is None and list(seen["tests"]) == ["test_sample.py::test_first"]
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    # The netns harness is part of the source tree, not of the installed package: the child finds it there.
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    result = pytester.runpytest_subprocess("-p", "netns_tests.harness.guest_report", "--guest-report", str(report),
                                           "-p", "no:cacheprovider")
    assert result.ret == -9
    data = json.loads(report.read_text())
    assert data["exitstatus"] is None and data["tests"]["test_sample.py::test_first"]["outcome"] == "passed"
    assert "test_sample.py::test_killed" not in data["tests"]
