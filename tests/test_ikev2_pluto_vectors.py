"""Exchanges captured from libreswan's pluto (tests/vectors/ikev2/pluto-*/, made by capture_pluto.py beside them),
replayed against our codec and crypto.

- Our decoder reads every datagram to the same fields pluto's debug log shows for it (`pluto-fields.txt`: the parse
  records of the pluto that received it, or the emit records of the pluto that sent it): header, payload chain
  (next payload, length), KE group and data, nonces, notify types and data, ID types, AUTH methods and data, every
  proposal and transform, every traffic selector. SK payloads are opened with the keys pluto logged first.
- Our key derivation gives pluto's keys: from Ni, Nr, g^ir and the SPIs, SKEYSEED and the whole DKM equal what
  libreswan's KDF (its CAVP driver) computes, SK_ai/SK_ei/SK_ar/SK_er/SK_pi/SK_pr equal what the pluto daemon logged,
  and the Child SA KEYMAT from SK_d equals pluto's. (g^ir is known where the responder was enclave-ike: libreswan
  4.10 logs neither g^ir, SKEYSEED nor SK_d.)
- The NULL AUTH payloads (RFC 7619) both sides sent verify with our signed-octets and prf code and pluto's SK_p*.
"""

import re
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import pytest

from enclave_ike.ikev2 import crypto as c
from enclave_ike.ikev2.constants import (
    AuthMethod,
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from enclave_ike.ikev2.payloads import (
    Authentication,
    Encrypted,
    IdentificationInitiator,
    IdentificationResponder,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    TrafficSelector,
    TrafficSelectorsInitiator,
    TrafficSelectorsResponder,
    VendorId,
    encode_payloads,
)

VECTORS = Path(__file__).parent / "vectors" / "ikev2"
SUITES = {
    "pluto-pluto-aes_gcm_16_256-prf_sha2_256-dh19":
        c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.ECP_256),
    "pluto-enclave-ike-aes_gcm_16_256-prf_sha2_256-dh31":
        c.IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.CURVE25519),
    "pluto-enclave-ike-aes_cbc_128-hmac_sha2_256-dh14":
        c.IkeSuite(EncrId.ENCR_AES_CBC, 128, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128,
                   DhGroup.MODP_2048),
}
CAPTURES = sorted(p.name for p in VECTORS.glob("pluto-*") if p.is_dir())
WITH_GIR = [name for name in CAPTURES if "g^ir" in (VECTORS / name / "keys.txt").read_text()]


def test_every_capture_is_known():
    assert sorted(SUITES) == CAPTURES
    assert len(WITH_GIR) == 2  # the captures against enclave-ike


# --- loading ---

@dataclass
class Record:
    verb: str  # parse or emit
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)  # raw dumps, concatenated per name

    def number(self, key: str) -> int:
        """`NAME (0x1f)` -> 0x1f; `256 (01 00)` -> 256."""
        value = self.fields[key]
        match = re.search(r"\(0x([0-9a-f]+)\)$", value)
        return int(match.group(1), 16) if match else int(value.split()[0])


@dataclass
class Capture:
    name: str
    datagrams: list[tuple[str, bytes]]
    keys: dict[str, bytes]
    records: list[list[Record]]

    @property
    def suite(self) -> c.IkeSuite:
        return SUITES[self.name]

    def cipher(self, sender_is_initiator: bool) -> c.SkCipher:
        suite, k = self.suite, self.keys
        encr, integ = (k["SK_ei"], k["SK_ai"]) if sender_is_initiator else (k["SK_er"], k["SK_ar"])
        return c.SkCipher(suite.encryption, encr, suite.integrity, integ)

    def message(self, n: int) -> tuple[Message, tuple[Payload, ...]]:
        """Message n (from 1) and its inner payloads, if it has an SK payload."""
        direction, data = self.datagrams[n - 1]
        message = Message.decode(data)
        if message.find(Encrypted) is None:
            return message, ()
        return c.decrypt_message(self.cipher(direction == "i->r"), data)


