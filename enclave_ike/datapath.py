"""Userspace ESP for DNS, sans-I/O: Child SA events in, ESP packets opened into DNS queries, answers sealed back.

With `apply.mode = "userspace"` no kernel holds an SA: ESP ends here, inside the enclave, and the host (or the
forwarder in front of the enclave) sees only ESP. `EspDatapath` keeps the Child SAs the IKE core negotiated:

- `apply(event, now)` takes `ChildSaEstablished`, `ChildSaRekeyed` and `SaDeleted` (ESP). A Child SA and the
  ones that rekey it form one *flow* of SA pairs. Rekey hand-over loses nothing: the new inbound SA works at once,
  the old one until its own `SaDeleted`; answers go out on the old outbound SA until the peer sends on the new
  pair (proof that it installed it), and whenever the pair in use is deleted they move to the newest pair left
  (the old one again, when the peer deleted the new pair as the loser of a simultaneous rekey, RFC 7296 2.8.1).
- `receive(packet, source, local, now)` opens an ESP packet (a UDP port-4500 datagram without the non-ESP marker,
  RFC 3948) into the DNS queries it completes, or drops it: every drop is counted by reason in `drops`, and
  nothing about a dropped packet is ever answered. Only UDP and TCP between the addresses and ports of the Child
  SA's traffic selectors get through. In tunnel mode the inner packet is an IP packet (RFC 4303 3.1.2); in
  transport mode it is the UDP datagram or TCP segment itself, between the SA's own addresses.
- TCP (DNS over TCP, RFC 7766) ends here too (`tcp.TcpConnection`, one per client port, kept across rekeys);
  its handshake and acknowledgements, and `handle_timer`'s retransmissions, go to the outbox.
- `answer(query, payload, now)` seals the resolver's answer for the client (None: the resolver gave none).
- `take_outgoing()` hands over the ESP packets to send, each with the endpoints it goes between.

Nothing here reads the clock or touches a socket.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field

from .esp import Direction, EspError, EspSaParams, InboundSa, Lifetime, OutboundSa, Truncated
from .ikev2.config import Endpoint, Mode
from .ikev2.constants import ProtocolId
from .ikev2.crypto import RandomSource
from .ikev2.events import ChildSaEstablished, ChildSaRekeyed, Event, SaDeleted
from .ikev2.payloads import Address, TrafficSelector
from .inet import IP_PROTO_TCP, IP_PROTO_UDP, InetRefused, ip_packet, parse_ip, parse_udp, udp_datagram
from .tcp import SYN, Segment, TcpConnection, reset_for

NEXT_HEADER_NONE = 59  # RFC 4303 2.6: a dummy packet, discarded
IP_IN_ESP = {4: 4, 6: 41}  # RFC 4303's next header for a tunnelled IPv4 / IPv6 packet
_IP_NEXT_HEADERS = frozenset(IP_IN_ESP.values())
MAX_TCP_CONNECTIONS = 4096  # in all; past it a SYN is answered with a reset
MAX_TCP_PER_FLOW = 64


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
    protocol: int = IP_PROTO_UDP
    connection: int = 0  # TCP: the serial of the connection it came on (its answer goes on that one only)


@dataclass(frozen=True)
class Outgoing:
    """An ESP packet for the client, to send from `local` to `peer` on UDP (port 4500)."""

    packet: bytes = field(repr=False)
    peer: Endpoint
    local: Endpoint


# A traffic selector as the numbers every packet is compared with: protocol (0: any), port range, IP version,
# address range.
_Range = tuple[int, int, int, int, int, int]


def _ranges(selectors: tuple[TrafficSelector, ...]) -> tuple[_Range, ...]:
    return tuple((ts.protocol, ts.start_port, ts.end_port, ts.start_address.version, int(ts.start_address),
                  int(ts.end_address)) for ts in selectors)


def _allows(ranges: tuple[_Range, ...], address: Address, protocol: int, port: int) -> bool:
    version, value = address.version, int(address)
    for ts_protocol, low_port, high_port, ts_version, low, high in ranges:
        if (ts_protocol in (0, protocol) and low_port <= port <= high_port and ts_version == version
                and low <= value <= high):
            return True
    return False


@dataclass
class _Flow:
    number: int
    mode: Mode
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local_address: Address
    pairs: dict[int, tuple[InboundSa, OutboundSa]]  # by inbound SPI, oldest first
    current: int  # the inbound SPI of the pair whose outbound SA the answers use
    local_ranges: tuple[_Range, ...] = field(init=False)  # local_ts and remote_ts as _allows compares them
    remote_ranges: tuple[_Range, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.local_ranges, self.remote_ranges = _ranges(self.local_ts), _ranges(self.remote_ts)

    @property
    def outbound(self) -> OutboundSa:
        return self.pairs[self.current][1]


@dataclass
class _Tcp:
    """One TCP connection, and where its segments go."""

    connection: TcpConnection
    serial: int  # told apart from a later connection on the same ports
    flow: int
    client: Address
    server: Address
    peer: Endpoint
    local: Endpoint


_TcpKey = tuple[int, Address, int, int]  # flow, client address, client port, server port


def _spi(value: bytes) -> int:
    return int.from_bytes(value, "big")


class EspDatapath:
    """The Child SAs of userspace ESP; see the module's docstring."""

    def __init__(self, lifetime: Lifetime | None = None, random: RandomSource = os.urandom) -> None:
        self.lifetime = lifetime or Lifetime()
        self._random = random
        self._flows: dict[int, _Flow] = {}
        self._by_spi: dict[int, _Flow] = {}
        self._numbers = itertools.count(1)
        self._tcp: dict[_TcpKey, _Tcp] = {}
        self._serials = itertools.count(1)
        self._outbox: list[Outgoing] = []
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def __len__(self) -> int:
        """How many flows (Child SAs, counting a rekeyed one and its successor once)."""
        return len(self._flows)

    def inbound_spis(self) -> set[int]:
        return set(self._by_spi)

    @property
    def tcp_connections(self) -> int:
        return len(self._tcp)

    def take_outgoing(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    # --- Child SAs from the IKE core ---

    def apply(self, event: Event, now: float) -> None:
        """Install or remove what one event says; other events change nothing. Raises `EspError` (a suite or key
        userspace ESP cannot use) with nothing installed."""
        if isinstance(event, ChildSaEstablished):
            inbound, outbound = self._pair(event, now)
            spi = inbound.params.spi
            flow = _Flow(next(self._numbers), event.mode, event.local_ts, event.remote_ts, event.local.address,
                         {spi: (inbound, outbound)}, spi)
            self._flows[flow.number] = flow
            self._by_spi[spi] = flow
        elif isinstance(event, ChildSaRekeyed):
            old = self._by_spi.get(_spi(event.old_spi_in))
            if old is None:  # the old one was never ours (or is gone): the new one is a flow of its own
                self.apply(event.new, now)
                return
            inbound, outbound = self._pair(event.new, now)
            old.pairs[inbound.params.spi] = (inbound, outbound)  # in use once the peer sends on it
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
        del flow.pairs[spi_in]
        if flow.pairs and flow.current == spi_in:
            flow.current = next(reversed(flow.pairs))  # the newest pair left takes over
        if not flow.pairs:
            del self._flows[flow.number]
            for key in [key for key in self._tcp if key[0] == flow.number]:
                del self._tcp[key]  # nothing can reach their client any more

    # --- packets in ---

    def receive(self, packet: bytes, source: Endpoint, local: Endpoint, now: float) -> list[DnsQuery]:
        """The DNS queries an ESP packet completes: none when it was dropped (counted in `drops`), a dummy, or TCP
        that completed no message."""
        try:
            if len(packet) < 8:
                raise Truncated(f"{len(packet)} octets: no ESP header")
            spi = _spi(packet[:4])
            flow = self._by_spi.get(spi)
            if flow is None:
                self.drops["unknown SPI"] += 1
                return []
            sa = flow.pairs[spi][0]
            inner, next_header = sa.open(packet, now)
        except EspError as exc:
            self.drops[exc.reason] += 1
            return []
        self.counts["ESP packets in"] += 1
        self.counts["ESP octets in"] += len(packet)
        if sa.params.spi != flow.current and sa.params.spi == next(reversed(flow.pairs)):
            flow.current = sa.params.spi  # the peer uses the newest pair: so do we
        if next_header == NEXT_HEADER_NONE:
            self.counts["dummy packets"] += 1
            return []
        try:
            return self._queries(flow, next_header, inner, source, local, now)
        except InetRefused as refused:
            self.drops[str(refused)] += 1
            return []

    def _queries(self, flow: _Flow, next_header: int, inner: bytes, source: Endpoint, local: Endpoint,
                 now: float) -> list[DnsQuery]:
        if flow.mode is Mode.TUNNEL:
            if next_header not in _IP_NEXT_HEADERS:
                raise InetRefused("unexpected next header")
            client, server, protocol, segment = parse_ip(inner)
            if IP_IN_ESP[client.version] != next_header:
                raise InetRefused("unexpected next header")
        else:
            client, server = self._client_address(flow, source), flow.local_address
            protocol, segment = next_header, inner
        if protocol == IP_PROTO_UDP:
            client_port, server_port, payload = parse_udp(segment)
            self._check_selectors(flow, client, server, protocol, client_port, server_port)
            return [DnsQuery(flow.number, source, local, client, server, client_port, server_port, payload)]
        if protocol == IP_PROTO_TCP:
            tcp = Segment.parse(segment)
            self._check_selectors(flow, client, server, protocol, tcp.source_port, tcp.destination_port)
            return self._tcp_segment(flow, client, server, tcp, source, local, now)
        raise InetRefused("neither UDP nor TCP")

    @staticmethod
    def _check_selectors(flow: _Flow, client: Address, server: Address, protocol: int, client_port: int,
                         server_port: int) -> None:
        if not (_allows(flow.local_ranges, server, protocol, server_port)
                and _allows(flow.remote_ranges, client, protocol, client_port)):
            raise InetRefused("outside the traffic selectors")

    def _tcp_segment(self, flow: _Flow, client: Address, server: Address, segment: Segment, source: Endpoint,
                     local: Endpoint, now: float) -> list[DnsQuery]:
        key = (flow.number, client, segment.source_port, segment.destination_port)
        tcp = self._tcp.get(key)
        if tcp is None:
            refused = self._refuse_tcp(flow, segment)
            if refused is not None:
                self.drops[refused] += 1
                reset = reset_for(segment)
                if reset is not None:
                    self._seal_segments(flow, client, server, source, local, [reset], now)
                return []
            tcp = _Tcp(TcpConnection(segment, int.from_bytes(self._random(4), "big"), now), next(self._serials),
                       flow.number, client, server, source, local)
            self._tcp[key] = tcp
            self.counts["TCP connections"] += 1
            messages = []
        else:
            tcp.peer = source  # the answers follow the client's latest authentic packet
            messages = tcp.connection.receive(segment, now)
        self._flush_tcp(key, tcp, now)
        return [DnsQuery(flow.number, source, local, client, server, segment.source_port, segment.destination_port,
                         message, IP_PROTO_TCP, tcp.serial) for message in messages]

    def _refuse_tcp(self, flow: _Flow, segment: Segment) -> str | None:
        """Why a segment for no connection opens none (a reset tells the client), or None: a SYN that may."""
        if segment.flags != SYN:
            return "TCP segment for no connection"
        if len(self._tcp) >= MAX_TCP_CONNECTIONS or \
                sum(key[0] == flow.number for key in self._tcp) >= MAX_TCP_PER_FLOW:
            return "TCP connections past the limit"
        return None

    # --- packets out ---

    def answer(self, query: DnsQuery, payload: bytes | None, now: float) -> None:
        """The resolver's answer to `query` (None: it gave none), sealed for its client into the outbox; dropped
        (counted) when the query's Child SA or connection is gone meanwhile."""
        flow = self._flows.get(query.flow)
        if flow is None:
            self.drops["answer after its SA was deleted"] += 1
            return
        if query.protocol == IP_PROTO_TCP:
            key = (query.flow, query.client, query.client_port, query.server_port)
            tcp = self._tcp.get(key)
            if tcp is None or tcp.serial != query.connection:
                self.drops["answer after its TCP connection closed"] += 1
                return
            tcp.connection.answer(payload, now)
            self._flush_tcp(key, tcp, now)
            return
        if payload is None:
            return
        try:
            datagram = udp_datagram(query.server, query.client, query.server_port, query.client_port, payload)
        except InetRefused as refused:
            self.drops[str(refused)] += 1
            return
        self._seal(flow, query.client, query.server, IP_PROTO_UDP, datagram, query.peer, query.local, now)

    def _flush_tcp(self, key: _TcpKey, tcp: _Tcp, now: float) -> None:
        connection = tcp.connection
        flow = self._flows.get(tcp.flow)
        if flow is not None and connection.outbox:
            self._seal_segments(flow, tcp.client, tcp.server, tcp.peer, tcp.local, list(connection.outbox), now)
        connection.outbox.clear()
        if connection.closed:
            del self._tcp[key]

    def _seal_segments(self, flow: _Flow, client: Address, server: Address, peer: Endpoint, local: Endpoint,
                       segments: list[Segment], now: float) -> None:
        for segment in segments:
            self._seal(flow, client, server, IP_PROTO_TCP, segment.encode(server, client), peer, local, now)

    def _seal(self, flow: _Flow, client: Address, server: Address, protocol: int, segment: bytes, peer: Endpoint,
              local: Endpoint, now: float) -> None:
        try:
            if flow.mode is Mode.TUNNEL:
                packet = flow.outbound.seal(ip_packet(server, client, protocol, segment), IP_IN_ESP[client.version],
                                            now)
            else:
                packet = flow.outbound.seal(segment, protocol, now)
        except EspError as exc:
            self.drops[exc.reason] += 1
            return
        self.counts["ESP packets out"] += 1
        self.counts["ESP octets out"] += len(packet)
        self._outbox.append(Outgoing(packet, peer, local))

    @staticmethod
    def _client_address(flow: _Flow, peer: Endpoint) -> Address:
        """The client's own address, for the UDP checksum: its traffic selector's when that is one address (behind
        a NAT it differs from the packet's source), else where the packet came from."""
        for ts in flow.remote_ts:
            if ts.start_address == ts.end_address and ts.start_address.version == flow.local_address.version:
                return ts.start_address
        return peer.address

    # --- the clock (TCP's retransmissions and idle connections) ---

    def get_timer(self) -> float | None:
        deadlines = [t for tcp in self._tcp.values() if (t := tcp.connection.get_timer()) is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        for key, tcp in list(self._tcp.items()):
            deadline = tcp.connection.get_timer()
            if deadline is not None and deadline <= now:
                tcp.connection.handle_timer(now)
                self._flush_tcp(key, tcp, now)
