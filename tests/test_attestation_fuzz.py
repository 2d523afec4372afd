"""Hostile evidence: random bytes and mutated real evidence go through the parsers and the whole verifiers, which
either return a Verification or raise an AttestationError (EvidenceFormatError for what does not parse,
UnsupportedEvidence for a version or type the parsers do not handle), nothing else. The real vectors are those of
tests/vectors/attestation."""

import base64
import contextlib
from dataclasses import replace
from datetime import UTC, datetime

from attestation_vectors import AZURE, SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikecommon.attestation.errors import AttestationError, EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.snp import SnpReport, load_ask_ark, load_vcek, verify_report
from ikecommon.attestation.snp.hcl import RUNTIME_DATA_OFFSET, HclReport
from ikecommon.attestation.tdx import QeIdentity, TcbInfo, TdxCollateral, TdxQuote, verify_quote
from ikecommon.attestation.tdx.pck import SGX_EXTENSIONS, parse_sgx_extensions
from ikecommon.attestation.tdx.quote import TdReportBody

AT = datetime(2023, 7, 1, tzinfo=UTC)

QUOTE = (TDX / "tdx_quote_v4_spr_e4.dat").read_bytes()
REPORT = (SNP / "snp_report_milan.bin").read_bytes()
HCL_REPORT = (AZURE / "trustee_hcl_report.bin").read_bytes()
TCB_INFO = (TDX / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes()
QE_IDENTITY = (TDX / "tdx_qe_identity_v2.json").read_bytes()
INTEL_ROOT = x509.load_pem_x509_certificate((TDX / "intel_sgx_root_ca.pem").read_bytes())
COLLATERAL = TdxCollateral.load(
    tcb_info=TCB_INFO, qe_identity=QE_IDENTITY, tcb_signing_chain=(TDX / "intel_tcb_signing_chain.pem").read_bytes(),
    crls=[(TDX / "intel_pck_platform_crl.der").read_bytes(), (TDX / "intel_sgx_root_ca_crl.der").read_bytes()])
VCEK = load_vcek((SNP / "snp_vcek_milan.der").read_bytes())
ASK, ARK = load_ask_ark((SNP / "amd_ask_ark_milan.pem").read_bytes())
PARSED = TdxQuote.parse(QUOTE)
PCK_CERTS = x509.load_pem_x509_certificates(PARSED.signature_data.certification.pck_chain_pem)
PCK_DERS = tuple(cert.public_bytes(serialization.Encoding.DER) for cert in PCK_CERTS)
SGX_EXTENSION = PCK_CERTS[0].extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS)).value.value
PCK_CHAIN, SIGNED_END = 1258, 4935  # where the PEM PCK chain starts and ends in the quote


@st.composite
def mutated(draw: st.DrawFn, data: bytes, region: tuple[int, int] | None = None) -> bytes:
    """`data` with 1-8 bytes replaced (inside `region`, inclusive, when given), and sometimes cut short."""
    low, high = region or (0, len(data) - 1)
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(low, high))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        del out[draw(st.integers(0, len(out))):]
    return bytes(out)


@st.composite
def quotes_with_a_mutated_certificate(draw: st.DrawFn) -> bytes:
    """The real quote with one PCK chain certificate's DER mutated, still valid PEM: reaches the certificate
    decoder and the chain checks rather than the base64 decoder."""
    index = draw(st.integers(0, len(PCK_DERS) - 1))
    ders = list(PCK_DERS)
    ders[index] = draw(mutated(ders[index]))
    pem = b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
                   for der in ders)
    certification = replace(PARSED.signature_data.certification, pck_chain_pem=pem)
    return replace(PARSED, signature_data=replace(PARSED.signature_data, certification=certification)).to_bytes()


def verify_tdx(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        verify_quote(data, root=INTEL_ROOT, collateral=COLLATERAL, at=AT)


def verify_snp(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        verify_report(data, vcek=VCEK, ask=ASK, ark=ARK, at=AT)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=1400))
def test_random_bytes_into_the_tdx_parser(data: bytes):
    with contextlib.suppress(EvidenceFormatError, UnsupportedEvidence):
        TdxQuote.parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=TdReportBody.SIZE, max_size=TdReportBody.SIZE), st.binary(max_size=600))
def test_random_body_and_signature_data_behind_a_valid_header(body: bytes, rest: bytes):
    verify_tdx(QUOTE[:48] + body + len(rest).to_bytes(4, "little") + rest)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(QUOTE, region=(0, PCK_CHAIN - 1)))
def test_mutated_real_quote_through_the_verifier(data: bytes):
    verify_tdx(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(QUOTE, region=(PCK_CHAIN, SIGNED_END - 1)))
def test_mutated_pck_chain_pem_through_the_verifier(data: bytes):
    verify_tdx(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quotes_with_a_mutated_certificate())
def test_mutated_pck_certificates_through_the_verifier(data: bytes):
    verify_tdx(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=1300))
def test_random_bytes_into_the_snp_parser(data: bytes):
    with contextlib.suppress(EvidenceFormatError, UnsupportedEvidence):
        SnpReport.parse(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 5), st.binary(min_size=1180, max_size=1180))
def test_random_reports_of_a_supported_version_through_the_verifier(version: int, rest: bytes):
    verify_snp(version.to_bytes(4, "little") + rest)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(REPORT))
def test_mutated_real_report_through_the_verifier(data: bytes):
    verify_snp(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(TCB_INFO), mutated(QE_IDENTITY))
def test_mutated_collateral_into_the_json_parsers(tcb_info: bytes, qe_identity: bytes):
    for parse, document in ((TcbInfo.parse, tcb_info), (QeIdentity.parse, qe_identity)):
        with contextlib.suppress(EvidenceFormatError):
            parse(document)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), mutated(SGX_EXTENSION)))
def test_pck_sgx_extension_der(value: bytes):
    with contextlib.suppress(EvidenceFormatError):
        parse_sgx_extensions(value)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=RUNTIME_DATA_OFFSET + 64))
def test_random_bytes_behind_an_hcl_signature(data: bytes):
    with contextlib.suppress(EvidenceFormatError, UnsupportedEvidence):
        HclReport.parse(b"HCLA" + data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(HCL_REPORT, region=(0, RUNTIME_DATA_OFFSET - 1)),
                 mutated(HCL_REPORT, region=(RUNTIME_DATA_OFFSET, len(HCL_REPORT) - 1))))
def test_mutated_real_hcl_report_through_the_binding_and_the_verifier(data: bytes):
    """The header, the SEV-SNP report and the request data, or the runtime data JSON, mutated: a report that still
    parses goes through the binding check and the SEV-SNP verifier."""
    with contextlib.suppress(EvidenceFormatError, UnsupportedEvidence):
        report = HclReport.parse(data)
        report.binding_mismatches()
        verify_snp(report.hw_report)
