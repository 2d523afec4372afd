"""The kernel's XFRM policies as ikectl reads them: whose each one is, and what it does to DNS. Pure functions over
ikecommon.xfrm.Policy; the planner, `status`, `doctor`, the supervisor's watch and the tests share them.

- ours: the backstop, in ikectl's priority band (ikecommon.xfrm.OWNED_PRIORITY_MIN and up);
- our pluto's kind: what pluto installs for a DNS conn to one resolver, per protocol (udp or tcp) and exact host:
  traps and SA policies (port 53), and its clear-fallback shunts, which libreswan 4.10 installs for the whole
  protocol (no port) at priority 0 and does not always take away (`expire_bare_shunts` forgets them, the kernel
  keeps them: measured here). For a resolver ikectl manages, such a policy is ours to keep or remove;
- anyone else's: every other policy. ikectl never edits those; `leaks` names the ones that defeat trusted mode.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from ipaddress import IPv4Network, IPv6Network

from ikecommon.xfrm import OWNED_PRIORITY_MIN, Action, Direction, Policy

from .config import Address

DNS_PROTOCOLS = (6, 17)
ANY_PROTOCOL = 0
BACKSTOP_BLOCK_PRIORITY = OWNED_PRIORITY_MIN + 0x10_0000  # ikectl/backstop.py; loses to every pluto policy


def _host(net: IPv4Network | IPv6Network) -> Address | None:
    return net.network_address if net.prefixlen == net.max_prefixlen else None


def _dns_port(port: int | None) -> bool:
    return port in (None, 0, 53)


def pluto_dns_peer(policy: Policy) -> Address | None:
    """The resolver a policy of our pluto's kind is for (out: its destination, in and fwd: its source), or None
    when the policy is not of that kind: ikectl's own, another protocol, another port, or not one host."""
    sel = policy.selector
    if policy.owned or sel.proto not in DNS_PROTOCOLS:
        return None
    # pluto's policies name both hosts: this one (the conn's left, or the client of an SA) and the resolver. A
    # policy from any source to a resolver is not pluto's, whoever installed it.
    if policy.direction == Direction.OUT and _dns_port(sel.dport) and _host(sel.src) is not None:
        return _host(sel.dst)
    if policy.direction in (Direction.IN, Direction.FWD) and _dns_port(sel.sport) and _host(sel.dst) is not None:
        return _host(sel.src)
    return None


def covered(policies: Iterable[Policy], resolver: Address, proto: int) -> bool:
    """Does pluto hold an outbound policy for DNS to `resolver` over `proto`: a trap, an SA's, or a shunt?"""
    return any(p.direction == Direction.OUT and p.selector.proto == proto and pluto_dns_peer(p) == resolver
               for p in policies)


def _reqids(policies: Iterable[Policy], resolver: Address, proto: int, direction: Direction) -> set[int]:
    return {t.reqid for p in policies if p.direction == direction and p.selector.proto == proto
            and pluto_dns_peer(p) == resolver for t in p.templates if t.reqid}


def unpaired_reqids(policies: Collection[Policy]) -> set[int]:
    """The reqids of pluto's outbound policies for DNS whose SA's forward policy is in but whose inbound policy is
    not: another program deleted it. pluto puts an SA's inbound and forward policies in together, and a trap (an
    outbound policy alone) has neither, so a trap is never one of these, whatever SA its reqid may share."""
    def named(direction: Direction) -> set[int]:
        return {t.reqid for p in policies if p.direction == direction and pluto_dns_peer(p) is not None
                for t in p.templates if t.reqid}
    return (named(Direction.OUT) & named(Direction.FWD)) - named(Direction.IN)


