"""The binding of a client's nonce and enclave-ike's IKE key into report data, and verify_envelope end to end.

The binding is pinned by a known answer (cross-checked with coreutils' sha512sum when it was written). A replayed
envelope (another nonce) and evidence binding another key are each refused with a `report_data` mismatch. The real
TDX and SEV-SNP vectors (tests/vectors/attestation) go through the same entry point: their
signatures verify, and their report data, which we did not make, is reported as not binding our nonce and key.
"""

import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from attestation_vectors import SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.errors import NonceError
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.binding import LABEL, NONCE_MAX, NONCE_MIN, binding_mismatches, report_data
from ikecommon.attestation.envelope import Collateral, Envelope, Evidence, EvidenceKind
from ikecommon.attestation.errors import VerificationFailed
from ikecommon.attestation.sim import DEFAULT_REGISTERS
from ikecommon.attestation.snp import load_ask_ark
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, appraise, verify_envelope

VECTOR_TIME = datetime(2023, 7, 1, tzinfo=UTC)  # inside every validity period of the vectors
NOW = datetime(2026, 11, 23, tzinfo=UTC)

GENERATOR_SPKI = bytes.fromhex(  # the P-256 public key whose private scalar is 1
    "3059301306072a8648ce3d020106082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a1"
    "3945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")
KNOWN_ANSWER = bytes.fromhex(
    "68a29ba0b4bcb9d2c6f46fbac93991e2ad3d908b76d1dc16044ffafbc179acbf51cf8aa85a93b16b48827e8b0edfde8016186a96143ba1"
    "9f316a61542aa3f07c")
TDX_REPORT_DATA = ("6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
                   "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113")
MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
RTMRS = (
    "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a",
    "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61",
    "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e",
    "00" * 48,
)
SNP_MEASUREMENT = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
SIM_SPEC = MeasurementSpec((MeasurementEntry("sim-default", "sim", ((0, DEFAULT_REGISTERS[0]),)),))


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fields(exc: VerificationFailed) -> set[str]:
    return {m.field for m in exc.mismatches}


# --- the definition -------------------------------------------------------------------------------------------


def test_report_data_is_sha512_of_label_length_prefixed_nonce_and_spki() -> None:
    nonce = bytes(range(32))
    assert LABEL == b"enclave-ike attestation v1\x00"
    assert report_data(nonce, GENERATOR_SPKI) == KNOWN_ANSWER
    assert hashlib.sha512(LABEL + b"\x00\x20" + nonce + GENERATOR_SPKI).digest() == KNOWN_ANSWER
    assert len(KNOWN_ANSWER) == 64  # TDX REPORTDATA and SNP REPORT_DATA, whole


@pytest.mark.parametrize("size", [NONCE_MIN - 1, NONCE_MAX + 1, 0])
def test_a_nonce_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="nonce"):
        report_data(bytes(size), GENERATOR_SPKI)
    assert [m.field for m in binding_mismatches(bytes(64), bytes(size), GENERATOR_SPKI)] == ["nonce"]


def test_the_length_prefix_keeps_nonce_and_key_apart() -> None:
    """Moving a byte from the end of the nonce to the start of the key changes the digest."""
    nonce = bytes(range(17))
    assert report_data(nonce, GENERATOR_SPKI) != report_data(nonce[:-1], nonce[-1:] + GENERATOR_SPKI)


def test_binding_accepts_exactly_its_nonce_and_key() -> None:
    nonce = os.urandom(32)
    assert binding_mismatches(report_data(nonce, GENERATOR_SPKI), nonce, GENERATOR_SPKI) == []


def test_binding_with_another_nonce_is_a_report_data_mismatch() -> None:
    quoted = report_data(os.urandom(32), GENERATOR_SPKI)
    [mismatch] = binding_mismatches(quoted, os.urandom(32), GENERATOR_SPKI)
    assert mismatch.field == "report_data"
    assert mismatch.actual == quoted.hex()


