"""Processes the harness starts, known by pid, stopped by pid, and never left behind.

Every daemon (pluto, unbound, tcpdump) is started through `Daemon` in a session of its own, so that
stopping it stops nothing else. Live daemons and namespaces are registered here; `cleanup_all()` runs at
interpreter exit and on SIGTERM, so an interrupted run still removes what it made.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from pyroute2 import netns as pyroute2_netns

# Namespaces this project makes are named ikt-<pid of the making process>-<host>: the pid tells a sweep
# whether the namespace's maker is still alive.
NETNS_PREFIX = "ikt-"
NETNS_DIR = Path("/run/netns")


class HarnessError(RuntimeError):
    """A daemon or namespace of the harness did not behave: the message says which and why."""


class Daemon:
    """One long-running process, optionally inside a namespace, with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, netns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.netns = netns
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's output begins in the (appended) log

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise HarnessError(f"{self.name} was never started")
        return self._proc.pid

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, *self.argv] if self.netns else self.argv
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            # `ip netns exec` execs the program, so the pid is the daemon's own.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, env=self.env)
        _live_daemons[self.pid] = self
        _started_daemons.append(self)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Stop the daemon (its own process group only) and return its exit status."""
        if self._proc is None:
            return None
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        _live_daemons.pop(proc.pid, None)
        return proc.returncode

    def log_text(self, this_run_only: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start if this_run_only else 0)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in this run's log; fail if the daemon dies or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text(this_run_only=True))
            if match:
                return match
            if not self.running():
                raise HarnessError(f"{self.name} exited ({self._proc and self._proc.returncode}) before "
                                   f"logging /{pattern}/; log tail:\n{tail(self.log_text())}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} did not log /{pattern}/ within {timeout:.0f} s; "
                                   f"log tail:\n{tail(self.log_text())}")
            time.sleep(0.02)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- registries and the exit hook ---------------------------------------------------------------

_live_daemons: dict[int, Daemon] = {}
_started_daemons: list[Daemon] = []  # every daemon ever started here, in order (for their logs)
_live_namespaces: set[str] = set()


def register_namespace(name: str) -> None:
    _live_namespaces.add(name)


def unregister_namespace(name: str) -> None:
    _live_namespaces.discard(name)


def live_daemons() -> list[Daemon]:
    return list(_live_daemons.values())


def started_daemons() -> list[Daemon]:
    return list(_started_daemons)


_attached_logs: list[tuple[str, Path]] = []  # logs of processes the harness did not start (ikectl's pluto)


def attach_log(name: str, path: Path) -> None:
    """Show this log with the report of the test that is running, should it fail."""
    _attached_logs.append((name, path))


def attached_logs() -> list[tuple[str, Path]]:
    return list(_attached_logs)


def live_namespaces() -> list[str]:
    return sorted(_live_namespaces)


def cleanup_all() -> None:
    """Stop every daemon and remove every namespace this process made and has not cleaned up yet."""
    for daemon in list(_live_daemons.values()):
        daemon.stop(timeout=2.0)
    for name in list(_live_namespaces):
        remove_namespace(name)


def remove_namespace(name: str) -> None:
    # Processes we did not register (a stray `ip netns exec` child) must not keep our namespace alive.
    for pid in pids_in_namespace(name):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if (NETNS_DIR / name).exists():
        pyroute2_netns.remove(name)
    unregister_namespace(name)


def pids_in_namespace(name: str) -> list[int]:
    """Pids whose network namespace is the named one (by inode, as `ip netns pids` does)."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def our_namespaces(owner_pid: int | None = None) -> list[str]:
    """Namespaces named by this project, optionally only those made by `owner_pid`."""
    if not NETNS_DIR.is_dir():
        return []
    prefix = NETNS_PREFIX if owner_pid is None else f"{NETNS_PREFIX}{owner_pid}-"
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def sweep_stale_namespaces() -> list[str]:
    """Remove project namespaces whose maker is dead (left by a run that was killed with SIGKILL)."""
    removed = []
    for name in our_namespaces():
        owner = name[len(NETNS_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            remove_namespace(name)
            removed.append(name)
    return removed


_hooks_installed_by: int | None = None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _hooks_installed_by:
        # A forked helper (pyroute2 forks to make netns sockets) is stopped with SIGTERM: let it die.
        os._exit(128 + signum)
    # Turn SIGTERM into the same unwinding as Ctrl-C, so fixtures' teardown runs; the atexit hook is
    # the last resort after that.
    raise KeyboardInterrupt(f"signal {signum}")


def install_exit_hooks() -> None:
    global _hooks_installed_by  # noqa: PLW0603 - one process-wide hook, installed once
    if _hooks_installed_by == os.getpid():
        return
    _hooks_installed_by = os.getpid()
    atexit.register(cleanup_all)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def bench_run(prefix: str, keep: bool, what: str = "the logs") -> Iterator[tuple[Path, list[Daemon]]]:
    """A bench's working directory (under /run) and the daemons it starts: the daemons are stopped newest first
    when the run ends; the directory is named on stderr after a run that failed, and removed after one that went
    through unless `keep`. Enter it inside the Topology, so the daemons stop before their namespaces go."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/run"))
    daemons: list[Daemon] = []
    try:
        yield work, daemons
    except BaseException:
        print(f"bench: {what} are in {work}", file=sys.stderr)
        raise
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
    if keep:
        print(f"bench: {what} are in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, all its threads (proc(5): fields 14 and 15, after the command in
    parentheses): its own code, and the kernel's work on its behalf (system calls, and the softirqs it was
    interrupted by)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    return sum(cpu_times(pid))


def pids_by_argv(*words: str) -> list[int]:
    """Every process whose argv holds all of `words` (whole arguments), in any namespace: a test looks at the
    daemons it made from outside their namespace, where ikectl's own lookups see only their namespace's."""
    wanted = [w.encode() for w in words]
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                if all(w in argv for w in wanted):
                    found.append(int(entry.name))
    return found
