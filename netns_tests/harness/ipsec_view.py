"""Read-only views of what IPsec did, for reports: kernel SAs (through ikectl's XFRM layer) and pluto's
IKE SAs (from its log). Key material is never kept."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ikecommon.xfrm import SaInfo, XfrmClient

from .topology import Host


def child_sas(host: Host) -> list[SaInfo]:
    """The host's ESP SAs through ikectl's XFRM layer, larval (ACQUIRE) states left out, keys dropped."""
    with XfrmClient(host.netns) as xfrm:
        return [sa for sa in xfrm.sas() if not sa.larval]


@dataclass(frozen=True)
class IkeSa:
    peer: str
    auth: str  # how pluto authenticated the peer, in its words

    @property
    def method(self) -> str:
        """The authentication method in a few words."""
        if "authby=null" in self.auth:
            return "NULL auth (RFC 7619), unauthenticated"
        signature = re.match(r"'([^']+)' digital signature(?: using \S+ certificate '([^']+)')?", self.auth)
        if signature:
            peer_id = f", ID {signature.group(2)}" if signature.group(2) else ""
            return f"digital signature {signature.group(1)}{peer_id}"
        return self.auth


_ESTABLISHED_NAMED = re.compile(r'"([^"]+)"(?:\[\d+\])?(?: \.\.\.(\S+))? #\d+: initiator established IKE SA; '
                                r"authenticated peer (.+)$")


def ike_sas_from_log(log: str, peers_by_conn: dict[str, str] | None = None) -> list[IkeSa]:
    """IKE SAs this pluto (as initiator) established, from its log: peer address and authentication."""
    found: list[IkeSa] = []
    for line in log.splitlines():
        match = _ESTABLISHED_NAMED.search(line)
        if match is None:
            continue
        conn, peer, auth = match.groups()
        if peer is None and peers_by_conn:
            peer = peers_by_conn.get(conn)
        if peer is not None:
            found.append(IkeSa(peer=peer, auth=auth))
    return found
