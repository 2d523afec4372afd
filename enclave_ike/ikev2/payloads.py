"""IKEv2 messages and payloads (RFC 7296 section 3): frozen dataclasses with paired encode and decode.

Each payload's `encode()` gives its body (everything after the 4-octet generic payload header) and its classmethod
`decode(reader)` reads that body from a `Reader` bounded to it. The generic headers, which chain the payloads through
their Next Payload fields, belong to the container: `encode_payloads` / `decode_payloads` for a chain, `Message`
for a whole datagram. Substructures (proposals, transforms, attributes, traffic selectors) follow the same pattern,
their container writing and checking the "last substructure" and length fields.

The codec checks structure, not policy: lengths, counts, the position of the Encrypted payload, critical bits, and
the few value rules RFC 7296 states for the encoding itself (nonce length, IKE major version). Whether a group, an
SPI size or an ID type is acceptable is for the state machine. Numbers this implementation does not name are kept
as plain ints and re-encoded unchanged.

A payload type we do not understand is kept as `UnknownPayload` when its critical bit is clear and raises
`UnsupportedCriticalPayload` (notify UNSUPPORTED_CRITICAL_PAYLOAD) when it is set (RFC 7296 2.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, TypeVar

from .constants import (
    IKE_MAJOR_VERSION,
    IKE_MINOR_VERSION,
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttributeType,
    TransformType,
    TsType,
    known,
    members,
)
from .errors import DecodeError, InvalidMajorVersion, LocalProtocolError, UnsupportedCriticalPayload
from .wire import Layout, Reader, Writer

Address = IPv4Address | IPv6Address

NONCE_MIN, NONCE_MAX = 16, 256  # RFC 7296 2.10
IKE_SPI_SIZE = 8
IKE_HEADER_SIZE = 28
PAYLOAD_HEADER_SIZE = 4

_LAST, _MORE_PROPOSALS, _MORE_TRANSFORMS = 0, 2, 3
_TV_FLAG = 0x8000
_CRITICAL = 0x80

_TRANSFORM_IDS: dict[int, type[EncrId] | type[PrfId] | type[IntegId] | type[DhGroup] | type[EsnId]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
}


# value -> member, for the fields decoded on every message (`known` without its call)
_PAYLOAD_TYPES, _EXCHANGES, _PROTOCOLS = members(PayloadType), members(ExchangeType), members(ProtocolId)
_TRANSFORM_TYPES, _NOTIFY_TYPES = members(TransformType), members(NotifyType)
_PAYLOAD_NAMES = {value: member.name for value, member in _PAYLOAD_TYPES.items()}
_HEADER_FLAGS = tuple(HeaderFlag(value) for value in range(256))  # IntFlag's constructor is slow, its values few
# members used on every payload, as module constants: in Python 3.11 `PayloadType.SK` is a descriptor call (0.4 us)
_NONE, _SK = PayloadType.NONE, PayloadType.SK
_ENCRYPTED = frozenset((PayloadType.SK, PayloadType.SKF))
_TS_IPV4, _TS_IPV6 = TsType.TS_IPV4_ADDR_RANGE, TsType.TS_IPV6_ADDR_RANGE
_KEY_LENGTH = TransformAttributeType.KEY_LENGTH
_RESPONSE, _INITIATOR = int(HeaderFlag.RESPONSE), int(HeaderFlag.INITIATOR)

# fixed parts read or written in one struct call (see wire.Layout), field names as the errors give them
_GENERIC_HEADER = Layout(("next payload", "B"), ("critical", "B"), ("payload length", "H"))
_IKE_HEADER = Layout(("initiator spi", f"{IKE_SPI_SIZE}s"), ("responder spi", f"{IKE_SPI_SIZE}s"),
                     ("next payload", "B"), ("version", "B"), ("exchange type", "B"), ("flags", "B"),
                     ("message id", "I"), ("length", "I"))
_IKE_HEADER_TAIL = Layout(("next payload", "B"), ("version", "B"), ("exchange type", "B"), ("flags", "B"),
                          ("message id", "I"), ("length", "I"))  # written after the SPIs, whose sizes are checked
# a substructure's Last Substruc octet is read and checked on its own, before the rest of its header
_PROPOSAL_HEADER = Layout(("last substruc", "B"), ("reserved", "x"), ("proposal length", "H"))
_PROPOSAL_HEADER_REST = Layout(("reserved", "x"), ("proposal length", "H"))
_PROPOSAL = Layout(("proposal number", "B"), ("protocol id", "B"), ("spi size", "B"), ("number of transforms", "B"))
_TRANSFORM_HEADER = Layout(("last substruc", "B"), ("reserved", "x"), ("transform length", "H"))
_TRANSFORM_HEADER_REST = Layout(("reserved", "x"), ("transform length", "H"))
_TRANSFORM = Layout(("transform type", "B"), ("reserved", "x"), ("transform id", "H"))
_KE = Layout(("dh group", "H"), ("reserved", "2x"))
_AUTH = Layout(("auth method", "B"), ("reserved", "3x"))
_ID = Layout(("id type", "B"), ("reserved", "3s"))
_NOTIFY = Layout(("protocol id", "B"), ("spi size", "B"), ("notify message type", "H"))
_DELETE = Layout(("protocol id", "B"), ("spi size", "B"), ("number of spis", "H"))
_TS_COUNT = Layout(("number of tss", "B"), ("reserved", "3x"))
_TS_HEADER = Layout(("ts type", "B"), ("ip protocol id", "B"), ("selector length", "H"))
_TS_FIXED = Layout(("ts type", "B"), ("ip protocol id", "B"), ("selector length", "H"), ("start port", "H"),
                   ("end port", "H"))
_TS_BODIES = {size: Layout(("start port", "H"), ("end port", "H"), ("starting address", f"{size}s"),
                           ("ending address", f"{size}s")) for size in (4, 16)}
_FRAGMENT = Layout(("fragment number", "H"), ("total fragments", "H"))


def payload_name(payload_type: int) -> str:
    """The RFC's name for a payload type ("SA", "TSi", ...), or "payload N"."""
    name = _PAYLOAD_NAMES.get(payload_type)
    return f"payload {payload_type}" if name is None else name


