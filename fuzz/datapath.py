"""Fuzz target for userspace ESP's datapath (enclave_ike/datapath.py, inet.py, tcp.py): what an authenticated but
hostile client can put inside its ESP, and what anyone can send to port 4500.

    python -m fuzz.datapath --inputs 1000000 --seed 1

One world: a tunnel-mode Child SA for udp and tcp port 53 and the client's mirror of it. Each input, drawn from its
own `random.Random(seed, index)`, is one of:

- an authentic ESP packet (sealed with the client's SA) whose inner packet is a mutated IPv4 or IPv6 UDP or TCP
  packet, or random bytes, under a random or a plausible next header;
- a well-formed TCP segment with any flags, sequence and acknowledgement numbers, window and payload (including
  DNS length prefixes), on one of a few client ports, so connections open, carry queries and close;
- an answer to a query still waiting (or a lost one), or time moving on (TCP's timers);
- a mutated or random datagram as it arrives on port 4500.

Properties: nothing but counted drops comes out of a bad input (any exception stops the run), every packet the
datapath sends opens with the client's SA into an IP packet whose checksums (IPv4 header, UDP, TCP) verify, and the
number of TCP connections stays within its limit. Progress every `--progress` inputs; the summary last.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from enclave_ike.datapath import MAX_TCP_CONNECTIONS, DnsQuery, EspDatapath
from enclave_ike.esp import Direction, EspSaParams, InboundSa, OutboundSa
from enclave_ike.ikev2.config import Endpoint, Mode
from enclave_ike.ikev2.constants import EncrId, ProtocolId
from enclave_ike.ikev2.crypto import ChildSuite
from enclave_ike.ikev2.events import ChildSaEstablished, ChildSaKeys
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.inet import (
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    internet_checksum,
    ip_packet,
    parse_ip,
    pseudo_header,
    udp_datagram,
)
from enclave_ike.tcp import Segment

from . import driver
from .generators import mutate

NOW = 1000.0
CLIENT, RESOLVER = ip_address("10.0.0.7"), ip_address("192.0.2.53")
CLIENT6, RESOLVER6 = ip_address("2001:db8::7"), ip_address("2001:db8::53")
SOURCE, LOCAL = Endpoint(ip_address("198.51.100.9"), 4500), Endpoint(RESOLVER, 4500)
PORTS = (40001, 40002, 40003)
QUERY = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
KINDS = ("inner", "tcp", "answer", "time", "outer")


class Violation(Exception):
    """A property that does not hold."""


@dataclass
class Input:
    kind: str
    data: bytes = b""  # the inner packet (inner, tcp) or the datagram (outer)
    next_header: int = 0
    number: int = 0  # answer: which waiting query; time: seconds to move on


class Fuzzer:
    def __init__(self) -> None:
        suite = ChildSuite(EncrId.ENCR_AES_GCM_16, 256)
        keys = ChildSaKeys(os.urandom(36), b"", os.urandom(36), b"")
        event = ChildSaEstablished(
            b"I" * 8, b"R" * 8, (0x1001).to_bytes(4, "big"), (0x2001).to_bytes(4, "big"), ProtocolId.ESP,
            Mode.TUNNEL, suite,
            (TrafficSelector(RESOLVER, RESOLVER, 0, 53, 53), TrafficSelector(RESOLVER6, RESOLVER6, 0, 53, 53)),
            (TrafficSelector(CLIENT, CLIENT, 0, 0, 65535), TrafficSelector(CLIENT6, CLIENT6, 0, 0, 65535)),
            Endpoint(RESOLVER, 500), SOURCE, True, keys)
        self.path = EspDatapath()
        self.path.apply(event, NOW)
        self.out = OutboundSa(EspSaParams(0x1001, Direction.OUTBOUND, suite, keys.encr_in), NOW)
        self.into = InboundSa(EspSaParams(0x2001, Direction.INBOUND, suite, keys.encr_out, b"", replay_window=1024),
                              NOW)
        self.now = NOW
        self.waiting: list[DnsQuery] = []
        self.kinds: Counter[str] = Counter()
        self.typed: Counter[str] = self.path.drops  # the datapath's own drop counters
        self.stats: Counter[str] = Counter()

    # --- inputs ---

    def draw(self, rng: random.Random) -> Input:
        kind = rng.choices(KINDS, weights=(40, 35, 10, 5, 10))[0]
        if kind == "inner":
            return Input(kind, *self._inner(rng))
        if kind == "tcp":
            return Input(kind, self._segment(rng), 4)
        if kind == "answer":
            return Input(kind, number=rng.randrange(8))
        if kind == "time":
            return Input(kind, number=rng.choice((0, 1, 2, 5, 31, 120)))
        datagram = rng.randbytes(rng.randrange(64)) if rng.random() < 0.3 else \
            mutate(rng, self._sealed(udp_packet(rng), 4), ike_header=False)
        return Input(kind, datagram)

    def _inner(self, rng: random.Random) -> tuple[bytes, int]:
        six = rng.random() < 0.3
        base = udp_packet(rng, six) if rng.random() < 0.5 else tcp_packet(rng, six)
        data = rng.randbytes(rng.randrange(80)) if rng.random() < 0.1 else mutate(rng, base, ike_header=False)
        next_header = rng.choice((4, 41, 17, 6, 59, rng.randrange(256))) if rng.random() < 0.3 else (41 if six else 4)
        return data, next_header

    @staticmethod
    def _segment(rng: random.Random) -> bytes:
        flags = rng.choice((0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12, 0x19, rng.randrange(64)))
        payload = rng.choice((b"", QUERY[:rng.randrange(len(QUERY))], struct.pack("!H", len(QUERY)) + QUERY,
                              rng.randbytes(rng.randrange(40)), b"\x00\x00" * rng.randrange(4)))
        segment = Segment(rng.choice(PORTS), 53, rng.randrange(1 << 32) if rng.random() < 0.5 else rng.randrange(8),
                          rng.randrange(1 << 32), flags, rng.choice((0, 1, 536, 65535)), payload,
                          rng.choice((None, 1460, 0)))
        return ip_packet(CLIENT, RESOLVER, IP_PROTO_TCP, segment.encode(CLIENT, RESOLVER))

    def _sealed(self, inner: bytes, next_header: int) -> bytes:
        return self.out.seal(inner, next_header, self.now)

    # --- one input ---

    def apply(self, item: Input) -> None:
        self.kinds[item.kind] += 1
        path = self.path
        if item.kind in ("inner", "tcp"):
            self.waiting += path.receive(self._sealed(item.data, item.next_header), SOURCE, LOCAL, self.now)
        elif item.kind == "outer":
            self.waiting += path.receive(item.data, SOURCE, LOCAL, self.now)
        elif item.kind == "answer" and self.waiting:
            query = self.waiting.pop(item.number % len(self.waiting))
            path.answer(query, None if item.number == 0 else QUERY[:2] + b"\x81\x80" + QUERY[4:], self.now)
        elif item.kind == "time":
            self.now += item.number
            path.handle_timer(self.now)
        self.waiting = self.waiting[-64:]
        for outgoing in path.take_outgoing():
            self._check(outgoing.packet)
        if path.tcp_connections > MAX_TCP_CONNECTIONS:
            raise Violation(f"{path.tcp_connections} TCP connections, the limit is {MAX_TCP_CONNECTIONS}")

    def _check(self, packet: bytes) -> None:
        """What the datapath sends: an authentic ESP packet holding an IP packet whose checksums verify."""
        inner, next_header = self.into.open(packet, self.now)
        source, destination, protocol, segment = parse_ip(inner)
        if next_header == 4 and internet_checksum(inner[:20]) != 0:
            raise Violation("an IPv4 header checksum that does not verify")
        if (source, destination) not in ((RESOLVER, CLIENT), (RESOLVER6, CLIENT6)):
            raise Violation(f"a packet from {source} to {destination}")
        if internet_checksum(pseudo_header(source, destination, protocol, len(segment)) + segment) != 0:
            raise Violation(f"a protocol-{protocol} checksum that does not verify")
        self.stats[f"sent protocol {protocol}"] += 1


def udp_packet(rng: random.Random, six: bool = False) -> bytes:
    client, server = (CLIENT6, RESOLVER6) if six else (CLIENT, RESOLVER)
    return ip_packet(client, server, IP_PROTO_UDP, udp_datagram(client, server, rng.choice(PORTS), 53, QUERY))


def tcp_packet(rng: random.Random, six: bool = False) -> bytes:
    client, server = (CLIENT6, RESOLVER6) if six else (CLIENT, RESOLVER)
    segment = Segment(rng.choice(PORTS), 53, rng.randrange(1 << 32), 0, 0x02, 65535, b"", 1460)
    return ip_packet(client, server, IP_PROTO_TCP, segment.encode(client, server))


def _load(record: dict[str, Any]) -> Input:
    return Input(record["kind"], bytes.fromhex(record["data"]), record["next_header"], record["number"])


TARGET: driver.Target[Input, Fuzzer] = driver.Target(
    name="datapath",
    description=__doc__.split("\n\n")[0],
    fuzzer=Fuzzer,
    describe=lambda item: item.kind,
    to_json=lambda item: {"kind": item.kind, "data": item.data.hex(), "next_header": item.next_header,
                          "number": item.number},
    from_json=_load,
    progress=lambda fuzzer: f"dropped {sum(fuzzer.typed.values())}  sent {sum(fuzzer.stats.values())}",
    totals=lambda fuzzer: f"dropped {sum(fuzzer.typed.values())}, {dict(fuzzer.stats)}",
    typed=("dropped by reason", "dropped"),
)


def main(argv: list[str] | None = None) -> int:
    return driver.main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())

