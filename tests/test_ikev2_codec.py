"""The IKEv2 codec: every payload survives encode -> decode, hand-built messages decode to the fields RFC 7296 lays
out and re-encode byte for byte, and broken input fails with a DecodeError that names the payload and field."""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.ikev2.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from enclave_ike.ikev2.errors import (
    DecodeError,
    IkeError,
    InvalidMajorVersion,
    LocalProtocolError,
    UnsupportedCriticalPayload,
)
from enclave_ike.ikev2.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    Encrypted,
    EncryptedFragment,
    IdentificationInitiator,
    IdentificationResponder,
    IkeHeader,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    OpaqueTrafficSelector,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    Transform,
    TransformAttribute,
    UnknownPayload,
    VendorId,
    decode_hash_algorithms,
    decode_payloads,
    encode_hash_algorithms,
    encode_payloads,
)
from enclave_ike.ikev2.wire import Reader, Writer

# --- strategies: every payload type ---

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF_FFFF)


def blobs(max_size: int = 40, min_size: int = 0) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=min_size, max_size=max_size)


attributes = st.builds(TransformAttribute, st.integers(0, 0x7FFF), st.one_of(u16, blobs(12)))
transforms = st.builds(Transform, u8, u16, st.lists(attributes, max_size=3).map(tuple))
proposals = st.builds(Proposal, u8, u8, blobs(8), st.lists(transforms, max_size=5).map(tuple))
ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(IPv6Address)
selectors = st.one_of(
    st.builds(TrafficSelector, ipv4, ipv4, u8, u16, u16),
    st.builds(TrafficSelector, ipv6, ipv6, u8, u16, u16),
    st.builds(OpaqueTrafficSelector, u8.filter(lambda t: t not in (7, 8)), u8, blobs(24)),
)


@st.composite
def deletes(draw: st.DrawFn) -> Delete:
    size = draw(st.sampled_from([0, 4, 8, 16]))
    count = draw(st.integers(0, 4))
    return Delete(draw(u8), size, tuple(draw(blobs(size, size)) for _ in range(count)))


UNDECODED_TYPES = [t for t in range(1, 256) if t not in range(33, 47) and t != 53]

plain_payloads = st.one_of(
    st.builds(SecurityAssociation, st.lists(proposals, min_size=1, max_size=3).map(tuple)),
    st.builds(KeyExchange, u16, blobs(100)),
    st.builds(Nonce, blobs(256, 16)),
    st.builds(IdentificationInitiator, u8, blobs(), blobs(3, 3)),
    st.builds(IdentificationResponder, u8, blobs(), blobs(3, 3)),
    st.builds(Certificate, u8, blobs()),
    st.builds(CertificateRequest, u8, blobs()),
    st.builds(Authentication, u8, blobs()),
    st.builds(Notify, u16, blobs(), u8, blobs(8)),
    deletes(),
    st.builds(VendorId, blobs()),
    st.builds(TrafficSelectorsInitiator, st.lists(selectors, max_size=4).map(tuple)),
    st.builds(TrafficSelectorsResponder, st.lists(selectors, max_size=4).map(tuple)),
    st.builds(UnknownPayload, st.sampled_from(UNDECODED_TYPES), blobs()),
)
last_payloads = st.one_of(
    st.builds(Encrypted, u8, blobs(80)),
    st.builds(EncryptedFragment, u8, st.integers(1, 5), st.just(5), blobs(60)),
)
headers = st.builds(IkeHeader, blobs(8, 8), blobs(8, 8), u8, u8.map(HeaderFlag), u32,
                    st.just(2), st.integers(0, 15))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    payloads = draw(st.lists(plain_payloads, max_size=6))
    if draw(st.booleans()):
        payloads.append(draw(last_payloads))
    return Message(draw(headers), tuple(payloads))


# --- round trips ---

