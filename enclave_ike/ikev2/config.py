"""Typed policy of an IKE SA: what the responder accepts and what the test initiator offers.

Everything here is a frozen dataclass checked in `__post_init__`, so a policy that cannot work (no proposals, a
signature method without a key, a DNS selector without an address) fails with a `PolicyError` before any packet is
read (aioquic's `QuicConfiguration` plays the same role). The state machine only ever reads these objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, ip_address

from .constants import AuthMethod, DhGroup, EncrId, IdType, IntegId, PrfId
from .crypto import SIGNATURE_SCHEMES, ChildSuite, IkeSuite, PublicKey, SignatureScheme, Signer
from .errors import PolicyError
from .payloads import Address, Certificate, TrafficSelector

IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
DNS_PORT = 53


@dataclass(frozen=True)
class Endpoint:
    """An IP address and a UDP port: where a datagram came from or goes to."""

    address: Address
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise PolicyError(f"endpoint: port {self.port} is not a UDP port")

    @classmethod
    def parse(cls, host: str, port: int) -> Endpoint:
        try:
            return cls(ip_address(host), port)
        except ValueError:
            raise PolicyError(f"endpoint: {host!r} is not an IP address") from None

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


class Mode(Enum):
    """The encapsulation of a Child SA (RFC 7296 1.3.1: transport only when USE_TRANSPORT_MODE is agreed)."""

    TRANSPORT = "transport"
    TUNNEL = "tunnel"


@dataclass(frozen=True)
class Identity:
    """An IKE identity (RFC 7296 3.5): ID type and identification data. `Identity.null()` is RFC 7619's ID_NULL."""

    id_type: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.id_type == IdType.ID_NULL and self.data:
            raise PolicyError("identity: ID_NULL carries no data")
        if self.id_type != IdType.ID_NULL and not self.data:
            raise PolicyError(f"identity: ID type {self.id_type} needs data")

    @classmethod
    def null(cls) -> Identity:
        return cls(IdType.ID_NULL)

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        return cls(IdType.ID_FQDN, name.encode("ascii"))

    @classmethod
    def key_id(cls, key_id: bytes) -> Identity:
        return cls(IdType.ID_KEY_ID, key_id)

    @classmethod
    def address(cls, address: Address) -> Identity:
        return cls(IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR, address.packed)

    def __str__(self) -> str:
        if self.id_type == IdType.ID_NULL:
            return "ID_NULL"
        if self.id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR) and _printable(self.data):
            return self.data.decode("ascii")
        if self.id_type == IdType.ID_IPV4_ADDR and len(self.data) == 4:
            return str(IPv4Address(self.data))
        if self.id_type == IdType.ID_IPV6_ADDR and len(self.data) == 16:
            return str(IPv6Address(self.data))
        return f"{self.id_type}:{self.data.hex()}"


def _printable(data: bytes) -> bool:
    """Printable ASCII only: a peer's ID goes into log lines, where a newline or an escape sequence of its choosing
    would make text that reads as ours."""
    return all(0x20 <= octet < 0x7F for octet in data)


@dataclass(frozen=True)
class PinnedPeer:
    """A peer that authenticates with an RFC 7427 signature: its identity and the public key pinned for it."""

    identity: Identity
    public_key: PublicKey = field(repr=False)


class PeerAuth(Enum):
    """What an initiator proved in IKE_AUTH. Only PINNED authenticates it; the others are unauthenticated clients
    (opportunistic, RFC 7619's sense), which differ in what they hold: nothing (NULL, RFC 7619), the private key of
    a raw public key (RFC 7670) or of a certificate (RFC 7296 3.6) they sent and we did not validate."""

    PINNED = "pinned"
    NULL = "null"
    RAW_KEY = "raw-key"
    CERTIFICATE = "certificate"

    @property
    def authenticated(self) -> bool:
        return self is PeerAuth.PINNED


ANONYMOUS_METHODS: frozenset[PeerAuth] = frozenset({PeerAuth.NULL, PeerAuth.RAW_KEY, PeerAuth.CERTIFICATE})
"""Every way an initiator whose key is not pinned may come in: a public resolver's default."""


