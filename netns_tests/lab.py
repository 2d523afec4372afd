"""The lab: DNS encrypted over IPsec end to end, with proof from the wire.

    python -m netns_tests.lab [--queries N] [--out DIR] [--json]

One client, one router, three resolvers (each a namespace running unbound with the lab zone):

    coffee   10.77.2.53  pluto, IKE with NULL auth (RFC 7619): the coffee-shop case
    plain    10.77.3.53  no IKE at all: DNS must still be answered, in clear
    trusted  10.77.4.53  enclave-ike serve: its ECDSA key lives in the (simulated) enclave and is pinned by
                         ikectl's trusted profile: never clear

The client runs pluto with the tree `ikectl render` makes: an opportunistic (private-or-clear) group for
coffee and plain and an authenticated conn for trusted, all limited to udp/53 and tcp/53. The coffee resolver
runs pluto with ikectl's responder conn; the trusted one runs `enclave-ike serve` (sim backend, ECDSA P-256,
RFC 7427 signatures, Child SAs installed in its namespace's XFRM), and the client pins the key that
`enclave-ike identity --format libreswan` publishes. tcpdump on the router's client-facing
interface sees exactly what crosses the wire. The lab resolves names through each resolver and prints,
per resolver, the IKE SA, the Child SA, the queries and the plaintext DNS packets seen on the wire; it
exits 0 when every resolver behaved as expected and 1 otherwise.

When this kernel cannot install ESP SAs (these machines), the lab runs itself inside the VM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from ipaddress import ip_address
from pathlib import Path

from enclave_ike import config as enclave_config
from enclave_ike.server import PublishedIdentity
from ikecommon import keys
from ikecommon.xfrm import SaInfo
from ikectl import render
from ikectl.config import Mode, TrustedResolver

from .harness import procs
from .harness.capture import Capture, PeerCounts
from .harness.dnsclient import Answer, query
from .harness.ipsec_view import IkeSa, child_sas, ike_sas_from_log
from .harness.kernel import probe_esp
from .harness.pluto import Pluto, PlutoConfig
from .harness.topology import Host, Topology
from .harness.unbound import Unbound, UnboundConfig
from .harness.vm import VmError, VmSpec, run_in_vm


@dataclass(frozen=True)
class LabResolver:
    name: str
    subnet: str
    address: str
    speaks_ike: bool
    encrypted: bool  # what the lab expects: DNS inside ESP, or in clear
    expectation: str
    responder: str  # what answers IKE there


RESOLVERS = (
    LabResolver("coffee", "10.77.2.0/24", "10.77.2.53", True, True, "NULL-auth ESP, 0 plaintext DNS packets",
                "pluto, NULL auth"),
    LabResolver("plain", "10.77.3.0/24", "10.77.3.53", False, False,
                "no IKE: answered in clear (the expected clear fallback)", "no IKE"),
    LabResolver("trusted", "10.77.4.0/24", "10.77.4.53", True, True,
                "pinned-key ESP, 0 plaintext DNS packets", "enclave-ike serve, sim enclave"),
)
TRUSTED_ID = "@trusted.lab.example"

ENCLAVE_IKE_CONFIG = """[listen]
addresses = ["{address}"]

[identity]
backend = "sim"
key_type = "ecdsa-p256"
id = "{id}"
auth = "signature"
publish = "{publish}"

[apply]
mode = "kernel"

[privacy]
enabled = false
"""
"""The trusted resolver's `enclave-ike serve` config: the key is made inside the sim enclave when serve starts,
AUTH is an RFC 7427 ECDSA signature made there, and the Child SAs go into the resolver namespace's XFRM. Privacy
is off: the lab's report shows the resolver's SAs from its log lines about each client."""


@dataclass(frozen=True)
class ResolverReport:
    resolver: LabResolver
    ike_sas: tuple[IkeSa, ...]
    child_sas: tuple[SaInfo, ...]
    answers: tuple[Answer, ...]
    wire: PeerCounts
    responder_log: tuple[int, int] | None = None
    """enclave-ike's own count of (IKE SAs, Child SAs) established, from its log; None where pluto answers."""

    @property
    def answered(self) -> int:
        return sum(a.answered for a in self.answers)

    @property
    def first_answer(self) -> Answer:
        return self.answers[0]

    @property
    def esp_packets(self) -> int:
        return sum(sa.counters.packets for sa in self.child_sas)

    def problems(self) -> list[str]:
        """Every way this resolver's run differs from what the lab expects (empty: as expected)."""
        found = []
        if self.answered != len(self.answers):
            found.append(f"{len(self.answers) - self.answered} of {len(self.answers)} queries unanswered")
        if self.resolver.encrypted:
            if not self.ike_sas:
                found.append("no IKE SA")
            if self.esp_packets == 0:
                found.append("the Child SA's counters did not move")
            if self.wire.plaintext_dns:
                found.append(f"{self.wire.plaintext_dns} plaintext DNS packets on the wire")
            if self.responder_log is not None and not all(self.responder_log):
                found.append("enclave-ike logged no IKE SA or no Child SA")
        else:
            if self.child_sas:
                found.append("unexpected Child SA")
            if self.wire.plaintext_dns == 0:
                found.append("no clear DNS seen on the wire (the capture missed it?)")
        return found


