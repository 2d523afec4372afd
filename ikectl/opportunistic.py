"""Coffee-shop upkeep: which resolvers are in pluto's opportunistic group now, and putting them back later.

pluto 4.10 leaves two holes that break the coffee-shop promise (both seen in the VM):

- a resolver answers IKE but refuses the DNS-only Child SA: pluto keeps the instance's hold shunt and
  ignores later acquires as duplicates, so DNS is blackholed. ikectl takes the resolver out of the group
  (no policy: its DNS passes in clear) for `retry_after_s`, then puts it back and IKE is tried again;
- a resolver stops answering liveness checks (its IPsec was restarted and lost the SAs): pluto clears
  the instance but routes no trap again, so DNS passes in clear and IKE is never tried again. ikectl
  reloads the group after `retry_after_s`.

`upkeep` is called at the end of `ikectl up` and then every second by the supervisor. It reads only the
part of pluto's log written since a resolver was (re)admitted, so an old refusal is not acted on twice,
and of that only what the previous round did not read.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address
from typing import Any

from ikecommon import xfrm

from . import daemon, render
from .config import Address, Mode
from .errors import IkectlError
from .whack import Whack

OE_CONN = "private-or-clear"
GROUP_FILE = f"ipsec.d/policies/{OE_CONN}"
REFUSED = "the resolver refused the DNS-only Child SA"
LIVENESS = "the resolver stopped answering IKE liveness checks"


@dataclass(frozen=True)
class Exclusion:
    """A resolver out of the group, in clear, until `until` (seconds since the epoch)."""

    until: float
    reason: str


@dataclass(frozen=True)
class Upkeep:
    """What state.json records between calls."""

    excluded: dict[str, Exclusion] = field(default_factory=dict)
    log_offset: dict[str, int] = field(default_factory=dict)  # pluto's log size when each was (re)admitted
    lost_at: dict[str, float] = field(default_factory=dict)  # when a member's policies were found gone

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Upkeep:
        recorded = state.get("opportunistic") or {}
        return cls(excluded={a: Exclusion(**e) for a, e in recorded.get("excluded", {}).items()},
                   log_offset=dict(recorded.get("log_offset", {})), lost_at=dict(recorded.get("lost_at", {})))

    def to_state(self) -> dict[str, Any]:
        return {"excluded": {a: asdict(e) for a, e in self.excluded.items()}, "log_offset": self.log_offset,
                "lost_at": self.lost_at}


def _peer_pattern(address: str) -> re.Pattern[str]:
    escaped = re.escape(address)
    return re.compile(rf"\.\.\.{escaped}\b|\[{escaped}\]|#{escaped}/")


def refused_child(log: list[str], address: str) -> bool:
    """Is pluto's last word on the resolver at `address` a refused Child SA?"""
    return _last_word(log, address) == REFUSED


def liveness_failed(log: list[str], address: str) -> bool:
    return _last_word(log, address) == LIVENESS


def _last_word(log: list[str], address: str) -> str | None:
    peer = _peer_pattern(address)
    for line in reversed(log):
        if not peer.search(line):
            continue
        if "established Child SA" in line:
            return None
        if re.search(r"TS_UNACCEPTABLE|NO_PROPOSAL_CHOSEN", line):
            return REFUSED
        if "liveness action" in line:
            return LIVENESS
    return None


def upkeep(run: daemon.RunDir, state: dict[str, Any], retry_after_s: float, now: float) -> Upkeep:
    """Exclude resolvers that refused the Child SA, readmit those whose time is up, reload the group for
    members whose policies pluto dropped. Returns the record to keep in state.json.

    Each member's log offset moves past what was read, so a round reads only what pluto wrote since the last
    one: the supervisor calls this every second, and pluto's log grows for as long as it runs. Reading on
    from there gives the same answer as reading all of it since (re)admission: a refusal read once excludes
    the resolver at once, and what counts is pluto's last word on it."""
    record = Upkeep.from_state(state)
    members = [a for a in state["resolvers"] if a not in record.excluded]
    excluded, offsets, lost = dict(record.excluded), dict(record.log_offset), dict(record.lost_at)
    # From the earliest offset of all, members or not: an excluded resolver's offset stays where its refusal
    # was read, so while all are out a round reads the little pluto wrote since, not the whole log.
    start, log = run.read_log(min((offsets.get(a, 0) for a in state["resolvers"]), default=0))
    end = start + len(log)
    changed = False
    for address, exclusion in record.excluded.items():
        if exclusion.until <= now:
            del excluded[address]
            offsets[address] = end  # what pluto wrote about it before counts no more
            changed = True
    covered = {address for address, _ in policed()}
    for address in members:
        offset = offsets.get(address, 0)
        since = log[offset - start:] if start <= offset <= end else log  # else: a new log, pluto restarted
        if refused_child(since.decode(errors="replace").splitlines(), address):
            excluded[address] = Exclusion(until=now + retry_after_s, reason=REFUSED)
            changed = True
            continue
        offsets[address] = end  # read up to here; the next round goes on from it
        if ip_address(address) in covered:
            lost.pop(address, None)
        elif address not in lost:  # pluto dropped its policies (liveness): clear until the group reloads
            lost[address] = now
        elif now - lost[address] >= retry_after_s:
            lost.pop(address)
            changed = True
    if changed:
        admitted = tuple(ip_address(a) for a in state["resolvers"] if a not in excluded)
        write_group(run, admitted)
        reload(run, [a for a in excluded if a not in record.excluded])
    return Upkeep(excluded, offsets, lost)


def reason_for(state: dict[str, Any], address: str) -> str | None:
    """Why a resolver is in clear by ikectl's decision, for `status`."""
    exclusion = Upkeep.from_state(state).excluded.get(address)
    return exclusion.reason if exclusion else None


def write_group(run: daemon.RunDir, admitted: tuple[Address, ...]) -> None:
    content = render.environment().get_template("policies/private-or-clear.j2").render(
        profile=render.Profile(Mode.COFFEE_SHOP, opportunistic=admitted))
    render.write_tree({GROUP_FILE: content}, run.root)


def reload(run: daemon.RunDir, dropped: list[str]) -> None:
    """Reload the group (pluto routes traps for new lines and unroutes removed ones); make sure nothing of a
    dropped resolver stays behind, or its DNS would stay on hold."""
    whack = run.whack()
    route_group(whack)
    for address in dropped:
        for proto in (17, 6):
            with contextlib.suppress(IkectlError):  # gone with the group line already
                whack.delete(f"{OE_CONN}#{address}/{ip_address(address).max_prefixlen}-(0--{proto}--53)")


def route_group(whack: Whack) -> None:
    """Reload the group from its file and route the group conn: a trap per line."""
    whack.reread_groups()
    with contextlib.suppress(IkectlError):  # already routed: pluto says so
        whack.route(OE_CONN)


def policed() -> set[tuple[Address, int]]:
    """(resolver, protocol) of every outbound pluto policy for port 53 of one host: a trap, an SA's policy,
    or a shunt already decided."""
    with xfrm.XfrmClient() as client:
        return {(p.selector.dst.network_address, p.selector.proto) for p in client.policies()
                if p.direction == xfrm.Direction.OUT and not p.owned and p.selector.dport == 53
                and p.selector.dst.prefixlen == p.selector.dst.max_prefixlen}
