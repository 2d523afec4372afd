"""pytest plugin for the netns suite: run it here, or in the VM and report the guest's results here.

Where the netns tests run:
- inside the guest (IKECTL_IN_GUEST=1, set by `guest.py`, which has checked ESP): here, directly;
- on a host whose kernel installs ESP SAs: here, directly;
- otherwise (these machines): each selected netns test becomes a `GuestItem` of the same node id. The VM
  boots once, in a thread, as soon as the session starts, and runs all of them there in one guest pytest
  session while this process runs everything else; then every item reports its own guest result, failure
  text and logs, and the guest's console is shown. A VM that cannot boot fails every item with the reason:
  nothing is skipped.
IKECTL_NETNS_RUNNER=host|vm|auto (default auto) overrides the choice.

The guest tests are shared among IKECTL_VM_SHARDS VMs (default 2): the first boots as the session starts, the
others when the host's own tests are done (the first guest item to report starts them); see `vmshards.py`.

Tests marked `host` need no ESP packets to flow (namespaces, XFRM policies, IKE that fails before any SA,
bad input): they always run here, at native speed instead of under TCG, first, while the VM works; the unit
tests follow, then the guest's results. Guest tests marked `timing` (they measure, and a busy host skews
that) run last in the first VM, when this process and the other VMs have little left to do. The check that
the VM runs left no qemu behind runs after everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from . import packages, vmshards
from .kernel import probe_esp
from .procs import HarnessError
from .vm import VmError, VmResult, VmSpec, run_in_vm

NETNS_DIR = Path(__file__).resolve().parents[1]


class VmSession:
    """One VM boot for its share of the selected guest items, in a thread from the session's start."""

    def __init__(self, config: pytest.Config, nodeids: list[str], name: str = "vm", cpus: int = 2) -> None:
        self.config = config
        self.nodeids = nodeids
        self.name = name  # the prefix of its console lines here
        self.cpus = cpus
        self.result: VmResult | None = None
        self.error: str | None = None
        self.tests: dict[str, dict[str, Any]] = {}
        self.outdir: Path | None = None
        self.console: list[str] = []  # the guest's console, shown when the first guest item reports
        self.shown = False
        self.pgid: int | None = None  # the VM's process group, to kill if this session ends first
        self.builder: subprocess.Popen[bytes] | None = None  # scripts/package, for the Debian package's test
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Boot it, unless it was started already."""
        if self.thread.ident is None:
            self.thread.start()

    def wait(self) -> None:
        """Until the VM run is over; then show its console once."""
        self.thread.join()
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if not self.shown and reporter is not None:
            capman = self.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                reporter.write_line("")
                for line in self.console:
                    reporter.write_line(f"{self.name}| {line}")
        self.shown = True

    def stop(self) -> None:
        """The session is ending with the VM still running (interrupted): the VM goes with it."""
        if self.thread.is_alive() and self.pgid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.thread.join(timeout=10)
        if self.builder is not None and self.builder.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.builder.pid, signal.SIGKILL)
            self.builder.wait()

    def _run(self) -> None:
        self.outdir = Path(tempfile.mkdtemp(prefix="ikt-vm-"))
        report = self.outdir / "report.json"
        # The project tree is read-only in the guest: no cache, no hypothesis database (the netns suite
        # has no property tests; its random walks are seeded by netns_tests/test_walk.py).
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                "-p", "netns_tests.harness.guest_report",
                "--guest-report", str(report), "-v", "--basetemp=/run/ikt-pytest", *self.nodeids]
        show = self.console.append
        try:
            show(f"booting Debian's kernel under TCG for {len(self.nodeids)} netns test(s) "
                 f"(about 30 s, then the tests; output in {self.outdir})")
            # The walk's and the soak's knobs reach the guest's tests (IKECTL_WALK_SEED, IKECTL_WALK_STEPS, ...),
            # and pytest's own options (PYTEST_ADDOPTS=--durations=0 times each test's phases in the guest).
            passed = {k: v for k, v in os.environ.items()
                      if k.startswith(("IKECTL_WALK_", "IKECTL_SOAK")) or k == "PYTEST_ADDOPTS"}
            if any(n.startswith(packages.TEST_FILE) for n in self.nodeids):
                # The guest has no network for pip: the host builds the .debs while the VM boots and runs the
                # rest; that test runs last in the guest and waits for them.
                built = self.outdir / "packages"
                self.builder = packages.start_build(built)
                show(f"building the Debian packages on the host meanwhile ({built})")
                passed[packages.PACKAGES_ENV] = str(built)
            self.result = run_in_vm(VmSpec.default(self.cpus), self.outdir, argv, show, env=passed,
                                    on_start=self._started)
            show(f"VM done: booted in {self.result.boot_seconds:.1f} s, "
                 f"ran {self.result.total_seconds:.1f} s in all, guest pytest exit {self.result.returncode}")
        except (VmError, HarnessError, OSError, ValueError) as exc:  # in a thread: every item reports the reason
            self.error = str(exc) if isinstance(exc, (VmError, HarnessError)) else f"{type(exc).__name__}: {exc}"
            if report.exists():  # written after each test: what ran before the VM failed still reports
                self.tests = json.loads(report.read_text())["tests"]
            return
        if not report.exists():
            self.error = (f"the guest wrote no report (guest pytest exit {self.result.returncode}); "
                          f"console: {self.result.console_log}")
            return
        self.tests = json.loads(report.read_text())["tests"]

    def _started(self, pgid: int) -> None:
        self.pgid = pgid


VM_SESSIONS = pytest.StashKey[list[VmSession]]()


class GuestTestFailed(Exception):
    pass


class GuestItem(pytest.Item):
    """A netns test that ran in the VM; this item reports what happened to it there."""

    def runtest(self) -> None:
        sessions = self.config.stash[VM_SESSIONS]
        for late in sessions[1:]:  # the host's own tests are done: the other VMs have the cores to themselves now
            late.start()
        session = next(s for s in sessions if self.nodeid in s.nodeids)
        session.wait()
        entry = session.tests.get(self.nodeid)
        if entry is None and session.error is not None:
            raise GuestTestFailed(f"the netns suite could not run in the VM: {session.error}")
        if entry is None:
            console = session.result.console_log if session.result else "?"
            raise GuestTestFailed(f"the guest produced no result for this test (console: {console})")
        for title, content in entry["sections"]:
            self.add_report_section("call", f"guest: {title}", content)
        if entry["outcome"] != "passed":  # a skip in the guest fails too: data-path tests never skip
            raise GuestTestFailed(f"{entry['outcome']} in the VM:\n{entry['longrepr']}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestTestFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name} (in the VM)"


def netns_runner() -> str:
    """'here' or 'vm', for this process."""
    if os.environ.get("IKECTL_IN_GUEST") == "1":
        return "here"
    choice = os.environ.get("IKECTL_NETNS_RUNNER", "auto")
    if choice == "host":
        return "here"
    if choice == "vm":
        return "vm"
    if choice != "auto":
        raise pytest.UsageError(f"IKECTL_NETNS_RUNNER={choice!r}: expected host, vm or auto")
    return "here" if probe_esp().available else "vm"


def _is_netns_item(item: pytest.Item) -> bool:
    return NETNS_DIR in Path(item.path).resolve().parents


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the guest runs exactly what is selected
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    config.stash[VM_SESSIONS] = []
    netns_items = [i for i in items if _is_netns_item(i)]
    if not netns_items:
        return
    if os.geteuid() != 0:
        raise pytest.UsageError("the netns tests need root (namespaces, pluto, tcpdump): run scripts/test "
                                "as root, or select only tests/ for the unprivileged unit tests")
    host = [i for i in netns_items if i.get_closest_marker("host")]
    last = [i for i in host if Path(i.path).name == "test_vm_run.py"]  # after the VM is gone
    if netns_runner() == "here":
        items[:] = [i for i in items if i not in host] + host
        return
    guests = [i for i in netns_items if i not in host]
    timing = [i for i in guests if i.get_closest_marker("timing")]
    # The Debian package's test last of all: it waits for the packages the host builds meanwhile.
    packaged = [i for i in guests if i.nodeid.startswith(packages.TEST_FILE)]
    timing = [i for i in timing if i not in packaged]
    others = [i for i in items if not _is_netns_item(i)]
    late_start = vmshards.host_part_seconds(len(others), len(host))
    shards = vmshards.shard([i.nodeid for i in guests if i not in timing and i not in packaged],
                            [i.nodeid for i in timing] + [i.nodeid for i in packaged], vm_shards(),
                            vmshards.load_costs(), late_start, vmshards.LATE_VM_RELATIVE_TIME)
    # Only host tests selected: no VM to boot; fewer guest tests than VMs: fewer VMs.
    # Two vCPUs for the first VM (its timing tests need them: a flood and pluto on one vCPU, pluto's Child SA took
    # over 30 s), one for the others: with two each, four vCPU threads and the host's tests on 2 cores made every
    # guest spin on locks whose holder was not running (a boot took 170-225 s instead of 58).
    config.stash[VM_SESSIONS] = [VmSession(config, ids, name=f"vm{n}" if len(shards) > 1 else "vm",
                                           cpus=2 if n == 1 else 1)
                                 for n, ids in enumerate(shards, 1) if ids]
    replaced = [GuestItem.from_parent(i.parent, name=i.name) for i in guests if i.parent is not None]
    items[:] = [i for i in host if i not in last] + others + replaced + last


@pytest.hookimpl(tryfirst=True)  # before pytest's own loop runs the first test
def pytest_runtestloop(session: pytest.Session) -> None:
    """The first VM starts working before the first test here (the others once the host's own tests are done)."""
    sessions = session.config.stash.get(VM_SESSIONS, [])
    if sessions and not session.config.option.collectonly:
        sessions[0].start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for vm in session.config.stash.get(VM_SESSIONS, []):
        vm.stop()


def vm_shards() -> int:
    """How many VMs share the guest tests (IKECTL_VM_SHARDS, default 2)."""
    value = os.environ.get("IKECTL_VM_SHARDS", "2")
    if not value.isdigit() or not 1 <= int(value) <= 8:
        raise pytest.UsageError(f"IKECTL_VM_SHARDS={value!r}: expected a number of VMs from 1 to 8")
    return int(value)


@pytest.fixture(scope="session")
def vm_sessions(request: pytest.FixtureRequest) -> list[VmSession]:
    """The VM runs of this session; none when no netns test ran in a VM."""
    return request.config.stash.get(VM_SESSIONS, [])