# --- SA payload substructures (RFC 7296 3.3) ---

@dataclass(frozen=True)
class TransformAttribute:
    """RFC 7296 3.3.5. An int `value` is the TV format (AF bit set, 16-bit value), bytes the TLV format."""

    type: int
    value: int | bytes

    def encode(self) -> bytes:
        w = Writer()
        if isinstance(self.value, int):
            w.u16(_TV_FLAG | _check_attribute_type(self.type), "attribute type").u16(self.value, "attribute value")
        else:
            w.u16(_check_attribute_type(self.type), "attribute type")
            w.u16(len(self.value), "attribute length").bytes(self.value, "attribute value")
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> TransformAttribute:
        first = r.u16("attribute type")
        attr_type = known(TransformAttributeType, first & ~_TV_FLAG)
        if first & _TV_FLAG:
            return cls(attr_type, r.u16("attribute value"))
        return cls(attr_type, r.bytes(r.u16("attribute length"), "attribute value"))


def _check_attribute_type(value: int) -> int:
    if not 0 <= value < _TV_FLAG:
        raise LocalProtocolError(f"attribute type: {value} does not fit in 15 bits")
    return value


@dataclass(frozen=True)
class Transform:
    """RFC 7296 3.3.2: one algorithm; `key_length` reads the Key Length attribute (bits) if present."""

    type: int
    id: int
    attributes: tuple[TransformAttribute, ...] = ()

    @classmethod
    def create(cls, transform_type: int, transform_id: int, key_length: int | None = None) -> Transform:
        attrs = () if key_length is None else (TransformAttribute(TransformAttributeType.KEY_LENGTH, key_length),)
        return cls(transform_type, transform_id, attrs)

    @property
    def key_length(self) -> int | None:
        for attr in self.attributes:
            if attr.type == _KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    def encode(self) -> bytes:
        fixed = _TRANSFORM.pack(self.type, self.id)
        return b"".join([fixed, *(attr.encode() for attr in self.attributes)]) if self.attributes else fixed

    @classmethod
    def decode(cls, r: Reader) -> Transform:
        raw_type, raw_id = r.fields(_TRANSFORM)
        transform_type = _TRANSFORM_TYPES.get(raw_type, raw_type)
        ids = _TRANSFORM_IDS.get(transform_type)
        transform_id = known(ids, raw_id) if ids is not None else raw_id
        attrs: list[TransformAttribute] = []
        while not r.at_end():
            attrs.append(TransformAttribute.decode(r))
        return cls(transform_type, transform_id, tuple(attrs))


