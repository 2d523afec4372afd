"""Interop: libreswan's pluto as initiator against `enclave-ike serve` as responder.

    client 10.78.1.2 -- router -- resolver 10.78.2.53 (enclave-ike serve + unbound)

1. NULL auth (RFC 7619) both ways: pluto completes IKE_AUTH, enclave-ike reports the Child SA.
2. The conn ikectl's trusted mode renders, with enclave-ike's ECDSA key (from the sim enclave, read with
   `enclave-ike identity --format libreswan`) pinned: pluto completes IKE_AUTH, enclave-ike reports the Child SA.

Both run with `apply.mode = "none"`, so they pass on a kernel without ESP (pluto's own SA install fails there, after
IKE_AUTH). The third test needs ESP (the VM): enclave-ike installs its Child SA with ikecommon.xfrm, the client's DNS is
answered by unbound over ESP, and the router's capture sees 0 plaintext port-53 packets.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_ike.server import PublishedIdentity
from ikecommon import keys
from ikectl import render
from ikectl.config import Mode, TrustedResolver
from netns_tests.harness import procs
from netns_tests.harness.capture import Capture
from netns_tests.harness.dnsclient import query
from netns_tests.harness.enclave_ike import NULL_IDENTITY, config_text, servers, signing_identity
from netns_tests.harness.pluto import Pluto, PlutoConfig
from netns_tests.harness.topology import Topology
from netns_tests.harness.unbound import Unbound
from netns_tests.scenarios.resolver_world import World, build_world, null_conn

RESOLVER = "10.78.2.53"
RESOLVER_ID = "@resolver.enclave.example"
ESTABLISHED_IKE = r"established IKE SA"

NULL_CONN = null_conn(RESOLVER)


@pytest.fixture
def world(topology: Topology, tmp_path: Path, unbound: Callable[..., Unbound]) -> World:
    return build_world(topology, tmp_path, unbound, "10.78")


@pytest.fixture
def enclave_ike(world: World) -> Iterator[Callable[..., procs.Daemon]]:
    """Factory: `enclave_ike(auth=..., apply=...)` runs `enclave-ike serve` in the resolver's namespace: with
    `auth="signature"` its ECDSA key is in the sim enclave, with "null" it has none."""
    with servers(world.resolver, world.workdir) as serve:
        def start(*, auth: str, apply: str) -> procs.Daemon:
            identity = signing_identity(RESOLVER_ID) if auth == "signature" else NULL_IDENTITY
            return serve(config_text(RESOLVER, identity=identity, workdir=world.workdir, apply=apply))

        yield start


def pinned_identity(world: World) -> keys.PinnedKey:
    """What an operator publishes: `enclave-ike identity --format libreswan`, run beside the server."""
    proc = world.topo.run(world.resolver, [sys.executable, "-m", "enclave_ike.cli", "identity", "--config",
                                           str(world.workdir / "enclave-ike.toml"), "--format", "libreswan"])
    line = proc.stdout.strip()
    assert line.startswith("leftecdsakey=0s"), line
    return keys.parse(line)


def published_pin(world: World) -> keys.PinnedKey:
    """The key the running server published (identity.json), read here: a second Python process costs tens of
    seconds of imports under TCG on a busy host. `enclave-ike identity` itself is tested by the tests above."""
    path = world.workdir / "identity.json"
    identity = PublishedIdentity.from_json(path.read_text(), str(path))
    assert identity.libreswan is not None
    return keys.parse(identity.libreswan)


def trusted_pluto(world: World, pluto: Callable[..., Pluto], pin: keys.PinnedKey) -> Pluto:
    """The client's pluto with the tree `ikectl render --mode trusted` makes for this resolver."""
    daemon = pluto(world.client, run=False)
    daemon.init_nss()
    profile = render.Profile(Mode.TRUSTED, trusted=TrustedResolver(ip_address(RESOLVER), RESOLVER_ID, pin))
    render.write_tree(render.render_tree(profile), daemon.dir)
    daemon.start()
    daemon.addconn("--autoall")
    return daemon


