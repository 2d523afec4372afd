"""TDX 1.5: the quote v5 with a TD report 1.5 body, on go-tdx-guest's real v5 sample quote (copied into
tests/vectors/attestation/tdx/tdx_quote_v5_td15.dat; provenance in its SOURCES.md).

What the origin asserts, and these tests check: the quote parses as v5 with body type 3 and a 648-byte body, and
encodes back to its bytes (abi_test.go); its quote signature, QE report signature, attestation key binding and PCK
chain verify to Intel's root at 2026-02-03 without revocation (verify_test.go, TestRawQuoteV5VerifyWithoutCollateral);
its PCK certificate's FMSPC is 90c06f000000 (the TCB info TestVerifyUsingTcbInfoV5 fetches); a body type 1 or a
body size other than the type's is refused. The field values below are read here (SOURCES.md says so) and kept
as a regression check. There is no matching collateral: the v4 vector's (FMSPC 50806f000000, 2023) is the only one
shipped, so the collateral checks fail and the signatures stand on their own.
"""

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache

import pytest
from attestation_vectors import TDX
from cryptography import x509
from test_attestation_tdx import fields, flipped, verify

from ikecommon.attestation import EvidenceFormatError, UnsupportedEvidence, ecdsa
from ikecommon.attestation.tdx import TdReportBody, TdReportBody15, TdxQuote, TdxVerification, sgx_extensions

QUOTE = (TDX / "tdx_quote_v5_td15.dat").read_bytes()
AT = datetime(2026, 2, 3, 1, tzinfo=UTC)  # go-tdx-guest's time for this quote

# Offsets: header 48, body descriptor (type 2, size 4) from 48, body 648 from 54, signature data size at 702.
DESCRIPTOR, BODY, SIG_DATA = 48, 54, 706
BODY_15 = BODY + 584  # TEE_TCB_SVN2, then MRSERVICETD
QE_REPORT = SIG_DATA + 64 + 64 + 6
QE_REPORT_SIGNATURE = QE_REPORT + 384
QE_AUTH_DATA = QE_REPORT_SIGNATURE + 64 + 2
PCK_CHAIN = QE_AUTH_DATA + 32 + 6

MRTD = "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"
RTMRS = (
    "5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619",
    "463acaace1b6e97c76e92e41fe312aa66f3fd4dad60ec7acf169859db0343e3d1e591646795cdc80fbc0ca5f7041d253",
    "6369b9c9a3b791ebcbdc5a0bb9536cfb57f50df2b393b33c8b29616d3568baa61f4b59dc6092e31ea8764bcbdfc69f20",
    "00" * 48,
)
REPORT_DATA = ("945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e"
               "094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a")
MRSEAM = "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d"
TEE_TCB_SVN, TEE_TCB_SVN2 = "0b010400000000000000000000000000", "0d010400000000000000000000000000"

SIGNATURE_CHECKS = ("quote signature", "QE report signature", "attestation key binding")


def verify15(quote: bytes = QUOTE, at: datetime = AT) -> TdxVerification:
    return verify(quote, at=at)


@cache
def baseline_fields() -> set[str]:
    return fields(verify15())


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    return baseline_fields()


def _with(data: bytes, offset: int, value: int, size: int = 2) -> bytes:
    return data[:offset] + value.to_bytes(size, "little") + data[offset + size:]


# -- parsed values -------------------------------------------------------------------------------------------------

def test_header_and_body_descriptor():
    quote = TdxQuote.parse(QUOTE)
    header = quote.header
    assert (header.version, header.attestation_key_type, header.tee_type, header.qe_svn, header.pce_svn) == \
        (5, 2, 0x81, 0, 0)
    assert header.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert quote.body_type == 3 and quote.is_td_report_15
    assert isinstance(quote.body, TdReportBody15) and len(quote.body.to_bytes()) == TdReportBody15.SIZE == 648
    assert len(QUOTE) == 5006 and quote.trailing == b""


def test_body_values():
    body = TdxQuote.parse(QUOTE).body
    assert isinstance(body, TdReportBody15)
    assert body.mr_td.hex() == MRTD
    assert tuple(rtmr.hex() for rtmr in body.rtmrs) == RTMRS
    assert body.report_data.hex() == REPORT_DATA
    assert body.mr_seam.hex() == MRSEAM
    assert body.mr_signer_seam == bytes(48) and body.seam_attributes == bytes(8)  # Intel's module (tdxModule)
    assert body.tee_tcb_svn.hex() == TEE_TCB_SVN
    assert body.td_attributes.hex() == "0000001000000000"  # not a debug TD
    assert body.xfam.hex() == "e702060000000000"
    assert body.mr_config_id == body.mr_owner == body.mr_owner_config == bytes(48)
    assert body.tee_tcb_svn2.hex() == TEE_TCB_SVN2
    assert body.mr_service_td == bytes(48)


