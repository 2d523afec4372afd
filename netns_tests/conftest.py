"""Fixtures for the ikectl scenario tests: the lab's resolvers with the client left to ikectl."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_tests.harness import procs
from netns_tests.lab import Lab

IKECTL = Path(sys.executable).parent / "ikectl"

# `ikectl up` probes the kernel for ESP and, without it, leaves coffee-shop in clear and fails trusted mode closed
# (tests/test_session_faults.py and netns_tests/test_reconcile.py check that). Here the suite checks pluto's
# policies and IKE on this host's kernel, which has no ESP, so `ikectl` skips the probe as if ESP were there; in
# the VM the probe would pass anyway. Tests of the probe itself take it out of their environment.
os.environ["IKECTL_ASSUME_ESP"] = "1"


@pytest.fixture(autouse=True, scope="session")
def ikectl_log_dir() -> Iterator[Path]:
    """Where `down` and failed `up`s keep their runs' logs when a test's config does not say: a scratch directory,
    never this host's /var/log/ikectl ($IKECTL_LOG_DIR moves the default; docs/modes.md, Where logs go)."""
    scratch = Path(tempfile.mkdtemp(prefix="ikt-logs-"))
    os.environ["IKECTL_LOG_DIR"] = str(scratch / "ikectl")
    yield scratch / "ikectl"
    os.environ.pop("IKECTL_LOG_DIR", None)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Lab]:
    """client -- router (capture) -- coffee (NULL IKE), plain (no IKE), trusted (pinned ECDSA key)."""
    with Lab(tmp_path / "lab", say=lambda _: None, with_client_pluto=False) as lab:
        yield lab


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """ikectl's run dir: short (pluto's socket path must fit) and under /run (no unix sockets on 9p)."""
    path = Path(tempfile.mkdtemp(prefix="ikt-run-", dir="/run"))
    procs.attach_log("ikectl's pluto", path / "pluto.log")
    procs.attach_log("ikectl's supervisor", path / "supervisor.log")
    yield path
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(path.with_name(path.name + "-nm"), ignore_errors=True)  # the NetworkManager hook's files
