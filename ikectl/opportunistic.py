"""Coffee-shop upkeep: which resolvers are in pluto's opportunistic groups now, and putting them back later.

pluto 4.10 leaves holes that break the coffee-shop promise (seen in the VM and on this host):

- a resolver answers IKE but refuses the DNS-only Child SA (or the kernel refuses the SA: `Add SA ... Function not
  implemented`): pluto keeps the instance's hold shunt and ignores later acquires as duplicates, so DNS is
  blackholed. ikectl takes the resolver out of the group (no policy: its DNS passes in clear) for
  `retry_after_s`, then puts it back and IKE is tried again;
- a resolver stops answering liveness checks (its IPsec was restarted and lost the SAs): pluto clears the
  instance but routes no trap again, so DNS passes in clear and IKE is never tried again. ikectl routes the group
  again after `retry_after_s`;
- a resolver without IKE gets a clear-fallback shunt, which libreswan installs for the whole protocol at
  priority 0 and, when it expires after `shuntlifetime`, forgets without deleting from the kernel: the pass
  policy outranks the trap for ever, and IKE is never tried again. ikectl deletes it once it is `retry_after_s`
  old and routes the group again, so the next query tries IKE;
- a resolver answers IKE_SA_INIT but its IKE_AUTH answer comes after `ike_timeout_ms` (a loaded resolver, a long
  path): pluto gives up and passes DNS in clear, while the resolver completed the exchange and now requires ESP
  from this client and sends its answers in ESP. The clear fallback is answered by nothing (measured in the VM:
  12 of 12 queries over 24 s), until the resolver drops its side. ikectl tries IKE again after 1 s, then 2, 4 ...
  while the answers keep coming late (up to `retry_after_s`): the new SA replaces the resolver's half.

`upkeep` is called at the end of `ikectl up` and then every second by the supervisor. It reads only the part of
pluto's log written since a resolver was (re)admitted, so an old refusal is not acted on twice, and of that only
what the previous round did not read.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from ipaddress import ip_address

from ikecommon import xfrm

from . import daemon, policies, render, routes
from .config import Address
from .errors import IkectlError
from .plan import OE_CONNS
from .state import Exclusion, RunState, Upkeep
from .whack import Whack

REFUSED = "the resolver refused the DNS-only Child SA"
ESP_REFUSED = "the kernel refused the ESP SA (Function not implemented): no ESP in this kernel"
LIVENESS = "the resolver stopped answering IKE liveness checks"
LATE_AUTH = "the resolver answered IKE, but its IKE_AUTH answer came after ike_timeout_ms"
_ESTABLISHED = "established"


def _peer_pattern(address: str) -> re.Pattern[str]:
    escaped = re.escape(address)
    return re.compile(rf"\.\.\.{escaped}\b|\[{escaped}\]|#{escaped}/")


def last_word(log: list[str], address: str) -> str | None:
    """pluto's last word on the resolver at `address`: a refused Child SA, an SA the kernel refused, a failed
    liveness check, an IKE_AUTH answer that came too late, or None (nothing, or an established Child SA after
    them)."""
    word = _last_event(log, address)
    return None if word == _ESTABLISHED else word


def _last_event(log: list[str], address: str) -> str | None:
    peer = _peer_pattern(address)
    for line in reversed(log):
        if not peer.search(line):
            continue
        if "established Child SA" in line:
            return _ESTABLISHED
        if re.search(r"Add SA .*(?:Function not implemented|errno 38)", line):
            return ESP_REFUSED
        if re.search(r"TS_UNACCEPTABLE|NO_PROPOSAL_CHOSEN", line):
            return REFUSED
        if "liveness action" in line:
            return LIVENESS
        if "no acceptable response to our first encrypted message" in line:  # STATE_V2_PARENT_I2 timed out
            return LATE_AUTH
    return None


def upkeep(run: daemon.RunDir, state: RunState, kernel: Iterable[xfrm.Policy], now: float,
           loaded_at: int | None = None) -> Upkeep:
    """Exclude resolvers whose Child SA failed, readmit those whose time is up, route the groups again for
    members whose policies pluto dropped or whose clear fallback outlived `retry_after_s`. Returns the record to
    keep.

    Each member's log offset moves past what was read, so a round reads only what pluto wrote since the last
    one: the supervisor calls this every second, and pluto's log grows for as long as it runs.

    `loaded_at` (from `up`): where pluto's log stood when `up` loaded the groups. A resolver whose exclusion ran
    out was put back by `up` itself and negotiated with since, so its log counts from there: a refusal of `up`'s
    own negotiation excludes it again. Counted from the end of the log instead, that refusal was skipped, and the
    resolver stayed in the group while pluto held its DNS (an instance with an IKE SA and no Child SA: every
    later ACQUIRE ignored as a duplicate) and logged nothing more (the walk, seed 422190952)."""
    record = state.upkeep
    retry = float(state.retry_after_s)
    in_groups = tuple(a for a in state.resolvers if str(a) not in state.unprotected)  # excluded or not
    excluded, offsets = dict(record.excluded), dict(record.log_offset)
    lost, clear_since, late = dict(record.lost_at), dict(record.clear_since), dict(record.late_auth)
    readmit = [address for address, exclusion in record.excluded.items() if exclusion.until <= now]
    for address in readmit:
        del excluded[address]
        if loaded_at is not None:
            offsets[address] = loaded_at
    # From the earliest offset of all, members or not: an excluded resolver's offset stays where its refusal
    # was read, so while all are out a round reads the little pluto wrote since, not the whole log.
    start, log = run.read_log(min((offsets.get(str(a), 0) for a in state.resolvers), default=0))
    end = start + len(log)
    if loaded_at is None:
        offsets.update(dict.fromkeys(readmit, end))  # what pluto wrote about it before counts no more
    readmitted = bool(readmit)
    table = list(kernel)
    stale_passes: list[xfrm.Policy] = []
    reroute = False
    for resolver in in_groups:
        address = str(resolver)
        if address in excluded:
            continue
        offset = offsets.get(address, 0)
        since = log[offset - start:] if start <= offset <= end else log  # else: a new log, pluto restarted
        event = _last_event(since.decode(errors="replace").splitlines(), address)
        failed = None if event == _ESTABLISHED else event
        if event == _ESTABLISHED:
            late.pop(address, None)
        elif event == LATE_AUTH:
            late[address] = late.get(address, 0) + 1
        if failed in (REFUSED, ESP_REFUSED):
            excluded[address] = Exclusion(until=now + retry, reason=failed)
            continue
        offsets[address] = end  # read up to here; the next round goes on from it
        passes = _expired_clear(table, resolver, clear_since, now, clear_retry_s(retry, late.get(address, 0)))
        stale_passes += passes
        reroute = _lost(table, resolver, lost, now, retry, dropped=failed == LIVENESS) or bool(passes) or reroute
    dropped = [ip_address(a) for a in excluded if a not in record.excluded or a in readmit]  # excluded now
    members = tuple(a for a in in_groups if str(a) not in excluded)
    if readmitted or dropped:
        write_groups(run, state, members)
    _delete(stale_passes)
    if readmitted or dropped or reroute:
        reload(run, members, dropped)
    return Upkeep(excluded, offsets, lost, clear_since, late)


def clear_retry_s(retry_after_s: float, late_answers: int) -> float:
    """How long a clear fallback stands before IKE is tried again. After IKE_AUTH answers that came too late the
    resolver most likely holds an SA that drops this client's clear DNS: try again soon, backing off (1 s, 2,
    4 ...) while the answers keep coming late, so a resolver that is slow for good is not asked every second."""
    if late_answers <= 0:
        return retry_after_s
    return min(retry_after_s, 2.0 ** min(late_answers - 1, 16))


def _expired_clear(table: list[xfrm.Policy], resolver: Address, clear_since: dict[str, float], now: float,
                   retry: float) -> list[xfrm.Policy]:
    """The resolver's clear-fallback policies once they are `retry` old (to delete: IKE is tried again)."""
    address = str(resolver)
    passes = [p for p in table if policies.pluto_dns_peer(p) == resolver and policies.clear_pass(p)]
    if not passes:
        clear_since.pop(address, None)
        return []
    if now - clear_since.setdefault(address, now) < retry:
        return []
    clear_since.pop(address)
    return passes


