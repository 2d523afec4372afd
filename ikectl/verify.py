"""`ikectl verify`: proof from the wire, for users. While it sends test queries to each resolver for a few
seconds, tcpdump captures what leaves the uplink; then, per resolver, it counts ESP packets and plaintext
port-53 packets (ikectl.wire) next to the SA's own counters, and says whether anything leaked.

Only the outbound direction is counted: on this host tcpdump also sees the decrypted inbound packets of
tunnel-mode SAs, which never crossed the wire in clear.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from scapy.utils import rdpcap

from ikecommon import xfrm

from . import routes
from .config import Address, Mode
from .errors import IkectlError
from .state import read_here
from .wire import count_wire

QUERY_NAME = "."  # the root's NS: every resolver can answer it, and it says nothing about the user


class VerifyError(IkectlError):
    """The proof could not be taken (not up, no tcpdump, no route)."""


@dataclass(frozen=True)
class ResolverProof:
    address: str
    expected: str  # "encrypted", "clear or encrypted", "blocked"
    queries: int
    answered: int
    blocked: int  # refused by the kernel before leaving (the backstop)
    esp_out: int
    plaintext_out: int
    sa_packets_out: int  # the SA's own counter moved by this many

    @property
    def verdict(self) -> str:
        if self.plaintext_out and self.expected != "clear or encrypted":
            return "LEAK"
        if self.expected != "blocked" and self.queries and not self.answered:
            return "UNANSWERED"  # not a leak, but DNS that should work does not
        if self.esp_out and not self.plaintext_out:
            return "encrypted"
        if self.plaintext_out:
            return "clear"
        return "blocked" if self.answered == 0 else "encrypted"

    @property
    def leaked(self) -> bool:
        return self.verdict == "LEAK"

    @property
    def failed(self) -> bool:
        return self.verdict in ("LEAK", "UNANSWERED")


def prove(seconds: float, say: Callable[[str], None]) -> list[ResolverProof]:
    record = read_here()
    if record is None:
        raise VerifyError("ikectl is not up: run `ikectl up` first")
    resolvers = list(record.resolvers)
    uplink, local = _uplink(resolvers[0])
    with tempfile.TemporaryDirectory(prefix="ikectl-verify-") as scratch:
        pcap = Path(scratch) / "uplink.pcap"
        say(f"capturing outbound packets on {uplink} for {seconds:.0f} s")
        capture = _start_capture(uplink, pcap)
        try:
            before = _sa_packets_out()
            tallies = {a: [0, 0, 0] for a in resolvers}  # queries, answered, blocked
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for resolver in resolvers:
                    tallies[resolver] = [t + d for t, d in zip(tallies[resolver], _ask(resolver), strict=True)]
                time.sleep(0.2)
            time.sleep(0.3)  # the last answers
            after = _sa_packets_out()
        finally:
            _stop(capture)
        wire = count_wire(rdpcap(str(pcap)) if pcap.stat().st_size else [], local)
    proofs = []
    for resolver in resolvers:
        counts = wire.peer(resolver)
        expected = ("clear or encrypted" if record.mode == Mode.COFFEE_SHOP
                    else "encrypted" if resolver in record.trusted and record.blocked is None else "blocked")
        queries, answered, blocked = tallies[resolver]
        proofs.append(ResolverProof(str(resolver), expected, queries, answered, blocked, counts.esp_out,
                                    counts.plaintext_dns_out, after.get(resolver, 0) - before.get(resolver, 0)))
    return proofs


def format_proofs(proofs: list[ResolverProof]) -> str:
    lines = []
    for p in proofs:
        lines.append(f"{p.address}  {p.verdict:<9}  {p.answered}/{p.queries} answered ({p.blocked} blocked before "
                     f"the wire)  on the wire: {p.esp_out} ESP, {p.plaintext_out} plaintext port-53 packets out  "
                     f"SA counter +{p.sa_packets_out} packets out")
    return "\n".join(lines)


def _ask(resolver: Address) -> tuple[int, int, int]:
    message = dns.message.make_query(QUERY_NAME, "NS")
    try:
        dns.query.udp(message, str(resolver), timeout=1.0)
    except PermissionError:
        return 1, 0, 1
    except (dns.exception.DNSException, OSError):
        return 1, 0, 0
    return 1, 1, 0


def _uplink(resolver: Address) -> tuple[str, set[Address]]:
    route = routes.route_to(resolver)
    if route is None:
        raise VerifyError(f"no route to {resolver}")
    return route.ifname, routes.local_addresses()


def _start_capture(ifname: str, pcap: Path) -> subprocess.Popen[str]:
    try:
        proc = subprocess.Popen(["tcpdump", "-i", ifname, "-Q", "out", "-n", "-U", "--immediate-mode", "-s", "0",
                                 "-Z", "root", "-w", str(pcap)], stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise VerifyError("tcpdump not found: apt-get install tcpdump") from None
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on IFACE, ..." once the capture is live
    if "listening on" not in line:
        _stop(proc)
        raise VerifyError(f"tcpdump did not start on {ifname}: {line.strip()}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _sa_packets_out() -> dict[Address, int]:
    out: dict[Address, int] = {}
    with xfrm.XfrmClient() as client:
        for sa in client.sas():
            if not sa.larval:
                out[sa.dst] = out.get(sa.dst, 0) + sa.counters.packets
    return out
