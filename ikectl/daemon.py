"""ikectl's own processes: its pluto (the run directory's layout, starting and stopping it by pid) and the
supervisor that `up` leaves running (ikectl/supervisor.py).

Everything of pluto's lives under one run dir (default /run/ikectl), so ikectl never touches a system pluto:

    ipsec.conf, ipsec.secrets, ipsec.d/policies/   the rendered tree
    nss/                                           pluto's NSS db
    pluto/pluto.ctl, pluto/pluto.pid               pluto's control socket and pid
    pluto.log, pluto.log.1, supervisor.log         their logs

What `up` applied is recorded elsewhere (ikectl/state.py), so that it outlives a run dir that changed. A run dir
is removed only through `retire`, which keeps its logs in `[paths] log_dir` first (ikectl/runlogs.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import logline, runlogs
from .errors import IkectlError, UsageError
from .observe import process
from .state import netns_id
from .whack import ADDCONN, DEFAULT_TIMEOUT_S, LIBEXEC, WHACK, Whack

PLUTO = LIBEXEC / "pluto"
MARKER = ".ikectl-run"
LOGS = ("pluto.log", "pluto.log.1", "supervisor.log")  # what `retire` keeps in log_dir
# What ikectl makes in a run dir (render's tree, pluto's dirs and logs, the supervisor's log): all `remove` removes.
OWN_ENTRIES = ("ipsec.conf", "ipsec.secrets", "ipsec.d", "nss", "pluto", *LOGS)


class ForeignRunDir(UsageError):
    """The config names a run dir that is not ikectl's (a symlink, a file, a directory of someone else's)."""


class DaemonError(IkectlError):
    """pluto could not be started or stopped."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "ipsec.conf"

    @property
    def secrets(self) -> Path:
        return self.root / "ipsec.secrets"

    @property
    def ipsecd(self) -> Path:
        return self.root / "ipsec.d"

    @property
    def nss(self) -> Path:
        return self.root / "nss"

    @property
    def pluto_dir(self) -> Path:
        return self.root / "pluto"

    @property
    def log(self) -> Path:
        return self.root / "pluto.log"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def logs(self) -> tuple[Path, ...]:
        """pluto's log, the one of the pluto before it, the supervisor's."""
        return tuple(self.root / name for name in LOGS)

    def prepare(self) -> None:
        """Make the run dir (0700), marked as this network namespace's ikectl's: only such a dir is removed."""
        self.check()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.ours():
            self.marker.write_text(f"netns {netns_id()}: a run dir of ikectl's own; `ikectl down` removes what it "
                                   "made here\n")

    def check(self) -> None:
        """ForeignRunDir unless the run dir is ikectl's or can become so. A directory that holds anything else and
        is not marked is someone else's (`up` would overwrite its ipsec.conf and `down` remove its ipsec.d)."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise ForeignRunDir(f"run dir {self.root}: not a directory of ikectl's (a symlink or a file): set "
                              "[paths] run_dir to a new directory")
        if self.root.is_dir() and not self.ours() and any(self.root.iterdir()):
            raise ForeignRunDir(f"run dir {self.root}: holds files that are not ikectl's: set [paths] run_dir to a new "
                              "or empty directory")

    def ours(self) -> bool:
        """Marked by ikectl of this network namespace (not a directory of the user's, nor another namespace's)."""
        try:
            return self.marker.read_text().split()[:2] == ["netns", f"{netns_id()}:"]
        except OSError:
            return False

    def remove(self) -> bool:
        """Remove what ikectl made here, then the dir if that leaves it empty; a dir without this namespace's
        marker is not touched (a config may name a directory of the user's, or another namespace's run dir).
        True when the dir is gone. ikectl calls `retire`, which keeps the logs first."""
        if not self.ours():
            return not self.root.exists()
        for name in OWN_ENTRIES:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()
        return not self.root.exists()

    def whack(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Whack:
        return Whack(rundir=self.pluto_dir, config=self.conf, log=self.log, timeout_s=timeout_s)

    def read_log(self, start: int) -> tuple[int, bytes]:
        """pluto's log from byte `start` to its last complete line, and where that part starts: 0 when the
        log is shorter than `start` (a new log: pluto was restarted). A line pluto is still writing is left
        for the next read, so a reader that goes on from `start + len(text)` never sees half a line. A log
        that cannot be read gives nothing from `start`: the reader keeps its place, and does not read again
        what it has read before."""
        try:
            with open(self.log, "rb") as log:
                size = log.seek(0, 2)
                start = start if start <= size else 0
                log.seek(start)
                text = log.read(size - start)
        except OSError:
            return start, b""
        return start, text[:text.rfind(b"\n") + 1]


@dataclass(frozen=True)
class Retired:
    gone: bool  # the run dir is gone
    kept: Path | None = None  # where its logs are now (None: it left none, or they could not be kept)
    warning: str | None = None  # why they could not be kept


def retire(run: RunDir, log_dir: Path) -> Retired:
    """The one way a run dir is removed (`down`, a failed `up`, an `up` whose config names another run dir): its
    logs go to log_dir/last first (ikectl/runlogs.py), then what ikectl made there. Its pluto and supervisor are
    stopped by then, so the logs are whole. Keeping them never stops the removal: whatever goes wrong (a read-only
    or full log_dir) is the warning, and the run dir goes all the same."""
    if not run.ours():  # not ikectl's, or another namespace's: nothing of it is touched, its logs included
        return Retired(run.remove())
    kept, warning = None, None
    try:
        kept = runlogs.keep(run.logs, log_dir)
    except Exception as exc:  # whatever it meets, `down` goes on
        warning = f"the logs of {run.root} could not be kept in {log_dir}: {exc}"
    return Retired(run.remove(), kept, warning)


def in_this_netns(pid: int) -> bool:
    """Does `pid` live in this process's network namespace? Two namespaces can be configured with the same run dir
    (the default one, say): ikectl only ever stops or counts its own namespace's processes."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def pluto_pid(run: RunDir) -> int | None:
    """The pid of the pluto serving this run dir in this network namespace, if one is alive."""
    try:
        pid = int((run.pluto_dir / "pluto.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    ours = b"pluto" in cmdline and str(run.pluto_dir).encode() in cmdline and in_this_netns(pid)
    return pid if ours else None


def require_libreswan() -> None:
    """libreswan's programs are there: checked before `up` touches anything (a missing package is bad setup, not
    a failure to fail closed on)."""
    for program in (PLUTO, WHACK, ADDCONN):
        if not program.exists():
            raise DaemonError(f"{program} not found: install libreswan (apt-get install libreswan)")


def start_pluto(run: RunDir, timeout: float = 30.0) -> int:
    require_libreswan()
    run.prepare()
    run.pluto_dir.mkdir(parents=True, exist_ok=True)
    if pluto_pid(run) is None:  # a pluto that was killed leaves its lock file, and a new one refuses to start
        for leftover in ("pluto.pid", "pluto.ctl"):
            (run.pluto_dir / leftover).unlink(missing_ok=True)
    init_nss(run.nss)
    # A new pluto starts its log afresh (logappend=no truncates it in place, so an offset into the old one would
    # miss the new one's first lines): the previous log is kept beside it, for whoever looks into why it ended.
    with contextlib.suppress(FileNotFoundError):
        run.log.replace(run.log.with_name(run.log.name + ".1"))
    argv = [str(PLUTO), "--config", str(run.conf), "--rundir", str(run.pluto_dir), "--nssdir", str(run.nss),
            "--secretsfile", str(run.secrets), "--ipsecdir", str(run.ipsecd), "--logfile", str(run.log)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)  # pluto forks
    if proc.returncode != 0:
        raise DaemonError(f"pluto did not start: {(proc.stderr or proc.stdout).strip() or proc.returncode}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = pluto_pid(run)
        listening = "listening for IKE messages" in _log_since(run, 0)
        if pid and listening and (run.pluto_dir / "pluto.ctl").exists():
            return pid
        time.sleep(0.05)
    stop_pluto(run)  # what did start must not outlive the failure (nothing else would stop it)
    raise DaemonError(f"pluto did not come up within {timeout:.0f} s; see {run.log}")


def init_nss(nss: Path) -> None:
    """Create pluto's NSS db in `nss` unless it is there already."""
    nss.mkdir(parents=True, exist_ok=True)
    if (nss / "cert9.db").exists():
        return
    proc = subprocess.run(["certutil", "-N", "-d", f"sql:{nss}", "--empty-password"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DaemonError(f"cannot create pluto's NSS db in {nss}: {(proc.stderr or proc.stdout).strip()}")


def pluto_stopped(run: RunDir) -> int | None:
    """The pid of our pluto when it is stopped (SIGSTOP): it answers no whack call until it is resumed."""
    pid = pluto_pid(run)
    found = process(pid) if pid is not None else None
    return pid if found is not None and found.stopped else None


def stop_pluto(run: RunDir, timeout: float = 10.0) -> bool:
    """Stop our pluto by pid; True if one was running. A pluto that is stopped (SIGSTOP) cannot act on SIGTERM,
    and one that does not exit in time is stuck: both are killed."""
    pid = pluto_pid(run)
    if pid is None:
        return False
    _terminate(pid, timeout)
    return True


def _terminate(pid: int, timeout: float) -> None:
    found = process(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if found is not None and found.stopped else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- the supervisor ---

SUPERVISOR_MODULE = "ikectl.supervisor"


def start_supervisor(run: RunDir, journal: bool | None = None) -> int:
    """Start a supervisor for the record of this namespace, its log in `run`, detached from the caller; its pid.
    `journal`: its lines go to the journal too (ikectl/journal.py); by default when this process's stderr is
    journald's stream (ikectl.service), which the supervisor cannot tell itself: its stderr is its log file."""
    run.prepare()
    journal = logline.to_journal() if journal is None else journal
    argv = [sys.executable, "-m", SUPERVISOR_MODULE, str(run.root), *(["--journal"] if journal else [])]
    log = open(run.supervisor_log, "ab")  # noqa: SIM115 - handed to the child, closed here after
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd="/")
    finally:
        log.close()
    return proc.pid


def supervisors_of(run: RunDir) -> list[int]:
    """The pids of every supervisor started for `run` (a crash of `down` or a changed run dir can leave one)."""
    found = []
    wanted = [SUPERVISOR_MODULE.encode(), str(run.root).encode()]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                if all(w in argv for w in wanted) and in_this_netns(int(entry.name)):
                    found.append(int(entry.name))
    return found


def supervisor_running(pid: int | None) -> bool:
    """Is `pid` an ikectl supervisor (of any run dir) of this network namespace that is alive?"""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return SUPERVISOR_MODULE.encode() in cmdline and in_this_netns(pid)


def runs_older_code(pid: int, package: Path = Path(__file__).parent) -> bool:
    """Did `pid` start before ikectl's code on disk was last replaced (an upgrade in place, which keeps the
    supervisor running)? Such a supervisor does not know what a newer `up` records, and would undo it. The files'
    ctime, since dpkg keeps the archive's mtimes."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    try:
        replaced = max(p.stat().st_ctime for p in (*package.glob("*.py"), *package.glob("templates/*.j2")))
    except (OSError, ValueError):
        return False
    return replaced > started + 1  # btime is whole seconds


def end_if_stuck(pid: int) -> bool:
    """A supervisor of this namespace that is stopped (SIGSTOP) can never let go of the lock it holds: kill it
    (`up` starts another). True when it was one, and is gone."""
    found = process(pid)
    if found is None or not found.stopped or not supervisor_running(pid):
        return False
    _terminate(pid, 5.0)
    return process(pid) is None


def stop_supervisor(pid: int | None, timeout: float = 5.0) -> None:
    if pid is not None and supervisor_running(pid):
        _terminate(pid, timeout)


def _log_since(run: RunDir, offset: int) -> str:
    try:
        with open(run.log, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except OSError:
        return ""