def _lost(table: list[xfrm.Policy], resolver: Address, lost: dict[str, float], now: float, retry: float,
          dropped: bool) -> bool:
    """Track a member whose policies pluto dropped itself (`dropped`: its liveness check just failed): True when
    its group is due to be routed again. Not sooner: pluto 4.10 keeps the negotiation shunt of an opportunistic
    SA it was told to start (`up` does) after the SA is up, and ignores every ACQUIRE for that pair while it does:
    a trap put back at once held DNS (measured in the VM). Policies another program removed are the supervisor's
    (plan.unrouted), which loads the group again within seconds."""
    address = str(resolver)
    if all(policies.covered(table, resolver, proto) for proto in (6, 17)):
        lost.pop(address, None)
    elif address in lost:
        if now - lost[address] >= retry:
            lost.pop(address)
            return True
    elif dropped:  # clear until the group is routed again
        lost[address] = now
    return False


def _delete(found: list[xfrm.Policy]) -> None:
    if not found:
        return
    with xfrm.XfrmClient() as client:
        for policy in found:
            with contextlib.suppress(xfrm.KernelRefused):  # gone meanwhile
                client.delete_policy(policy)


def retry_at(state: RunState, address: str) -> float | None:
    """When IKE is tried again with a resolver in its clear fallback (seconds since the epoch), if it is in one."""
    since = state.upkeep.clear_since.get(address)
    late = state.upkeep.late_auth.get(address, 0)
    return since + clear_retry_s(state.retry_after_s, late) if since is not None else None


