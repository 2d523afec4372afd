"""The SEV-SNP verifier on a real VLEK-signed report (AWS EC2, Milan): the report and its VLEK from
confidential-containers/trustee, AMD's Milan and Genoa ASVK/ARK from go-sev-guest (tests/vectors/attestation;
provenance in its SOURCES.md). The negative corpus every kind shares (bit flips, truncations, unsupported versions,
CPUs and keys, chains, time, CRLs) is tests/test_attestation_corpus.py's, kind snp-vlek; what is here is the VLEK's
own: its extensions and CSP ID, the key of the other kind, and ikectl trust check.

The VLEK was valid from 2024-12-10 to 2025-12-10: the tests judge it at AT, inside that window.
"""

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from attestation_mutations import SNP_VCEK, SNP_VLEK, amd_chain, fields, snp_trust_check
from cryptography import x509

from ikecommon.attestation.errors import VerificationFailed
from ikecommon.attestation.snp import (
    SnpPolicy,
    SnpReport,
    SnpVerification,
    TcbVersion,
    verify_report,
    vlek_extensions,
)

AT = SNP_VLEK.at  # 2025-06-01

REPORT = SNP_VLEK.evidence
MEASUREMENT = "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"
REPORT_DATA = ("819770b7e6ea6df8dd8fd4dd146b073c0bf4f3ce5b0977ecac486e3a05ed1bd5"
               "4e2a7ac1f5d1ca02e7d7d5ef9f73b8574fd9359e3a480d741a4478e8a7bc27ca")
REPORT_ID = "62e04fba700afd93b3a0cc0649b633ee36587fa8a8c2eb5d9b7cd7bc5f4bb057"
CSP_ID = "CN=cc-us-east-2.amazonaws.com"


@cache
def vlek() -> x509.Certificate:
    return SNP_VLEK.key


def asvk_ark(product: str = "milan") -> tuple[x509.Certificate, x509.Certificate]:
    return amd_chain(f"amd_asvk_ark_{product}.pem")


def verify(report: bytes = REPORT, *, product: str = "milan", at: datetime = AT, **kwargs) -> SnpVerification:
    asvk, ark = kwargs.pop("asvk_ark", None) or asvk_ark(product)
    if "vcek" not in kwargs:
        kwargs.setdefault("vlek", vlek())
    return verify_report(report, ask=asvk, ark=ark, at=at, **kwargs)


# -- the real report: parsed values, as SOURCES.md lists them -----------------------------------------------

def test_values_are_extracted_exactly():
    report = SnpReport.parse(REPORT)
    assert (report.version, report.guest_svn, report.policy, report.vmpl, report.signature_algo) == \
        (3, 0, 0x30000, 1, 1)
    assert (report.signer_info, report.signing_key, report.mask_chip_id) == (0x4, 1, False)
    assert report.measurement.hex() == MEASUREMENT
    assert report.report_data.hex() == REPORT_DATA
    assert report.report_id.hex() == REPORT_ID
    assert report.reported_tcb.raw == 0xD918000000000004
    assert report.reported_tcb.components() == {"bootloader": 4, "tee": 0, "snp": 24, "microcode": 217}
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x19, 0x01, 0x01)
    assert (report.current_major, report.current_minor, report.current_build) == (1, 55, 29)
    assert report.chip_id == bytes(64)  # a VLEK belongs to a cloud provider: no chip ID
    assert SnpReport.parse(REPORT).to_bytes() == REPORT


def test_vlek_extensions():
    extensions = vlek_extensions(vlek())
    assert extensions.product_name == "Milan"
    assert extensions.tcb == TcbVersion.of(bootloader=4, tee=0, snp=24, microcode=217)
    assert extensions.csp_id == CSP_ID
    assert extensions.kind == "VLEK"
    assert (vlek().not_valid_before_utc.isoformat(), vlek().not_valid_after_utc.isoformat()) == \
        ("2024-12-10T22:14:21+00:00", "2025-12-10T22:14:21+00:00")
    asvk, ark = asvk_ark()
    assert (asvk.subject.rfc4514_string().split(",")[0], ark.subject.rfc4514_string().split(",")[0]) == \
        ("CN=SEV-VLEK-Milan", "CN=ARK-Milan")


