"""`ikectl trust check` on every kind of evidence, one table: each row is a kind (real evidence where it can be; a test
PKI where no public evidence can pass, said in the row's comment), and every case below runs on every row:

    fields     the text prints every register a spec can pin for the kind (ATTESTATION_TYPES' names) with the value
               the kind's own parser extracts from the file
    match      exit 0 with a spec whose entry equals the evidence's registers
    mismatch   exit 1 with a spec whose entry differs in one register; the mismatch names that register
    unusable   exit 2 and one line on stderr: the evidence truncated, or what it needs (collateral, certificates,
               anchors) absent
    json       the same top-level and per-check keys for every kind, version 1, the text's field names, and the
               TCB status where the kind has one (`tcb_status` null where it has none: the row says why)

What each kind needs (roots, --collateral, --certs, --anchors, --at) is the row's; tests/test_trust_check.py checks the
values each origin publishes, one kind at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from attestation_mutations import SNP_VCEK, FakeAmd, der
from attestation_vectors import AZURE, SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_trust_check import text_fields

from enclave_ike.enclave.attest import attest
from enclave_ike.enclave.software import SoftwareEnclave
from ikecommon.attestation.binding import report_data
from ikecommon.attestation.envelope import Collateral, Envelope, Evidence, EvidenceKind
from ikecommon.attestation.sim import SimReport
from ikecommon.attestation.snp import SnpReport, hcl
from ikecommon.attestation.spec import ATTESTATION_TYPE_OF, ATTESTATION_TYPES, MeasurementEntry, MeasurementSpec
from ikecommon.attestation.tdx import TdxQuote
from ikectl import cli
from netns_tests.harness.fake_intel import FakeIntel, up_to_date_tcb_info

JSON_VERSION = 1  # golden: a change of the schema must change this test
JSON_KEYS = {"version", "file", "format", "evidence", "description", "fields", "at", "checks", "authentic",
             "accepted", "tcb_status", "spec", "result", "reason"}
CHECK_KEYS = {"name", "kind", "passed", "mismatches", "notes"}
FAKE_AT = "2023-07-01T00:00:00Z"  # inside the test PKIs' validity, their CRLs' and the real TCB info's


Variants = dict[str, tuple[Path, tuple[str, ...], str]]  # name -> (file, options, what stderr's line says)


@dataclass(frozen=True)
class Setup:
    """One row made ready in a directory: the config, the evidence file and the options that verify it, and the
    unusable variants."""

    config: Path
    evidence: Path
    options: tuple[str, ...]
    unusable: Variants


@dataclass(frozen=True)
class Row:
    kind: str
    setup: Callable[[Path], Setup]
    tcb_status: str | None  # what JSON's tcb_status says; None where the kind has no TCB status (see the row)
    tcb_text: str           # what the text's tcb_status line starts with


# -- what every row needs ------------------------------------------------------------------------------------------


def _config(directory: Path, *, intel_root: Path | None = None, amd_arks: Sequence[Path] = ()) -> Path:
    trust = "" if intel_root is None else f'intel_root = "{intel_root}"\n'
    trust += f"amd_arks = {json.dumps([str(ark) for ark in amd_arks])}\n" if amd_arks else ""
    path = directory / "ikectl.toml"
    path.write_text(f'[paths]\nrun_dir = "{directory / "run"}"\ntrust_dir = "{directory / "trust"}"\n[trust]\n{trust}')
    return path


def _pem(directory: Path, name: str, cert: x509.Certificate) -> Path:
    path = directory / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _real_arks(directory: Path) -> list[Path]:
    """The three ARKs (KDS's cert_chain is the ASK, then the ARK)."""
    return [_pem(directory, f"ark-{product}.pem",
                 x509.load_pem_x509_certificates((SNP / f"amd_ask_ark_{product}.pem").read_bytes())[1])
            for product in ("milan", "genoa", "turin")]


def _dir(directory: Path, name: str, files: dict[str, bytes]) -> Path:
    path = directory / name
    path.mkdir()
    for file, data in files.items():
        (path / file).write_bytes(data)
    return path


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _truncated(directory: Path, evidence: Path, options: tuple[str, ...], message: str) -> Variants:
    data = evidence.read_bytes()
    return {"truncated": (_write(directory, f"truncated-{evidence.name}", data[:len(data) // 2]), options, message)}


def _fake_intel_collateral() -> dict[str, bytes]:
    """FakeIntel's collateral documents, with a TCB info whose top level (UpToDate) the quotes' platform meets and
    which knows the v5 quote's TDX module (1.5: identity TDX_01, its SVN 11 UpToDate)."""
    module = {"id": "TDX_01", "mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8,
              "tcbLevels": [{"tcb": {"isvsvn": 11}, "tcbDate": "2023-06-01T00:00:00Z", "tcbStatus": "UpToDate"}]}
    return FakeIntel.instance().documents(tcb_info={**up_to_date_tcb_info(), "tdxModuleIdentities": [module]})


# -- the rows ------------------------------------------------------------------------------------------------------


def _tdx_v4(directory: Path) -> Setup:
    collateral = _dir(directory, "collateral", {
        name: (TDX / name).read_bytes() for name in (
            "tdx_tcbinfo_v3_fmspc_50806f000000.json", "tdx_qe_identity_v2.json", "intel_tcb_signing_chain.pem",
            "intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der")})
    evidence = TDX / "tdx_quote_v4_spr_e4.dat"
    options = ("--collateral", str(collateral), "--at", "2023-07-01T00:00:00Z")
    return Setup(_config(directory, intel_root=TDX / "intel_sgx_root_ca.pem"), evidence, options, {
        **_truncated(directory, evidence, options, "malformed evidence: tdx_quote."),
        "without-collateral": (evidence, options[2:], "not verified: a TDX quote needs Intel's collateral")})


def _tdx_v5(directory: Path) -> Setup:
    """The real v5 quote has no public collateral for its platform (FMSPC 90c06f000000): without collateral it is
    exit 2 (the unusable variant, on the real quote). The other cases use that quote re-signed by the test PKI
    (FakeIntel.quote(base=)), FakeIntel's collateral in --collateral and FakeIntel's root as [trust] intel_root."""
    real = TDX / "tdx_quote_v5_td15.dat"
    pki = FakeIntel.instance()
    evidence = _write(directory, "tdx-v5-fake-intel.dat", pki.quote(base=real.read_bytes()))
    root = _write(directory, "fake-intel-root.pem", pki.root_pem())
    options = ("--collateral", str(_dir(directory, "collateral", _fake_intel_collateral())), "--at", FAKE_AT)
    return Setup(_config(directory, intel_root=root), evidence, options, {
        **_truncated(directory, real, options, "malformed evidence: tdx_quote."),
        "real-without-collateral": (real, (), "not verified: a TDX quote needs Intel's collateral")})


def _snp(report: str, certs: Sequence[str], at: str, ask: str, without: str) -> Callable[[Path], Setup]:
    """A raw SEV-SNP report of sev-snp/ with its key and chain in --certs, the real ARKs trusted; unusable: truncated,
    and the chain file (`ask`) left out of --certs."""
    def setup(directory: Path) -> Setup:
        evidence = SNP / report
        options = ("--certs", str(_dir(directory, "certs", {name: (SNP / name).read_bytes() for name in certs})),
                   "--at", at)
        no_ask = _dir(directory, "certs-without-ask", {name: (SNP / name).read_bytes() for name in certs
                                                       if name != ask})
        return Setup(_config(directory, amd_arks=_real_arks(directory)), evidence, options, {
            **_truncated(directory, evidence, options, "malformed evidence: snp_report."),
            "without-ask": (evidence, ("--certs", str(no_ask), "--at", at), f"--certs {no_ask}: no {without}")})
    return setup


def _azure_hcl(directory: Path) -> Setup:
    evidence = AZURE / "trustee_hcl_report.bin"
    options = ("--certs", str(_dir(directory, "certs", {"vcek.pem": (AZURE / "trustee_vcek.pem").read_bytes()})),
               "--at", "2024-02-16T00:00:00Z")
    return Setup(_config(directory, amd_arks=_real_arks(directory)), evidence, options, {
        **_truncated(directory, evidence, options, "malformed evidence: hcl_report."),
        "without-vcek": (evidence, options[2:], "not verified: an SEV-SNP report needs its VCEK and the ASK")})


def _sim_envelope(directory: Path) -> Setup:
    """A sim enclave with all 16 registers the sim layout names (the default has one), each a different value."""
    enclave = SoftwareEnclave(registers=[bytes([index]) * 48 for index in range(16)])
    evidence = _write(directory, "sim-envelope.json", attest(enclave, os.urandom(32)).encode())
    options = ("--anchors", "sim")
    return Setup(_config(directory), evidence, options, {
        **_truncated(directory, evidence, options, "malformed evidence: envelope"),
        "without-sim-anchors": (evidence, (), "not verified: sim evidence is verified only with --anchors sim")})


def _tdx_envelope(directory: Path) -> Setup:
    """The real quote's REPORTDATA binds no envelope's nonce and key (exit 1 whatever the spec: test_trust_check.py
    shows it), so the quote here is the real v4 one re-signed by the test PKI with a REPORTDATA that binds them, its
    collateral FakeIntel's, carried in the envelope; [trust] intel_root is FakeIntel's root."""
    pki, sim = FakeIntel.instance(), attest(SoftwareEnclave(), os.urandom(32))
    quote = pki.quote(report_data=report_data(sim.nonce, sim.ike_key))
    documents = _fake_intel_collateral()
    collateral = Collateral(tdx_tcb_info=documents["tcb-info.json"], tdx_qe_identity=documents["qe-identity.json"],
                            tdx_tcb_signing_chain=documents["tcb-signing-chain.pem"],
                            crls=(documents["pck-crl.der"], documents["root-ca-crl.der"]))
    evidence = _write(directory, "tdx-envelope.json",
                      Envelope(Evidence(EvidenceKind.TDX, quote), sim.ike_key, sim.nonce, collateral).encode())
    bare = _write(directory, "tdx-envelope-without-collateral.json",
                  Envelope(Evidence(EvidenceKind.TDX, quote), sim.ike_key, sim.nonce).encode())
    root = _write(directory, "fake-intel-root.pem", pki.root_pem())
    options = ("--at", FAKE_AT)
    return Setup(_config(directory, intel_root=root), evidence, options, {
        **_truncated(directory, evidence, options, "malformed evidence: envelope"),
        "without-collateral": (bare, options, "not verified: a TDX quote needs Intel's collateral")})


def _snp_envelope(directory: Path) -> Setup:
    """As for TDX, the real Milan report binds no envelope: the report here is the Milan one re-signed by the test PKI
    (FakeAmd, its VCEK carrying the real VCEK's AMD extensions) with a REPORT_DATA that binds the envelope's nonce and
    key; the envelope carries FakeAmd's VCEK and ASK, and [trust] amd_arks names FakeAmd's ARK."""
    amd, sim = FakeAmd.instance(SNP_VCEK), attest(SoftwareEnclave(), os.urandom(32))
    report = amd.report(report_data=report_data(sim.nonce, sim.ike_key))
    evidence = _write(directory, "snp-envelope.json", Envelope(
        Evidence(EvidenceKind.SEV_SNP, report, (der(amd.vcek), der(amd.ask))), sim.ike_key, sim.nonce).encode())
    bare = _write(directory, "snp-envelope-without-certificates.json",
                  Envelope(Evidence(EvidenceKind.SEV_SNP, report), sim.ike_key, sim.nonce).encode())
    options = ("--at", FAKE_AT)
    return Setup(_config(directory, amd_arks=[_pem(directory, "fake-ark.pem", amd.ark)]), evidence, options, {
        **_truncated(directory, evidence, options, "malformed evidence: envelope"),
        "without-certificates": (bare, options, "not verified: an SEV-SNP report needs its VCEK and the ASK")})


SNP_NO_TCB = "SEV-SNP has no TCB status here"
ROWS = [
    # The real quote's platform is below every TCB level of the real TCB info (SOURCES.md): no status applies.
    Row("tdx-v4", _tdx_v4, None, "none: no TCB level of the TCB info applies"),
    Row("tdx-v5", _tdx_v5, "UpToDate", "UpToDate (platform and module folded with the QE's UpToDate"),
    # SEV-SNP has no TCB status (AMD publishes no TCB levels): REPORTED_TCB is bound to the key's SPLs instead.
    Row("snp-milan-vcek", _snp("snp_report_milan.bin", ("snp_vcek_milan.der", "amd_ask_ark_milan.pem"),
                               "2023-07-01T00:00:00Z", "amd_ask_ark_milan.pem", "ASK"), None, SNP_NO_TCB),
    Row("snp-milan-vlek", _snp("snp_report_milan_vlek.bin", ("snp_vlek_milan.der", "amd_asvk_ark_milan.pem"),
                               "2025-06-01T00:00:00Z", "amd_asvk_ark_milan.pem", "ASVK"), None, SNP_NO_TCB),
    Row("snp-turin-vcek", _snp("snp_report_turin.bin", ("snp_vcek_turin.der", "amd_ask_ark_turin.pem"),
                               "2025-10-01T00:00:00Z", "amd_ask_ark_turin.pem", "ASK"), None, SNP_NO_TCB),
    Row("snp-genoa-vcek", _snp("snp_report_genoa.bin", ("snp_vcek_genoa.pem", "amd_ask_ark_genoa.pem"),
                               "2026-02-20T00:00:00Z", "amd_ask_ark_genoa.pem", "ASK"), None, SNP_NO_TCB),
    Row("azure-hcl", _azure_hcl, None, SNP_NO_TCB),  # its SEV-SNP report's (Milan)
    Row("sim-envelope", _sim_envelope, None, "sim evidence has no TCB"),
    Row("tdx-envelope", _tdx_envelope, "UpToDate", "UpToDate (platform and module folded with the QE's UpToDate"),
    Row("snp-envelope", _snp_envelope, None, SNP_NO_TCB),
]
IDS = [row.kind for row in ROWS]
UNUSABLE = [(row, variant) for row in ROWS for variant in ("truncated", "without")]


# -- the registers, as each kind's own parser reads them --------------------------------------------------------------


def _registers(data: bytes) -> tuple[str, tuple[bytes, ...]]:
    """(attestation type, the registers in its layout's order) of evidence, read with the kind's parser, not
    trust check's."""
    if data.startswith(hcl.SIGNATURE):
        return "sev-snp", (SnpReport.parse(hcl.HclReport.parse(data).hw_report).measurement,)
    if data.lstrip()[:1] == b"{":
        evidence = Envelope.decode(data).evidence
        kind, data = evidence.kind, evidence.data
    else:
        kind = EvidenceKind.TDX if data[4:8] == b"\x81\0\0\0" else EvidenceKind.SEV_SNP
    if kind == EvidenceKind.TDX:
        body = TdxQuote.parse(data).body
        return "dcap-tdx", (body.mr_td, *body.rtmrs)
    if kind == EvidenceKind.SEV_SNP:
        return "sev-snp", (SnpReport.parse(data).measurement,)
    return "sim", SimReport.decode(data).registers


def _spec(directory: Path, attestation_type: str, registers: Sequence[bytes], name: str) -> Path:
    path = directory / name
    path.write_bytes(MeasurementSpec((MeasurementEntry(f"{attestation_type}-matrix", attestation_type,
                                                       tuple(enumerate(registers))),)).encode())
    return path


def _check(setup: Setup, *options: str, evidence: Path | None = None) -> int:
    return cli.main(["--config", str(setup.config), "trust", "check", str(evidence or setup.evidence),
                     *setup.options, *options])


# -- the cases -------------------------------------------------------------------------------------------------------


def test_every_attestation_type_has_rows(tmp_path: Path):
    types = set()
    for row in ROWS:
        (tmp_path / row.kind).mkdir()
        types.add(_registers(row.setup(tmp_path / row.kind).evidence.read_bytes())[0])
    assert types == set(ATTESTATION_TYPES) == set(ATTESTATION_TYPE_OF.values())


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_text_prints_every_register_with_the_value_extracted(row: Row, tmp_path: Path, capsys):
    setup = row.setup(tmp_path)
    assert _check(setup) == 0
    out, err = capsys.readouterr()
    assert err == ""
    attestation_type, registers = _registers(setup.evidence.read_bytes())
    names = ATTESTATION_TYPES[attestation_type].names
    assert len(names) == len(registers)
    fields = text_fields(out)
    assert {name: fields[name] for name in names} == {name: value.hex() for name, value in zip(names, registers,
                                                                                               strict=True)}
    assert "authentic:   yes" in out and out.rstrip().endswith("result:      ok")


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_spec_equal_to_the_registers_is_exit_0(row: Row, tmp_path: Path, capsys):
    setup = row.setup(tmp_path)
    attestation_type, registers = _registers(setup.evidence.read_bytes())
    spec = _spec(tmp_path, attestation_type, registers, "match.json")
    assert _check(setup, "--spec", str(spec)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"spec:        entry '{attestation_type}-matrix' matches" in out


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_spec_that_differs_in_one_register_is_exit_1_naming_it(row: Row, tmp_path: Path, capsys):
    setup = row.setup(tmp_path)
    attestation_type, registers = _registers(setup.evidence.read_bytes())
    index = len(registers) - 1  # the last register: RTMR3, MEASUREMENT, SIM15
    name = ATTESTATION_TYPES[attestation_type].names[index]
    wrong = bytes(b ^ 0xFF for b in registers[index])
    spec = _spec(tmp_path, attestation_type, [*registers[:index], wrong], "mismatch.json")
    assert _check(setup, "--spec", str(spec)) == 1
    out, err = capsys.readouterr()
    assert f"spec:        no entry matches\n  spec[{attestation_type}-matrix].measurements.{index}: expected " \
           f"{wrong.hex()} ({name}), got {registers[index].hex()}\n" in out
    assert err == f"ikectl: error: {setup.evidence}: no entry of the spec matches\n"
    assert _check(setup, "--spec", str(spec), "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["spec"]["matched"] is None
    assert document["spec"]["mismatches"] == [{"field": f"spec[{attestation_type}-matrix].measurements.{index}",
                                               "expected": f"{wrong.hex()} ({name})",
                                               "actual": registers[index].hex()}]


@pytest.mark.parametrize(("row", "variant"), UNUSABLE, ids=[f"{row.kind}/{variant}" for row, variant in UNUSABLE])
def test_an_unusable_variant_is_exit_2_and_one_line(row: Row, variant: str, tmp_path: Path, capsys):
    setup = row.setup(tmp_path)
    (name,) = [name for name in setup.unusable if variant in name]
    evidence, options, message = setup.unusable[name]
    code = cli.main(["--config", str(setup.config), "trust", "check", str(evidence), *options])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert err.startswith("ikectl: error: ") and message in err, err


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_json_is_stable_for_every_kind(row: Row, tmp_path: Path, capsys):
    setup = row.setup(tmp_path)
    assert _check(setup) == 0
    text = capsys.readouterr().out
    assert _check(setup, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == JSON_KEYS
    assert document["version"] == JSON_VERSION
    assert document["checks"] and all(set(check) == CHECK_KEYS for check in document["checks"])
    assert list(document["fields"]) == list(text_fields(text))
    assert document["tcb_status"] == row.tcb_status
    (line,) = re.findall(r"^tcb_status:  (.*)$", text, re.M)
    assert line.startswith(row.tcb_text), line
