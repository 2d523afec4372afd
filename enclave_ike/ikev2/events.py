"""What an IKE SA reports to the layer above it, as typed, frozen events (aioquic's `quic/events.py` works the same
way). The layer above applies them: it installs or removes kernel or userspace ESP SAs, logs, counts.

`ChildSaEstablished` (also inside `ChildSaRekeyed`) is the one place where keys leave the core: the ESP keys the
installing layer needs. IKE SA keys never leave. Keys are kept out of `repr`.

Every event names its IKE SA by the SPI pair (`ike_spi_i`, `ike_spi_r`), as the SA was known when the event
happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Endpoint, Identity, Mode, PeerCredential
from .constants import ProtocolId
from .crypto import ChildSuite, IkeSuite, SignatureScheme
from .payloads import TrafficSelector


@dataclass(frozen=True)
class NatStatus:
    """RFC 7296 2.23, from the NAT_DETECTION notifies of IKE_SA_INIT: is there a NAT in front of us, in front of the
    peer. Either means ESP travels in UDP (RFC 3948) on port 4500."""

    local_behind_nat: bool = False
    peer_behind_nat: bool = False

    @property
    def detected(self) -> bool:
        return self.local_behind_nat or self.peer_behind_nat


@dataclass(frozen=True)
class IkeSaEstablished:
    """IKE_AUTH completed. `credential` says what the peer proved: a pinned key (authenticated), or nothing about
    who it is (NULL, or a raw key or certificate it sent: unauthenticated)."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    local: Endpoint
    peer: Endpoint
    local_id: Identity
    peer_id: Identity
    peer_auth: int
    """The AUTH method the peer used: AuthMethod.NULL or AuthMethod.DIGITAL_SIGNATURE."""
    suite: IkeSuite
    nat: NatStatus
    initial_contact: bool
    """The peer sent INITIAL_CONTACT: other IKE SAs with the same authenticated identity are stale."""
    credential: PeerCredential


@dataclass(frozen=True)
class ChildSaKeys:
    """ESP keys by direction: `in` protects what we receive, `out` what we send. GCM keys end with the 4-octet salt
    (RFC 4106); `integ_*` is empty for AEAD suites."""

    encr_in: bytes = field(repr=False)
    integ_in: bytes = field(repr=False)
    encr_out: bytes = field(repr=False)
    integ_out: bytes = field(repr=False)


@dataclass(frozen=True)
class ChildSaEstablished:
    """A Child SA to install: the inbound SA (`spi_in`, chosen by us) and the outbound SA (`spi_out`, chosen by the
    peer), its algorithms, mode and traffic selectors (ours and the peer's), and its keys."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    spi_in: bytes
    spi_out: bytes
    protocol: ProtocolId
    mode: Mode
    suite: ChildSuite
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: Endpoint
    peer: Endpoint
    udp_encapsulation: bool
    """ESP in UDP port 4500 (RFC 3948): a NAT was detected."""
    keys: ChildSaKeys = field(repr=False)


@dataclass(frozen=True)
class ChildSaRekeyed:
    """A Child SA was rekeyed (RFC 7296 2.8): install `new`; the old SA stays until its own `SaDeleted`."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    old_spi_in: bytes
    old_spi_out: bytes
    new: ChildSaEstablished


@dataclass(frozen=True)
class IkeSaRekeyed:
    """The IKE SA was rekeyed (RFC 7296 2.18): its Child SAs now belong to the IKE SA with the new SPIs."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    new_spi_i: bytes
    new_spi_r: bytes
    suite: IkeSuite


@dataclass(frozen=True)
class SaDeleted:
    """An SA is gone. For an IKE SA `protocol` is IKE and the ESP SPIs are empty; every Child SA it still had gets
    its own event first. For a Child SA, remove `spi_in` and `spi_out`."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    protocol: ProtocolId
    reason: str
    spi_in: bytes = b""
    spi_out: bytes = b""


@dataclass(frozen=True)
class ProtocolErrorEvent:
    """The peer sent something wrong in an authenticated or well-formed message. `answered` is the Notify type we
    sent back, or None when RFC 7296 says to answer nothing (the message was dropped)."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    exchange: int
    message_id: int
    answered: int | None
    detail: str


@dataclass(frozen=True)
class PeerErrorNotified:
    """The peer answered one of our requests with an error Notify."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    exchange: int
    notify: int
    detail: str


@dataclass(frozen=True)
class PeerAlive:
    """The peer answered our empty INFORMATIONAL request (a liveness check, RFC 7296 1.4)."""

    ike_spi_i: bytes
    ike_spi_r: bytes


@dataclass(frozen=True)
class SignatureRequested:
    """Our AUTH needs a signature from a signer that must not be waited on (`Signer.deferred`): sign `data` under
    `scheme` away from the event loop, then hand it back with `Responder.complete_signature` (or
    `fail_signature`). The IKE SA answers its IKE_AUTH request only then."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    data: bytes
    scheme: SignatureScheme

    def __repr__(self) -> str:
        return f"SignatureRequested({self.ike_spi_i.hex()}/{self.ike_spi_r.hex()}, {self.scheme.name})"


Event = (IkeSaEstablished | ChildSaEstablished | ChildSaRekeyed | IkeSaRekeyed | SaDeleted | ProtocolErrorEvent
         | PeerErrorNotified | PeerAlive | SignatureRequested)
