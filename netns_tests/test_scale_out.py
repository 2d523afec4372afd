"""Scale-out: replicas of one resolver service share one attested identity key (enclave_ike/release).

    replica-1 10.81.1.2 --+
    replica-2 10.81.2.2 --+-- router
    replica-3 10.81.3.2 --+
    replica-4 10.81.4.2 --+     (another build: refused)

Real `enclave-ike serve` processes with the sim backend (the key in each one's sim enclave process), real sim
evidence checked against a spec, HPKE between them over TCP. The first tests need no ESP and run on the host.

The last one is the service as a client meets it, in the VM (kernel ESP): the three replicas each have the service
address 10.82.0.53 on their loopback and unbound on it, and the router reaches it over equal-cost next hops (the
default L3 hash keeps a client's IKE and ESP on one replica):

    client 10.82.1.2 -- router (capture) ==ECMP==> replica1 10.82.11.2 | replica2 10.82.12.2 | replica3 10.82.13.2
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import pytest

from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from netns_tests.conftest import IKECTL
from netns_tests.harness import procs
from netns_tests.harness.dnsclient import query
from netns_tests.harness.enclave_ike import LISTEN_TIMEOUT_S, config_text, signing_identity
from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.unbound import UnboundConfig

SERVICE_ID = "@dns.service.example"
BUILD = bytes.fromhex("5e" * 48)
OTHER_BUILD = bytes.fromhex("0b" * 48)


@dataclass
class Replica:
    host: Host
    address: str
    workdir: Path

    def config(self, release: str, build: bytes = BUILD, *, listen: tuple[str, ...] = (), apply: str = "none",
               evidence: str = "enabled = false") -> str:
        """serve as this build, IKE on `listen` (default: its own address), [release] with the test's spec, sim
        anchors, and `release`."""
        identity = signing_identity(SERVICE_ID) + f'sim_registers = ["{build.hex()}"]\n'
        return config_text(listen or self.address, identity=identity, workdir=self.workdir, apply=apply,
                           extra=f"[evidence]\n{evidence}\n\n[metrics]\nenabled = false\n\n[release]\n"
                                 f'spec = "{self.workdir.parent / "spec.json"}"\nanchors = "sim"\n{release}')

    def published_key(self) -> str:
        return str(json.loads((self.workdir / "identity.json").read_text())["public_key_pem"])


@pytest.fixture
def replicas(topology: Topology, tmp_path: Path) -> list[Replica]:
    router = topology.add_router("router")
    found = []
    for number in range(1, 5):
        host = topology.add_host(f"replica{number}")
        topology.link(host, router, f"10.81.{number}.0/24", hosts=(2, 1))
        topology.default_route(host, router)
        workdir = tmp_path / f"replica{number}"
        workdir.mkdir()
        found.append(Replica(host, f"10.81.{number}.2", workdir))
    spec = MeasurementSpec((MeasurementEntry("resolver-build", "sim", ((0, BUILD),)),))
    (tmp_path / "spec.json").write_bytes(spec.encode())
    return found


@pytest.fixture
def start() -> Iterator[object]:
    started: list[procs.Daemon] = []

    def run(replica: Replica, text: str, wait: str | None = r"listening on ") -> procs.Daemon:
        (replica.workdir / "enclave-ike.toml").write_text(text)
        argv = [sys.executable, "-m", "enclave_ike.cli", "serve", "--config", str(replica.workdir / "enclave-ike.toml")]
        daemon = procs.Daemon(f"enclave-ike@{replica.host.name}", argv, replica.workdir / "enclave-ike.log",
                              netns=replica.host.netns)
        started.append(daemon)
        daemon.start()
        if wait is not None:
            daemon.wait_for_log(wait, timeout=LISTEN_TIMEOUT_S)
        return daemon

    yield run
    for daemon in reversed(started):
        daemon.stop()


@pytest.mark.host
def test_replicas_obtain_the_first_ones_key_and_another_build_is_refused(replicas: list[Replica], start) -> None:
    first, second, third, other = replicas
    holder = start(first, first.config(f'listen = ["{first.address}"]\n'), r"key release endpoint on 10\.81\.1\.2:4502")
    joining = f'source = "peers"\npeers = ["{first.address}:4502"]\njoin_timeout_s = 20\n'
    for replica in (second, third):
        daemon = start(replica, replica.config(joining + f'listen = ["{replica.address}"]\n'))
        daemon.wait_for_log(r"identity key: the service key from 10\.81\.1\.2:4502 \(sim evidence matching "
                            r"'resolver-build'\)")
        assert replica.published_key() == first.published_key()
    assert len(re.findall(r"key release: granted the service key to 10\.81\.[23]\.2 \(sim evidence matching "
                          r"'resolver-build'\)", holder.log_text())) == 2

    refused = start(other, other.config(joining.replace("20", "3"), build=OTHER_BUILD), wait=None)
    procs.wait_until(lambda: not refused.running(), 60.0, "the other build's replica to give up")
    assert refused.stop() == 1
    said = refused.log_text()
    assert "key release from 10.81.1.2:4502 refused: the holder said 403 refused: the joiner's evidence does not " \
           "verify: spec[resolver-build].measurements.0: expected 5e5e" in said
    assert "replicas are there but none gave the key, so none is made here" in said
    assert "listening on" not in said and not (other.workdir / "identity.json").exists()
    holder.wait_for_log(r"key release to 10\.81\.4\.2 refused: the joiner's evidence does not verify: "
                        r"spec\[resolver-build\]\.measurements\.0: expected 5e5e[0-9a-f]* \(SIM0\), got 0b0b")
    assert "granted the service key to 10.81.4.2" not in holder.log_text()  # it asked each round; each refused


@pytest.mark.host
def test_alone_a_replica_exits_or_starts_a_new_key_as_told(replicas: list[Replica], start) -> None:
    """No peer answers (nothing listens there): `when_alone` decides, after `join_timeout_s`."""
    first, second = replicas[:2]
    alone = f'source = "peers"\npeers = ["{second.address}:4502"]\njoin_timeout_s = 2\n'
    exiting = start(first, first.config(alone), wait=None)
    procs.wait_until(lambda: not exiting.running(), 60.0, "the lone replica to exit")
    assert exiting.stop() == 1
    assert re.search(r"no replica gave the service key within 2 s \(10\.81\.2\.2:4502: .*refused.*\); with "
                     r'when_alone = "exit" no new key is made', exiting.log_text())
    founder = start(first, first.config(alone + 'when_alone = "new-key"\n'))
    assert "this replica starts the service's key (when_alone = \"new-key\")" in founder.log_text()
    assert "identity key: a new service key (no replica answered)" in founder.log_text()


@pytest.mark.host
def test_a_rotation_started_on_one_replica_is_obtained_by_the_other_and_both_switch(replicas: list[Replica],
                                                                                    start) -> None:
    """SIGUSR2 to one replica: its enclave makes a next key; the other replica, polling, obtains it by attested
    release; both publish it with its switch time and sign with it from then; the old key is gone."""
    first, second = replicas[:2]
    rotating = "poll_s = 1\nrotate_notice_s = 8\n"
    holder = start(first, first.config(f'listen = ["{first.address}"]\npeers = ["{second.address}:4502"]\n'
                                       + rotating))
    joined = start(second, second.config(f'source = "peers"\npeers = ["{first.address}:4502"]\n'
                                         f'listen = ["{second.address}"]\n' + rotating))
    old_key = first.published_key()
    assert second.published_key() == old_key
    os.kill(holder.pid, signal.SIGUSR2)
    made = holder.wait_for_log(r"rotation: next key ([0-9a-f]{16}) made; every replica signs with it from")
    joined.wait_for_log(rf"rotation: obtained the next key {made.group(1)} from {re.escape(first.address)}:4502 "
                        r"\(sim evidence matching 'resolver-build'\)")
    holder.wait_for_log(r"key release: granted the service key's successor \(rotation\) to 10\.81\.2\.2")
    published = [json.loads((r.workdir / "identity.json").read_text()) for r in (first, second)]
    assert published[0]["next_public_key_pem"] == published[1]["next_public_key_pem"] is not None
    assert published[0]["next_switch_at"] == published[1]["next_switch_at"]
    for daemon in (holder, joined):
        daemon.wait_for_log(rf"rotation: switched from key [0-9a-f]{{16}} to key {made.group(1)}", timeout=20)
    assert first.published_key() == second.published_key() == published[0]["next_public_key_pem"] != old_key
    assert "signs with key" not in holder.log_text() + joined.log_text()  # no split seen at any poll


# --- three replicas behind one address, trusted clients with one pin ---------------------------------------------

SERVICE = "10.82.0.53"
SERVICE2 = "10.82.0.54"  # the service's second address (behind the same ECMP): one pin for both
FAILOVER_S = 10.0


@dataclass
class Service:
    topo: Topology
    client: Host
    router: Host
    replicas: list[Replica]

    def route(self, *alive: Replica) -> None:
        """Each service address as equal-cost next hops over these replicas (L3 hash: one client and address, one
        replica)."""
        hops = [arg for replica in alive for arg in ("nexthop", "via", replica.address)]
        for address in (SERVICE, SERVICE2):
            self.topo.run(self.router, ["ip", "route", "replace", f"{address}/32", *hops])

    def holding(self, client: str, address: str = SERVICE) -> list[Replica]:
        """The replicas whose kernel has ESP SAs between this client and the service `address`."""
        return [r for r in self.replicas[:3]
                if f"src {address} dst {client}" in self.topo.run(r.host, ["ip", "xfrm", "state"], check=False).stdout]


@pytest.fixture
def service(topology: Topology, tmp_path: Path, unbound) -> Service:
    client, router = topology.add_host("client"), topology.add_router("router")
    topology.link(client, router, "10.82.1.0/24", hosts=(2, 1))
    topology.default_route(client, router)
    replicas = []
    for number in range(1, 5):
        host = topology.add_host(f"replica{number}")
        topology.link(host, router, f"10.82.1{number}.0/24", hosts=(2, 1))
        topology.default_route(host, router)
        for address in (SERVICE, SERVICE2):
            topology.run(host, ["ip", "address", "add", f"{address}/32", "dev", "lo"])
        workdir = tmp_path / f"replica{number}"
        workdir.mkdir()
        replicas.append(Replica(host, f"10.82.1{number}.2", workdir))
        if number <= 3:
            unbound(host, UnboundConfig(addresses=[ip_address(SERVICE), ip_address(SERVICE2)]))
    spec = MeasurementSpec((MeasurementEntry("resolver-build", "sim", ((0, BUILD),)),))
    (tmp_path / "spec.json").write_bytes(spec.encode())
    found = Service(topology, client, router, replicas)
    found.route(*replicas[:3])
    return found


def _replica_config(replica: Replica, release: str, build: bytes = BUILD) -> str:
    """A replica of the service: IKE and evidence on the service addresses, kernel SAs, release on its own."""
    return replica.config(f'listen = ["{replica.address}"]\n{release}', build, listen=(SERVICE, SERVICE2),
                          apply="kernel",
                          evidence="port = 4501")


def pin_the_service_and_go_up(service: Service, run_dir: Path, tmp_path: Path,
                              addresses: tuple[str, ...] = (SERVICE,)) -> Path:
    """`ikectl trust add` of the service at `addresses` (whichever replica answers at each) and trusted `up`,
    answered over ESP at each; the trust dir."""
    config = tmp_path / "ikectl.toml"
    trust_dir = tmp_path / "trust"
    config.write_text(f'mode = "trusted"\n[trusted]\nattested = "dns"\n[paths]\nrun_dir = "{run_dir}"\n'
                      f'trust_dir = "{trust_dir}"\n')
    ikectl = [str(IKECTL), "--config", str(config)]
    resolvers = [arg for address in addresses for arg in ("--resolver", address)]
    added = service.topo.run(service.client, [*ikectl, "trust", "add", "dns", *resolvers, "--spec",
                                              str(tmp_path / "spec.json"), "--anchors", "sim"],
                             check=False, timeout=180)
    assert added.returncode == 0, added.stderr
    up = service.topo.run(service.client, [*ikectl, "up"], check=False, timeout=180)
    assert up.returncode == 0, up.stderr
    for address in addresses:
        assert query(service.topo, service.client, address, timeout=30.0).answered, address
    return trust_dir


def test_a_client_pinned_once_moves_to_another_replica_within_10_s(service: Service, start, run_dir: Path,
                                                                    capture, tmp_path: Path) -> None:
    """Three replicas behind one ECMP address (two, in fact: the service's second address is routed the same way)
    share one attested key (the second and third obtain it from the first; another build is refused). A trusted
    client pins the service once, at both addresses; the replica of its first address's SAs is SIGKILLed and the
    routes withdrawn; its DNS to each address is answered through another replica within 10 s, with the same pin,
    and the router sees 0 plaintext port-53 packets from start to end."""
    topo, client = service.topo, service.client
    topo.sysctl(client, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    wire = capture(service.router, service.router.interface_to(client).ifname)
    first, second, third, other = service.replicas
    daemons = {first.host.name: start(first, _replica_config(first, ""), r"listening on ")}
    joining = f'source = "peers"\npeers = ["{first.address}:4502"]\njoin_timeout_s = 60\n'
    for replica in (second, third):
        daemons[replica.host.name] = start(replica, _replica_config(replica, joining))
    assert first.published_key() == second.published_key() == third.published_key()
    refused = start(other, _replica_config(other, joining.replace("60", "5"), build=OTHER_BUILD), wait=None)
    procs.wait_until(lambda: not refused.running(), 120.0, "the other build's replica to give up")
    assert "the joiner's evidence does not verify: spec[resolver-build].measurements.0" in refused.log_text()

    trust_dir = pin_the_service_and_go_up(service, run_dir, tmp_path, (SERVICE, SERVICE2))
    pin = (trust_dir / "dns.json").read_text()
    assert json.loads(pin)["also"] == [SERVICE2]
    [serving] = service.holding("10.82.1.2")

    killed_at = time.monotonic()
    daemons[serving.host.name].stop(sig=signal.SIGKILL)
    service.route(*(r for r in (first, second, third) if r is not serving))
    took = {}
    for address in (SERVICE, SERVICE2):
        while not query(topo, client, address, timeout=1.0).answered:
            assert time.monotonic() - killed_at < 30.0, f"no answer from {address} through another replica in 30 s"
        took[address] = time.monotonic() - killed_at
    print(f"failover: answered through another replica {took[SERVICE]:.1f} s after the SIGKILL "
          f"({took[SERVICE2]:.1f} s at the service's second address)")
    assert max(took.values()) < FAILOVER_S, f"answered again after {took} s"
    # The killed replica's kernel keeps its SAs (nothing removed them); the client's new ones are elsewhere.
    assert [r for r in service.holding("10.82.1.2") if r is not serving]
    for address in (SERVICE, SERVICE2):
        assert all(query(topo, client, address, timeout=5.0).answered for _ in range(3)), address
        assert query(topo, client, address, tcp=True, timeout=5.0).answered, address
    assert (trust_dir / "dns.json").read_text() == pin  # not pinned again

    wire.stop()
    for address in (SERVICE, SERVICE2):
        counts = wire.count(client.addresses()).peer(address)
        assert counts.plaintext_dns == 0, (address, counts)
        assert counts.esp_out >= 5 and counts.esp_in >= 5, (address, counts)


def test_when_the_last_holder_dies_a_new_key_is_made_and_clients_attest_again(service: Service, start,
                                                                              run_dir: Path, capture,
                                                                              tmp_path: Path) -> None:
    """The only holder is SIGKILLed: its key is gone. A replica started with when_alone = "new-key" finds nobody
    and makes a new key; the client sees another key in IKE, its supervisor re-attests the service on its own
    (same spec), pins the new key and DNS is answered over ESP again; 0 plaintext port-53 packets throughout."""
    topo, client = service.topo, service.client
    topo.sysctl(client, "net.core.xfrm_larval_drop", "0")
    wire = capture(service.router, service.router.interface_to(client).ifname)
    first, second = service.replicas[:2]
    service.route(first)
    holder = start(first, _replica_config(first, ""))
    trust_dir = pin_the_service_and_go_up(service, run_dir, tmp_path)
    old_key = json.loads((trust_dir / "dns.json").read_text())["key"]

    holder.stop(sig=signal.SIGKILL)
    service.route(second)
    founder = start(second, _replica_config(second, f'source = "peers"\npeers = ["{first.address}:4502"]\n'
                                                    'join_timeout_s = 3\nwhen_alone = "new-key"\n'))
    assert "identity key: a new service key (no replica answered)" in founder.log_text()
    assert second.published_key() != first.published_key()
    killed_at = time.monotonic()
    while not query(topo, client, SERVICE, timeout=1.0).answered:
        assert time.monotonic() - killed_at < 90.0, "the client did not attest the new key within 90 s"
    pin = json.loads((trust_dir / "dns.json").read_text())
    assert pin["key"] != old_key and pin["result"] == "ok"
    assert all(query(topo, client, SERVICE, timeout=5.0).answered for _ in range(3))

    wire.stop()
    counts = wire.count(client.addresses()).peer(SERVICE)
    assert counts.plaintext_dns == 0, counts
    assert counts.esp_out >= 4 and counts.esp_in >= 4, counts


ROTATION_NOTICE_S = 45  # the replicas' switch, this long after the rotation starts: time to spread and to stage


def test_a_rotation_reaches_every_replica_and_a_client_moves_to_the_staged_key(service: Service, start,
                                                                                 run_dir: Path, capture,
                                                                                 tmp_path: Path) -> None:
    """A rotation started on one replica (SIGUSR2): the other obtains the next key by attested release; a client's
    `ikectl trust verify` stages it from the service's evidence; at the announced time both replicas sign with it,
    and the SAs already up go on. The client's replica is SIGKILLed: its IKE_AUTH through the other one meets the
    new key, and the supervisor moves the pin to the staged key without fetching evidence; DNS is answered again,
    and the router sees 0 plaintext port-53 packets from start to end."""
    topo, client = service.topo, service.client
    topo.sysctl(client, "net.core.xfrm_larval_drop", "0")
    wire = capture(service.router, service.router.interface_to(client).ifname)
    first, second = service.replicas[:2]
    service.route(first, second)
    rotating = f"poll_s = 1\nrotate_notice_s = {ROTATION_NOTICE_S}\n"
    daemons = {first.host.name: start(first, _replica_config(first, f'peers = ["{second.address}:4502"]\n'
                                                                    + rotating))}
    daemons[second.host.name] = start(second, _replica_config(
        second, f'source = "peers"\npeers = ["{first.address}:4502"]\njoin_timeout_s = 60\n' + rotating))
    old_key = first.published_key()
    assert second.published_key() == old_key
    trust_dir = pin_the_service_and_go_up(service, run_dir, tmp_path)
    ikectl = [str(IKECTL), "--config", str(tmp_path / "ikectl.toml")]

    os.kill(daemons[first.host.name].pid, signal.SIGUSR2)
    made = daemons[first.host.name].wait_for_log(r"rotation: next key ([0-9a-f]{16}) made; every replica signs "
                                                 r"with it from .* \(in \d+ s\)", timeout=30)
    daemons[second.host.name].wait_for_log(rf"rotation: obtained the next key {made.group(1)} from "
                                           rf"{re.escape(first.address)}:4502 \(sim evidence matching "
                                           r"'resolver-build'\); switching to it at", timeout=30)
    staged = topo.run(client, [*ikectl, "trust", "verify", "dns"], check=False, timeout=120)
    assert staged.returncode == 0, staged.stderr
    pin = json.loads((trust_dir / "dns.json").read_text())
    assert pin["next_key"] is not None and pin["next_key"] != pin["key"], pin
    assert "rotation: next key staged" in topo.run(client, [*ikectl, "trust", "list"]).stdout

    for replica in (first, second):
        daemons[replica.host.name].wait_for_log(rf"rotation: switched from key [0-9a-f]{{16}} to key {made.group(1)}",
                                                timeout=ROTATION_NOTICE_S + 30)
    new_key = first.published_key()
    assert new_key != old_key and second.published_key() == new_key
    assert all(query(topo, client, SERVICE, timeout=5.0).answered for _ in range(3))  # the SAs up go on

    [serving] = service.holding("10.82.1.2")
    killed_at = time.monotonic()
    daemons[serving.host.name].stop(sig=signal.SIGKILL)
    service.route(*(r for r in (first, second) if r is not serving))
    while not query(topo, client, SERVICE, timeout=1.0).answered:
        assert time.monotonic() - killed_at < 90.0, "no answer through the other replica within 90 s"
    print(f"rotation: answered through the other replica, on the staged key, {time.monotonic() - killed_at:.1f} s "
          "after the SIGKILL")
    moved = json.loads((trust_dir / "dns.json").read_text())
    assert moved["key"] == pin["next_key"] and moved["next_key"] is None, moved
    assert moved["attested_at"] == pin["attested_at"]  # moved to the staged key, not attested again
    supervisor = (run_dir / "supervisor.log").read_text()
    assert "the resolver rotated its key: moved to the next key staged" in supervisor, supervisor[-2000:]
    assert all(query(topo, client, SERVICE, timeout=5.0).answered for _ in range(3))

    wire.stop()
    counts = wire.count(client.addresses()).peer(SERVICE)
    assert counts.plaintext_dns == 0, counts
    assert counts.esp_out >= 6 and counts.esp_in >= 6, counts
