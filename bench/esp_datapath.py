"""Benchmark: DNS answers per second through enclave-ike's userspace ESP (enclave_ike/datapath.py), in one process on
one core, against the same DNS work without ESP measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/esp_datapath.py [--queries 20000] [--runs 5] [--suite gcm|cbc]

The client is made of the ESP core's own SAs with the keys mirrored (as tests/test_datapath.py does), in tunnel
mode over IPv4 (what ikectl's conns negotiate). One answered query is: the client seals an IPv4/UDP DNS query
into ESP; the datapath opens it, checks it against the traffic selectors and hands out the query; the answer (a
fixed 60-octet DNS message: the resolver is not what is measured) goes back through `answer` and `take_outgoing`;
the client opens it. The clock (process CPU time) runs only around the datapath's calls: the client's queries are
sealed before it starts and its answers opened (and checked, every one) after it stops. The baseline does the
same DNS work with no ESP: parse the IPv4/UDP query with the same inet.py code, build the IPv4/UDP answer.

Every run is a fresh process (after 2,000 answers of warm-up); runs alternate ESP and baseline, and the medians
and the ratio of each pair are printed. The issue's goal: at least 20,000 answers/s through userspace ESP on this
host. Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from ipaddress import ip_address

from enclave_ike.datapath import EspDatapath
from enclave_ike.esp import Direction, EspSaParams, InboundSa, OutboundSa
from enclave_ike.ikev2.config import Endpoint, Mode
from enclave_ike.ikev2.constants import EncrId, IntegId, ProtocolId
from enclave_ike.ikev2.crypto import ChildSuite
from enclave_ike.ikev2.events import ChildSaEstablished, ChildSaKeys
from enclave_ike.ikev2.payloads import TrafficSelector
from enclave_ike.inet import IP_PROTO_UDP, ip_packet, parse_ip, parse_udp, udp_datagram

RESOLVER, CLIENT = ip_address("192.0.2.53"), ip_address("10.0.0.7")
LOCAL, PEER = Endpoint(RESOLVER, 4500), Endpoint(CLIENT, 4500)
SUITES = {"gcm": ChildSuite(EncrId.ENCR_AES_GCM_16, 256),
          "cbc": ChildSuite(EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128)}
QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x03lab\x07example\x00\x00\x01\x00\x01"
ANSWER = QUERY[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + QUERY[12:] + (
    b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x4d\x00\x50")
WARM_UP = 2000
NOW = 100.0  # the datapath's clock: lifetimes of hours, so a fixed time is enough


def installed(suite: ChildSuite) -> tuple[EspDatapath, OutboundSa, InboundSa]:
    """A datapath with one tunnel-mode Child SA, and the client's two halves of it."""
    encr, integ = suite.encryption.key_size, suite.integrity.key_size if suite.integrity else 0
    keys = ChildSaKeys(os.urandom(encr), os.urandom(integ), os.urandom(encr), os.urandom(integ))
    event = ChildSaEstablished(
        b"I" * 8, b"R" * 8, (0x1001).to_bytes(4, "big"), (0x2001).to_bytes(4, "big"), ProtocolId.ESP, Mode.TUNNEL,
        suite, (TrafficSelector(RESOLVER, RESOLVER, IP_PROTO_UDP, 53, 53),),
        (TrafficSelector(CLIENT, CLIENT, IP_PROTO_UDP, 0, 65535),), Endpoint(RESOLVER, 500), Endpoint(CLIENT, 500),
        True, keys)
    path = EspDatapath()
    path.apply(event, NOW)
    out = OutboundSa(EspSaParams(0x1001, Direction.OUTBOUND, suite, keys.encr_in, keys.integ_in), NOW)
    into = InboundSa(EspSaParams(0x2001, Direction.INBOUND, suite, keys.encr_out, keys.integ_out), NOW)
    return path, out, into


def through_esp(suite: ChildSuite, count: int) -> float:
    """Answers per second of the datapath alone: the client's queries are sealed before the clock starts and its
    answers opened (every one, checked) after it stops."""
    path, out, into = installed(suite)
    rate = 0.0
    for batch in (WARM_UP, count):
        queries = [out.seal(_query_packet(number), 4, NOW) for number in range(batch)]
        started = time.process_time()
        for packet in queries:
            (query,) = path.receive(packet, PEER, LOCAL, NOW)
            path.answer(query, ANSWER, NOW)
        sent = path.take_outgoing()
        rate = batch / (time.process_time() - started)
        if len(sent) != batch or any(_answer_of(into.open(o.packet, NOW)[0]) != ANSWER for o in sent):
            raise AssertionError("an answer did not come back as it was sent")
    return rate


def plain(count: int) -> float:
    """Answers per second of the same DNS work with no ESP: parse the query packet, build the answer packet."""
    rate = 0.0
    for batch in (WARM_UP, count):
        queries = [_query_packet(number) for number in range(batch)]
        started = time.process_time()
        sent = []
        for packet in queries:
            source, destination, _, segment = parse_ip(packet)
            source_port, _, payload = parse_udp(segment)
            sent.append(ip_packet(destination, source, IP_PROTO_UDP,
                                  udp_datagram(destination, source, 53, source_port, ANSWER if payload else b"")))
        rate = batch / (time.process_time() - started)
        if any(_answer_of(packet) != ANSWER for packet in sent):
            raise AssertionError("an answer did not come back as it was sent")
    return rate


def _query_packet(number: int) -> bytes:
    port = 1024 + number % 60000
    return ip_packet(CLIENT, RESOLVER, IP_PROTO_UDP, udp_datagram(CLIENT, RESOLVER, port, 53, QUERY))


def _answer_of(packet: bytes) -> bytes:
    return parse_udp(parse_ip(packet)[3])[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--suite", choices=sorted(SUITES), default="gcm")
    parser.add_argument("--one", choices=("esp", "plain"), help=argparse.SUPPRESS)  # a single run, in this process
    args = parser.parse_args()
    if args.queries < 1 or args.runs < 1:
        parser.error("--queries and --runs: at least 1")
    if args.one is not None:
        rate = through_esp(SUITES[args.suite], args.queries) if args.one == "esp" else plain(args.queries)
        print(json.dumps({"rate": rate}))
        return
    rates: dict[str, list[float]] = {"esp": [], "plain": []}
    for run in range(args.runs):
        for kind in ("esp", "plain") if run % 2 == 0 else ("plain", "esp"):
            done = subprocess.run([sys.executable, __file__, "--one", kind, "--queries", str(args.queries),
                                   "--suite", args.suite], capture_output=True, text=True, check=True)
            rates[kind].append(json.loads(done.stdout)["rate"])
        print(f"run {run + 1}: userspace ESP {rates['esp'][-1]:,.0f}/s, plain {rates['plain'][-1]:,.0f}/s", flush=True)
    ratios = [e / p for e, p in zip(rates["esp"], rates["plain"], strict=True)]
    print(f"\nuserspace ESP ({args.suite}, tunnel mode, the enclave's side): "
          f"{statistics.median(rates['esp']):,.0f} answers/s (median of {args.runs} runs, one core; goal 20,000)")
    print(f"the same DNS work without ESP:  {statistics.median(rates['plain']):,.0f} answers/s")
    print(f"ratio ESP / plain: {statistics.median(ratios):.3f} (runs: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
