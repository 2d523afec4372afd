"""Hosts made of network namespaces, joined by veth pairs, on pyroute2.

    topo = Topology()
    client, router = topo.add_host("client"), topo.add_router("router")
    topo.link(client, router, "10.77.1.0/24", "fd77:1::/64")
    topo.default_route(client, via=router)

Every namespace gets its loopback up. Addresses are given as a subnet per link: the first host of the
link takes .1 (::1), the second .2 (::2), unless `hosts=` names other host numbers (53 gives .53 and
::53). IPv6 duplicate address detection is turned off so addresses are usable at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from . import procs

IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class Interface:
    host: str
    ifname: str
    ipv4: IPv4Interface | None
    ipv6: IPv6Interface | None

    @property
    def addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        return tuple(i.ip for i in (self.ipv4, self.ipv6) if i is not None)


@dataclass
class Host:
    name: str
    netns: str
    is_router: bool = False
    interfaces: dict[str, Interface] = field(default_factory=dict)

    def interface_to(self, peer: Host) -> Interface:
        return self.interfaces[_ifname_for(peer.name)]

    @property
    def ipv4(self) -> IPv4Address:
        """The host's first IPv4 address (its address, for hosts with one link)."""
        for iface in self.interfaces.values():
            if iface.ipv4 is not None:
                return iface.ipv4.ip
        raise procs.HarnessError(f"host {self.name} has no IPv4 address")

    @property
    def ipv6(self) -> IPv6Address:
        for iface in self.interfaces.values():
            if iface.ipv6 is not None:
                return iface.ipv6.ip
        raise procs.HarnessError(f"host {self.name} has no IPv6 address")

    def addresses(self) -> set[IPv4Address | IPv6Address]:
        return {a for iface in self.interfaces.values() for a in iface.addresses}


def _ifname_for(peer_name: str) -> str:
    name = f"to-{peer_name}"
    if len(name) > 15:
        raise procs.HarnessError(f"host name {peer_name!r} is too long for an interface name (max 12)")
    return name


