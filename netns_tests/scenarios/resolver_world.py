"""client -- router -- resolver (unbound on .53): the small world of the enclave-ike scenario tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from netns_tests.harness.topology import Host, Topology
from netns_tests.harness.unbound import Unbound, UnboundConfig


@dataclass
class World:
    topo: Topology
    client: Host
    router: Host
    resolver: Host
    workdir: Path


def null_conn(resolver: str) -> str:
    """pluto's side of the NULL-auth interop: one transport conn for udp/53 to `resolver`, added, not started."""
    return f"""conn dns
\tleft=%defaultroute
\tleftid=%null
\tright={resolver}
\trightid=%null
\tauthby=null
\tleftprotoport=udp/0
\trightprotoport=udp/53
\ttype=transport
\tikev2=insist
\tleftupdown=%disabled
\tauto=add
"""


def build_world(topology: Topology, workdir: Path, unbound: Callable[..., Unbound], prefix: str) -> World:
    """`prefix` is two octets ("10.78"): the client is {prefix}.1.2, the resolver {prefix}.2.53."""
    client, router, resolver = topology.add_host("client"), topology.add_router("router"), topology.add_host("dns")
    topology.link(client, router, f"{prefix}.1.0/24", hosts=(2, 1))
    topology.link(resolver, router, f"{prefix}.2.0/24", hosts=(53, 1))
    topology.default_route(client, router)
    topology.default_route(resolver, router)
    unbound(resolver, UnboundConfig(addresses=[ip_address(f"{prefix}.2.53")]))
    return World(topology, client, router, resolver, workdir)