@settings(max_examples=600, deadline=None)
@given(plain_payloads)
def test_every_payload_round_trips_alone(payload):
    body = payload.encode()
    if isinstance(payload, UnknownPayload):
        assert decode_payloads(Reader(encode_payloads([payload])[1]), payload.payload_type) == (payload,)
        return
    r = Reader(body)
    decoded = type(payload).decode(r)
    assert r.at_end()
    assert decoded == payload
    assert decoded.encode() == body


@settings(max_examples=200, deadline=None)
@given(last_payloads)
def test_encrypted_payloads_round_trip(payload):
    first, data = encode_payloads([payload])
    assert first == payload.payload_type
    assert decode_payloads(Reader(data), first) == (payload,)


@settings(max_examples=500, deadline=None)
@given(messages())
def test_messages_round_trip(message):
    wire = message.encode()
    decoded = Message.decode(wire)
    assert decoded == message
    assert decoded.encode() == wire


@given(st.lists(st.sampled_from(list(HashAlgorithm)) | u16, max_size=6))
def test_signature_hash_algorithms_round_trip(algorithms):
    assert decode_hash_algorithms(encode_hash_algorithms(algorithms)) == tuple(algorithms)


# --- hand-built messages (laid out field by field from RFC 7296 section 3, not by our encoder) ---

SA_INIT_REQUEST = bytes.fromhex(
    # IKE header: SPIi, SPIr (zero), next SA (0x21), version 2.0, IKE_SA_INIT (0x22), flags Initiator,
    # message ID 0, length 204
    "0102030405060708" "0000000000000000" "21" "20" "22" "08" "00000000" "000000cc"
    # SA: next KE (0x22), not critical, length 40
    "22" "00" "0028"
    #   proposal: last, length 36, #1, protocol IKE, SPI size 0, 3 transforms
    "00" "00" "0024" "01" "01" "00" "03"
    #     ENCR_AES_GCM_16 (20) with Key Length (TV attribute 14) = 256
    "03" "00" "000c" "01" "00" "0014" "800e0100"
    #     PRF_HMAC_SHA2_256 (5)
    "03" "00" "0008" "02" "00" "0005"
    #     DH group 19, last transform
    "00" "00" "0008" "04" "00" "0013"
    # KE: next Nonce (0x28), length 72, group 19, reserved, 64 octets of x | y
    "28" "00" "0048" "0013" "0000" + "11" * 64 +
    # Nonce: next Notify (0x29), length 36, 32 octets
    "29" "00" "0024" + "22" * 32 +
    # Notify: last, length 28, protocol 0, SPI size 0, NAT_DETECTION_SOURCE_IP (16388 = 0x4004), SHA-1 hash
    "00" "00" "001c" "00" "00" "4004" + "33" * 20
)

AUTH_RESPONSE = bytes.fromhex(
    # IKE header: both SPIs, next SK (0x2e), IKE_AUTH (0x23), flags Response, message ID 1, length 28 + 48
    "0102030405060708" "1112131415161718" "2e" "20" "23" "20" "00000001" "0000004c"
    # SK: next IDr (0x24, the first inner payload), length 48: 8 IV + 20 ciphertext + 16 ICV, all opaque here
    "24" "00" "0030" + "aa" * 8 + "bb" * 20 + "cc" * 16
)

CHILD_SELECTORS = bytes.fromhex(
    # IKE header: CREATE_CHILD_SA (0x24), flags Initiator, message ID 2, next TSi (0x2c), length 28 + 40 + 48 + 16
    "0102030405060708" "1112131415161718" "2c" "20" "24" "08" "00000002" "00000084"
    # TSi: next TSr (0x2d), length 40, 2 selectors
    "2d" "00" "0028" "02" "000000"
    #   IPv4 range, UDP (17), length 16, ports 0-65535, 192.0.2.10 - 192.0.2.10
    "07" "11" "0010" "0000" "ffff" "c000020a" "c000020a"
    #   IPv4 range, TCP (6), length 16, ports 1024-65535, 192.0.2.0 - 192.0.2.255
    "07" "06" "0010" "0400" "ffff" "c0000200" "c00002ff"
    # TSr: next Delete (0x2a), length 48, 1 selector: IPv6, UDP, port 53 only, 2001:db8::53 - 2001:db8::53
    "2a" "00" "0030" "01" "000000"
    "08" "11" "0028" "0035" "0035" "20010db8000000000000000000000053" "20010db8000000000000000000000053"
    # Delete: last, length 16, protocol ESP (3), SPI size 4, 2 SPIs
    "00" "00" "0010" "03" "04" "0002" "c0ffee01" "c0ffee02"
)


