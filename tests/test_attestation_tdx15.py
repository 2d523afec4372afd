"""TDX 1.5: the quote v5 with a TD report 1.5 body, on go-tdx-guest's real v5 sample quote (copied into
tests/vectors/attestation/tdx/tdx_quote_v5_td15.dat; provenance in its SOURCES.md).

What the origin asserts, and these tests check: the quote parses as v5 with body type 3 and a 648-byte body, and
encodes back to its bytes (abi_test.go); its quote signature, QE report signature, attestation key binding and PCK
chain verify to Intel's root at 2026-02-03 without revocation (verify_test.go, TestRawQuoteV5VerifyWithoutCollateral);
its PCK certificate's FMSPC is 90c06f000000 (the TCB info TestVerifyUsingTcbInfoV5 fetches); a body type 1 or a
body size other than the type's is refused. The field values below are read here (SOURCES.md says so) and kept
as a regression check. There is no matching collateral: the v4 vector's (FMSPC 50806f000000, 2023) is the only one
shipped, so the collateral checks fail and the signatures stand on their own. The negative corpus (one bit flipped in
each region, truncations, body types and sizes, ...) is tests/test_attestation_corpus.py's, kind tdx-v5.
"""

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache

from attestation_mutations import TDX_V5, fields, flipped, pck_chain

from ikecommon.attestation import ecdsa
from ikecommon.attestation.tdx import TdReportBody, TdReportBody15, TdxQuote, TdxVerification, sgx_extensions

QUOTE = TDX_V5.evidence
AT = TDX_V5.at  # 2026-02-03T01:00Z, go-tdx-guest's time for this quote
LAYOUT = TDX_V5.layout  # header 48, body descriptor (type 2, size 4) from 48, body 648 from 54, signature data
DESCRIPTOR, BODY = 48, 54

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
    return TDX_V5.verify(quote, at=at)


@cache
def baseline_fields() -> set[str]:
    return fields(verify15())


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
    pck = sgx_extensions(pck_chain(QUOTE)[0])
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


# -- one bit flipped in the PEM text of the PCK chain -------------------------------------------------------------

def test_one_bit_flipped_in_the_pck_leaf_signature():
    """The leaf's signature is the end of its DER, so of its base64: flip one bit of a character there."""
    pem = TdxQuote.parse(QUOTE).signature_data.certification.pck_chain_pem
    end = LAYOUT.pck_chain + pem.index(b"-----END CERTIFICATE-----")
    result = verify15(flipped(QUOTE, end - 10, 1))
    assert fields(result) - baseline_fields() == {"pck_leaf.signature"}


# -- a body of type 2 and what the signature covers ---------------------------------------------------------------

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
