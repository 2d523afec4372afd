"""`ikectl trust check FILE`: the real evidence of tests/vectors/attestation checked offline, its fields printed with
the values SOURCES.md records for it (copied here from SOURCES.md, and checked to be there verbatim), and the exit
codes: 0 authentic (and the spec matches), 1 not authentic or the spec does not match (or, with --strict, a TCB or
policy check fails), 2 input that cannot be used (unreadable, malformed, unsupported, not evidence, a bad spec or
option, nothing to verify it with)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from attestation_vectors import AZURE, SNP, TDX, VECTORS
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from trust_servers import sim_spec

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.envelope import Collateral, Envelope, Evidence, EvidenceKind
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikectl import cli, trustcheck

AT = "2023-07-01T00:00:00Z"  # inside every validity period of the vectors, as go-tdx-guest and go-sev-guest test
QUOTE = TDX / "tdx_quote_v4_spr_e4.dat"
REPORT = SNP / "snp_report_milan.bin"
SOURCES = (VECTORS / "SOURCES.md").read_text()

# Published for the TDX quote (SOURCES.md: go-tdx-guest's TestTdxQuote "deep check" and verify_test.go).
TDX_PUBLISHED = {
    "MRTD": "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
    "RTMR0": "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a",
    "RTMR1": "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61",
    "RTMR2": "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e",
    "REPORTDATA": "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0"
                  "c87a6d766c66f6f29f8acb281f1113",
    "MRSEAM": "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656",
    "TEE_TCB_SVN": "03000400000000000000000000000000",
    "TD_ATTRIBUTES": "0000004000000000",
    "XFAM": "e71a060000000000",
    "QE_VENDOR_ID": "939a7233f79c4ca9940a0db3957f0607",
    "PCK_FMSPC": "50806f000000",
    "PCK_PCEID": "0000",
    "PCK_CPUSVN": "03030202020100020000000000000000",
}
TDX_PUBLISHED_ZERO = ("RTMR3", "MRCONFIGID", "MROWNER", "MROWNERCONFIG")  # "RTMR3 = 0", "... are all zero"
TDX_PUBLISHED_INTS = {"VERSION": 4, "ATT_KEY_TYPE": 2, "TEE_TYPE": 0x81, "QE_SVN": 0, "PCE_SVN": 0,
                      "PCK_PCESVN": 11, "QE_ISVPRODID": 2, "QE_ISVSVN": 4}

# Published for the Milan report (SOURCES.md, "Fields").
SNP_PUBLISHED = {
    "REPORT_DATA": "0102030405" + "00" * 59,  # "0102030405 followed by 59 zero bytes"
    "MEASUREMENT": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
}
SNP_PUBLISHED_INTS = {"VERSION": 2, "POLICY": 0xB0000, "VMPL": 0, "SIGNATURE_ALGO": 1}
REPORTED_TCB = {"raw": "0x4405000000000002", "bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
CHIP_ID_ENDS = ("3ac3fe21", "006b5d")  # "CHIP_ID = 3ac3fe21…006b5d"

JSON_KEYS = {"version", "file", "format", "evidence", "description", "fields", "at", "checks", "authentic",
             "accepted", "tcb_status", "spec", "result", "reason"}
TEXT_LABELS = ("file", "format", "evidence", "fields", "at", "checks", "authentic", "accepted", "tcb_status", "spec",
               "result")


def test_the_published_values_here_are_sources_mds():
    for name, value in {**TDX_PUBLISHED, "SNP MEASUREMENT": SNP_PUBLISHED["MEASUREMENT"]}.items():
        assert value in SOURCES, name
    for words in ("PCESVN 11", "ISVPRODID 2, ISVSVN 4", "version 4, att_key_type 2 (ECDSA-256-P256), tee_type "
                  "0x81, qe_svn 0, pce_svn 0", "RTMR3 = 0", "MRCONFIGID, MROWNER and MROWNERCONFIG are all zero",
                  "REPORT_DATA = 0102030405 followed by 59 zero bytes", "policy 0xb0000, vmpl 0, sig_algo 1",
                  "REPORTED_TCB = 0x4405000000000002 (bl 2, tee 0, snp 5, ucode 68)", "CHIP_ID = 3ac3fe21…006b5d",
                  "1184 bytes, version 2", "matches NO TCB level"):
        assert words in SOURCES, words


# --- fixtures: a config with the vendors' roots, the collateral and certificate directories -----------------------

def _ark(product: str, directory: Path) -> Path:
    """The ARK alone, as [trust] amd_arks takes it (KDS's cert_chain is ASK, then ARK)."""
    ark = x509.load_pem_x509_certificates((SNP / f"amd_ask_ark_{product}.pem").read_bytes())[1]
    path = directory / f"ark-{product}.pem"
    path.write_bytes(ark.public_bytes(serialization.Encoding.PEM))
    return path


def _config(tmp_path: Path, name: str, trust: str) -> Path:
    path = tmp_path / name
    path.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\ntrust_dir = "{tmp_path / "trust"}"\n[trust]\n{trust}')
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    arks = [str(_ark(product, tmp_path)) for product in ("milan", "genoa")]
    return _config(tmp_path, "ikectl.toml", f'intel_root = "{TDX / "intel_sgx_root_ca.pem"}"\n'
                                            f"amd_arks = {json.dumps(arks)}\n")


@pytest.fixture
def collateral(tmp_path: Path) -> Path:
    """Intel's collateral as go-tdx-guest ships it, with the root and the PCK CRL issuer chain beside it (unused)."""
    directory = tmp_path / "collateral"
    directory.mkdir()
    for name in ("tdx_tcbinfo_v3_fmspc_50806f000000.json", "tdx_qe_identity_v2.json", "intel_tcb_signing_chain.pem",
                 "intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der", "intel_pck_crl_issuer_chain.pem",
                 "intel_sgx_root_ca.pem"):
        shutil.copy(TDX / name, directory / name)
    return directory


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    for name in ("snp_vcek_milan.der", "amd_ask_ark_milan.pem"):
        shutil.copy(SNP / name, directory / name)
    return directory


def check(config_file: Path, *args: str | Path) -> int:
    return cli.main(["--config", str(config_file), "trust", "check", *map(str, args)])


def spec_file(tmp_path: Path, attestation_type: str, registers: dict[int, str], name: str = "spec.json") -> Path:
    path = tmp_path / name
    spec = MeasurementSpec((MeasurementEntry(f"{attestation_type}-entry", attestation_type,
                                             tuple((i, bytes.fromhex(v)) for i, v in sorted(registers.items()))),))
    path.write_bytes(spec.encode())
    return path


def text_fields(out: str) -> dict[str, str]:
    """The `fields:` block of the text output: NAME -> the rest of its line."""
    block = out.split("\nfields:\n", 1)[1].split("\nat: ", 1)[0]
    return dict(re.match(r"  (\S+) +(.*)", line).groups() for line in block.splitlines())  # type: ignore[union-attr]


def labels(out: str) -> list[str]:
    return [line.split(":", 1)[0] for line in out.splitlines() if re.match(r"[a-z_]+:", line)]


# --- TDX ----------------------------------------------------------------------------------------------------------

def test_tdx_quote_prints_the_published_values_and_verifies(config_file, collateral, capsys):
    assert check(config_file, QUOTE, "--collateral", collateral, "--at", AT) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert labels(out) == list(TEXT_LABELS)
    fields = text_fields(out)
    for name, value in TDX_PUBLISHED.items():
        assert fields[name] == value, name
    for name in TDX_PUBLISHED_ZERO:
        assert fields[name] == "00" * 48, name
    assert {name: fields[name].split()[0] for name in TDX_PUBLISHED_INTS} == {
        name: hex(value) if name == "TEE_TYPE" else str(value) for name, value in TDX_PUBLISHED_INTS.items()}
    assert "format:      tdx-quote (TDX quote v4, 4974 bytes; 39 bytes after the signature data, not signed)" in out
    # Every signature and chain verifies; the platform is below every TCB level of the shipped TCB info.
    assert re.findall(r"^  (ok  |FAIL)  (.*) \(", out, re.M) == [
        ("ok  ", "quote signature"), ("ok  ", "QE report signature"), ("ok  ", "attestation key binding"),
        ("ok  ", "PCK certificate chain"), ("ok  ", "TCB signing chain"), ("ok  ", "TCB info signature"),
        ("ok  ", "QE identity signature"), ("ok  ", "TCB info"), ("ok  ", "QE identity"),
        ("ok  ", "collateral freshness"), ("FAIL", "TCB level"), ("ok  ", "TD policy")]
    assert "tcb.level: expected at or above one of the 2 TCB levels" in out
    assert "authentic:   yes" in out
    assert "accepted:    no: TCB level failed" in out
    assert "tcb_status:  none: no TCB level of the TCB info applies" in out
    assert out.rstrip().endswith("result:      ok")


def test_tdx_quote_json(config_file, collateral, capsys):
    assert check(config_file, QUOTE, "--collateral", collateral, "--at", AT, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS
    assert (document["version"], document["format"], document["evidence"], document["at"]) == (
        1, "tdx-quote", "tdx", AT)
    fields = document["fields"]
    assert {name: fields[name] for name in TDX_PUBLISHED} == TDX_PUBLISHED
    assert {name: fields[name] for name in TDX_PUBLISHED_INTS} == TDX_PUBLISHED_INTS
    assert all(fields[name] == "00" * 48 for name in TDX_PUBLISHED_ZERO)
    checks = {c["name"]: c for c in document["checks"]}
    assert not checks["TCB level"]["passed"] and checks["TCB level"]["mismatches"][0]["field"] == "tcb.level"
    assert set(checks["quote signature"]) == {"name", "kind", "passed", "mismatches", "notes"}
    assert (document["authentic"], document["accepted"], document["tcb_status"], document["spec"],
            document["result"], document["reason"]) == (True, False, None, None, "ok", "")


def test_the_text_and_the_json_name_the_same_fields(config_file, collateral, certs, capsys):
    for evidence, option, directory in ((QUOTE, "--collateral", collateral), (REPORT, "--certs", certs)):
        check(config_file, evidence, option, directory, "--at", AT)
        text = text_fields(capsys.readouterr().out)
        check(config_file, evidence, option, directory, "--at", AT, "--json")
        assert list(json.loads(capsys.readouterr().out)["fields"]) == list(text)


def test_tdx_spec_that_matches_is_exit_0(config_file, collateral, tmp_path, capsys):
    registers = {0: TDX_PUBLISHED["MRTD"], **{i + 1: TDX_PUBLISHED[f"RTMR{i}"] for i in range(3)}, 4: "00" * 48}
    spec = spec_file(tmp_path, "dcap-tdx", registers)
    assert check(config_file, QUOTE, "--collateral", collateral, "--at", AT, "--spec", spec) == 0
    assert "spec:        entry 'dcap-tdx-entry' matches" in capsys.readouterr().out


def test_tdx_spec_that_does_not_match_is_exit_1(config_file, collateral, tmp_path, capsys):
    spec = spec_file(tmp_path, "dcap-tdx", {0: TDX_PUBLISHED["MRTD"], 4: "01" * 48})
    assert check(config_file, QUOTE, "--collateral", collateral, "--at", AT, "--spec", spec) == 1
    out, err = capsys.readouterr()
    assert "spec:        no entry matches\n  spec[dcap-tdx-entry].measurements.4: expected " + "01" * 48 + \
        f" (RTMR3), got {'00' * 48}" in out
    assert out.rstrip().endswith("result:      failed: no entry of the spec matches")
    assert err == f"ikectl: error: {QUOTE}: no entry of the spec matches\n"


def test_tdx_spec_inline(config_file, collateral, capsys):
    spec = MeasurementSpec((MeasurementEntry("mrtd", "dcap-tdx", ((0, bytes.fromhex(TDX_PUBLISHED["MRTD"])),)),))
    assert check(config_file, QUOTE, "--collateral", collateral, "--at", AT, "--spec", spec.to_inline()) == 0
    assert "entry 'mrtd' matches" in capsys.readouterr().out


def test_a_tdx_quote_whose_signature_fails_is_exit_1(config_file, collateral, tmp_path, capsys):
    data = bytearray(QUOTE.read_bytes())
    data[48 + 136] ^= 1  # a bit of MRTD (body at 48, MRTD at 136 in it)
    forged = tmp_path / "forged.dat"
    forged.write_bytes(bytes(data))
    assert check(config_file, forged, "--collateral", collateral, "--at", AT, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["fields"]["MRTD"] != TDX_PUBLISHED["MRTD"]
    assert document["authentic"] is False and document["result"] == "failed"
    assert document["reason"] == "not authentic (quote signature failed)"


def test_the_tdx_quote_now_is_exit_1_for_its_expired_collateral(config_file, collateral, capsys):
    assert check(config_file, QUOTE, "--collateral", collateral) == 1
    out = capsys.readouterr().out
    assert "tcb_signer.not_after: expected at or after" in out and "got 2025-05-21T10:50:10Z" in out


def test_a_raw_tdx_quote_without_collateral_is_printed_and_exit_2(config_file, capsys):
    assert check(config_file, QUOTE) == 2
    out, err = capsys.readouterr()
    assert text_fields(out)["MRTD"] == TDX_PUBLISHED["MRTD"]
    assert "checks:      none ran: a TDX quote needs Intel's collateral: --collateral DIR" in out
    assert err.startswith(f"ikectl: error: {QUOTE}: not verified: a TDX quote needs Intel's collateral")


def test_collateral_without_tcb_info_is_exit_2(config_file, collateral, capsys):
    (collateral / "tdx_tcbinfo_v3_fmspc_50806f000000.json").unlink()
    assert check(config_file, QUOTE, "--collateral", collateral) == 2
    assert capsys.readouterr() == ("", f"ikectl: error: --collateral {collateral}: no TCB info (a JSON document "
                                       "with \"tcbInfo\")\n")


@pytest.mark.parametrize("option", ["--collateral", "--certs"])
def test_a_directory_where_a_document_should_be_is_named(config_file, collateral, certs, capsys, option):
    directory = collateral if option == "--collateral" else certs
    planted = directory / ("tdx_tcbinfo_v3_fmspc_50806f000000.json" if option == "--collateral" else "vcek.der")
    planted.unlink(missing_ok=True)
    planted.mkdir()
    assert check(config_file, QUOTE if option == "--collateral" else REPORT, option, directory) == 2
    assert capsys.readouterr() == ("", f"ikectl: error: {option} {planted}: not a regular file\n")


# --- SEV-SNP ------------------------------------------------------------------------------------------------------

def test_milan_report_prints_the_published_values_and_verifies(config_file, certs, capsys):
    assert check(config_file, REPORT, "--certs", certs) == 0  # now: the VCEK is valid until 2029
    out, err = capsys.readouterr()
    assert err == ""
    fields = text_fields(out)
    for name, value in SNP_PUBLISHED.items():
        assert fields[name] == value, name
    assert (fields["VERSION"], fields["VMPL"], fields["SIGNATURE_ALGO"]) == ("2", "0", "1")
    assert fields["POLICY"].startswith("0xb0000 ") and "DEBUG" in fields["POLICY"]
    assert fields["REPORTED_TCB"] == "0x4405000000000002 (bl 2 tee 0 snp 5 ucode 68)"
    assert fields["CHIP_ID"].startswith(CHIP_ID_ENDS[0]) and fields["CHIP_ID"].endswith(CHIP_ID_ENDS[1])
    assert "format:      sev-snp-report (SEV-SNP report v2, 1184 bytes)" in out
    assert re.findall(r"^  (ok  |FAIL)  (.*) \(", out, re.M) == [
        ("ok  ", "report signature"), ("ok  ", "VCEK certificate chain"), ("ok  ", "VCEK binding"),
        ("FAIL", "guest policy")]  # launched with DEBUG allowed
    assert "accepted:    no: guest policy failed (`trust add` would refuse it; --strict makes that exit 1)" in out
    assert out.rstrip().endswith("result:      ok")


def test_milan_report_json(config_file, certs, capsys):
    assert check(config_file, REPORT, "--certs", certs, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS
    fields = document["fields"]
    assert {name: fields[name] for name in SNP_PUBLISHED} == SNP_PUBLISHED
    assert {name: fields[name] for name in SNP_PUBLISHED_INTS} == SNP_PUBLISHED_INTS
    assert fields["REPORTED_TCB"] == REPORTED_TCB
    assert fields["CHIP_ID"].startswith(CHIP_ID_ENDS[0]) and fields["CHIP_ID"].endswith(CHIP_ID_ENDS[1])
    assert (document["format"], document["evidence"], document["authentic"], document["accepted"],
            document["tcb_status"]) == ("sev-snp-report", "sev-snp", True, False, None)


def test_snp_spec_matches_or_not(config_file, certs, tmp_path, capsys):
    good = spec_file(tmp_path, "sev-snp", {0: SNP_PUBLISHED["MEASUREMENT"]})
    assert check(config_file, REPORT, "--certs", certs, "--spec", good) == 0
    assert "spec:        entry 'sev-snp-entry' matches" in capsys.readouterr().out
    bad = spec_file(tmp_path, "sev-snp", {0: "ff" * 48}, "bad.json")
    assert check(config_file, REPORT, "--certs", certs, "--spec", bad, "--json") == 1
    spec = json.loads(capsys.readouterr().out)["spec"]
    assert spec == {"matched": None, "mismatches": [{"field": "spec[sev-snp-entry].measurements.0",
                                                     "expected": "ff" * 48 + " (MEASUREMENT)",
                                                     "actual": SNP_PUBLISHED["MEASUREMENT"]}]}


def test_a_tdx_spec_does_not_match_snp_evidence(config_file, certs, tmp_path, capsys):
    spec = spec_file(tmp_path, "dcap-tdx", {0: TDX_PUBLISHED["MRTD"]})
    assert check(config_file, REPORT, "--certs", certs, "--spec", spec) == 1
    assert "spec.attestation_type: expected an entry of type sev-snp" in capsys.readouterr().out


def test_strict_refuses_what_trust_add_would(config_file, certs, tmp_path, capsys):
    good = spec_file(tmp_path, "sev-snp", {0: SNP_PUBLISHED["MEASUREMENT"]})
    assert check(config_file, REPORT, "--certs", certs, "--spec", good, "--strict") == 1
    out, err = capsys.readouterr()
    assert "result:      failed: not accepted with --strict (guest policy failed)" in out
    assert err.endswith("not accepted with --strict (guest policy failed)\n")


def test_the_milan_report_under_the_genoa_root_is_exit_1(tmp_path, certs, capsys):
    genoa_only = _config(tmp_path, "genoa.toml", f'amd_arks = ["{_ark("genoa", tmp_path)}"]\n')
    assert check(genoa_only, REPORT, "--certs", certs, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    chain = next(c for c in document["checks"] if c["name"] == "VCEK certificate chain")
    assert [m["field"] for m in chain["mismatches"]] == ["ask.issuer"]
    assert "ARK-Genoa" in chain["mismatches"][0]["expected"] and "ARK-Milan" in chain["mismatches"][0]["actual"]
    assert document["reason"] == "not authentic (VCEK certificate chain failed)"


def test_certs_without_the_ask_is_exit_2(config_file, certs, capsys):
    (certs / "amd_ask_ark_milan.pem").unlink()
    assert check(config_file, REPORT, "--certs", certs) == 2
    assert "no ASK (the VCEK's issuer, CN=SEV-Milan," in capsys.readouterr().err


def test_without_roots_configured_the_shipped_ones_verify(tmp_path, certs, capsys):
    bare = _config(tmp_path, "bare.toml", "")
    assert check(bare, REPORT, "--certs", certs) == 0
    out, err = capsys.readouterr()
    assert err == "" and "authentic:   yes" in out


def test_with_no_ark_configured_the_fields_print_and_exit_2(tmp_path, certs, capsys):
    none = _config(tmp_path, "none.toml", "amd_arks = []\n")
    assert check(none, REPORT, "--certs", certs) == 2
    out, err = capsys.readouterr()
    assert text_fields(out)["MEASUREMENT"] == SNP_PUBLISHED["MEASUREMENT"]
    assert err == f"ikectl: error: {REPORT}: not verified: SEV-SNP evidence needs AMD's root keys: [trust] amd_arks " \
                  "names none (without the key, the ARKs shipped with ikectl are trusted)\n"


# --- envelopes ----------------------------------------------------------------------------------------------------

def test_a_sim_envelope_verifies_with_the_sim_anchors_only(config_file, tmp_path, capsys):
    envelope = tmp_path / "envelope.json"
    envelope.write_bytes(attest(SoftwareEnclave(), os.urandom(32)).encode())
    spec = tmp_path / "sim.json"
    spec.write_bytes(sim_spec().encode())
    assert check(config_file, envelope, "--anchors", "sim", "--spec", spec) == 0
    out = capsys.readouterr().out
    assert "evidence:    sim (NOT SECURE: anyone can make sim evidence)" in out
    assert "  ok    key and nonce binding (binding)" in out and "entry 'sim-default' matches" in out
    assert check(config_file, envelope, "--spec", spec) == 2
    assert "sim evidence is verified only with --anchors sim" in capsys.readouterr().err


def test_an_envelope_of_the_real_quote_does_not_bind_its_key(config_file, tmp_path, capsys):
    """The real quote's REPORTDATA was not made for this envelope's nonce and key: not authentic. Its own collateral
    travels in the envelope."""
    shipped = Collateral(tdx_tcb_info=(TDX / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes(),
                         tdx_qe_identity=(TDX / "tdx_qe_identity_v2.json").read_bytes(),
                         tdx_tcb_signing_chain=(TDX / "intel_tcb_signing_chain.pem").read_bytes(),
                         crls=((TDX / "intel_pck_platform_crl.der").read_bytes(),
                               (TDX / "intel_sgx_root_ca_crl.der").read_bytes()))
    sim = attest(SoftwareEnclave(), os.urandom(32))
    envelope = tmp_path / "tdx-envelope.json"
    envelope.write_bytes(Envelope(Evidence(EvidenceKind.TDX, QUOTE.read_bytes()), sim.ike_key, sim.nonce,
                                  shipped).encode())
    assert check(config_file, envelope, "--at", AT, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert (document["format"], document["evidence"]) == ("envelope", "tdx")
    assert document["fields"]["MRTD"] == TDX_PUBLISHED["MRTD"]
    assert document["fields"]["NONCE"] == sim.nonce.hex()
    binding = document["checks"][-1]
    assert (binding["name"], binding["passed"], binding["mismatches"][0]["field"]) == (
        "key and nonce binding", False, "report_data")
    assert binding["mismatches"][0]["actual"] == TDX_PUBLISHED["REPORTDATA"]
    assert document["reason"] == "not authentic (key and nonce binding failed)"


def test_an_envelope_of_the_real_report_with_its_certificates(config_file, tmp_path, capsys):
    chain = [(SNP / "snp_vcek_milan.der").read_bytes()] + [
        cert.public_bytes(serialization.Encoding.DER)
        for cert in x509.load_pem_x509_certificates((SNP / "amd_ask_ark_milan.pem").read_bytes())]
    sim = attest(SoftwareEnclave(), os.urandom(32))
    envelope = tmp_path / "snp-envelope.json"
    envelope.write_bytes(Envelope(Evidence(EvidenceKind.SEV_SNP, REPORT.read_bytes(), tuple(chain)), sim.ike_key,
                                  sim.nonce).encode())
    assert check(config_file, envelope, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["fields"]["MEASUREMENT"] == SNP_PUBLISHED["MEASUREMENT"]
    assert [c["name"] for c in document["checks"] if not c["passed"]] == ["guest policy", "key and nonce binding"]


# --- unusable input: exit 2, one line, nothing on stdout ------------------------------------------------------------

def _patched(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _patched(d, "truncated.dat", QUOTE.read_bytes()[:100]),
     "malformed evidence: tdx_quote.body.mr_seam at offset 64: needs 48 bytes, 36 remain"),
    (lambda d: _patched(d, "truncated.bin", REPORT.read_bytes()[:0x2A0]),
     "malformed evidence: snp_report.signature_r at offset 672: needs 72 bytes, 0 remain"),
    (lambda d: _patched(d, "garbage.bin", bytes(range(256)) * 4),
     "not attestation evidence: none of a TDX quote"),
    (lambda d: _patched(d, "text.txt", b"garbage, not evidence\n" * 20),
     "not attestation evidence: none of a TDX quote"),
    (lambda d: _patched(d, "v6.dat", b"\x06\x00" + QUOTE.read_bytes()[2:]),
     "unsupported evidence: TDX quote version 6 (supported: 4, 5)"),
    (lambda d: _patched(d, "sgx.dat", b"\x03\x00\x02\x00\x00\x00\x00\x00" + QUOTE.read_bytes()[8:]),
     "unsupported evidence: quote TEE type 0x0 (SGX) (supported: 0x81, TDX)"),
    (lambda d: _patched(d, "v6.bin", b"\x06" + REPORT.read_bytes()[1:]),
     "unsupported evidence: SEV-SNP report version 6 (supported: 2 to 5)"),
    (lambda d: _patched(d, "spec.json", sim_spec().encode()),
     "malformed evidence: envelope: expected a JSON object (a CMW collection), got [{\"measurement_id\": "),
    (lambda d: _patched(d, "empty", b""), "empty, not evidence"),
    (lambda d: d / "absent", "cannot read it (No such file or directory)"),
    (lambda d: d, "not a regular file"),
], ids=["tdx-truncated", "snp-truncated", "garbage", "text", "tdx-v5", "sgx", "snp-v6", "a-spec", "empty", "absent",
        "a-directory"])
def test_unusable_evidence_is_exit_2_and_one_line(config_file, tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert check(config_file, path, "--json") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ikectl: error: {path}: {message}") and err.count("\n") == 1, err


def test_the_three_kinds_read_differently(config_file, tmp_path, collateral, capsys):
    """Unsupported, malformed, not matching: one message each, and the exit code says usable or not."""
    quote = QUOTE.read_bytes()
    results = []
    for data in (b"\x06\x00" + quote[2:], quote[:100], quote[:200] + bytes([quote[200] ^ 1]) + quote[201:]):
        code = check(config_file, _patched(tmp_path, "q.dat", data), "--collateral", collateral, "--at", AT)
        results.append((code, capsys.readouterr().err.split(": ")[3]))
    assert results == [(2, "unsupported evidence"), (2, "malformed evidence"), (1, "not authentic (quote signature "
                                                                                  "failed)\n")]


@pytest.mark.parametrize(("args", "message"), [
    (["--collateral", "{dir}"], "--collateral is for tdx evidence; {report} is sev-snp evidence"),
    (["--spec", "https://example.net/spec"], "--spec https://example.net/spec: trust check is offline"),
    (["--spec", "/nonexistent/spec.json"], "--spec /nonexistent/spec.json: no such file"),
    (["--spec", "%%%"], "--spec: spec.inline: not base64url"),
    (["--at", "soon"], "--at soon: expected an ISO 8601 time"),
    (["--certs", "{report}"], "--certs {report}: not a directory"),
])
def test_bad_options_are_exit_2(config_file, tmp_path, capsys, args, message):
    values = {"dir": str(tmp_path), "report": str(REPORT)}
    assert check(config_file, REPORT, *(a.format(**values) for a in args)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ikectl: error: {message.format(**values)}") and err.count("\n") == 1, err


def test_stdin(config_file, certs, capsys, monkeypatch):
    class Stdin:
        buffer = REPORT.open("rb")

    monkeypatch.setattr("sys.stdin", Stdin)
    assert check(config_file, "-", "--certs", certs, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["file"] == "-" and document["fields"]["MEASUREMENT"] == SNP_PUBLISHED["MEASUREMENT"]


def test_detect():
    assert trustcheck.detect(QUOTE.read_bytes()) == trustcheck.Format.TDX_QUOTE
    assert trustcheck.detect(REPORT.read_bytes()) == trustcheck.Format.SNP_REPORT
    assert trustcheck.detect(b"  \n{}") == trustcheck.Format.ENVELOPE
    sim = attest(SoftwareEnclave(), os.urandom(32))
    assert trustcheck.detect(sim.evidence.data) == trustcheck.Format.SIM_REPORT
    assert trustcheck.detect(sim.encode()) == trustcheck.Format.ENVELOPE


# --- TDX 1.5: the quote v5 (go-tdx-guest's sample, SOURCES.md) --------------------------------------------------------

QUOTE_V5 = TDX / "tdx_quote_v5_td15.dat"
AT_V5 = "2026-02-03T01:00:00Z"  # go-tdx-guest verifies this quote's signatures and PCK chain at this time


def test_a_tdx_15_quote_without_collateral_prints_its_fields_and_is_exit_2(config_file, capsys):
    assert check(config_file, QUOTE_V5) == 2  # as the v4 quote without collateral
    out, err = capsys.readouterr()
    assert "format:      tdx-quote (TDX quote v5, TD report 1.5, 5006 bytes)" in out
    fields = text_fields(out)
    assert fields["VERSION"] == "5" and fields["PCK_FMSPC"] == "90c06f000000"
    assert fields["MRTD"] == ("7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb0"
                              "01a1ced3ee19747dda8f750c3bc8f876")
    assert fields["TEE_TCB_SVN"] == "0b010400000000000000000000000000"
    assert fields["TEE_TCB_SVN2"] == "0d010400000000000000000000000000"
    assert fields["MRSERVICETD"] == "00" * 48
    names = list(fields)
    assert names.index("REPORTDATA") + 1 == names.index("TEE_TCB_SVN2") == names.index("MRSERVICETD") - 1
    assert "checks:      none ran: a TDX quote needs Intel's collateral: --collateral DIR" in out
    assert err.startswith(f"ikectl: error: {QUOTE_V5}: not verified: a TDX quote needs Intel's collateral")


def test_a_tdx_10_quote_prints_no_tdx_15_fields(config_file, capsys):
    check(config_file, QUOTE)
    fields = text_fields(capsys.readouterr().out)
    assert "TEE_TCB_SVN2" not in fields and "MRSERVICETD" not in fields


def test_a_tdx_15_quote_with_the_v4_collateral_is_exit_1(config_file, collateral, capsys):
    """No collateral for its platform is shipped: the quote's own signatures pass, the rest fails, exit 1 (as the v4
    quote with its collateral past its dates)."""
    assert check(config_file, QUOTE_V5, "--collateral", collateral, "--at", AT_V5, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["description"] == "TDX quote v5, TD report 1.5, 5006 bytes"
    assert document["fields"]["TEE_TCB_SVN2"] == "0d010400000000000000000000000000"
    assert document["fields"]["MRSERVICETD"] == "00" * 48
    passed = {c["name"]: c["passed"] for c in document["checks"]}
    assert passed["quote signature"] and passed["QE report signature"] and passed["attestation key binding"]
    assert not passed["TCB info"] and document["authentic"] is False


# --- Azure HCL reports: trustee's real report and its VCEK (SOURCES.md, sev-snp/azure/) ------------------------------

HCL = AZURE / "trustee_hcl_report.bin"
HCL_PUBLISHED = {"HCL_RUNTIME_DATA_SHA256": "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac",
                 "HCL_AK_SHA256": "d47d5d33abcef6082883a1b3c54b80bc6be7606c6f822eae23822b42edbc8f5f",
                 "MEASUREMENT": "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308"
                                "b459d5ef1a12e0c22944eb386d17c315"}
HCL_CHECKS = ["report signature", "VCEK certificate chain", "VCEK binding", "guest policy", "HCL runtime data binding"]


@pytest.fixture
def azure_certs(tmp_path: Path) -> Path:
    """trustee's vcek.pem: the VCEK, then the Milan ASK and ARK."""
    directory = tmp_path / "azure-certs"
    directory.mkdir()
    shutil.copy(AZURE / "trustee_vcek.pem", directory)
    return directory


def _flipped_user_data(tmp_path: Path) -> Path:
    """One bit of the runtime data flipped ("user-data" starts "1" instead of "0"): still JSON, no longer bound."""
    data = bytearray(HCL.read_bytes())
    data[data.index(b'"user-data":"') + len(b'"user-data":"')] ^= 1
    return _patched(tmp_path, "flipped.bin", bytes(data))


def test_the_hcl_values_here_are_sources_mds():
    for value in HCL_PUBLISHED.values():
        assert value in SOURCES


def test_an_azure_hcl_report_prints_its_fields_and_verifies(config_file, azure_certs, capsys):
    assert check(config_file, HCL, "--certs", azure_certs) == 0  # now: the VCEK is valid until 2030-05-02
    out, err = capsys.readouterr()
    assert err == ""
    assert "format:      azure-hcl-report (Azure HCL report v1, 2600 bytes (254 of them zeros after the report), " \
           "holding an SEV-SNP report v2, 1184 bytes)" in out
    assert "evidence:    sev-snp\n" in out
    fields = text_fields(out)
    for name, value in HCL_PUBLISHED.items():
        assert fields[name] == value, name
    assert list(fields)[:9] == ["HCL_VERSION", "HCL_REQUEST_TYPE", "HCL_REPORT_TYPE", "HCL_RUNTIME_DATA_SHA256",
                                "HCL_RUNTIME_DATA_BOUND", "HCL_KEYS", "HCL_AK_SHA256", "HCL_USER_DATA",
                                "HCL_VM_CONFIGURATION"]  # the wrapper's, then the SEV-SNP report's
    assert (fields["HCL_VERSION"], fields["HCL_REQUEST_TYPE"], fields["HCL_REPORT_TYPE"]) == \
        ("1", "2 (AK certificate)", "2 (SEV-SNP)")
    assert fields["HCL_RUNTIME_DATA_BOUND"] == "yes: REPORT_DATA is its SHA-256, then 32 zero bytes"
    assert fields["HCL_KEYS"] == "HCLAkPub (RSA 2048, sign), HCLEkPub (RSA 2048, encrypt)"
    assert fields["HCL_USER_DATA"] == "00" * 64
    assert fields["HCL_VM_CONFIGURATION"] == 'console-enabled=true secure-boot=true tpm-enabled=true ' \
                                             'vmUniqueId="911B0EF8-9DBA-48B0-B275-4E4DF2D39252"'
    assert fields["REPORT_DATA"] == HCL_PUBLISHED["HCL_RUNTIME_DATA_SHA256"] + "00" * 32
    assert re.findall(r"^  (ok  |FAIL)  (.*) \(", out, re.M) == [("ok  ", name) for name in HCL_CHECKS]
    assert "accepted:    yes" in out and out.rstrip().endswith("result:      ok")


def test_an_azure_hcl_report_json(config_file, azure_certs, capsys):
    assert check(config_file, HCL, "--certs", azure_certs, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS  # the keys of every other format
    fields = document["fields"]
    assert {name: fields[name] for name in HCL_PUBLISHED} == HCL_PUBLISHED
    assert (fields["HCL_VERSION"], fields["HCL_REQUEST_TYPE"], fields["HCL_REPORT_TYPE"],
            fields["HCL_RUNTIME_DATA_BOUND"], fields["HCL_USER_DATA"]) == (1, 2, 2, True, "00" * 64)
    assert fields["HCL_KEYS"][0] == {"kid": "HCLAkPub", "kty": "RSA", "key_ops": ["sign"], "bits": 2048,
                                     "sha256": HCL_PUBLISHED["HCL_AK_SHA256"]}
    assert fields["HCL_VM_CONFIGURATION"]["vmUniqueId"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert [c["name"] for c in document["checks"]] == HCL_CHECKS
    assert (document["format"], document["evidence"], document["authentic"], document["accepted"],
            document["result"]) == ("azure-hcl-report", "sev-snp", True, True, "ok")


def test_an_azure_hcl_report_spec_matches_or_not(config_file, azure_certs, tmp_path, capsys):
    good = spec_file(tmp_path, "sev-snp", {0: HCL_PUBLISHED["MEASUREMENT"]})
    assert check(config_file, HCL, "--certs", azure_certs, "--spec", good) == 0
    assert "spec:        entry 'sev-snp-entry' matches" in capsys.readouterr().out
    bad = spec_file(tmp_path, "sev-snp", {0: SNP_PUBLISHED["MEASUREMENT"]}, "bad.json")
    assert check(config_file, HCL, "--certs", azure_certs, "--spec", bad, "--json") == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "no entry of the spec matches"


def test_one_bit_of_runtime_data_flipped_is_not_authentic(config_file, azure_certs, tmp_path, capsys):
    assert check(config_file, _flipped_user_data(tmp_path), "--certs", azure_certs, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["fields"]["HCL_RUNTIME_DATA_BOUND"] is False
    assert document["fields"]["HCL_USER_DATA"] == "10" + "00" * 63
    binding = document["checks"][-1]
    assert binding["name"] == "HCL runtime data binding" and not binding["passed"]
    assert [m["field"] for m in binding["mismatches"]] == ["report_data"]
    assert binding["mismatches"][0]["actual"] == HCL_PUBLISHED["HCL_RUNTIME_DATA_SHA256"] + "00" * 32
    assert all(c["passed"] for c in document["checks"][:-1])  # the SEV-SNP report itself is intact
    assert document["reason"] == "not authentic (HCL runtime data binding failed)"


def test_an_azure_hcl_report_without_its_vcek_prints_and_is_exit_2(config_file, tmp_path, capsys):
    assert check(config_file, _flipped_user_data(tmp_path)) == 2
    out, err = capsys.readouterr()
    assert text_fields(out)["HCL_RUNTIME_DATA_BOUND"] == "NO: REPORT_DATA is not its SHA-256 followed by 32 zero " \
                                                         "bytes"  # shown even though no check ran
    assert "checks:      none ran: an SEV-SNP report needs its VCEK and the ASK" in out
    assert err.endswith("an Azure VM's IMDS serves both as one JSON document (THIM: vcekCert, certificateChain), "
                        "which --certs DIR reads\n") and err.count("\n") == 1


def test_certs_dir_reads_imdss_thim_document(config_file, tmp_path, capsys):
    """Built here from trustee's real VCEK and chain, in the shape az-snp-vtpm reads from IMDS (src/imds.rs)."""
    vcek, *chain = x509.load_pem_x509_certificates((AZURE / "trustee_vcek.pem").read_bytes())
    directory = tmp_path / "thim"
    directory.mkdir()
    pem = [cert.public_bytes(serialization.Encoding.PEM).decode() for cert in (vcek, *chain)]
    (directory / "thim.json").write_text(json.dumps({"vcekCert": pem[0], "certificateChain": "".join(pem[1:]),
                                                     "tcbm": "7308000000000003"}))
    assert check(config_file, HCL, "--certs", directory) == 0
    assert "authentic:   yes" in capsys.readouterr().out


def test_the_azure_cvm_tooling_report_is_not_its_repositorys_vceks(config_file, azure_certs, capsys):
    """Bound to its runtime data, but trustee's VCEK is another chip's (that repository ships none for it)."""
    assert check(config_file, AZURE / "az_cvm_vtpm_hcl_report_snp.bin", "--certs", azure_certs, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    passed = {c["name"]: c["passed"] for c in document["checks"]}
    assert passed == {"report signature": False, "VCEK certificate chain": True, "VCEK binding": False,
                      "guest policy": True, "HCL runtime data binding": True}
    assert document["fields"]["HCL_USER_DATA"] is None and document["fields"]["HCL_KEYS"][0]["kid"] == "HCLAkPub"


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: AZURE / "az_cvm_vtpm_hcl_report_tdx.bin",
     "unsupported evidence: HCL report type 4 (TDX) (supported: 2 (SEV-SNP))"),
    (lambda d: _patched(d, "truncated.bin", HCL.read_bytes()[:1000]),
     "malformed evidence: hcl_report.hw_report at offset 32: needs 1184 bytes, 968 remain"),
    (lambda d: _patched(d, "json.bin", HCL.read_bytes().replace(b'{"keys"', b'["keys"', 1)),
     "malformed evidence: hcl_report.runtime_data at offset 1243: not JSON: Expecting ',' delimiter"),
    (lambda d: _patched(d, "snp-v6.bin", HCL.read_bytes()[:32] + b"\x06" + HCL.read_bytes()[33:]),
     "unsupported evidence: SEV-SNP report version 6 (supported: 2 to 5)"),
], ids=["tdx", "truncated", "runtime-data", "inner-v6"])
def test_unusable_azure_hcl_reports_are_exit_2_and_one_line(config_file, azure_certs, tmp_path, capsys, make,
                                                            message):
    path = make(tmp_path)
    assert check(config_file, path, "--certs", azure_certs) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ikectl: error: {path}: {message}") and err.count("\n") == 1, err


def test_collateral_is_not_for_an_azure_hcl_report(config_file, tmp_path, capsys):
    assert check(config_file, HCL, "--collateral", tmp_path) == 2
    assert f"--collateral is for tdx evidence; {HCL} is sev-snp evidence" in capsys.readouterr().err


def test_detect_an_azure_hcl_report():
    assert trustcheck.detect(HCL.read_bytes()) == trustcheck.Format.AZURE_HCL_REPORT
    assert trustcheck.detect(b"HCLA") == trustcheck.Format.AZURE_HCL_REPORT  # and HclReport.parse says what is wrong


# --- the collateral policy of [trust]: the real QE identity and PCK CRL are due on 2023-07-08 ---

def test_tdx_collateral_a_day_past_its_next_update_follows_the_configured_grace(tmp_path, collateral, capsys):
    root = f'intel_root = "{TDX / "intel_sgx_root_ca.pem"}"\n'
    late = "2023-07-09T00:00:00Z"
    strict = _config(tmp_path, "strict.toml", root)  # and so is the PCK CRL's, a certificate check: exit 1
    assert check(strict, QUOTE, "--collateral", collateral, "--at", late, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    freshness = next(c for c in document["checks"] if c["name"] == "collateral freshness")
    assert [m["field"] for m in freshness["mismatches"]] == ["qe_identity.nextUpdate"] and freshness["notes"] == []
    graced = _config(tmp_path, "graced.toml", root + "collateral_grace_days = 2\n")
    assert check(graced, QUOTE, "--collateral", collateral, "--at", late) == 0  # authentic; TCB level aside
    out = capsys.readouterr().out
    assert "  ok    collateral freshness (collateral)" in out and "  ok    PCK certificate chain" in out
    assert ("note: qe_identity is past its nextUpdate 2023-07-08T07:24:59Z by 16.6 hours: accepted inside the 2 "
            "days grace; the resolver's collateral needs refreshing") in out
    assert "note: CRL of C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX PCK Platform CA is past" in out


@pytest.mark.parametrize(("name", "message"), [
    ("amd_ask_ark_milan.pem", "2 certificates; expected one root certificate"),  # AMD KDS's cert_chain: ASK, ARK
    ("ask_only.pem", "CN=SEV-Milan,O=Advanced Micro Devices,ST=CA,L=Santa Clara,C=US,OU=Engineering is not a root "
                     "(issued by CN=ARK-Milan"),
])
def test_a_configured_ark_that_is_not_one_root_is_exit_2(tmp_path, certs, capsys, name, message):
    chain = (SNP / "amd_ask_ark_milan.pem").read_bytes()
    path = tmp_path / name
    path.write_bytes(chain if name.startswith("amd_") else chain[:chain.index(b"-----END CERTIFICATE-----") + 26])
    config = _config(tmp_path, "ikectl.toml", f'amd_arks = ["{path}"]\n')
    assert check(config, REPORT, "--certs", certs, "--at", AT) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ikectl: error: trust.amd_arks[0] {path}: ") and message in err, err


# --- [trust] snp_minimum_tcb and snp_vmpl: the Milan report's REPORTED_TCB is bl 2 tee 0 snp 5 ucode 68, VMPL 0 ---

@pytest.mark.parametrize(("policy", "fields"), [
    ("snp_minimum_tcb = { bootloader = 2, tee = 0, snp = 5, microcode = 68 }\n", []),
    ("snp_minimum_tcb = { bootloader = 2, tee = 0, snp = 6, microcode = 69 }\n",
     ["reported_tcb.snp", "reported_tcb.microcode"]),
    ("snp_minimum_tcb = { fmc = 0, bootloader = 2, tee = 0, snp = 5, microcode = 68 }\n", ["reported_tcb.fmc"]),
    ("snp_vmpl = 1\n", ["vmpl"]),
])
def test_the_snp_policy_of_trust_is_applied(tmp_path, certs, capsys, policy, fields):
    arks = [str(_ark("milan", tmp_path))]
    config = _config(tmp_path, "ikectl.toml", f"amd_arks = {json.dumps(arks)}\n{policy}")
    check(config, REPORT, "--certs", certs, "--at", AT, "--json")
    document = json.loads(capsys.readouterr().out)
    found = [m["field"] for c in document["checks"] for m in c["mismatches"] if m["field"] != "policy.debug"]
    assert found == fields
    assert document["authentic"] is True  # a policy, not the evidence's authenticity
