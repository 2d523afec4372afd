"""Aggregate metrics of `enclave-ike serve`, in Prometheus' text format (prometheus_client), with no label that
names a client.

Why prometheus_client: it is the reference implementation of the format, its metrics are thread-safe (the
signing threads and the event loop both count) and cost about a microsecond an observation, and its import adds
about 0.1 s to serve's 0.7 s. Its own HTTP server is not used: serve renders `Metrics.render()` on its own asyncio
endpoint, like the evidence endpoint, so no thread serves requests.

Labels come from small closed sets only: auth methods, ESP suites, directions, drop reasons (fixed strings),
transports, query types and response codes (DNS's registries, by name). The optional top of queried domains is
`topdomains.TopDomains`: released per window, above a k-anonymity threshold, with Laplace noise.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .dnswire import HEADER_SIZE, question_type
from .topdomains import TopDomains

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
KNOWN_TYPES = frozenset({"A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "DS", "DNSKEY", "HTTPS",
                         "SVCB", "CAA", "NAPTR", "ANY"})
_TYPE_LABELS = {int(dns.rdatatype.from_text(name)): name for name in KNOWN_TYPES}
_RCODE_LABELS = tuple(dns.rcode.to_text(dns.rcode.Rcode(code)) for code in range(16))


def query_type(query: bytes) -> str:
    """The first question's type as a label: "other" for a type outside `KNOWN_TYPES` (a label per rare type would
    let one client mark its queries), "unparseable" for what is no query (dnswire reads it: every query is
    counted)."""
    qtype = question_type(query)
    return "unparseable" if qtype is None else _TYPE_LABELS.get(qtype, "other")


def question_name(query: bytes) -> str | None:
    """The first question's name as text (for the top domains; dnspython reads it), None for what is no query."""
    try:
        name, _ = dns.name.from_wire(query, HEADER_SIZE)
    except (dns.exception.DNSException, IndexError, ValueError):
        return None
    return name.to_text()


def response_code(answer: bytes) -> str:
    """The answer's RCODE by name (the header's four bits; EDNS's extended bits are not read)."""
    if len(answer) < 4:
        return "unparseable"
    return _RCODE_LABELS[answer[3] & 0x0F]


class _EspCollector(Collector):
    """Userspace ESP's own counters (datapath.EspDatapath's `counts` and `drops`), read at each scrape."""

    def __init__(self, counts: Tally[str], drops: Tally[str]) -> None:
        self.counts, self.drops = counts, drops

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("enclave_ike_esp_packets", "ESP packets (userspace ESP)", labels=["direction"])
        octets = CounterMetricFamily("enclave_ike_esp_octets", "ESP octets (userspace ESP)", labels=["direction"])
        for direction in ("in", "out"):
            packets.add_metric([direction], self.counts[f"ESP packets {direction}"])
            octets.add_metric([direction], self.counts[f"ESP octets {direction}"])
        drops = CounterMetricFamily("enclave_ike_esp_drops", "ESP packets, TCP segments and queries dropped, by "
                                    "reason (never answered)", labels=["reason"])
        for reason, count in sorted(self.drops.items()):
            drops.add_metric([reason], count)
        yield from (packets, octets, drops)


class Metrics:
    def __init__(self, top: TopDomains | None = None, ike_sas: Callable[[], float] | None = None) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.top = top
        self.handshakes = Counter("enclave_ike_ike_sas_established", "IKE SAs established, by what the client "
                                  "proved (pinned, null, raw-key, certificate)", ["auth"], registry=registry)
        self.child_sas = Counter("enclave_ike_child_sas_established", "Child SAs established, by ESP suite",
                                 ["suite"], registry=registry)
        self.ike_sas = Gauge("enclave_ike_ike_sas", "IKE SAs now", registry=registry)
        if ike_sas is not None:
            self.ike_sas.set_function(ike_sas)
        self.queries = Counter("enclave_ike_dns_queries", "DNS queries that came inside ESP", ["transport", "qtype"],
                               registry=registry)
        self.answers = Counter("enclave_ike_dns_answers", "DNS answers from the resolver, by RCODE", ["rcode"],
                               registry=registry)
        self.key_releases = Counter("enclave_ike_key_releases", "Key release requests from other replicas, by "
                                    "result (granted, refused)", ["result"], registry=registry)
        self.key_switch_at = Gauge("enclave_ike_key_switch_time_seconds", "A rotation of the service key under way: "
                                   "the Unix time every replica signs with the next key from (0: none)",
                                   registry=registry)
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self.latency = Histogram("enclave_ike_dns_resolver_seconds", "Time the resolver took to answer",
                                 buckets=LATENCY_BUCKETS, registry=registry)

    def watch_esp(self, counts: Tally[str], drops: Tally[str]) -> None:
        """Report userspace ESP's counters (apply.mode = "userspace")."""
        self.registry.register(_EspCollector(counts, drops))

    def query(self, payload: bytes, transport: str, client: bytes, now: float) -> None:
        qtype = query_type(payload)
        self._counter(self.queries, transport, qtype).inc()
        if self.top is not None and qtype != "unparseable" and (name := question_name(payload)) is not None:
            self.top.observe(name, client, now)

    def answer(self, payload: bytes, seconds: float) -> None:
        self._counter(self.answers, response_code(payload)).inc()
        self.latency.observe(seconds)

    def _counter(self, metric: Counter, *labels: str) -> Counter:
        """`metric.labels(*labels)`, kept: per query it cost as much as the rest of the counting."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self, now: float) -> bytes:
        """The scrape: every metric, then the current top-domains release (if enabled) as one gauge per domain."""
        text = generate_latest(self.registry)
        if self.top is None:
            return text
        self.top.tick(now)
        lines = ["# HELP enclave_ike_top_domain_clients Distinct clients that queried the domain in the last "
                 "released window, with Laplace noise; only domains above the k-anonymity threshold",
                 "# TYPE enclave_ike_top_domain_clients gauge"]
        lines += [f'enclave_ike_top_domain_clients{{domain="{_escape(r.domain)}"}} {r.clients}'
                  for r in self.top.release]
        return text + ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
