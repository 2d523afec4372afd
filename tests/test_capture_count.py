"""The leak counter: which packets count as plaintext DNS, ESP, or neither, per peer and direction."""

from ipaddress import ip_address

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ikectl.wire import classify, count_wire

CLIENT, RESOLVER = "10.0.0.1", "10.0.0.53"


def wire(pkt):
    """What tcpdump would give back: the packet re-read from its bytes."""
    return Ether(bytes(Ether() / pkt))


def test_udp_and_tcp_port_53_count_as_plaintext_by_direction():
    packets = [
        wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40000, dport=53) / Raw(b"q")),
        wire(IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40000) / Raw(b"a")),
        wire(IP(src=CLIENT, dst=RESOLVER) / TCP(sport=40001, dport=53, flags="S")),
    ]
    counts = count_wire(packets, [CLIENT]).peer(RESOLVER)
    assert (counts.udp53_out, counts.udp53_in, counts.tcp53_out, counts.tcp53_in) == (1, 1, 1, 0)
    assert counts.plaintext_dns == 3
    assert counts.esp == 0


def test_esp_is_not_plaintext():
    packets = [
        wire(IP(src=CLIENT, dst=RESOLVER, proto=50) / Raw(b"\x00\x00\x10\x00" + b"x" * 60)),
        wire(IP(src=RESOLVER, dst=CLIENT, proto=50) / Raw(b"\x00\x00\x10\x01" + b"x" * 60)),
        # ESP in UDP (RFC 3948): no non-ESP marker
        wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x10\x02" + b"x" * 60)),
    ]
    counts = count_wire(packets, [CLIENT]).peer(RESOLVER)
    assert (counts.esp_out, counts.esp_in, counts.plaintext_dns) == (2, 1, 0)


def test_ike_on_4500_and_keepalives_are_neither():
    ike = wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0" + b"ike" * 20))
    keepalive = wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=4500, dport=4500) / Raw(b"\xff"))
    ike500 = wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=500, dport=500) / Raw(b"ike" * 20))
    assert [classify(p[IP]) for p in (ike, keepalive, ike500)] == [None, None, None]


def test_icmp_errors_quoting_a_query_count_as_plaintext():
    quoted = IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40000, dport=53) / Raw(b"query")
    packets = [
        wire(IP(src=RESOLVER, dst=CLIENT) / ICMP(type=3, code=3) / quoted),
        wire(IPv6(src="fd00::53", dst="fd00::1") / ICMPv6DestUnreach(code=4)
             / IPv6(src="fd00::1", dst="fd00::53") / UDP(sport=40000, dport=53)),
    ]
    result = count_wire(packets, [CLIENT, "fd00::1"])
    assert result.peer(RESOLVER).icmp53_in == 1
    assert result.peer("fd00::53").icmp53_in == 1
    assert result.plaintext_dns == 2


def test_icmp_quoting_other_ports_is_not_dns():
    quoted = IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40000, dport=500)
    assert classify(wire(IP(src=RESOLVER, dst=CLIENT) / ICMP(type=3, code=3) / quoted)[IP]) is None


def test_ipv6_dns_is_counted_per_peer():
    packets = [wire(IPv6(src="fd00::1", dst="fd00::53") / UDP(sport=1000, dport=53)),
               wire(IPv6(src="fd00::1", dst="fd00::54") / TCP(sport=1000, dport=53))]
    result = count_wire(packets, ["fd00::1"])
    assert result.peer("fd00::53").udp53_out == 1
    assert result.peer("fd00::54").tcp53_out == 1
    assert set(result.peers) == {ip_address("fd00::53"), ip_address("fd00::54")}


def test_packets_not_involving_the_subject_are_set_aside():
    other = wire(IP(src="10.9.9.9", dst=RESOLVER) / UDP(sport=1, dport=53))
    result = count_wire([other], [CLIENT])
    assert result.plaintext_dns == 0
    assert result.unrelated == 1


def test_other_ports_and_non_ip_are_ignored():
    packets = [wire(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=1000, dport=5353)), Ether() / Raw(b"arp?")]
    assert count_wire(packets, [CLIENT]).plaintext_dns == 0


def test_a_peer_never_seen_reads_as_zero():
    counts = count_wire([], [CLIENT]).peer("192.0.2.1")
    assert counts.plaintext_dns == 0 and counts.esp == 0
