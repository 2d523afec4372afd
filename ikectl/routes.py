"""The kernel's answer to "how would this host reach that address": one route lookup for every module."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import Address


@dataclass(frozen=True)
class Route:
    ifname: str  # the interface packets to the destination leave by
    source: Address | None  # the address they would be sent from (None: the kernel names none)


def route_to(destination: Address) -> Route | None:
    """The route to `destination` in this network namespace, or None when there is none."""
    from pyroute2.iproute import IPRoute  # noqa: PLC0415 - pyroute2 takes 0.1 s to import: loaded for lookups only
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(destination))
        except NetlinkError:  # unreachable: no route at all
            return None
        if not routes:
            return None
        source = routes[0].get_attr("RTA_PREFSRC")
        links = ipr.get_links(routes[0].get_attr("RTA_OIF"))
    return Route(ifname=links[0].get_attr("IFLA_IFNAME"), source=ipaddress.ip_address(source) if source else None)


def local_addresses() -> set[Address]:
    """Every address of every interface in this network namespace."""
    from pyroute2.iproute import IPRoute  # noqa: PLC0415

    with IPRoute() as ipr:
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}


def source_address(destination: Address) -> Address | None:
    """The address this host would send from to reach `destination` (None: no route, or none named)."""
    route = route_to(destination)
    return route.source if route else None
