"""Read-only views of what IPsec did, for reports: kernel SAs (through ikectl's XFRM layer) and pluto's
IKE SAs (from its log). Key material is never kept."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ikectl.xfrm import AlgorithmInfo, SaInfo, XfrmClient

from .topology import Host

_HMAC = {"hmac(sha1)": "HMAC_SHA1", "hmac(sha256)": "HMAC_SHA2_256", "hmac(sha384)": "HMAC_SHA2_384",
         "hmac(sha512)": "HMAC_SHA2_512"}


def algorithm_label(algo: AlgorithmInfo) -> str:
    """IKE's name for a kernel SA algorithm, e.g. AES_GCM_16_256 for rfc4106(gcm(aes)) with a 288-bit key."""
    if algo.kind == "aead" and algo.name == "rfc4106(gcm(aes))" and algo.bits:
        return f"AES_GCM_{algo.bits // 8}_{algo.key_bits - 32}"  # the key carries a 32-bit salt
    if algo.kind == "crypt" and algo.name == "cbc(aes)":
        return f"AES_CBC_{algo.key_bits}"
    if algo.kind == "auth" and algo.name in _HMAC:
        return _HMAC[algo.name] + (f"_{algo.bits}" if algo.bits else "")
    return f"{algo.name} ({algo.key_bits}-bit key)"


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