@dataclass(frozen=True)
class PeerCredential:
    """What an initiator proved, kept on its IKE SA and reported in `IkeSaEstablished`. `key_sha256` is the SHA-256
    of the DER SubjectPublicKeyInfo that verified its AUTH (empty for NULL); for a certificate, `subject` is its
    subject as RFC 4514 text and `self_signed` whether it verifies under its own key (neither is checked further:
    the certificate only carries the key)."""

    kind: PeerAuth
    key_sha256: bytes = b""
    subject: str = ""
    self_signed: bool = False

    @property
    def authenticated(self) -> bool:
        return self.kind.authenticated

    def __str__(self) -> str:
        """For logs: `NULL auth, unauthenticated`, `signature auth, pinned key sha256 ...`, `signature auth,
        unauthenticated: raw key sha256 ...`, `signature auth, unauthenticated: certificate 'CN=...' (self-signed),
        key sha256 ...`."""
        if self.kind is PeerAuth.NULL:
            return "NULL auth, unauthenticated"
        fingerprint = f"sha256 {self.key_sha256.hex()}"
        if self.kind is PeerAuth.PINNED:
            return f"signature auth, pinned key {fingerprint}"
        if self.kind is PeerAuth.RAW_KEY:
            return f"signature auth, unauthenticated: raw key {fingerprint}"
        signed = "self-signed" if self.self_signed else "not self-signed, issuer not checked"
        return f"signature auth, unauthenticated: certificate {self.subject!r} ({signed}), key {fingerprint}"


@dataclass(frozen=True)
class Timers:
    """Seconds. `retransmit` is the first retransmission timeout of our own requests, doubled on every retry, up to
    `retransmit_tries` sends in all; `half_open` bounds the wait for IKE_AUTH after IKE_SA_INIT (and for our own
    signature after it); `rekeyed_linger` how long a rekeyed IKE SA waits for the peer to delete it.

    Liveness (RFC 7296 2.4): an established IKE SA that has heard nothing authentic from its peer for `liveness`
    seconds sends an empty INFORMATIONAL request; when still nothing has come `liveness_timeout` seconds later, the
    peer is dead and the SA and its Child SAs are removed. So a vanished peer's SAs are gone at most `liveness +
    liveness_timeout` after its last message. None: never asked (the peer's own deletes and INITIAL_CONTACT only)."""

    retransmit: float = 0.5
    retransmit_tries: int = 6
    half_open: float = 30.0
    rekeyed_linger: float = 30.0
    liveness: float | None = None
    liveness_timeout: float = 15.0

    def __post_init__(self) -> None:
        if (self.retransmit <= 0 or self.half_open <= 0 or self.rekeyed_linger <= 0 or self.liveness_timeout <= 0
                or (self.liveness is not None and self.liveness <= 0)):
            raise PolicyError("timers: every timeout must be positive")
        if self.retransmit_tries < 1:
            raise PolicyError("timers: retransmit_tries must be at least 1")


@dataclass(frozen=True)
class Limits:
    """How much state a `Responder` keeps. Half-open SAs are those waiting for IKE_AUTH; past `cookie_threshold` of
    them every IKE_SA_INIT must carry a valid COOKIE (RFC 7296 2.6). The per-peer limits count by IP address.

    Past `max_half_open`, `max_half_open_per_peer` or `max_sas` a new IKE_SA_INIT is refused (dropped, and counted).
    `max_sas_per_peer` is kept differently: an address past it may still start IKE SAs (its half-open ones are
    bounded), and when one of them is established, that address's established SA heard from least recently is
    removed. Clients that vanished behind one address (crashed, suspended, a NAT's other users) so never lock the
    next one out; a live client whose SA was replaced is told with a Delete (not waited for) and can start again."""

    cookie_threshold: int = 64
    max_half_open: int = 10_000
    max_half_open_per_peer: int = 8
    max_sas: int = 100_000
    max_sas_per_peer: int = 32
    invalid_spi_answers_per_second: int = 10
    # Child SAs per IKE SA: DNS needs two (udp/53, tcp/53), a rekey briefly adds one each. More is a peer
    # filling the kernel's SA table: answered with NO_ADDITIONAL_SAS, rekeys too (an old Child SA stays until deleted).
    max_child_sas: int = 8

    def __post_init__(self) -> None:
        values = (self.cookie_threshold, self.max_half_open, self.max_half_open_per_peer, self.max_sas,
                  self.max_sas_per_peer, self.invalid_spi_answers_per_second, self.max_child_sas)
        if min(values) < 0:
            raise PolicyError("limits: no limit may be negative")


def ike_suites(encryption: Iterable[tuple[int, int]], prfs: Iterable[int], groups: Iterable[int],
               integrity: Iterable[int] = (IntegId.NONE,)) -> tuple[IkeSuite, ...]:
    """Every combination, in preference order (encryption first, then PRF, integrity, group). AEAD ciphers pair only
    with IntegId.NONE, other ciphers only with a real integrity algorithm; combinations that break this are left
    out."""
    out: list[IkeSuite] = []
    for (encr, bits), prf, integ, group in itertools.product(encryption, prfs, integrity, groups):
        aead = encr == EncrId.ENCR_AES_GCM_16
        if aead != (integ == IntegId.NONE):
            continue
        out.append(IkeSuite(encr, bits, prf, integ, group))
    return tuple(out)


