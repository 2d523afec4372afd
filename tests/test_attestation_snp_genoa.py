"""The SEV-SNP verifier on a real Genoa (AMD EPYC 9004) report: an Azure confidential VM's report (version 3), extracted
from the HCL report of confidential-containers/trustee's `evidence-genoa.json`, with the VCEK trustee ships beside it,
and AMD's Genoa ASK/ARK from go-sev-guest (tests/vectors/attestation; provenance, and what trustee asserts for them, in
its SOURCES.md).

Genoa reads TCB_VERSION as Milan does (bootloader 0, TEE 1, SNP 6, microcode 7) and its VCEK's hwID is the whole
64-byte CHIP_ID; a version 3 report names its CPU (family 0x19, model 0x11), so the product is known before the key.
The cases every kind of evidence gets (bit flips, truncations, chains, times, CRLs) are in the corpus
(tests/test_attestation_corpus.py, kind snp-genoa).
"""

import hashlib
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from attestation_mutations import SNP_GENOA, amd_chain, fields, snp_trust_check
from attestation_vectors import SNP, VECTORS
from cryptography import x509

from ikecommon.attestation.roots import ARK_GENOA, amd_arks, fingerprint
from ikecommon.attestation.snp import SnpReport, SnpVerification, TcbVersion, load_vcek, vcek_extensions
from ikecommon.attestation.snp.products import GENOA, MILAN_GENOA_TCB

AT = SNP_GENOA.at  # trustee added the evidence on 2026-02-20; the VCEK is valid 2025-01-24 to 2032-01-24

REPORT = SNP_GENOA.evidence
# Read here and recorded in SOURCES.md; trustee asserts the report verifies with this VCEK under the Genoa chain
MEASUREMENT = "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae"
RUNTIME_DATA_SHA256 = "b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f"
REPORT_ID = "8c678f0cba548b25bc8ed1f723231570447886c74b1fa1f7eb23699755cb4801"
CHIP_ID = ("0506ffba875e939c2729d20c74eb72b4c5ba6bf7ea1faaa640141f12c6d64782"
           "fb487f68ce69dcd021e914cc0d9244327bc121f0242d6470903ad1d4aaea4ad1")
TCB = TcbVersion.of(bootloader=10, tee=0, snp=23, microcode=84)


@cache
def shipped_genoa_ark() -> x509.Certificate:
    return next(ark for ark in amd_arks() if fingerprint(ark) == ARK_GENOA.sha256)


def test_the_values_here_are_sources_mds():
    sources = (VECTORS / "SOURCES.md").read_text()
    for value in (MEASUREMENT, RUNTIME_DATA_SHA256, REPORT_ID, CHIP_ID[:16], CHIP_ID[-16:], "0x541700000000000a",
                  "bl 10, tee 0, snp 23, ucode 84", "policy 0x3001f", "model 0x11 stepping 0x01 (Genoa)"):
        assert value in sources, value
    for name in ("snp_report_genoa.bin", "snp_vcek_genoa.pem"):
        assert hashlib.sha256((SNP / name).read_bytes()).hexdigest() in sources, name


def test_values_are_extracted_exactly():
    report = SnpReport.parse(REPORT)
    assert (report.version, report.guest_svn, report.policy, report.vmpl, report.signature_algo) == \
        (3, 0x1000B, 0x3001F, 0, 1)
    assert (report.platform_info, report.signer_info, report.signing_key) == (0x24, 0, 0)
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x19, 0x11, 0x01)
    assert report.product == GENOA
    assert report.measurement.hex() == MEASUREMENT
    assert report.report_data == bytes.fromhex(RUNTIME_DATA_SHA256) + bytes(32)  # the HCL runtime data's SHA-256
    assert (report.report_id.hex(), report.report_id_ma) == (REPORT_ID, b"\xff" * 32)
    assert report.chip_id.hex() == CHIP_ID
    assert (report.current_major, report.current_minor, report.current_build) == (1, 55, 40)
    assert (report.committed_major, report.committed_minor, report.committed_build) == (1, 55, 40)
    assert report.to_bytes() == REPORT


