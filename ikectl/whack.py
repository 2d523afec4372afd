"""Typed control of pluto through the `whack` and `addconn` programs, never the control socket (its binary
format changes with the build). Layered like strongSwan's vici package:

- command builders: the argv for each operation (`Whack.argv`);
- a parser of whack's `NNN text` reply lines (`parse_reply`) and of the status listings into dataclasses;
- `Whack`, which runs the programs (optionally inside a network namespace) and raises WhackError, quoting
  pluto's own line, when pluto refuses. addconn can exit 0 after pluto "failed to add connection", so
  its output is read too.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from .errors import IkectlError

LIBEXEC = Path("/usr/libexec/ipsec")
WHACK, ADDCONN = LIBEXEC / "whack", LIBEXEC / "addconn"


class WhackError(IkectlError):
    """pluto refused or failed; the message quotes its line."""

    def __init__(self, operation: str, line: str) -> None:
        self.operation, self.line = operation, line
        super().__init__(f"{operation}: pluto says: {line}")


class WhackTimeout(WhackError):
    """pluto did not answer within the call's deadline."""


@dataclass(frozen=True)
class ReplyLine:
    code: int  # pluto's RC_* number: 0 informational, 2 log, 6 traffic status, 20-99 refusals, 1xx progress
    text: str

    @property
    def refusal(self) -> bool:
        # RC_DUPNAME (20) up to the permanent failures are refusals; 100-199 report a state reached (RC_NEW_V2_STATE
        # + state: "initiating IKEv2 connection" is 181), 200 and up a notification pluto got or sent.
        return FIRST_ERROR_CODE <= self.code < FIRST_PROGRESS_CODE or self.code >= FIRST_NOTIFICATION_CODE


_LINE = re.compile(r"^(\d{3}) ?(.*)$")
FIRST_ERROR_CODE = 20  # RC_DUPNAME (RC_UNKNOWN_NAME 21, RC_ROUTE 25, ...)
FIRST_PROGRESS_CODE = 100  # a state reached
FIRST_NOTIFICATION_CODE = 200  # RC_NOTIFICATION + the IKE notify type


def parse_reply(output: str) -> list[ReplyLine]:
    """whack's reply lines; lines without an RC prefix continue the previous one."""
    lines: list[ReplyLine] = []
    for raw in output.splitlines():
        match = _LINE.match(raw)
        if match:
            lines.append(ReplyLine(int(match.group(1)), match.group(2).rstrip()))
        elif raw.strip() and lines:
            lines[-1] = ReplyLine(lines[-1].code, f"{lines[-1].text} {raw.strip()}")
        elif raw.strip():  # addconn writes plain text
            lines.append(ReplyLine(0, raw.strip()))
    return lines


@dataclass(frozen=True)
class TrafficStatus:
    """One established Child SA, from `whack --trafficstatus`."""

    serial: int
    conn: str
    peer: str | None  # for instances of templates and OE groups
    in_bytes: int
    out_bytes: int
    peer_id: str


_TRAFFIC = re.compile(r'^#(\d+): "([^"]+)"(?:\[\d+\])?(?: \.\.\.(\S+?))?, type=ESP, add_time=\d+, '
                      r"inBytes=(\d+), outBytes=(\d+)(?:, maxBytes=\S+)?, id='([^']*)'")


def traffic_status(lines: Sequence[ReplyLine]) -> list[TrafficStatus]:
    found = []
    for line in lines:
        match = _TRAFFIC.match(line.text)
        if match:
            serial, conn, peer, in_bytes, out_bytes, peer_id = match.groups()
            found.append(TrafficStatus(int(serial), conn, peer, int(in_bytes), int(out_bytes), peer_id))
    return found


@dataclass(frozen=True)
class BareShunt:
    """A shunt pluto installed on its own (e.g. the pass shunt of an OE negotiation that failed)."""

    src: IPv4Network | IPv6Network
    src_port: int
    proto: int
    dst: IPv4Network | IPv6Network
    dst_port: int
    action: str  # %pass, %drop, %hold, ...
    reason: str  # oe-failed, ...


_SHUNT = re.compile(r"^(\S+?):(\d+) -(\d+)-> (\S+?):(\d+) => (%\w+)\s+\d+\s+(.*)$")


def shunt_status(lines: Sequence[ReplyLine]) -> list[BareShunt]:
    found = []
    for line in lines:
        match = _SHUNT.match(line.text.strip())
        if match:
            src, sport, proto, dst, dport, action, reason = match.groups()
            found.append(BareShunt(ip_network(src), int(sport), int(proto), ip_network(dst), int(dport), action,
                                   reason.strip()))
    return found


@dataclass(frozen=True)
class State:
    """One IKE or Child SA state from `whack --showstates`."""

    serial: int
    conn: str
    peer: str | None
    name: str  # e.g. STATE_V2_ESTABLISHED_IKE_SA
    established: bool
    is_child: bool
    parent: int | None  # the IKE SA of a Child SA


_STATE = re.compile(r'^#(\d+): "([^"]+)"(?:\[\d+\])?(?: \.\.\.(\S+?))?(?::\d+)? (STATE_\w+) \(([^)]*)\);(.*)$')