@dataclass(frozen=True)
class LabReport:
    kernel: str
    resolvers: tuple[ResolverReport, ...]
    seconds: float
    artifacts: str
    vm_boot_seconds: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not any(r.problems() for r in self.resolvers)


class Lab:
    """The lab topology with its daemons; a context manager that always tears everything down."""

    def __init__(self, workdir: Path, say: Callable[[str], None], with_client_pluto: bool = True) -> None:
        """`with_client_pluto=False` builds the resolvers' world only: the client is left to ikectl."""
        self.workdir, self.say, self.with_client_pluto = workdir, say, with_client_pluto
        self.trusted_pin: keys.PinnedKey | None = None
        self.trusted_server: procs.Daemon | None = None
        self.topo = Topology()
        self.daemons: list[procs.Daemon] = []
        self.hosts: dict[str, Host] = {}
        self.capture: Capture | None = None
        self.client_pluto: Pluto | None = None

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.topo.close()

    def _start(self, daemon: procs.Daemon) -> None:
        self.daemons.append(daemon)
        daemon.start()

    def _build(self) -> None:
        topo = self.topo
        # enclave-ike is a Python server: its start takes the longest by far under TCG (~20 s), so it starts as
        # soon as its namespace has its address, and the rest of the world is built while it loads.
        self.say("building namespaces: router, trusted, then client, coffee, plain")
        router = topo.add_router("router")
        built: dict[str, Host] = {}
        for resolver in sorted(RESOLVERS, key=lambda r: r.name != "trusted"):
            host = built[resolver.name] = topo.add_host(resolver.name)
            topo.link(host, router, resolver.subnet, None, hosts=(53, 1))
            topo.default_route(host, router)
            if resolver.name == "trusted":
                self.say("starting enclave-ike serve on trusted (sim enclave; its ECDSA key is made inside it)")
                trusted = self._launch_enclave_ike(host, resolver.address)
        client = topo.add_host("client")
        topo.link(client, router, "10.77.1.0/24", "fd77:1::/64")
        topo.default_route(client, router)
        self.hosts = {"client": client, "router": router} | {r.name: built[r.name] for r in RESOLVERS}
        if self.with_client_pluto:
            # Queue the packet that triggers IKE instead of dropping it, so the first query is answered
            # without waiting for the stub's retry. (ikectl does this itself where it runs the client.)
            topo.sysctl(client, "net.core.xfrm_larval_drop", "0")

        self.say("starting unbound on each resolver")
        for resolver in RESOLVERS:
            host = self.hosts[resolver.name]
            self._start(Unbound(host, self.workdir / f"unbound-{resolver.name}",
                                UnboundConfig(addresses=[host.ipv4])))

        self.say("starting the capture on the router's client-facing interface")
        self.capture = Capture(router, router.interface_to(client).ifname, self.workdir / "client-wire.pcap")
        self._start(self.capture)

        self.say("starting pluto on coffee (NULL auth)")
        coffee = Pluto(topo, self.hosts["coffee"], self.workdir / "pluto-coffee")
        coffee.write_config(PlutoConfig(conns=render.render_responder("dns", ip_address("10.77.2.53"))))
        self._start(coffee)
        coffee.addconn("--autoall")
        pin = self.trusted_pin = self._published_key(trusted)
        if not self.with_client_pluto:
            return

        self.say("starting pluto on the client with ikectl's rendered profile: opportunistic group for coffee "
                 "and plain, pinned key for trusted")
        pluto = Pluto(topo, client, self.workdir / "pluto-client")
        profile = render.Profile(
            Mode.COFFEE_SHOP, opportunistic=(ip_address("10.77.2.53"), ip_address("10.77.3.53")),
            trusted=TrustedResolver(ip_address("10.77.4.53"), TRUSTED_ID, pin))
        pluto.init_nss()
        render.write_tree(render.render_tree(profile), pluto.dir)
        self._start(pluto)
        pluto.addconn("--autoall")
        self.client_pluto = pluto

    def _launch_enclave_ike(self, host: Host, address: str) -> Path:
        """Start `enclave-ike serve` in `host` without waiting for it; its config file."""
        workdir = self.workdir / f"enclave-ike-{host.name}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "enclave-ike.toml"
        config.write_text(ENCLAVE_IKE_CONFIG.format(address=address, id=TRUSTED_ID,
                                                    publish=workdir / "identity.json"))
        server = procs.Daemon(f"enclave-ike@{host.name}",
                              [sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(config)],
                              workdir / "enclave-ike.log", netns=host.netns)
        self._start(server)
        self.trusted_server = server
        return config

    def _published_key(self, config: Path) -> keys.PinnedKey:
        """Once the server listens: the key it published, as `enclave-ike identity --format libreswan` prints it
        (read here, not by a second Python process: that costs seconds of imports under TCG), which is what
        ikectl's trusted profile pins."""
        assert self.trusted_server is not None
        self.trusted_server.wait_for_log(r"listening on ", timeout=120.0)  # imports take seconds under TCG
        published = enclave_config.load(config).identity.publish
        identity = PublishedIdentity.from_json(published.read_text(), str(published))
        assert identity.libreswan is not None
        return keys.parse(identity.libreswan)

    def resolve(self, resolver: LabResolver, count: int) -> tuple[Answer, ...]:
        client = self.hosts["client"]
        # The first query triggers IKE: give it longer. UDP only: a tcp/53 trap to a peer whose udp/53
        # trap fired within xfrm_acq_expires finds that larval state and waits (measured in the VM);
        # ikectl's modes deal with that, the plain-libreswan lab does not.
        answers = [query(self.topo, client, resolver.address, timeout=10.0)]
        answers += [query(self.topo, client, resolver.address, timeout=5.0) for _ in range(count - 1)]
        return tuple(answers)

    def report(self, answers: dict[str, tuple[Answer, ...]], started: float) -> LabReport:
        assert self.capture is not None and self.client_pluto is not None
        client = self.hosts["client"]
        sas = child_sas(client)
        time.sleep(0.2)  # let the last answers reach the capture file
        self.capture.stop()
        wire = self.capture.count(client.addresses())
        log = self.client_pluto.log_text()
        ike = ike_sas_from_log(log, peers_by_conn={"ikectl-trusted-udp": "10.77.4.53",
                                                   "ikectl-trusted-tcp": "10.77.4.53"})
        server_log = self.trusted_server.log_text() if self.trusted_server is not None else None
        reports = tuple(
            ResolverReport(
                resolver=r,
                ike_sas=tuple(s for s in ike if s.peer == r.address),
                child_sas=tuple(sa for sa in sas if r.address in (str(sa.src), str(sa.dst))),
                answers=answers[r.name],
                wire=wire.peer(r.address),
                responder_log=enclave_ike_counts(server_log) if r.name == "trusted" and server_log else None,
            )
            for r in RESOLVERS
        )
        return LabReport(kernel=os.uname().release, resolvers=reports, seconds=time.monotonic() - started,
                         artifacts=str(self.workdir))


