"""Choosing from the peer's offers: IKE and ESP proposals (RFC 7296 2.7, 3.3.6) and traffic selectors (2.9).

Pure functions over decoded payloads and policy; the state machine calls them. Offers are read as menus: a proposal
lists one or more transforms of each type and the responder picks one of each. A proposal with a transform type that
does not belong to its protocol, or without a mandatory type, is not acceptable (3.3.6); a transform with an
attribute we do not understand is left out of the menu.

The responder side (`select_*`, `narrow_*`) raises NoProposalChosen, InvalidKePayload or TsUnacceptable; the
initiator side (`accept_*`, `check_*`) checks that a response picked something we offered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from .config import DnsSelectors
from .constants import DhGroup, EsnId, IntegId, ProtocolId, TransformAttributeType, TransformType
from .crypto import ChildSuite, IkeSuite
from .errors import InvalidKePayload, NoProposalChosen, TsUnacceptable
from .payloads import Address, AnyTrafficSelector, Proposal, SecurityAssociation, TrafficSelector

MAX_PROPOSALS = 255  # the Proposal Num field is one octet; more cannot be numbered (RFC 7296 3.3.1)
MAX_SELECTORS = 32  # per side, proposed and narrowed: DNS needs a handful, and the answer must stay encodable

_IKE_TYPES = frozenset({TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH})
_ESP_TYPES = frozenset({TransformType.ENCR, TransformType.INTEG, TransformType.DH, TransformType.ESN})

Menu = dict[int, set[tuple[int, int | None]]]
"""transform type -> {(transform id, key length)} offered in one proposal."""


def _menu(proposal: Proposal, allowed_types: frozenset[int]) -> Menu | None:
    """The transforms of `proposal` by type, or None when a transform type does not belong to the protocol."""
    menu: Menu = {}
    for transform in proposal.transforms:
        if transform.type not in allowed_types:
            return None
        if any(attr.type != TransformAttributeType.KEY_LENGTH or not isinstance(attr.value, int)
               for attr in transform.attributes):
            continue  # an attribute we do not know: this transform is not on the menu (3.3.6)
        menu.setdefault(transform.type, set()).add((transform.id, transform.key_length))
    return menu


def _integ_offered(menu: Menu, integ_id: int) -> bool:
    offered = menu.get(TransformType.INTEG)
    if integ_id == IntegId.NONE:  # an AEAD cipher: no integrity transform, or NONE offered
        return not offered or (IntegId.NONE, None) in offered
    return offered is not None and (integ_id, None) in offered


def _ike_offers(menu: Menu, suite: IkeSuite) -> bool:
    return ((suite.encr_id, suite.key_length) in menu.get(TransformType.ENCR, ())
            and (suite.prf_id, None) in menu.get(TransformType.PRF, ())
            and _integ_offered(menu, suite.integ_id)
            and (suite.dh_group, None) in menu.get(TransformType.DH, ()))


def select_ike_suite(sa: SecurityAssociation, accepted: Sequence[IkeSuite], *, ke_group: int,
                     spi_size: int) -> tuple[Proposal, IkeSuite]:
    """The peer's IKE proposal we take and the suite we pick from it (IKE_SA_INIT: `spi_size` 0; IKE SA rekey: 8).
    Proposals are taken in the peer's order, suites in ours; a suite whose group matches the peer's KE payload is
    preferred, so that INVALID_KE_PAYLOAD (naming the group we want) is sent only when no such suite is
    acceptable."""
    first: tuple[Proposal, IkeSuite] | None = None
    for proposal in sa.proposals[:MAX_PROPOSALS]:
        if proposal.protocol != ProtocolId.IKE or len(proposal.spi) != spi_size:
            continue
        if spi_size and not any(proposal.spi):
            continue
        menu = _menu(proposal, _IKE_TYPES)
        if menu is None:
            continue
        for suite in accepted:
            if _ike_offers(menu, suite):
                if suite.dh_group == ke_group:
                    return proposal, suite
                first = first or (proposal, suite)
    if first is None:
        raise NoProposalChosen("SA: no acceptable IKE proposal")
    raise InvalidKePayload(f"KE: group {ke_group}, the chosen proposal needs group {first[1].dh_group}",
                           group=first[1].dh_group)


def _esp_offers(menu: Menu, suite: ChildSuite, *, with_dh: bool) -> bool:
    esn = EsnId.ESN if suite.esn else EsnId.NO_ESN
    if not ((suite.encr_id, suite.key_length) in menu.get(TransformType.ENCR, ())
            and _integ_offered(menu, suite.integ_id)
            and (esn, None) in menu.get(TransformType.ESN, ())):
        return False
    if not with_dh:
        return True
    groups = menu.get(TransformType.DH) or {(DhGroup.NONE, None)}
    return (suite.dh_group, None) in groups


def select_child_suite(sa: SecurityAssociation, accepted: Sequence[ChildSuite], *,
                       ke_group: int | None, in_ike_auth: bool) -> tuple[Proposal, ChildSuite]:
    """The peer's ESP proposal we take and the suite we pick from it.

    In IKE_AUTH there is no key exchange for the Child SA (RFC 7296 1.2): Diffie-Hellman transforms are ignored and
    the suite has no group. In CREATE_CHILD_SA a suite with the group of the peer's KE payload comes first, then one
    without PFS; otherwise INVALID_KE_PAYLOAD names the group of the first acceptable suite."""
    with_group: tuple[Proposal, ChildSuite] | None = None
    without_group: tuple[Proposal, ChildSuite] | None = None
    other: tuple[Proposal, ChildSuite] | None = None
    for proposal in sa.proposals[:MAX_PROPOSALS]:
        if proposal.protocol != ProtocolId.ESP or len(proposal.spi) != 4 or not any(proposal.spi):
            continue
        menu = _menu(proposal, _ESP_TYPES)
        if menu is None or TransformType.ENCR not in menu or TransformType.ESN not in menu:
            continue
        for suite in accepted:
            if in_ike_auth:
                if _esp_offers(menu, suite, with_dh=False):
                    return proposal, dataclasses.replace(suite, dh_group=DhGroup.NONE)
                continue
            if not _esp_offers(menu, suite, with_dh=True):
                continue
            if ke_group is not None and suite.dh_group == ke_group:
                with_group = with_group or (proposal, suite)
            elif suite.dh_group == DhGroup.NONE:
                without_group = without_group or (proposal, suite)
            else:
                other = other or (proposal, suite)
    choice = with_group or without_group
    if choice is not None:
        return choice
    if other is None:
        raise NoProposalChosen("SA: no acceptable ESP proposal")
    raise InvalidKePayload(f"KE: group {ke_group}, the chosen ESP proposal needs group {other[1].dh_group}",
                           group=other[1].dh_group)


# --- the initiator's side of proposals ---

def offer_ike(suites: Sequence[IkeSuite], spi: bytes = b"") -> SecurityAssociation:
    """One proposal per suite, numbered from 1 in preference order."""
    return SecurityAssociation(tuple(Proposal(n, ProtocolId.IKE, spi, suite.transforms())
                                     for n, suite in enumerate(suites, 1)))


def offer_esp(suites: Sequence[ChildSuite], spi: bytes, *, in_ike_auth: bool) -> SecurityAssociation:
    """One proposal per suite; in IKE_AUTH without Diffie-Hellman transforms (RFC 7296 1.2), duplicates dropped."""
    return SecurityAssociation(tuple(Proposal(n, ProtocolId.ESP, spi, suite.transforms())
                                     for n, suite in enumerate(esp_offer_suites(suites, in_ike_auth=in_ike_auth), 1)))


def esp_offer_suites(suites: Sequence[ChildSuite], *, in_ike_auth: bool) -> tuple[ChildSuite, ...]:
    out: list[ChildSuite] = []
    for suite in suites:
        offered = dataclasses.replace(suite, dh_group=DhGroup.NONE) if in_ike_auth else suite
        if offered not in out:
            out.append(offered)
    return tuple(out)


def _single_choice(sa: SecurityAssociation, what: str) -> Proposal:
    if len(sa.proposals) != 1:
        raise NoProposalChosen(f"SA: the response carries {len(sa.proposals)} {what} proposals, not one")
    return sa.proposals[0]


def accept_ike_choice(sa: SecurityAssociation, offered: Sequence[IkeSuite], *, spi_size: int) -> tuple[bytes, IkeSuite]:
    """The responder's chosen IKE proposal must be exactly one we offered (number and transforms): its SPI and
    suite."""
    proposal = _single_choice(sa, "IKE")
    suite = IkeSuite.from_proposal(proposal)
    if len(proposal.spi) != spi_size or not 1 <= proposal.number <= len(offered) \
            or offered[proposal.number - 1] != suite:
        raise NoProposalChosen(f"SA: proposal {proposal.number} is not one we offered")
    return proposal.spi, suite


def accept_esp_choice(sa: SecurityAssociation, offered: Sequence[ChildSuite]) -> tuple[bytes, ChildSuite]:
    """The responder's chosen ESP proposal must be one we offered (`offered` as `esp_offer_suites` gave them)."""
    proposal = _single_choice(sa, "ESP")
    suite = ChildSuite.from_proposal(proposal)
    if len(proposal.spi) != 4 or not 1 <= proposal.number <= len(offered) or offered[proposal.number - 1] != suite:
        raise NoProposalChosen(f"SA: ESP proposal {proposal.number} is not one we offered")
    return proposal.spi, suite


