"""Userspace ESP for DNS, sans-I/O: Child SA events in, ESP packets opened into DNS queries, answers sealed back.

With `apply.mode = "userspace"` no kernel holds an SA: ESP ends here, inside the enclave, and the host (or the
forwarder in front of the enclave) sees only ESP. `EspDatapath` keeps the Child SAs the IKE core negotiated:

- `apply(event, now)` takes `ChildSaEstablished`, `ChildSaRekeyed` and `SaDeleted` (ESP). A Child SA and the
  ones that rekey it form one *flow*. Rekey hand-over loses nothing: the new inbound SA works at once, the old one
  until its own `SaDeleted`; answers go out on the old outbound SA until the peer sends on the new pair (proof
  that it installed it) or the old pair is deleted (RFC 7296 2.8 leaves the moment to the implementation).
- `receive(packet, source, now)` opens an ESP packet (a UDP port-4500 datagram without the non-ESP marker,
  RFC 3948) into a `DnsQuery`, or drops it: every drop is counted by reason in `drops` and nothing about a dropped
  packet is ever answered. Only UDP between the addresses and ports of the Child SA's traffic selectors gets
  through. In tunnel mode the inner packet is an IP packet (RFC 4303 3.1.2: IPv4 or IPv6, unfragmented, no IPv6
  extension headers); in transport mode it is the UDP datagram itself, between the SA's own addresses.
- `answer(query, payload, now)` seals the resolver's answer into an ESP packet to the client, or None when the
  query's flow is gone.

Nothing here reads the clock or touches a socket.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from .esp import (
    Direction,
    EspError,
    EspSaParams,
    InboundSa,
    Lifetime,
    OutboundSa,
    Truncated,
)
from .ikev2.config import IP_PROTO_UDP, Endpoint, Mode
from .ikev2.constants import ProtocolId
from .ikev2.crypto import RandomSource
from .ikev2.events import ChildSaEstablished, ChildSaRekeyed, Event, SaDeleted
from .ikev2.payloads import Address, TrafficSelector

NEXT_HEADER_NONE = 59  # RFC 4303 2.6: a dummy packet, discarded
UDP_HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum


@dataclass(frozen=True)
class DnsQuery:
    """A DNS query that arrived inside ESP: what to ask the resolver, and where its answer goes."""

    flow: int
    peer: Endpoint  # where the ESP packet came from: the answer goes back there
    local: Endpoint
    client: Address  # the query's own source and destination (the inner packet's, in tunnel mode)
    server: Address
    client_port: int
    server_port: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Outgoing:
    """An ESP packet for the client, to send from `local` to `peer` on UDP (port 4500)."""

    packet: bytes = field(repr=False)
    peer: Endpoint
    local: Endpoint


@dataclass
class _Flow:
    number: int
    mode: Mode
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local_address: Address
    inbound: dict[int, InboundSa]
    outbound: OutboundSa
    pending: tuple[int, OutboundSa] | None = None  # a rekey's (new inbound SPI, new outbound SA), not yet in use


def _spi(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _allows(selectors: tuple[TrafficSelector, ...], address: Address, protocol: int, port: int) -> bool:
    return any(ts.protocol in (0, protocol) and ts.start_port <= port <= ts.end_port
               and ts.start_address.version == address.version
               and int(ts.start_address) <= int(address) <= int(ts.end_address)
               for ts in selectors)


IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # version+IHL, TOS, total length, ID, flags+offset, TTL, protocol ...
IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version+class+label, payload length, next header, hop limit, addresses
IP_IN_ESP = {4: 4, 6: 41}  # RFC 4303's next header for a tunnelled IPv4 / IPv6 packet
DONT_FRAGMENT = 0x4000
TTL = 64


class _Refused(Exception):
    """An inner packet that is not one DNS datagram this SA may carry; the reason is a drop counter's name."""


