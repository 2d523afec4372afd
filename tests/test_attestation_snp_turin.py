"""The SEV-SNP verifier on a real Turin (AMD EPYC 9005) report: an Oak Containers report (version 5) with its VCEK,
extracted from project-oak/oak's test data, and AMD's Turin ASK/ARK from go-sev-guest (tests/vectors/attestation;
provenance, and the values project-oak/oak and yaxitech/routex-client-lua assert for them, in its SOURCES.md).

Turin lays TCB_VERSION out differently (FMC byte 0, bootloader 1, TEE 2, SNP 3, microcode 7) and its VCEK's hwID is
8 bytes, the first 8 of CHIP_ID. A version 2 report from Turin, which names no CPU, needs a report AMD never signed:
the test PKI of tests/test_attestation_snp.py re-signs the real one.
"""

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from attestation_mutations import snp_trust_check
from attestation_vectors import SNP, VECTORS
from cryptography import x509
from test_attestation_snp import PERMISSIVE, FakeAmd
from test_attestation_snp import verify as verify_milan

from ikecommon.attestation.chain import Named, verify_chain
from ikecommon.attestation.roots import ARK_TURIN, fingerprint
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
from ikecommon.attestation.snp.products import MILAN_GENOA_TCB, TURIN, TURIN_TCB

AT = datetime(2025, 10, 1, tzinfo=UTC)  # Oak's verification time; the VCEK is valid 2025-07-17 to 2032-07-17

REPORT = (SNP / "snp_report_turin.bin").read_bytes()
# Asserted by routex-client-lua's "Verify Turin" (the same report, parsed by virtee/sev) and Oak's KDS URL
MEASUREMENT = "f924dd18f168df60fbea937f0b086284d51b1b376de872bac43694f61134d57967c318018de7335503023dbb50dee624"
REPORT_DATA = "e0fd0bdb6aa4030a6ddea9073e1fcec5be6c782a2c8075a0825dfb3d9a81b924" + "00" * 32
REPORT_ID = "a5e6fb0b3a3da122dfe52f515cddba1d64ee123e3402546384f92ed7724c17b3"
HW_ID = "3b42092f69c656d3"
TCB = TcbVersion.of(TURIN_TCB, fmc=0, bootloader=1, tee=0, snp=2, microcode=71)


@cache
def vcek() -> x509.Certificate:
    return load_vcek((SNP / "snp_vcek_turin.der").read_bytes())


@cache
def ask_ark(product: str = "turin") -> tuple[x509.Certificate, x509.Certificate]:
    return load_ask_ark((SNP / f"amd_ask_ark_{product}.pem").read_bytes())


def verify(report: bytes = REPORT, *, product: str = "turin", **kwargs) -> SnpVerification:
    ask, ark = kwargs.pop("ask_ark", None) or ask_ark(product)
    kwargs.setdefault("at", AT)
    return verify_report(report, vcek=kwargs.pop("vcek", None) or vcek(), ask=ask, ark=ark, **kwargs)


def fields(result: SnpVerification) -> set[str]:
    return {m.field for m in result.mismatches}


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def test_the_values_here_are_sources_mds():
    sources = (VECTORS / "SOURCES.md").read_text()
    for value in (MEASUREMENT, REPORT_DATA[:64], REPORT_ID, HW_ID, "0x4700000002000100", "fmc 0, bl 1"):
        assert value in sources, value
    for name in ("snp_report_turin.bin", "snp_vcek_turin.der", "amd_ask_ark_turin.pem", "snp_vcek_turin_virtee.der"):
        assert hashlib.sha256((SNP / name).read_bytes()).hexdigest() in sources, name


# -- the real report: parsed values --------------------------------------------------------------------------

