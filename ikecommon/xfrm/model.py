"""What goes in and comes out of the XFRM layer: typed, frozen, validated on construction.

Bad input raises InvalidXfrmInput when the object is made, so nothing half-checked ever reaches the
kernel. Key material lives only in `SaSpec` (to add an SA) and, when explicitly asked for, in `SaInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from .constants import IPPROTO_ESP, Action, Direction, Mode
from .errors import InvalidXfrmInput

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}
# Protocols whose selectors use the port fields: tcp, udp, sctp, dccp, udplite; and, as the kernel does,
# ICMP and ICMPv6 (type in sport, code in dport), mobility header (type) and GRE (key halves).
PORT_PROTOCOLS = frozenset({6, 17, 132, 33, 136, 1, 58, 135, 47})

# Ownership: ikectl's policies carry a priority in this band and nothing else does. Larger numbers
# lose to smaller ones, and pluto's priorities sit far below this band, so an owned "block" policy is
# a backstop: it only catches what no pluto policy matched.
OWNED_PRIORITY_MIN = 0x7F00_0000
OWNED_PRIORITY_MAX = 0x7FFF_FFFF


def network(value: str | Network, what: str) -> Network:
    try:
        return ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidXfrmInput(f"invalid {what} prefix {str(value)!r}: {exc}") from None


def address(value: str | Address, what: str) -> Address:
    try:
        return ip_address(value)
    except ValueError:
        raise InvalidXfrmInput(f"invalid {what} address {str(value)!r}") from None


def protocol(value: int | str) -> int:
    if isinstance(value, str):
        if value.lower() not in PROTOCOLS:
            raise InvalidXfrmInput(f"unknown protocol {value!r} (known: {', '.join(PROTOCOLS)})")
        return PROTOCOLS[value.lower()]
    if not 0 <= value <= 255:
        raise InvalidXfrmInput(f"invalid protocol number {value} (0-255)")
    return value


@dataclass(frozen=True)
class Selector:
    """struct xfrm_selector: which packets. Ports need a protocol that has ports; 0 = any protocol."""

    src: Network
    dst: Network
    proto: int = 0
    sport: int | None = None
    dport: int | None = None
    ifindex: int = 0

    @classmethod
    def of(cls, src: str | Network, dst: str | Network, proto: int | str = 0, sport: int | None = None,
           dport: int | None = None, ifindex: int = 0) -> Selector:
        return cls(network(src, "source"), network(dst, "destination"), protocol(proto), sport, dport, ifindex)

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise InvalidXfrmInput(f"selector mixes IPv{self.src.version} {self.src} and IPv{self.dst.version} "
                                   f"{self.dst}")
        protocol(self.proto)
        for name, port in (("source", self.sport), ("destination", self.dport)):
            if port is None:
                continue
            if not 0 <= port <= 0xFFFF:
                raise InvalidXfrmInput(f"invalid {name} port {port} (0-65535)")
            if self.proto not in PORT_PROTOCOLS:
                raise InvalidXfrmInput(f"a {name} port needs a protocol with ports (tcp, udp, ...), not "
                                       f"protocol {self.proto}")

    @property
    def family(self) -> int:
        return 2 if self.src.version == 4 else 10


@dataclass(frozen=True)
class Template:
    """struct xfrm_user_tmpl: what a matching packet must go through. Unset addresses are wildcards
    (what transport-mode traps use); tunnel mode needs both ends."""

    mode: Mode = Mode.TRANSPORT
    reqid: int = 0
    src: Address | None = None
    dst: Address | None = None
    proto: int = IPPROTO_ESP
    spi: int = 0
    optional: bool = False

    def __post_init__(self) -> None:
        if self.proto != IPPROTO_ESP:
            raise InvalidXfrmInput(f"template protocol {self.proto}: only ESP ({IPPROTO_ESP}) is supported")
        if not 0 <= self.reqid <= 0xFFFF_FFFF or not 0 <= self.spi <= 0xFFFF_FFFF:
            raise InvalidXfrmInput(f"template reqid {self.reqid} or SPI {self.spi} out of range (32 bits)")
        if self.mode == Mode.TUNNEL and (self.src is None or self.dst is None):
            raise InvalidXfrmInput("a tunnel-mode template needs both its source and destination address")
        if self.src is not None and self.dst is not None and self.src.version != self.dst.version:
            raise InvalidXfrmInput(f"template mixes {self.src} and {self.dst}")


@dataclass(frozen=True)
class Policy:
    selector: Selector
    direction: Direction
    priority: int
    action: Action = Action.ALLOW
    templates: tuple[Template, ...] = ()
    index: int = 0  # chosen by the kernel; 0 when adding
    mark: tuple[int, int] | None = None  # (value, mask)

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= 0xFFFF_FFFF:
            raise InvalidXfrmInput(f"invalid policy priority {self.priority} (32 bits)")

    @property
    def owned(self) -> bool:
        """True for the policies this project installs (priority in its band)."""
        return OWNED_PRIORITY_MIN <= self.priority <= OWNED_PRIORITY_MAX


@dataclass(frozen=True)
class Algorithm:
    """One SA algorithm: the kernel's name, the key, and the ICV (AEAD) or truncation (auth) length."""

    kind: str  # "aead", "crypt", "auth"
    name: str  # the kernel's name, e.g. rfc4106(gcm(aes))
    key: bytes = field(repr=False)
    bits: int = 0  # ICV bits for aead, truncation bits for auth, unused for crypt


