"""Read-only views of what IPsec did, for reports: kernel SAs (from `ip -s xfrm state`) and pluto's IKE
SAs (from its log). Key material is never kept.

This reads iproute2's text because the project's own XFRM netlink layer (`ikectl/xfrm`) is not built
yet; it will replace the SA view here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .topology import Host, Topology


@dataclass(frozen=True)
class KernelSa:
    src: str
    dst: str
    spi: int
    mode: str
    algorithms: tuple[str, ...]  # in IKE's names where known, e.g. ("AES_GCM_16_256",)
    selector: str
    bytes: int
    packets: int


_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)$")
_SPI = re.compile(r"proto esp spi 0x([0-9a-f]+).*mode (\w+)")
_ALGO = re.compile(r"^\s*(aead|enc|auth-trunc|auth|comp) (\S+) 0x[0-9a-f]+ ?\((\d+) bits\)(?: (\d+))?")
_HMAC = {"hmac(sha1)": "HMAC_SHA1", "hmac(sha256)": "HMAC_SHA2_256", "hmac(sha384)": "HMAC_SHA2_384",
         "hmac(sha512)": "HMAC_SHA2_512"}


def algorithm_name(kind: str, kernel_name: str, key_bits: int, extra: int | None) -> str:
    """IKE's name for a kernel algorithm (`extra` is the ICV or truncation length in bits)."""
    if kind == "aead" and kernel_name == "rfc4106(gcm(aes))" and extra:
        return f"AES_GCM_{extra // 8}_{key_bits - 32}"  # the key carries a 32-bit salt
    if kind == "enc" and kernel_name == "cbc(aes)":
        return f"AES_CBC_{key_bits}"
    if kind in ("auth", "auth-trunc") and kernel_name in _HMAC:
        return _HMAC[kernel_name] + (f"_{extra}" if extra else "")
    return f"{kernel_name} ({key_bits}-bit key)"
_CURRENT = re.compile(r"^\s*(\d+)\(bytes\), (\d+)\(packets\)")


def kernel_sas(topo: Topology, host: Host) -> list[KernelSa]:
    return _parse_blocks(topo.run(host, ["ip", "-s", "xfrm", "state"]).stdout)


def _parse_blocks(text: str) -> list[KernelSa]:
    sas: list[KernelSa] = []
    block: list[str] = []
    for line in [*text.splitlines(), "src - dst -"]:  # a sentinel head ends the last block
        if _SA_HEAD.match(line) and block:
            sa = _parse_block(block)
            if sa is not None:
                sas.append(sa)
            block = []
        block.append(line)
    return sas


def _parse_block(lines: list[str]) -> KernelSa | None:
    head = _SA_HEAD.match(lines[0])
    spi = next((m for m in map(_SPI.search, lines) if m), None)
    if head is None or spi is None:
        return None
    algorithms = tuple(algorithm_name(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)) if m.group(4) else None)
                       for m in map(_ALGO.match, lines) if m)
    selector = next((line.strip()[4:] for line in lines if line.strip().startswith("sel ")), "")
    counters = (0, 0)
    for i, line in enumerate(lines):
        if line.strip() == "lifetime current:" and i + 1 < len(lines):
            current = _CURRENT.match(lines[i + 1])
            if current:
                counters = (int(current.group(1)), int(current.group(2)))
    return KernelSa(src=head.group(1), dst=head.group(2), spi=int(spi.group(1), 16), mode=spi.group(2),
                    algorithms=algorithms, selector=selector, bytes=counters[0], packets=counters[1])


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
