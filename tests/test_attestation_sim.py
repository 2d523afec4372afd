"""The sim evidence type: its report codec, its root (shipped, NOT SECURE, reproducible) and its verifier.

Negative cases: one bit flipped in each region of a signed report, a report signed by another key, a root outside
its validity, truncation and trailing bytes, a wrong measurement, and a client that never opted in to the sim
root. Every mismatch is reported, as the real verifiers do.
"""

import contextlib
import os
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.sim import (
    DEFAULT_REGISTERS,
    HEADER_SIZE,
    MAGIC,
    REGISTER_SIZE,
    SIGNATURE_SIZE,
    SIM_ROOT_FILE,
    SIM_ROOT_NAME,
    SimReport,
    build_sim_root_certificate,
    make_sim_report,
    sim_root_certificate,
    sim_root_key,
    verify_sim_report,
)
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, verify_envelope

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ROOT = sim_root_certificate()
REGISTERS = (bytes([1]) * 48, bytes([2]) * 48, bytes([3]) * 48)
REPORT_DATA = bytes(range(64))


def report(registers: tuple[bytes, ...] = REGISTERS) -> bytes:
    return make_sim_report(REPORT_DATA, registers).encode()


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


# --- the root -------------------------------------------------------------------------------------------------


def test_the_shipped_root_is_the_one_its_public_derivation_makes() -> None:
    shipped = ROOT.public_bytes(serialization.Encoding.DER)
    assert build_sim_root_certificate().public_bytes(serialization.Encoding.DER) == shipped
    assert ROOT.public_key() == sim_root_key().public_key()
    assert SIM_ROOT_FILE.endswith("NOT-SECURE.pem")


def test_the_root_says_it_is_not_secure() -> None:
    [common_name] = ROOT.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == SIM_ROOT_NAME == "enclave-ike SIMULATED attestation root - NOT SECURE"
    assert "private key is public" in ROOT.subject.rfc4514_string()
    assert ROOT.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# --- the report codec -----------------------------------------------------------------------------------------


def test_report_layout_and_round_trip() -> None:
    data = report()
    assert len(data) == HEADER_SIZE + 3 * REGISTER_SIZE + SIGNATURE_SIZE
    assert data[:8] == MAGIC and data[8:10] == b"\x01\x00" and data[10:12] == b"\x03\x00"
    assert data[12:76] == REPORT_DATA and data[76:76 + 48] == REGISTERS[0]
    parsed = SimReport.decode(data)
    assert (parsed.report_data, parsed.registers) == (REPORT_DATA, REGISTERS)
    assert parsed.encode() == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=48, max_size=48), min_size=1, max_size=16), st.binary(min_size=64, max_size=64))
def test_any_report_round_trips_and_verifies(registers: list[bytes], report_data: bytes) -> None:
    data = make_sim_report(report_data, tuple(registers)).encode()
    assert SimReport.decode(data).encode() == data
    assert verify_sim_report(data, root=ROOT, at=NOW).ok


@pytest.mark.parametrize("cut", [0, 7, 12, 75, 76 + 47, len(report()) - 1])
def test_truncated_report_is_a_format_error(cut: int) -> None:
    with pytest.raises(EvidenceFormatError) as error:
        SimReport.decode(report()[:cut])
    assert error.value.field.startswith("sim_report.")


def test_trailing_bytes_are_a_format_error() -> None:
    with pytest.raises(EvidenceFormatError, match="left over"):
        SimReport.decode(report() + b"\0")


@pytest.mark.parametrize(("offset", "field"), [(0, "sim_report.magic"), (11, "sim_report.register_count")])
def test_bit_flip_in_the_header_is_a_format_error(offset: int, field: str) -> None:
    with pytest.raises(EvidenceFormatError) as error:
        SimReport.decode(flip(report(), offset, 7))
    assert error.value.field == field


def test_another_version_is_unsupported() -> None:
    with pytest.raises(UnsupportedEvidence) as error:
        SimReport.decode(flip(report(), 8, 7))
    assert (error.value.field, error.value.offset) == ("sim_report.version", 8)
    assert str(error.value) == "sim report version 129 (supported: 1)"


def test_zero_registers_is_a_format_error() -> None:
    data = bytearray(report())
    data[10:12] = b"\0\0"
    with pytest.raises(EvidenceFormatError, match="register_count"):
        SimReport.decode(bytes(data))


