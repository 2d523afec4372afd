"""The evidence envelope (a JSON CMW collection): round trips for every evidence kind, the CMW shape, and strict
decoding, one test per kind of damage, each naming the member. The decoder is fuzzed with random bytes, random JSON,
mutated envelopes and one member replaced; only AttestationError subclasses may come out."""

import base64
import contextlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from attestation_vectors import SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.envelope import (
    ENVELOPE_TYPE,
    EVIDENCE_MEDIA_TYPES,
    MAX_ENVELOPE,
    Collateral,
    Envelope,
    EnvelopeFormatError,
    Evidence,
    EvidenceKind,
)
from ikecommon.attestation.errors import AttestationError, EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.sim import DEFAULT_REGISTERS, sim_root_certificate
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, appraise

NONCE = bytes(range(32))
SIM = attest(SoftwareEnclave(ec.derive_private_key(7, ec.SECP256R1())), NONCE)
SIM_BYTES = SIM.encode()
VECTOR_TIME = datetime(2023, 7, 1, tzinfo=UTC)
INTEL_ROOT = x509.load_pem_x509_certificate((TDX / "intel_sgx_root_ca.pem").read_bytes())
MILAN_ARK = x509.load_pem_x509_certificates((SNP / "amd_ask_ark_milan.pem").read_bytes())[1]
SPEC = MeasurementSpec((MeasurementEntry("sim", "sim", ((0, DEFAULT_REGISTERS[0]),)),))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def document(envelope: bytes = SIM_BYTES) -> dict[str, Any]:
    return json.loads(envelope)


def with_member(name: str, value: object, base: bytes = SIM_BYTES) -> bytes:
    doc = document(base)
    doc[name] = value
    return json.dumps(doc).encode()


def error(data: bytes) -> EnvelopeFormatError:
    with pytest.raises(EnvelopeFormatError) as raised:
        Envelope.decode(data)
    return raised.value


