"""The capture can fail: DNS sent with no IPsec at all is counted as plaintext, by the same code the
leak checks use, in each direction, for UDP and TCP, IPv4 and IPv6."""

import time

import pytest

from netns_tests.harness.dnsclient import query
from netns_tests.harness.topology import Topology

pytestmark = pytest.mark.host  # the capture counts plaintext; no ESP involved


def test_dns_without_ipsec_is_counted_as_a_leak(topology: Topology, unbound, capture):
    client, router, resolver = topology.add_host("client"), topology.add_router("router"), topology.add_host("dns")
    topology.link(client, router, "10.88.1.0/24", "fd88:1::/64")
    topology.link(resolver, router, "10.88.2.0/24", "fd88:2::/64", hosts=(53, 1))
    topology.default_route(client, router)
    topology.default_route(resolver, router)
    unbound(resolver)
    wire = capture(router, "to-client")

    answers = [query(topology, client, "10.88.2.53"), query(topology, client, "10.88.2.53", tcp=True),
               query(topology, client, "fd88:2::53")]
    assert all(a.answered for a in answers), answers
    time.sleep(0.2)
    wire.stop()

    count = wire.count(client.addresses())
    v4, v6 = count.peer("10.88.2.53"), count.peer("fd88:2::53")
    assert (v4.udp53_out, v4.udp53_in) == (1, 1)
    assert v4.tcp53_out >= 3 and v4.tcp53_in >= 3  # handshake, query, answer, close
    assert (v6.udp53_out, v6.udp53_in) == (1, 1)
    assert count.plaintext_dns == v4.plaintext_dns + v6.plaintext_dns > 0
    assert v4.esp == 0


def test_a_quiet_wire_counts_nothing(topology: Topology, capture):
    client, router = topology.add_host("client"), topology.add_router("router")
    topology.link(client, router, "10.88.1.0/24")
    wire = capture(router, "to-client")
    wire.stop()
    assert wire.count(client.addresses()).plaintext_dns == 0