# --- the verifier ---------------------------------------------------------------------------------------------


def test_a_genuine_report_passes_every_check() -> None:
    result = verify_sim_report(report(), root=ROOT, at=NOW)
    assert result.ok and result.signatures_valid
    assert [check.name for check in result.checks] == ["report signature", "sim root"]
    assert result.report_data == REPORT_DATA and result.registers == REGISTERS


@pytest.mark.parametrize("offset", [12, 12 + 63, 76, 76 + 2 * 48 + 47], ids=["report-data-first", "report-data-last",
                                                                             "register-0", "register-2-last"])
def test_bit_flip_in_the_signed_body_breaks_the_signature(offset: int) -> None:
    result = verify_sim_report(flip(report(), offset), root=ROOT, at=NOW)
    assert [m.field for m in result.mismatches] == ["sim_report.signature"]
    assert not result.signatures_valid


@pytest.mark.parametrize("offset", [0, 31, 32, 63], ids=["r-first", "r-last", "s-first", "s-last"])
def test_bit_flip_in_the_signature_is_refused(offset: int) -> None:
    data = report()
    result = verify_sim_report(flip(data, len(data) - SIGNATURE_SIZE + offset), root=ROOT, at=NOW)
    assert [m.field for m in result.mismatches] == ["sim_report.signature"]


def test_a_report_signed_by_another_key_is_refused() -> None:
    forged = make_sim_report(REPORT_DATA, REGISTERS, key=ec.generate_private_key(ec.SECP256R1())).encode()
    assert [m.field for m in verify_sim_report(forged, root=ROOT, at=NOW).mismatches] == ["sim_report.signature"]


def test_a_root_outside_its_validity_is_reported_beside_a_valid_signature() -> None:
    result = verify_sim_report(report(), root=ROOT, at=datetime(2024, 6, 1, tzinfo=UTC))
    assert [m.field for m in result.mismatches] == ["sim_root.not_before"]
    assert result.check("report signature").passed


def test_a_root_that_is_not_self_signed_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(ROOT.subject).issuer_name(ROOT.subject)
            .public_key(sim_root_key().public_key()).serial_number(2)
            .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
            .sign(other, hashes.SHA256()))
    result = verify_sim_report(report(), root=root, at=NOW)
    assert [m.field for m in result.mismatches] == ["sim_root.signature"]


# --- through verify_envelope ----------------------------------------------------------------------------------


def sim_spec(*registers: bytes) -> MeasurementSpec:
    return MeasurementSpec((MeasurementEntry("expected", "sim", tuple(enumerate(registers))),))


def test_a_wrong_measurement_is_refused_with_every_register_named() -> None:
    nonce = os.urandom(32)
    envelope = attest(SoftwareEnclave(registers=REGISTERS), nonce)
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(envelope, nonce, sim_spec(REGISTERS[0], bytes(48), bytes(48)), TrustAnchors.simulated(), NOW)
    assert [(m.field, m.actual) for m in failed.value.mismatches] == [
        ("spec[expected].measurements.1", REGISTERS[1].hex()), ("spec[expected].measurements.2", REGISTERS[2].hex())]
    assert failed.value.mismatches[0].expected == "00" * 48 + " (SIM1)"


def test_a_bit_flip_in_an_envelope_s_sim_report_is_refused() -> None:
    nonce = os.urandom(32)
    envelope = attest(SoftwareEnclave(), nonce)
    tampered = replace(envelope, evidence=replace(envelope.evidence, data=flip(envelope.evidence.data, 100)))
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(tampered.encode(), nonce, sim_spec(*DEFAULT_REGISTERS), TrustAnchors.simulated(), NOW)
    assert {m.field for m in failed.value.mismatches} == {"sim_report.signature", "spec[expected].measurements.0"}


def test_sim_evidence_is_not_trusted_unless_the_client_opts_in() -> None:
    nonce = os.urandom(32)
    with pytest.raises(VerificationFailed) as failed:
        verify_envelope(attest(SoftwareEnclave(), nonce), nonce, sim_spec(*DEFAULT_REGISTERS), TrustAnchors(), NOW)
    assert [m.field for m in failed.value.mismatches] == ["trust_anchors.sim_root"]
    assert "NOT SECURE" in failed.value.mismatches[0].expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_a_format_error(data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError, UnsupportedEvidence):
        SimReport.decode(MAGIC + data)