def tdx() -> Envelope:
    collateral = Collateral(tdx_tcb_info=(TDX / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes(),
                            tdx_qe_identity=(TDX / "tdx_qe_identity_v2.json").read_bytes(),
                            tdx_tcb_signing_chain=(TDX / "intel_tcb_signing_chain.pem").read_bytes(),
                            crls=((TDX / "intel_pck_platform_crl.der").read_bytes(),
                                  (TDX / "intel_sgx_root_ca_crl.der").read_bytes()))
    return Envelope(Evidence(EvidenceKind.TDX, (TDX / "tdx_quote_v4_spr_e4.dat").read_bytes()), SIM.ike_key, NONCE,
                    collateral)


def snp() -> Envelope:
    chain = [(SNP / "snp_vcek_milan.der").read_bytes()] + [
        cert.public_bytes(serialization.Encoding.DER)
        for cert in x509.load_pem_x509_certificates((SNP / "amd_ask_ark_milan.pem").read_bytes())]
    return Envelope(Evidence(EvidenceKind.SEV_SNP, (SNP / "snp_report_milan.bin").read_bytes(), tuple(chain)),
                    SIM.ike_key, NONCE)


# --- round trips and shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: SIM, tdx, snp], ids=["sim", "tdx", "sev-snp"])
def test_round_trip(make: Any) -> None:
    envelope = make()
    encoded = envelope.encode()
    assert Envelope.decode(encoded) == envelope
    assert Envelope.decode(encoded).encode() == encoded


def test_it_is_a_cmw_collection_of_records() -> None:
    doc = document(tdx().encode())
    assert doc.pop("__cmwc_t") == ENVELOPE_TYPE
    assert list(doc) == ["evidence", "ike-key", "nonce", "tdx-tcb-info", "tdx-qe-identity", "tdx-tcb-signing-chain",
                         "crl-1", "crl-2"]
    assert doc["evidence"][0] == "application/vnd.enclave-ike.tdx-quote" and doc["evidence"][2] == 4
    assert doc["crl-1"][0] == "application/pkix-crl" and doc["crl-1"][2] == 2
    assert doc["tdx-tcb-signing-chain"][0] == "application/pem-certificate-chain"
    assert len(doc["ike-key"]) == len(doc["nonce"]) == 2  # no indicator: neither is a conceptual message
    for record in doc.values():
        assert "=" not in record[1] and "+" not in record[1] and "/" not in record[1]  # base64url, unpadded


def test_snp_certificates_travel_as_a_pem_chain() -> None:
    envelope = snp()
    doc = document(envelope.encode())
    assert doc["certificates"][0] == "application/pem-certificate-chain"
    assert base64.urlsafe_b64decode(doc["certificates"][1] + "==").count(b"BEGIN CERTIFICATE") == 3
    assert Envelope.decode(envelope.encode()).evidence.certificates == envelope.evidence.certificates


def test_a_hand_written_envelope_decodes() -> None:
    spki = SIM.ike_key
    text = json.dumps({"__cmwc_t": ENVELOPE_TYPE,
                       "nonce": ["application/vnd.enclave-ike.nonce", b64(NONCE)],
                       "evidence": ["application/vnd.enclave-ike.sim-report", b64(SIM.evidence.data)],
                       "ike-key": ["application/vnd.enclave-ike.spki+der", b64(spki)]}, indent=2)
    envelope = Envelope.decode(text.encode())
    assert envelope == SIM  # member order, whitespace and the optional indicator do not matter


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(EnvelopeFormatError):
        replace(SIM, nonce=b"short").encode()
    with pytest.raises(EnvelopeFormatError):
        replace(SIM, evidence=replace(SIM.evidence, certificates=snp().evidence.certificates)).encode()


# --- damage, each its own test --------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 50, len(SIM_BYTES) // 2, len(SIM_BYTES) - 1])
def test_truncated_envelope(cut: int) -> None:
    assert error(SIM_BYTES[:cut]).field == "envelope"


def test_bad_json() -> None:
    assert "not JSON" in error(b'{"__cmwc_t": ').detail


def test_not_utf8() -> None:
    assert error(b'{"\xff": 1}').detail == "not UTF-8"


def test_a_list_is_not_a_collection() -> None:
    assert "CMW collection" in error(b"[1, 2]").detail


def test_wrong_collection_type() -> None:
    assert error(with_member("__cmwc_t", "tag:other,2026:x")).field == "envelope.__cmwc_t"


def test_missing_collection_type() -> None:
    doc = document()
    del doc["__cmwc_t"]
    assert error(json.dumps(doc).encode()).field == "envelope.__cmwc_t"


@pytest.mark.parametrize("member", ["evidence", "ike-key", "nonce"])
def test_missing_member(member: str) -> None:
    doc = document()
    del doc[member]
    assert error(json.dumps(doc).encode()).field == f"envelope.{member}"


def test_unknown_member() -> None:
    assert error(with_member("extra", ["application/octet-stream", "AA"])).field == "envelope.extra"


def test_duplicate_member() -> None:
    raw = SIM_BYTES[:-1] + b',"nonce":' + json.dumps(document()["nonce"]).encode() + b"}"
    assert error(raw).field == "envelope.nonce"


def test_record_that_is_not_a_list() -> None:
    assert error(with_member("nonce", {"type": "x"})).field == "envelope.nonce"


def test_record_of_the_wrong_length() -> None:
    assert error(with_member("nonce", ["application/vnd.enclave-ike.nonce"])).field == "envelope.nonce"


def test_wrong_type_of_value() -> None:
    assert error(with_member("nonce", ["application/vnd.enclave-ike.nonce", 12])).field == "envelope.nonce[1]"


def test_unknown_evidence_media_type_is_unsupported() -> None:
    doc = document()
    doc["evidence"][0] = "application/eat+cwt"
    with pytest.raises(UnsupportedEvidence) as raised:
        Envelope.decode(json.dumps(doc).encode())
    assert raised.value.field == "envelope.evidence[0]"
    assert str(raised.value).startswith("evidence media type 'application/eat+cwt' (supported: "
                                        "application/vnd.enclave-ike.tdx-quote, ")


def test_wrong_media_type_for_a_member() -> None:
    assert error(with_member("nonce", ["application/octet-stream", b64(NONCE)])).field == "envelope.nonce[0]"


def test_wrong_indicator() -> None:
    doc = document()
    doc["evidence"][2] = 8
    assert error(json.dumps(doc).encode()).field == "envelope.evidence[2]"


def test_boolean_indicator() -> None:
    doc = document()
    doc["evidence"][2] = True
    assert error(json.dumps(doc).encode()).field == "envelope.evidence[2]"


def test_null_indicator() -> None:
    doc = document()
    doc["evidence"][2] = None
    assert error(json.dumps(doc).encode()).field == "envelope.evidence[2]"


@pytest.mark.parametrize("value", [b64(NONCE) + "=", base64.b64encode(b"\xfb" * 20).decode(), "AAA*",
                                   "A", b64(NONCE)[:-1] + "B"],
                         ids=["padding", "standard-alphabet", "bad-character", "one-character", "trailing-bits"])
def test_bad_base64url(value: str) -> None:
    assert error(with_member("nonce", ["application/vnd.enclave-ike.nonce", value])).field == "envelope.nonce[1]"


def test_empty_value() -> None:
    assert error(with_member("evidence", ["application/vnd.enclave-ike.sim-report", ""])).field == \
        "envelope.evidence[1]"


@pytest.mark.parametrize("size", [15, 65])
def test_nonce_of_the_wrong_size(size: int) -> None:
    assert error(with_member("nonce", ["application/vnd.enclave-ike.nonce", b64(bytes(size))])).field == \
        "envelope.nonce[1]"


def test_oversize_member() -> None:
    value = b64(bytes(32 * 1024 + 1))
    assert "longer than" in error(with_member("evidence", [EVIDENCE_MEDIA_TYPES[EvidenceKind.SIM], value])).detail


def test_oversize_envelope() -> None:
    assert error(b" " * (MAX_ENVELOPE + 1)).field == "envelope"


def key_member(der: bytes) -> bytes:
    return with_member("ike-key", ["application/vnd.enclave-ike.spki+der", b64(der)])


def test_ike_key_that_is_not_a_key() -> None:
    assert error(key_member(b"\x30\x03\x02\x01\x01")).field == "envelope.ike-key[1]"


def test_ike_key_of_a_type_ike_cannot_sign_with_is_unsupported() -> None:
    der = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UnsupportedEvidence) as raised:
        Envelope.decode(key_member(der))
    assert raised.value.field == "envelope.ike-key[1]"
    assert str(raised.value) == ("IKE key of type Ed25519PublicKey (supported: ECDSA P-256, P-384 or P-521, "
                                 "or RSA)")