def enclave_ike_counts(log: str) -> tuple[int, int]:
    """(IKE SAs, Child SAs) that `enclave-ike serve` logged as established."""
    return (len(re.findall(r"^.*IKE SA \S+ established with ", log, re.M)),
            len(re.findall(r"^.*Child SA established under IKE SA ", log, re.M)))


def format_report(report: LabReport) -> str:
    lines = [f"ikectl lab: DNS over IKEv2/IPsec, kernel {report.kernel}"
             + (f" (VM booted in {report.vm_boot_seconds:.1f} s)" if report.vm_boot_seconds else ""), ""]
    for r in report.resolvers:
        res = r.resolver
        lines.append(f"{res.name} resolver {res.address} ({res.responder}): expected {res.expectation}")
        if r.ike_sas:
            auths = sorted({s.method for s in r.ike_sas})
            lines.append(f"  IKE SA     {len(r.ike_sas)} established with {res.address}; peer authenticated "
                         f"{'; '.join(auths)}")
        else:
            lines.append("  IKE SA     none")
        if r.responder_log is not None:
            lines.append(f"  responder  enclave-ike logged {r.responder_log[0]} IKE SA(s) and {r.responder_log[1]} "
                         f"Child SA(s) established, signed inside the sim enclave")
        if r.child_sas:
            for sa in r.child_sas:
                direction = "out" if str(sa.dst) == res.address else "in "
                lines.append(f"  Child SA   {direction} spi 0x{sa.spi:08x} ESP {sa.mode.name.lower()} "
                             f"{', '.join(a.label for a in sa.algorithms)}: {sa.counters.packets} packets, "
                             f"{sa.counters.bytes} bytes")
        else:
            lines.append("  Child SA   none")
        first = r.first_answer
        lines.append(f"  queries    {r.answered}/{len(r.answers)} answered; first answer "
                     f"after {first.seconds * 1000:.0f} ms"
                     + (f" and {first.sends - 1} resend(s)" if first.sends > 1 else " (no resend)"))
        label = ("expected: clear fallback" if not res.encrypted
                 else "expected 0" if r.wire.plaintext_dns == 0 else "LEAK")
        lines.append(f"  on wire    {r.wire.esp} ESP packets; plaintext port-53 packets: {r.wire.plaintext_dns} "
                     f"(out {r.wire.plaintext_dns_out}, in {r.wire.plaintext_dns_in}) [{label}]")
        problems = r.problems()
        lines.append(f"  verdict    {'as expected' if not problems else 'NOT as expected: ' + '; '.join(problems)}")
        lines.append("")
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(f"{verdict}: lab ran in {report.seconds:.1f} s; pcap, logs and configs in {report.artifacts}")
    return "\n".join(lines)