def parse_ip(packet: bytes) -> tuple[Address, Address, int, bytes]:
    """(source, destination, protocol, payload) of an unfragmented IPv4 or IPv6 packet; `_Refused` otherwise."""
    if not packet:
        raise _Refused("short IP packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER.size:
            raise _Refused("short IP packet")
        first, _, total, _, fragment, _, protocol, _, src, dst = IPV4_HEADER.unpack_from(packet)
        header = (first & 0x0F) * 4
        if header < IPV4_HEADER.size or total != len(packet) or total < header:
            raise _Refused("IP length")
        if fragment & 0x3FFF:  # more fragments, or an offset: DNS over UDP here is one whole datagram
            raise _Refused("IP fragment")
        return IPv4Address(src), IPv4Address(dst), protocol, packet[header:]
    if version == 6:
        if len(packet) < IPV6_HEADER.size:
            raise _Refused("short IP packet")
        _, length, next_header, _, src, dst = IPV6_HEADER.unpack_from(packet)
        if length != len(packet) - IPV6_HEADER.size:
            raise _Refused("IP length")
        return IPv6Address(src), IPv6Address(dst), next_header, packet[IPV6_HEADER.size:]
    raise _Refused(f"IP version {version}")


def ip_packet(source: Address, destination: Address, protocol: int, payload: bytes) -> bytes:
    """An IPv4 (don't fragment, ID 0: RFC 6864) or IPv6 header for `payload`, and the payload."""
    if isinstance(source, IPv4Address):
        total = IPV4_HEADER.size + len(payload)
        header = IPV4_HEADER.pack(0x45, 0, total, 0, DONT_FRAGMENT, TTL, protocol, 0, source.packed,
                                  destination.packed)
        return header[:10] + _checksum(header).to_bytes(2, "big") + header[12:] + payload
    return IPV6_HEADER.pack(6 << 28, len(payload), protocol, TTL, source.packed, destination.packed) + payload


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_datagram(source: Address, destination: Address, source_port: int, destination_port: int,
                 payload: bytes) -> bytes:
    """A UDP header and payload with its checksum over the pseudo-header of `source` and `destination`."""
    length = UDP_HEADER.size + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"a UDP payload of {len(payload)} octets does not fit a datagram")
    if isinstance(source, IPv4Address):
        pseudo = source.packed + destination.packed + struct.pack("!BBH", 0, IP_PROTO_UDP, length)
    else:
        pseudo = source.packed + destination.packed + struct.pack("!I3xB", length, IP_PROTO_UDP)
    header = UDP_HEADER.pack(source_port, destination_port, length, 0)
    checksum = _checksum(pseudo + header + payload) or 0xFFFF  # 0 means "no checksum" (RFC 768)
    return UDP_HEADER.pack(source_port, destination_port, length, checksum) + payload


