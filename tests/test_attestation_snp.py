"""The SEV-SNP verifier on real evidence: a Milan report with its VCEK and AMD's Milan and Genoa ASK/ARK from
go-sev-guest (copied into tests/vectors/attestation; provenance in its SOURCES.md).

The real report is authentic; it was launched with debugging allowed, which the default policy refuses. Revocation,
signing-key changes and masked chip IDs need reports AMD never signed: a test PKI ("FakeAmd", RSA-PSS like AMD's, in
tests/attestation_mutations.py) re-signs the real report under its own ARK. The negative corpus every kind shares
(bit flips, truncations, unsupported versions, CPUs, keys and products, chains, time, CRLs) is
tests/test_attestation_corpus.py's, kind snp-vcek.
"""

from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from functools import cache

import pytest
from attestation_mutations import SNP_VCEK, FakeAmd, amd_chain, fields, name_of
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.errors import UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.snp import (
    SnpPolicy,
    SnpReport,
    SnpVerification,
    TcbVersion,
    vcek_extensions,
    verify_report,
)
from ikecommon.attestation.snp.report import LAYOUT, REPORT_SIZE

AT = datetime(2023, 7, 1, tzinfo=UTC)

REPORT = SNP_VCEK.evidence
MEASUREMENT = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
REPORT_DATA = "0102030405" + "00" * 59
PERMISSIVE = SnpPolicy(allow_debug=True)  # the real report was launched with DEBUG set


@cache
def vcek() -> x509.Certificate:
    return SNP_VCEK.key


def ask_ark(product: str = "milan") -> tuple[x509.Certificate, x509.Certificate]:
    return amd_chain(f"amd_ask_ark_{product}.pem")


def verify(report: bytes = REPORT, *, product: str = "milan", at: datetime = AT, policy: SnpPolicy | None = PERMISSIVE,
           **kwargs) -> SnpVerification:
    ask, ark = kwargs.pop("ask_ark", None) or ask_ark(product)
    return verify_report(report, vcek=kwargs.pop("vcek", None) or vcek(), ask=ask, ark=ark, at=at, policy=policy,
                         **kwargs)


# -- the real report: parsed values --------------------------------------------------------------------------

def test_layout_is_the_report():
    assert sum(size for _, size, _ in LAYOUT) == REPORT_SIZE == 1184
    assert [f.name for f in dataclass_fields(SnpReport)] == [name for name, _, _ in LAYOUT]


def test_values_are_extracted_exactly():
    report = SnpReport.parse(REPORT)
    assert (report.version, report.guest_svn, report.policy, report.vmpl, report.signature_algo) == \
        (2, 0, 0xB0000, 0, 1)
    assert report.report_data.hex() == REPORT_DATA
    assert report.measurement.hex() == MEASUREMENT
    assert report.reported_tcb.raw == 0x4405000000000002
    assert report.reported_tcb.components() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert report.chip_id.hex().startswith("3ac3fe21")
    assert report.chip_id.hex().endswith("006b5d")


def test_encoding_gives_back_the_report():
    assert SnpReport.parse(REPORT).to_bytes() == REPORT


def test_vcek_extensions():
    extensions = vcek_extensions(vcek())
    assert extensions.product_name == "Milan-B0"
    assert extensions.tcb == TcbVersion.of(bootloader=2, tee=0, snp=5, microcode=68)
    assert extensions.hw_id == SnpReport.parse(REPORT).chip_id


# -- the real report: verification ---------------------------------------------------------------------------

def test_real_report_verifies():
    result = verify()
    assert result.ok
    assert result.signatures_valid
    assert result.measurement.hex() == MEASUREMENT
    assert result.report_data.hex() == REPORT_DATA
    assert result.chip_id == vcek_extensions(vcek()).hw_id


def test_default_policy_refuses_the_debug_guest():
    result = verify(policy=None)
    assert result.signatures_valid
    (debug,) = result.mismatches
    assert (debug.field, debug.actual) == ("policy.debug", "1")
    with pytest.raises(VerificationFailed, match=r"policy\.debug"):
        result.require_ok()


def test_policy_rules_report_every_violation():
    policy = SnpPolicy(allow_smt=False, vmpl=1, minimum_guest_svn=1, minimum_abi=(1, 51),
                       minimum_tcb=TcbVersion.of(bootloader=3, tee=0, snp=8, microcode=115))
    result = verify(policy=policy)
    assert fields(result) == {"policy.debug", "policy.smt", "vmpl", "guest_svn", "policy.abi",
                              "reported_tcb.bootloader", "reported_tcb.snp", "reported_tcb.microcode"}
    assert result.signatures_valid


# -- wrong root ----------------------------------------------------------------------------------------------

def test_milan_vcek_under_the_genoa_chain_is_rejected():
    result = verify(product="genoa")
    (issuer,) = result.mismatches
    assert issuer.field == "vcek.issuer"
    assert "CN=SEV-Genoa" in issuer.expected
    assert "CN=SEV-Milan" in issuer.actual
    assert not result.signatures_valid
    assert result.check("report signature").passed


def test_milan_ask_under_the_genoa_ark_is_rejected():
    milan_ask, _ = ask_ark("milan")
    _, genoa_ark = ask_ark("genoa")
    (issuer,) = verify(ask_ark=(milan_ask, genoa_ark)).mismatches
    assert issuer.field == "ask.issuer"
    assert "CN=ARK-Genoa" in issuer.expected
    assert "CN=ARK-Milan" in issuer.actual


