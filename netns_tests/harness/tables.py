"""Watching a namespace's XFRM and nftables tables without starting a process per look.

Under TCG a process start takes a second and more (`nft -j list` 1.3 s in the VM), which used to be most of what
a "how soon is the backstop back" figure measured. `Tables` reads them from this process (XFRM netlink, a
libnftables context opened inside the namespace, where it stays); changes arrive as netlink events from
subscriptions in the namespace, and a check runs after each burst, never in a busy loop.

`removed_and_restored` times a removal by another program from an observer process of its own in the namespace
(`python -m netns_tests.harness.tables`): a test process that also runs a query stream answered its events
seconds late under TCG, and its figures were its own delays.
"""

from __future__ import annotations

import contextlib
import json
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from ikecommon.xfrm import Flushed, Group, Policy, PolicyAdded, PolicyDeleted, XfrmClient, event_socket, events
from ikectl import backstop, nft, supervisor

NETLINK_NETFILTER, NFNLGRP_NFTABLES, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 12, 7, 270, 1


def nft_events(netns: str | None) -> socket.socket:
    """A non-blocking socket in `netns` (None: this process's) that receives its nftables changes
    (NFNLGRP_NFTABLES)."""
    sock: socket.socket = pyroute2_netns.create_socket(netns, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW,
                                                       proto=NETLINK_NETFILTER, flags=0)
    sock.bind((0, 0))
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> bytes:
    """Every event waiting, as one string of netlink messages (events lost to ENOBUFS do not matter here: the
    tables are read afresh anyway)."""
    return supervisor.drain(sock)[0]


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
    removed_at: float  # when the first event of the removal reached the observer (time.monotonic)
    restored_after: float  # seconds from then until both backstops were whole again
    xfrm_after: float | None  # ... the XFRM backstop alone (None: the removal did not touch it)
    nft_after: float | None  # ... ikectl's nftables table alone
    together: bool = False  # a removal and its restoration reached the observer in one burst: faster than it tells


@dataclass
class _Layer:
    """One backstop as the observer follows it."""

    whole: bool = True
    removed_at: float | None = None
    back_at: float | None = None
    together: bool = False

    def saw(self, arrived: float, broke: bool, whole: bool, back_at: float) -> None:
        """A burst that arrived at `arrived`: did it take the layer apart at some point (`broke`), is it whole
        after it (`whole`), and since when at the latest (`back_at`)."""
        if broke and self.removed_at is None:
            self.removed_at = arrived
        if self.removed_at is not None and whole and self.back_at is None and (broke or not self.whole):
            self.back_at, self.together = back_at, self.whole and back_at == arrived  # whole before it, too
        self.whole = whole