def test_every_tcb_is_read_in_milans_layout():
    report = SnpReport.parse(REPORT)
    for tcb in (report.current_tcb, report.reported_tcb, report.committed_tcb, report.launch_tcb):
        assert (tcb, tcb.raw, tcb.layout) == (TCB, 0x541700000000000A, MILAN_GENOA_TCB)
    assert str(report.reported_tcb) == "0x541700000000000a (bl 10 tee 0 snp 23 ucode 84)"


def test_the_vceks_extensions_name_the_chip_and_its_tcb():
    vcek = SNP_GENOA.key
    extensions = vcek_extensions(vcek)
    assert (extensions.product_name, extensions.product, extensions.tcb) == ("Genoa", GENOA, TCB)
    assert extensions.hw_id.hex() == CHIP_ID  # 64 bytes, as Milan's
    assert (vcek.not_valid_before_utc, vcek.not_valid_after_utc) == (
        datetime(2025, 1, 24, 2, 21, 48, tzinfo=UTC), datetime(2032, 1, 24, 2, 21, 48, tzinfo=UTC))


def test_the_genoa_ark_of_the_vectors_is_the_one_shipped():
    assert fingerprint(SNP_GENOA.chain[1]) == ARK_GENOA.sha256 == fingerprint(shipped_genoa_ark())


def test_the_real_report_verifies_under_the_shipped_ark_genoa():
    ask, _ = SNP_GENOA.chain
    result: SnpVerification = SNP_GENOA.verify(chain=(ask, shipped_genoa_ark()))
    assert result.ok  # the default policy: no DEBUG, no migration agent
    assert [check.name for check in result.checks] == \
        ["report signature", "VCEK certificate chain", "VCEK binding", "guest policy"]
    assert (result.product, result.measurement.hex(), result.chip_id.hex()) == (GENOA, MEASUREMENT, CHIP_ID)


@pytest.mark.parametrize("product", ["milan", "turin"])
def test_the_genoa_vcek_under_another_products_chain(product: str):
    (issuer,) = SNP_GENOA.verify(chain=amd_chain(f"amd_ask_ark_{product}.pem")).mismatches
    assert issuer.field == "vcek.issuer" and "CN=SEV-Genoa" in issuer.actual


def test_the_milan_vcek_does_not_verify_the_genoa_report():
    milan = load_vcek((SNP / "snp_vcek_milan.der").read_bytes())
    result = SNP_GENOA.verify(key=milan, chain=amd_chain("amd_ask_ark_milan.pem"))
    mismatches = {m.field: m for m in result.mismatches}
    assert {"signature", "product", "chip_id"} <= set(mismatches)
    assert mismatches["product"].actual == "Genoa (CPUID family 0x19 model 0x11)"


def test_a_flipped_snp_svn_is_caught_by_the_binding():
    report = bytearray(REPORT)
    report[0x186] ^= 1  # REPORTED_TCB's SNP SVN (byte 6 in Milan's and Genoa's layout), as trustee's failure test
    assert fields(SNP_GENOA.verify(bytes(report))) == {"signature", "reported_tcb.snp"}


def test_trust_check_with_the_shipped_ark_genoa(tmp_path: Path, capsys):
    certs = ("snp_vcek_genoa.pem", "amd_ask_ark_genoa.pem")
    assert snp_trust_check(tmp_path, "snp_report_genoa.bin", shipped_genoa_ark(), certs, "--json") == 0  # now
    document = json.loads(capsys.readouterr().out)
    assert document["format"] == "sev-snp-report" and document["description"] == "SEV-SNP report v3, 1184 bytes"
    assert document["fields"]["MEASUREMENT"] == MEASUREMENT
    assert document["fields"]["REPORTED_TCB"] == {"raw": "0x541700000000000a", "bootloader": 10, "tee": 0,
                                                  "snp": 23, "microcode": 84}
    assert (document["fields"]["CPUID_FAM_ID"], document["fields"]["CPUID_MOD_ID"]) == (0x19, 0x11)
    assert document["fields"]["KEY_CERTIFICATE"] == "VCEK"
    assert (document["authentic"], document["accepted"], document["result"]) == (True, True, "ok")