def test_signature_data_and_pck_certificate():
    quote = TdxQuote.parse(QUOTE)
    certification = quote.signature_data.certification
    assert len(quote.signed_bytes) == 702 and quote.signed_bytes == QUOTE[:702]
    assert len(certification.pck_chain_pem) == 3678
    assert certification.qe_auth_data == bytes(range(32))
    assert certification.qe_report.isv_prod_id == 2
    pck = sgx_extensions(x509.load_pem_x509_certificates(certification.pck_chain_pem)[0])
    assert pck.fmspc.hex() == "90c06f000000"
    assert pck.pce_id.hex() == "0000"


def test_encoding_gives_back_the_quote():
    assert TdxQuote.parse(QUOTE).to_bytes() == QUOTE


# -- verification --------------------------------------------------------------------------------------------------

def test_signatures_and_pck_chain_verify():
    result = verify15()
    for name in SIGNATURE_CHECKS:
        assert result.check(name).passed, name
    # The chain itself verifies at 2026-02-03; only the shipped CRLs (2023) are past their next update.
    assert {m.field for m in result.check("PCK certificate chain").mismatches} == {
        "pck_ca_crl.next_update", "intel_root_crl.next_update"}
    assert result.check("TD policy").passed
    assert result.mrtd.hex() == MRTD and result.report_data.hex() == REPORT_DATA
    assert tuple(rtmr.hex() for rtmr in result.rtmrs) == RTMRS


def test_the_collateral_shipped_is_for_another_platform():
    result = verify15()
    assert not result.signatures_valid and not result.ok
    assert "tcb_info.fmspc" in fields(result)


def test_before_the_pck_certificate_was_issued():
    result = verify15(at=datetime(2023, 7, 1, tzinfo=UTC))
    assert {m.field for m in result.check("PCK certificate chain").mismatches} == {"pck_leaf.not_before"}


# -- one bit flipped in each region --------------------------------------------------------------------------------

@pytest.mark.parametrize(("offset", "expected"), [
    pytest.param(40, {"signature_data.signature"}, id="header-user-data"),
    pytest.param(12, {"signature_data.signature", "header.qe_vendor_id"}, id="header-qe-vendor-id"),
    pytest.param(BODY, {"signature_data.signature"}, id="body-tee-tcb-svn"),
    pytest.param(BODY + 16 + 48 + 48 + 8 + 8 + 8, {"signature_data.signature"}, id="body-mrtd"),
    pytest.param(BODY + 584 - 64 - 48, {"signature_data.signature"}, id="body-rtmr3"),
    pytest.param(BODY + 584 - 1, {"signature_data.signature"}, id="body-report-data"),
    pytest.param(BODY_15, {"signature_data.signature"}, id="body-tee-tcb-svn2"),
    pytest.param(BODY_15 + 16, {"signature_data.signature"}, id="body-mrservicetd"),
    pytest.param(BODY_15 + 63, {"signature_data.signature"}, id="body-mrservicetd-last"),
    pytest.param(SIG_DATA, {"signature_data.signature"}, id="quote-signature-r"),
    pytest.param(SIG_DATA + 63, {"signature_data.signature"}, id="quote-signature-s"),
    pytest.param(SIG_DATA + 64, {"signature_data.attestation_key", "qe_report.report_data"}, id="attestation-key"),
    pytest.param(QE_REPORT + 64, {"qe_report_signature"}, id="qe-report-mrenclave"),
    pytest.param(QE_REPORT + 128, {"qe_report_signature", "qe_report.mr_signer"}, id="qe-report-mrsigner"),
    pytest.param(QE_REPORT + 320, {"qe_report_signature", "qe_report.report_data"}, id="qe-report-report-data"),
    pytest.param(QE_REPORT_SIGNATURE, {"qe_report_signature"}, id="qe-report-signature"),
    pytest.param(QE_AUTH_DATA, {"qe_report.report_data"}, id="qe-auth-data"),
])
def test_one_bit_flipped(offset: int, expected: set[str], baseline: set[str]):
    result = verify15(flipped(QUOTE, offset))
    assert fields(result) - baseline == expected
    assert not all(result.check(name).passed for name in SIGNATURE_CHECKS)


def test_one_bit_flipped_in_the_pck_leaf_signature():
    """The leaf's signature is the end of its DER, so of its base64: flip one bit of a character there."""
    pem = TdxQuote.parse(QUOTE).signature_data.certification.pck_chain_pem
    end = PCK_CHAIN + pem.index(b"-----END CERTIFICATE-----")
    result = verify15(flipped(QUOTE, end - 10, 1))
    assert fields(result) - baseline_fields() == {"pck_leaf.signature"}


@pytest.mark.parametrize(("offset", "bit", "error", "field"), [
    pytest.param(DESCRIPTOR, 0, EvidenceFormatError, "tdx_quote.body_descriptor.size", id="type-3-to-2"),
    pytest.param(DESCRIPTOR, 2, UnsupportedEvidence, "tdx_quote.body_descriptor.type", id="type-3-to-7"),
    pytest.param(DESCRIPTOR + 1, 0, UnsupportedEvidence, "tdx_quote.body_descriptor.type", id="type-high-byte"),
    pytest.param(DESCRIPTOR + 2, 0, EvidenceFormatError, "tdx_quote.body_descriptor.size", id="size-low-byte"),
    pytest.param(DESCRIPTOR + 5, 7, EvidenceFormatError, "tdx_quote.body_descriptor.size", id="size-high-byte"),
    pytest.param(702, 0, EvidenceFormatError, "tdx_quote.signature_data", id="signature-data-size"),
])
def test_one_bit_flipped_in_a_length_or_type_is_refused(offset: int, bit: int, error: type, field: str):
    with pytest.raises(error) as caught:
        TdxQuote.parse(flipped(QUOTE, offset, bit))
    assert caught.value.field == field
    assert caught.value.offset is not None