def test_binding_of_another_key_is_a_report_data_mismatch() -> None:
    nonce = os.urandom(32)
    other = spki(ec.generate_private_key(ec.SECP256R1()))
    [mismatch] = binding_mismatches(report_data(nonce, other), nonce, GENERATOR_SPKI)
    assert mismatch.field == "report_data"


# --- verify_envelope on sim evidence --------------------------------------------------------------------------


def test_a_fresh_envelope_verifies_and_names_the_key_to_pin() -> None:
    enclave, nonce = SoftwareEnclave(), os.urandom(32)
    verified = verify_envelope(attest(enclave, nonce).encode(), nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert verified.kind == EvidenceKind.SIM
    assert verified.measurement_id == "sim-default"
    assert verified.registers == {0: DEFAULT_REGISTERS[0]}
    assert verified.public_key() == enclave.signer().public_key()
    assert verified.evidence.ok


def test_replay_with_another_nonce_is_refused() -> None:
    envelope = attest(SoftwareEnclave(), os.urandom(32))  # an answer to someone else's nonce
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(envelope, os.urandom(32), SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert fields(failed.value) == {"report_data", "nonce"}


def test_replay_relabelled_with_our_nonce_is_still_refused() -> None:
    """An attacker who rewrites the envelope's nonce field cannot rewrite the signed report data."""
    nonce = os.urandom(32)
    envelope = replace(attest(SoftwareEnclave(), os.urandom(32)), nonce=nonce)
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(envelope, nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert fields(failed.value) == {"report_data"}


def test_evidence_binding_another_key_is_refused() -> None:
    """Genuine evidence for the enclave's key, offered with the attacker's key."""
    nonce = os.urandom(32)
    envelope = replace(attest(SoftwareEnclave(), nonce), ike_key=spki(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(envelope, nonce, SIM_SPEC, TrustAnchors.simulated(), NOW)
    assert fields(failed.value) == {"report_data"}


def test_attest_refuses_a_nonce_the_binding_cannot_take() -> None:
    with pytest.raises(NonceError) as refused:
        attest(SoftwareEnclave(), bytes(8))
    assert refused.value.exit_code == 2


# --- the real vectors through the same entry point ------------------------------------------------------------


def tdx_envelope(nonce: bytes, key: bytes) -> Envelope:
    crls = ((TDX / "intel_pck_platform_crl.der").read_bytes(), (TDX / "intel_sgx_root_ca_crl.der").read_bytes())
    collateral = Collateral(tdx_tcb_info=(TDX / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes(),
                            tdx_qe_identity=(TDX / "tdx_qe_identity_v2.json").read_bytes(),
                            tdx_tcb_signing_chain=(TDX / "intel_tcb_signing_chain.pem").read_bytes(), crls=crls)
    quote = (TDX / "tdx_quote_v4_spr_e4.dat").read_bytes()
    return Envelope(Evidence(EvidenceKind.TDX, quote), key, nonce, collateral)


def snp_envelope(nonce: bytes, key: bytes) -> Envelope:
    ask, ark = load_ask_ark((SNP / "amd_ask_ark_milan.pem").read_bytes())
    chain = ((SNP / "snp_vcek_milan.der").read_bytes(), ask.public_bytes(serialization.Encoding.DER),
             ark.public_bytes(serialization.Encoding.DER))
    return Envelope(Evidence(EvidenceKind.SEV_SNP, (SNP / "snp_report_milan.bin").read_bytes(), chain), key, nonce)


def intel_root() -> x509.Certificate:
    return x509.load_pem_x509_certificate((TDX / "intel_sgx_root_ca.pem").read_bytes())


def amd_ark(product: str) -> x509.Certificate:
    return load_ask_ark((SNP / f"amd_ask_ark_{product}.pem").read_bytes())[1]


TDX_SPEC = MeasurementSpec((MeasurementEntry("spr-e4", "dcap-tdx", tuple(
    (index, bytes.fromhex(value)) for index, value in enumerate((MRTD, *RTMRS)))),))
SNP_SPEC = MeasurementSpec((MeasurementEntry("milan", "sev-snp", ((0, bytes.fromhex(SNP_MEASUREMENT)),)),))


def test_real_tdx_quote_verifies_but_does_not_bind_our_nonce_and_key() -> None:
    nonce, key = os.urandom(32), GENERATOR_SPKI
    envelope = Envelope.decode(tdx_envelope(nonce, key).encode())  # through the wire format
    result = appraise(envelope, nonce, TDX_SPEC, TrustAnchors(intel_root=intel_root()), VECTOR_TIME)
    assert result.evidence.signatures_valid
    assert [(m.field, m.actual) for m in result.binding.mismatches] == [("report_data", TDX_REPORT_DATA)]
    assert result.measurements.passed and result.measurement_id == "spr-e4"
    assert result.registers[0].hex() == MRTD and result.registers[4] == bytes(48)
    with pytest.raises(VerificationFailed) as failed:
        result.require()
    assert "report_data" in fields(failed.value)
    assert fields(failed.value) <= {"report_data", "tcb.level"}  # and the TCB level, as the vector's origin says


def test_real_snp_report_verifies_but_does_not_bind_our_nonce_and_key() -> None:
    nonce = os.urandom(32)
    anchors = TrustAnchors(amd_arks=(amd_ark("genoa"), amd_ark("milan")))
    result = appraise(snp_envelope(nonce, GENERATOR_SPKI).encode(), nonce, SNP_SPEC, anchors, VECTOR_TIME)
    assert result.evidence.signatures_valid
    assert [m.field for m in result.binding.mismatches] == ["report_data"]
    assert result.binding.mismatches[0].actual == "0102030405" + "00" * 59
    assert result.measurement_id == "milan"
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(snp_envelope(nonce, GENERATOR_SPKI), nonce, SNP_SPEC, anchors, VECTOR_TIME)
    assert fields(failed.value) == {"report_data", "policy.debug"}  # the vector was launched with DEBUG allowed


def test_real_snp_report_under_the_wrong_root_is_refused() -> None:
    nonce = os.urandom(32)
    result = appraise(snp_envelope(nonce, GENERATOR_SPKI), nonce, SNP_SPEC, TrustAnchors(amd_arks=(amd_ark("genoa"),)),
                      VECTOR_TIME)
    assert not result.evidence.signatures_valid
    assert "ask.issuer" in {m.field for m in result.mismatches}


def test_tdx_without_collateral_or_root_is_not_verified() -> None:
    nonce = os.urandom(32)
    envelope = replace(tdx_envelope(nonce, GENERATOR_SPKI), collateral=Collateral())
    result = appraise(envelope, nonce, TDX_SPEC, TrustAnchors(), VECTOR_TIME)
    assert not result.evidence.signatures_valid
    assert {m.field for m in result.evidence.mismatches} == {
        "collateral.tdx-tcb-info", "collateral.tdx-qe-identity", "collateral.tdx-tcb-signing-chain",
        "trust_anchors.intel_root"}


def test_snp_without_certificates_or_arks_is_not_verified() -> None:
    nonce = os.urandom(32)
    envelope = snp_envelope(nonce, GENERATOR_SPKI)
    envelope = replace(envelope, evidence=replace(envelope.evidence, certificates=()))
    result = appraise(envelope, nonce, SNP_SPEC, TrustAnchors(), VECTOR_TIME)
    assert not result.evidence.signatures_valid
    assert {m.field for m in result.evidence.mismatches} == {"certificates", "trust_anchors.amd_arks"}


def test_real_evidence_is_checked_against_the_spec() -> None:
    nonce = os.urandom(32)
    wrong = MeasurementSpec((MeasurementEntry("other", "dcap-tdx", ((1, bytes(48)),)),))
    result = appraise(tdx_envelope(nonce, GENERATOR_SPKI), nonce, wrong, TrustAnchors(intel_root=intel_root()),
                      VECTOR_TIME)
    [mismatch] = result.measurements.mismatches
    assert (mismatch.field, mismatch.actual) == ("spec[other].measurements.1", RTMRS[0])
    assert mismatch.expected.endswith("(RTMR0)")
