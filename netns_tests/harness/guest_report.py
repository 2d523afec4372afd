"""pytest plugin, loaded in the guest: writes each test's outcome, failure text and log sections to JSON.

The host's `vmplugin` reads that file and reports each guest test as a host test item of the same node
id, so the host's pytest report has the guest's results, tracebacks and daemon logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--guest-report", metavar="PATH", help="write per-test results as JSON to PATH")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--guest-report")
    if path:
        config.pluginmanager.register(GuestReport(Path(path)), "ikt-guest-report")


class GuestReport:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "longrepr": "", "sections": [],
                                                      "duration": 0.0})
        entry["duration"] += report.duration
        if report.failed:
            # A failure in setup or teardown is an error, as pytest itself reports it.
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["longrepr"] += f"[{report.when}] {report.longreprtext}\n"
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
            entry["longrepr"] = report.longreprtext
        # Sections accumulate over the phases; the last report carries them all.
        entry["sections"] = [list(s) for s in report.sections]
        if report.when == "teardown":  # after every test: a VM killed at its time limit keeps what ran
            self.write(None)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.write(int(exitstatus))

    def write(self, exitstatus: int | None) -> None:
        partial = self.path.with_suffix(".part")
        partial.write_text(json.dumps({"exitstatus": exitstatus, "tests": self.tests}, indent=1))
        partial.replace(self.path)