def test_values_are_extracted_exactly():
    report = SnpReport.parse(REPORT)
    assert (report.version, report.guest_svn, report.policy, report.vmpl, report.signature_algo) == \
        (5, 0, 0x30000, 0, 1)
    assert (report.platform_info, report.signer_info) == (0x67, 0)
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x1A, 0x02, 0x01)
    assert report.product == TURIN
    assert (report.measurement.hex(), report.report_data.hex()) == (MEASUREMENT, REPORT_DATA)
    assert (report.report_id.hex(), report.report_id_ma) == (REPORT_ID, b"\xff" * 32)
    assert report.chip_id == bytes.fromhex(HW_ID) + bytes(56)
    assert (report.current_major, report.current_minor, report.current_build) == (1, 55, 61)
    assert (report.committed_major, report.committed_minor, report.committed_build) == (1, 55, 61)
    assert report.reserved4[:16] == bytes(16)  # LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (version 5): zero


def test_the_tcb_is_read_in_turins_layout():
    report = SnpReport.parse(REPORT)
    for tcb in (report.current_tcb, report.reported_tcb, report.committed_tcb, report.launch_tcb):
        assert tcb == TCB
        assert tcb.raw == 0x4700000002000100
        assert tcb.components() == {"fmc": 0, "bootloader": 1, "tee": 0, "snp": 2, "microcode": 71}
    assert str(report.reported_tcb) == "0x4700000002000100 (fmc 0 bl 1 tee 0 snp 2 ucode 71)"
    assert (report.reported_tcb.fmc, report.reported_tcb.bootloader, report.reported_tcb.snp) == (0, 1, 2)
    assert TcbVersion.of(bootloader=1, tee=0, snp=2, microcode=71).fmc is None  # Milan and Genoa have none
    # the same bytes in Milan's layout would say bootloader 0, TEE 1, SNP 0
    assert report.reported_tcb.with_layout(MILAN_GENOA_TCB).components() == \
        {"bootloader": 0, "tee": 1, "snp": 0, "microcode": 71}


def test_a_turin_tcb_names_every_component():
    with pytest.raises(TypeError, match="a Turin TCB_VERSION has fmc, bootloader, tee, snp, microcode"):
        TcbVersion.of(TURIN_TCB, bootloader=1, tee=0, snp=2, microcode=71)
    with pytest.raises(ValueError, match="fmc SVN 256 does not fit a byte"):
        TcbVersion.of(TURIN_TCB, fmc=256, bootloader=1, tee=0, snp=2, microcode=71)


def test_encoding_gives_back_the_report():
    assert SnpReport.parse(REPORT).to_bytes() == REPORT


def test_vcek_extensions():
    extensions = vcek_extensions(vcek())
    assert extensions.product_name == "Turin" and extensions.product == TURIN
    assert extensions.tcb == TCB
    assert extensions.hw_id.hex() == HW_ID  # 8 bytes: what KDS's URL names the chip by


# -- the real report: verification ---------------------------------------------------------------------------

def test_real_report_verifies():
    result = verify()
    assert result.ok  # the default policy too: no DEBUG, no migration agent
    assert [check.name for check in result.checks] == \
        ["report signature", "VCEK certificate chain", "VCEK binding", "guest policy"]
    assert result.product == TURIN
    assert result.measurement.hex() == MEASUREMENT
    assert result.chip_id[:8] == vcek_extensions(vcek()).hw_id


def test_the_turin_ark_is_the_one_shipped():
    _, ark = ask_ark()
    assert fingerprint(ark) == ARK_TURIN.sha256


@pytest.mark.parametrize("product", ["milan", "genoa"])
def test_turin_vcek_under_another_products_chain(product: str):
    (issuer,) = verify(product=product).mismatches
    assert issuer.field == "vcek.issuer"
    assert "CN=SEV-Turin" in issuer.actual


def test_turin_ask_under_the_milan_ark():
    turin_ask, _ = ask_ark()
    _, milan_ark = ask_ark("milan")
    (issuer,) = verify(ask_ark=(turin_ask, milan_ark)).mismatches
    assert issuer.field == "ask.issuer" and "CN=ARK-Turin" in issuer.actual


