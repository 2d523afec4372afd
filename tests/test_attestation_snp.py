"""The SEV-SNP verifier on real evidence: a Milan report with its VCEK and AMD's Milan and Genoa ASK/ARK from
go-sev-guest (copied into tests/vectors/attestation; provenance in its SOURCES.md).

The real report is authentic; it was launched with debugging allowed, which the default policy refuses. Revocation,
signing-key changes and masked chip IDs need reports AMD never signed: a test PKI ("FakeAmd", RSA-PSS like AMD's)
re-signs the real report under its own ARK.
"""

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache

import pytest
from attestation_vectors import SNP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ikecommon.attestation import EvidenceFormatError, UnsupportedEvidence, VerificationFailed
from ikecommon.attestation.snp import (
    SnpPolicy,
    SnpReport,
    SnpVerification,
    TcbVersion,
    load_ask_ark,
    load_vcek,
    vcek_extensions,
    verify_report,
)
from ikecommon.attestation.snp.report import LAYOUT, REPORT_SIZE

AT = datetime(2023, 7, 1, tzinfo=UTC)

REPORT = (SNP / "snp_report_milan.bin").read_bytes()
MEASUREMENT = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
REPORT_DATA = "0102030405" + "00" * 59
PERMISSIVE = SnpPolicy(allow_debug=True)  # the real report was launched with DEBUG set


@cache
def vcek() -> x509.Certificate:
    return load_vcek((SNP / "snp_vcek_milan.der").read_bytes())


@cache
def ask_ark(product: str = "milan") -> tuple[x509.Certificate, x509.Certificate]:
    return load_ask_ark((SNP / f"amd_ask_ark_{product}.pem").read_bytes())


def verify(report: bytes = REPORT, *, product: str = "milan", at: datetime = AT, policy: SnpPolicy | None = PERMISSIVE,
           **kwargs) -> SnpVerification:
    ask, ark = kwargs.pop("ask_ark", None) or ask_ark(product)
    return verify_report(report, vcek=kwargs.pop("vcek", None) or vcek(), ask=ask, ark=ark, at=at, policy=policy,
                         **kwargs)


def fields(result: SnpVerification) -> set[str]:
    return {m.field for m in result.mismatches}


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


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


# -- one bit flipped in each signed region, and in the signature ---------------------------------------------

@pytest.mark.parametrize(("offset", "expected"), [
    pytest.param(0x00, {"signature"}, id="version"),
    pytest.param(0x04, {"signature"}, id="guest-svn"),
    pytest.param(0x08, {"signature"}, id="policy"),
    pytest.param(0x10, {"signature"}, id="family-id"),
    pytest.param(0x50, {"signature"}, id="report-data"),
    pytest.param(0x90, {"signature"}, id="measurement"),
    pytest.param(0xBF, {"signature"}, id="measurement-last-byte"),
    pytest.param(0xC0, {"signature"}, id="host-data"),
    pytest.param(0x180, {"signature", "reported_tcb.bootloader"}, id="reported-tcb"),
    pytest.param(0x1A0, {"signature", "chip_id"}, id="chip-id"),
    pytest.param(0x1F0, {"signature"}, id="launch-tcb"),
    pytest.param(0x29F, {"signature"}, id="last-signed-byte"),
    pytest.param(0x2A0, {"signature"}, id="signature-r"),
    pytest.param(0x2A0 + 72, {"signature"}, id="signature-s"),
])
def test_one_bit_flipped(offset: int, expected: set[str]):
    result = verify(flipped(REPORT, offset))
    assert fields(result) == expected
    assert not result.signatures_valid


def test_signature_algorithm_changed_is_unsupported():
    with pytest.raises(UnsupportedEvidence) as caught:
        verify(flipped(REPORT, 0x34, 1))
    assert str(caught.value) == "SEV-SNP signature algorithm 3 (supported: 1, ECDSA P-384 with SHA-384)"
    assert (caught.value.field, caught.value.offset) == ("snp_report.signature_algo", 0x34)


def test_bytes_after_the_signature_are_not_signed():
    assert verify(flipped(REPORT, 0x2A0 + 200)).ok


def _with_signature_bit_flipped(cert: x509.Certificate) -> x509.Certificate:
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1
    return x509.load_der_x509_certificate(bytes(der))


def test_one_bit_flipped_in_the_ask_signature():
    ask, ark = ask_ark()
    assert fields(verify(ask_ark=(_with_signature_bit_flipped(ask), ark))) == {"ask.signature"}


def test_one_bit_flipped_in_the_ark_signature():
    ask, ark = ask_ark()
    assert fields(verify(ask_ark=(ask, _with_signature_bit_flipped(ark)))) == {"ark.signature"}


# -- truncated and malformed evidence ------------------------------------------------------------------------

@pytest.mark.parametrize(("cut", "field", "offset"), [
    (0, "snp_report.version", 0),
    (4, "snp_report.guest_svn", 4),
    (0x50, "snp_report.report_data", 0x50),
    (0xA0, "snp_report.measurement", 0x90),
    (0x1A0, "snp_report.chip_id", 0x1A0),
    (0x2A0, "snp_report.signature_r", 0x2A0),
    (REPORT_SIZE - 1, "snp_report.signature_reserved", 0x2A0 + 144),
])
def test_truncated(cut: int, field: str, offset: int):
    with pytest.raises(EvidenceFormatError) as caught:
        SnpReport.parse(REPORT[:cut])
    assert (caught.value.field, caught.value.offset) == (field, offset)


