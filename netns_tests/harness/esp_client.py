"""A DNS client whose ESP is in userspace: the project's initiator core for IKE, enclave_ike.esp for ESP in UDP.

    python -m netns_tests.harness.esp_client --server 10.88.2.53 --source 10.88.1.2 --queries 20 --rekey-every 8

It needs no kernel SA (so it runs on a host kernel without ESP): IKE_SA_INIT and IKE_AUTH (NULL auth) on port 500
for a udp/53 Child SA in transport mode, then each query goes out as ESP in UDP (RFC 3948) to port 4500 and its
answer must come back the same way. With `--rekey-every K` the Child SA is rekeyed (CREATE_CHILD_SA) after every K
queries, and queries go on on the new SA while the old one is still deleted. One JSON line per milestone:

    {"event": "established", "spi_in": "...", "spi_out": "..."}
    {"event": "answer", "query": 3, "rcode": "NOERROR", "answer": ["10.77.0.80"]}  (or "event": "unanswered")
    {"event": "rekeyed", "spi_in": "...", "spi_out": "..."}

and a last line {"summary": {"answered": N, "unanswered": M, "rekeys": R}}. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from collections.abc import Sequence
from ipaddress import ip_address

import dns.message
import dns.rcode
import dns.rdatatype

from enclave_ike.esp import Direction, EspError, EspSaParams, InboundSa, OutboundSa
from enclave_ike.ikev2.config import IP_PROTO_UDP, Endpoint, InitiatorConfig
from enclave_ike.ikev2.events import ChildSaEstablished, ChildSaRekeyed, Event
from enclave_ike.ikev2.initiator import Initiator
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.inet import udp_datagram

CLIENT_PORT = 35353  # the inner UDP source port of every query


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


class EspDnsClient:
    def __init__(self, source: str, server: str, ike_port: int, natt_port: int) -> None:
        self.source, self.server = ip_address(source), ip_address(server)
        family = socket.AF_INET6 if self.server.version == 6 else socket.AF_INET
        self.ike = socket.socket(family, socket.SOCK_DGRAM)
        self.ike.bind((source, 0))
        self.esp = socket.socket(family, socket.SOCK_DGRAM)
        self.esp.bind((source, 0))
        self.natt = (server, natt_port)
        config = InitiatorConfig(tsi=(TrafficSelector(self.source, self.source, IP_PROTO_UDP),),
                                 tsr=(TrafficSelector(self.server, self.server, IP_PROTO_UDP, 53, 53),),
                                 initial_contact=False)
        self.initiator = Initiator(config, local=Endpoint(self.source, self.ike.getsockname()[1]),
                                   peer=Endpoint(self.server, ike_port), random=os.urandom, now=time.monotonic())
        self.outbound: OutboundSa | None = None
        self.inbound: dict[int, InboundSa] = {}
        self.spi_in = b""

    def _install(self, event: ChildSaEstablished) -> None:
        """Our side of a Child SA: we seal with the peer's inbound SPI and keys, open with ours."""
        now, keys = time.monotonic(), event.keys
        self.outbound = OutboundSa(EspSaParams(int.from_bytes(event.spi_out, "big"), Direction.OUTBOUND, event.suite,
                                               keys.encr_out, keys.integ_out), now)
        self.inbound[int.from_bytes(event.spi_in, "big")] = InboundSa(
            EspSaParams(int.from_bytes(event.spi_in, "big"), Direction.INBOUND, event.suite, keys.encr_in,
                        keys.integ_in), now)
        self.spi_in = event.spi_in

    def ike_until(self, wanted: type[Event], timeout: float) -> Event | None:
        """Run IKE until an event of type `wanted` (installing the Child SAs it brings), or None at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for data, to in self.initiator.datagrams_to_send():
                self.ike.sendto(data, (str(to.address), to.port))
            while (event := self.initiator.next_event()) is not None:
                if isinstance(event, ChildSaEstablished):
                    self._install(event)
                elif isinstance(event, ChildSaRekeyed):
                    self._install(event.new)
                if isinstance(event, wanted):
                    for data, to in self.initiator.datagrams_to_send():
                        self.ike.sendto(data, (str(to.address), to.port))
                    return event
            timer = self.initiator.get_timer()
            wait = min(0.05, max(0.0, (timer or deadline) - time.monotonic()))
            if select.select([self.ike], [], [], wait)[0]:
                data, peer = self.ike.recvfrom(65535)
                self.initiator.receive(data, Endpoint(ip_address(peer[0]), peer[1]), time.monotonic())
            timer = self.initiator.get_timer()
            if timer is not None and timer <= time.monotonic():
                self.initiator.handle_timer(time.monotonic())
        return None

    def query(self, number: int, name: str, timeout: float) -> dns.message.Message | None:
        assert self.outbound is not None
        message = dns.message.make_query(name, dns.rdatatype.A)
        datagram = udp_datagram(self.source, self.server, CLIENT_PORT, 53, message.to_wire())
        self.esp.sendto(self.outbound.seal(datagram, IP_PROTO_UDP, time.monotonic()), self.natt)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.esp], [], [], left)[0]:
                break
            packet = self.esp.recv(65535)
            sa = self.inbound.get(int.from_bytes(packet[:4], "big"))
            if sa is None:
                continue
            try:
                inner, _ = sa.open(packet, time.monotonic())
                answer = dns.message.from_wire(inner[8:])
            except (EspError, dns.exception.DNSException):
                continue
            if answer.id == message.id:
                return answer
        return None

    def close(self) -> None:
        self.initiator.delete(time.monotonic())
        for data, to in self.initiator.datagrams_to_send():
            self.ike.sendto(data, (str(to.address), to.port))


def run(args: argparse.Namespace) -> int:
    client = EspDnsClient(args.source, args.server, args.ike_port, args.natt_port)
    established = client.ike_until(ChildSaEstablished, args.timeout)
    if not isinstance(established, ChildSaEstablished):
        emit(summary={"answered": 0, "unanswered": args.queries, "rekeys": 0, "failed": "no Child SA"})
        return 1
    emit(event="established", spi_in=established.spi_in.hex(), spi_out=established.spi_out.hex())
    answered = rekeys = 0
    for number in range(args.queries):
        if args.rekey_every and number and number % args.rekey_every == 0:
            client.initiator.rekey_child_sa(time.monotonic(), client.spi_in)
            rekeyed = client.ike_until(ChildSaRekeyed, args.timeout)
            if isinstance(rekeyed, ChildSaRekeyed):
                rekeys += 1
                emit(event="rekeyed", spi_in=rekeyed.new.spi_in.hex(), spi_out=rekeyed.new.spi_out.hex())
        answer = client.query(number, args.name, args.timeout)
        if answer is None:
            emit(event="unanswered", query=number)
        else:
            answered += 1
            emit(event="answer", query=number, rcode=dns.rcode.to_text(answer.rcode()),
                 answer=sorted(rd.to_text() for rrset in answer.answer for rd in rrset))
    client.close()
    emit(summary={"answered": answered, "unanswered": args.queries - answered, "rekeys": rekeys})
    return 0 if answered == args.queries else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--ike-port", type=int, default=500)
    parser.add_argument("--natt-port", type=int, default=4500)
    parser.add_argument("--name", default="www.lab.example.")
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--rekey-every", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