DEFAULT_GROUPS = (DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521, DhGroup.MODP_2048)

DEFAULT_IKE_SUITES = ike_suites(
    [(EncrId.ENCR_AES_GCM_16, 256), (EncrId.ENCR_AES_GCM_16, 128)],
    [PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_HMAC_SHA2_384, PrfId.PRF_HMAC_SHA2_512], DEFAULT_GROUPS,
) + ike_suites(
    [(EncrId.ENCR_AES_CBC, 256), (EncrId.ENCR_AES_CBC, 128)],
    [PrfId.PRF_HMAC_SHA2_256, PrfId.PRF_HMAC_SHA2_384, PrfId.PRF_HMAC_SHA2_512], DEFAULT_GROUPS,
    [IntegId.AUTH_HMAC_SHA2_256_128, IntegId.AUTH_HMAC_SHA2_512_256, IntegId.AUTH_HMAC_SHA2_384_192],
)
"""AES-GCM-16 before AES-CBC with HMAC-SHA2; Curve25519 and the NIST curves before MODP-2048."""

DEFAULT_ESP_SUITES = tuple(
    ChildSuite(encr, bits, integ, esn, group)
    for esn in (False, True)
    for encr, bits, integ in ((EncrId.ENCR_AES_GCM_16, 256, IntegId.NONE), (EncrId.ENCR_AES_GCM_16, 128, IntegId.NONE),
                              (EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_256_128),
                              (EncrId.ENCR_AES_CBC, 128, IntegId.AUTH_HMAC_SHA2_256_128),
                              (EncrId.ENCR_AES_CBC, 256, IntegId.AUTH_HMAC_SHA2_512_256))
    for group in (DhGroup.NONE, *DEFAULT_GROUPS)
)
"""ESP: AES-GCM-16 before AES-CBC; without ESN first; PFS optional (without first, then any default group)."""


@dataclass(frozen=True)
class DnsSelectors:
    """What a Child SA may carry on the responder's side: DNS to its own addresses (udp/53 and tcp/53). The
    initiator's traffic selectors are narrowed to these (RFC 7296 2.9)."""

    addresses: tuple[Address, ...]
    protocols: tuple[int, ...] = (IP_PROTO_UDP, IP_PROTO_TCP)
    port: int = DNS_PORT

    def __post_init__(self) -> None:
        if not self.addresses:
            raise PolicyError("dns selectors: at least one local address is needed")
        if not self.protocols or any(not 1 <= p <= 255 for p in self.protocols):
            raise PolicyError("dns selectors: protocols must be IP protocol numbers (17 udp, 6 tcp)")
        if not 1 <= self.port <= 0xFFFF:
            raise PolicyError(f"dns selectors: port {self.port} is not a port")

    def selectors(self) -> tuple[TrafficSelector, ...]:
        """Our side of every Child SA we accept, one selector per address and protocol."""
        return tuple(TrafficSelector(address, address, protocol, self.port, self.port)
                     for address in self.addresses for protocol in self.protocols)


def _check_auth(signer: Signer | None, local_id: Identity, what: str) -> None:
    """NULL authentication with a real ID is allowed (RFC 7619 section 2.3), a signature for ID_NULL is not."""
    if signer is not None and local_id.id_type == IdType.ID_NULL:
        raise PolicyError(f"{what}: a signature cannot vouch for ID_NULL; set a local identity")