def load(name: str) -> Capture:
    d = VECTORS / name
    datagrams = []
    for line in (d / "datagrams.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            direction, data = line.split()
            datagrams.append((direction, bytes.fromhex(data)))
    keys = {}
    for line in (d / "keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            keys[key] = bytes.fromhex(value)
    messages: list[list[Record]] = []
    for line in (d / "pluto-fields.txt").read_text().splitlines():
        if line.startswith("# message"):
            messages.append([])
        elif line.startswith(("parse ", "emit ")):
            verb, _, record_name = line.partition(" ")
            messages[-1].append(Record(verb, record_name))
        elif line.startswith("    raw "):
            key, _, value = line[8:].partition(": ")
            record = messages[-1][-1]
            record.raw[key] = record.raw.get(key, b"") + bytes.fromhex(value)
        elif line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            messages[-1][-1].fields[key] = value
    return Capture(name, datagrams, keys, messages)


@pytest.fixture(params=CAPTURES)
def capture(request) -> Capture:
    return load(request.param)


# --- the decoder: what the messages are ---

def test_messages_decode_to_the_exchange(capture):
    """IKE_SA_INIT and IKE_AUTH, request and response, with the SPIs pluto logged; our suite reads the proposals."""
    assert [d for d, _ in capture.datagrams] == ["i->r", "r->i", "i->r", "r->i"]
    spi_i, spi_r = capture.keys["SPIi"], capture.keys["SPIr"]
    expected = [(ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0, bytes(8)),
                (ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, spi_r),
                (ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1, spi_r),
                (ExchangeType.IKE_AUTH, HeaderFlag.RESPONSE, 1, spi_r)]
    for n, (exchange, flags, message_id, responder_spi) in enumerate(expected, 1):
        message, _ = capture.message(n)
        assert (message.header.spi_i, message.header.spi_r) == (spi_i, responder_spi)
        assert (message.header.exchange, message.header.flags, message.header.message_id) == (
            exchange, flags, message_id)
        assert (message.header.major_version, message.header.minor_version) == (2, 0)
    request, _ = capture.message(1)
    response, _ = capture.message(2)
    for message in (request, response):
        sa = message.find(SecurityAssociation)
        assert sa is not None and len(sa.proposals) == 1
        assert sa.proposals[0].protocol == ProtocolId.IKE and sa.proposals[0].spi == b""
        assert c.IkeSuite.from_proposal(sa.proposals[0]) == capture.suite
        ke = message.find(KeyExchange)
        assert ke is not None and ke.group == capture.suite.dh_group
        assert len(ke.data) == c.dh_public_size(ke.group)
        nonce = message.find(Nonce)
        assert nonce is not None and len(nonce.data) == 32
    assert request.find(Nonce).data == capture.keys["Ni"]
    assert response.find(Nonce).data == capture.keys["Nr"]
    # pluto's IKE_SA_INIT request: fragmentation, NAT detection (RFC 7383, RFC 7296 2.23), the OE vendor ID
    assert {n.notify_type for n in request.find_all(Notify)} == {
        NotifyType.IKEV2_FRAGMENTATION_SUPPORTED, NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP}
    assert request.find(VendorId).data == b"Opportunistic IPsec"


def test_nat_detection_hashes_match_the_addresses(capture):
    """RFC 7296 2.23: SHA-1(SPIi | SPIr | IP | port), SPIr zero in the request; the lab has no NAT."""
    request, _ = capture.message(1)
    initiator, responder = ip_address("10.71.0.1"), ip_address("10.71.0.53")
    source = request.find_all(Notify)
    by_type = {n.notify_type: n.data for n in source}
    spi_i = capture.keys["SPIi"]
    assert by_type[NotifyType.NAT_DETECTION_SOURCE_IP] == c.nat_detection_hash(spi_i, bytes(8), initiator, 500)
    assert by_type[NotifyType.NAT_DETECTION_DESTINATION_IP] == c.nat_detection_hash(spi_i, bytes(8), responder, 500)


def test_ike_auth_opens_with_the_logged_keys(capture):
    """The SK payloads of IKE_AUTH decrypt with pluto's SK_e*/SK_a* and hold a NULL-authenticated Child SA
    request for udp to port 53, in transport mode."""
    _, inner = capture.message(3)
    assert [type(p) for p in inner] == [IdentificationInitiator, IdentificationResponder, Authentication,
                                        SecurityAssociation, TrafficSelectorsInitiator, TrafficSelectorsResponder,
                                        Notify]
    idi, idr, auth, sa, tsi, tsr, transport = inner
    assert (idi.id_type, idi.data, idr.id_type, idr.data) == (IdType.ID_NULL, b"", IdType.ID_NULL, b"")
    assert auth.method == AuthMethod.NULL
    assert transport.notify_type == NotifyType.USE_TRANSPORT_MODE
    offer = sa.proposals[0]  # one proposal, ESN with and without (pluto's default)
    assert offer.protocol == ProtocolId.ESP and len(offer.spi) == 4
    assert [t.id for t in offer.transforms_of(TransformType.ENCR)] == [capture.suite.encryption.id]
    assert {t.id for t in offer.transforms_of(TransformType.ESN)} == {0, 1}
    assert tsi.selectors == (TrafficSelector(ip_address("10.71.0.1"), ip_address("10.71.0.1"), 17, 0, 65535),)
    assert tsr.selectors == (TrafficSelector(ip_address("10.71.0.53"), ip_address("10.71.0.53"), 17, 53, 53),)
    _, answer = capture.message(4)
    assert isinstance(answer[0], IdentificationResponder) and isinstance(answer[1], Authentication)
    notifies = {p.notify_type for p in answer if isinstance(p, Notify)}
    if capture.name.startswith("pluto-pluto"):  # pluto could not install the Child SA: no ESP in this kernel
        assert notifies == {NotifyType.TS_UNACCEPTABLE}
    else:  # enclave-ike narrowed and accepted it
        assert NotifyType.USE_TRANSPORT_MODE in notifies
        assert any(isinstance(p, SecurityAssociation) for p in answer)


# --- the decoder: field by field against pluto's own parse ---

PAYLOADS = {
    "IKEv2 Security Association Payload": SecurityAssociation,
    "IKEv2 Key Exchange Payload": KeyExchange,
    "IKEv2 Nonce Payload": Nonce,
    "IKEv2 Notify Payload": Notify,
    "IKEv2 Vendor ID Payload": VendorId,
    "IKEv2 Encryption Payload": Encrypted,
    "IKEv2 Identification - Initiator - Payload": IdentificationInitiator,
    "IKEv2 Identification - Responder - Payload": IdentificationResponder,
    "IKEv2 Authentication Payload": Authentication,
    "IKEv2 Traffic Selector - Initiator - Payload": TrafficSelectorsInitiator,
    "IKEv2 Traffic Selector - Responder - Payload": TrafficSelectorsResponder,
}
SUBSTRUCTURES = {"IKEv2 Proposal Substructure Payload", "IKEv2 Transform Substructure Payload",
                 "IKEv2 Attribute Substructure Payload", "IKEv2 Traffic Selector Header",
                 "IKEv2 IP Traffic Selector port range"}


def chain(message: Message, inner: tuple[Payload, ...]) -> list[tuple[Payload, int, int]]:
    """(payload, its next payload field, its length) in wire order: the outer chain, then the SK payload's inner
    chain (the SK payload's next payload field names the first inner payload)."""
    out = []
    for i, payload in enumerate(message.payloads):
        if isinstance(payload, Encrypted):
            out.append((payload, payload.first_payload, 4 + len(payload.data)))
            continue
        following = message.payloads[i + 1].payload_type if i + 1 < len(message.payloads) else 0
        out.append((payload, following, len(encode_payloads([payload])[1])))
    for i, payload in enumerate(inner):
        following = inner[i + 1].payload_type if i + 1 < len(inner) else 0
        out.append((payload, following, len(encode_payloads([payload])[1])))
    return out


def check_payload(record: Record, payload: Payload, next_type: int, length: int) -> None:
    if record.verb == "parse":  # emit records show these fields before pluto patches them
        assert record.number("next payload type") == next_type
        assert record.number("length") == length
    checks = {
        "DH group": lambda p: p.group, "Notify Message Type": lambda p: p.notify_type,
        "Protocol ID": lambda p: p.protocol, "SPI size": lambda p: len(p.spi), "ID type": lambda p: p.id_type,
        "auth method": lambda p: p.method, "number of TS": lambda p: len(p.selectors),
    }
    for key, get in checks.items():
        if key in record.fields:
            assert record.number(key) == get(payload), key
    if "reserved" in record.fields:
        assert bytes.fromhex(record.fields["reserved"].replace(" ", "")) == payload.reserved
    for key, data in record.raw.items():
        assert data == payload.data, key  # nonce, g^x, notify data, vendor ID, AUTH data


def check_substructures(records: list[Record], payloads: list[Payload]) -> None:
    proposals = [pr for p in payloads if isinstance(p, SecurityAssociation) for pr in p.proposals]
    transforms = [t for pr in proposals for t in pr.transforms]
    selectors = [s for p in payloads if isinstance(p, TrafficSelectorsInitiator | TrafficSelectorsResponder)
                 for s in p.selectors]
    seen = {"proposal": 0, "transform": 0, "selector": 0, "ports": 0}
    for record in records:
        if record.name == "IKEv2 Proposal Substructure Payload":
            proposal = proposals[seen["proposal"]]
            seen["proposal"] += 1
            assert record.number("prop #") == proposal.number
            assert record.number("proto ID") == proposal.protocol
            assert record.number("spi size") == len(proposal.spi)
            assert record.number("# transforms") == len(proposal.transforms)
            if "remote SPI" in record.raw:
                assert record.raw["remote SPI"] == proposal.spi
        elif record.name == "IKEv2 Transform Substructure Payload":
            transform = transforms[seen["transform"]]
            seen["transform"] += 1
            assert record.number("IKEv2 transform type") == transform.type
            assert record.number("IKEv2 transform ID") == transform.id
        elif record.name == "IKEv2 Attribute Substructure Payload":
            transform = transforms[seen["transform"] - 1]
            assert record.number("af+type") == 0x800E and record.number("length/value") == transform.key_length
        elif record.name == "IKEv2 Traffic Selector Header":
            selector = selectors[seen["selector"]]
            seen["selector"] += 1
            assert isinstance(selector, TrafficSelector)
            assert record.number("TS type") == selector.ts_type
            assert record.number("IP Protocol ID") == selector.protocol
        elif record.name == "IKEv2 IP Traffic Selector port range":
            selector = selectors[seen["selector"] - 1]
            assert (record.number("start port"), record.number("end port")) == (selector.start_port,
                                                                                 selector.end_port)
            if "TS IP start" in record.raw:
                assert record.raw["TS IP start"] == selector.start_address.packed
                assert record.raw["TS IP end"] == selector.end_address.packed
    assert seen["proposal"] == len(proposals) and seen["transform"] == len(transforms)
    assert seen["selector"] == len(selectors)


def test_fields_are_the_ones_pluto_saw(capture):
    assert len(capture.records) == len(capture.datagrams)
    for n, records in enumerate(capture.records, 1):
        message, inner = capture.message(n)
        data = capture.datagrams[n - 1][1]
        header, *rest = records
        assert header.name == "ISAKMP Message"
        assert bytes.fromhex(header.fields["initiator SPI"].replace(" ", "")) == message.header.spi_i
        assert bytes.fromhex(header.fields["responder SPI"].replace(" ", "")) == message.header.spi_r
        assert header.number("exchange type") == message.header.exchange
        assert header.number("flags") == message.header.flags
        assert header.number("Message ID") == message.header.message_id
        assert header.number("ISAKMP version") == 0x20
        if header.verb == "parse":
            assert header.number("length") == len(data)
            assert header.number("next payload type") == message.payloads[0].payload_type
        payload_records = [r for r in rest if r.name not in SUBSTRUCTURES]
        assert all(r.name in PAYLOADS for r in payload_records), [r.name for r in payload_records]
        wire = chain(message, inner)
        assert [PAYLOADS[r.name] for r in payload_records] == [type(p) for p, _, _ in wire]
        for record, (payload, next_type, length) in zip(payload_records, wire, strict=True):
            check_payload(record, payload, next_type, length)
        check_substructures([r for r in rest if r.name in SUBSTRUCTURES], [p for p, _, _ in wire])


# --- key derivation ---

def test_null_auth_payloads_verify_with_the_logged_sk_p(capture):
    """RFC 7619 NULL auth = prf(prf(SK_p*, "Key Pad for IKEv2"), RealMessage | Nonce | prf(SK_p*, RestOfIDPayload)),
    in both directions: our signed octets and prf give the AUTH data each side sent."""
    prf, keys = capture.suite.prf, capture.keys
    real_1, real_2 = capture.datagrams[0][1], capture.datagrams[1][1]
    _, request = capture.message(3)
    _, response = capture.message(4)
    idi, auth_i = request[0], request[2]
    idr, auth_r = response[0], response[1]
    octets_i = c.signed_octets(prf, real_1, keys["Nr"], keys["SK_pi"], idi.encode())
    octets_r = c.signed_octets(prf, real_2, keys["Ni"], keys["SK_pr"], idr.encode())
    assert auth_i.data == c.null_auth(prf, keys["SK_pi"], octets_i)
    assert auth_r.data == c.null_auth(prf, keys["SK_pr"], octets_r)


@pytest.mark.parametrize("name", WITH_GIR)
def test_key_derivation_gives_plutos_keys(name):
    capture = load(name)
    suite, keys = capture.suite, capture.keys
    # g^ir: the responder's (enclave-ike's) recorded secret, its KE on the wire, and pluto's KE
    request, _ = capture.message(1)
    response, _ = capture.message(2)
    ours = c.DiffieHellman.from_private(suite.dh_group, keys["responder DH private (enclave-ike)"])
    assert ours.public_key == response.find(KeyExchange).data
    assert ours.shared_secret(request.find(KeyExchange).data) == keys["g^ir"]
    # SKEYSEED and DKM against libreswan's KDF
    seed = c.skeyseed(suite.prf, keys["Ni"], keys["Nr"], keys["g^ir"])
    assert seed == keys["SKEYSEED (libreswan cavp)"]
    derived = c.derive_ike_keys(suite, seed, keys["Ni"], keys["Nr"], keys["SPIi"], keys["SPIr"])
    stream = b"".join((derived.sk_d, derived.sk_ai, derived.sk_ar, derived.sk_ei, derived.sk_er, derived.sk_pi,
                       derived.sk_pr))
    assert stream == keys["DKM (libreswan cavp)"][:len(stream)]
    # SK_* against what the pluto daemon logged
    for attr in ("sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(derived, attr) == keys["SK_" + attr[3:]], attr
    # Child SA KEYMAT from SK_d and the IKE_SA_INIT nonces, for the suite enclave-ike chose
    _, answer = capture.message(4)
    child = c.ChildSuite.from_proposal(next(p for p in answer if isinstance(p, SecurityAssociation)).proposals[0])
    keymat = c.derive_child_keys(suite.prf, derived.sk_d, child, keys["Ni"], keys["Nr"])
    assert keymat.encr_i + keymat.integ_i == keys["KEYMAT i->r (initiator)"]
    assert keymat.encr_r + keymat.integ_r == keys["KEYMAT r->i (initiator)"]


def test_logged_keys_have_the_suites_sizes(capture):
    suite, keys = capture.suite, capture.keys
    integ = suite.integrity.key_size if suite.integrity else 0
    assert [len(keys[k]) for k in ("SK_ai", "SK_ar")] == [integ, integ]
    assert [len(keys[k]) for k in ("SK_ei", "SK_er")] == [suite.encryption.key_size] * 2
    assert [len(keys[k]) for k in ("SK_pi", "SK_pr")] == [suite.prf.key_size] * 2