def test_hand_built_sa_init_request_decodes_field_by_field():
    message = Message.decode(SA_INIT_REQUEST)
    header = message.header
    assert header.spi_i == bytes.fromhex("0102030405060708") and header.spi_r == bytes(8)
    assert header.exchange == ExchangeType.IKE_SA_INIT and header.message_id == 0
    assert header.is_initiator and not header.is_response
    assert (header.major_version, header.minor_version) == (2, 0)
    sa, ke, nonce, notify = message.payloads
    assert sa == SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", (
        Transform.create(TransformType.ENCR, EncrId.ENCR_AES_GCM_16, 256),
        Transform.create(TransformType.PRF, PrfId.PRF_HMAC_SHA2_256),
        Transform.create(TransformType.DH, DhGroup.ECP_256),
    )),))
    assert sa.proposals[0].transforms[0].key_length == 256
    assert ke == KeyExchange(DhGroup.ECP_256, b"\x11" * 64)
    assert nonce == Nonce(b"\x22" * 32)
    assert notify == Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x33" * 20)
    assert message.find(Nonce) is nonce and message.find_all(Notify) == (notify,)
    assert message.encode() == SA_INIT_REQUEST


def test_hand_built_auth_response_keeps_sk_opaque_with_its_first_inner_type():
    message = Message.decode(AUTH_RESPONSE)
    assert message.header.is_response and message.header.exchange == ExchangeType.IKE_AUTH
    (sk,) = message.payloads
    assert sk == Encrypted(PayloadType.IDr, b"\xaa" * 8 + b"\xbb" * 20 + b"\xcc" * 16)
    assert message.encode() == AUTH_RESPONSE


def test_hand_built_selectors_and_delete():
    message = Message.decode(CHILD_SELECTORS)
    tsi, tsr, delete = message.payloads
    assert tsi == TrafficSelectorsInitiator((
        TrafficSelector(IPv4Address("192.0.2.10"), IPv4Address("192.0.2.10"), 17, 0, 65535),
        TrafficSelector(IPv4Address("192.0.2.0"), IPv4Address("192.0.2.255"), 6, 1024, 65535),
    ))
    assert tsr == TrafficSelectorsResponder((
        TrafficSelector(IPv6Address("2001:db8::53"), IPv6Address("2001:db8::53"), 17, 53, 53),))
    assert [ts.ts_type for ts in tsi.selectors + tsr.selectors] == [7, 7, 8]
    assert delete == Delete(ProtocolId.ESP, 4, (bytes.fromhex("c0ffee01"), bytes.fromhex("c0ffee02")))
    assert message.encode() == CHILD_SELECTORS


def test_identification_body_is_the_rest_of_the_id_payload():
    """RFC 7296 2.15 MACs the ID payload without its generic header: type, reserved, data."""
    idi = IdentificationInitiator(IdType.ID_FQDN, b"resolver.example")
    assert idi.encode() == b"\x02\x00\x00\x00resolver.example"
    odd = IdentificationInitiator.decode(Reader(b"\x0d\x01\x02\x03"))
    assert odd == IdentificationInitiator(IdType.ID_NULL, b"", b"\x01\x02\x03")
    assert odd.encode() == b"\x0d\x01\x02\x03"  # reserved octets as received