def test_ike_key_with_a_compressed_point_is_not_canonical() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    uncompressed = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    prefix = bytes([0x30, 0x39]) + uncompressed[2:2 + 21] + bytes([0x03, 0x22, 0x00])  # same AlgorithmIdentifier
    assert "canonical" in error(key_member(prefix + point)).detail


def test_certificates_with_sim_evidence_are_refused() -> None:
    chain = document(snp().encode())["certificates"]
    assert error(with_member("certificates", chain)).detail == "not used with sim evidence"


def test_certificates_that_do_not_parse() -> None:
    base = snp().encode()
    bad = with_member("certificates", ["application/pem-certificate-chain", b64(b"-----BEGIN CERTIFICATE-----\nAA")],
                      base)
    assert error(bad).field.startswith("envelope.certificates")


def test_crls_must_be_numbered_without_gaps() -> None:
    doc = document(tdx().encode())
    doc["crl-3"] = doc.pop("crl-2")
    assert error(json.dumps(doc).encode()).field == "envelope.crl-1"


def test_nan_is_not_json() -> None:
    assert "NaN" in error(SIM_BYTES[:-1] + b',"x":NaN}').detail


def test_deep_nesting() -> None:
    assert error(b"[" * 100_000 + b"]" * 100_000).field == "envelope"


def test_huge_integer() -> None:
    assert error(b'{"a":' + b"9" * 5000 + b"}").field == "envelope"


# --- fuzz -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16)
BASES = [SIM_BYTES, tdx().encode(), snp().encode()]


def decodes_or_attestation_error(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        Envelope.decode(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_attestation_error(data)


@settings(max_examples=1000, deadline=None)
@given(json_values)
def test_fuzz_random_json(value: object) -> None:
    decodes_or_attestation_error(json.dumps(value).encode())


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BASES), st.sampled_from(["__cmwc_t", "evidence", "ike-key", "nonce", "certificates",
                                                "tdx-tcb-info", "crl-1", "crl-9", "other"]), json_values)
def test_fuzz_one_member_replaced(base: bytes, name: str, value: object) -> None:
    decodes_or_attestation_error(with_member(name, value, base))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BASES), st.data())
def test_fuzz_mutated_envelopes(base: bytes, data: st.DataObject) -> None:
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.sampled_from(b'"[]{},:AZaz09-_=\\\x00\xff'))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw))):]
    decodes_or_attestation_error(bytes(raw))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["evidence", "ike-key", "nonce", "certificates"]), st.binary(max_size=200))
def test_fuzz_record_values(name: str, value: bytes) -> None:
    """Well-formed records with random contents reach the key, nonce and certificate parsers."""
    base = BASES[2]
    media = document(base)[name][0]
    decodes_or_attestation_error(with_member(name, [media, b64(value)], base))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([SIM, tdx(), snp()]), st.data())
def test_fuzz_appraise_mutated_evidence(envelope: Envelope, data: st.DataObject) -> None:
    """Evidence that survives the envelope decoder goes on to its own parser and verifier: still only
    AttestationErrors, or an appraisal."""
    raw = bytearray(envelope.evidence.data)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(1, len(raw))):]
    mutated = replace(envelope, evidence=replace(envelope.evidence, data=bytes(raw)))
    anchors = TrustAnchors(intel_root=INTEL_ROOT, amd_arks=(MILAN_ARK,), sim_root=sim_root_certificate())
    with contextlib.suppress(AttestationError):
        result = appraise(mutated, NONCE, SPEC, anchors, VECTOR_TIME)
        if bytes(raw) != envelope.evidence.data:  # a mutation can rewrite a byte with its own value
            assert not result.ok  # changed evidence never passes


def test_a_format_error_is_an_attestation_error() -> None:
    assert issubclass(EnvelopeFormatError, EvidenceFormatError)
    assert issubclass(EnvelopeFormatError, AttestationError)