# -- the real report: verification ---------------------------------------------------------------------------

def test_real_vlek_report_verifies():
    result = verify()
    assert result.ok and result.signatures_valid
    assert [c.name for c in result.checks] == ["report signature", "VLEK certificate chain", "VLEK binding",
                                                "guest policy"]
    assert result.signing_key == "VLEK"
    assert result.vlek is not None and result.vlek.csp_id == CSP_ID
    assert result.vcek is None
    assert result.measurement.hex() == MEASUREMENT
    assert result.report_data.hex() == REPORT_DATA


def test_the_keyword_does_not_decide_the_kind():
    """envelope.certificates[0] is the VCEK or the VLEK: the certificate says which."""
    result = verify_report(REPORT, vcek=vlek(), ask=asvk_ark()[0], ark=asvk_ark()[1], at=AT)
    assert result.ok and result.signing_key == "VLEK"


def test_one_key_certificate():
    with pytest.raises(TypeError):
        verify_report(REPORT, ask=asvk_ark()[0], ark=asvk_ark()[1], at=AT)
    with pytest.raises(TypeError):
        verify(vcek=vlek(), vlek=vlek())


def test_policy_rules_apply():
    policy = SnpPolicy(vmpl=0, minimum_tcb=TcbVersion.of(bootloader=4, tee=0, snp=25, microcode=217))
    result = verify(policy=policy)
    assert fields(result) == {"vmpl", "reported_tcb.snp"}
    assert result.signatures_valid
    with pytest.raises(VerificationFailed, match="vmpl"):
        result.require_ok()


# -- the wrong key, the wrong chain, the wrong product -------------------------------------------------------

def test_vcek_chain_for_the_vlek_report():
    result = verify(vcek=SNP_VCEK.key, asvk_ark=SNP_VCEK.chain)
    mismatches = {m.field: m for m in result.mismatches}
    assert mismatches["signer_info.signing_key"].expected == "0 (VCEK): the key certificate given is a VCEK"
    assert mismatches["signer_info.signing_key"].actual == "1 (VLEK)"
    assert "signature" in mismatches
    assert not result.signatures_valid
    assert "chip_id" not in mismatches  # a VLEK-signed report has no chip ID to compare
    with pytest.raises(VerificationFailed, match=r"signer_info\.signing_key"):
        result.require_ok()


def test_vlek_for_the_vcek_report():
    result = verify(SNP_VCEK.evidence, policy=SnpPolicy(allow_debug=True), at=AT)
    mismatches = {m.field: m for m in result.mismatches}
    assert mismatches["signer_info.signing_key"].expected == "1 (VLEK): the key certificate given is a VLEK"
    assert mismatches["signer_info.signing_key"].actual == "0 (VCEK)"
    assert {"signature", "signer_info.signing_key"} <= set(mismatches)
    assert not result.signatures_valid


def test_vlek_under_the_vcek_ask_is_rejected():
    (issuer,) = verify(asvk_ark=SNP_VCEK.chain).mismatches
    assert issuer.field == "vlek.issuer"
    assert "CN=SEV-Milan" in issuer.expected and "CN=SEV-VLEK-Milan" in issuer.actual


def test_milan_vlek_under_the_genoa_chain_is_rejected():
    result = verify(product="genoa")
    (issuer,) = result.mismatches
    assert issuer.field == "vlek.issuer"
    assert "CN=SEV-VLEK-Genoa" in issuer.expected and "CN=SEV-VLEK-Milan" in issuer.actual
    assert result.check("report signature").passed and not result.signatures_valid