# --- critical bits ---

def _with_payload(payload_type: int, flags: int, body: bytes) -> bytes:
    header = IkeHeader(b"\x01" * 8, bytes(8), ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR, 7)
    payload = bytes([0, flags]) + (4 + len(body)).to_bytes(2, "big") + body
    return header.encode(payload_type, 28 + len(payload)) + payload


def test_unknown_payload_without_critical_bit_is_kept():
    message = Message.decode(_with_payload(200, 0x00, b"future"))
    assert message.payloads == (UnknownPayload(200, b"future"),)
    assert message.encode() == _with_payload(200, 0x00, b"future")


def test_unknown_payload_with_critical_bit_is_unsupported_critical_payload():
    with pytest.raises(UnsupportedCriticalPayload) as caught:
        Message.decode(_with_payload(200, 0x80, b"future"))
    assert caught.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD == 1
    assert caught.value.notify_data == bytes([200])
    assert caught.value.payload_type == 200


def test_payloads_we_do_not_process_count_as_unknown():
    """CP (47) is an RFC 7296 payload this responder does not implement: critical means refuse."""
    with pytest.raises(UnsupportedCriticalPayload):
        Message.decode(_with_payload(PayloadType.CP, 0x80, b"\x01\x00\x00\x00"))


def test_critical_bit_on_a_known_payload_is_ignored():
    message = Message.decode(_with_payload(PayloadType.VENDOR, 0x80 | 0x7F, b"libreswan"))
    assert message.payloads == (VendorId(b"libreswan"),)


# --- truncation ---

SAMPLES = [SA_INIT_REQUEST, AUTH_RESPONSE, CHILD_SELECTORS, _with_payload(200, 0, b"x" * 9)]


@pytest.mark.parametrize("sample", SAMPLES, ids=["sa-init", "auth-sk", "ts-delete", "unknown"])
def test_truncation_at_every_octet_is_a_decode_error(sample):
    for cut in range(len(sample)):
        with pytest.raises(DecodeError):
            Message.decode(sample[:cut])


@pytest.mark.parametrize("sample", SAMPLES, ids=["sa-init", "auth-sk", "ts-delete", "unknown"])
def test_truncation_with_a_consistent_header_length_is_a_decode_error(sample):
    """The header length is patched to agree with the cut, so the payload chain itself must notice."""
    for cut in range(28, len(sample)):
        patched = sample[:24] + cut.to_bytes(4, "big") + sample[28:cut]
        with pytest.raises(DecodeError):
            Message.decode(patched)


def test_truncated_header_names_the_field():
    with pytest.raises(DecodeError) as caught:
        Message.decode(SA_INIT_REQUEST[:20])
    assert (caught.value.payload, caught.value.field) == ("IKE header", "message id")
    assert caught.value.notify == NotifyType.INVALID_SYNTAX


# --- broken structure: each error names the payload and field ---

def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def _shrink_nonce(data: bytes, size: int) -> bytes:
    """SA_INIT_REQUEST with its nonce (at 140, data at 144..175) cut to `size` octets, lengths kept consistent."""
    out = bytearray(data)
    out[142:144] = (4 + size).to_bytes(2, "big")
    del out[144 + size:176]
    out[24:28] = len(out).to_bytes(4, "big")
    return bytes(out)


