"""IP, UDP and TCP headers as userspace ESP needs them, and the Internet checksum (RFC 1071), sans-I/O.

`parse_ip` takes one unfragmented IPv4 or IPv6 packet apart (no IPv6 extension headers: DNS has no use for them);
`ip_packet` puts a header in front of a payload (IPv4 with don't-fragment and ID 0, RFC 6864); `udp_datagram` and
`pseudo_header` give UDP and TCP their checksums. A packet these cannot take is an `InetRefused` whose text names
a drop counter.
"""

from __future__ import annotations

import functools
import struct
from ipaddress import IPv4Address, IPv6Address

from .ikev2.payloads import Address

IP_PROTO_TCP, IP_PROTO_UDP = 6, 17
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # version+IHL, TOS, total length, ID, flags+offset, TTL, protocol ...
IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version+class+label, payload length, next header, hop limit, addresses
UDP_HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum
DONT_FRAGMENT = 0x4000
TTL = 64


class InetRefused(Exception):
    """A packet that is not what userspace ESP carries; the text names the drop counter."""


def internet_checksum(data: bytes) -> int:
    """RFC 1071's one's complement sum, complemented. The data read as one big-endian number is the sum of its
    16-bit words times powers of 2**16, and 2**16 is 1 modulo 0xFFFF, so that number modulo 0xFFFF is their one's
    complement sum (end-around carries included), where a nonzero multiple of 0xFFFF sums to 0xFFFF, not 0."""
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF or (0xFFFF if value else 0)
    return ~total & 0xFFFF


def pseudo_header(source: Address, destination: Address, protocol: int, length: int) -> bytes:
    """What the UDP and TCP checksums cover besides the segment (RFC 768, RFC 9293 3.1, RFC 8200 8.1)."""
    if isinstance(source, IPv4Address):
        return source.packed + destination.packed + struct.pack("!BBH", 0, protocol, length)
    return source.packed + destination.packed + struct.pack("!I3xB", length, protocol)


def udp_datagram(source: Address, destination: Address, source_port: int, destination_port: int,
                 payload: bytes) -> bytes:
    """A UDP header and payload with its checksum."""
    length = UDP_HEADER.size + len(payload)
    if length > 0xFFFF:
        raise InetRefused("UDP payload too long")
    header = UDP_HEADER.pack(source_port, destination_port, length, 0)
    checksum = internet_checksum(pseudo_header(source, destination, IP_PROTO_UDP, length) + header + payload)
    return UDP_HEADER.pack(source_port, destination_port, length, checksum or 0xFFFF) + payload  # 0: no checksum


def parse_udp(segment: bytes) -> tuple[int, int, bytes]:
    """(source port, destination port, payload) of exactly one UDP datagram."""
    if len(segment) < UDP_HEADER.size:
        raise InetRefused("short UDP")
    source_port, destination_port, length, _ = UDP_HEADER.unpack_from(segment)
    if length != len(segment):
        raise InetRefused("UDP length")
    return source_port, destination_port, segment[UDP_HEADER.size:]


def parse_ip(packet: bytes) -> tuple[Address, Address, int, bytes]:
    """(source, destination, protocol, payload) of an unfragmented IPv4 or IPv6 packet."""
    if not packet:
        raise InetRefused("short IP packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER.size:
            raise InetRefused("short IP packet")
        first, _, total, _, fragment, _, protocol, _, src, dst = IPV4_HEADER.unpack_from(packet)
        header = (first & 0x0F) * 4
        if header < IPV4_HEADER.size or total != len(packet) or total < header:
            raise InetRefused("IP length")
        if fragment & 0x3FFF:  # more fragments, or an offset: a DNS datagram here is one whole packet
            raise InetRefused("IP fragment")
        return _address(src), _address(dst), protocol, packet[header:]
    if version == 6:
        if len(packet) < IPV6_HEADER.size:
            raise InetRefused("short IP packet")
        _, length, next_header, _, src, dst = IPV6_HEADER.unpack_from(packet)
        if length != len(packet) - IPV6_HEADER.size:
            raise InetRefused("IP length")
        return _address(src), _address(dst), next_header, packet[IPV6_HEADER.size:]
    raise InetRefused("IP version")  # not the number: drop reasons are a closed set of metric labels


@functools.lru_cache(maxsize=1024)
def _address(packed: bytes) -> Address:
    """The address object for 4 or 16 octets; the same few clients send most packets, and making an ipaddress
    object costs more than the rest of parse_ip."""
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)


def ip_packet(source: Address, destination: Address, protocol: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 header for `payload`, and the payload."""
    if isinstance(source, IPv4Address):
        header = IPV4_HEADER.pack(0x45, 0, IPV4_HEADER.size + len(payload), 0, DONT_FRAGMENT, TTL, protocol, 0,
                                  source.packed, destination.packed)
        return header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:] + payload
    return IPV6_HEADER.pack(6 << 28, len(payload), protocol, TTL, source.packed, destination.packed) + payload