def states(lines: Sequence[ReplyLine]) -> list[State]:
    found = []
    for line in lines:
        match = _STATE.match(line.text)
        if match is None:
            continue
        serial, conn, peer, name, _description, rest = match.groups()
        parent = re.search(r"IKE SA #(\d+)", rest)
        found.append(State(int(serial), conn, peer, name, "ESTABLISHED" in name, "CHILD" in name,
                           int(parent.group(1)) if parent else None))
    return found


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


DEFAULT_TIMEOUT_S = 15.0  # one whack or addconn call; a pluto that takes longer is stuck, not slow


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout_s)


@dataclass(frozen=True)
class Whack:
    """One pluto, known by its run dir (control socket) and config file, maybe inside a namespace."""

    rundir: Path
    config: Path
    netns: str | None = None
    runner: Runner | None = None  # tests fake the program boundary here; None runs the programs
    log: Path | None = None  # pluto's log: addconn often fails silently, and the reason is only there
    timeout_s: float = DEFAULT_TIMEOUT_S  # every call has a deadline: a stuck pluto is reported, never waited on

    def argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, str(WHACK), "--rundir", str(self.rundir), *args]

    def addconn_argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, str(ADDCONN), "--config", str(self.config), "--ctlsocket", str(self.rundir / "pluto.ctl"),
                *args]

    def _call(self, operation: str, argv: list[str]) -> list[ReplyLine]:
        try:
            proc = self.runner(argv) if self.runner is not None else _run(argv, self.timeout_s)
        except subprocess.TimeoutExpired:
            raise WhackTimeout(operation, f"no answer within {self.timeout_s:g} s: pluto is stuck") from None
        except OSError as exc:
            raise WhackError(operation, f"cannot run {argv[0]}: {exc}") from None
        lines = parse_reply(proc.stdout + proc.stderr)
        refusals = [line for line in lines if line.refusal]
        # addconn can exit 0 after a conn failed to load; these are its words for that.
        failed_add = [line for line in lines
                      if "failed to add connection" in line.text or "did not load properly" in line.text
                      or "duplicate key" in line.text]
        if proc.returncode != 0 or refusals or failed_add:
            said = (refusals or failed_add or lines)[-1].text if (refusals or failed_add or lines) else ""
            program = next((Path(a).name for a in argv if a in (str(WHACK), str(ADDCONN))), argv[0])
            raise WhackError(operation, said or self._reason_from_log()
                             or f"{program} exited {proc.returncode} without a word")
        return lines

    def _reason_from_log(self) -> str | None:
        """The last line where pluto says something failed, from its log."""
        if self.log is None:
            return None
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-50:]
        except OSError:
            return None
        for line in reversed(tail):
            if "failed" in line or "ERROR" in line:
                return line.split(": ", 1)[1] if re.match(r"^\w{3} \d+ [\d:.]+: ", line) else line
        return None

    # --- commands ---

    def add(self, conn: str) -> None:
        self._call(f"add conn {conn}", self.addconn_argv(conn))

    def replace(self, conn: str) -> None:
        """Load the conn's current definition from the config, replacing the loaded one."""
        self.delete(conn)
        self.add(conn)

    def delete(self, conn: str) -> None:
        self._call(f"delete conn {conn}", self.argv("--delete", "--name", conn))

    def route(self, conn: str) -> None:
        self._call(f"route conn {conn}", self.argv("--route", "--name", conn))

    def initiate(self, conn: str) -> None:
        """Start negotiating without waiting for it (the outcome shows in states())."""
        self._call(f"initiate conn {conn}", self.argv("--initiate", "--asynchronous", "--name", conn))

    def initiate_opportunistic(self, local: str, remote: str, proto: int = 17, dport: int = 53) -> None:
        """Start the opportunistic negotiation a packet from `local` to `remote` would trigger, before any
        packet is sent (so the first DNS query finds IPsec, or the clear fallback, already in place)."""
        self._call(f"opportunistic IKE to {remote}", initiate_opportunistic_argv(self, local, remote, proto, dport))

    def reread_groups(self) -> None:
        """Reload the opportunistic policy groups (and the interfaces)."""
        self._call("reread policy groups", self.argv("--listen"))

    def listen(self) -> None:
        """Rescan the interfaces (an address came or went) and reload the groups: the same --listen."""
        self._call("rescan interfaces", self.argv("--listen"))

    # --- status ---

    def traffic_status(self) -> list[TrafficStatus]:
        return traffic_status(self._call("traffic status", self.argv("--trafficstatus")))

    def shunt_status(self) -> list[BareShunt]:
        return shunt_status(self._call("shunt status", self.argv("--shuntstatus")))

    def states(self) -> list[State]:
        return states(self._call("states", self.argv("--showstates")))


def initiate_opportunistic_argv(whack: Whack, local: str, remote: str, proto: int, dport: int) -> list[str]:
    return whack.argv("--oppohere", local, "--oppothere", remote, "--oppoproto", str(proto),
                      "--opposport", "0", "--oppodport", str(dport))
