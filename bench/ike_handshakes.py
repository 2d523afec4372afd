"""Benchmark: IKE handshakes per second of enclave-ike against libreswan's pluto as the responder, same load.

    .venv/bin/python bench/ike_handshakes.py [--seconds 15] [--rounds 3] [--concurrency 16]

Both responders run at once, each in a namespace of its own behind one router; one load generator, in a third
namespace, drives them in turn, round by round (A B A B ...), so that a drift of the machine's speed hits both:

    load 10.80.1.2 (clients 10.81.0.1-N) -- router -- enclave 10.80.2.53 (enclave-ike serve)
                                                  \\-- pluto   10.80.3.53 (pluto, a NULL-auth responder conn)

The load generator is our own initiator core (enclave_ike.ikev2.initiator) in one process: `--concurrency`
clients, each from its own address, each running handshake after handshake: IKE_SA_INIT, IKE_AUTH (NULL auth, RFC
7619) with a transport-mode Child SA for udp/53, then an INFORMATIONAL Delete of the IKE SA, and the next. A
handshake counts when its Child SA is established; the rate is handshakes / seconds. Both responders are offered
and accept exactly one suite: IKE AES-GCM-16-256, PRF HMAC-SHA2-256, DH 31 (Curve25519); ESP AES-GCM-16-256 without
PFS. Both install each Child SA in the kernel (two SAs and their policies) and remove it on the Delete, so this runs
where ESP works: in the VM with Debian's kernel when this host's kernel has none (on the host, pluto's SA install
fails and it abandons the IKE SA, so the two would not be doing the same work).

Besides the rate, each responder's CPU time (utime + stime of its process, all threads) per handshake is read from
/proc: with 2 vCPUs shared by the load generator and the responder, the rate of the cheaper responder is bounded by
the generator, while CPU per handshake is not. Under TCG every absolute number is slow; compare the ratios.
Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path

from enclave_ike.ikev2.config import Endpoint, InitiatorConfig
from enclave_ike.ikev2.constants import DhGroup, EncrId, IntegId, PrfId
from enclave_ike.ikev2.crypto import ChildSuite, IkeSuite
from enclave_ike.ikev2.events import ChildSaEstablished, PeerErrorNotified, ProtocolErrorEvent
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.state import State
from netns_tests.harness import procs
from netns_tests.harness.kernel import probe_esp
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.vm import VmSpec, run_in_vm

IKE_PORT = 500
ENCLAVE, PLUTO = "10.80.2.53", "10.80.3.53"
CLIENTS = "10.81.0.0/24"
IKE_SUITE = IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.CURVE25519)
ESP_SUITE = ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
HANDSHAKE_TIMEOUT_S = 10.0
DRAIN_S = 10.0  # after the window, open handshakes may finish their Delete (not counted)

PLUTO_CONN = f"""conn bench
\tleft={PLUTO}
\tleftid=%null
\tright=%any
\trightid=%null
\tauthby=null
\tleftprotoport=17/53
\trightprotoport=17/0
\ttype=transport
\tikev2=insist
\tike=aes_gcm256-sha2_256-dh31
\tesp=aes_gcm256
\tpfs=no
\tleftupdown=%disabled
\tauto=add
"""


# --- the load generator (runs in the load namespace) ---

@dataclass
class LoadReport:
    handshakes: int = 0  # Child SA established within the window
    handshakes_all: int = 0  # with those finished after it (the responder's CPU time covers them too)
    failures: int = 0  # handshakes that ended without one (an error notify, retransmissions exhausted, timeout)
    seconds: float = 0.0
    cpu_s: float = 0.0  # the load generator's own CPU time in the window
    latencies_ms: list[float] = field(default_factory=list)  # first IKE_SA_INIT sent -> Child SA established

    @property
    def rate(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0


class Client:
    """One client address running handshake after handshake against the target."""

    def __init__(self, address: IPv4Address, target: IPv4Address) -> None:
        self.local, self.peer = Endpoint(address, IKE_PORT), Endpoint(target, IKE_PORT)
        self.config = InitiatorConfig(tsi=(TrafficSelector(address, address, 17),),
                                      tsr=(TrafficSelector(target, target, 17, 53, 53),),
                                      ike_suites=(IKE_SUITE,), esp_suites=(ESP_SUITE,), initial_contact=False)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((str(address), IKE_PORT))
        self.sock.setblocking(False)
        self.initiator: Initiator | None = None
        self.started = 0.0
        self.established = False

    def begin(self, now: float) -> None:
        self.initiator = Initiator(self.config, local=self.local, peer=self.peer, random=os.urandom, now=now)
        self.started, self.established = now, False
        self.flush()

    def flush(self) -> None:
        if self.initiator is not None:
            for data, to in self.initiator.datagrams_to_send():
                self.sock.sendto(data, (str(to.address), to.port))

    def step(self, now: float, report: LoadReport, counting: bool) -> None:
        """Follow events and timers; a finished handshake's IKE SA is deleted, a deleted one frees the client."""
        initiator = self.initiator
        if initiator is None:
            return
        deadline = initiator.get_timer()
        if deadline is not None and deadline <= now:
            initiator.handle_timer(now)
        while (event := initiator.next_event()) is not None:
            if isinstance(event, ChildSaEstablished) and not self.established:
                self.established = True
                report.handshakes_all += 1
                if counting:
                    report.handshakes += 1
                    report.latencies_ms.append((now - self.started) * 1e3)
                initiator.delete(now)
            elif isinstance(event, PeerErrorNotified | ProtocolErrorEvent) and not self.established:
                report.failures += counting
                initiator.sa.abandon(now, "bench: the handshake failed")
        if initiator.sa.state is State.DELETED:
            if not self.established:
                report.failures += counting
            self.initiator = None
        elif not self.established and now - self.started > HANDSHAKE_TIMEOUT_S:
            report.failures += counting
            self.initiator = None
        self.flush()


