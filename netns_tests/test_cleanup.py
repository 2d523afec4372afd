"""The harness leaves nothing behind: no namespace, pluto, unbound or tcpdump survives a test that fails
or a run that is interrupted (SIGINT as from Ctrl-C, SIGTERM as from a CI timeout)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_tests.harness.procs import wait_until
from netns_tests.harness.vm import PROJECT_ROOT

pytestmark = pytest.mark.host  # cleanup of namespaces and daemons; no ESP involved

SCENARIO = Path(__file__).parent / "scenarios" / "leftovers.py"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short base dir for the nested run: pluto's control socket path must fit a sockaddr_un."""
    path = Path(tempfile.mkdtemp(prefix="ikt-nested-", dir="/run"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nested_pytest(tmp_path: Path, test: str) -> tuple[subprocess.Popen[str], Path, Path]:
    record, ready = tmp_path / "record.jsonl", tmp_path / "ready"
    env = {**os.environ, "IKT_SCENARIO_RECORD": str(record), "IKT_SCENARIO_READY": str(ready),
           "IKECTL_NETNS_RUNNER": "host"}  # the scenario needs no ESP: it runs wherever this test runs
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'nested'}",
            f"{SCENARIO}::{test}"]
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, record, ready


def assert_nothing_left(record: Path) -> None:
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert entries, "the scenario recorded nothing: it did not get far enough to test cleanup"
    for entry in entries:
        assert len(entry["pids"]) == 3
        for pid, name in zip(entry["pids"], entry["names"], strict=True):
            alive = Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)
            assert not alive, f"{name} (pid {pid}) survived the run"
        for netns in entry["namespaces"]:
            assert not Path(f"/run/netns/{netns}").exists(), f"namespace {netns} survived the run"


def _state(pid: int) -> str:
    try:
        return "zombie" if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else "alive"
    except (OSError, IndexError):
        return "gone"


def test_a_failing_test_leaves_nothing_and_shows_the_daemon_logs(short_tmp: Path):
    proc, record, _ = nested_pytest(short_tmp, "test_starts_everything_then_fails")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "failing on purpose" in output
    assert "log of pluto@client" in output and "log of unbound@server" in output  # attached to the report
    assert_nothing_left(record)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_leaves_nothing(short_tmp: Path, sig: signal.Signals):
    proc, record, ready = nested_pytest(short_tmp, "test_starts_everything_then_waits")
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 120, "the scenario to start its daemons")
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
        proc.send_signal(sig)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            # Where it hangs: pytest's faulthandler prints every thread's stack on SIGABRT.
            proc.send_signal(signal.SIGABRT)
            pytest.fail(f"the run did not end within 60 s of {sig.name}:\n{proc.communicate(timeout=30)[0]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output
    assert_nothing_left(record)
