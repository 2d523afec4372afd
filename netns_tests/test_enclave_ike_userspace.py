"""enclave-ike with userspace ESP behind the untrusted forwarder, on the host (no kernel ESP anywhere).

    client 10.88.1.2 -- router -- resolver host 10.88.2.53 (enclave-ike forward: UDP 500/4500, no key)
                                        |  Unix socket (relay frames)
                                    enclave (a namespace with loopback only: enclave-ike serve, apply.mode =
                                             "userspace"; unbound on 127.0.0.1)

The client is the project's own initiator core with userspace ESP (netns_tests/harness/esp_client.py): IKE on
port 500, DNS queries inside ESP in UDP on port 4500. Captures on the router's wire and on the resolver host's
own interface (the forwarder's side) count plaintext port-53 packets: none, while every query is answered. The
resolver host's kernel and the enclave's hold no XFRM state at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from enclave_ike.server import PublishedIdentity
from ikecommon import keys
from ikecommon.xfrm import XfrmClient
from ikectl import plan, render
from ikectl.config import Mode, TrustedResolver
from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import query
from netns_tests.harness.enclave_ike import NULL_IDENTITY, config_text, servers, signing_identity
from netns_tests.harness.pluto import Pluto
from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.unbound import Unbound, UnboundConfig

PREFIX = "10.88"
CLIENT, RESOLVER = f"{PREFIX}.1.2", f"{PREFIX}.2.53"
RESOLVER_ID = "@resolver.enclave.example"
SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(f'http://{sys.argv[1]}:9464/metrics', timeout=10).read().decode())")


class Site:
    def __init__(self, topo: Topology, workdir: Path, unbound: Callable[..., Unbound]) -> None:
        self.topo, self.workdir = topo, workdir
        self.client, router, self.resolver = topo.add_host("client"), topo.add_router("router"), topo.add_host("dns")
        self.enclave = topo.add_host("enclave")  # loopback only: its one way out is the forwarder's socket
        topo.link(self.client, router, f"{PREFIX}.1.0/24", hosts=(2, 1))
        topo.link(self.resolver, router, f"{PREFIX}.2.0/24", hosts=(53, 1))
        topo.default_route(self.client, router)
        topo.default_route(self.resolver, router)
        self.router = router
        unbound(self.enclave, UnboundConfig(addresses=[ip_address("127.0.0.1")]))
        self.relay = workdir / "relay.sock"
        self.forwarders: list[procs.Daemon] = []

    def forward(self) -> procs.Daemon:
        """`enclave-ike forward` on the resolver host, once it reached the enclave."""
        forwarder = procs.Daemon(f"enclave-ike-forward@dns-{len(self.forwarders)}", [
            sys.executable, "-m", "enclave_ike.cli", "forward", "--listen", RESOLVER, "--enclave", str(self.relay)],
            self.workdir / f"forward-{len(self.forwarders)}.log", netns=self.resolver.netns)
        self.forwarders.append(forwarder)
        forwarder.start()
        forwarder.wait_for_log("connected to the enclave", timeout=60.0)
        return forwarder

    def capture(self, host: Host, peer: Host, name: str) -> Capture:
        capture = Capture(host, host.interface_to(peer).ifname, self.workdir / f"{name}.pcap")
        capture.start()
        return capture

    def queries(self, *args: str) -> list[dict[str, Any]]:
        argv = ["ip", "netns", "exec", self.client.netns, sys.executable, "-m", "netns_tests.harness.esp_client",
                "--server", RESOLVER, "--source", CLIENT, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines and "summary" in lines[-1], (proc.stdout, proc.stderr)
        return lines


@pytest.fixture
def site(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound]) -> Site:
    return Site(topology, tmp_path, unbound)


@pytest.fixture
def enclave(site: Site) -> Iterator[Callable[..., procs.Daemon]]:
    """`enclave(privacy=...)`: enclave-ike serve in the enclave namespace, then the forwarder on the resolver host."""
    with servers(site.enclave, site.workdir) as serve:
        def start(privacy: bool = False, identity: str = NULL_IDENTITY) -> procs.Daemon:
            text = config_text(RESOLVER, identity=identity, workdir=site.workdir, apply="userspace",
                               privacy=privacy)
            daemon = serve(text.replace("[listen]\n", f'[listen]\nrelay = "{site.relay}"\n', 1))
            site.forward()
            return daemon

        try:
            yield start
        finally:
            for forwarder in site.forwarders:
                forwarder.stop()


def summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = lines[-1]["summary"]
    return result


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_dns_is_answered_through_userspace_esp_with_no_plaintext_on_either_wire(site: Site,
                                                                                enclave: Callable[..., procs.Daemon]):
    server = enclave()
    wire, host_side = site.capture(site.router, site.resolver, "router"), site.capture(site.resolver, site.router,
                                                                                       "resolver-host")
    lines = site.queries("--queries", "10")
    wire.stop()
    host_side.stop()
    assert summary(lines) == {"answered": 10, "unanswered": 0, "rekeys": 0}, lines
    answers = [line for line in lines if line.get("event") == "answer"]
    assert all(a["rcode"] == "NOERROR" and a["answer"] == ["10.77.0.80"] for a in answers), answers
    for capture in (wire, host_side):
        count = capture.count([CLIENT]).peer(RESOLVER)
        assert count.plaintext_dns == 0, (capture.name, count)
        assert count.esp_out >= 10 and count.esp_in >= 10, (capture.name, count)  # every query and answer
    for host in (site.resolver, site.enclave):
        with XfrmClient(host.netns) as xfrm:
            assert xfrm.sas() == [] and xfrm.policies() == [], host.name
    server.stop()
    assert re.search(r"ESP: .*DNS answers: 10; DNS queries over UDP: 10", server.log_text()), server.log_text()


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_rekeys_under_load_keep_every_query_answered(site: Site, enclave: Callable[..., procs.Daemon]):
    enclave()
    lines = site.queries("--queries", "30", "--rekey-every", "7")
    assert summary(lines) == {"answered": 30, "unanswered": 0, "rekeys": 4}, lines
    spis = {line["spi_in"] for line in lines if line.get("event") in ("established", "rekeyed")}
    assert len(spis) == 5


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_a_restarted_forwarder_is_used_again_and_sees_only_counts(site: Site, enclave: Callable[..., procs.Daemon]):
    server = enclave()
    assert summary(site.queries("--queries", "2"))["answered"] == 2
    # The forwarder is killed and started again: the enclave takes the new connection, clients are served again.
    first = site.forwarders[0]
    first.stop(sig=signal.SIGKILL)
    server.wait_for_log("relay: the forwarder disconnected", timeout=10.0)
    site.forward()
    assert summary(site.queries("--queries", "2"))["answered"] == 2
    site.forwarders[1].stop()  # its last line: the counts
    for forwarder in site.forwarders:
        text = forwarder.log_text()
        assert CLIENT not in text and "10.88.1." not in text, text
    assert re.search(r"relayed: .*from the enclave: \d+; to the enclave: \d+", site.forwarders[1].log_text())


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
@pytest.mark.parametrize("privacy", [True, False], ids=["privacy-on", "privacy-off"])
def test_what_leaves_the_enclave_names_no_client_and_no_query(site: Site, enclave: Callable[..., procs.Daemon],
                                                              privacy: bool):
    """Everything written outside the enclave: serve's log (its stderr is what journald would keep), the
    forwarder's, and a metrics scrape. With privacy off the same scan finds the client (so it can fail); query names
    are never written."""
    server = enclave(privacy=privacy)
    lines = site.queries("--queries", "3")
    assert summary(lines)["answered"] == 3
    scraped = site.topo.run(site.client, [sys.executable, "-c", SCRAPE, RESOLVER]).stdout
    assert "enclave_ike_dns_queries_total" in scraped
    server.stop()
    site.forwarders[0].stop()
    spis = {line[key] for line in lines if line.get("event") == "established" for key in ("spi_in", "spi_out")}
    known = {CLIENT, *spis}
    written = server.log_text() + site.forwarders[0].log_text() + scraped
    hits = {k for k in known if re.search(rf"{re.escape(k)}(?![0-9a-f])", written)}
    assert hits == (set() if privacy else known), written
    assert "lab.example" not in written


def trusted_client(site: Site, enclave: Callable[..., procs.Daemon], pluto: Callable[..., Pluto],
                   sa_lifetime_s: int | None = None) -> procs.Daemon:
    """enclave-ike (signing, userspace ESP) behind the forwarder, and the client's pluto with the tree `ikectl up`
    renders in trusted mode with [ipsec] encapsulation = true and the enclave's key pinned; returns the server."""
    server = enclave(identity=signing_identity(RESOLVER_ID))
    published = site.workdir / "identity.json"
    identity = PublishedIdentity.from_json(published.read_text(), str(published))
    assert identity.libreswan is not None
    site.topo.sysctl(site.client, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    # As `ikectl up` does: the tcp/53 trap's ACQUIRE is not held up for the kernel's default 30 s by the larval
    # state the udp/53 trap left (docs/modes.md).
    site.topo.sysctl(site.client, "net.core.xfrm_acq_expires", str(plan.ACQ_EXPIRES_S))
    client = pluto(site.client, run=False)
    client.init_nss()
    profile = render.Profile(Mode.TRUSTED, encapsulation=True, sa_lifetime_s=sa_lifetime_s, trusted=TrustedResolver(
        ip_address(RESOLVER), RESOLVER_ID, keys.parse(identity.libreswan)))
    render.write_tree(render.render_tree(profile), client.dir)
    client.start()
    client.addconn("--autoall")
    return server


def test_ikectl_trusted_mode_gets_dns_through_userspace_esp_behind_the_forwarder(site: Site,
                                                                                enclave: Callable[..., procs.Daemon],
                                                                                pluto: Callable[..., Pluto]):
    """Needs ESP in the client's kernel (the VM). pluto's kernel sends ESP in UDP to port 4500, the forwarder relays
    it, the enclave opens it and asks unbound on its loopback; TCP ends in enclave-ike's own TCP. 0 plaintext
    port-53 packets on the router and on the resolver host's side; no XFRM state outside the client."""
    wire, host_side = site.capture(site.router, site.client, "router"), site.capture(site.resolver, site.router,
                                                                                     "resolver-host")
    trusted_client(site, enclave, pluto)
    answers = [query(site.topo, site.client, RESOLVER, timeout=20.0, retry_every=2.0)]
    answers += [query(site.topo, site.client, RESOLVER, timeout=5.0) for _ in range(9)]
    over_tcp = [query(site.topo, site.client, RESOLVER, timeout=20.0, tcp=True)]  # its own Child SA (tcp/53)
    over_tcp += [query(site.topo, site.client, RESOLVER, rdtype=rdtype, timeout=5.0, tcp=True)
                 for rdtype in ("A", "AAAA", "TXT")]
    wire.stop()
    host_side.stop()
    assert all(a.answered for a in answers), answers
    assert all(a.answered for a in over_tcp), over_tcp
    for capture in (wire, host_side):
        count = capture.count([CLIENT]).peer(RESOLVER)
        assert count.plaintext_dns == 0, (capture.name, count)
        assert count.esp_out >= 10 and count.esp_in >= 10, (capture.name, count)
    states = site.topo.run(site.client, ["ip", "xfrm", "state"]).stdout
    assert "encap type espinudp sport 4500 dport 4500" in states, states
    for host in (site.resolver, site.enclave):
        with XfrmClient(host.netns) as xfrm:
            assert xfrm.sas() == [] and xfrm.policies() == [], host.name


def test_rekeys_under_load_keep_dns_answered_through_userspace_esp(site: Site,
                                                                  enclave: Callable[..., procs.Daemon],
                                                                  pluto: Callable[..., Pluto]):
    """Needs ESP in the client's kernel (the VM). Child SAs of 30 s, rekeyed by pluto 10 s before their end, while
    the client queries for 50 s: every query answered, at least three outbound SAs seen in the client's kernel, and
    still 0 plaintext port-53 packets on either wire."""
    wire, host_side = site.capture(site.router, site.client, "router"), site.capture(site.resolver, site.router,
                                                                                     "resolver-host")
    server = trusted_client(site, enclave, pluto, sa_lifetime_s=30)
    answers, seen = [], set()
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline:
        answers.append(query(site.topo, site.client, RESOLVER, timeout=5.0, retry_every=0.5))
        with XfrmClient(site.client.netns) as xfrm:
            seen |= {sa.spi for sa in xfrm.sas() if str(sa.dst) == RESOLVER and not sa.larval}
    wire.stop()
    host_side.stop()
    unanswered = [a for a in answers if not a.answered]
    assert not unanswered, (len(answers), unanswered)
    assert len(seen) >= 3, seen  # the first Child SA and at least two rekeys
    assert server.log_text().count("Child SA rekeyed") >= 2, server.log_text()
    for capture in (wire, host_side):
        assert capture.count([CLIENT]).peer(RESOLVER).plaintext_dns == 0, capture.name


FETCH = ("import sys; from ikecommon.attestation.envelope import Envelope; from ikecommon import evidence_client as e; "
         "print(e.fetch_identity(sys.argv[1], 4501)); "
         "print(Envelope.decode(e.fetch_evidence(sys.argv[1], 4501, bytes.fromhex(sys.argv[2]))).nonce.hex())")


@pytest.mark.host  # evidence over TCP through the forwarder: no ESP
def test_the_evidence_endpoint_is_reached_through_the_forwarder(site: Site, enclave: Callable[..., procs.Daemon]):
    """A client attests the enclave before pinning its key: its evidence endpoint listens beside the relay socket, and
    the forwarder pipes TCP port 4501 to it (the enclave has no address of its own)."""
    enclave(identity=signing_identity(RESOLVER_ID))
    nonce = os.urandom(32).hex()
    proc = site.topo.run(site.client, [sys.executable, "-c", FETCH, RESOLVER, nonce])
    assert proc.stdout.split() == [RESOLVER_ID, nonce], proc.stdout
    site.forwarders[0].stop()  # its last line: the counts
    assert "evidence connections: 2" in site.forwarders[0].log_text()


@pytest.mark.host  # userspace ESP: no kernel SA anywhere
def test_a_scrape_through_the_forwarder_counts_a_known_workload(site: Site, enclave: Callable[..., procs.Daemon]):
    """The operator's scraper reaches the enclave's metrics through the forwarder (TCP 9464 piped to the socket
    beside the relay): after one client's 12 queries, the counts are exactly those, with no client in any label."""
    enclave(privacy=True)
    lines = site.queries("--queries", "12")
    assert summary(lines)["answered"] == 12
    text = site.topo.run(site.client, [sys.executable, "-c", SCRAPE, RESOLVER]).stdout
    expected = {
        'enclave_ike_ike_sas_established_total{auth="null"}': 1.0,
        'enclave_ike_child_sas_established_total{suite="AES_GCM_16_256"}': 1.0,
        'enclave_ike_dns_queries_total{qtype="A",transport="udp"}': 12.0,
        'enclave_ike_dns_answers_total{rcode="NOERROR"}': 12.0,
        'enclave_ike_esp_packets_total{direction="in"}': 12.0,
        'enclave_ike_esp_packets_total{direction="out"}': 12.0,
        "enclave_ike_dns_resolver_seconds_count": 12.0,
    }
    found = {key: float(m.group(1)) for key in expected
             if (m := re.search(rf"^{re.escape(key)} (\S+)$", text, re.MULTILINE))}
    assert found == expected, text
    spis = {line[key] for line in lines if line.get("event") == "established" for key in ("spi_in", "spi_out")}
    assert not any(known in text for known in (CLIENT, *spis, "lab.example")), text
