"""The TDX verifier on real evidence: the Sapphire Rapids quote, PCK chain and collateral from go-tdx-guest (copied
into tests/vectors/attestation; provenance in its SOURCES.md).

The real quote verifies as its origin says: every signature and chain is valid, and its TCB level matches none in
the shipped TCB info. Negative cases flip one bit in each signed region, truncate, change the root and the clock.
Revocation, a matching TCB level and a debug TD need evidence Intel never signed, so a test PKI ("FakeIntel")
re-signs the real quote's QE report and collateral under its own root; the verifier code path is the same.
"""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from attestation_vectors import TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation import EvidenceFormatError, UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.tdx import (
    TdxCollateral,
    TdxPolicy,
    TdxQuote,
    TdxVerification,
    sgx_extensions,
    verify_quote,
)
from netns_tests.harness.fake_intel import (
    QUOTE_SGX_SVNS,
    QUOTE_TDX_SVNS,
    FakeIntel,
    dated,
    real_qe_identity,
    tcb_info_with,
    up_to_date_tcb_info,
)

AT = datetime(2023, 7, 1, tzinfo=UTC)  # inside every validity period of the vectors, as go-tdx-guest tests

QUOTE = (TDX / "tdx_quote_v4_spr_e4.dat").read_bytes()
SIGNED_END = 4935  # the signed quote; then go-tdx-guest's 39-byte trailer
TRAILER = b"\nextra bytes(only for testing purpose)\n"

# Offsets in the quote (header 48, body 584 from 48, signature data from 636).
BODY, SIG_DATA = 48, 636
QE_REPORT = SIG_DATA + 64 + 64 + 6
QE_REPORT_SIGNATURE = QE_REPORT + 384
QE_AUTH_DATA = QE_REPORT_SIGNATURE + 64 + 2
PCK_CHAIN = QE_AUTH_DATA + 32 + 6

MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
RTMRS = (
    "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a",
    "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61",
    "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e",
    "00" * 48,
)
REPORT_DATA = ("6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
               "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113")
MRSEAM = "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"


def read(name: str) -> bytes:
    return (TDX / name).read_bytes()


@cache
def intel_root() -> x509.Certificate:
    return x509.load_pem_x509_certificate(read("intel_sgx_root_ca.pem"))


def intel_collateral(*, crls: tuple[str, ...] = ("intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der"),
                     tcb_info: bytes | None = None, qe_identity: bytes | None = None) -> TdxCollateral:
    return TdxCollateral.load(tcb_info=tcb_info or read("tdx_tcbinfo_v3_fmspc_50806f000000.json"),
                              qe_identity=qe_identity or read("tdx_qe_identity_v2.json"),
                              tcb_signing_chain=read("intel_tcb_signing_chain.pem"), crls=[read(c) for c in crls])


@cache
def real_collateral() -> TdxCollateral:
    return intel_collateral()


def verify(quote: bytes = QUOTE, *, at: datetime = AT, root: x509.Certificate | None = None,
           collateral: TdxCollateral | None = None, policy: TdxPolicy | None = None) -> TdxVerification:
    return verify_quote(quote, root=root or intel_root(), collateral=collateral or real_collateral(), at=at,
                        policy=policy)


def fields(result: TdxVerification) -> set[str]:
    return {m.field for m in result.mismatches}


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


# -- the real quote: parsed values ---------------------------------------------------------------------------

def test_header_values():
    header = TdxQuote.parse(QUOTE).header
    assert (header.version, header.attestation_key_type, header.tee_type, header.qe_svn, header.pce_svn) == \
        (4, 2, 0x81, 0, 0)
    assert header.qe_vendor_id.hex() == "939a7233f79c4ca9940a0db3957f0607"


def test_measurements_are_extracted_exactly():
    body = TdxQuote.parse(QUOTE).body
    assert body.mr_td.hex() == MRTD
    assert tuple(rtmr.hex() for rtmr in body.rtmrs) == RTMRS
    assert body.report_data.hex() == REPORT_DATA
    assert body.mr_seam.hex() == MRSEAM
    assert body.tee_tcb_svn.hex() == "03000400000000000000000000000000"
    assert body.td_attributes.hex() == "0000004000000000"
    assert body.xfam.hex() == "e71a060000000000"
    assert body.mr_config_id == body.mr_owner == body.mr_owner_config == bytes(48)


