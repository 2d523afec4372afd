"""Trusted mode's backstop: XFRM policies of ikectl's own that block DNS which no pluto policy claimed.

They sit in ikectl's priority band (see ikecommon.xfrm: larger numbers lose), so pluto's policies for the
trusted resolver (trap, hold, ESP) always win for its DNS, and everything else on port 53 (udp and tcp,
IPv4 and IPv6, out and in) meets a block: before pluto starts, while it negotiates, after it dies, to a
second resolver, from a new address. DNS to a local stub on loopback stays allowed.
"""

from __future__ import annotations

from ikecommon import xfrm
from ikecommon.xfrm import OWNED_PRIORITY_MIN, Action, Direction, Policy, Selector

ALLOW_PRIORITY = OWNED_PRIORITY_MIN  # loopback stubs: wins over our blocks
BLOCK_PRIORITY = OWNED_PRIORITY_MIN + 0x10_0000  # loses to every pluto policy and to our allows

_ANY = {4: "0.0.0.0/0", 6: "::/0"}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


def policies() -> list[Policy]:
    found = []
    for version in (4, 6):
        for proto in ("udp", "tcp"):
            for net, action, priority in ((_LOOPBACK[version], Action.ALLOW, ALLOW_PRIORITY),
                                          (_ANY[version], Action.BLOCK, BLOCK_PRIORITY)):
                found.append(Policy(Selector.of(_ANY[version], net, proto, dport=53), Direction.OUT, priority,
                                    action))
                found.append(Policy(Selector.of(net, _ANY[version], proto, sport=53), Direction.IN, priority,
                                    action))
    return found


def install(netns: str | None = None) -> list[Policy]:
    """Install (or refresh) the backstop; idempotent."""
    wanted = policies()
    with xfrm.XfrmClient(netns) as client:
        for policy in wanted:
            client.update_policy(policy)
    return wanted


def installed(netns: str | None = None) -> list[Policy]:
    """The backstop policies present now (all of them once `install` has returned)."""
    wanted = {(p.selector, p.direction, p.action) for p in policies()}
    with xfrm.XfrmClient(netns) as client:
        return [p for p in client.policies() if p.owned and (p.selector, p.direction, p.action) in wanted]


def lets_dns_past(policy: Policy, *, in_clear_only: bool = True) -> bool:
    """A policy not ikectl's that DNS meets before the backstop (smaller priority numbers win): pluto's bare
    pass shunt, which sends it in clear, or with `in_clear_only=False` its trap and ESP policies too. udp
    or tcp to port 53, or to any port: libreswan 4.10 installs coffee-shop's clear-fallback shunts for the
    whole protocol, at priority 0 (seen in the VM)."""
    sel = policy.selector
    return (not policy.owned and policy.action == Action.ALLOW and policy.direction == Direction.OUT
            and (not in_clear_only or not policy.templates) and sel.proto in (6, 17) and sel.dport in (None, 0, 53))
