"""The topology builder: namespaces, veth pairs, IPv4 and IPv6, loopback, a router, and removal."""

import socket
from pathlib import Path

import pytest

from netns_tests.harness import procs
from netns_tests.harness.topology import Host, Topology

pytestmark = pytest.mark.host  # namespaces and veths; no ESP involved


def udp_reaches(topo: Topology, sender: Host, receiver: Host, address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with topo.socket(receiver, family) as rx, topo.socket(sender, family) as tx:
        rx.bind((address, 5300))
        rx.settimeout(3.0)
        tx.sendto(b"hello", (address, 5300))
        try:
            data, _ = rx.recvfrom(100)
        except TimeoutError:
            return False
    return data == b"hello"


def test_hosts_are_namespaces_with_loopback_up(topology: Topology):
    host = topology.add_host("a")
    assert Path(f"/run/netns/{host.netns}").exists()
    assert "state UNKNOWN" in topology.run(host, ["ip", "link", "show", "lo"]).stdout
    assert udp_reaches(topology, host, host, "127.0.0.1")


def test_veth_link_carries_ipv4_and_ipv6_both_ways(topology: Topology):
    a, b = topology.add_host("a"), topology.add_host("b")
    a_end, b_end = topology.link(a, b, "10.88.0.0/24", "fd88::/64")
    assert (str(a_end.ipv4), str(b_end.ipv6)) == ("10.88.0.1/24", "fd88::2/64")
    assert udp_reaches(topology, a, b, "10.88.0.2")
    assert udp_reaches(topology, b, a, "10.88.0.1")
    assert udp_reaches(topology, a, b, "fd88::2")  # usable at once: no DAD wait


def test_router_forwards_between_links(topology: Topology):
    client, router, server = topology.add_host("client"), topology.add_router("router"), topology.add_host("server")
    topology.link(client, router, "10.88.1.0/24", "fd88:1::/64")
    topology.link(server, router, "10.88.2.0/24", "fd88:2::/64", hosts=(53, 1))
    topology.default_route(client, router)
    topology.default_route(server, router)
    assert udp_reaches(topology, client, server, "10.88.2.53")
    assert udp_reaches(topology, client, server, "fd88:2::53")


def test_link_down_stops_traffic_and_up_restores_it(topology: Topology):
    a, b = topology.add_host("a"), topology.add_host("b")
    topology.link(a, b, "10.88.3.0/24")
    topology.set_link(a, "to-b", up=False)
    with pytest.raises(OSError):  # no route while the link is down
        udp_reaches(topology, a, b, "10.88.3.2")
    topology.set_link(a, "to-b", up=True)
    assert udp_reaches(topology, a, b, "10.88.3.2")


def test_close_removes_every_namespace():
    topo = Topology()
    names = [topo.add_host("a").netns, topo.add_router("r").netns]
    topo.close()
    assert not any(Path(f"/run/netns/{name}").exists() for name in names)
    assert not set(names) & set(procs.live_namespaces())


def test_bad_names_are_refused_before_anything_is_made(topology: Topology):
    with pytest.raises(procs.HarnessError, match="too long"):
        topology.add_host("a-name-far-too-long")
    assert topology.hosts == {}
    topology.add_host("a")
    with pytest.raises(procs.HarnessError, match="already exists"):
        topology.add_host("a")