def load(target: IPv4Address, clients: IPv4Network, concurrency: int, seconds: float) -> LoadReport:
    pool = [Client(address, target) for address, _ in zip(clients.hosts(), range(concurrency), strict=False)]
    by_fd = {client.sock.fileno(): client for client in pool}
    report = LoadReport()
    started, cpu_started = time.monotonic(), time.process_time()
    window_end, drain_end = started + seconds, started + seconds + DRAIN_S
    while True:
        now = time.monotonic()
        counting = now < window_end
        if (not counting and all(c.initiator is None for c in pool)) or now > drain_end:
            break
        for client in pool:
            if client.initiator is None and counting:
                client.begin(now)
        timers = [t for c in pool if c.initiator is not None and (t := c.initiator.get_timer()) is not None]
        wait = max(0.0, min([*timers, now + 0.05]) - now)
        readable, _, _ = select.select(list(by_fd), [], [], wait)
        now = time.monotonic()
        for fd in readable:
            client = by_fd[fd]
            while True:
                try:
                    data, source = client.sock.recvfrom(4096)
                except BlockingIOError:
                    break
                if client.initiator is not None:
                    client.initiator.receive(data, Endpoint(ip_address(source[0]), source[1]), now)
        for client in pool:
            client.step(now, report, now < window_end)
        if now < window_end:
            report.cpu_s = time.process_time() - cpu_started
    report.seconds = seconds
    return report


# --- the run (on the host with ESP, or in the VM) ---

@dataclass
class Round:
    responder: str
    handshakes: int
    failures: int
    seconds: float
    rate: float
    handshakes_all: int
    cpu_s: float  # the responder's utime + stime while the load generator ran
    latency_median_ms: float
    load_cpu: float  # the load generator's share of one CPU in the window

    @property
    def cpu_ms_per_handshake(self) -> float:
        return self.cpu_s * 1e3 / self.handshakes_all if self.handshakes_all else float("inf")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (proc(5): fields 14 and 15, after the command in parentheses)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(topo: Topology, loader: Host, name: str, target: str, pid: int, args: argparse.Namespace,
            work: Path) -> Round:
    report_path = work / f"load-{name}.json"
    cpu_before = cpu_seconds(pid)
    proc = topo.run(loader, [sys.executable, str(Path(__file__).resolve()), "--load", target, "--clients", CLIENTS,
                             "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
                             "--report", str(report_path)], timeout=args.seconds + DRAIN_S + 60)
    cpu = cpu_seconds(pid) - cpu_before
    data = json.loads(report_path.read_text())
    latencies = data.pop("latencies_ms")
    report = LoadReport(**data, latencies_ms=latencies)
    if proc.stderr.strip():
        print(proc.stderr.strip(), file=sys.stderr)
    return Round(name, report.handshakes, report.failures, report.seconds, report.rate, report.handshakes_all, cpu,
                 statistics.median(latencies) if latencies else float("nan"), report.cpu_s / report.seconds)


def start_enclave_ike(topo: Topology, host: Host, work: Path) -> procs.Daemon:
    config = work / "enclave-ike.toml"
    config.write_text(f'[listen]\naddresses = ["{ENCLAVE}"]\n\n[dns]\nprotocols = ["udp"]\n\n'
                      f'[identity]\nauth = "null"\npublish = "{work / "identity.json"}"\n\n'
                      '[suites]\nencryption = ["aes-gcm-16-256"]\nprf = ["sha2-256"]\ngroups = ["curve25519"]\n\n'
                      '[apply]\nmode = "kernel"\n')
    daemon = procs.Daemon("enclave-ike@enclave", [sys.executable, "-m", "enclave_ike.cli", "serve", "--config",
                                                   str(config)], work / "enclave-ike.log", netns=host.netns)
    daemon.start()
    daemon.wait_for_log(r"listening on ", timeout=120.0)
    return daemon