def test_the_milan_vcek_for_the_turin_report():
    milan_vcek = load_vcek((SNP / "snp_vcek_milan.der").read_bytes())
    result = verify(vcek=milan_vcek, ask_ark=ask_ark("milan"))
    mismatches = {m.field: m for m in result.mismatches}
    assert {"signature", "product", "chip_id"} <= set(mismatches)
    assert mismatches["product"].expected == "'Milan-B0' (the VCEK's productName)"
    assert mismatches["product"].actual == "Turin (CPUID family 0x1a model 0x02)"


# -- one bit flipped where Turin differs ---------------------------------------------------------------------

@pytest.mark.parametrize(("offset", "expected"), [
    pytest.param(0x180, {"signature", "reported_tcb.fmc"}, id="reported-tcb-fmc"),
    pytest.param(0x181, {"signature", "reported_tcb.bootloader"}, id="reported-tcb-bootloader"),
    pytest.param(0x182, {"signature", "reported_tcb.tee"}, id="reported-tcb-tee"),
    pytest.param(0x183, {"signature", "reported_tcb.snp"}, id="reported-tcb-snp"),
    pytest.param(0x186, {"signature"}, id="reported-tcb-byte-6"),  # Milan's SNP SVN, reserved on Turin
    pytest.param(0x187, {"signature", "reported_tcb.microcode"}, id="reported-tcb-microcode"),
    pytest.param(0x1A0, {"signature", "chip_id"}, id="chip-id"),
    pytest.param(0x1A8, {"signature", "chip_id"}, id="chip-id-after-the-8-bytes"),
    pytest.param(0x18A, {"signature"}, id="cpuid-step"),
    pytest.param(0x1F8, {"signature"}, id="launch-mit-vector"),
])
def test_one_bit_flipped(offset: int, expected: set[str]):
    result = verify(flipped(REPORT, offset))
    assert fields(result) == expected
    assert not result.signatures_valid


def test_a_report_that_says_milan_under_the_turin_vcek():
    report = bytearray(REPORT)
    report[0x188] = 0x19  # family 0x19 model 0x02: Milan, so its TCB reads in Milan's layout
    result = verify(bytes(report))
    assert fields(result) == {"signature", "product"}  # REPORTED_TCB is compared in the VCEK's layout
    assert result.report.reported_tcb.layout == MILAN_GENOA_TCB


# -- policy --------------------------------------------------------------------------------------------------

def test_minimum_tcb_in_turins_layout():
    policy = SnpPolicy(minimum_tcb=TcbVersion.of(TURIN_TCB, fmc=1, bootloader=1, tee=0, snp=3, microcode=71))
    result = verify(policy=policy)
    assert fields(result) == {"reported_tcb.fmc", "reported_tcb.snp"}
    assert verify(policy=SnpPolicy(minimum_tcb=TCB)).ok


def test_minimum_tcb_in_milans_layout_compares_by_name():
    policy = SnpPolicy(minimum_tcb=TcbVersion.of(bootloader=1, tee=0, snp=2, microcode=72))
    assert fields(verify(policy=policy)) == {"reported_tcb.microcode"}


def test_a_turin_minimum_fails_a_milan_report():
    policy = replace(PERMISSIVE, minimum_tcb=TcbVersion.of(TURIN_TCB, fmc=0, bootloader=0, tee=0, snp=0, microcode=0))
    (fmc,) = verify_milan(policy=policy).mismatches
    assert (fmc.field, fmc.actual) == ("reported_tcb.fmc", "none (Milan/Genoa has no fmc SVN)")


# -- a second real Turin VCEK (virtee/sev's): another chip, another TCB --------------------------------------