BROKEN = {
    "length-disagrees-with-datagram": (SA_INIT_REQUEST + b"\0", "IKE header", "length"),
    "proposal-last-substruc-3": (_patch(SA_INIT_REQUEST, 32, b"\x03"), "SA", "proposal last substruc"),
    "transform-count-too-high": (_patch(SA_INIT_REQUEST, 39, b"\x04"), "SA", "transform last substruc"),
    "transform-last-flag-early": (_patch(SA_INIT_REQUEST, 40, b"\x00"), "SA", "transform last substruc"),
    "attribute-tlv-runs-past": (_patch(SA_INIT_REQUEST, 48, b"\x00\x0e\x01\x00"), "SA", "attribute value"),
    "nonce-too-short": (_shrink_nonce(SA_INIT_REQUEST, 8), "NONCE", "nonce data"),
    "payload-length-below-header": (_patch(SA_INIT_REQUEST, 176 + 2, b"\x00\x03"), "NOTIFY", "payload length"),
    "payload-length-past-end": (_patch(SA_INIT_REQUEST, 176 + 2, b"\x00\x1d"), "NOTIFY", "payload length"),
    "selector-length-wrong": (_patch(CHILD_SELECTORS, 28 + 8 + 2, b"\x00\x11"), "TSi", "selector length"),
    "delete-count-mismatch": (_patch(CHILD_SELECTORS, 28 + 40 + 48 + 6, b"\x00\x03"), "DELETE", "number of spis"),
    "octets-after-sk": (_patch(AUTH_RESPONSE, 30, b"\x00\x2f"), "SK", "next payload"),
    "next-payload-announced-but-missing": (_patch(SA_INIT_REQUEST, 176, b"\x2b"), "VENDOR", "next payload"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_structures_name_payload_and_field(name):
    data, payload, field = BROKEN[name]
    with pytest.raises(DecodeError) as caught:
        Message.decode(data)
    assert (caught.value.payload, caught.value.field) == (payload, field), str(caught.value)
    assert caught.value.notify == NotifyType.INVALID_SYNTAX


def test_other_major_version_is_invalid_major_version():
    with pytest.raises(InvalidMajorVersion) as caught:
        Message.decode(_patch(SA_INIT_REQUEST, 17, b"\x10"))  # IKEv1
    assert caught.value.notify == NotifyType.INVALID_MAJOR_VERSION


def test_encrypted_payload_inside_encrypted_payload_is_refused():
    _, chain = encode_payloads([Encrypted(PayloadType.NONE, b"\0" * 24)])
    with pytest.raises(DecodeError):
        decode_payloads(Reader(chain, payload="SK"), PayloadType.SK, inner=True)


def test_fragment_number_beyond_total_is_refused():
    _, chain = encode_payloads([EncryptedFragment(PayloadType.IDi, 3, 2, b"data")])
    with pytest.raises(DecodeError) as caught:
        decode_payloads(Reader(chain), PayloadType.SKF)
    assert caught.value.field == "fragment number"


# --- encoding refuses what cannot go on the wire (our own mistakes) ---

@pytest.mark.parametrize("build", [
    lambda: Nonce(b"short").encode(),
    lambda: Notify(70000).encode(),
    lambda: Delete(ProtocolId.ESP, 4, (b"\0\0\0",)).encode(),
    lambda: SecurityAssociation(()).encode(),
    lambda: TransformAttribute(0x8000, 1).encode(),
    lambda: TrafficSelector(IPv4Address("192.0.2.1"), IPv6Address("::1")).encode(),
    lambda: encode_payloads([Encrypted(0, b""), VendorId(b"x")]),
    lambda: IkeHeader(b"short", bytes(8), 34, HeaderFlag.NONE, 0).encode(0, 28),
])
def test_local_mistakes_are_local_protocol_errors(build):
    with pytest.raises(LocalProtocolError) as caught:
        build()
    assert caught.value.notify is None
    assert isinstance(caught.value, IkeError)


def test_writer_checks_field_widths():
    with pytest.raises(LocalProtocolError, match="message id"):
        Writer().u32(2**32, "message id")
    assert Writer().u8(1, "a").u16(2, "b").u32(3, "c").getvalue() == bytes.fromhex("01000200000003")


def test_reader_restrict_refuses_unread_octets():
    r = Reader(b"\x01\x02\x03", payload="X")
    with pytest.raises(DecodeError) as caught, r.restrict(2, "span"):
        r.u8("first")
    assert "1 octets left unread" in str(caught.value)
