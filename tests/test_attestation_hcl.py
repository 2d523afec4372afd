"""Azure's HCL report (ikecommon.attestation.snp.hcl): the real reports of tests/vectors/attestation/sev-snp/azure
parsed to the values their origins assert (SOURCES.md), the runtime data binding, and every way a report can be
malformed (EvidenceFormatError naming the field) or of a kind not handled (UnsupportedEvidence)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from attestation_vectors import AZURE, VECTORS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ikecommon.attestation.errors import EvidenceFormatError, UnsupportedEvidence
from ikecommon.attestation.snp import verify_report
from ikecommon.attestation.snp.hcl import (
    HASH_TYPE_OFFSET,
    HW_REPORT_OFFSET,
    REPORT_TYPE_OFFSET,
    REQUEST_DATA_OFFSET,
    RUNTIME_DATA_OFFSET,
    HclReport,
    RuntimeData,
    binding_mismatches,
    expected_report_data,
)

TRUSTEE = (AZURE / "trustee_hcl_report.bin").read_bytes()
TOOLING = (AZURE / "az_cvm_vtpm_hcl_report_snp.bin").read_bytes()
TDX_HCL = (AZURE / "az_cvm_vtpm_hcl_report_tdx.bin").read_bytes()
VCEK, ASK, ARK = x509.load_pem_x509_certificates((AZURE / "trustee_vcek.pem").read_bytes())
TPM_QUOTE = json.loads((AZURE / "trustee_tpm_quote.json").read_text())
SOURCES = (VECTORS / "SOURCES.md").read_text()
AT = datetime(2024, 2, 16, tzinfo=UTC)  # the day trustee added the report; its VCEK is valid 2023-05-02 to 2030-05-02

# What SOURCES.md records for trustee's report (checked below to be there verbatim).
TRUSTEE_RUNTIME_DATA_SHA256 = "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac"
TRUSTEE_MEASUREMENT = ("9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17"
                       "c315")
TRUSTEE_AK_SHA256 = "d47d5d33abcef6082883a1b3c54b80bc6be7606c6f822eae23822b42edbc8f5f"
TRUSTEE_VM_ID = "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
TOOLING_RUNTIME_DATA_SHA256 = "1d0a466a9eed975e88f889f7aed4abc1c97e87c4f43e5e3478c9a4a5853cbd7d"


def with_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(4, "little") + data[offset + 4:]


def test_the_values_here_are_sources_mds():
    for value in (TRUSTEE_RUNTIME_DATA_SHA256, TRUSTEE_MEASUREMENT, TRUSTEE_AK_SHA256, TRUSTEE_VM_ID,
                  TOOLING_RUNTIME_DATA_SHA256, "report_size 2346", "data_size 1130", "variable_data_size 1110",
                  "254 zero bytes", "report_size 1819", "229 zero bytes"):
        assert value in SOURCES, value


# --- the real reports -----------------------------------------------------------------------------------------------

def test_trustees_report_parses_to_what_its_origin_says():
    report = HclReport.parse(TRUSTEE)
    assert (report.header.version, report.header.report_size, report.header.request_type, report.header.status) \
        == (1, 2346, 2, 0)
    q = report.request_data
    assert (q.data_size, q.version, q.report_type, q.hash_type, q.variable_data_size) == (1130, 1, 2, 1, 1110)
    assert report.padding == bytes(254)
    runtime = report.runtime_data
    assert [(k.kid, k.kty, k.key_ops, k.bits) for k in runtime.keys] == [
        ("HCLAkPub", "RSA", ("sign",), 2048), ("HCLEkPub", "RSA", ("encrypt",), 2048)]
    assert runtime.attestation_key is runtime.keys[0]
    assert runtime.attestation_key.sha256.hex() == TRUSTEE_AK_SHA256  # type: ignore[union-attr]
    assert runtime.vm_configuration == (("console-enabled", True), ("secure-boot", True), ("tpm-enabled", True),
                                        ("vmUniqueId", TRUSTEE_VM_ID))
    assert runtime.user_data == bytes(64)
    assert hashlib.sha256(runtime.raw).hexdigest() == TRUSTEE_RUNTIME_DATA_SHA256
    assert report.to_bytes() == TRUSTEE


def test_trustees_report_binds_its_runtime_data():  # trustee: test_verify_report_data
    report = HclReport.parse(TRUSTEE)
    assert report.binding_mismatches() == []
    assert report.snp_report().report_data == bytes.fromhex(TRUSTEE_RUNTIME_DATA_SHA256) + bytes(32)


def test_the_attestation_key_is_the_one_that_signed_trustees_tpm_quote():  # trustee: test_verify_signature
    spki = HclReport.parse(TRUSTEE).runtime_data.attestation_key.spki  # type: ignore[union-attr]
    key = serialization.load_der_public_key(spki)  # type: ignore[arg-type]
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(bytes.fromhex(TPM_QUOTE["signature"]), bytes.fromhex(TPM_QUOTE["message"]), padding.PKCS1v15(),
               hashes.SHA256())


def test_the_inner_report_verifies_with_trustees_vcek():  # trustee: test_verify_snp_report
    report = HclReport.parse(TRUSTEE).snp_report()
    assert (report.version, report.vmpl, report.measurement.hex()) == (2, 0, TRUSTEE_MEASUREMENT)
    verification = verify_report(report, vcek=VCEK, ask=ASK, ark=ARK, at=AT)
    assert verification.ok, verification.mismatches


def test_a_changed_reported_tcb_fails_the_vcek_binding():  # trustee: test_verify_snp_report_failure, byte 0x1a6
    data = bytearray(TRUSTEE)
    data[0x1A6] = 0  # REPORTED_TCB's SNP SVN
    verification = verify_report(HclReport.parse(bytes(data)).snp_report(), vcek=VCEK, ask=ASK, ark=ARK, at=AT)
    assert not verification.check("VCEK binding").passed
    assert not verification.check("report signature").passed


def test_the_azure_cvm_tooling_report_parses_and_binds():  # az-cvm-vtpm: parse_hcl_report, test_report_data_hash
    report = HclReport.parse(TOOLING)
    assert (report.header.version, report.header.report_size, report.request_data.variable_data_size) == (1, 1819, 583)
    assert report.padding == bytes(229)
    assert [k.kid for k in report.runtime_data.keys] == ["HCLAkPub"]
    assert report.runtime_data.user_data is None  # written before Azure added "user-data"
    assert dict(report.runtime_data.vm_configuration)["current-time"] == 1678652405
    assert hashlib.sha256(report.runtime_data.raw).hexdigest() == TOOLING_RUNTIME_DATA_SHA256
    assert report.binding_mismatches() == []
    assert report.to_bytes() == TOOLING


# --- the binding --------------------------------------------------------------------------------------------------

def test_one_bit_flipped_in_the_runtime_data_is_a_report_data_mismatch():
    at = TRUSTEE.index(b'"user-data":"') + len(b'"user-data":"')
    data = bytearray(TRUSTEE)
    data[at] ^= 1  # "0" -> "1": still valid JSON, another user data
    report = HclReport.parse(bytes(data))
    assert report.runtime_data.user_data == bytes([0x10]) + bytes(63)
    [mismatch] = report.binding_mismatches()
    assert mismatch.field == "report_data" and mismatch.actual == TRUSTEE_RUNTIME_DATA_SHA256 + "00" * 32
    assert mismatch.expected.startswith(hashlib.sha256(report.runtime_data.raw).hexdigest() + "00" * 32 + " (SHA-256")


def test_trustees_changed_runtime_data_byte_is_a_mismatch():  # trustee: test_verify_report_data_failure, 0x06e0
    data = bytearray(TRUSTEE)
    data[0x6E0] += 1
    assert [m.field for m in HclReport.parse(bytes(data)).binding_mismatches()] == ["report_data"]


def test_the_second_half_of_report_data_must_be_zero():
    runtime = HclReport.parse(TRUSTEE).runtime_data.raw
    assert expected_report_data(runtime)[32:] == bytes(32)
    assert binding_mismatches(hashlib.sha256(runtime).digest() + b"\x01" + bytes(31), runtime)
    assert binding_mismatches(hashlib.sha512(runtime).digest(), runtime)


# --- malformed: EvidenceFormatError naming the field and its offset ----------------------------------------------

FIELDS = [(0, "header.signature"), (4, "header.version"), (8, "header.report_size"), (12, "header.request_type"),
          (16, "header.status"), (20, "header.reserved"), (HW_REPORT_OFFSET, "hw_report"),
          (REQUEST_DATA_OFFSET, "request_data.data_size"), (REQUEST_DATA_OFFSET + 4, "request_data.version"),
          (REPORT_TYPE_OFFSET, "request_data.report_type"), (HASH_TYPE_OFFSET, "request_data.hash_type"),
          (REQUEST_DATA_OFFSET + 16, "request_data.variable_data_size"), (RUNTIME_DATA_OFFSET, "runtime_data")]


@pytest.mark.parametrize(("offset", "field"), FIELDS, ids=[f for _, f in FIELDS])
@pytest.mark.parametrize("into", [0, 1], ids=["at-the-start", "one-byte-in"])
def test_truncated_at_each_field_names_it(offset, field, into):
    with pytest.raises(EvidenceFormatError) as caught:
        HclReport.parse(TRUSTEE[:offset + into])
    assert (caught.value.field, caught.value.offset) == (f"hcl_report.{field}", offset)


def test_truncated_by_one_byte_of_runtime_data():
    with pytest.raises(EvidenceFormatError, match=r"hcl_report.runtime_data at offset 1236: needs 1110 bytes, 1109"):
        HclReport.parse(TRUSTEE[:2345])


@pytest.mark.parametrize(("offset", "value", "field", "detail"), [
    (8, 2345, "header.report_size", "2345, but the header, the hardware report, the request data and the runtime "
                                    "data are 2346 bytes"),
    (REQUEST_DATA_OFFSET, 1131, "request_data.data_size", "1131, but the request data and 1110 bytes of runtime "
                                                          "data are 1130"),
    (REQUEST_DATA_OFFSET + 16, 0x4001, "request_data.variable_data_size", "16385 bytes, more than the 16384"),
    (HASH_TYPE_OFFSET, 0, "request_data.hash_type", "0 is no hash type (1 to 3)"),
])
def test_inconsistent_sizes_and_values_name_the_field(offset, value, field, detail):
    with pytest.raises(EvidenceFormatError) as caught:
        HclReport.parse(with_u32(TRUSTEE, offset, value))
    assert caught.value.field == f"hcl_report.{field}" and caught.value.detail.startswith(detail)


def test_a_wrong_signature():
    with pytest.raises(EvidenceFormatError, match=r'hcl_report.header.signature at offset 0: expected "HCLA"'):
        HclReport.parse(b"HCLB" + TRUSTEE[4:])


def test_over_the_size_limit():
    with pytest.raises(EvidenceFormatError, match="65537 bytes, more than the 65536 allowed"):
        HclReport.parse(TRUSTEE + bytes(65537 - len(TRUSTEE)))


def _runtime(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


GOOD = json.loads(HclReport.parse(TRUSTEE).runtime_data.raw)
AK = GOOD["keys"][0]


@pytest.mark.parametrize(("raw", "field", "detail"), [
    (b"\xff{}", "runtime_data", "not UTF-8"),
    (b'{"keys":', "runtime_data", "not JSON: Expecting value"),
    (b"[]", "runtime_data", "expected a JSON object"),
    (b'{"keys":[],"keys":[]}', "runtime_data.keys", "duplicate member"),
    (b'{"keys":' + b"1" * 5000 + b"}", "runtime_data", "not JSON: "),
    (b'{"keys":NaN}', "runtime_data", "NaN is not JSON"),
    (b"[" * 100000 + b"]" * 100000, "runtime_data", "nested too deeply"),
    (_runtime({**GOOD, "keys": []}), "runtime_data.keys", "expected a list of 1 to 16 JWKs"),
    (_runtime({**GOOD, "keys": [AK] * 17}), "runtime_data.keys", "expected a list of 1 to 16 JWKs"),
    (_runtime({"keys": [AK]}), "runtime_data.vm-configuration", "expected a JSON object"),
    (_runtime({**GOOD, "vm-configuration": {"a": [1]}}), "runtime_data.vm-configuration.a", "expected a JSON scalar"),
    (_runtime({**GOOD, "user-data": "0g"}), "runtime_data.user-data", "expected a string of hex digit pairs"),
    (_runtime({**GOOD, "user-data": "000"}), "runtime_data.user-data", "expected a string of hex digit pairs"),
    (_runtime({**GOOD, "keys": ["HCLAkPub"]}), "runtime_data.keys[0]", "expected a JWK (a JSON object)"),
    (_runtime({**GOOD, "keys": [{**AK, "kid": 1}]}), "runtime_data.keys[0]", 'expected the strings "kid" and "kty"'),
    (_runtime({**GOOD, "keys": [{**AK, "key_ops": "sign"}]}), "runtime_data.keys[0].key_ops", "expected a list"),
    (_runtime({**GOOD, "keys": [{**AK, "n": AK["n"] + "="}]}), "runtime_data.keys[0].n", "expected base64url"),
    (_runtime({**GOOD, "keys": [{**AK, "e": ""}]}), "runtime_data.keys[0].e", "expected base64url"),
    (_runtime({**GOOD, "keys": [{**AK, "e": "Ag"}]}), "runtime_data.keys[0].n", "not an RSA public key"),
], ids=["utf8", "json", "array", "duplicate", "huge-number", "nan", "deep", "no-keys", "17-keys", "no-config",
        "config-list", "user-data-not-hex", "user-data-odd", "key-not-object", "kid-not-string", "key-ops-string",
        "n-padded", "e-empty", "e-even"])
def test_malformed_runtime_data_names_the_field(raw, field, detail):
    with pytest.raises(EvidenceFormatError) as caught:
        RuntimeData.parse(raw)
    assert caught.value.field == f"hcl_report.{field}" and caught.value.detail.startswith(detail), caught.value
    assert caught.value.offset is not None and caught.value.offset >= RUNTIME_DATA_OFFSET


def test_a_key_of_another_type_is_kept_unread():
    runtime = RuntimeData.parse(_runtime({**GOOD, "keys": [{"kid": "x", "kty": "EC", "crv": "P-256"}]}))
    assert [(k.kid, k.kty, k.spki, k.sha256, k.bits) for k in runtime.keys] == [("x", "EC", None, None, None)]
    assert runtime.attestation_key is None


# --- not handled: UnsupportedEvidence -----------------------------------------------------------------------------

def test_the_real_tdx_hcl_report_is_unsupported():
    with pytest.raises(UnsupportedEvidence) as caught:
        HclReport.parse(TDX_HCL)
    assert str(caught.value) == "HCL report type 4 (TDX) (supported: 2 (SEV-SNP))"
    assert (caught.value.field, caught.value.offset) == ("hcl_report.request_data.report_type", REPORT_TYPE_OFFSET)


@pytest.mark.parametrize(("offset", "value", "message"), [
    (REPORT_TYPE_OFFSET, 9, "HCL report type 9 (unknown) (supported: 2 (SEV-SNP))"),
    (REPORT_TYPE_OFFSET, 1, "HCL report type 1 (VBS) (supported: 2 (SEV-SNP))"),
    (HASH_TYPE_OFFSET, 2, "HCL report data hash type 2 (SHA-384) (supported: 1 (SHA-256))"),
    (4, 3, "HCL report version 3 (supported: 1, 2)"),
    (REQUEST_DATA_OFFSET + 4, 2, "HCL request data version 2 (supported: 1)"),
], ids=["type-9", "vbs", "sha-384", "header-v3", "request-data-v2"])
def test_what_is_not_handled_is_unsupported(offset, value, message):
    with pytest.raises(UnsupportedEvidence) as caught:
        HclReport.parse(with_u32(TRUSTEE, offset, value))
    assert str(caught.value) == message and caught.value.offset == offset


def test_header_version_2_reads_as_version_1():  # as the Genoa report trustee ships (evidence-genoa.json) has it
    report = HclReport.parse(with_u32(TRUSTEE, 4, 2))
    assert report.header.version == 2 and report.binding_mismatches() == []


def test_a_hardware_report_of_another_size_cannot_be_built():
    report = HclReport.parse(TRUSTEE)
    with pytest.raises(EvidenceFormatError, match=r"hcl_report\.hw_report: must be 1184 bytes, got 1183"):
        HclReport(report.header, report.hw_report[:-1], report.request_data, report.runtime_data)