class Observer:
    """What the kernel says of both backstops, as its events arrive (in the process of the namespace it watches):
    the XFRM backstop followed policy by policy from its events (flush, delete, add), ikectl's nftables table
    read after each burst of events that touch it. Each change is dated when its burst arrived, before any
    decoding or reading: a busy reader makes a figure later by the time the reading takes, never by a queue."""

    def __init__(self) -> None:
        self.xfrm_events = event_socket(None, (Group.POLICY,))
        self.nft_events = nft_events(None)
        for sock in (self.xfrm_events, self.nft_events):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)  # a lost event would make a figure up
        self.nft = nft.Context()
        with XfrmClient() as client:
            self.xfrm_present = {p for p in map(_unindexed, client.policies()) if backstop.is_backstop(p)}
        if len(self.xfrm_present) != len(backstop.policies()) or self.nft_state() != nft.TableState.INTACT:
            raise AssertionError("the backstops were not whole before the removal")

    def nft_state(self) -> nft.TableState:
        accepted, listing, _ = self.nft.run(f"list table {nft.FAMILY} {nft.TABLE}", json_output=True)
        return nft.state_of(listing) if accepted else nft.TableState.ABSENT

    def observe(self, removal: list[str], within: float) -> Restoration:
        """Run `removal`; follow both backstops until they are whole again, or AssertionError after `within` s.
        The XFRM backstop is whole again at the arrival of the events that complete it. ikectl's table is read
        after a burst of events that touch it: whole again at the arrival of a burst that re-made it, or, when the
        read finds it whole without such a burst (re-made while the observer was reading), at the read's end."""
        proc = subprocess.Popen(removal, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        layers = {"xfrm": _Layer(), "nft": _Layer()}
        deadline = time.monotonic() + within + 30  # the removal's own start, under TCG, comes on top
        arrivals = _Arrivals([self.xfrm_events, self.nft_events])
        try:
            while time.monotonic() < deadline:
                for arrived, sock, data in arrivals.take(0.5):
                    if sock is self.xfrm_events:
                        broke, whole = self._follow_xfrm(data)
                        layers["xfrm"].saw(arrived, broke, whole, arrived)
                        continue
                    news = nft.table_events(data)
                    if news != NOTHING:
                        whole = self.nft_state() == nft.TableState.INTACT
                        layers["nft"].saw(arrived, news.removed, whole, arrived if news.added else time.monotonic())
                started = [layer.removed_at for layer in layers.values() if layer.removed_at is not None]
                if started and all(layer.whole for layer in layers.values()):
                    first = min(started)
                    after = {name: None if layer.back_at is None else layer.back_at - first
                             for name, layer in layers.items()}
                    return Restoration(first, max(t for t in after.values() if t is not None), after["xfrm"],
                                       after["nft"], any(layer.together for layer in layers.values()))
                if started and time.monotonic() - min(started) > within:
                    break
        finally:
            arrivals.stop()
            proc.wait(30)
        raise AssertionError(f"{' '.join(removal)}: " + ("nothing was removed" if not any(
            layer.removed_at for layer in layers.values()) else f"not whole again within {within:g} s"))

    def _follow_xfrm(self, data: bytes) -> tuple[bool, bool]:
        """Follow the XFRM backstop through these events, in order: (taken apart at some point, whole after)."""
        broke = False
        for event in events(data):
            if isinstance(event, Flushed) and event.what == "policies":
                self.xfrm_present.clear()
            elif isinstance(event, PolicyDeleted) and backstop.is_backstop(event.policy):
                self.xfrm_present.discard(_unindexed(event.policy))
            elif isinstance(event, PolicyAdded) and backstop.is_backstop(event.policy):
                self.xfrm_present.add(_unindexed(event.policy))
            broke = broke or len(self.xfrm_present) < len(backstop.policies())
        return broke, len(self.xfrm_present) == len(backstop.policies())


class _Arrivals:
    """The event sockets' datagrams, each dated when it arrived by a thread that does nothing else: decoding a
    burst of XFRM events through pyroute2 takes tens of milliseconds under TCG, and events that came meanwhile
    would have been dated after it."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets, self._queue = sockets, queue.SimpleQueue[tuple[float, socket.socket, bytes]]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for sock in select.select(self._sockets, [], [], 0.1)[0]:
                arrived = time.monotonic()
                try:
                    self._queue.put((arrived, sock, _drain_all(sock)))
                except AssertionError as exc:  # events lost: no figure
                    self.lost = exc
                    return

    lost: AssertionError | None = None

    def take(self, wait: float) -> list[tuple[float, socket.socket, bytes]]:
        """What arrived, oldest first: waits up to `wait` s for the first."""
        if self.lost is not None:
            raise self.lost
        try:
            taken = [self._queue.get(timeout=wait)]
        except queue.Empty:
            return []
        while not self._queue.empty():
            taken.append(self._queue.get())
        return taken

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


NOTHING = nft.TableEvents(removed=False, added=False)
SO_RCVBUFFORCE = 33


def _unindexed(policy: Policy) -> Policy:
    return replace(policy, index=0)


def _drain_all(sock: socket.socket) -> bytes:
    data, complete = supervisor.drain(sock)
    if not complete:
        raise AssertionError("the observer lost events (ENOBUFS): its figure would be made up")
    return data


def removed_and_restored(netns: str, removal: list[str], within: float = 10.0) -> Restoration:
    """Run `removal` in `netns` under an observer process of its own there (this module, run as a program),
    which does nothing else: a test process busy with a query stream delayed its own readings by seconds under
    TCG. AssertionError if the backstops are not whole again within `within` seconds of the removal."""
    proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "netns_tests.harness.tables",
                           json.dumps({"removal": removal, "within": within})],
                          capture_output=True, text=True, timeout=within + 120, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                             f"observer exited {proc.returncode}")
    return Restoration(**json.loads(proc.stdout))


def main(argv: list[str]) -> int:
    order = json.loads(argv[0])
    sys.setswitchinterval(0.0005)  # the dating thread must not wait 5 ms for its turn
    try:
        found = Observer().observe(order["removal"], order["within"])
    except AssertionError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(asdict(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