def test_too_long():
    with pytest.raises(EvidenceFormatError, match="1 bytes after"):
        SnpReport.parse(REPORT + b"\0")


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_version(version: int):
    with pytest.raises(UnsupportedEvidence) as caught:
        SnpReport.parse(version.to_bytes(4, "little") + REPORT[4:])
    assert str(caught.value) == f"SEV-SNP report version {version} (supported: 2 to 5)"
    assert (caught.value.field, caught.value.offset) == ("snp_report.version", 0)


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


def test_vcek_without_amd_extensions():
    ask, _ = ask_ark()
    with pytest.raises(EvidenceFormatError, match=r"vcek\.extensions"):
        verify(vcek=ask)


# -- expiry and revocation -----------------------------------------------------------------------------------

def test_expired_vcek():
    result = verify(at=datetime(2030, 1, 1, tzinfo=UTC))
    (expired,) = result.mismatches
    assert (expired.field, expired.actual) == ("vcek.not_after", "2029-09-24T00:55:28Z")


def test_vcek_not_yet_valid():
    result = verify(at=datetime(2021, 1, 1, tzinfo=UTC))
    assert fields(result) == {"vcek.not_before"}


RSA_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-ike tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class FakeAmd:
    """ARK and ASK (RSA, signing with RSASSA-PSS SHA-384 as AMD does) and a P-384 VCEK carrying the real VCEK's
    AMD extensions."""

    _instance: "FakeAmd | None" = None

    def __init__(self) -> None:
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = self._cert("ARK-Test", self.ark_key, None, ca=True)
        self.ask = self._cert("SEV-Test", self.ask_key, (self.ark, self.ark_key), ca=True)
        amd = [e for e in vcek().extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704.")]
        self.vcek = self._cert("SEV-VCEK", self.vcek_key, (self.ask, self.ask_key), ca=False, extra=amd)

    @classmethod
    def instance(cls) -> "FakeAmd":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @staticmethod
    def _cert(common_name: str, key, issuer, *, ca: bool, extra=()) -> x509.Certificate:
        issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(datetime(2023, 1, 1, tzinfo=UTC))
                   .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extra:
            builder = builder.add_extension(extension.value, critical=False)
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=RSA_PSS)

    def report(self, base: bytes = REPORT, **changes) -> bytes:
        unsigned = replace(SnpReport.parse(base), **changes)
        r, s = decode_dss_signature(self.vcek_key.sign(unsigned.signed_bytes, ec.ECDSA(hashes.SHA384())))
        return replace(unsigned, signature_r=r.to_bytes(72, "little"), signature_s=s.to_bytes(72, "little")).to_bytes()

    def crl(self, revoked: tuple[x509.Certificate, ...] = (), key=None) -> x509.CertificateRevocationList:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(datetime(2023, 6, 1, tzinfo=UTC)).next_update(datetime(2023, 8, 1, tzinfo=UTC)))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(datetime(2023, 6, 1, tzinfo=UTC)).build())
        return builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=RSA_PSS)

    def verify(self, report: bytes | None = None, **kwargs) -> SnpVerification:
        kwargs.setdefault("ask_ark", (self.ask, self.ark))
        return verify(report or self.report(), vcek=self.vcek, **kwargs)


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


def test_stale_crl():
    amd = FakeAmd.instance()
    assert fields(amd.verify(crls=(amd.crl(),), at=datetime(2023, 9, 1, tzinfo=UTC))) == {"ark_crl.next_update"}


@pytest.mark.parametrize(("signing_key", "words"), [(7, "signing key 7 (none)"), (2, "signing key 2")])
def test_report_signed_by_no_key_is_unsupported(signing_key: int, words: str):
    amd = FakeAmd.instance()
    with pytest.raises(UnsupportedEvidence) as caught:
        amd.verify(amd.report(signer_info=signing_key << 2))
    assert str(caught.value) == f"SEV-SNP report signed by {words} (supported: 0, a VCEK, and 1, a VLEK)"
    assert caught.value.field == "snp_report.signer_info.signing_key"


def test_report_that_says_vlek_with_a_vcek_is_a_signing_key_mismatch():
    amd = FakeAmd.instance()
    (mismatch,) = amd.verify(amd.report(signer_info=1 << 2)).mismatches
    assert (mismatch.field, mismatch.actual) == ("signer_info.signing_key", "1 (VLEK)")
    assert mismatch.expected == "0 (VCEK): the key certificate given is a VCEK"


def test_a_vcek_of_another_product_is_unsupported():
    amd = FakeAmd.instance()
    extensions = [x509.Extension(e.oid, e.critical, x509.UnrecognizedExtension(e.oid, b"\x16\x09Venice-A0"))
                  if e.oid.dotted_string == "1.3.6.1.4.1.3704.1.2" else e
                  for e in vcek().extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704.")]
    venice = FakeAmd._cert("SEV-VCEK", amd.vcek_key, (amd.ask, amd.ask_key), ca=False, extra=extensions)
    with pytest.raises(UnsupportedEvidence) as caught:
        verify(amd.report(), vcek=venice, ask_ark=(amd.ask, amd.ark))
    assert str(caught.value) == "SEV-SNP product 'Venice-A0' (supported: Milan, Genoa and Turin)"
    assert caught.value.field == "vcek.productName"


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
    ark = (x509.CertificateBuilder().subject_name(_name("ARK-EC")).issuer_name(_name("ARK-EC"))
           .public_key(key.public_key()).serial_number(1)
           .not_valid_before(datetime(2023, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA384()))
    result = amd.verify(ask_ark=(amd.ask, ark))
    assert {"ark.signature_algorithm", "ask.issuer"} <= fields(result)
