"""pytest fixtures of the netns harness: topology, pluto, unbound, capture, each cleaned up by its fixture.

A failing test gets the logs of every daemon it started attached to its report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from . import procs
from .capture import Capture
from .pluto import Pluto, PlutoConfig
from .topology import Host, Topology
from .unbound import Unbound, UnboundConfig

DAEMONS_BEFORE = pytest.StashKey[int]()
LOGS_BEFORE = pytest.StashKey[int]()


def pytest_sessionstart(session: pytest.Session) -> None:
    procs.install_exit_hooks()
    procs.sweep_stale_namespaces()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and DAEMONS_BEFORE in item.stash:
        for daemon in procs.started_daemons()[item.stash[DAEMONS_BEFORE]:]:
            report.sections.append((f"log of {daemon.name} ({daemon.log_path})", procs.tail(daemon.log_text(), 200)))
        for name, path in procs.attached_logs()[item.stash[LOGS_BEFORE]:]:
            text = path.read_text(errors="replace") if path.exists() else "(no log was written)"
            report.sections.append((f"log of {name} ({path})", procs.tail(text, 200)))
    return report


@pytest.fixture(autouse=True)
def _remember_daemons(request: pytest.FixtureRequest) -> None:
    request.node.stash[DAEMONS_BEFORE] = len(procs.started_daemons())
    request.node.stash[LOGS_BEFORE] = len(procs.attached_logs())


@pytest.fixture
def topology() -> Iterator[Topology]:
    with Topology() as topo:
        yield topo


@contextlib.contextmanager
def _stopped_at_teardown() -> Iterator[list[procs.Daemon]]:
    """The daemons a factory fixture starts, stopped in reverse order when the test ends."""
    started: list[procs.Daemon] = []
    try:
        yield started
    finally:
        for daemon in reversed(started):
            daemon.stop()


@pytest.fixture
def pluto(topology: Topology, tmp_path: Path) -> Iterator[Callable[..., Pluto]]:
    """Factory: `pluto(host, PlutoConfig(...))` starts a pluto in the host's namespace, stopped at teardown."""
    with _stopped_at_teardown() as started:
        def start(host: Host, config: PlutoConfig | None = None, run: bool = True) -> Pluto:
            daemon = Pluto(topology, host, tmp_path / f"pluto-{host.name}")
            started.append(daemon)
            if config is not None:
                daemon.write_config(config)
            if run:
                daemon.start()
            return daemon

        yield start


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[Callable[..., Unbound]]:
    """Factory: `unbound(host)` serves the lab zone on all the host's addresses, stopped at teardown."""
    with _stopped_at_teardown() as started:
        def start(host: Host, config: UnboundConfig | None = None) -> Unbound:
            daemon = Unbound(host, tmp_path / f"unbound-{host.name}",
                             config or UnboundConfig(addresses=sorted(host.addresses(), key=str)))
            started.append(daemon)
            daemon.start()
            return daemon

        yield start


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    """Factory: `capture(host, ifname)` runs tcpdump there; `.stop()` then `.count(subject)`."""
    with _stopped_at_teardown() as started:
        def start(host: Host, ifname: str) -> Capture:
            daemon = Capture(host, ifname, tmp_path / f"{host.name}-{ifname}.pcap")
            started.append(daemon)
            daemon.start()
            return daemon

        yield start