# --- traffic selectors ---

def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The traffic both selectors cover, or None. IP protocol 0 means any protocol."""
    family = type(a.start_address)
    if not all(isinstance(x, family) for x in (a.end_address, b.start_address, b.end_address)):
        return None
    if a.protocol and b.protocol and a.protocol != b.protocol:
        return None
    start = max(int(a.start_address), int(b.start_address))
    end = min(int(a.end_address), int(b.end_address))
    low, high = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start > end or low > high:
        return None
    return TrafficSelector(family(start), family(end), a.protocol or b.protocol, low, high)


def covers(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    """Whether `outer` contains all the traffic of `inner`."""
    return intersect(outer, inner) == inner


def _add(out: list[TrafficSelector], ts: TrafficSelector | None) -> None:
    if ts is not None and ts not in out:
        out.append(ts)


def _plain(selectors: Iterable[AnyTrafficSelector]) -> list[TrafficSelector]:
    """Address-range selectors; other TS types (e.g. security labels) are not ours to accept."""
    return [ts for ts in selectors if isinstance(ts, TrafficSelector)]


def narrow_to_dns(tsi: Sequence[AnyTrafficSelector], tsr: Sequence[AnyTrafficSelector], dns: DnsSelectors,
                  peer_address: Address, *, peer_behind_nat: bool) -> tuple[tuple[TrafficSelector, ...],
                                                                           tuple[TrafficSelector, ...]]:
    """Narrow the initiator's selectors (RFC 7296 2.9) to DNS: our side (TSr) to `dns` (our addresses, udp/53 and
    tcp/53), the initiator's side (TSi) to its own address, any port, with the protocols left on our side.

    Behind a NAT the initiator's inner address is not the one IKE came from; its own single-address selectors are
    taken then, never a range. Nothing left on either side, or more than MAX_SELECTORS proposed or left on one side,
    is TS_UNACCEPTABLE."""
    if len(tsi) > MAX_SELECTORS or len(tsr) > MAX_SELECTORS:
        raise TsUnacceptable(f"TS: more than {MAX_SELECTORS} selectors proposed on one side")
    narrowed_r: list[TrafficSelector] = []
    for proposed in _plain(tsr):
        for allowed in dns.selectors():
            _add(narrowed_r, intersect(proposed, allowed))
    if not narrowed_r:
        raise TsUnacceptable("TSr: nothing in the initiator's selectors is DNS to this resolver")
    protocols = list(dict.fromkeys(ts.protocol for ts in narrowed_r))  # in our order: udp first
    proposed_i = _plain(tsi)
    if peer_behind_nat:
        hosts = [ts.start_address for ts in proposed_i if ts.start_address == ts.end_address]
    else:
        hosts = [peer_address]
    narrowed_i: list[TrafficSelector] = []
    for proposed in proposed_i:
        for host in hosts:
            for protocol in protocols:
                _add(narrowed_i, intersect(proposed, TrafficSelector(host, host, protocol)))
    if not narrowed_i:
        raise TsUnacceptable("TSi: the initiator's selectors do not include its own address")
    kept = {ts.protocol for ts in narrowed_i}  # both sides carry the same protocols
    narrowed_r = [ts for ts in narrowed_r if ts.protocol in kept]
    if len(narrowed_i) > MAX_SELECTORS or len(narrowed_r) > MAX_SELECTORS:
        raise TsUnacceptable(f"TS: more than {MAX_SELECTORS} selectors would be left on one side")
    return tuple(narrowed_i), tuple(narrowed_r)


def check_narrowed(proposed: Sequence[TrafficSelector], answered: Sequence[AnyTrafficSelector], side: str) -> (
        tuple[TrafficSelector, ...]):
    """The initiator's check of a response: every selector answered is within one we proposed."""
    plain = _plain(answered)
    if not plain or len(plain) != len(answered):
        raise TsUnacceptable(f"{side}: the response has no usable traffic selectors")
    for ts in plain:
        if not any(covers(outer, ts) for outer in proposed):
            raise TsUnacceptable(f"{side}: {ts} is wider than what was proposed")
    return tuple(plain)