# -- truncated, malformed, unsupported -----------------------------------------------------------------------------

@pytest.mark.parametrize(("cut", "field"), [
    (0, "tdx_quote.header.version"),
    (30, "tdx_quote.header.user_data"),
    (48, "tdx_quote.body_descriptor.type"),
    (49, "tdx_quote.body_descriptor.type"),
    (50, "tdx_quote.body_descriptor.size"),
    (53, "tdx_quote.body_descriptor.size"),
    (BODY, "tdx_quote.body.tee_tcb_svn"),
    (BODY + 150, "tdx_quote.body.mr_td"),
    (BODY_15 - 1, "tdx_quote.body.report_data"),
    (BODY_15, "tdx_quote.body.tee_tcb_svn2"),
    (BODY_15 + 16, "tdx_quote.body.mr_service_td"),
    (701, "tdx_quote.body.mr_service_td"),
    (702, "tdx_quote.signature_data.size"),
    (SIG_DATA, "tdx_quote.signature_data"),
    (QE_REPORT + 100, "tdx_quote.signature_data"),
    (PCK_CHAIN + 100, "tdx_quote.signature_data"),
    (len(QUOTE) - 1, "tdx_quote.signature_data"),
])
def test_truncated(cut: int, field: str):
    with pytest.raises(EvidenceFormatError) as caught:
        TdxQuote.parse(QUOTE[:cut])
    assert caught.value.field == field
    assert caught.value.offset is not None


@pytest.mark.parametrize("size", [0, 584, 647, 649, 999, 0xFFFFFFFF])
def test_a_body_size_other_than_the_types_is_malformed(size: int):
    with pytest.raises(EvidenceFormatError) as caught:
        TdxQuote.parse(_with(QUOTE, DESCRIPTOR + 2, size, 4))
    assert (caught.value.field, caught.value.offset) == ("tdx_quote.body_descriptor.size", DESCRIPTOR + 2)
    assert f"declares {size}" in str(caught.value) and "648" in str(caught.value)


def test_body_type_1_is_an_sgx_report_and_unsupported():
    with pytest.raises(UnsupportedEvidence) as caught:
        TdxQuote.parse(_with(QUOTE, DESCRIPTOR, 1))
    assert str(caught.value) == ("TDX quote v5 body type 1 (SGX enclave report) (supported: 2, TD report 1.0; 3, TD "
                                 "report 1.5)")
    assert (caught.value.field, caught.value.offset) == ("tdx_quote.body_descriptor.type", DESCRIPTOR)


@pytest.mark.parametrize("body_type", [0, 4, 0xFFFF])
def test_unknown_body_types_are_unsupported(body_type: int):
    with pytest.raises(UnsupportedEvidence, match=f"TDX quote v5 body type {body_type} \\(supported"):
        TdxQuote.parse(_with(QUOTE, DESCRIPTOR, body_type))


def test_a_v5_quote_of_a_td_report_10_body_parses_and_signs_its_descriptor():
    quote = TdxQuote.parse(QUOTE)
    # The 1.0 fields of the real body, as a type 2 quote carries them.
    common = TdReportBody(**{f.name: getattr(quote.body, f.name) for f in dataclass_fields(TdReportBody)})
    data = replace(quote, body=common, body_type=2).to_bytes()
    assert data[DESCRIPTOR:BODY] == (2).to_bytes(2, "little") + (584).to_bytes(4, "little")
    assert len(data) == len(QUOTE) - 64
    parsed = TdxQuote.parse(data)
    assert parsed.body_type == 2 and type(parsed.body) is TdReportBody and not parsed.is_td_report_15
    assert parsed.signed_bytes == data[:BODY + 584]
    result = verify15(data)  # the same fields, but not what the attestation key signed
    assert not result.check("quote signature").passed
    assert result.check("QE report signature").passed and result.check("attestation key binding").passed


def test_the_signature_covers_the_descriptor():
    """A signature over header + body alone (as v4) does not verify: the descriptor is signed too."""
    quote = TdxQuote.parse(QUOTE)
    data = quote.signature_data
    key = ecdsa.p256_point(data.attestation_key)
    assert key is not None
    assert quote.signed_bytes[DESCRIPTOR:BODY] == bytes.fromhex("030088020000")  # type 3, 648 bytes
    assert ecdsa.verify_p256_raw(key, data.signature, quote.signed_bytes)
    assert not ecdsa.verify_p256_raw(key, data.signature, quote.header.to_bytes() + quote.body.to_bytes())