@pytest.mark.host  # IKE only (apply.mode none): needs no kernel ESP
def test_pluto_completes_ike_auth_with_null_auth(world: World, pluto: Callable[..., Pluto],
                                                 enclave_ike: Callable[..., procs.Daemon]) -> None:
    server = enclave_ike(auth="null", apply="none")
    client = pluto(world.client, PlutoConfig(conns=NULL_CONN))
    client.addconn("--autoall")
    client.whack("--initiate", "--name", "dns", "--asynchronous")
    client.wait_for_log(ESTABLISHED_IKE, timeout=20.0)
    server.wait_for_log(r"IKE SA \S+ established with 10\.78\.1\.2:\d+ \(peer ID_NULL, NULL auth", timeout=10.0)
    server.wait_for_log(r"Child SA established under IKE SA .* transport .*10\.78\.2\.53 proto 17 port 53",
                        timeout=10.0)
    assert server.running()


@pytest.mark.host  # IKE only (apply.mode none): needs no kernel ESP
def test_pluto_pins_enclave_ike_ecdsa_key(world: World, pluto: Callable[..., Pluto],
                                          enclave_ike: Callable[..., procs.Daemon]) -> None:
    server = enclave_ike(auth="signature", apply="none")
    client = trusted_pluto(world, pluto, pinned_identity(world))
    client.whack("--initiate", "--name", "ikectl-trusted-udp", "--asynchronous")
    match = client.wait_for_log(rf"{ESTABLISHED_IKE}.*", timeout=20.0)
    assert "ECDSA" in client.log_text() or "ecdsa" in match.group(0).lower() or "P-256" in client.log_text()
    server.wait_for_log(r"IKE SA \S+ established with 10\.78\.1\.2:\d+ \(peer ID_NULL, NULL auth, unauthenticated; "
                        r"we are resolver\.enclave\.example\)", timeout=10.0)
    server.wait_for_log(r"Child SA established under IKE SA .* tunnel .*10\.78\.2\.53 proto 17 port 53", timeout=10.0)
    assert server.running()


@pytest.mark.host  # IKE only (apply.mode none): needs no kernel ESP
def test_pluto_refuses_enclave_ike_with_the_wrong_pin(world: World, pluto: Callable[..., Pluto],
                                                      enclave_ike: Callable[..., procs.Daemon]) -> None:
    """pluto refuses our AUTH after our IKE_AUTH response, so enclave-ike had reported the SAs established (RFC 7296
    leaves the responder no later signal of success). pluto 4.10 then deletes the IKE SA with an INFORMATIONAL
    Delete (a strongSwan-like initiator sends AUTHENTICATION_FAILED; both tear down, see ex::test_an_error_notify_*);
    enclave-ike drops the IKE SA, its Child SA and what it applied within a second."""
    server = enclave_ike(auth="signature", apply="none")
    pinned_identity(world)  # the server's real key, which the client does not get
    wrong = keys.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    client = trusted_pluto(world, pluto, wrong)
    client.whack("--initiate", "--name", "ikectl-trusted-udp", "--asynchronous")
    spi = server.wait_for_log(r"IKE SA (\S+) established with 10\.78\.1\.2", timeout=20.0).group(1)
    server.wait_for_log(rf"IKE SA {spi} deleted: ", timeout=1.0)
    child = server.wait_for_log(rf"Child SA established under IKE SA {spi}: in (0x[0-9a-f]+) out (0x[0-9a-f]+)",
                                timeout=1.0)
    server.wait_for_log(rf"Child SA in {child.group(1)} out {child.group(2)} deleted: ", timeout=1.0)
    server.wait_for_log(rf"delete SA spi {child.group(1)} ", timeout=1.0)
    server.wait_for_log(rf"delete SA spi {child.group(2)} ", timeout=1.0)
    time.sleep(2.0)
    assert ESTABLISHED_IKE not in client.log_text()
    assert server.running()