def run_here(workdir: Path, queries: int, say: Callable[[str], None]) -> LabReport:
    procs.install_exit_hooks()
    procs.sweep_stale_namespaces()
    started = time.monotonic()
    with Lab(workdir, say) as lab:
        answers = {}
        for resolver in RESOLVERS:
            say(f"resolving through {resolver.name} ({resolver.address}): {queries} queries")
            answers[resolver.name] = lab.resolve(resolver, queries)
        say("collecting SAs and counting packets on the wire")
        return lab.report(answers, started)


def keep_artifacts(workdir: Path, out: Path) -> None:
    """Copy configs, logs and pcaps (not NSS dbs, not sockets) from `workdir` to `out`."""
    for path in workdir.rglob("*"):
        if path.is_file() and not path.is_symlink() and "nss" not in path.relative_to(workdir).parts:
            target = out / path.relative_to(workdir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _sayer(started: float) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[lab {time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)
    return say


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netns_tests.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10, help="queries per resolver (at least 3; default 10)")
    parser.add_argument("--out", type=Path, help="where pcap, logs and configs go (default: a new dir in /tmp)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--here", action="store_true", help="run in this kernel even without ESP (in the VM)")
    args = parser.parse_args(argv)
    if args.queries < 3:
        parser.error("--queries must be at least 3")
    if os.geteuid() != 0:
        print("lab: needs root (namespaces, pluto, tcpdump): run scripts/lab as root", file=sys.stderr)
        return 2
    procs.install_exit_hooks()  # SIGTERM unwinds like Ctrl-C: the VM and the namespaces go with us
    started = time.monotonic()
    say = _sayer(started)
    out = args.out or Path(f"/tmp/ikectl-lab-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.here and os.environ.get("IKECTL_IN_GUEST") != "1":
        support = probe_esp()
        if not support.available:
            say(f"{support}; running the lab in a VM with Debian's kernel (boot about 30 s under TCG)")
            guest_argv = [sys.executable, "-m", "netns_tests.lab", "--here", "--queries", str(args.queries),
                          "--out", str(out)] + (["--json"] if args.json else [])
            try:
                result = run_in_vm(VmSpec.default(), out, guest_argv, print)
            except VmError as exc:
                print(f"lab: {exc}", file=sys.stderr)
                return 1
            say(f"VM booted in {result.boot_seconds:.1f} s; whole run {result.total_seconds:.1f} s")
            return result.returncode
    # Unix sockets (pluto's control socket) cannot live on the VM's 9p share: work under /run, then
    # keep what is worth reading in `out`.
    workdir = Path(tempfile.mkdtemp(prefix="ikectl-lab-", dir="/run"))
    try:
        report = run_here(workdir, args.queries, say)
    finally:
        keep_artifacts(workdir, out)
        shutil.rmtree(workdir, ignore_errors=True)
    report = replace(report, artifacts=str(out))
    if args.json:
        print(json.dumps({"ok": report.ok, **asdict(report)}, indent=1, default=str))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: everything was torn down on the way out
        print("lab: interrupted; the VM and the namespaces were removed", file=sys.stderr)
        sys.exit(130)