def test_milan_asvk_under_the_genoa_ark_is_rejected():
    (issuer,) = verify(asvk_ark=(asvk_ark("milan")[0], asvk_ark("genoa")[1])).mismatches
    assert issuer.field == "asvk.issuer"
    assert "CN=ARK-Genoa" in issuer.expected and "CN=ARK-Milan" in issuer.actual


# -- the CPU a report names ----------------------------------------------------------------------------------

def test_a_report_that_says_turin_under_a_milan_vlek():
    report = bytearray(REPORT)
    report[0x188] = 0x1A  # family 0x1a model 0x01: Turin
    mismatches = {m.field: m for m in verify(bytes(report)).mismatches}
    assert set(mismatches) == {"signature", "product"}
    assert (mismatches["product"].expected, mismatches["product"].actual) == \
        ("'Milan' (the VLEK's productName)", "Turin (CPUID family 0x1a model 0x01)")


# -- expiry ----------------------------------------------------------------------------------------------------

def test_expired_vlek():
    (expired,) = verify(at=datetime(2026, 1, 1, tzinfo=UTC)).mismatches
    assert (expired.field, expired.actual) == ("vlek.not_after", "2025-12-10T22:14:21Z")


# -- ikectl trust check --------------------------------------------------------------------------------------------

def _trust_check(tmp_path: Path, *names: str, extra: tuple[str, ...] = ("--at", "2025-06-01T00:00:00Z")) -> int:
    return snp_trust_check(tmp_path, "snp_report_milan_vlek.bin", asvk_ark()[1], names, *extra)


def _fields(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if line.startswith("  ") and len(parts) == 2 and parts[0].isupper():
            found[parts[0]] = parts[1].strip()
    return found


def test_trust_check_shows_the_vlek_and_its_csp_id(tmp_path, capsys):
    assert _trust_check(tmp_path, "snp_vlek_milan.der", "amd_asvk_ark_milan.pem") == 0
    out, err = capsys.readouterr()
    assert err == ""
    fields = _fields(out)
    assert fields["SIGNING_KEY"] == "1 (VLEK)"
    assert (fields["KEY_CERTIFICATE"], fields["CSP_ID"]) == ("VLEK", CSP_ID)
    assert fields["MEASUREMENT"] == MEASUREMENT
    for name in ("report signature", "VLEK certificate chain", "VLEK binding", "guest policy"):
        assert f"ok    {name} (" in out, name
    assert out.rstrip().endswith("result:      ok")


def test_trust_check_json_has_the_csp_id(tmp_path, capsys):
    assert _trust_check(tmp_path, "snp_vlek_milan.der", "amd_asvk_ark_milan.pem",
                        extra=("--at", "2025-06-01T00:00:00Z", "--json")) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["fields"]["KEY_CERTIFICATE"], document["fields"]["CSP_ID"]) == ("VLEK", CSP_ID)
    assert (document["authentic"], document["accepted"], document["result"]) == (True, True, "ok")


def test_trust_check_takes_the_vlek_when_the_dir_holds_both(tmp_path, capsys):
    assert _trust_check(tmp_path, "snp_vcek_milan.der", "amd_ask_ark_milan.pem", "snp_vlek_milan.der",
                        "amd_asvk_ark_milan.pem") == 0
    assert _fields(capsys.readouterr().out)["KEY_CERTIFICATE"] == "VLEK"


def test_trust_check_with_a_vcek_chain_names_the_signing_key(tmp_path, capsys):
    assert _trust_check(tmp_path, "snp_vcek_milan.der", "amd_ask_ark_milan.pem") == 1
    out = capsys.readouterr().out
    assert _fields(out)["KEY_CERTIFICATE"] == "VCEK"
    assert "signer_info.signing_key: expected 0 (VCEK): the key certificate given is a VCEK, got 1 (VLEK)" in out


def test_trust_check_now_finds_the_vlek_expired(tmp_path, capsys):
    assert _trust_check(tmp_path, "snp_vlek_milan.der", "amd_asvk_ark_milan.pem", extra=()) == 1
    assert "vlek.not_after" in capsys.readouterr().out