def test_dns_answered_over_esp_installed_by_enclave_ike(world: World, pluto: Callable[..., Pluto],
                                                        enclave_ike: Callable[..., procs.Daemon],
                                                        capture: Callable[..., Capture]) -> None:
    """Needs ESP in the kernel (the VM): enclave-ike installs the Child SA, unbound answers over it."""
    world.topo.sysctl(world.client, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    wire = capture(world.router, world.router.interface_to(world.client).ifname)
    server = enclave_ike(auth="signature", apply="kernel")
    client = trusted_pluto(world, pluto, pinned_identity(world))
    # One send only (no resend within the timeout): an answer then proves the packet that triggered IKE got
    # through, however long IKE took on a busy host (with a resend after 1 s that was a question of timing).
    answers = [query(world.topo, world.client, RESOLVER, timeout=15.0, retry_every=20.0)]
    answers += [query(world.topo, world.client, RESOLVER, timeout=5.0) for _ in range(9)]
    client.wait_for_log(ESTABLISHED_IKE, timeout=5.0)
    server.wait_for_log(r"Child SA established", timeout=5.0)
    assert "apply: " not in server.log_text(), "enclave-ike could not install the Child SA"
    states = world.topo.run(world.resolver, ["ip", "xfrm", "state"]).stdout
    assert "proto esp" in states, states
    time.sleep(0.2)
    wire.stop()
    counts = wire.count(world.client.addresses()).peer(RESOLVER)
    assert [a.answered for a in answers] == [True] * len(answers)
    # The query that triggered IKE is answered without a resend: enclave-ike sends its IKE_AUTH answer
    # only after the Child SA is in the kernel, so the initiator's first ESP packet is not dropped.
    assert answers[0].sends == 1, answers[0]
    assert counts.esp_out >= len(answers) and counts.esp_in >= len(answers), counts
    assert counts.plaintext_dns == 0, counts


CAFE = "10.78.3.2"


def test_one_resolver_serves_a_trusted_and_a_coffee_shop_client(world: World, pluto: Callable[..., Pluto],
                                                                  enclave_ike: Callable[..., procs.Daemon],
                                                                  capture: Callable[..., Capture]) -> None:
    """Needs ESP (the VM). One enclave-ike with a signing identity: ikectl's trusted conn pins its key and gets its
    signature; ikectl's coffee-shop conn (opportunistic, NULL auth, rightid=%null) gets a NULL answer as ID_NULL
    (instead of an identity it would refuse and fall back to clear). Both get DNS over ESP, 0 plaintext."""
    cafe = world.topo.add_host("cafe")
    world.topo.link(cafe, world.router, "10.78.3.0/24", hosts=(2, 1))
    world.topo.default_route(cafe, world.router)
    for host in (world.client, cafe):
        world.topo.sysctl(host, "net.core.xfrm_larval_drop", "0")  # queue the query that triggers IKE
    wires = {host.name: capture(world.router, world.router.interface_to(host).ifname)
             for host in (world.client, cafe)}
    server = enclave_ike(auth="signature", apply="kernel")
    trusted_pluto(world, pluto, published_pin(world))
    coffee = pluto(cafe, run=False)
    coffee.init_nss()
    render.write_tree(render.render_tree(render.Profile(Mode.COFFEE_SHOP, opportunistic=(ip_address(RESOLVER),))),
                      coffee.dir)
    coffee.start()
    coffee.addconn("--autoall")
    answers = {}
    for host in (world.client, cafe):
        answers[host.name] = [query(world.topo, host, RESOLVER, timeout=15.0, retry_every=20.0)]
        answers[host.name] += [query(world.topo, host, RESOLVER, timeout=5.0) for _ in range(4)]
    server.wait_for_log(r"IKE SA \S+ established with 10\.78\.1\.2:\d+ \(peer ID_NULL, NULL auth, unauthenticated; "
                        r"we are resolver\.enclave\.example\)", timeout=5.0)
    server.wait_for_log(r"IKE SA \S+ established with 10\.78\.3\.2:\d+ \(peer ID_NULL, NULL auth, unauthenticated; "
                        r"we are ID_NULL\)", timeout=5.0)
    time.sleep(0.2)
    for host in (world.client, cafe):
        wire = wires[host.name]
        wire.stop()
        counts = wire.count(host.addresses()).peer(RESOLVER)
        assert all(a.answered for a in answers[host.name]), (host.name, answers[host.name])
        assert counts.esp_out >= 5 and counts.esp_in >= 5, (host.name, counts)
        assert counts.plaintext_dns == 0, (host.name, counts)