def test_signature_data_layout():
    quote = TdxQuote.parse(QUOTE)
    certification = quote.signature_data.certification
    assert len(quote.signed_bytes) == 632
    assert len(certification.pck_chain_pem) == 3677
    assert certification.qe_auth_data == bytes(range(32))
    assert quote.trailing == TRAILER
    assert len(QUOTE) - len(TRAILER) == SIGNED_END


def test_encoding_gives_back_the_quote():
    assert TdxQuote.parse(QUOTE).to_bytes() == QUOTE


def test_pck_certificate_extensions():
    quote = TdxQuote.parse(QUOTE)
    leaf = x509.load_pem_x509_certificates(quote.signature_data.certification.pck_chain_pem)[0]
    pck = sgx_extensions(leaf)
    assert pck.fmspc.hex() == "50806f000000"
    assert pck.pce_id.hex() == "0000"
    assert pck.tcb.pce_svn == 11
    assert pck.tcb.cpu_svn.hex() == "03030202020100020000000000000000"
    assert pck.tcb.sgx_components == (3, 3, 2, 2, 2, 1, 0, 2) + (0,) * 8


# -- the real quote: verification ----------------------------------------------------------------------------

def test_real_quote_is_authentic_but_its_tcb_level_is_not_in_the_tcb_info():
    result = verify()
    assert result.signatures_valid
    assert [c.name for c in result.checks if not c.passed] == ["TCB level"]
    (mismatch,) = result.mismatches
    assert mismatch.field == "tcb.level"
    # SOURCES.md: CPUSVN 3,3,2,2,2,1,0,2 is below 5,5,2,2,3,1,0,3 of both levels, and TEE_TCB_SVN[2] 4 below 5.
    for shortfall in ("sgx[0] 3 < 5", "sgx[1] 3 < 5", "sgx[4] 2 < 3", "sgx[7] 2 < 3", "tdx[2] 4 < 5"):
        assert shortfall in mismatch.actual
    assert "fmspc 50806f000000" in mismatch.expected
    assert result.tcb.status is None
    assert not result.ok


def test_real_quote_values_come_out_of_the_verification():
    result = verify()
    assert result.mrtd.hex() == MRTD
    assert tuple(rtmr.hex() for rtmr in result.rtmrs) == RTMRS
    assert result.report_data.hex() == REPORT_DATA


def test_qe_matches_the_qe_identity_and_is_up_to_date():
    result = verify()
    assert result.check("QE identity").passed
    assert result.tcb.qe_status == "UpToDate"
    assert result.tcb.module_status == "UpToDate"


def test_require_ok_raises_with_every_mismatch():
    with pytest.raises(VerificationFailed) as caught:
        verify().require_ok()
    assert [m.field for m in caught.value.mismatches] == ["tcb.level"]
    assert "tcb.level" in str(caught.value)


def test_the_unsigned_trailer_may_be_absent_or_changed():
    without = verify(QUOTE[:SIGNED_END])
    changed = verify(QUOTE[:SIGNED_END] + b"anything")
    assert fields(without) == fields(changed) == {"tcb.level"}


# -- one bit flipped in each signed region -------------------------------------------------------------------