# -- the CPU a report names ----------------------------------------------------------------------------------

SUPPORTED_CPUS = ("Milan (family 0x19 model 0x00-0x0f), Genoa (family 0x19 model 0x10-0x1f, 0xa0-0xaf), Turin "
                  "(family 0x1a model 0x00-0x11)")


@pytest.mark.parametrize(("family", "model", "field", "offset"), [
    (0x17, 0x01, "snp_report.cpuid_fam_id", 0x188),
    (0x19, 0x21, "snp_report.cpuid_mod_id", 0x189),  # a desktop Zen 3, no SEV-SNP
    (0x1A, 0x50, "snp_report.cpuid_mod_id", 0x189),  # after Turin
])
def test_a_report_from_another_cpu_is_unsupported(family: int, model: int, field: str, offset: int):
    report = bytearray(REPORT)
    report[0:4] = (3).to_bytes(4, "little")
    report[0x188:0x18A] = family, model
    with pytest.raises(UnsupportedEvidence) as caught:
        SnpReport.parse(bytes(report))
    assert str(caught.value) == \
        f"SEV-SNP report from CPU family 0x{family:x} model 0x{model:02x} (supported: {SUPPORTED_CPUS})"
    assert (caught.value.field, caught.value.offset) == (field, offset)


@pytest.mark.parametrize(("family", "model", "product"), [
    (0x19, 0x01, "Milan"), (0x19, 0x11, "Genoa"), (0x19, 0xA0, "Genoa"), (0x1A, 0x02, "Turin"), (0x1A, 0x11, "Turin"),
    (0x00, 0x00, None),  # a version 3 report that leaves CPUID zero is read as its key says
])
def test_the_product_a_version_3_report_names(family: int, model: int, product: str | None):
    report = bytearray(REPORT)
    report[0:4] = (3).to_bytes(4, "little")
    report[0x188:0x18A] = family, model
    parsed = SnpReport.parse(bytes(report))
    assert (parsed.product and parsed.product.name) == product
    assert parsed.reported_tcb.layout.name == ("Turin" if product == "Turin" else "Milan/Genoa")


def test_cpuid_is_reserved_in_version_2():
    report = bytearray(REPORT)
    report[0x188] = 0x1A
    assert SnpReport.parse(bytes(report)).version == 2


# -- expiry, and a test PKI for revocation and reports AMD never signed ----------------------------------------

def test_expired_vcek():
    result = verify(at=datetime(2030, 1, 1, tzinfo=UTC))
    (expired,) = result.mismatches
    assert (expired.field, expired.actual) == ("vcek.not_after", "2029-09-24T00:55:28Z")


def test_test_pki_verifies_like_amd():
    assert FakeAmd.instance().verify().ok


def test_revoked_ask():
    amd = FakeAmd.instance()
    result = amd.verify(crls=(amd.crl(revoked=(amd.ask,)),))
    (revoked,) = result.mismatches
    assert revoked.field == "ask.revocation"
    assert f"serial {amd.ask.serial_number:x} revoked on 2023-06-01T00:00:00Z in ark_crl" == revoked.actual
    assert not result.signatures_valid


def test_crl_that_revokes_nothing():
    amd = FakeAmd.instance()
    assert amd.verify(crls=(amd.crl(),)).ok


def test_crl_signed_by_someone_else():
    amd = FakeAmd.instance()
    forged = amd.crl(revoked=(amd.ask,), key=amd.ask_key)
    assert fields(amd.verify(crls=(forged,))) == {"ark_crl.signature"}

def test_report_that_says_vlek_with_a_vcek_is_a_signing_key_mismatch():
    amd = FakeAmd.instance()
    (mismatch,) = amd.verify(amd.report(signer_info=1 << 2)).mismatches
    assert (mismatch.field, mismatch.actual) == ("signer_info.signing_key", "1 (VLEK)")
    assert mismatch.expected == "0 (VCEK): the key certificate given is a VCEK"

def test_masked_chip_id():
    amd = FakeAmd.instance()
    result = amd.verify(amd.report(signer_info=0b10, chip_id=bytes(64)))
    assert fields(result) == {"signer_info.mask_chip_id"}


def test_report_from_another_chip_and_tcb():
    amd = FakeAmd.instance()
    report = amd.report(chip_id=bytes(64), reported_tcb=TcbVersion.of(bootloader=2, tee=0, snp=6, microcode=68))
    mismatches = {m.field: m for m in amd.verify(report).mismatches}
    assert set(mismatches) == {"chip_id", "reported_tcb.snp"}
    assert (mismatches["reported_tcb.snp"].expected, mismatches["reported_tcb.snp"].actual) == \
        ("5 (the VCEK's SPL)", "6")


def test_migration_agent_refused_unless_allowed():
    amd = FakeAmd.instance()
    report = amd.report(policy=0x30000 | 1 << 18)
    assert fields(amd.verify(report)) == {"policy.migrate_ma"}
    assert amd.verify(report, policy=SnpPolicy(allow_migration_agent=True)).ok


def test_ecdsa_signed_chain_is_not_amd():
    amd = FakeAmd.instance()
    key = ec.generate_private_key(ec.SECP384R1())
    ark = (x509.CertificateBuilder().subject_name(name_of("ARK-EC")).issuer_name(name_of("ARK-EC"))
           .public_key(key.public_key()).serial_number(1)
           .not_valid_before(datetime(2023, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA384()))
    result = amd.verify(chain=(amd.ask, ark))
    assert {"ark.signature_algorithm", "ask.issuer"} <= fields(result)