def test_virtees_turin_vcek():
    other = load_vcek((SNP / "snp_vcek_turin_virtee.der").read_bytes())
    extensions = vcek_extensions(other)
    assert (extensions.product_name, extensions.hw_id.hex()) == ("Turin", "1e550a8ee5cf9f4d")
    assert extensions.tcb == TcbVersion.of(TURIN_TCB, fmc=0, bootloader=0, tee=0, snp=0, microcode=9)
    ask, ark = ask_ark()
    assert verify_chain([Named("vcek", other), Named("ask", ask)], Named("ark", ark), AT, ()) == []
    assert fields(verify(vcek=other)) == {"signature", "chip_id", "reported_tcb.bootloader", "reported_tcb.snp",
                                          "reported_tcb.microcode"}


# -- a version 2 report from Turin: the product from the VCEK (test PKI) -------------------------------------

class FakeTurin(FakeAmd):
    """The test PKI, its VCEK carrying the real Turin VCEK's AMD extensions, re-signing the real Turin report."""

    def __init__(self) -> None:
        super().__init__()
        amd = [e for e in vcek().extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704.")]
        self.vcek = self._cert("SEV-VCEK", self.vcek_key, (self.ask, self.ask_key), ca=False, extra=amd)

    def turin_report(self, **changes) -> bytes:
        return self.report(REPORT, **changes)


@cache
def fake_turin() -> FakeTurin:
    return FakeTurin()


def test_a_version_2_report_is_read_as_its_vcek_says():
    amd = fake_turin()
    v2 = amd.turin_report(version=2, cpuid_fam_id=0, cpuid_mod_id=0, cpuid_step=0)
    assert SnpReport.parse(v2).reported_tcb.layout == MILAN_GENOA_TCB  # no CPU named: not known before the key
    result = amd.verify(v2, policy=SnpPolicy(), at=AT)
    assert result.ok
    assert result.product == TURIN and result.report.reported_tcb == TCB


def test_a_version_2_report_of_another_tcb():
    amd = fake_turin()
    other = TcbVersion.of(TURIN_TCB, fmc=1, bootloader=1, tee=0, snp=2, microcode=71)
    v2 = amd.turin_report(version=2, cpuid_fam_id=0, cpuid_mod_id=0, cpuid_step=0, reported_tcb=other)
    (fmc,) = amd.verify(v2, policy=SnpPolicy(), at=AT).mismatches
    assert (fmc.field, fmc.expected, fmc.actual) == ("reported_tcb.fmc", "0 (the VCEK's SPL)", "1")


def test_a_64_byte_chip_id_is_not_turins():
    amd = fake_turin()
    report = amd.turin_report(chip_id=bytes.fromhex(HW_ID) + b"\x01" + bytes(55))
    (chip,) = amd.verify(report, policy=SnpPolicy(), at=AT).mismatches
    assert chip.field == "chip_id"
    assert chip.expected == f"{HW_ID}{'00' * 56} (the VCEK's hwID, 56 zero bytes after it)"


# -- ikectl trust check --------------------------------------------------------------------------------------

def test_trust_check_prints_turins_tcb(tmp_path: Path, capsys):
    certs = ("snp_vcek_turin.der", "amd_ask_ark_turin.pem")
    assert snp_trust_check(tmp_path, "snp_report_turin.bin", ask_ark()[1], certs, "--at", "2025-10-01T00:00:00Z",
                           "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["fields"]["REPORTED_TCB"] == {"raw": "0x4700000002000100", "fmc": 0, "bootloader": 1, "tee": 0,
                                                  "snp": 2, "microcode": 71}
    assert (document["fields"]["CPUID_FAM_ID"], document["fields"]["CHIP_ID"]) == (0x1A, HW_ID + "00" * 56)
    assert (document["authentic"], document["accepted"], document["result"]) == (True, True, "ok")
    assert {check["name"]: check["passed"] for check in document["checks"]} == {
        "report signature": True, "VCEK certificate chain": True, "VCEK binding": True, "guest policy": True}
