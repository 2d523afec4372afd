"""Watching a namespace's XFRM and nftables tables from outside it, without starting a process per look.

Under TCG a process start takes a second and more (`nft -j list` 1.3 s in the VM), which used to be most of what
a "how soon is the backstop back" figure measured. Here the tables are read in this process (XFRM netlink, a
libnftables context opened inside the namespace, where it stays), and changes arrive as netlink events from
subscriptions in the namespace: a check runs after each burst, never in a busy loop.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyroute2 import netns as pyroute2_netns

from ikecommon.xfrm import Group, XfrmClient, event_socket
from ikectl import backstop, nft
from ikectl.supervisor import removals

NETLINK_NETFILTER, NFNLGRP_NFTABLES, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 12, 7, 270, 1


def nft_events(netns: str) -> socket.socket:
    """A non-blocking socket in `netns` that receives its nftables changes (NFNLGRP_NFTABLES)."""
    sock: socket.socket = pyroute2_netns.create_socket(netns, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW,
                                                       proto=NETLINK_NETFILTER, flags=0)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> bytes:
    """Every event waiting, as one string of netlink messages (BlockingIOError ends it; ENOBUFS too: some were
    lost, and the tables are read afresh anyway)."""
    chunks = []
    while True:
        try:
            chunks.append(sock.recv(1 << 16))
        except OSError:
            return b"".join(chunks)


class Tables:
    """The XFRM and nftables tables of one namespace, read from this process."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.xfrm = XfrmClient(netns)
        pyroute2_netns.pushns(netns)  # a libnftables context stays in the namespace it was made in
        try:
            self.nft = nft.Context()
        finally:
            pyroute2_netns.popns()

    def close(self) -> None:
        self.xfrm.close()
        self.nft.close()

    def nft_state(self, table: str = nft.TABLE) -> nft.TableState:
        accepted, listing, _ = self.nft.run(f"list table {nft.FAMILY} {table}", json_output=True)
        return nft.state_of(listing) if accepted else nft.TableState.ABSENT

    def xfrm_backstop_complete(self) -> bool:
        return not backstop.missing(self.xfrm.policies())

    def both_backstops(self) -> bool:
        return self.xfrm_backstop_complete() and self.nft_state() == nft.TableState.INTACT

    @contextlib.contextmanager
    def events(self) -> Iterator[list[socket.socket]]:
        """XFRM policy and nftables event subscriptions in the namespace."""
        with event_socket(self.netns, (Group.POLICY,)) as xfrm_events, nft_events(self.netns) as table_events:
            yield [xfrm_events, table_events]


@dataclass(frozen=True)
class Restoration:
    removed_at: float  # when the removal's event arrived (time.monotonic)
    restored_after: float  # seconds from that event to the check that found everything back


def removed_and_restored(tables: Tables, removal: list[str], back: Callable[[], bool],
                         within: float = 10.0) -> Restoration:
    """Run `removal` in the namespace; time from the kernel's event of the removal to `back()` holding again
    (checked after each burst of events). AssertionError if it does not within `within` seconds."""
    with tables.events() as sockets:
        for sock in sockets:
            drain(sock)
        proc = subprocess.Popen(["ip", "netns", "exec", tables.netns, *removal], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        removed_at = None
        deadline = time.monotonic() + within + 30  # the removal's own start, under TCG, comes on top
        while time.monotonic() < deadline:
            ready = select.select(sockets, [], [], 0.5)[0]
            arrived = time.monotonic()
            data = b"".join(drain(sock) for sock in ready)
            if removed_at is None and removals(data):
                removed_at = arrived
            if removed_at is not None and back():
                proc.wait(30)
                return Restoration(removed_at, time.monotonic() - removed_at)
            if removed_at is not None and arrived - removed_at > within:
                break
        proc.wait(30)
    raise AssertionError(f"{' '.join(removal)}: " + ("no removal event came" if removed_at is None else
                                                     f"not restored within {within:g} s"))