@pytest.mark.parametrize(("offset", "expected"), [
    pytest.param(40, {"signature_data.signature"}, id="header-user-data"),
    pytest.param(12, {"signature_data.signature", "header.qe_vendor_id"}, id="header-qe-vendor-id"),
    pytest.param(BODY, {"signature_data.signature"}, id="body-tee-tcb-svn"),
    pytest.param(BODY + 16 + 48 + 48 + 8 + 8 + 8, {"signature_data.signature"}, id="body-mrtd"),
    pytest.param(BODY + 584 - 64 - 48, {"signature_data.signature"}, id="body-rtmr3"),
    pytest.param(BODY + 584 - 1, {"signature_data.signature"}, id="body-report-data"),
    pytest.param(SIG_DATA, {"signature_data.signature"}, id="quote-signature-r"),
    pytest.param(SIG_DATA + 63, {"signature_data.signature"}, id="quote-signature-s"),
    pytest.param(SIG_DATA + 64, {"signature_data.attestation_key", "qe_report.report_data"}, id="attestation-key"),
    pytest.param(QE_REPORT + 64, {"qe_report_signature"}, id="qe-report-mrenclave"),
    pytest.param(QE_REPORT + 128, {"qe_report_signature", "qe_report.mr_signer"}, id="qe-report-mrsigner"),
    pytest.param(QE_REPORT + 320, {"qe_report_signature", "qe_report.report_data"}, id="qe-report-report-data"),
    pytest.param(QE_REPORT_SIGNATURE, {"qe_report_signature"}, id="qe-report-signature"),
    pytest.param(QE_AUTH_DATA, {"qe_report.report_data"}, id="qe-auth-data"),
])
def test_one_bit_flipped(offset: int, expected: set[str]):
    result = verify(flipped(QUOTE, offset))
    assert fields(result) - {"tcb.level"} == expected
    assert not result.signatures_valid


def _pem_with_leaf(quote: TdxQuote, leaf_der: bytes) -> bytes:
    certs = x509.load_pem_x509_certificates(quote.signature_data.certification.pck_chain_pem)
    leaf = x509.load_der_x509_certificate(leaf_der)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *certs[1:]])


def _with_pck_chain(pem: bytes) -> bytes:
    quote = TdxQuote.parse(QUOTE)
    certification = replace(quote.signature_data.certification, pck_chain_pem=pem)
    return replace(quote, signature_data=replace(quote.signature_data, certification=certification)).to_bytes()


