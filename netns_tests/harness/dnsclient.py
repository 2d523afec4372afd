"""Send DNS queries from inside a namespace and time the answers (dnspython over a netns socket)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from ipaddress import ip_address

import dns.exception
import dns.inet
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from .topology import Host, Topology

DNS_PORT = 53


@dataclass(frozen=True)
class Answer:
    server: str
    qname: str
    answered: bool
    seconds: float  # from the first send to the answer (or to giving up)
    sends: int  # UDP: 1 + the retransmissions it took
    rcode: str = ""
    records: tuple[str, ...] = ()


def query(topo: Topology, host: Host, server: str, qname: str = "www.lab.example.", rdtype: str = "A",
          timeout: float = 10.0, retry_every: float = 1.0, tcp: bool = False) -> Answer:
    """One query from `host` to `server`. UDP is resent from the same socket every `retry_every` s, as a
    stub resolver does, until `timeout`; TCP makes one connection attempt."""
    family = socket.AF_INET6 if ip_address(server).version == 6 else socket.AF_INET
    message = dns.message.make_query(qname, dns.rdatatype.from_text(rdtype))
    started = time.monotonic()
    deadline = time.time() + timeout
    with topo.socket(host, family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        if tcp:
            reply, sends = _tcp(sock, message, server, deadline), 1
        else:
            reply, sends = _udp(sock, message, server, deadline, retry_every)
    seconds = time.monotonic() - started
    if reply is None:
        return Answer(server, qname, False, seconds, sends)
    records = tuple(rr.to_text() for rrset in reply.answer for rr in rrset)
    return Answer(server, qname, True, seconds, sends, dns.rcode.to_text(reply.rcode()), records)


def _udp(sock: socket.socket, message: dns.message.Message, server: str, deadline: float,
         retry_every: float) -> tuple[dns.message.Message | None, int]:
    destination = dns.inet.low_level_address_tuple((server, DNS_PORT), sock.family)
    sends = 0
    while time.time() < deadline:
        sends += 1
        try:
            dns.query.send_udp(sock, message, destination)
        except OSError:  # EPERM: an XFRM block policy refused it; a stub would retry later
            time.sleep(min(retry_every, max(0.0, deadline - time.time())))
            continue
        try:
            reply, _ = dns.query.receive_udp(sock, destination, min(deadline, time.time() + retry_every),
                                             query=message)
            return reply, sends
        except dns.exception.Timeout:
            continue
    return None, sends


def _tcp(sock: socket.socket, message: dns.message.Message, server: str,
         deadline: float) -> dns.message.Message | None:
    try:
        _connect(sock, server, deadline)
        dns.query.send_tcp(sock, message, deadline)
        reply, _ = dns.query.receive_tcp(sock, deadline)
        return reply
    except (dns.exception.Timeout, OSError):
        return None


def _connect(sock: socket.socket, server: str, deadline: float) -> None:
    sock.settimeout(max(0.0, deadline - time.time()))
    sock.connect((server, DNS_PORT))
    sock.setblocking(False)
