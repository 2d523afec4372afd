"""The TDX verifier on real evidence: the Sapphire Rapids quote, PCK chain and collateral from go-tdx-guest (copied
into tests/vectors/attestation; provenance in its SOURCES.md).

The real quote verifies as its origin says: every signature and chain is valid, and its TCB level matches none in
the shipped TCB info. The negative corpus that every kind of evidence shares (one bit flipped in each signed region,
truncations, lengths, unsupported types, roots, time, CRLs) is tests/test_attestation_corpus.py; what is here names
values (the expired PCK's notAfter, a revoked serial) or needs this quote alone. Revocation, a matching TCB level and
a debug TD need evidence Intel never signed, so a test PKI ("FakeIntel") re-signs the real quote's QE report and
collateral under its own root; the verifier code path is the same.
"""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from attestation_mutations import TDX_V4, fields, flipped, intel_collateral, pck_chain, tdx_file
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.errors import EvidenceFormatError, VerificationFailed
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

AT = TDX_V4.at  # 2023-07-01: inside every validity period of the vectors, as go-tdx-guest tests

QUOTE = TDX_V4.evidence
SIGNED_END = 4935  # the signed quote; then go-tdx-guest's 39-byte trailer
TRAILER = b"\nextra bytes(only for testing purpose)\n"
LAYOUT = TDX_V4.layout  # header 48, body 584 from 48, signature data from 636

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


def verify(quote: bytes = QUOTE, *, at: datetime = AT, root: x509.Certificate | None = None,
           collateral: TdxCollateral | None = None, policy: TdxPolicy | None = None) -> TdxVerification:
    return TDX_V4.verify(quote, at=at, root=root, collateral=collateral, policy=policy)


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
    leaf = pck_chain(QUOTE)[0]
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


# -- malformed collateral ------------------------------------------------------------------------------------

def test_malformed_collateral_names_the_json_path():
    document = tdx_file("tdx_tcbinfo_v3_fmspc_50806f000000.json").replace(b'"pcesvn":11', b'"pcesvn":"11"')
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

def test_real_crls_are_checked_and_do_not_list_this_pck():
    crl = x509.load_der_x509_crl(tdx_file("intel_pck_platform_crl.der"))
    leaf = pck_chain(QUOTE)[0]
    assert len(crl) == 44
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    assert verify().check("PCK certificate chain").passed


def test_missing_crls_fail_closed():
    result = verify(collateral=intel_collateral(crls=()))
    revocation = {m.field: m for m in result.mismatches if m.field.endswith(".revocation")}
    assert set(revocation) == {"pck_leaf.revocation", "pck_ca.revocation", "tcb_signer.revocation"}
    assert revocation["pck_leaf.revocation"].actual == "none supplied"


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
    assert mismatch.expected.endswith("(nextUpdate plus the 12 hours grace)")


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
    qe = json.loads(tdx_file("tdx_qe_identity_v2.json"))["enclaveIdentity"]
    qe["tcbLevels"] = [{"tcb": {"isvsvn": 5}, "tcbDate": "2023-06-01T00:00:00Z", "tcbStatus": "UpToDate"},
                       {"tcb": {"isvsvn": 4}, "tcbDate": "2023-02-15T00:00:00Z", "tcbStatus": "OutOfDate"}]
    collateral = pki.collateral(tcb_info=tcb_info_with({0: {"sgx": LOW_SGX, "tdx": LOW_TDX}}), qe_identity=qe)
    result = fake_verify(pki, collateral=collateral)
    assert (result.tcb.qe_status, result.tcb.status) == ("OutOfDate", "OutOfDate")
    assert fields(result) == {"tcb.status"}


def test_qe_from_another_signer():
    pki = FakeIntel.instance()
    qe = json.loads(tdx_file("tdx_qe_identity_v2.json"))["enclaveIdentity"]
    qe["mrsigner"] = "00" * 32
    result = fake_verify(pki, collateral=pki.collateral(qe_identity=qe))
    assert fields(result) - {"tcb.level"} == {"qe_report.mr_signer"}
    assert result.signatures_valid


def test_tcb_info_for_another_platform():
    pki = FakeIntel.instance()
    info = json.loads(tdx_file("tdx_tcbinfo_v3_fmspc_50806f000000.json"))["tcbInfo"]
    info["fmspc"] = "00606a000000"
    mismatch = next(m for m in fake_verify(pki, collateral=pki.collateral(tcb_info=info)).mismatches
                    if m.field == "tcb_info.fmspc")
    assert (mismatch.expected, mismatch.actual) == ("50806f000000 (the PCK certificate's)", "00606a000000")