@dataclass(frozen=True)
class Proposal:
    """RFC 7296 3.3.1. The SPI size is the length of `spi` (0 in IKE_SA_INIT, 8 for IKE rekeys, 4 for ESP/AH)."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def transforms_of(self, transform_type: int) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == transform_type)

    def encode(self) -> bytes:
        out = [_PROPOSAL.pack(self.number, self.protocol, len(self.spi), len(self.transforms)), self.spi]
        for i, transform in enumerate(self.transforms):
            body = transform.encode()
            last = _LAST if i == len(self.transforms) - 1 else _MORE_TRANSFORMS
            out += (_TRANSFORM_HEADER.pack(last, 4 + len(body)), body)
        return b"".join(out)

    @classmethod
    def decode(cls, r: Reader) -> Proposal:
        number, raw_protocol, spi_size, count = r.fields(_PROPOSAL)
        protocol = _PROTOCOLS.get(raw_protocol, raw_protocol)
        spi = r.bytes(spi_size, "spi")
        transforms: list[Transform] = []
        for i in range(count):
            last = r.u8("transform last substruc")
            if last != (_LAST if i == count - 1 else _MORE_TRANSFORMS):
                raise DecodeError(r.payload, "transform last substruc",
                                  f"{last} on transform {i + 1} of {count}")
            length, = r.fields(_TRANSFORM_HEADER_REST)
            if length < 8:
                raise DecodeError(r.payload, "transform length", f"{length} is shorter than the 8-octet header")
            with r.restrict(length - 4, "transform length"):
                transforms.append(Transform.decode(r))
        return cls(number, protocol, spi, tuple(transforms))


# --- payloads ---

@dataclass(frozen=True)
class SecurityAssociation:
    """RFC 7296 3.3: one or more proposals."""

    payload_type: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]

    def encode(self) -> bytes:
        if not self.proposals:
            raise LocalProtocolError("SA payload: needs at least one proposal")
        out: list[bytes] = []
        for i, proposal in enumerate(self.proposals):
            body = proposal.encode()
            last = _LAST if i == len(self.proposals) - 1 else _MORE_PROPOSALS
            out += (_PROPOSAL_HEADER.pack(last, 4 + len(body)), body)
        return b"".join(out)

    @classmethod
    def decode(cls, r: Reader) -> SecurityAssociation:
        proposals: list[Proposal] = []
        while True:
            last = r.u8("proposal last substruc")
            if last not in (_LAST, _MORE_PROPOSALS):
                raise DecodeError(r.payload, "proposal last substruc", f"{last} is neither 0 nor 2")
            length, = r.fields(_PROPOSAL_HEADER_REST)
            if length < 8:
                raise DecodeError(r.payload, "proposal length", f"{length} is shorter than the 8-octet header")
            with r.restrict(length - 4, "proposal length"):
                proposals.append(Proposal.decode(r))
            if last == _LAST:
                break
        return cls(tuple(proposals))


@dataclass(frozen=True)
class KeyExchange:
    """RFC 7296 3.4: the group and our public value (its length is the group's business, not the codec's)."""

    payload_type: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes

    def encode(self) -> bytes:
        return _KE.pack(self.group) + self.data

    @classmethod
    def decode(cls, r: Reader) -> KeyExchange:
        group, = r.fields(_KE)
        return cls(known(DhGroup, group), r.rest("key exchange data"))


@dataclass(frozen=True)
class Nonce:
    """RFC 7296 3.9: Ni or Nr, 16 to 256 octets (2.10)."""

    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes

    def encode(self) -> bytes:
        if not NONCE_MIN <= len(self.data) <= NONCE_MAX:
            raise LocalProtocolError(f"Nonce: {len(self.data)} octets, must be {NONCE_MIN} to {NONCE_MAX}")
        return self.data

    @classmethod
    def decode(cls, r: Reader) -> Nonce:
        data = r.rest("nonce data")
        if not NONCE_MIN <= len(data) <= NONCE_MAX:
            raise DecodeError(r.payload, "nonce data", f"{len(data)} octets, must be {NONCE_MIN} to {NONCE_MAX}")
        return cls(data)


@dataclass(frozen=True)
class _Identification:
    """RFC 7296 3.5. `encode()` is exactly RestOfInitIDPayload / RestOfRespIDPayload of 2.15, reserved octets
    included as received, which is what the AUTH computation MACs."""

    id_type: int
    data: bytes
    reserved: bytes = b"\0\0\0"

    def encode(self) -> bytes:
        w = Writer().u8(self.id_type, "id type").bytes(self.reserved, "reserved", size=3)
        return w.bytes(self.data, "identification data").getvalue()

    @classmethod
    def _decode_fields(cls, r: Reader) -> tuple[int, bytes, bytes]:
        id_type, reserved = r.fields(_ID)
        return known(IdType, id_type), r.rest("identification data"), reserved


@dataclass(frozen=True)
class IdentificationInitiator(_Identification):
    payload_type: ClassVar[int] = PayloadType.IDi

    @classmethod
    def decode(cls, r: Reader) -> IdentificationInitiator:
        id_type, data, reserved = cls._decode_fields(r)
        return cls(id_type, data, reserved)


@dataclass(frozen=True)
class IdentificationResponder(_Identification):
    payload_type: ClassVar[int] = PayloadType.IDr

    @classmethod
    def decode(cls, r: Reader) -> IdentificationResponder:
        id_type, data, reserved = cls._decode_fields(r)
        return cls(id_type, data, reserved)


@dataclass(frozen=True)
class Certificate:
    """RFC 7296 3.6: kept opaque."""

    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes

    def encode(self) -> bytes:
        return Writer().u8(self.encoding, "cert encoding").bytes(self.data, "certificate data").getvalue()

    @classmethod
    def decode(cls, r: Reader) -> Certificate:
        return cls(known(CertEncoding, r.u8("cert encoding")), r.rest("certificate data"))


@dataclass(frozen=True)
class CertificateRequest:
    """RFC 7296 3.7: kept opaque (for X.509, a list of SHA-1 hashes of CA public keys)."""

    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes

    def encode(self) -> bytes:
        return Writer().u8(self.encoding, "cert encoding").bytes(self.data, "certification authority").getvalue()

    @classmethod
    def decode(cls, r: Reader) -> CertificateRequest:
        return cls(known(CertEncoding, r.u8("cert encoding")), r.rest("certification authority"))


@dataclass(frozen=True)
class Authentication:
    """RFC 7296 3.8. For AuthMethod.DIGITAL_SIGNATURE, `data` is the RFC 7427 form (see crypto)."""

    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes

    def encode(self) -> bytes:
        return _AUTH.pack(self.method) + self.data

    @classmethod
    def decode(cls, r: Reader) -> Authentication:
        method, = r.fields(_AUTH)
        return cls(known(AuthMethod, method), r.rest("authentication data"))


@dataclass(frozen=True)
class Notify:
    """RFC 7296 3.10. The SPI size is the length of `spi`."""

    payload_type: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol: int = ProtocolId.NONE
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.notify_type < 16384

    def encode(self) -> bytes:
        return _NOTIFY.pack(self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode(cls, r: Reader) -> Notify:
        protocol, spi_size, notify_type = r.fields(_NOTIFY)
        spi = r.bytes(spi_size, "spi")
        return cls(_NOTIFY_TYPES.get(notify_type, notify_type), r.rest("notification data"),
                   _PROTOCOLS.get(protocol, protocol), spi)


@dataclass(frozen=True)
class Delete:
    """RFC 7296 3.11. For the IKE SA: protocol IKE, SPI size 0, no SPIs."""

    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol: int
    spi_size: int
    spis: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        w = Writer().u8(self.protocol, "protocol id").u8(self.spi_size, "spi size")
        w.u16(len(self.spis), "number of spis")
        for spi in self.spis:
            w.bytes(spi, "spi", size=self.spi_size)
        return w.getvalue()

    @classmethod
    def decode(cls, r: Reader) -> Delete:
        raw_protocol, spi_size, count = r.fields(_DELETE)
        protocol = _PROTOCOLS.get(raw_protocol, raw_protocol)
        if spi_size * count != r.remaining:
            raise DecodeError(r.payload, "number of spis",
                              f"{count} SPIs of {spi_size} octets do not fill the {r.remaining} octets left")
        return cls(protocol, spi_size, tuple(r.bytes(spi_size, "spi") for _ in range(count)))


@dataclass(frozen=True)
class VendorId:
    """RFC 7296 3.12."""

    payload_type: ClassVar[int] = PayloadType.VENDOR
    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, r: Reader) -> VendorId:
        return cls(r.rest("vendor id"))


@dataclass(frozen=True)
class TrafficSelector:
    """RFC 7296 3.13.1: an address range and a port range for one IP protocol (0: any). The TS type follows from
    the address family: TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE."""

    start_address: Address
    end_address: Address
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> int:
        return _TS_IPV4 if self.start_address.version == 4 else _TS_IPV6

    def encode(self) -> bytes:
        if self.start_address.version != self.end_address.version:
            raise LocalProtocolError("traffic selector: start and end addresses of different families")
        size = 4 if self.start_address.version == 4 else 16
        fixed = _TS_FIXED.pack(self.ts_type, self.protocol, 8 + 2 * size, self.start_port, self.end_port)
        return fixed + self.start_address.packed + self.end_address.packed

    @classmethod
    def decode_body(cls, r: Reader, ts_type: int, protocol: int) -> TrafficSelector:
        """The fields after TS type, IP protocol and selector length, which the container has read."""
        size = 4 if ts_type == _TS_IPV4 else 16
        family = IPv4Address if size == 4 else IPv6Address
        start_port, end_port, start, end = r.fields(_TS_BODIES[size])
        return cls(family(start), family(end), protocol, start_port, end_port)


@dataclass(frozen=True)
class OpaqueTrafficSelector:
    """A TS type this implementation does not know (e.g. RFC 9478 security labels), kept as it came: `second_octet`
    is the octet after the type, `data` everything after the selector length."""

    ts_type: int
    second_octet: int
    data: bytes

    def encode(self) -> bytes:
        w = Writer().u8(self.ts_type, "ts type").u8(self.second_octet, "ip protocol id")
        return w.u16(4 + len(self.data), "selector length").bytes(self.data, "selector").getvalue()


AnyTrafficSelector = TrafficSelector | OpaqueTrafficSelector

_TS_LENGTHS: dict[int, int] = {TsType.TS_IPV4_ADDR_RANGE: 16, TsType.TS_IPV6_ADDR_RANGE: 40}


@dataclass(frozen=True)
class _TrafficSelectors:
    """RFC 7296 3.13: a count, three reserved octets, the selectors."""

    selectors: tuple[AnyTrafficSelector, ...]

    def encode(self) -> bytes:
        w = Writer().u8(len(self.selectors), "number of tss").bytes(b"\0\0\0", "reserved")
        for ts in self.selectors:
            w.bytes(ts.encode(), "traffic selector")
        return w.getvalue()

    @staticmethod
    def _decode_selectors(r: Reader) -> tuple[AnyTrafficSelector, ...]:
        count, = r.fields(_TS_COUNT)
        selectors: list[AnyTrafficSelector] = []
        for _ in range(count):
            ts_type, second, length = r.fields(_TS_HEADER)
            expected = _TS_LENGTHS.get(ts_type)
            if expected is not None and length != expected:
                raise DecodeError(r.payload, "selector length", f"{length} for TS type {ts_type}, must be {expected}")
            if length < 4:
                raise DecodeError(r.payload, "selector length", f"{length} is shorter than the 4-octet header")
            with r.restrict(length - 4, "selector length"):
                if expected is not None:
                    selectors.append(TrafficSelector.decode_body(r, ts_type, second))
                else:
                    selectors.append(OpaqueTrafficSelector(ts_type, second, r.rest("selector")))
        return tuple(selectors)


@dataclass(frozen=True)
class TrafficSelectorsInitiator(_TrafficSelectors):
    payload_type: ClassVar[int] = PayloadType.TSi

    @classmethod
    def decode(cls, r: Reader) -> TrafficSelectorsInitiator:
        return cls(cls._decode_selectors(r))


@dataclass(frozen=True)
class TrafficSelectorsResponder(_TrafficSelectors):
    payload_type: ClassVar[int] = PayloadType.TSr

    @classmethod
    def decode(cls, r: Reader) -> TrafficSelectorsResponder:
        return cls(cls._decode_selectors(r))


@dataclass(frozen=True)
class Encrypted:
    """RFC 7296 3.14: the SK payload. `first_payload` is the type of the first inner payload (carried in this
    payload's own Next Payload field); `data` is IV | ciphertext | ICV, which only the negotiated suite can split
    (see crypto). It is always the last payload of a message."""

    payload_type: ClassVar[int] = PayloadType.SK
    first_payload: int
    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, r: Reader, first_payload: int) -> Encrypted:
        return cls(first_payload, r.rest("encrypted data"))


@dataclass(frozen=True)
class EncryptedFragment:
    """RFC 7383: the SKF payload. `first_payload` is meaningful in fragment 1 only (0 in the others)."""

    payload_type: ClassVar[int] = PayloadType.SKF
    first_payload: int
    number: int
    total: int
    data: bytes

    def encode(self) -> bytes:
        return _FRAGMENT.pack(self.number, self.total) + self.data

    @classmethod
    def decode(cls, r: Reader, first_payload: int) -> EncryptedFragment:
        number, total = r.fields(_FRAGMENT)
        if not 1 <= number <= total:
            raise DecodeError(r.payload, "fragment number", f"fragment {number} of {total}")
        return cls(first_payload, number, total, r.rest("encrypted data"))


@dataclass(frozen=True)
class UnknownPayload:
    """A payload type this implementation does not process, received with its critical bit clear."""

    payload_type: int
    data: bytes
    critical: bool = False

    def encode(self) -> bytes:
        return self.data


Payload = (SecurityAssociation | KeyExchange | Nonce | IdentificationInitiator | IdentificationResponder
           | Certificate | CertificateRequest | Authentication | Notify | Delete | VendorId
           | TrafficSelectorsInitiator | TrafficSelectorsResponder | Encrypted | EncryptedFragment | UnknownPayload)

_ENCRYPTED_CLASSES = (Encrypted, EncryptedFragment)  # a tuple: `A | B` would build a union on every call

_DECODERS: dict[int, Callable[[Reader], Payload]] = {
    PayloadType.SA: SecurityAssociation.decode,
    PayloadType.KE: KeyExchange.decode,
    PayloadType.IDi: IdentificationInitiator.decode,
    PayloadType.IDr: IdentificationResponder.decode,
    PayloadType.CERT: Certificate.decode,
    PayloadType.CERTREQ: CertificateRequest.decode,
    PayloadType.AUTH: Authentication.decode,
    PayloadType.NONCE: Nonce.decode,
    PayloadType.NOTIFY: Notify.decode,
    PayloadType.DELETE: Delete.decode,
    PayloadType.VENDOR: VendorId.decode,
    PayloadType.TSi: TrafficSelectorsInitiator.decode,
    PayloadType.TSr: TrafficSelectorsResponder.decode,
}


# --- the chain of payloads ---

@dataclass(frozen=True)
class PayloadHeader:
    """RFC 7296 3.2: the generic payload header. Its seven reserved bits are ignored on receipt."""

    next_payload: int
    critical: bool
    length: int

    def encode(self) -> bytes:
        return _GENERIC_HEADER.pack(self.next_payload, _CRITICAL if self.critical else 0, self.length)

    @classmethod
    def decode(cls, r: Reader) -> PayloadHeader:
        next_payload, critical, length = r.fields(_GENERIC_HEADER)
        return cls(_PAYLOAD_TYPES.get(next_payload, next_payload), bool(critical & _CRITICAL), length)


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """Chain `payloads` with generic headers. Returns the type of the first (for the Next Payload field that
    precedes the chain) and the bytes."""
    out: list[bytes] = []
    last = len(payloads) - 1
    for i, payload in enumerate(payloads):
        if isinstance(payload, _ENCRYPTED_CLASSES):
            if i != last:
                raise LocalProtocolError(f"{payload_name(payload.payload_type)} must be the last payload")
            next_type = payload.first_payload
        else:
            next_type = payloads[i + 1].payload_type if i < last else _NONE
        body = payload.encode()
        critical = _CRITICAL if isinstance(payload, UnknownPayload) and payload.critical else 0
        out += (_GENERIC_HEADER.pack(next_type, critical, PAYLOAD_HEADER_SIZE + len(body)), body)
    return (payloads[0].payload_type if payloads else _NONE), b"".join(out)


def decode_payloads(r: Reader, first_type: int, *, inner: bool = False) -> tuple[Payload, ...]:
    """Read the chain that starts with a payload of `first_type` up to the end of the reader's span. `inner` is
    for the plaintext of an Encrypted payload, where another Encrypted payload is not allowed."""
    payloads: list[Payload] = []
    payload_type = first_type
    while payload_type != _NONE:
        name = payload_name(payload_type)
        if r.at_end():
            raise DecodeError(name, "next payload", "announced by the payload before, but nothing follows")
        next_payload, critical, length = r.fields(_GENERIC_HEADER, payload=name)  # no PayloadHeader: one per payload
        if length < PAYLOAD_HEADER_SIZE:
            raise DecodeError(name, "payload length", f"{length} is shorter than the generic header")
        next_payload = _PAYLOAD_TYPES.get(next_payload, next_payload)
        with r.restrict(length - PAYLOAD_HEADER_SIZE, "payload length", payload=name):
            payloads.append(_decode_one(r, payload_type, next_payload, bool(critical & _CRITICAL), inner=inner))
        if payload_type in _ENCRYPTED:
            if not r.at_end():
                raise DecodeError(name, "next payload", f"{r.remaining} octets follow the Encrypted payload, "
                                                        "which must be the last")
            return tuple(payloads)
        payload_type = next_payload
    if not r.at_end():
        raise DecodeError(r.payload, "next payload", f"{r.remaining} octets after the last payload")
    return tuple(payloads)


def _decode_one(r: Reader, payload_type: int, next_payload: int, critical: bool, *, inner: bool) -> Payload:
    if payload_type in _ENCRYPTED:
        if inner:
            raise DecodeError(r.payload, "next payload", "an Encrypted payload inside an Encrypted payload")
        if payload_type == _SK:
            return Encrypted.decode(r, next_payload)
        return EncryptedFragment.decode(r, next_payload)
    decode = _DECODERS.get(payload_type)
    if decode is not None:
        return decode(r)
    if critical:
        raise UnsupportedCriticalPayload(payload_type)
    return UnknownPayload(payload_type, r.rest("payload data"))


# --- the message ---

@dataclass(frozen=True)
class IkeHeader:
    """RFC 7296 3.1. Next Payload and Length are properties of the whole message, so they are arguments of
    `encode` and results of `decode` rather than fields."""

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: HeaderFlag
    message_id: int
    major_version: int = IKE_MAJOR_VERSION
    minor_version: int = IKE_MINOR_VERSION

    @property
    def is_response(self) -> bool:
        return bool(int(self.flags) & _RESPONSE)  # int's &, not IntFlag's (a Python method)

    @property
    def is_initiator(self) -> bool:
        return bool(int(self.flags) & _INITIATOR)

    def encode(self, next_payload: int, length: int) -> bytes:
        for spi, name in ((self.spi_i, "initiator spi"), (self.spi_r, "responder spi")):
            if len(spi) != IKE_SPI_SIZE:
                raise LocalProtocolError(f"{name}: must be {IKE_SPI_SIZE} octets, not {len(spi)}")
        version = (self.major_version << 4) | self.minor_version
        tail = _IKE_HEADER_TAIL.pack(next_payload, version, self.exchange, self.flags, self.message_id, length)
        return b"".join((self.spi_i, self.spi_r, tail))

    @classmethod
    def decode(cls, r: Reader) -> tuple[IkeHeader, int, int]:
        """Read the 28-octet header: (header, next payload, length)."""
        spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = r.fields(
            _IKE_HEADER, payload="IKE header")
        major, minor = version >> 4, version & 0x0F
        if major != IKE_MAJOR_VERSION:
            raise InvalidMajorVersion(f"IKE header: major version {major}, this is IKEv2")
        header = cls(spi_i, spi_r, _EXCHANGES.get(exchange, exchange), _HEADER_FLAGS[flags], message_id, major, minor)
        return header, _PAYLOAD_TYPES.get(next_payload, next_payload), length


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True)
class Message:
    """One IKEv2 datagram: the header and the payload chain (an Encrypted payload, if any, last and opaque)."""

    header: IkeHeader
    payloads: tuple[Payload, ...] = field(default=())

    def encode(self) -> bytes:
        first, body = encode_payloads(self.payloads)
        return self.header.encode(first, IKE_HEADER_SIZE + len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Message:
        r = Reader(data)
        header, first, length = IkeHeader.decode(r)
        if length != len(data):
            raise DecodeError("IKE header", "length", f"says {length} octets, the datagram has {len(data)}")
        return cls(header, decode_payloads(r, first))

    def find(self, kind: type[P]) -> P | None:
        """The first payload of that class, if any."""
        for payload in self.payloads:
            if isinstance(payload, kind):
                return payload
        return None

    def find_all(self, kind: type[P]) -> tuple[P, ...]:
        return tuple(p for p in self.payloads if isinstance(p, kind))


# --- helpers for notification data ---

def encode_hash_algorithms(algorithms: Sequence[int]) -> bytes:
    """SIGNATURE_HASH_ALGORITHMS notification data (RFC 7427): 16-bit hash algorithm numbers."""
    w = Writer()
    for algorithm in algorithms:
        w.u16(algorithm, "hash algorithm")
    return w.getvalue()


def decode_hash_algorithms(data: bytes) -> tuple[int, ...]:
    r = Reader(data, payload="SIGNATURE_HASH_ALGORITHMS")
    if len(data) % 2:
        raise DecodeError(r.payload, "hash algorithms", f"{len(data)} octets is not a list of 16-bit numbers")
    return tuple(known(HashAlgorithm, r.u16("hash algorithm")) for _ in range(len(data) // 2))
