"""Plutos of this network namespace that are not ikectl's: the system's libreswan (ipsec.service; control socket
/run/pluto/pluto.ctl, the one a plain `ipsec status` asks) or any other. `status` and `doctor` name them
(docs/coexistence.md).

Such a pluto shares this namespace's XFRM tables with ikectl's. ikectl's backstop sits in its own priority band
(docs/xfrm.md), below every pluto policy; ikectl's pluto's policies for a resolver's DNS (port 53, one host) are
more specific than most conns' and win over them. A policy of anyone else's that DNS to a resolver meets before
ikectl's own (a smaller priority number) overrides ikectl: `conflicts` names those.

A pluto is ikectl's when its run dir (`--rundir`, default /run/pluto) is the `pluto` directory of a run dir ikectl
was given or that ikectl marked as this namespace's. Plutos of other network namespaces share nothing with
ikectl's (neither XFRM tables nor IKE ports) and are not counted. Nothing here changes anything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ikecommon.xfrm import Direction, Policy

from . import policies
from .config import Address
from .daemon import RunDir

SYSTEM_RUNDIR = Path("/run/pluto")  # pluto's and the `ipsec` command's default
PID_FILES = (SYSTEM_RUNDIR / "pluto.pid",)
PROC = Path("/proc")


@dataclass(frozen=True)
class OtherPluto:
    """A live pluto of this network namespace that is not ikectl's (`status --json`: `system_plutos`)."""

    pid: int
    ctlsocket: str  # its control socket
    ipsec_default: bool  # the socket a plain `ipsec ...` command asks (/run/pluto/pluto.ctl)

    def describe(self) -> str:
        asked = ": the one plain `ipsec` commands ask" if self.ipsec_default else ""
        return f"pid {self.pid}, control socket {self.ctlsocket}{asked}"


def _argv(proc: Path, pid: str) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in (proc / pid / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _comm(proc: Path, pid: str) -> str:
    try:
        return (proc / pid / "comm").read_text().strip()
    except OSError:
        return ""


def _live(proc: Path, pid: str) -> bool:
    """Not gone, not a zombie (its state follows the last ')' of /proc/PID/stat)."""
    try:
        stat = (proc / pid / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split(" ", 1)[0] not in ("Z", "X")


def _netns(proc: Path, pid: str) -> int | None:
    try:
        return (proc / pid / "ns" / "net").stat().st_ino
    except OSError:
        return None


def _rundir(argv: Sequence[str], default: Path) -> Path:
    """The run dir a pluto's command line gives it (`--rundir DIR` or `--rundir=DIR`), else `default`."""
    for i, arg in enumerate(argv):
        if arg == "--rundir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--rundir="):
            return Path(arg.split("=", 1)[1])
    return default


def is_ikectls(rundir: Path, ours: Iterable[Path]) -> bool:
    """Is a pluto with this run dir ikectl's: under a run dir ikectl was given, or in one ikectl marked?"""
    rundir = Path(os.path.normpath(rundir))
    for given in ours:
        root = Path(os.path.normpath(given))
        if rundir == root or root in rundir.parents:
            return True
    return rundir.name == "pluto" and RunDir(rundir.parent).ours()


def find(ours: Iterable[Path] = (), proc: Path = PROC, pid_files: Sequence[Path] = PID_FILES) -> list[OtherPluto]:
    """Every live pluto of this network namespace whose run dir is not ikectl's (`ours`: the run dirs of the config
    and the record), found in the process table or named by a pid file (/run/pluto/pluto.pid)."""
    ours = list(ours)
    here = _netns(proc, "self")
    if here is None:
        return []
    found: dict[int, OtherPluto] = {}

    def consider(pid: str, named_by: Path | None) -> None:
        """`named_by`: the pid file that names it, whose directory is its run dir unless its command line says."""
        if int(pid) in found or not _live(proc, pid) or _netns(proc, pid) != here:
            return
        argv = _argv(proc, pid)
        if named_by is None:
            pluto = _comm(proc, pid) == "pluto" or (bool(argv) and Path(argv[0]).name == "pluto")
        else:  # a pid file that outlived its pluto may name another process by now
            pluto = _comm(proc, pid) == "pluto" or any("pluto" in Path(a).name for a in argv)
        rundir = _rundir(argv, SYSTEM_RUNDIR if named_by is None else named_by.parent)
        if pluto and not is_ikectls(rundir, ours):
            ctl = rundir / "pluto.ctl"
            found[int(pid)] = OtherPluto(int(pid), str(ctl), ctl == SYSTEM_RUNDIR / "pluto.ctl")

    with contextlib.suppress(OSError):
        for entry in os.scandir(proc):
            if entry.name.isdigit():
                consider(entry.name, None)
    for pid_file in pid_files:  # a pluto whose command line does not say so (run under a wrapper)
        with contextlib.suppress(OSError, ValueError, IndexError):
            consider(str(int(pid_file.read_text().split()[0])), pid_file)
    return sorted(found.values(), key=lambda p: p.pid)


@dataclass(frozen=True)
class Conflict:
    """Another program's policy that DNS to one of ikectl's resolvers meets before anything of ikectl's."""

    resolver: Address
    policy: Policy

    def describe(self) -> str:
        return f"DNS to {self.resolver} meets {policies.describe(self.policy)} before ikectl's policies"


def conflicts(table: Iterable[Policy], resolvers: Iterable[Address]) -> list[Conflict]:
    """Per resolver and DNS protocol, the outbound policies not of ikectl's (neither its backstop nor its pluto's
    kind for that resolver) that match its DNS and rank before ikectl's best policy for it: its pluto's trap, SA
    or shunt, else the backstop's block. XFRM takes the smallest priority number."""
    table = [p for p in table if p.direction == Direction.OUT]
    found: dict[tuple[Address, int], Conflict] = {}
    for resolver in resolvers:
        for proto in policies.DNS_PROTOCOLS:
            ours = [p.priority for p in table if p.selector.proto == proto and policies.pluto_dns_peer(p) == resolver]
            best = min(ours, default=policies.BACKSTOP_BLOCK_PRIORITY)
            for policy in sorted(table, key=lambda p: p.priority):
                sel = policy.selector
                if (policy.owned or policies.pluto_dns_peer(policy) is not None or policy.priority >= best
                        or sel.proto not in (policies.ANY_PROTOCOL, proto) or not policies.matches_dns(policy)
                        or resolver not in sel.dst):
                    continue
                found.setdefault((resolver, id(policy)), Conflict(resolver, policy))
    return list(found.values())