class EspDatapath:
    """The Child SAs of userspace ESP; see the module's docstring."""

    def __init__(self, lifetime: Lifetime | None = None, random: RandomSource = os.urandom) -> None:
        self.lifetime = lifetime or Lifetime()
        self._random = random
        self._flows: dict[int, _Flow] = {}
        self._by_spi: dict[int, _Flow] = {}
        self._numbers = itertools.count(1)
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        """How many flows (Child SAs, counting a rekeyed one and its successor once)."""
        return len(self._flows)

    def inbound_spis(self) -> set[int]:
        return set(self._by_spi)

    # --- Child SAs from the IKE core ---

    def apply(self, event: Event, now: float) -> None:
        """Install or remove what one event says; other events change nothing. Raises `EspError` (a suite or key
        userspace ESP cannot use) with nothing installed."""
        if isinstance(event, ChildSaEstablished):
            inbound, outbound = self._pair(event, now)
            flow = _Flow(next(self._numbers), event.mode, event.local_ts, event.remote_ts, event.local.address,
                         {inbound.params.spi: inbound}, outbound)
            self._flows[flow.number] = flow
            self._by_spi[inbound.params.spi] = flow
        elif isinstance(event, ChildSaRekeyed):
            old = self._by_spi.get(_spi(event.old_spi_in))
            if old is None:  # the old one was never ours (or is gone): the new one is a flow of its own
                self.apply(event.new, now)
                return
            inbound, outbound = self._pair(event.new, now)
            old.inbound[inbound.params.spi] = inbound
            old.pending = (inbound.params.spi, outbound)
            self._by_spi[inbound.params.spi] = old
        elif isinstance(event, SaDeleted) and event.protocol == ProtocolId.ESP:
            self._delete(_spi(event.spi_in), _spi(event.spi_out))

    def _pair(self, event: ChildSaEstablished, now: float) -> tuple[InboundSa, OutboundSa]:
        keys = event.keys
        inbound = InboundSa(EspSaParams(_spi(event.spi_in), Direction.INBOUND, event.suite, keys.encr_in,
                                        keys.integ_in, self.lifetime), now)
        outbound = OutboundSa(EspSaParams(_spi(event.spi_out), Direction.OUTBOUND, event.suite, keys.encr_out,
                                          keys.integ_out, self.lifetime), now, self._random)
        return inbound, outbound

    def _delete(self, spi_in: int, spi_out: int) -> None:
        flow = self._by_spi.pop(spi_in, None)
        if flow is None:
            return
        del flow.inbound[spi_in]
        if flow.pending is not None and flow.pending[0] == spi_in:  # the rekey's own pair went first
            flow.pending = None
        elif flow.outbound.params.spi == spi_out and flow.pending is not None:
            flow.outbound, flow.pending = flow.pending[1], None  # the old pair is gone: the new one takes over
        if not flow.inbound:
            del self._flows[flow.number]

    # --- packets ---

    def receive(self, packet: bytes, source: Endpoint, local: Endpoint, now: float) -> DnsQuery | None:
        """The DNS query in an ESP packet, or None: dropped (counted in `drops`) or a dummy packet."""
        try:
            if len(packet) < 8:
                raise Truncated(f"{len(packet)} octets: no ESP header")
            flow = self._by_spi.get(_spi(packet[:4]))
            if flow is None:
                self.drops["unknown SPI"] += 1
                return None
            sa = flow.inbound[_spi(packet[:4])]
            inner, next_header = sa.open(packet, now)
        except EspError as exc:
            self.drops[exc.reason] += 1
            return None
        self.counts["ESP packets in"] += 1
        self.counts["ESP octets in"] += len(packet)
        if flow.pending is not None and flow.pending[0] == sa.params.spi:  # the peer uses the new pair: so do we
            flow.outbound, flow.pending = flow.pending[1], None
        if next_header == NEXT_HEADER_NONE:
            self.counts["dummy packets"] += 1
            return None
        try:
            return self._query(flow, next_header, inner, source, local)
        except _Refused as refused:
            self.drops[str(refused)] += 1
            return None

    def _query(self, flow: _Flow, next_header: int, inner: bytes, source: Endpoint, local: Endpoint) -> DnsQuery:
        if flow.mode is Mode.TUNNEL:
            if next_header not in IP_IN_ESP.values():
                raise _Refused(f"next header {next_header}")
            client, server, protocol, segment = parse_ip(inner)
            if IP_IN_ESP[client.version] != next_header:
                raise _Refused(f"next header {next_header}")
        else:
            client, server = self._client_address(flow, source), flow.local_address
            protocol, segment = next_header, inner
        if protocol != IP_PROTO_UDP:
            raise _Refused(f"protocol {protocol}")
        if len(segment) < UDP_HEADER.size:
            raise _Refused("short UDP")
        client_port, server_port, length, _ = UDP_HEADER.unpack_from(segment)
        if length != len(segment):  # one datagram, exactly
            raise _Refused("UDP length")
        if not (_allows(flow.local_ts, server, IP_PROTO_UDP, server_port)
                and _allows(flow.remote_ts, client, IP_PROTO_UDP, client_port)):
            raise _Refused("outside the traffic selectors")
        return DnsQuery(flow.number, source, local, client, server, client_port, server_port,
                        segment[UDP_HEADER.size:])

    def answer(self, query: DnsQuery, payload: bytes, now: float) -> Outgoing | None:
        """The resolver's answer to `query`, sealed for its client; None when its Child SA is gone meanwhile (or
        its outbound SA refuses: counted in `drops`)."""
        flow = self._flows.get(query.flow)
        if flow is None:
            self.drops["answer after its SA was deleted"] += 1
            return None
        datagram = udp_datagram(query.server, query.client, query.server_port, query.client_port, payload)
        try:
            if flow.mode is Mode.TUNNEL:
                packet = flow.outbound.seal(ip_packet(query.server, query.client, IP_PROTO_UDP, datagram),
                                            IP_IN_ESP[query.client.version], now)
            else:
                packet = flow.outbound.seal(datagram, IP_PROTO_UDP, now)
        except EspError as exc:
            self.drops[exc.reason] += 1
            return None
        self.counts["ESP packets out"] += 1
        self.counts["ESP octets out"] += len(packet)
        return Outgoing(packet, query.peer, query.local)

    @staticmethod
    def _client_address(flow: _Flow, peer: Endpoint) -> Address:
        """The client's own address, for the UDP checksum: its traffic selector's when that is one address (behind
        a NAT it differs from the packet's source), else where the packet came from."""
        for ts in flow.remote_ts:
            if ts.start_address == ts.end_address and ts.start_address.version == flow.local_address.version:
                return ts.start_address
        return peer.address