def inbound_lost(policies: Collection[Policy], resolver: Address, proto: int, live_reqids: Collection[int]) -> bool:
    """Does DNS to `resolver` over `proto` go out through a live SA (its outbound policy names the reqid of an SA in
    the kernel, `live_reqids`) whose inbound policy is gone while its forward policy is in? The SA is tunnel mode:
    the kernel then drops every decrypted answer (XfrmInNoPols) while the outbound policy looks whole, and pluto,
    which believes its policies are in, never puts it back."""
    outbound = _reqids(policies, resolver, proto, Direction.OUT)
    forward = _reqids(policies, resolver, proto, Direction.FWD)
    inbound = _reqids(policies, resolver, proto, Direction.IN)
    return any(r in live_reqids and r in forward and r not in inbound for r in outbound)


def clear_pass(policy: Policy) -> bool:
    """Lets matching packets out in clear: an outbound allow with nothing to go through."""
    return policy.direction == Direction.OUT and policy.action == Action.ALLOW and not policy.templates


def leftovers(policies: Iterable[Policy], resolvers: Collection[Address],
              keep: Callable[[Policy], bool] = lambda _: False) -> list[Policy]:
    """Policies of our pluto's kind for DNS with `resolvers` that `keep` does not claim, clear passes first (the
    order to delete them in: each one deleted is one less way out in clear)."""
    found = [p for p in policies if pluto_dns_peer(p) in resolvers and not keep(p)]
    return sorted(found, key=lambda p: not clear_pass(p))


def matches_dns(policy: Policy) -> bool:
    """Could an outbound udp/53 or tcp/53 packet match this policy's selector?"""
    sel = policy.selector
    return sel.proto in (ANY_PROTOCOL, *DNS_PROTOCOLS) and _dns_port(sel.dport if sel.proto else None)


def leaks(policies: Iterable[Policy]) -> list[Policy]:
    """Trusted mode's invariant, as the kernel's table shows it: policies (not ours) that let DNS leave in clear
    ahead of the backstop. Smaller priority numbers win, so anything below the backstop's block that matches
    port 53 and passes without a template is one; to the pinned resolver too, whose DNS goes only inside ESP."""
    return [p for p in policies if not p.owned and clear_pass(p) and matches_dns(p)
            and p.priority < BACKSTOP_BLOCK_PRIORITY]


def catching(policies: Iterable[Policy], resolver: Address) -> list[Policy]:
    """Another program's outbound policies that DNS to `resolver` can meet and that do not let it out in clear (a
    trap or a hold of another IPsec daemon, a block): what can hold it where ikectl expects an answer."""
    found = []
    for policy in policies:
        sel = policy.selector
        if (policy.owned or policy.direction != Direction.OUT or pluto_dns_peer(policy) is not None
                or clear_pass(policy) or not matches_dns(policy) or resolver not in sel.dst):
            continue
        found.append(policy)
    return found


def describe(policy: Policy) -> str:
    """One policy as `ip xfrm policy` would name it, for status lines and errors."""
    sel = policy.selector
    proto = {0: "any", 6: "tcp", 17: "udp"}.get(sel.proto, str(sel.proto))
    ports = "".join(f" {name} {port}" for name, port in (("sport", sel.sport), ("dport", sel.dport)) if port)
    what = "allow" if policy.action == Action.ALLOW else "block"
    via = " via ESP" if policy.templates else ""
    return (f"src {sel.src} dst {sel.dst} proto {proto}{ports} dir {policy.direction.name.lower()} "
            f"priority {policy.priority} {what}{via}")


# pluto's IPv6 neighbour-discovery bypasses: it installs them at start and leaves them at exit.

def is_nd_bypass(policy: Policy) -> bool:
    sel = policy.selector
    return (sel.proto == 58 and sel.sport in (135, 136) and policy.priority == 1 and not policy.templates
            and str(sel.src) == str(sel.dst) == "::/0")


def nd_bypass_key(policy: Policy) -> str:
    return f"{policy.selector.sport} {policy.direction.name}"


def nd_bypasses(policies: Iterable[Policy]) -> set[str]:
    return {nd_bypass_key(p) for p in policies if is_nd_bypass(p)}