def run(args: argparse.Namespace) -> None:
    procs.install_exit_hooks()
    work = Path(tempfile.mkdtemp(prefix="ikt-bench-", dir="/run"))
    daemons: list[procs.Daemon] = []
    with Topology() as topo:
        loader, router = topo.add_host("load"), topo.add_router("router")
        enclave, libreswan = topo.add_host("enclave"), topo.add_host("pluto")
        topo.link(loader, router, "10.80.1.0/24", hosts=(2, 1))
        topo.link(enclave, router, "10.80.2.0/24", hosts=(53, 1))
        topo.link(libreswan, router, "10.80.3.0/24", hosts=(53, 1))
        for host in (loader, enclave, libreswan):
            topo.default_route(host, router)
        topo.run(router, ["ip", "route", "add", CLIENTS, "via", "10.80.1.2"])
        topo.run(loader, ["ip", "route", "add", "local", CLIENTS, "dev", "lo"])  # every client address is ours
        try:
            daemons.append(start_enclave_ike(topo, enclave, work))
            pluto = Pluto(topo, libreswan, work / "pluto")
            daemons.append(pluto)
            pluto.write_config(PlutoConfig(conns=PLUTO_CONN))
            pluto.start()
            pluto.addconn("--autoall")
            targets = (("enclave-ike", ENCLAVE, daemons[0].pid), ("pluto", PLUTO, pluto.pid))
            for name, target, pid in targets:  # warm-up, not counted: caches, first SA installs
                measure(topo, loader, name, target, pid, argparse.Namespace(**{**vars(args), "seconds": 2.0}), work)
            rounds: list[Round] = []
            for number in range(args.rounds):
                for name, target, pid in targets:
                    result = measure(topo, loader, name, target, pid, args, work)
                    rounds.append(result)
                    print(f"round {number + 1} {name}: {result.handshakes} handshakes in {result.seconds:.0f} s = "
                          f"{result.rate:.1f}/s, {result.failures} failed, latency median "
                          f"{result.latency_median_ms:.1f} ms, responder CPU {result.cpu_ms_per_handshake:.2f} ms "
                          f"per handshake, load generator busy {result.load_cpu:.0%}", flush=True)
            report(rounds, args)
            errors = [line for line in daemons[0].log_text().splitlines() if "apply: " in line]
            if errors:
                print(f"enclave-ike could not install {len(errors)} Child SA operations, e.g. {errors[0]}")
        except BaseException:
            print(f"bench: the responders' logs are in {work}", file=sys.stderr)
            raise
        finally:
            for daemon in reversed(daemons):
                daemon.stop()
    shutil.rmtree(work, ignore_errors=True)  # only after a run that went through


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    def median(name: str, value: str) -> float:
        return float(statistics.median(float(getattr(r, value)) for r in rounds if r.responder == name))

    rate_e, rate_p = median("enclave-ike", "rate"), median("pluto", "rate")
    cpu_e = median("enclave-ike", "cpu_ms_per_handshake")
    cpu_p = median("pluto", "cpu_ms_per_handshake")
    lat_e, lat_p = median("enclave-ike", "latency_median_ms"), median("pluto", "latency_median_ms")
    pairs = [a.rate / b.rate for a, b in zip(rounds[::2], rounds[1::2], strict=True) if b.rate] or [float("nan")]
    print(f"\n{args.rounds} rounds of {args.seconds:.0f} s, {args.concurrency} concurrent clients; medians:")
    print(f"enclave-ike: {rate_e:.1f} handshakes/s, {cpu_e:.2f} ms CPU per handshake, latency {lat_e:.1f} ms")
    print(f"pluto:       {rate_p:.1f} handshakes/s, {cpu_p:.2f} ms CPU per handshake, latency {lat_p:.1f} ms")
    print(f"rate enclave-ike / pluto: {statistics.median(pairs):.2f} (per round: "
          f"{', '.join(f'{p:.2f}' for p in pairs)}); CPU per handshake enclave-ike / pluto: {cpu_e / cpu_p:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="clients, each with its own address")
    parser.add_argument("--load", type=IPv4Address, help=argparse.SUPPRESS)  # the load generator, in its namespace
    parser.add_argument("--clients", type=ip_network, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        args.report.write_text(json.dumps(asdict(load(args.load, args.clients, args.concurrency, args.seconds))))
        return
    if not 1 <= args.concurrency <= 250 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--concurrency 1 to 250, --seconds > 0, --rounds >= 1")
    procs.install_exit_hooks()  # SIGTERM unwinds like Ctrl-C: the VM goes with us
    if os.environ.get("IKECTL_IN_GUEST") != "1" and not probe_esp().available:
        out = Path(tempfile.mkdtemp(prefix="ikt-bench-vm-"))
        vm = run_in_vm(VmSpec.default(), out, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], print)
        raise SystemExit(vm.returncode)
    run(args)


if __name__ == "__main__":
    main()
