"""Counting what crossed a wire: ESP packets and plaintext DNS, per peer and by direction.

Plaintext DNS is UDP or TCP with port 53 at either end, and ICMP errors that quote such a packet (they
carry the query). Packets are scapy's, read from a pcap. `ikectl verify` counts its own capture with
this, and so do the project's tests.

Where the capture runs on an IPsec endpoint, tcpdump also sees the decrypted inbound packets of
tunnel-mode SAs: count only the outbound direction there (`plaintext_dns_out`), or capture on a wire
that neither encrypts nor decrypts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address

from scapy.layers.inet import IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPerror6, IPv6
from scapy.packet import Packet

DNS_PORT = 53
IKE_NATT_PORT = 4500
IPPROTO_ESP = 50

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class PeerCounts:
    """What crossed the wire between the subject host and one peer. `out` is from the subject."""

    peer: Address
    esp_out: int = 0
    esp_in: int = 0
    udp53_out: int = 0
    udp53_in: int = 0
    tcp53_out: int = 0
    tcp53_in: int = 0
    icmp53_out: int = 0  # ICMP errors quoting a port-53 packet
    icmp53_in: int = 0

    @property
    def plaintext_dns_out(self) -> int:
        return self.udp53_out + self.tcp53_out + self.icmp53_out

    @property
    def plaintext_dns_in(self) -> int:
        return self.udp53_in + self.tcp53_in + self.icmp53_in

    @property
    def plaintext_dns(self) -> int:
        return self.plaintext_dns_out + self.plaintext_dns_in

    @property
    def esp(self) -> int:
        return self.esp_out + self.esp_in


@dataclass(frozen=True)
class WireCount:
    subject: frozenset[Address]
    peers: Mapping[Address, PeerCounts] = field(default_factory=dict)
    unrelated: int = 0  # packets that neither came from nor went to the subject

    def peer(self, address: Address | str) -> PeerCounts:
        addr = ip_address(address)
        return self.peers.get(addr, PeerCounts(peer=addr))

    @property
    def plaintext_dns(self) -> int:
        return sum(p.plaintext_dns for p in self.peers.values())


def _ip_layer(pkt: Packet) -> Packet | None:
    for layer in (IP, IPv6):
        if pkt.haslayer(layer):
            return pkt.getlayer(layer)
    return None


def _is_esp(ip: Packet) -> bool:
    proto = ip.proto if ip.version == 4 else ip.nh
    if proto == IPPROTO_ESP:
        return True
    if ip.haslayer(UDP):
        udp = ip[UDP]
        payload = bytes(udp.payload)
        # RFC 3948: ESP in UDP/4500 unless the non-ESP marker (4 zero bytes) or a 1-byte keepalive.
        return IKE_NATT_PORT in (udp.sport, udp.dport) and len(payload) > 4 and payload[:4] != b"\0\0\0\0"
    return False


def _quoted_dns(ip: Packet) -> bool:
    """An ICMP or ICMPv6 error (scapy's IPerror layers exist only inside those) quoting port-53 UDP or TCP."""
    if not (ip.haslayer(IPerror) or ip.haslayer(IPerror6)):
        return False
    return any(ip.haslayer(layer) and DNS_PORT in (ip[layer].sport, ip[layer].dport)
               for layer in (UDPerror, TCPerror))


def classify(ip: Packet) -> str | None:
    """'esp', 'udp53', 'tcp53', 'icmp53', or None for anything else (IKE, ARP, other ports)."""
    if _is_esp(ip):
        return "esp"
    if ip.haslayer(IPerror) or ip.haslayer(IPerror6):
        return "icmp53" if _quoted_dns(ip) else None
    for layer, name in ((UDP, "udp53"), (TCP, "tcp53")):
        if ip.haslayer(layer) and DNS_PORT in (ip[layer].sport, ip[layer].dport):
            return name
    return None


def count_wire(packets: Iterable[Packet], subject: Iterable[Address | str]) -> WireCount:
    """Count ESP and plaintext DNS per peer of `subject` (the addresses of one host), by direction."""
    me = frozenset(ip_address(a) for a in subject)
    peers: dict[Address, PeerCounts] = {}
    unrelated = 0
    for pkt in packets:
        ip = _ip_layer(pkt)
        if ip is None:
            continue
        src, dst = ip_address(ip.src), ip_address(ip.dst)
        if src in me:
            direction, peer = "out", dst
        elif dst in me:
            direction, peer = "in", src
        else:
            unrelated += 1
            continue
        kind = classify(ip)
        if kind is None:
            continue
        counts = peers.get(peer, PeerCounts(peer=peer))
        key = f"{kind}_{direction}"
        peers[peer] = replace(counts, **{key: getattr(counts, key) + 1})
    return WireCount(subject=me, peers=peers, unrelated=unrelated)