def test_debug_td_is_refused_unless_allowed():
    pki = FakeIntel.instance()
    debug = pki.quote(td_attributes=bytes.fromhex("0100004000000000"))
    assert fields(fake_verify(pki, debug)) - {"tcb.level"} == {"body.td_attributes.debug"}
    assert fields(fake_verify(pki, debug, policy=TdxPolicy(allow_debug=True))) == {"tcb.level"}


def test_migratable_td_is_refused_unless_allowed():
    pki = FakeIntel.instance()
    migratable = pki.quote(td_attributes=bytes.fromhex("0000006000000000"))  # MIGRATABLE and PKS, as a host may set
    assert fields(fake_verify(pki, migratable)) - {"tcb.level"} == {"body.td_attributes.migratable"}
    assert fields(fake_verify(pki, migratable, policy=TdxPolicy(allow_migratable=True))) == {"tcb.level"}
    assert fields(fake_verify(pki, pki.quote(td_attributes=bytes.fromhex("0000004000000000")))) == {"tcb.level"}


def test_pck_chain_must_end_in_a_pck_certificate():
    pki = FakeIntel.instance()
    result = fake_verify(pki, pki.quote(leaf=pki.pck_certificate("Test SGX Something Else")))
    (name,) = [m for m in result.mismatches if m.field != "tcb.level"]
    assert name.field == "pck_leaf.subject"
    assert "Test SGX Something Else" in name.actual


# --- only Intel's TCB Signing certificate speaks for collateral (found by an adversarial review) ---

def _signed_by(pki: FakeIntel, key, chain: tuple[x509.Certificate, ...]) -> TdxCollateral:
    """Collateral that says the platform is UpToDate, signed with `key` and shipped with `chain`."""
    tcb_info = pki.signed_json("tcbInfo", up_to_date_tcb_info(), key)
    qe_identity = pki.signed_json("enclaveIdentity", real_qe_identity(), key)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return replace(TdxCollateral.load(tcb_info=tcb_info, qe_identity=qe_identity, tcb_signing_chain=pem, crls=()),
                   crls=(pki.crl(pki.ca), pki.crl(pki.root)))


@pytest.mark.parametrize("signer", ["pck_leaf", "pck_ca"])
def test_collateral_signed_by_another_certificate_under_the_root_is_refused(signer):
    """A PCK key taken from one out-of-date platform must not sign a TCB info that clears it."""
    pki = FakeIntel.instance()
    key, chain = {"pck_leaf": (pki.leaf_key, (pki.leaf, pki.ca, pki.root)),
                  "pck_ca": (pki.ca_key, (pki.ca, pki.root))}[signer]
    result = fake_verify(pki, collateral=_signed_by(pki, key, chain))
    assert not result.check("TCB signing chain").passed and not result.ok
    assert "tcb_signer.subject" in fields(result)
    assert fake_verify(pki, collateral=_signed_by(pki, pki.tcb_key, (pki.tcb_signer, pki.root))).ok  # the control


def test_a_tcb_signer_that_is_a_ca_or_not_issued_by_the_root_is_refused():
    pki = FakeIntel.instance()
    ca_signer = pki._cert("Intel SGX TCB Signing", pki.tcb_key, (pki.root, pki.root_key), ca=True, path_length=0)
    assert "tcb_signer.basic_constraints" in fields(fake_verify(pki, collateral=_signed_by(
        pki, pki.tcb_key, (ca_signer, pki.root))))
    deep = pki._cert("Intel SGX TCB Signing", pki.tcb_key, (pki.ca, pki.ca_key), ca=False)
    assert {"tcb_signing_chain", "tcb_signer.issuer"} <= fields(fake_verify(pki, collateral=_signed_by(
        pki, pki.tcb_key, (deep, pki.ca, pki.root))))


def test_verification_time_must_be_timezone_aware():
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(at=datetime(2023, 7, 1))


def test_every_check_reports_even_when_many_fail():
    result = verify(flipped(QUOTE, LAYOUT.body), at=AT + timedelta(days=10000), root=FakeIntel.instance().root)
    failed = {c.name for c in result.checks if not c.passed}
    assert {"quote signature", "PCK certificate chain", "TCB signing chain", "collateral freshness",
            "TCB level"} <= failed
