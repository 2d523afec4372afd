"""Aggregate metrics (enclave_ike/metrics.py, metrics_endpoint.py) and the top-domains release
(enclave_ike/topdomains.py): counts after a known workload, scraped over HTTP; a skewed synthetic workload on both
sides of the k-anonymity threshold, with no noise and with real noise."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import statistics
from collections import Counter
from ipaddress import ip_address
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.apply import LogApplier
from enclave_ike.config import ApplyMode, Auth, IdentityConfig, Listen, MetricsConfig, ServeConfig
from enclave_ike.dnswire import HEADER_SIZE, question_key
from enclave_ike.enclave.sim import SimEnclave
from enclave_ike.ikev2.config import Endpoint
from enclave_ike.ikev2.responder import Responder
from enclave_ike.metrics import KNOWN_TYPES, Metrics, query_type, question_name, response_code
from enclave_ike.metrics_endpoint import MetricsEndpoint
from enclave_ike.server import Server
from enclave_ike.topdomains import Released, TopDomains, TopDomainsConfig, TopDomainsError, laplace, registered_part

NOW = 1000.0
NO_NOISE = 0.5  # the uniform draw whose Laplace sample is 0


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def answer(name: str, rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> bytes:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    response.set_rcode(rcode)
    return response.to_wire()


def value(text: str, metric: str) -> float:
    match = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.MULTILINE)
    assert match, (metric, text)
    return float(match.group(1))


def client(number: int) -> bytes:
    return ip_address(f"10.1.{number // 250}.{number % 250 + 1}").packed


def test_a_known_workload_is_counted_by_closed_label_sets_only():
    esp_counts, drops = Counter({"ESP packets in": 12, "ESP octets in": 960, "ESP packets out": 10}), Counter()
    metrics = Metrics(ike_sas=lambda: 3)
    metrics.watch_esp(esp_counts, drops)
    metrics.handshakes.labels(auth="null").inc()
    metrics.handshakes.labels(auth="pinned").inc(2)
    for name, rdtype in (("www.example.com", "A"), ("www.example.com", "AAAA"), ("x.example.org", "TYPE65400")):
        metrics.query(query(name, rdtype), "udp", client(1), NOW)
    metrics.query(b"\x00\x01garbage", "tcp", client(1), NOW)
    metrics.answer(answer("www.example.com"), 0.004)
    metrics.answer(answer("www.example.com", dns.rcode.NXDOMAIN), 0.3)
    drops["icv"] += 2
    text = metrics.render(NOW).decode()
    assert value(text, 'enclave_ike_ike_sas_established_total{auth="null"}') == 1
    assert value(text, 'enclave_ike_ike_sas_established_total{auth="pinned"}') == 2
    assert value(text, "enclave_ike_ike_sas") == 3
    assert value(text, 'enclave_ike_dns_queries_total{qtype="A",transport="udp"}') == 1
    assert value(text, 'enclave_ike_dns_queries_total{qtype="AAAA",transport="udp"}') == 1
    assert value(text, 'enclave_ike_dns_queries_total{qtype="other",transport="udp"}') == 1  # a rare type marks no one
    assert value(text, 'enclave_ike_dns_queries_total{qtype="unparseable",transport="tcp"}') == 1
    assert value(text, 'enclave_ike_dns_answers_total{rcode="NOERROR"}') == 1
    assert value(text, 'enclave_ike_dns_answers_total{rcode="NXDOMAIN"}') == 1
    assert value(text, 'enclave_ike_dns_resolver_seconds_bucket{le="0.005"}') == 1
    assert value(text, "enclave_ike_dns_resolver_seconds_count") == 2
    assert value(text, 'enclave_ike_esp_packets_total{direction="in"}') == 12  # read at the scrape
    assert value(text, 'enclave_ike_esp_octets_total{direction="in"}') == 960
    assert value(text, 'enclave_ike_esp_drops_total{reason="icv"}') == 2
    assert "example" not in text and "10.1." not in text  # no name, no client, without the top-domains release
    assert "enclave_ike_top_domain" not in text


def test_query_types_and_codes_are_read_from_the_wire():
    assert query_type(query("a.example.", "MX")) == "MX"
    assert query_type(query("a.example.", "LOC")) == "other"
    assert question_name(query("A.Example.", "MX")) == "A.Example."
    assert query_type(b"") == "unparseable" and question_name(b"") is None
    assert response_code(answer("a.example.", dns.rcode.SERVFAIL)) == "SERVFAIL"
    assert response_code(b"\x00") == "unparseable"


def test_what_is_no_query_is_counted_unparseable():
    good = query("a.example.", "AAAA")
    header = good[:HEADER_SIZE]
    assert query_type(header[:4] + b"\x00\x00" + header[6:] + good[HEADER_SIZE:]) == "unparseable"  # QDCOUNT 0
    assert query_type(header + b"\xc0\x0c" + b"\x00\x01\x00\x01") == "unparseable"  # compressed first name
    assert query_type(header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01") == "unparseable"  # label of 64
    longest = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"a" * 61 + b"\x00"  # 255 octets
    assert query_type(header + longest + b"\x00\x01\x00\x01") == "A"
    assert query_type(header + longest[:-1] + b"\x01a\x00" + b"\x00\x01\x00\x01") == "unparseable"  # 257
    bare = dns.message.make_query("a.example.", "AAAA", use_edns=False).to_wire()  # the question ends the message
    assert query_type(bare) == "AAAA"
    assert all(query_type(bare[:cut]) == "unparseable" for cut in range(len(bare)))


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.from_regex(r"[a-z0-9-]{1,63}", fullmatch=True), min_size=1, max_size=3),
       rdtype=st.sampled_from(["A", "AAAA", "MX", "TXT", "LOC", "HINFO", "ANY", "HTTPS", "TYPE65000"]),
       edns=st.booleans())
def test_the_type_read_from_the_wire_is_dnspythons(names, rdtype, edns):
    wire = dns.message.make_query(".".join(names) + ".", rdtype, use_edns=edns).to_wire()
    expected = dns.rdatatype.to_text(dns.message.from_wire(wire).question[0].rdtype)
    assert query_type(wire) == (expected if expected in KNOWN_TYPES else "other")
    assert question_name(wire) == ".".join(names) + "."


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_octets_get_a_label_and_never_raise(data):
    assert query_type(data) in KNOWN_TYPES | {"other", "unparseable"}
    key = question_key(data)
    assert (key is None) == (query_type(data) == "unparseable")
    assert key is None or key[:-4] == key[:-4].lower()  # the name without case, type and class as they are
    assert response_code(data) in set(response_code(bytes(4 * [code])) for code in range(16)) | {"unparseable"}
    question_name(data)


# --- the top-domains release ---

def skewed(top: TopDomains, now: float, k: int) -> None:
    """A skewed workload: one domain asked by 5k clients, one by exactly k, one by k - 1 clients that each ask 100
    times (many queries, too few clients), and a long tail of names asked once."""
    for number in range(5 * k):
        top.observe("www.Popular.EXAMPLE.", client(number), now)
    for number in range(k):
        top.observe(f"host{number}.edge.example", client(number), now)  # one domain: edge.example
    for number in range(k - 1):
        for _ in range(100):
            top.observe("rare.example", client(1000 + number), now)
    for number in range(300):
        top.observe(f"tail{number}.example", client(number), now)


def test_only_domains_at_least_k_clients_asked_for_are_released_whatever_the_query_count():
    config = TopDomainsConfig(enabled=True, k=10, top_n=5, window_s=60)
    top = TopDomains(config, NOW, lambda: NO_NOISE)
    skewed(top, NOW, config.k)
    assert top.release == ()  # nothing before the window ends
    top.tick(NOW + 60)
    assert top.release == (Released("popular.example", 50), Released("edge.example", 10))
    assert top.released_at == NOW + 60


def test_the_release_is_frozen_for_its_window_and_the_next_starts_empty():
    config = TopDomainsConfig(enabled=True, k=3, window_s=60)
    top = TopDomains(config, NOW, lambda: NO_NOISE)
    for number in range(5):
        top.observe("a.example", client(number), NOW)
    top.tick(NOW + 60)
    first = top.release
    for number in range(10):  # a new window: new clients of another name
        top.observe("b.example", client(number), NOW + 70)
    assert top.release == first == (Released("a.example", 5),)  # a scrape in between shows only the last release
    top.tick(NOW + 120)
    assert top.release == (Released("b.example", 10),)


def test_with_real_noise_below_k_is_never_released_and_far_above_always_is():
    config = TopDomainsConfig(enabled=True, k=10, top_n=10, epsilon=0.5, window_s=60)
    uniform = secrets.SystemRandom().random
    released: Counter[str] = Counter()
    counts = []
    for window in range(200):
        top = TopDomains(config, NOW, uniform)
        skewed(top, NOW, config.k)
        top.tick(NOW + 60)
        names = {r.domain: r.clients for r in top.release}
        released.update(names.keys())
        counts.append(names["popular.example"])
        assert "rare.example" not in names and not any(n.startswith("tail") for n in names), (window, names)
        assert all(count >= config.k for count in names.values())
    assert released["popular.example"] == 200
    assert 0 < released["edge.example"] < 200  # exactly k clients: the noise decides, either way
    assert abs(statistics.mean(counts) - 50) < 1.5 and statistics.pstdev(counts) > 1  # noisy, not biased


def test_memory_is_bounded_and_the_rarest_domain_goes_first():
    config = TopDomainsConfig(enabled=True, k=2, top_n=1, max_domains=5, client_cap=3, window_s=60)
    top = TopDomains(config, NOW, lambda: NO_NOISE)
    for number in range(10):
        top.observe("heavy.example", client(number), NOW)  # counted up to the cap
    for number in range(50):
        top.observe(f"n{number}.example", client(number), NOW)
    top.tick(NOW + 60)
    assert top.release == (Released("heavy.example", 3),)


def test_names_are_cut_to_their_registered_part_and_bad_settings_are_refused():
    assert registered_part("WWW.Example.COM.", 2) == "example.com"
    assert registered_part("a.b.c.d", 3) == "b.c.d"
    assert registered_part(".", 2) is None
    assert laplace(2.0, lambda: NO_NOISE) == 0
    with pytest.raises(TopDomainsError):
        TopDomainsConfig(k=1)
    with pytest.raises(TopDomainsError):
        TopDomainsConfig(epsilon=0)


def test_the_release_is_scraped_as_one_gauge_per_domain():
    config = TopDomainsConfig(enabled=True, k=2, window_s=60)
    top = TopDomains(config, NOW, lambda: NO_NOISE)
    for number in range(4):
        top.observe('odd"name\\.example', client(number), NOW)
    metrics = Metrics(top)
    text = metrics.render(NOW + 60).decode()  # the scrape ends the window
    assert 'enclave_ike_top_domain_clients{domain="odd\\"name\\\\.example"} 4' in text


# --- the endpoint ---

async def _fetch(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_the_endpoint_serves_get_metrics_and_refuses_the_rest():
    async def run() -> list[bytes]:
        endpoint = MetricsEndpoint(lambda: b"metric 1\n", [ip_address("127.0.0.1")], 0)
        await endpoint.start()
        port = endpoint.bound[0][1]
        try:
            return [await _fetch(port, request) for request in (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                b"POST /metrics HTTP/1.1\r\n\r\n", b"\x00\xff garbage\r\n\r\n")]
        finally:
            await endpoint.stop()

    ok, not_found, post, garbage = asyncio.run(run())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nmetric 1\n")
    assert b"Content-Type: text/plain; version=0.0.4" in ok
    assert not_found.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 400 ") and garbage.startswith(b"HTTP/1.1 400 ")


def test_health_is_ok_while_fine_and_503_with_the_reason_otherwise():
    problems: list[str | None] = [None, "the sim enclave (pid 7) exited with status 1: its key is gone"]

    async def run() -> list[bytes]:
        endpoint = MetricsEndpoint(lambda: b"", [ip_address("127.0.0.1")], 0, health=lambda: problems[0])
        await endpoint.start()
        port = endpoint.bound[0][1]
        try:
            fine = await _fetch(port, b"GET /health HTTP/1.1\r\n\r\n")
            problems.pop(0)
            return [fine, await _fetch(port, b"GET /health HTTP/1.1\r\n\r\n")]
        finally:
            await endpoint.stop()

    fine, broken = asyncio.run(run())
    assert fine.startswith(b"HTTP/1.1 200 OK\r\n") and fine.endswith(b"\r\n\r\nok\n")
    assert broken.startswith(b"HTTP/1.1 503 ") and broken.endswith(b"exited with status 1: its key is gone\n")


def _free_udp_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_serve_is_unhealthy_until_started_and_when_its_sim_enclave_dies():
    """The server's own answer, from its state: not serving yet, serving, its enclave's process killed, stopped."""
    ike_port, natt_port = _free_udp_ports(2)
    address = ip_address("127.0.0.1")
    config = ServeConfig(path=Path("/nonexistent"), listen=Listen((address,), ike_port, natt_port),
                         dns_addresses=(address,), apply=ApplyMode.NONE, metrics=MetricsConfig(enabled=False),
                         identity=IdentityConfig(id="@resolver.example", auth=Auth.SIGNATURE))

    async def run() -> list[str | None]:
        with SimEnclave() as enclave:
            responder = Responder(config.responder_config(enclave.signer()), local=Endpoint(address, ike_port),
                                  random=os.urandom)
            server = Server(config, responder, LogApplier())
            server.enclave_problem = enclave.problem
            seen = [server.health()]
            await server.start()
            seen.append(server.health())
            os.kill(enclave.pid, signal.SIGKILL)
            enclave._process.wait()
            seen.append(server.health())
            await server.stop()
            seen.append(server.health())
        return seen

    before, serving, killed, stopped = asyncio.run(run())
    assert before == stopped == "not serving (starting or stopping)"
    assert serving is None
    assert killed is not None and "exited with status -9: its key is gone" in killed
