"""A flood of IKE_SA_INIT requests from spoofed sources, and the server's memory sampled while it lasts.

The attacker is a namespace to which a whole prefix of source addresses (a /16, say) is routed, and in which that
prefix is made local (`ip route add local PREFIX dev lo`, Linux's "AnyIP"). One UDP socket bound to port 500 then
sends from any address of the prefix, chosen per datagram with IP_PKTINFO, and receives every answer the responder
sends to those addresses: the kernel builds honest IP and UDP headers, and the answers are counted by kind without
a capture.

Every request is the first message of a well-behaved initiator (built by `enclave_ike.ikev2.initiator`: SA, KE,
Ni, NAT detection), with its own SPIi and nonce, and no COOKIE. It runs as its own process in the attacker's
namespace (`Flood`, a `procs.Daemon`), paced at `rate` datagrams per second or as fast as it can, until `count` are
sent or SIGTERM; it prints a progress line every `PROGRESS_S` seconds and writes a JSON `FloodReport` at the end:

    python -m netns_tests.harness.flood --target 10.79.2.53 --sources 10.200.0.0/16 --count 100000 \\
        --rate 5000 --report FILE
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path

from enclave_ike.ikev2.config import Endpoint, InitiatorConfig
from enclave_ike.ikev2.constants import NotifyType, PayloadType
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import Message, Nonce, TrafficSelector

from .procs import Daemon, HarnessError, tail
from .topology import Host, Topology

IKE_PORT = 500
IP_PKTINFO = 8  # <linux/in.h>; Python's socket module does not export it
PROGRESS_S = 0.5
BATCH_S = 0.002  # the pacer sends what is due every 2 ms
DRAIN_S = 1.0  # after the last request, answers still counted for this long
_FIRST_PAYLOAD, _NOTIFY_TYPE = 16, 34  # offsets in an answer: header's next payload; first Notify's type


# --- the request ---

@dataclass(frozen=True)
class InitTemplate:
    """One IKE_SA_INIT request, cut where a flood makes each copy its own: SPIi (octets 0-7) and Ni's first eight
    octets."""

    head: bytes  # from after SPIi to Ni
    tail: bytes  # Ni's remaining octets and what follows

    def request(self, serial: int, spi_prefix: bytes) -> bytes:
        tag = serial.to_bytes(8, "big")
        return spi_prefix + tag[4:] + self.head + tag + self.tail


def init_template(target: IPv4Address) -> InitTemplate:
    """What our own initiator core sends first (AES-GCM-16-256, PRF SHA2-256, Curve25519, NULL auth), cut up."""
    fixed = iter(range(1 << 30))

    def random(n: int) -> bytes:  # deterministic, so that the nonce can be found again
        return bytes((next(fixed) * 37 + 11) & 0xFF for _ in range(n))

    local = Endpoint(IPv4Address("192.0.2.1"), IKE_PORT)  # any: the NAT detection hashes cover SPIi anyway
    peer = Endpoint(target, IKE_PORT)
    config = InitiatorConfig(tsi=(TrafficSelector(local.address, IPv4Address("255.255.255.255")),),
                             tsr=(TrafficSelector(target, target, 17, 53, 53),))
    ((data, _),) = Initiator(config, local=local, peer=peer, random=random, now=0.0).datagrams_to_send()
    nonce = Message.decode(data).find(Nonce)
    if nonce is None:
        raise HarnessError("the initiator core sent an IKE_SA_INIT without a nonce")
    at = data.index(nonce.data)
    return InitTemplate(head=data[8:at], tail=data[at + 8:])


# --- the flood, inside the attacker's namespace ---

@dataclass
class FloodReport:
    sent: int = 0
    send_seconds: float = 0.0
    answered: int = 0
    cookies: int = 0  # answers whose first payload is a COOKIE notify
    sa_init: int = 0  # full IKE_SA_INIT answers: the server made a half-open SA
    other: dict[str, int] = field(default_factory=dict)  # other answers, by notify type or first payload
    first_cookie_after: int | None = None  # requests sent when the first COOKIE arrived
    send_errors: int = 0  # datagrams the local kernel refused (a full socket buffer, no route)

    @property
    def rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    def line(self) -> str:
        others = ", ".join(f"{n} {k}" for k, n in sorted(self.other.items()))
        return (f"flood: {self.sent} sent in {self.send_seconds:.1f} s ({self.rate:.0f}/s), {self.answered} answered: "
                f"{self.cookies} COOKIE, {self.sa_init} IKE_SA_INIT{', ' + others if others else ''}; "
                f"{self.send_errors} send errors")


def _classify(answer: bytes, report: FloodReport, kinds: Counter[str]) -> None:
    report.answered += 1
    if len(answer) < _NOTIFY_TYPE + 2:
        kinds["short"] += 1
        return
    first = answer[_FIRST_PAYLOAD]
    if first == PayloadType.NOTIFY:
        notify = int.from_bytes(answer[_NOTIFY_TYPE:_NOTIFY_TYPE + 2], "big")
        if notify == NotifyType.COOKIE:
            if not report.cookies:
                report.first_cookie_after = report.sent
            report.cookies += 1
            return
        try:
            kinds[NotifyType(notify).name] += 1
        except ValueError:
            kinds[f"notify {notify}"] += 1
    elif first == PayloadType.SA:
        report.sa_init += 1
    else:
        kinds[f"payload {first}"] += 1


def flood(target: IPv4Address, sources: IPv4Network, count: int, rate: float | None,
          stop: threading.Event | None = None) -> FloodReport:
    """Send `count` requests to `target`, each from the next address of `sources`, and count the answers. `stop`
    ends the sending early (the answers are still drained and counted)."""
    stop = stop or threading.Event()
    template = init_template(target)
    pktinfo = [struct.pack("=i4s4s", 0, address.packed, bytes(4)) for address in sources.hosts()]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", IKE_PORT))  # noqa: S104 - to answer every address of the spoofed prefix
    sock.setblocking(False)
    destination = (str(target), IKE_PORT)
    spi_prefix = os.urandom(4)
    report, kinds = FloodReport(), Counter[str]()
    started = time.monotonic()
    next_progress = started + PROGRESS_S

    def drain() -> None:
        while True:
            try:
                answer = sock.recv(2048)
            except BlockingIOError:
                return
            _classify(answer, report, kinds)

    while report.sent < count and not stop.is_set():
        now = time.monotonic()
        due = count if rate is None else min(count, int((now - started) * rate) + 1)
        while report.sent < due:
            ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo[report.sent % len(pktinfo)])]
            try:
                sock.sendmsg([template.request(report.sent, spi_prefix)], ancillary, 0, destination)
            except BlockingIOError:
                break  # the socket's buffer is full: answers first, then this request again
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.ENETUNREACH, errno.EHOSTUNREACH):
                    raise
                report.send_errors += 1
            report.sent += 1
            if rate is None and report.sent % 64 == 0:
                break
        drain()
        if now >= next_progress:
            report.send_seconds, report.other = now - started, dict(kinds)
            print(report.line(), flush=True)
            next_progress = now + PROGRESS_S
        if rate is not None and report.sent < count:
            time.sleep(BATCH_S)
    report.send_seconds = time.monotonic() - started
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    report.other = dict(kinds)
    print(report.line(), flush=True)
    return report


# --- from the test's side ---

def route_spoofed_sources(topo: Topology, attacker: Host, router: Host, sources: str) -> None:
    """Make `sources` the attacker's: routed to it by the router, local to it (it may send from and receive on any
    address of the prefix)."""
    gateway = attacker.interface_to(router).ipv4
    if gateway is None:
        raise HarnessError(f"{attacker.name} has no IPv4 address towards {router.name}")
    topo.run(router, ["ip", "route", "add", sources, "via", str(gateway.ip)])
    topo.run(attacker, ["ip", "route", "add", "local", sources, "dev", "lo"])


class Flood(Daemon):
    """The flood as a process in the attacker's namespace: `wait()` for it to end, or `finish()` it early; both
    return its report."""

    def __init__(self, attacker: Host, workdir: Path, *, target: IPv4Address, sources: str, count: int,
                 rate: float | None) -> None:
        self.report_path = workdir / "flood.json"
        argv = [sys.executable, "-m", "netns_tests.harness.flood", "--target", str(target), "--sources", sources,
                "--count", str(count), "--report", str(self.report_path)]
        if rate is not None:
            argv += ["--rate", str(rate)]
        super().__init__(f"flood@{attacker.name}", argv, workdir / "flood.log", netns=attacker.netns)

    def wait(self, timeout: float) -> FloodReport:
        self.wait_for_log(r"flood: done", timeout=timeout)
        return self._report()

    def finish(self, timeout: float = 30.0) -> FloodReport:
        """Stop sending now (SIGTERM); the flood still counts the answers in flight and writes its report."""
        self.stop(timeout=timeout)
        return self._report()

    def _report(self) -> FloodReport:
        if not self.report_path.exists():
            raise HarnessError(f"{self.name} wrote no report; log tail:\n{tail(self.log_text())}")
        return FloodReport(**json.loads(self.report_path.read_text()))


class RssSampler:
    """Samples a process's VmRSS (and reads its VmHWM, the peak) from /proc every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS in KiB)
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_rss_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return  # the process is gone; what was sampled stands
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        self.samples.append((time.monotonic(), int(fields["VmRSS"].split()[0])))
        self.hwm_kib = max(self.hwm_kib, int(fields["VmHWM"].split()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a flood of spoofed IKE_SA_INIT requests")
    parser.add_argument("--target", type=IPv4Address, required=True)
    parser.add_argument("--sources", required=True, help="the prefix to send from, routed to and local here")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: as fast as it can)")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    sources = ip_network(args.sources)
    if not isinstance(sources, IPv4Network) or sources.num_addresses < 4:
        parser.error(f"--sources {args.sources}: an IPv4 prefix of at least 4 addresses")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # stop early, but still report
    report = flood(args.target, sources, args.count, args.rate, stop)
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(report)))
    tmp.replace(args.report)
    print("flood: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
