"""Benchmark: IKE handshakes per second and CPU per handshake of enclave-ike against libreswan's pluto and
strongSwan's charon as the responder, same load.

    PYTHONPATH=. .venv/bin/python bench/ike_handshakes.py --host --auth null    # enclave-ike, pluto: IKE only, here
    PYTHONPATH=. .venv/bin/python bench/ike_handshakes.py --host --auth ecdsa   # enclave-ike, pluto, charon
    PYTHONPATH=. .venv/bin/python bench/ike_handshakes.py [--auth null|ecdsa]   # with kernel SAs (in the VM here)
    options: [--seconds 15] [--rounds 3] [--concurrency 16] [--responders enclave-ike,pluto,charon] [--keep]
             [--profile FILE]: enclave-ike under cProfile (CPU time)

The responders run at once, each in a namespace of its own behind one router; one load generator, in another
namespace, drives them in turn, round by round (A B C A B C ...), so that a drift of the machine's speed hits all:

    load 10.80.1.2 (clients 10.81.0.1-N) -- router -- enclave 10.80.2.53 (enclave-ike serve)
                                                  |-- pluto   10.80.3.53 (pluto, one responder conn)
                                                  \\-- charon  10.80.4.53 (charon, one swanctl connection)

The load generator is our own initiator core (enclave_ike.ikev2.initiator) in one process: `--concurrency`
clients, each from its own address, each running handshake after handshake: IKE_SA_INIT, IKE_AUTH with a
tunnel-mode Child SA for udp/53 (tunnel: kernel-libipsec has no transport mode), then an INFORMATIONAL Delete of
the IKE SA, and the next. A handshake counts when its Child SA is established (`--host` with pluto: see below); the
rate is handshakes / seconds. Every
responder is offered and accepts exactly one suite: IKE AES-GCM-16-256, PRF HMAC-SHA2-256, DH 31 (Curve25519); ESP
AES-GCM-16-256 without PFS. Authentication (`--auth`), the same for every responder in a run:

- `null`: RFC 7619 NULL auth both ways (ID_NULL). charon has no NULL authenticator, so it is left out.
- `ecdsa`: both sides sign (RFC 7427, ECDSA P-256 with SHA-256); each responder pins the clients' one key for the
  ID @client.bench and signs as @resolver.bench with a P-256 key of its own (enclave-ike: the software backend).
  The clients do not check the responders' signatures (the generator's CPU is the scarce one).

Where the Child SAs go:

- Without `--host`: into the kernel (two SAs and their policies, removed on the Delete): enclave-ike with
  `apply.mode = "kernel"` (its IKE_AUTH answer leaves once they are in), pluto with `leftupdown=%disabled`, charon
  with kernel-netlink. This needs ESP in the kernel: in the VM with Debian's kernel when this host's has none.
- With `--host`, IKE only: nothing is installed, on this host. enclave-ike: `apply.mode = "none"`. charon:
  kernel-libipsec, its userspace IPsec stack (the Child SA's keys go into charon's own SA table in memory, no
  XFRM). pluto 4.10 has no such mode (its only kernel backend is XFRM; no impair skips the install), so its
  install is attempted and the kernel refuses it at once (no ESP); pluto then answers IKE_AUTH with its AUTH and a
  notify in place of the Child SA, and keeps the IKE SA. So for pluto a handshake counts when its IKE_AUTH answer
  arrives with a valid AUTH (`IkeSaEstablished` at the client), and the client deletes the IKE SA as always: pluto
  does the same exchanges, key exchange, key derivation and AUTH as the others, plus one refused netlink request,
  minus the Child SA's payloads in its answer.

Besides the rate, each responder's CPU time (utime + stime of its process, all threads) per handshake is read from
/proc: with 2 CPUs shared by the load generator and the responder, the rate of a cheap responder is bounded by the
generator, while CPU per handshake is not. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_ike import config as serve_config
from enclave_ike.ikev2.config import Endpoint, Identity, InitiatorConfig, Mode
from enclave_ike.ikev2.constants import DhGroup, EncrId, IntegId, PrfId
from enclave_ike.ikev2.crypto import ChildSuite, IkeSuite, SoftwareSigner
from enclave_ike.ikev2.events import ChildSaEstablished, IkeSaEstablished, PeerErrorNotified, ProtocolErrorEvent
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.ikev2.responder import Responder
from enclave_ike.ikev2.state import State
from enclave_ike.server import open_enclave
from ikecommon import keys
from netns_tests.harness import procs
from netns_tests.harness.charon import Charon, CharonConfig
from netns_tests.harness.kernel import probe_esp
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.vm import rerun_in_vm

IKE_PORT, NATT_PORT = 500, 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"
ADDRESSES = {"enclave-ike": "10.80.2.53", "pluto": "10.80.3.53", "charon": "10.80.4.53"}
AUTHS = {"null": ("enclave-ike", "pluto"), "ecdsa": ("enclave-ike", "pluto", "charon")}
CLIENTS = "10.81.0.0/24"
CLIENT_ID, RESOLVER_ID = "client.bench", "resolver.bench"
IKE_SUITE = IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.CURVE25519)
ESP_SUITE = ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
HANDSHAKE_TIMEOUT_S = 10.0
DRAIN_S = 10.0  # after the window, open handshakes may finish their Delete (not counted)


def pluto_conn(auth: str, resolver_key: str, client_key: keys.PinnedKey | None) -> str:
    if auth == "null":
        ids = "\tleftid=%null\n\trightid=%null\n\tauthby=null\n"
    else:
        assert client_key is not None
        ids = (f"\tleftid=@{RESOLVER_ID}\n\tleftauth=ecdsa\n\t{resolver_key}\n"
               f"\trightid=@{CLIENT_ID}\n\trightauth=ecdsa\n\t{client_key.keyword}={client_key.libreswan}\n")
    return (f"conn bench\n\tleft={ADDRESSES['pluto']}\n\tright=%any\n{ids}\tleftprotoport=17/53\n"
            "\trightprotoport=17/0\n\ttype=tunnel\n\tikev2=insist\n\tike=aes_gcm256-sha2_256-dh31\n"
            "\tesp=aes_gcm256\n\tpfs=no\n\tleftupdown=%disabled\n\tauto=add\n")


CHARON_CONN = f"""  bench {{
    version = 2
    local_addrs = {ADDRESSES['charon']}
    proposals = aes256gcm16-prfsha256-x25519
    unique = never
    local {{
      auth = pubkey
      id = @{RESOLVER_ID}
      pubkeys = resolver.pem
    }}
    remote {{
      auth = pubkey
      id = @{CLIENT_ID}
      pubkeys = client.pem
    }}
    children {{
      bench {{
        local_ts = {ADDRESSES['charon']}/32[udp/53]
        remote_ts = dynamic[udp]
        mode = tunnel
        esp_proposals = aes256gcm16
      }}
    }}
  }}"""


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


Keys = tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey]  # the clients' own, the responder's


def initiator_config(address: IPv4Address, target: IPv4Address, keys: Keys | None) -> InitiatorConfig:
    """One client's: NULL auth, or (with `keys`) signing as CLIENT_ID and pinning the responder's key."""
    tsi, tsr = (TrafficSelector(address, address, 17),), (TrafficSelector(target, target, 17, 53, 53),)
    common = {"ike_suites": (IKE_SUITE,), "esp_suites": (ESP_SUITE,), "mode": Mode.TUNNEL, "initial_contact": False}
    if keys is None:
        return InitiatorConfig(tsi, tsr, **common)  # type: ignore[arg-type]
    return InitiatorConfig(tsi, tsr, local_id=Identity.fqdn(CLIENT_ID), signer=SoftwareSigner(keys[0]),
                           responder_key=keys[1], responder_id=Identity.fqdn(RESOLVER_ID), **common)  # type: ignore[arg-type]


class Client:
    """One client address running handshake after handshake against the target."""

    def __init__(self, address: IPv4Address, target: IPv4Address, keys: Keys | None, ike_only: bool) -> None:
        self.local, self.peer = Endpoint(address, IKE_PORT), Endpoint(target, IKE_PORT)
        self.config = initiator_config(address, target, keys)
        self.ike_only = ike_only  # count at the IKE SA (pluto without kernel SAs: its Child SA fails, see above)
        self.sock, self.natt = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        # 4500 with the non-ESP marker (RFC 3948) for a responder that claims a NAT: charon with kernel-libipsec
        for sock, port in ((self.sock, IKE_PORT), (self.natt, NATT_PORT)):
            sock.bind((str(address), port))
            sock.setblocking(False)
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
                if to.port == NATT_PORT:
                    self.natt.sendto(NON_ESP_MARKER + data, (str(to.address), to.port))
                else:
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
            done = IkeSaEstablished if self.ike_only else ChildSaEstablished
            if isinstance(event, done) and not self.established:
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


def load(target: IPv4Address, clients: IPv4Network, concurrency: int, seconds: float,
         keys: Keys | None, ike_only: bool) -> LoadReport:
    pool = [Client(address, target, keys, ike_only)
            for address, _ in zip(clients.hosts(), range(concurrency), strict=False)]
    by_fd = {sock.fileno(): (client, sock) for client in pool for sock in (client.sock, client.natt)}
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
            client, sock = by_fd[fd]
            while True:
                try:
                    data, source = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                if sock is client.natt:
                    if not data.startswith(NON_ESP_MARKER):
                        continue  # a NAT-T keepalive, or ESP
                    data = data[len(NON_ESP_MARKER):]
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


@dataclass
class Target:
    name: str
    address: str
    pid: int
    ike_only: bool  # count IKE SAs (pluto without kernel SAs)
    pin: str  # the responder's libreswan key line (auth ecdsa: the clients pin it), or ""


def measure(topo: Topology, loader: Host, target: Target, args: argparse.Namespace, work: Path) -> Round:
    report_path = work / f"load-{target.name}.json"
    cpu_before = procs.cpu_seconds(target.pid)
    proc = topo.run(loader, [sys.executable, str(Path(__file__).resolve()), "--load", target.address, "--clients",
                             CLIENTS, "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
                             "--report", str(report_path), "--auth", args.auth, "--key", str(work / "client.pem"),
                             *(["--responder-key", target.pin] if target.pin else []),
                             *(["--count-ike"] if target.ike_only else [])], timeout=args.seconds + DRAIN_S + 60)
    cpu = procs.cpu_seconds(target.pid) - cpu_before
    data = json.loads(report_path.read_text())
    latencies = data.pop("latencies_ms")
    report = LoadReport(**data, latencies_ms=latencies)
    if proc.stderr.strip():
        print(proc.stderr.strip(), file=sys.stderr)
    return Round(target.name, report.handshakes, report.failures, report.seconds, report.rate, report.handshakes_all,
                 cpu, statistics.median(latencies) if latencies else float("nan"), report.cpu_s / report.seconds)


def pem_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def start_enclave_ike(topo: Topology, host: Host, work: Path, args: argparse.Namespace) -> procs.Daemon:
    config = work / "enclave-ike.toml"
    if args.auth == "null":
        identity, peers = 'auth = "null"', ""
    else:
        identity = f'backend = "software"\nkey_type = "ecdsa-p256"\nid = "@{RESOLVER_ID}"\nauth = "signature"'
        peers = (f'[peers]\nanonymous = []\n\n[[peers.pinned]]\nid = "@{CLIENT_ID}"\n'
                 f'pubkey_file = "{work / "client-pub.pem"}"\n\n')
    config.write_text(f'[listen]\naddresses = ["{ADDRESSES["enclave-ike"]}"]\n\n[dns]\nprotocols = ["udp"]\n\n'
                      f'[identity]\n{identity}\npublish = "{work / "identity.json"}"\n\n{peers}'
                      '[suites]\nencryption = ["aes-gcm-16-256"]\nprf = ["sha2-256"]\ngroups = ["curve25519"]\n\n'
                      f'[evidence]\nenabled = false\n\n[apply]\nmode = "{"none" if args.host else "kernel"}"\n')
    command = ["-m", "enclave_ike.cli"]
    if args.profile:  # CPU time (all threads), not wall time: the machine is shared
        command = ["-c", "import cProfile, sys, time; from enclave_ike.cli import main; "
                   "profile = cProfile.Profile(time.process_time); status = profile.runcall(main, sys.argv[1:]); "
                   f"profile.dump_stats({str(args.profile.resolve())!r}); sys.exit(status)"]
    daemon = procs.Daemon("enclave-ike@enclave", [sys.executable, *command, "serve", "--config", str(config)],
                          work / "enclave-ike.log", netns=host.netns)
    daemon.start()
    daemon.wait_for_log(r"listening on ", timeout=120.0)
    if args.auth == "ecdsa":
        daemon.pin = json.loads((work / "identity.json").read_text())["libreswan"]  # type: ignore[attr-defined]
    return daemon


def start_pluto(topo: Topology, host: Host, work: Path, args: argparse.Namespace,
                client_key: ec.EllipticCurvePrivateKey) -> Pluto:
    pluto = Pluto(topo, host, work / "pluto")
    resolver_key = ""
    if args.auth == "ecdsa":
        resolver_key = pluto.show_hostkey(pluto.new_hostkey("ecdsa"), "left")
    pinned = keys.from_public_key(client_key.public_key()) if args.auth == "ecdsa" else None
    pluto.write_config(PlutoConfig(conns=pluto_conn(args.auth, resolver_key, pinned),
                                   setup_options={"uniqueids": "no"}))
    pluto.start()
    pluto.addconn("--autoall")
    pluto.pin = resolver_key  # type: ignore[attr-defined]
    return pluto


def start_charon(topo: Topology, host: Host, work: Path, args: argparse.Namespace,
                 client_key: ec.EllipticCurvePrivateKey) -> Charon:
    resolver_key = ec.generate_private_key(ec.SECP256R1())
    charon = Charon(topo, host, work / "charon")
    files = {"private/resolver.pem": pem_private(resolver_key), "pubkey/resolver.pem": pem_public(resolver_key),
             "pubkey/client.pem": pem_public(client_key)}
    charon.write_config(CharonConfig(CHARON_CONN, files, kernel_sas=not args.host,
                                     log_levels={"default": 1}))  # charon's own default
    charon.start()
    charon.load_all()
    charon.pin = keys.from_public_key(resolver_key.public_key()).libreswan  # type: ignore[attr-defined]
    return charon


def core_cpu_ms(config_path: Path, key: ec.EllipticCurvePrivateKey | None, handshakes: int = 200) -> float:
    """The IKE core alone: enclave-ike's `Responder`, built from the same config the server runs, answering
    `handshakes` whole handshakes (IKE_SA_INIT, IKE_AUTH, Delete) from the same initiator in memory; the responder's
    own CPU time (this thread's, around its calls) per handshake. The server's overhead is serve's figure minus
    this one."""
    config = serve_config.load(config_path)
    enclave = open_enclave(config)
    responder = Responder(config.responder_config(enclave.signer() if enclave is not None else None),
                          local=Endpoint(config.listen.addresses[0], IKE_PORT), random=os.urandom)
    server_end = Endpoint(config.listen.addresses[0], IKE_PORT)
    pair = None
    if key is not None:
        assert enclave is not None
        public = enclave.signer().public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        pair = key, public
    spent, now = 0.0, 1000.0
    for number in range(handshakes):
        address = IPv4Address(int(IPv4Address("10.81.0.1")) + number % 200)
        target = config.listen.addresses[0]
        assert isinstance(target, IPv4Address)
        initiator = Initiator(initiator_config(address, target, pair), local=Endpoint(address, IKE_PORT),
                              peer=server_end, random=os.urandom, now=now)
        deleting = False
        while True:
            outgoing = initiator.datagrams_to_send()
            if not outgoing:
                break
            for data, _ in outgoing:
                started = time.thread_time()
                responder.receive(data, Endpoint(address, IKE_PORT), now)
                answers = responder.datagrams_to_send()
                while responder.next_event() is not None:
                    pass
                spent += time.thread_time() - started
                for answer, _ in answers:
                    initiator.receive(answer, server_end, now)
            while (event := initiator.next_event()) is not None:
                if isinstance(event, ChildSaEstablished) and not deleting:
                    deleting = True
                    initiator.delete(now)
        now += 0.01
    return spent * 1e3 / handshakes


def build(topo: Topology, names: tuple[str, ...]) -> tuple[Host, dict[str, Host]]:
    """The load generator's namespace and one per responder, behind one router."""
    loader, router = topo.add_host("load"), topo.add_router("router")
    topo.link(loader, router, "10.80.1.0/24", hosts=(2, 1))
    topo.default_route(loader, router)
    hosts = {}
    for name in names:
        hosts[name] = topo.add_host(name.split("-")[0])
        topo.link(hosts[name], router, f"{ADDRESSES[name].rsplit('.', 1)[0]}.0/24", hosts=(53, 1))
        topo.default_route(hosts[name], router)
    topo.run(router, ["ip", "route", "add", CLIENTS, "via", "10.80.1.2"])
    topo.run(loader, ["ip", "route", "add", "local", CLIENTS, "dev", "lo"])  # every client address is ours
    return loader, hosts


def start(topo: Topology, name: str, host: Host, work: Path, args: argparse.Namespace,
          client_key: ec.EllipticCurvePrivateKey) -> procs.Daemon:
    if name == "enclave-ike":
        return start_enclave_ike(topo, host, work, args)
    if name == "pluto":
        return start_pluto(topo, host, work, args, client_key)
    return start_charon(topo, host, work, args, client_key)


def run(args: argparse.Namespace) -> None:
    procs.install_exit_hooks()
    client_key = ec.generate_private_key(ec.SECP256R1())
    targets: list[Target] = []
    with Topology() as topo, procs.bench_run("ikt-bench-", args.keep, "the responders' logs") as (work, daemons):
        (work / "client.pem").write_bytes(pem_private(client_key))
        (work / "client-pub.pem").write_bytes(pem_public(client_key))
        loader, hosts = build(topo, args.responders)
        for name in args.responders:
            daemons.append(daemon := start(topo, name, hosts[name], work, args, client_key))
            assert daemon.pid is not None
            targets.append(Target(name, ADDRESSES[name], daemon.pid, args.host and name == "pluto",
                                  getattr(daemon, "pin", "")))
        for target in targets:  # warm-up, not counted: caches, first SA installs
            measure(topo, loader, target, argparse.Namespace(**{**vars(args), "seconds": 2.0}), work)
        rounds: list[Round] = []
        core: list[float] = []
        for number in range(args.rounds):
            for target in targets:
                result = measure(topo, loader, target, args, work)
                rounds.append(result)
                print(f"round {number + 1} {target.name}: {result.handshakes} handshakes in "
                      f"{result.seconds:.0f} s = {result.rate:.1f}/s, {result.failures} failed, latency median "
                      f"{result.latency_median_ms:.1f} ms, responder CPU {result.cpu_ms_per_handshake:.2f} ms "
                      f"per handshake, load generator busy {result.load_cpu:.0%}", flush=True)
            if "enclave-ike" in args.responders:
                core.append(core_cpu_ms(work / "enclave-ike.toml", client_key if args.auth == "ecdsa" else None))
                print(f"round {number + 1} enclave-ike's core alone, in memory: {core[-1]:.2f} ms CPU per "
                      "handshake", flush=True)
        report(rounds, core, args)
        if "enclave-ike" in args.responders:
            text = daemons[args.responders.index("enclave-ike")].log_text()
            errors = [line for line in text.splitlines() if "apply: " in line]
            if errors:
                print(f"enclave-ike could not install {len(errors)} Child SA operations, e.g. {errors[0]}")


def report(rounds: list[Round], core: list[float], args: argparse.Namespace) -> None:
    """Medians per responder, and each responder's ratios to pluto's figures of the same round."""
    def median(values: Iterable[float]) -> float:
        return float(statistics.median(list(values))) if values else float("nan")

    names = args.responders
    by_round = [rounds[i:i + len(names)] for i in range(0, len(rounds), len(names))]
    print(f"\n{args.rounds} rounds of {args.seconds:.0f} s, {args.concurrency} concurrent clients, auth {args.auth}, "
          f"{'IKE only, no kernel SAs (host)' if args.host else 'kernel SAs'}; medians:")
    for index, name in enumerate(names):
        mine = [r[index] for r in by_round]
        line = (f"{name:12s} {median(r.rate for r in mine):7.1f} handshakes/s, "
                f"{median(r.cpu_ms_per_handshake for r in mine):6.2f} ms CPU per handshake, latency "
                f"{median(r.latency_median_ms for r in mine):6.1f} ms, generator busy "
                f"{median(r.load_cpu for r in mine):.0%}")
        for base in ("pluto", "charon"):
            if base in names and base != name:
                other = names.index(base)
                rate = [r[index].rate / r[other].rate for r in by_round if r[other].rate]
                cpu = [r[index].cpu_ms_per_handshake / r[other].cpu_ms_per_handshake for r in by_round]
                line += (f"; / {base}: rate {median(rate):.2f} ({', '.join(f'{x:.2f}' for x in rate)}), "
                         f"CPU {median(cpu):.2f} ({', '.join(f'{x:.2f}' for x in cpu)})")
        print(line)
    if core:
        serve = median(r.cpu_ms_per_handshake for r in rounds if r.responder == "enclave-ike")
        print(f"enclave-ike's core alone (in memory, same config): {median(core):.2f} ms CPU per handshake; the "
              f"server's own overhead: {serve - median(core):.2f} ms ({(serve - median(core)) / serve:.0%} of serve's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="clients, each with its own address")
    parser.add_argument("--auth", choices=sorted(AUTHS), default="null",
                        help="null: RFC 7619 both ways (enclave-ike, pluto); ecdsa: P-256 signatures both ways (all)")
    parser.add_argument("--responders", type=lambda text: tuple(text.split(",")),
                        help="comma-separated, of enclave-ike,pluto,charon (default: all that the auth allows)")
    parser.add_argument("--host", action="store_true", help="IKE only, on this host: no kernel SAs (see above)")
    parser.add_argument("--profile", type=Path, help="run enclave-ike under cProfile, its stats into this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) after a good run")
    parser.add_argument("--load", type=IPv4Address, help=argparse.SUPPRESS)  # the load generator, in its namespace
    parser.add_argument("--clients", type=ip_network, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count-ike", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--responder-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        pair = None
        if args.auth == "ecdsa":
            loaded = serialization.load_pem_private_key(args.key.read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            pair = loaded, ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + keys.parse(args.responder_key).raw)
        args.report.write_text(json.dumps(asdict(load(args.load, args.clients, args.concurrency, args.seconds, pair,
                                                      args.count_ike))))
        return
    args.responders = args.responders or AUTHS[args.auth]
    if not 1 <= args.concurrency <= 250 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--concurrency 1 to 250, --seconds > 0, --rounds >= 1")
    if not set(args.responders) <= set(AUTHS[args.auth]) or len(set(args.responders)) != len(args.responders):
        parser.error(f"--responders: with --auth {args.auth}, some of {','.join(AUTHS[args.auth])}")
    procs.install_exit_hooks()  # SIGTERM unwinds like Ctrl-C: the VM goes with us
    if not args.host and os.environ.get("IKECTL_IN_GUEST") != "1" and not probe_esp().available:
        rerun_in_vm(__file__)
    run(args)


if __name__ == "__main__":
    main()
