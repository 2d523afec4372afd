"""What is in place now, read fresh from the kernel and /proc each time: the planner's and `status`'s facts.

Nothing here changes anything. Reading pluto's own view (whack) is left to the callers that need it, with a
deadline: a stopped pluto is seen here first (its state in /proc), so no caller waits on one.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ikecommon import xfrm

from . import backstop, nft
from .nft import TableState

IKE_PORTS = (500, 4500)


@dataclass(frozen=True)
class Process:
    pid: int
    name: str  # /proc/PID/comm
    stopped: bool  # SIGSTOP'ed or traced: it answers nothing until resumed


def process(pid: int) -> Process | None:
    """The live process `pid` (None: gone, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ')'.
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:].split(" ", 1)[0]
    if state in ("Z", "X"):  # dead, waiting to be reaped: gone for anything ikectl asks
        return None
    return Process(pid, name, state in ("T", "t"))


@dataclass(frozen=True)
class Protection:
    """Trusted mode's two backstops, as the kernel holds them now."""

    xfrm_missing: int  # backstop policies absent from the XFRM table
    nft: TableState

    @property
    def anything(self) -> bool:
        """Is any part of either backstop there?"""
        return self.xfrm_missing < len(backstop.policies()) or self.nft in (TableState.INTACT, TableState.DAMAGED)

    @property
    def complete(self) -> bool:
        return self.xfrm_missing == 0 and self.nft in (TableState.INTACT, TableState.UNAVAILABLE)

    def describe(self) -> str:
        parts = []
        if self.xfrm_missing:
            parts.append(f"{self.xfrm_missing} of {len(backstop.policies())} XFRM backstop policies missing")
        if self.nft in (TableState.ABSENT, TableState.DAMAGED):
            parts.append(f"the nftables table is {self.nft.value}")
        if self.nft == TableState.UNAVAILABLE:
            parts.append("no nftables (libnftables not installed): only the XFRM backstop")
        return "; ".join(parts) or "both backstops in place"


def policies() -> tuple[xfrm.Policy, ...]:
    with xfrm.XfrmClient() as client:
        return tuple(p for p in client.policies() if p.direction <= xfrm.Direction.FWD)


def protection(present: Iterable[xfrm.Policy]) -> Protection:
    return Protection(len(backstop.missing(present)), nft.check())


@dataclass(frozen=True)
class IkeDaemon:
    """A process of this network namespace with a socket on UDP 500 or 4500."""

    pid: int
    name: str
    ports: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, udp {'/'.join(map(str, self.ports))})"


def _udp_inodes() -> dict[int, set[int]]:
    """Socket inode -> local ports, for UDP sockets on the IKE ports in this namespace (/proc/net/udp{,6} show
    the namespace of the process that reads them)."""
    found: dict[int, set[int]] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in IKE_PORTS:
                found.setdefault(int(fields[9]), set()).add(port)
    return found


def ike_daemons(exclude: Iterable[int] = ()) -> list[IkeDaemon]:
    """The processes holding UDP 500/4500 sockets in this network namespace, but those in `exclude`."""
    inodes = _udp_inodes()
    if not inodes:
        return []
    skip = set(exclude)
    daemons = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        ports: set[int] = set()
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    match = re.fullmatch(r"socket:\[(\d+)\]", target)
                    if match and int(match.group(1)) in inodes:
                        ports |= inodes[int(match.group(1))]
        if ports:
            found = process(int(entry.name))
            daemons.append(IkeDaemon(int(entry.name), found.name if found else "?", tuple(sorted(ports))))
    return daemons