@dataclass(frozen=True)
class ResponderConfig:
    """The responder's policy.

    - `signer`: our AUTH is an RFC 7427 signature made by it; None means NULL authentication (RFC 7619).
    - `anonymous`: how an initiator whose identity has no pinned key may come in, as an unauthenticated client:
      NULL (RFC 7619), or a signature by the key of the raw public key (RFC 7670) or certificate it sends in a CERT
      payload (RAW_KEY, CERTIFICATE). Empty: a private resolver, pinned peers only.
      `peer_keys`: initiators that authenticate with a signature, each by identity and pinned key. A pinned
      identity must sign with its pinned key: it is never accepted anonymously.
    - `ike_suites`, `esp_suites`: accepted algorithms, most preferred first.
    - `dns`: the selectors every Child SA is narrowed to; `modes`: the encapsulations accepted (transport is
      chosen when the initiator asks for it with USE_TRANSPORT_MODE and it is allowed here).
    """

    local_id: Identity
    dns: DnsSelectors
    signer: Signer | None = None
    anonymous: frozenset[PeerAuth] = frozenset({PeerAuth.NULL})
    peer_keys: tuple[PinnedPeer, ...] = ()
    signature_schemes: tuple[SignatureScheme, ...] = SIGNATURE_SCHEMES
    ike_suites: tuple[IkeSuite, ...] = DEFAULT_IKE_SUITES
    esp_suites: tuple[ChildSuite, ...] = DEFAULT_ESP_SUITES
    modes: frozenset[Mode] = frozenset({Mode.TRANSPORT, Mode.TUNNEL})
    nonce_size: int = 32
    timers: Timers = field(default_factory=Timers)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        _check_common(self.ike_suites, self.esp_suites, self.nonce_size, "responder")
        _check_auth(self.signer, self.local_id, "responder")
        if PeerAuth.PINNED in self.anonymous:
            raise PolicyError("responder: a pinned key is not a way to come in anonymously")
        if not self.anonymous and not self.peer_keys:
            raise PolicyError("responder: no initiator could authenticate (no anonymous method and no pinned peer "
                              "keys)")
        identities = [peer.identity for peer in self.peer_keys]
        if len(set(identities)) != len(identities):
            raise PolicyError("responder: an identity is pinned twice")
        if not self.modes:
            raise PolicyError("responder: allow at least one of transport and tunnel mode")
        if not self.signature_schemes:
            raise PolicyError("responder: accept at least one signature scheme")

    @property
    def auth_method(self) -> AuthMethod:
        return AuthMethod.NULL if self.signer is None else AuthMethod.DIGITAL_SIGNATURE

    def pinned_key(self, identity: Identity) -> PublicKey | None:
        for peer in self.peer_keys:
            if peer.identity == identity:
                return peer.public_key
        return None


@dataclass(frozen=True)
class InitiatorConfig:
    """What the test initiator offers: its identity and signer (None: NULL auth), the responder's pinned key (None:
    a NULL-authenticated responder is accepted), the suites it proposes and the group of its first KE payload (the
    first suite's when None), the Child SA it asks for (selectors and mode)."""

    tsi: tuple[TrafficSelector, ...]
    tsr: tuple[TrafficSelector, ...]
    local_id: Identity = field(default_factory=Identity.null)
    signer: Signer | None = None
    certificates: tuple[Certificate, ...] = ()
    """CERT payloads sent in IKE_AUTH after IDi (RFC 7296 3.6; the first carries the key that signs): a raw public
    key (RFC 7670) or a certificate, for a responder that has not pinned our key."""
    responder_key: PublicKey | None = field(default=None, repr=False)
    responder_id: Identity | None = None
    signature_schemes: tuple[SignatureScheme, ...] = SIGNATURE_SCHEMES
    announce_hashes: bool = True
    """Send SIGNATURE_HASH_ALGORITHMS (the hashes of `signature_schemes`) in IKE_SA_INIT; False plays a peer
    without RFC 7427's notify."""
    ike_suites: tuple[IkeSuite, ...] = DEFAULT_IKE_SUITES[:1]
    first_group: int | None = None
    esp_suites: tuple[ChildSuite, ...] = DEFAULT_ESP_SUITES[:1]
    mode: Mode = Mode.TRANSPORT
    initial_contact: bool = True
    nonce_size: int = 32
    timers: Timers = field(default_factory=Timers)

    def __post_init__(self) -> None:
        _check_common(self.ike_suites, self.esp_suites, self.nonce_size, "initiator")
        _check_auth(self.signer, self.local_id, "initiator")
        if not self.tsi or not self.tsr:
            raise PolicyError("initiator: traffic selectors for both sides are needed")
        if self.first_group is not None and self.first_group not in {s.dh_group for s in self.ike_suites}:
            raise PolicyError(f"initiator: first group {self.first_group} is in none of the offered suites")

    @property
    def auth_method(self) -> AuthMethod:
        return AuthMethod.NULL if self.signer is None else AuthMethod.DIGITAL_SIGNATURE


def _check_common(ike: tuple[IkeSuite, ...], esp: tuple[ChildSuite, ...], nonce_size: int, what: str) -> None:
    if not ike:
        raise PolicyError(f"{what}: at least one IKE suite is needed")
    if not esp:
        raise PolicyError(f"{what}: at least one ESP suite is needed")
    largest_prf = max(suite.prf.size for suite in ike)
    if not max(16, largest_prf // 2) <= nonce_size <= 256:  # RFC 7296 2.10
        raise PolicyError(f"{what}: nonce size {nonce_size} must be 16 to 256 octets and half the largest PRF key")
