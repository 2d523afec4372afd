"""`ikectl ipsec ARGS...`: libreswan's `ipsec` command aimed at ikectl's pluto, not the system's.

ikectl's pluto keeps its control socket in its run dir (RUN_DIR/pluto/pluto.ctl), so a plain `ipsec status` asks
/run/pluto/pluto.ctl and says "Pluto is not running" (or shows the system's pluto). This runs

    ipsec --ctlsocket RUN_DIR/pluto/pluto.ctl ARGS...

with IPSEC_RUNDIR, CTLSOCKET, IPSEC_CONF and IPSEC_NSSDIR set to ikectl's (libreswan 4.10's `ipsec auto` takes its
socket from IPSEC_RUNDIR alone, the `ipsec` wrapper's NSS commands take IPSEC_NSSDIR). `addconn` and `auto` read
/etc/ipsec.conf unless given `--config`, and would load the system's conns into ikectl's pluto: they are given
ikectl's ipsec.conf when ARGS name none. Everything else goes through unchanged, unknown subcommands included:
libreswan's own words and exit code are the answer. An `ipsec` wrapper without the socket option (older libreswan)
is bypassed: the status subcommands and `whack` run whack directly, with `--ctlsocket`.

Refused (exit 2, nothing run): `start`, `stop`, `restart` and `setup` (they drive the system's ipsec.service) and
`pluto` (it would start another pluto). ikectl's pluto not running, or stopped (SIGSTOP, it would never answer):
one line, exit 1. The run dir is the config's (`--config`), or the one of the record of what `up` applied when
the config's has no pluto (a run dir edited while up) or the config cannot be read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import config, daemon
from .errors import IkectlError, UsageError
from .state import read_here
from .whack import WHACK

IPSEC = Path("/usr/sbin/ipsec")  # Debian's; else whatever `ipsec` PATH finds
WRAPPER_OPTIONS = ("--ctlsocket", "--rundir")  # the wrapper's options that take a value, before the subcommand
NO_PLUTO = ("--version", "version", "--versioncode", "--help", "help", "--directory")  # pluto is not asked
REFUSED = {
    "start": "it starts the system's libreswan (ipsec.service); ikectl's pluto is started by `ikectl up`",
    "restart": "it restarts the system's libreswan (ipsec.service); `ikectl up` starts ikectl's pluto again",
    "stop": "it stops the system's libreswan (ipsec.service); `ikectl down` stops ikectl's pluto",
    "setup": "it drives the system's libreswan (ipsec.service); ikectl's pluto is `ikectl up`'s and `ikectl down`'s",
    "pluto": "it would start another pluto; ikectl's pluto is started by `ikectl up`",
}
GIVEN_CONFIG = ("addconn", "auto")  # read /etc/ipsec.conf unless given --config
# What the wrapper maps to a whack option (libreswan 4.10's programs/ipsec/ipsec.in), for a wrapper without
# --ctlsocket.
WHACK_SUBCOMMANDS = {"status": "--status", "trafficstatus": "--trafficstatus", "traffic": "--trafficstatus",
                     "globalstatus": "--globalstatus", "shuntstatus": "--shuntstatus", "briefstatus": "--briefstatus",
                     "showstates": "--showstates", "fipsstatus": "--fipsstatus", "fips": "--fipsstatus"}


class NotRunning(IkectlError):
    """ikectl's pluto is not running (or is stopped): there is nothing of ikectl's to ask. Exit 1."""


Runner = Callable[[Sequence[str], Mapping[str, str]], int]


def _run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    code = subprocess.run(list(argv), env=dict(env), check=False).returncode  # stdin, stdout, stderr: the user's
    return 128 - code if code < 0 else code  # killed by a signal: as a shell says it


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    env: dict[str, str]


def subcommand(args: Sequence[str]) -> tuple[int, str | None]:
    """Where libreswan's subcommand is in ARGS (past the wrapper's --ctlsocket/--rundir), and which it is."""
    i = 0
    while i < len(args):
        if args[i] in WRAPPER_OPTIONS:
            i += 2
            continue
        return i, args[i]
    return len(args), None


def wrapper() -> Path | None:
    """libreswan's `ipsec` wrapper: Debian's /usr/sbin/ipsec, else the one on PATH."""
    if IPSEC.exists():
        return IPSEC
    path = shutil.which("ipsec")
    return Path(path) if path else None


def takes_ctlsocket(ipsec: Path) -> bool:
    """Does this `ipsec` wrapper (a shell script in every libreswan) take --ctlsocket before the subcommand?"""
    try:
        return b"--ctlsocket" in ipsec.read_bytes()
    except OSError:
        return False


def invocation(args: Sequence[str], run: daemon.RunDir, ipsec: Path | None, base_env: Mapping[str, str]) -> Invocation:
    """The command that asks ikectl's pluto what ARGS ask (UsageError: refused, or not possible with this
    libreswan). Pure: the tests check it without running anything."""
    at, name = subcommand(args)
    if name in REFUSED:
        raise UsageError(f"ikectl ipsec {name}: refused: {REFUSED[name]}")
    ctl = run.pluto_dir / "pluto.ctl"
    env = {**base_env, "IPSEC_RUNDIR": str(run.pluto_dir), "CTLSOCKET": str(ctl), "IPSEC_CONF": str(run.conf),
           "IPSEC_NSSDIR": str(run.nss)}
    args = list(args)
    if name in GIVEN_CONFIG and not any(a == "--config" or a.startswith("--config=") for a in args[at + 1:]):
        args[at + 1:at + 1] = ["--config", str(run.conf)]
    if ipsec is not None and takes_ctlsocket(ipsec):
        return Invocation((str(ipsec), "--ctlsocket", str(ctl), *args), env)
    if name == "whack" or name in WHACK_SUBCOMMANDS:  # no wrapper, or one that cannot be aimed: whack itself
        own = args[at + 1:] if name == "whack" else [WHACK_SUBCOMMANDS[name], *args[at + 1:]]
        return Invocation((str(WHACK), "--ctlsocket", str(ctl), *own), env)
    if ipsec is None:
        raise UsageError(f"ikectl ipsec: libreswan's ipsec command not found (apt-get install libreswan); without it "
                         f"only {', '.join(sorted(WHACK_SUBCOMMANDS))} and whack can be run")
    raise UsageError(f"ikectl ipsec {name}: {ipsec} cannot be aimed at another pluto (no --ctlsocket): only "
                     f"{', '.join(sorted(WHACK_SUBCOMMANDS))} and whack can be run")


def run_dirs(config_path: Path) -> list[Path]:
    """The run dirs where ikectl's pluto may be, the config's first (ConfigError when the config cannot be read
    and nothing is up here)."""
    record = read_here()
    try:
        found = [config.load(config_path).run_dir]
    except config.ConfigError:
        if record is None:
            raise
        found = []
    if record is not None and record.run_dir not in found:
        found.append(record.run_dir)
    return found


def ikectls_pluto(candidates: Sequence[Path]) -> daemon.RunDir:
    """The run dir of ikectl's pluto, which must be running and not stopped."""
    for root in candidates:
        run = daemon.RunDir(root)
        if daemon.pluto_pid(run) is None:
            continue
        stopped = daemon.pluto_stopped(run)
        if stopped is not None:
            raise NotRunning(f"ikectl's pluto (pid {stopped}, run dir {root}) is stopped (SIGSTOP) and answers nothing "
                             f"until it resumes (kill -CONT {stopped}); `ikectl up` replaces it")
        return run
    shown = " or ".join(map(str, candidates))
    if os.geteuid() != 0:
        raise NotRunning(f"ikectl's pluto not found in {shown}: ikectl ipsec needs root (ikectl's run dir is root's); "
                         "run it with sudo")
    raise NotRunning(f"ikectl's pluto is not running (run dir {shown}): `ikectl up` starts it; a plain `ipsec ...` "
                     "asks the system's pluto (/run/pluto/pluto.ctl)")


def main(args: Sequence[str], config_path: Path, say: Callable[[str], None] = lambda _: None,
         runner: Runner = _run) -> int:
    """Run ARGS against ikectl's pluto; libreswan's exit code."""
    ipsec = wrapper()
    name = subcommand(args)[1]
    if name in REFUSED:  # refused whether or not ikectl's pluto runs: the same answer, exit 2, every time
        raise UsageError(f"ikectl ipsec {name}: refused: {REFUSED[name]}")
    if name in (*NO_PLUTO, None):
        if ipsec is None:
            raise IkectlError("libreswan's ipsec command not found: apt-get install libreswan")
        return runner([str(ipsec), *args], os.environ)
    run = ikectls_pluto(run_dirs(config_path))
    found = invocation(args, run, ipsec, os.environ)
    say(f"running {' '.join(found.argv)}")
    return runner(found.argv, found.env)