def moved_groups(run: daemon.RunDir, members: Iterable[Address]) -> dict[str, tuple[Address, Address]]:
    """The groups whose source (the `left` that `up` rendered) is not the address this host now sends from to
    their members, as group -> (was, now). pluto drops a group whose source went and cannot load it again, and
    traps for an old source catch nothing: DNS to those members passes in clear until the next `up` (the
    NetworkManager hook runs it) renders the groups from the new address."""
    sources = _sources(run)
    found: dict[str, tuple[Address, Address]] = {}
    for member in members:
        was, now = sources.get(member.version), routes.source_address(member)
        if was is not None and now is not None and now != was:
            found[OE_CONNS[member.version]] = (was, now)
    return found


def write_groups(run: daemon.RunDir, state: RunState, members: tuple[Address, ...]) -> None:
    """The group files for these members, each family's left as `up` rendered it."""
    profile = render.Profile(state.mode, opportunistic=members, sources=_sources(run))
    files = {f"ipsec.d/policies/{name}": "" for name in OE_CONNS.values()}
    render.write_tree(files | render.group_files(profile.groups()), run.root)


def _sources(run: daemon.RunDir) -> dict[int, Address]:
    """The group conns' left addresses in the tree on disk (what `up` rendered)."""
    try:
        text = run.conf.read_text()
    except OSError:
        return {}
    found: dict[int, Address] = {}
    for family, name in OE_CONNS.items():
        match = re.search(rf"^conn {re.escape(name)}\n\tleft=(\S+)$", text, re.M)
        if match:
            with contextlib.suppress(ValueError):
                found[family] = ip_address(match.group(1))
    return found


def reload(run: daemon.RunDir, members: tuple[Address, ...], dropped: list[Address]) -> None:
    """Reload the groups (pluto routes traps for new lines and unroutes removed ones); make sure nothing of a
    dropped resolver stays behind, or its DNS would stay on hold."""
    whack = run.whack()
    route_groups(whack, members + tuple(dropped))
    for address in dropped:
        for proto in (17, 6):
            with contextlib.suppress(IkectlError):  # gone with the group line already
                whack.delete(f"{OE_CONNS[address.version]}#{address}/{address.max_prefixlen}-(0--{proto}--53)")


def route_groups(whack: Whack, resolvers: Iterable[Address]) -> None:
    """Reload the groups from their files and route each group conn: a trap per line. Routing is what puts
    traps back; a reread alone does not (measured)."""
    whack.reread_groups()
    for name in dict.fromkeys(OE_CONNS[a.version] for a in resolvers):
        with contextlib.suppress(IkectlError):  # already routed, or the group emptied: pluto says so
            whack.route(name)