class Topology:
    """A set of namespaces made by this process; `close()` (or the context manager) removes them all."""

    def __init__(self) -> None:
        self.prefix = f"{procs.NETNS_PREFIX}{os.getpid()}-"
        self.hosts: dict[str, Host] = {}
        # One netlink socket per namespace, kept: pyroute2 opens one in another namespace through a forked
        # helper (0.23 s each in the TCG guest, and a world took ~60 of them). The lock lets threads share them.
        self._iprs: dict[str, IPRoute] = {}
        self._ipr_lock = threading.RLock()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building ---

    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            raise procs.HarnessError(f"host {name!r} already exists")
        _ifname_for(name)  # fail early on names too long to name an interface after
        nsname = self.prefix + name
        procs.register_namespace(nsname)
        pyroute2_netns.create(nsname)
        host = Host(name=name, netns=nsname)
        self.hosts[name] = host
        with self._ipr(host) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        self.sysctl(host, "net.ipv6.conf.default.accept_dad", "0", "net.ipv6.conf.all.accept_dad", "0")
        return host

    def add_router(self, name: str = "router") -> Host:
        host = self.add_host(name)
        host.is_router = True
        self.sysctl(host, "net.ipv4.ip_forward", "1", "net.ipv6.conf.all.forwarding", "1")
        return host

    def link(self, a: Host, b: Host, subnet4: str | None, subnet6: str | None = None,
             hosts: tuple[int, int] = (1, 2)) -> tuple[Interface, Interface]:
        """Join `a` and `b` with a veth pair; each end is named after the host it leads to."""
        a_if, b_if = _ifname_for(b.name), _ifname_for(a.name)
        with self._ipr(a) as ipr:
            ipr.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if, "net_ns_fd": b.netns})
        ends = []
        for host, ifname, number in ((a, a_if, hosts[0]), (b, b_if, hosts[1])):
            ipv4 = _nth_interface(subnet4, number) if subnet4 else None
            ipv6 = _nth_interface(subnet6, number) if subnet6 else None
            with self._ipr(host) as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                for iface in (ipv4, ipv6):
                    if iface is not None:
                        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                                 flags=IFA_F_NODAD)
                ipr.link("set", index=index, state="up")
            end = Interface(host=host.name, ifname=ifname, ipv4=ipv4, ipv6=ipv6)  # type: ignore[arg-type]
            host.interfaces[ifname] = end
            ends.append(end)
        for host, ifname in ((a, a_if), (b, b_if)):
            self.wait_operstate(host, ifname, "UP")
        return ends[0], ends[1]

    def wait_operstate(self, host: Host, ifname: str, state: str, timeout: float = 5.0) -> None:
        """Wait for the kernel's linkwatch to report the link's state. Until a new link is reported UP its
        qdisc is still noop, which silently drops what is sent (the first DNS query, say)."""
        with self._ipr(host) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            procs.wait_until(lambda: ipr.get_links(index)[0].get_attr("IFLA_OPERSTATE") == state, timeout,
                             f"{ifname} in {host.name} to be {state}")

    def default_route(self, host: Host, via: Host) -> None:
        """Route everything from `host` through `via`, over the link between them (IPv4 and IPv6)."""
        gateway = via.interface_to(host)
        with self._ipr(host) as ipr:
            if gateway.ipv4 is not None:
                ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway.ipv4.ip))
            if gateway.ipv6 is not None:
                ipr.route("add", dst="::/0", gateway=str(gateway.ipv6.ip), family=socket.AF_INET6)

    def set_link(self, host: Host, ifname: str, up: bool) -> None:
        with self._ipr(host) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up" if up else "down")
        if up:
            self.wait_operstate(host, ifname, "UP")

    # --- using ---

    def sysctl(self, host: Host, key: str, value: str, *more: str) -> None:
        """Set `key` to `value` (and each further key, value pair) in one process: a process costs ~0.5 s in the
        TCG guest. /proc/sys/net is per namespace: it is written from inside the namespace."""
        pairs = (key, value, *more)
        if len(pairs) % 2:
            raise ValueError(f"sysctl: a key without a value in {more}")
        self.run(host, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in zip(pairs[::2], pairs[1::2], strict=True))])

    def run(self, host: Host, argv: Sequence[str], check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the host's namespace; on failure the error quotes its stderr."""
        proc = subprocess.run(["ip", "netns", "exec", host.netns, *argv], capture_output=True, text=True,
                              timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            raise procs.HarnessError(f"{' '.join(argv)} in {host.name} failed ({proc.returncode}): "
                                     f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def socket(self, host: Host, family: int = socket.AF_INET,
               kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in the host's namespace, usable from this process."""
        sock: socket.socket = pyroute2_netns.create_socket(host.netns, family=family, socket_type=kind)
        return sock

    # --- tearing down ---

    def close(self) -> None:
        with self._ipr_lock:
            for ipr in self._iprs.values():
                ipr.close()
            self._iprs.clear()
        for host in reversed(list(self.hosts.values())):
            procs.remove_namespace(host.netns)
        self.hosts.clear()

    @contextlib.contextmanager
    def _ipr(self, host: Host) -> Iterator[IPRoute]:
        with self._ipr_lock:
            ipr = self._iprs.get(host.netns)
            if ipr is None:
                ipr = self._iprs[host.netns] = IPRoute(netns=host.netns)
            yield ipr


def _nth_interface(subnet: str, number: int) -> IPv4Interface | IPv6Interface:
    network = ipaddress.ip_network(subnet)
    # Host 53 is .53 in IPv4 and ::53 (not ::35) in IPv6, so both addresses read alike.
    offset = number if network.version == 4 else int(str(number), 16)
    return ipaddress.ip_interface(f"{network.network_address + offset}/{network.prefixlen}")