# Friendly names -> (kind, kernel name, allowed key sizes in bytes, ICV or truncation bits).
ALGORITHMS = {
    "aes-gcm-16": ("aead", "rfc4106(gcm(aes))", (20, 28, 36), 128),  # key + 4-byte salt
    "aes-cbc": ("crypt", "cbc(aes)", (16, 24, 32), 0),
    "hmac-sha256-128": ("auth", "hmac(sha256)", (32,), 128),
    "hmac-sha384-192": ("auth", "hmac(sha384)", (48,), 192),
    "hmac-sha512-256": ("auth", "hmac(sha512)", (64,), 256),
}


def algorithm(name: str, key: bytes) -> Algorithm:
    if name not in ALGORITHMS:
        raise InvalidXfrmInput(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    kind, kernel_name, sizes, bits = ALGORITHMS[name]
    if len(key) not in sizes:
        raise InvalidXfrmInput(f"{name} takes a key of {' or '.join(map(str, sizes))} bytes, not {len(key)}")
    return Algorithm(kind, kernel_name, key, bits)


@dataclass(frozen=True)
class Lifetime:
    """When an SA expires: seconds after it was added (0: never), or after so many packets (None: no limit).
    The soft limit raises an EXPIRE event (time to rekey); the hard one removes the SA."""

    soft_seconds: int = 0
    hard_seconds: int = 0
    soft_packets: int | None = None
    hard_packets: int | None = None

    def __post_init__(self) -> None:
        if self.hard_seconds and self.soft_seconds > self.hard_seconds:
            raise InvalidXfrmInput(f"soft lifetime {self.soft_seconds} s is after the hard one {self.hard_seconds} s")
        if min(self.soft_seconds, self.hard_seconds, self.soft_packets or 0, self.hard_packets or 0) < 0:
            raise InvalidXfrmInput("lifetimes cannot be negative")


@dataclass(frozen=True)
class SaSpec:
    """An ESP SA to install: either one AEAD algorithm, or encryption plus authentication."""

    src: Address
    dst: Address
    spi: int
    algorithms: tuple[Algorithm, ...]
    mode: Mode = Mode.TRANSPORT
    reqid: int = 0
    selector: Selector | None = None
    replay_window: int = 32
    lifetime: Lifetime = Lifetime()

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise InvalidXfrmInput(f"SA mixes {self.src} and {self.dst}")
        if not 0x100 <= self.spi <= 0xFFFF_FFFF:
            raise InvalidXfrmInput(f"invalid SPI 0x{self.spi:x} (0x100-0xffffffff; smaller values are reserved)")
        kinds = sorted(a.kind for a in self.algorithms)
        if kinds not in (["aead"], ["auth", "crypt"]):
            raise InvalidXfrmInput(f"an ESP SA takes one AEAD algorithm or crypt + auth, not {kinds}")
        if not 0 <= self.replay_window <= 255:
            raise InvalidXfrmInput(f"invalid replay window {self.replay_window} (0-255)")


@dataclass(frozen=True)
class SaCounters:
    bytes: int
    packets: int
    add_time: int  # seconds since the epoch
    use_time: int  # 0: never used


_HMAC_NAMES = {"hmac(sha1)": "HMAC_SHA1", "hmac(sha256)": "HMAC_SHA2_256", "hmac(sha384)": "HMAC_SHA2_384",
               "hmac(sha512)": "HMAC_SHA2_512"}


@dataclass(frozen=True)
class AlgorithmInfo:
    kind: str
    name: str
    key_bits: int
    bits: int = 0
    key: bytes | None = field(default=None, repr=False)  # only when keys were asked for

    @property
    def label(self) -> str:
        """IKE's name for it, e.g. AES_GCM_16_256 for rfc4106(gcm(aes)) with a 288-bit key."""
        if self.kind == "aead" and self.name == "rfc4106(gcm(aes))" and self.bits:
            return f"AES_GCM_{self.bits // 8}_{self.key_bits - 32}"  # the key carries a 32-bit salt
        if self.kind == "crypt" and self.name == "cbc(aes)":
            return f"AES_CBC_{self.key_bits}"
        if self.kind == "auth" and self.name in _HMAC_NAMES:
            return _HMAC_NAMES[self.name] + (f"_{self.bits}" if self.bits else "")
        return f"{self.name} ({self.key_bits}-bit key)"


@dataclass(frozen=True)
class SaInfo:
    """A read-only view of one kernel SA. `algorithms[*].key` is None unless keys were asked for."""

    src: Address
    dst: Address
    spi: int
    proto: int
    mode: Mode
    reqid: int
    selector: Selector
    algorithms: tuple[AlgorithmInfo, ...]
    counters: SaCounters

    @property
    def larval(self) -> bool:
        """An ACQUIRE placeholder (SPI 0), not a usable SA."""
        return self.spi == 0
