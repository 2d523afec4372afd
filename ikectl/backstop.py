"""Trusted mode's backstop, in two independent kernel tables: XFRM policies of ikectl's own that block DNS which no
pluto policy claimed, and nftables' `inet ikectl` table (ikectl/nft.py) that drops DNS leaving without IPsec.

The XFRM policies sit in ikectl's priority band (see ikecommon.xfrm: larger numbers lose), so pluto's policies for
the trusted resolver (trap, hold, ESP) always win for its DNS, and everything else on port 53 (udp and tcp, IPv4
and IPv6, out and in) meets a block: before pluto starts, while it negotiates, after it dies, to a second
resolver, from a new address. DNS to a local stub on loopback stays allowed. The nftables table catches what an
XFRM policy of someone else's lets past ours (another IPsec daemon's pass policy outranks any priority of ours),
and holds while another program has flushed the XFRM table.
"""

from __future__ import annotations

from collections.abc import Iterable

from ikecommon import xfrm
from ikecommon.xfrm import OWNED_PRIORITY_MIN, Action, Direction, Policy, Selector

from . import nft
from .policies import BACKSTOP_BLOCK_PRIORITY

ALLOW_PRIORITY = OWNED_PRIORITY_MIN  # loopback stubs: wins over our blocks
BLOCK_PRIORITY = BACKSTOP_BLOCK_PRIORITY  # loses to every pluto policy and to our allows

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


def _key(policy: Policy) -> tuple[Selector, Direction, Action]:
    return policy.selector, policy.direction, policy.action


def is_backstop(policy: Policy) -> bool:
    """Is this one of the XFRM backstop's policies (whatever its index)?"""
    return policy.owned and _key(policy) in {_key(p) for p in policies()}


def missing(present: Iterable[Policy]) -> list[Policy]:
    """The XFRM backstop policies absent from `present` (the kernel's table)."""
    there = {_key(p) for p in present if p.owned}
    return [p for p in policies() if _key(p) not in there]


def install_xfrm(only: Iterable[Policy] | None = None, netns: str | None = None) -> None:
    """Install (or refresh) the XFRM half, or just the policies `only` names; idempotent."""
    with xfrm.XfrmClient(netns) as client:
        for policy in policies() if only is None else only:
            client.update_policy(policy)


def install() -> None:
    """Both halves, XFRM first (it protects from the moment its first block is in)."""
    install_xfrm()
    if nft.available():
        nft.install()


def installed(netns: str | None = None) -> list[Policy]:
    """The XFRM backstop policies present now (all of them once `install` has returned)."""
    wanted = {_key(p) for p in policies()}
    with xfrm.XfrmClient(netns) as client:
        return [p for p in client.policies() if p.owned and _key(p) in wanted]


def remove() -> None:
    """Both halves; what is already gone is fine."""
    with xfrm.XfrmClient() as client:
        client.flush_owned()
    nft.remove()
