"""Trusted mode's first step, before anything else is looked up, rendered or even imported: both backstops in, and
pluto's policies for DNS to any resolver trusted mode does not use out. A small module on purpose: the
NetworkManager hook's time from its call to protection is mostly Python's imports (docs/performance.md), so the
hook runs this before it loads the planner and the executor, and `ikectl up` runs it before it waits for the
record's lock. The planner (ikectl/plan.py) makes the same decision with the same functions under the lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ikecommon import xfrm

from . import backstop, nft, policies
from .config import Address
from .observe import process
from .state import RunState, StateStore


def managed(resolvers: Iterable[Address], record: RunState | None) -> frozenset[Address]:
    """Every resolver whose DNS ikectl handles now or has handled since the first `up`."""
    earlier = (record.managed | set(record.resolvers)) if record is not None else frozenset()
    return frozenset(resolvers) | earlier


def kept(pinned: tuple[Address, ...], run_dir: Path, record: RunState | None) -> frozenset[Address]:
    """The pinned resolver's own policies (at each of its addresses) stay when trusted mode already holds it: they
    are the trusted conns'."""
    same = (record is not None and record.run_dir == run_dir and record.mode.value == "trusted"
            and record.trusted == pinned and record.blocked is None)
    return frozenset(pinned) if same else frozenset()


def doomed(table: Iterable[xfrm.Policy], everyone: frozenset[Address], keep: frozenset[Address]) -> list[xfrm.Policy]:
    """Anything of pluto's kind for a managed resolver but the kept ones, and clear passes to those too (an
    opportunistic trap or NULL-authenticated SA to the pinned resolver would carry its DNS unauthenticated), the
    ways out in clear first."""
    table = list(table)
    return (policies.leftovers(table, everyone - keep)
            + [p for p in table if policies.clear_pass(p) and policies.pluto_dns_peer(p) in keep])


# --- the marker of a trusted `up` under way ---
# protect.first leaves it before it protects; the trusted `up` that wrote it removes it once the record says
# trusted (applied, or failed closed). While it names a live process, a coffee-shop `up` that holds the lock does
# not lift the backstops the waiting trusted `up` just put in; once that process is gone without removing it (an
# interrupted trusted `up`), the supervisor keeps the backstops in place until the next `up` or `down`.

def marker(store: StateStore) -> Path:
    return store.root / f"net-{store.netns}.protect"


def pending(store: StateStore) -> tuple[int, bool] | None:
    """(pid, alive) of the trusted `up` that left the marker, if there is one."""
    try:
        pid = int(marker(store).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid, process(pid) is not None


def trusted_up_running(store: StateStore) -> bool:
    """Is a trusted `up` under way now (its marker names a live process)?"""
    found = pending(store)
    return found is not None and found[1]


def done(store: StateStore, *, whoever: bool = False) -> None:
    """Remove the marker when it is this process's, or its writer is gone (or `whoever`: `down`)."""
    found = pending(store)
    if found is not None and (whoever or found[0] == os.getpid() or not found[1]):
        marker(store).unlink(missing_ok=True)


def first(pinned: tuple[Address, ...], run_dir: Path, record: RunState | None, store: StateStore) -> None:
    """Both backstops, then the doomed policies out. The nftables table goes first: alone it drops every port-53
    packet that leaves without IPsec, whatever the XFRM tables hold, and it needs no pyroute2, whose import is
    most of the NetworkManager hook's time to protection (docs/performance.md). The doomed policies are looked up
    before the XFRM backstop goes in, so that once it is complete only the deletes remain (in the VM, 4 to 6
    queries per switch left in clear when they were looked up later). Idempotent; nothing of it is ever undone."""
    store.check()
    marker(store).write_text(f"{os.getpid()}\n")
    refused = None
    if nft.available():
        try:
            nft.install()
        except nft.NftError as exc:  # the XFRM backstop goes in all the same; then the refusal is raised
            refused = exc
    with xfrm.XfrmClient() as client:
        found = doomed(client.policies(), managed(pinned, record), kept(pinned, run_dir, record))
        for policy in backstop.policies():
            client.update_policy(policy)
        for policy in found:
            try:
                client.delete_policy(policy)
            except xfrm.NotFound:
                continue  # gone meanwhile
    if refused is not None:
        raise refused
    hold_up_guard()


_UP_GUARD: list[nft.Guard] = []  # this process's, held until it exits


def hold_up_guard() -> None:
    """The guard table again, owned by this process (a trusted `up`, the NetworkManager hook) for as long as it
    runs: until the supervisor holds its own, `ip xfrm policy flush; nft flush ruleset` together would leave no
    backstop at all (a first `up` has no supervisor until its end, and a new one takes its guard a moment after
    it starts). Best effort: without nftables the XFRM backstop is all there is, as `up` says."""
    if _UP_GUARD or not nft.available():
        return
    try:
        _UP_GUARD.append(nft.Guard(nft.UP_GUARD.format(pid=os.getpid())))
    except nft.NftError:
        return