def test_one_bit_flipped_in_the_pck_certificate_signature():
    quote = TdxQuote.parse(QUOTE)
    leaf = x509.load_pem_x509_certificates(quote.signature_data.certification.pck_chain_pem)[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    result = verify(_with_pck_chain(_pem_with_leaf(quote, flipped(der, len(der) - 1))))
    assert fields(result) - {"tcb.level"} == {"pck_leaf.signature"}


def test_one_bit_flipped_in_the_pck_certificate_key():
    quote = TdxQuote.parse(QUOTE)
    leaf = x509.load_pem_x509_certificates(quote.signature_data.certification.pck_chain_pem)[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    point = der.index(leaf.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint))
    with pytest.raises(EvidenceFormatError, match="pck_chain"):  # the flipped point is off the curve
        verify(_with_pck_chain(_pem_with_leaf(quote, flipped(der, point + 10))))


def test_one_character_changed_in_the_tcb_info():
    document = read("tdx_tcbinfo_v3_fmspc_50806f000000.json").replace(b'"tcbEvaluationDataNumber":15',
                                                                       b'"tcbEvaluationDataNumber":16')
    result = verify(collateral=intel_collateral(tcb_info=document))
    assert fields(result) - {"tcb.level"} == {"tcb_info.signature"}


def test_one_character_changed_in_the_qe_identity():
    document = read("tdx_qe_identity_v2.json").replace(b'"tcbEvaluationDataNumber":15',
                                                       b'"tcbEvaluationDataNumber":14')
    result = verify(collateral=intel_collateral(qe_identity=document))
    assert fields(result) - {"tcb.level"} == {"qe_identity.signature"}


def test_one_bit_flipped_in_the_tcb_info_signature():
    document = read("tdx_tcbinfo_v3_fmspc_50806f000000.json").replace(b'"signature":"f6', b'"signature":"f7')
    result = verify(collateral=intel_collateral(tcb_info=document))
    assert fields(result) - {"tcb.level"} == {"tcb_info.signature"}


# -- truncated and malformed evidence ------------------------------------------------------------------------

@pytest.mark.parametrize(("cut", "field"), [
    (0, "tdx_quote.header.version"),
    (30, "tdx_quote.header.user_data"),
    (48, "tdx_quote.body.tee_tcb_svn"),
    (200, "tdx_quote.body.mr_td"),
    (631, "tdx_quote.body.report_data"),
    (632, "tdx_quote.signature_data.size"),
    (636, "tdx_quote.signature_data"),
    (QE_REPORT + 100, "tdx_quote.signature_data"),
    (PCK_CHAIN + 100, "tdx_quote.signature_data"),
    (SIGNED_END - 1, "tdx_quote.signature_data"),
])
def test_truncated(cut: int, field: str):
    with pytest.raises(EvidenceFormatError) as caught:
        TdxQuote.parse(QUOTE[:cut])
    assert caught.value.field == field
    assert caught.value.offset is not None


def _with_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(2, "little") + data[offset + 2:]


def test_declared_lengths_inside_the_signature_data_are_bounded():
    # The QE auth data claims more bytes than its certification data holds.
    with pytest.raises(EvidenceFormatError) as caught:
        TdxQuote.parse(_with_u16(QUOTE, QE_AUTH_DATA - 2, 5000))
    assert caught.value.field == "tdx_quote.qe_auth_data"


def test_unsupported_version():
    with pytest.raises(UnsupportedEvidence) as caught:
        TdxQuote.parse(_with_u16(QUOTE, 0, 6))
    assert str(caught.value) == "TDX quote version 6 (supported: 4, 5)"
    assert (caught.value.field, caught.value.offset) == ("tdx_quote.header.version", 0)


def test_unsupported_certification_data():
    with pytest.raises(UnsupportedEvidence) as caught:
        TdxQuote.parse(_with_u16(QUOTE, SIG_DATA + 128, 5))
    assert str(caught.value) == ("TDX quote certification data type 5 (PCK certificate chain) (supported: 6, QE "
                                 "report certification data)")
    assert (caught.value.field, caught.value.offset) == ("tdx_quote.signature_data.certification.type",
                                                         SIG_DATA + 128)


def test_unsupported_pck_certification_data():
    with pytest.raises(UnsupportedEvidence, match=r"PCK certification data type 4 \(PCK leaf certificate\)") as caught:
        TdxQuote.parse(_with_u16(QUOTE, PCK_CHAIN - 6, 4))
    assert (caught.value.field, caught.value.offset) == ("tdx_quote.pck_certification.type", PCK_CHAIN - 6)


@pytest.mark.parametrize(("offset", "value", "words"), [
    (4, 0x00, "quote TEE type 0x0 (SGX) (supported: 0x81, TDX)"),
    (4, 0x7F, "quote TEE type 0x7f (supported: 0x81, TDX)"),
    (2, 3, "TDX attestation key type 3 (ECDSA P-384) (supported: 2, ECDSA P-256)"),
])
def test_unsupported_tee_and_key_types(offset: int, value: int, words: str):
    with pytest.raises(UnsupportedEvidence) as caught:
        TdxQuote.parse(_with_u16(QUOTE, offset, value))
    assert str(caught.value) == words and caught.value.offset == offset


def test_an_sgx_quote_is_named_by_its_tee_type_before_its_version():
    with pytest.raises(UnsupportedEvidence, match=r"\(SGX\)"):
        TdxQuote.parse(_with_u16(_with_u16(QUOTE, 0, 3), 4, 0))


def test_malformed_collateral_names_the_json_path():
    document = read("tdx_tcbinfo_v3_fmspc_50806f000000.json").replace(b'"pcesvn":11', b'"pcesvn":"11"')
    with pytest.raises(EvidenceFormatError) as caught:
        intel_collateral(tcb_info=document)
    assert caught.value.field == "tcb_info.tcbLevels[0].tcb.pcesvn"


# -- roots, time, CRLs ---------------------------------------------------------------------------------------

def test_wrong_root():
    other_root = FakeIntel.instance().root
    result = verify(root=other_root)
    assert {"pck_chain.root", "pck_ca.issuer", "tcb_signing_chain.root", "tcb_signer.issuer"} <= fields(result)
    issuer = next(m for m in result.mismatches if m.field == "pck_ca.issuer")
    assert "Test SGX Root CA" in issuer.expected
    assert "Intel SGX Root CA" in issuer.actual
    assert not result.signatures_valid


def test_expired_pck_certificate():
    # go-tdx-guest: at 2053-07-01 the PCK certificate "has expired ... after 2029-09-20T13:20:31Z".
    result = verify(at=datetime(2053, 7, 1, tzinfo=UTC))
    expired = next(m for m in result.mismatches if m.field == "pck_leaf.not_after")
    assert expired.actual == "2029-09-20T13:20:31Z"
    assert {"pck_ca.not_after", "intel_root.not_after", "tcb_signer.not_after"} <= fields(result)
    assert not result.signatures_valid


def test_pck_certificate_not_yet_valid():
    result = verify(at=datetime(2018, 1, 1, tzinfo=UTC))
    assert {"pck_leaf.not_before", "pck_ca.not_before", "intel_root.not_before"} <= fields(result)


def test_collateral_past_its_next_update():
    result = verify(at=datetime(2023, 7, 10, tzinfo=UTC))  # PCK CRL and QE identity expire 2023-07-08
    assert fields(result) - {"tcb.level"} == {"pck_ca_crl.next_update", "qe_identity.nextUpdate"}


def test_real_crls_are_checked_and_do_not_list_this_pck():
    crl = x509.load_der_x509_crl(read("intel_pck_platform_crl.der"))
    quote = TdxQuote.parse(QUOTE)
    leaf = x509.load_pem_x509_certificates(quote.signature_data.certification.pck_chain_pem)[0]
    assert len(crl) == 44
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    assert verify().check("PCK certificate chain").passed


def test_missing_crls_fail_closed():
    result = verify(collateral=intel_collateral(crls=()))
    revocation = {m.field: m for m in result.mismatches if m.field.endswith(".revocation")}
    assert set(revocation) == {"pck_leaf.revocation", "pck_ca.revocation", "tcb_signer.revocation"}
    assert revocation["pck_leaf.revocation"].actual == "none supplied"


def test_crl_with_a_bad_signature():
    crl = bytearray(read("intel_pck_platform_crl.der"))
    crl[-1] ^= 1
    corrupted = x509.load_der_x509_crl(bytes(crl))
    collateral = replace(real_collateral(), crls=(corrupted, *real_collateral().crls[1:]))
    assert fields(verify(collateral=collateral)) - {"tcb.level"} == {"pck_ca_crl.signature"}


# -- a test PKI under its own root: revocation, matching TCB levels, TD policy ------------------------------

def fake_verify(pki: FakeIntel, quote: bytes | None = None, **kwargs) -> TdxVerification:
    return verify_quote(quote or pki.quote(), root=pki.root, collateral=kwargs.pop("collateral", None)
                        or pki.collateral(), at=AT, **kwargs)


LOW_SGX, LOW_TDX = QUOTE_SGX_SVNS, QUOTE_TDX_SVNS


def test_test_pki_reproduces_the_real_result():
    result = fake_verify(FakeIntel.instance())
    assert result.signatures_valid
    assert fields(result) == {"tcb.level"}


def test_revoked_pck_certificate():
    pki = FakeIntel.instance()
    collateral = pki.collateral(crls=(pki.crl(pki.ca, revoked=(pki.leaf,)), pki.crl(pki.root)))
    result = fake_verify(pki, collateral=collateral)
    (revoked,) = [m for m in result.mismatches if m.field == "pck_leaf.revocation"]
    assert revoked.expected == "not revoked"
    assert f"serial {pki.leaf.serial_number:x} revoked on 2023-06-01T00:00:00Z" in revoked.actual
    assert not result.signatures_valid


def test_revoked_pck_ca():
    pki = FakeIntel.instance()
    collateral = pki.collateral(crls=(pki.crl(pki.ca), pki.crl(pki.root, revoked=(pki.ca,))))
    assert fields(fake_verify(pki, collateral=collateral)) - {"tcb.level"} == {"pck_ca.revocation"}


def test_crl_signed_by_someone_else():
    pki = FakeIntel.instance()
    forged = pki.crl(pki.ca, revoked=(), key=ec.generate_private_key(ec.SECP256R1()))
    collateral = pki.collateral(crls=(forged, pki.crl(pki.root)))
    assert fields(fake_verify(pki, collateral=collateral)) - {"tcb.level"} == {"pck_ca_crl.signature"}


def test_tcb_up_to_date_when_the_platform_meets_the_top_level():
    # As go-tdx-guest's TestVerifyUsingTcbInfoV4 does: lower the top level to the platform's SVNs.
    pki = FakeIntel.instance()
    result = fake_verify(pki, collateral=pki.collateral(tcb_info=tcb_info_with({0: {"sgx": LOW_SGX, "tdx": LOW_TDX}})))
    assert result.tcb.status == "UpToDate"
    assert result.ok
    result.require_ok()


def test_tcb_out_of_date_is_reported_with_its_advisories():
    pki = FakeIntel.instance()
    result = fake_verify(pki, collateral=pki.collateral(tcb_info=tcb_info_with({1: {"sgx": LOW_SGX, "tdx": LOW_TDX}})))
    (status,) = result.mismatches
    assert (status.field, status.expected) == ("tcb.status", "one of UpToDate")
    assert status.actual.startswith("OutOfDate (INTEL-SA-00106")
    assert result.signatures_valid
    accepting = TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    accepted = fake_verify(pki, collateral=pki.collateral(tcb_info=tcb_info_with({1: {"sgx": LOW_SGX,
                                                                                      "tdx": LOW_TDX}})),
                           policy=accepting)
    assert accepted.ok
    (note,) = accepted.notes  # accepted, not silently
    assert note.startswith("TCB status OutOfDate (INTEL-SA-00106") and note.endswith("accepted by the policy")


# --- the collateral freshness policy: nextUpdate, then the caller's grace, never silently ---

ISSUED = AT - timedelta(days=30)


def _collateral_due(pki: FakeIntel, next_update: datetime, crl_next_update: datetime | None = None) -> TdxCollateral:
    crl_next_update = crl_next_update or AT + timedelta(days=30)
    crls = (pki.crl(pki.ca, next_update=crl_next_update), pki.crl(pki.root, next_update=crl_next_update))
    return pki.collateral(tcb_info=dated(up_to_date_tcb_info(), ISSUED, next_update),
                          qe_identity=dated(real_qe_identity(), ISSUED, next_update), crls=crls)


def test_current_collateral_passes_without_a_note():
    pki = FakeIntel.instance()
    result = fake_verify(pki, collateral=_collateral_due(pki, AT + timedelta(days=1)))
    assert result.ok and result.notes == ()


def test_one_day_past_next_update_fails_without_a_grace():
    pki = FakeIntel.instance()
    result = fake_verify(pki, collateral=_collateral_due(pki, AT - timedelta(days=1)))
    assert fields(result) == {"tcb_info.nextUpdate", "qe_identity.nextUpdate"}
    assert not result.check("collateral freshness").passed and result.signatures_valid


def test_one_day_past_next_update_passes_inside_a_grace_with_a_note():
    pki = FakeIntel.instance()
    collateral = _collateral_due(pki, AT - timedelta(days=1))
    result = fake_verify(pki, collateral=collateral, policy=TdxPolicy(collateral_grace=timedelta(days=2)))
    assert result.ok
    assert [note.split(" is past")[0] for note in result.notes] == ["tcb_info", "qe_identity"]
    assert "by 1 day: accepted inside the 2 days grace" in result.notes[0]
    short = fake_verify(pki, collateral=collateral, policy=TdxPolicy(collateral_grace=timedelta(hours=12)))
    (mismatch, _) = short.mismatches
    assert mismatch.field == "tcb_info.nextUpdate"
    assert mismatch.expected.endswith("(nextUpdate plus the 12.0 hours grace)")


def test_a_crl_past_its_next_update_follows_the_same_grace():
    pki = FakeIntel.instance()
    collateral = _collateral_due(pki, AT + timedelta(days=1), crl_next_update=AT - timedelta(days=1))
    assert fields(fake_verify(pki, collateral=collateral)) == {"pck_ca_crl.next_update", "intel_root_crl.next_update"}
    graced = fake_verify(pki, collateral=collateral, policy=TdxPolicy(collateral_grace=timedelta(days=2)))
    assert graced.ok
    assert len(graced.notes) == 2 and all(note.startswith("CRL of ") for note in graced.notes)


def test_collateral_issued_after_the_clock_is_refused_whatever_the_grace():
    pki = FakeIntel.instance()
    future = pki.collateral(tcb_info=dated(up_to_date_tcb_info(), AT + timedelta(days=1), AT + timedelta(days=30)))
    result = fake_verify(pki, collateral=future, policy=TdxPolicy(collateral_grace=timedelta(days=365)))
    assert "tcb_info.issueDate" in fields(result)


def test_tdx_components_alone_short_of_every_level():
    pki = FakeIntel.instance()
    info = tcb_info_with({0: {"sgx": LOW_SGX}, 1: {"sgx": LOW_SGX}})
    result = fake_verify(pki, collateral=pki.collateral(tcb_info=info))
    (level,) = result.mismatches
    assert level.field == "tcb.level"
    assert "tdx[2] 4 < 5" in level.actual
    assert "sgx[" not in level.actual


def test_qe_out_of_date_makes_the_platform_out_of_date():
    pki = FakeIntel.instance()
    qe = json.loads(read("tdx_qe_identity_v2.json"))["enclaveIdentity"]
    qe["tcbLevels"] = [{"tcb": {"isvsvn": 5}, "tcbDate": "2023-06-01T00:00:00Z", "tcbStatus": "UpToDate"},
                       {"tcb": {"isvsvn": 4}, "tcbDate": "2023-02-15T00:00:00Z", "tcbStatus": "OutOfDate"}]
    collateral = pki.collateral(tcb_info=tcb_info_with({0: {"sgx": LOW_SGX, "tdx": LOW_TDX}}), qe_identity=qe)
    result = fake_verify(pki, collateral=collateral)
    assert (result.tcb.qe_status, result.tcb.status) == ("OutOfDate", "OutOfDate")
    assert fields(result) == {"tcb.status"}


def test_qe_from_another_signer():
    pki = FakeIntel.instance()
    qe = json.loads(read("tdx_qe_identity_v2.json"))["enclaveIdentity"]
    qe["mrsigner"] = "00" * 32
    result = fake_verify(pki, collateral=pki.collateral(qe_identity=qe))
    assert fields(result) - {"tcb.level"} == {"qe_report.mr_signer"}
    assert result.signatures_valid


def test_tcb_info_for_another_platform():
    pki = FakeIntel.instance()
    info = json.loads(read("tdx_tcbinfo_v3_fmspc_50806f000000.json"))["tcbInfo"]
    info["fmspc"] = "00606a000000"
    mismatch = next(m for m in fake_verify(pki, collateral=pki.collateral(tcb_info=info)).mismatches
                    if m.field == "tcb_info.fmspc")
    assert (mismatch.expected, mismatch.actual) == ("50806f000000 (the PCK certificate's)", "00606a000000")


def test_debug_td_is_refused_unless_allowed():
    pki = FakeIntel.instance()
    debug = pki.quote(td_attributes=bytes.fromhex("0100004000000000"))
    assert fields(fake_verify(pki, debug)) - {"tcb.level"} == {"body.td_attributes.debug"}
    assert fields(fake_verify(pki, debug, policy=TdxPolicy(allow_debug=True))) == {"tcb.level"}


def test_pck_chain_must_end_in_a_pck_certificate():
    pki = FakeIntel.instance()
    result = fake_verify(pki, pki.quote(leaf=pki.pck_certificate("Test SGX Something Else")))
    (name,) = [m for m in result.mismatches if m.field != "tcb.level"]
    assert name.field == "pck_leaf.subject"
    assert "Test SGX Something Else" in name.actual


def test_verification_time_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(at=datetime(2023, 7, 1))


def test_every_check_reports_even_when_many_fail():
    result = verify(flipped(QUOTE, BODY), at=AT + timedelta(days=10000), root=FakeIntel.instance().root)
    failed = {c.name for c in result.checks if not c.passed}
    assert {"quote signature", "PCK certificate chain", "TCB signing chain", "collateral freshness",
            "TCB level"} <= failed
