"""`enclave-ike collateral import-vcek|fetch-vcek|snp-id` and the SEV-SNP side of the evidence endpoint, with AMD's
real certificates (tests/vectors/attestation/sev-snp, SOURCES.md there): the Milan VCEK, the Turin VCEK (an 8-byte
hwID, an FMC SPL) and the Milan VLEK import under the shipped ARKs and land where the cache layout says; every
refused import (a forged or missing chain, another product's chain, an ARK that is not AMD's, garbage, truncated
DER, another chip or TCB than asked) is one line with its exit status and changes nothing; fetch-vcek asks a KDS on
127.0.0.1 at the URL the real reports imply, so the URL is proven right, and says clearly what a 404 or a silent
server was; the endpoint attaches the cached VCEK to a report the host gave no certificates for, and the envelope's
evidence then verifies under the shipped ARKs."""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path

import pytest
from attestation_vectors import SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_collateral_cache import DRIP, fake_pcs, read_dir
from trust_servers import BackgroundLoop, port_of

from enclave_ike import cli
from enclave_ike import config as cfg
from enclave_ike.enclave.software import SoftwareEnclave
from enclave_ike.evidence_endpoint import EvidenceEndpoint, for_config
from enclave_ike.snp_store import ServedCertificates
from ikecommon.attestation import roots
from ikecommon.attestation.envelope import Envelope, Evidence, EvidenceKind
from ikecommon.attestation.snp import SnpPolicy, SnpReport
from ikecommon.attestation.spec import MeasurementEntry, MeasurementSpec
from ikecommon.attestation.verify import TrustAnchors, appraise
from ikecommon.evidence_client import fetch_evidence

MILAN_CHIP = ("3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce4"
              "0c05f63c9b610c5068b006b5d")
MILAN_TCB = "bl2-tee0-snp5-ucode68"  # REPORTED_TCB 0x4405000000000002 (SOURCES.md)
TURIN_CHIP, TURIN_TCB = "3b42092f69c656d3", "bl1-tee0-snp2-ucode71-fmc0"
VLEK_TCB, VLEK_CSP = "bl4-tee0-snp24-ucode217", "CN=cc-us-east-2.amazonaws.com"
MILAN_URL = f"/vcek/v1/Milan/{MILAN_CHIP}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
TURIN_URL = f"/vcek/v1/Turin/{TURIN_CHIP}?blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71&fmcSPL=0"  # as Oak's test data cites
NONCE = bytes(range(32))


def vector(name: str) -> str:
    return str(SNP / name)


def pem_to_der(name: str) -> list[bytes]:
    return pem_to_der_file(SNP / name)


def tree(path: Path) -> dict[str, bytes]:
    """Every file below `path`, by relative path (temporary files included: none may be left)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} \
        if path.exists() else {}


class Site:
    """A config with its own cache; `run(...)` is `enclave-ike collateral ...` with it."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp_path, self.capsys, self.cache = tmp_path, capsys, tmp_path / "cache"
        self.config = tmp_path / "enclave-ike.toml"
        self.config.write_text(f'[listen]\naddresses = ["127.0.0.1"]\n\n[evidence]\ncollateral_dir = "{self.cache}"\n')

    def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(["collateral", *argv, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def path(self, *parts: str) -> Path:
        return self.cache.joinpath("snp", *parts)


@pytest.fixture
def site(tmp_path, capsys) -> Site:
    return Site(tmp_path, capsys)


# --- import ---

def test_the_real_milan_vcek_imports_with_its_chain_where_the_layout_says(site):
    code, out, err = site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))
    assert (code, err) == (0, ""), err
    kept = site.path("milan", MILAN_CHIP, MILAN_TCB)
    assert out == f"imported the Milan VCEK for chip ID {MILAN_CHIP} at TCB {MILAN_TCB} into {kept}\n"
    assert (kept / "vcek.der").read_bytes() == (SNP / "snp_vcek_milan.der").read_bytes()  # byte for byte
    ask, ark = pem_to_der("amd_ask_ark_milan.pem")
    assert pem_to_der_file(site.path("milan", "ask.pem")) == [ask]
    assert pem_to_der_file(site.path("milan", "ark.pem")) == [ark]
    # With the chain cached, the VCEK alone imports again, and --chip-id / --tcb that agree are fine.
    code, _, err = site.run("import-vcek", vector("snp_vcek_milan.der"), "--chip-id", MILAN_CHIP, "--tcb",
                            "0x4405000000000002")
    assert (code, err) == (0, "")


def pem_to_der_file(path: Path) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(path.read_bytes())]


def test_the_turin_vcek_is_kept_under_its_8_byte_hwid_and_a_tcb_with_the_fmc(site):
    code, out, err = site.run("import-vcek", vector("snp_vcek_turin.der"), vector("amd_ask_ark_turin.pem"))
    assert (code, err) == (0, "")
    kept = site.path("turin", TURIN_CHIP, TURIN_TCB)
    assert out == f"imported the Turin VCEK for chip ID {TURIN_CHIP} at TCB {TURIN_TCB} into {kept}\n"
    assert (kept / "vcek.der").read_bytes() == (SNP / "snp_vcek_turin.der").read_bytes()
    # A 64-byte chip ID (the report's CHIP_ID: the hwID, then zeros) names the same chip.
    assert site.run("import-vcek", vector("snp_vcek_turin.der"), "--chip-id", TURIN_CHIP + "00" * 56)[0] == 0


def test_the_vlek_is_kept_under_its_csp_id_and_tcb_and_its_expiry_is_a_warning(site):
    code, out, err = site.run("import-vcek", vector("snp_vlek_milan.der"), vector("amd_asvk_ark_milan.pem"))
    assert code == 0, err
    kept = site.path("milan", "vlek", VLEK_CSP, VLEK_TCB)
    assert out == f"imported the Milan VLEK for CSP {VLEK_CSP} at TCB {VLEK_TCB} into {kept}\n"
    assert (kept / "vlek.der").read_bytes() == (SNP / "snp_vlek_milan.der").read_bytes()
    assert site.path("milan", "asvk.pem").exists() and not site.path("milan", "ask.pem").exists()
    assert re.fullmatch(r"enclave-ike: warning: VLEK CN=SEV-VLEK,.* notAfter 2025-12-10T22:14:21Z: expired \d+ days "
                        r"ago\n", err)


def test_show_lists_every_key_and_its_date(site):
    for key, chain in (("snp_vcek_milan.der", "amd_ask_ark_milan.pem"), ("snp_vcek_turin.der", "amd_ask_ark_turin.pem"),
                       ("snp_vlek_milan.der", "amd_asvk_ark_milan.pem")):
        assert site.run("import-vcek", vector(key), vector(chain))[0] == 0
    code, out, _ = site.run("show")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("no TDX collateral in ")
    assert lines[1].startswith(f"Milan VCEK {MILAN_CHIP} {MILAN_TCB}  notAfter 2029-09-24T00:55:28Z  valid ")
    assert lines[2].startswith(f"Milan VLEK {VLEK_CSP} {VLEK_TCB}  notAfter 2025-12-10T22:14:21Z  expired ")
    assert lines[3].startswith(f"Turin VCEK {TURIN_CHIP} {TURIN_TCB}  notAfter 2032-07-17T17:04:46Z  valid ")
    # A key planted by hand under another chip's name is unusable, and show says so (exit 1).
    planted = site.path("milan", "00" * 64, MILAN_TCB)
    planted.mkdir(parents=True)
    (planted / "vcek.der").write_bytes((SNP / "snp_vcek_milan.der").read_bytes())
    code, out, _ = site.run("show")
    assert code == 1 and f"Milan VCEK {'00' * 64} {MILAN_TCB}  unusable: {planted / 'vcek.der'}: a Milan VCEK for " \
        f"chip ID {MILAN_CHIP}" in out


def forged_chain(name: str) -> bytes:
    """The real ASK's (or ARK's) name on a key of our own: what a wrong chain looks like."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask, ark = x509.load_pem_x509_certificates((SNP / "amd_ask_ark_milan.pem").read_bytes())
    forged = ask if name == "ask" else ark
    cert = (x509.CertificateBuilder().subject_name(forged.subject).issuer_name(forged.issuer)
            .public_key(key.public_key()).serial_number(7).not_valid_before(forged.not_valid_before_utc)
            .not_valid_after(forged.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    others = (cert, ark) if name == "ask" else (ask, cert)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in others)


REFUSED = [
    ("the ASK forged", lambda d: [vector("snp_vcek_milan.der"), d("chain.pem", forged_chain("ask"))], (), 1,
     r"snp_vcek_milan\.der: vcek\.signature: expected a valid signature by CN=SEV-Milan,.*, got invalid"),
    ("an ARK that is not AMD's", lambda d: [vector("snp_vcek_milan.der"), d("chain.pem", forged_chain("ark"))], (), 1,
     r"chain\.pem \(certificate 1\): ARK: expected the shipped ARK-Milan \(sha256 69d063b45344d26a\.\.\.\), got "
     r"CN=ARK-Milan"),
    ("a VLEK with the ASK's chain", lambda d: [vector("snp_vlek_milan.der"), vector("amd_ask_ark_milan.pem")], (), 2,
     r"snp_vlek_milan\.der: issued by CN=SEV-VLEK-Milan,.*, which no file holds \(given: CN=SEV-Milan,.*\) and the "
     r"cache has no Milan ASVK: give the product's cert_chain too \(KDS: vlek/v1/Milan/cert_chain\)$"),
    ("a Turin VCEK with Milan's chain", lambda d: [vector("snp_vcek_turin.der"), vector("amd_ask_ark_milan.pem")], (),
     2, r"snp_vcek_turin\.der: issued by CN=SEV-Turin,.*which no file holds \(given: CN=SEV-Milan"),
    ("garbage", lambda d: [d("vcek.der", b"not a certificate at all")], (), 2,
     r"vcek\.der: certificate: not a DER certificate"),
    ("truncated DER", lambda d: [d("vcek.der", (SNP / "snp_vcek_milan.der").read_bytes()[:-40]),
                                 vector("amd_ask_ark_milan.pem")], (), 2, r"vcek\.der: certificate: not a DER"),
    ("a chain and no key", lambda d: [vector("amd_ask_ark_milan.pem")], (), 2,
     r"amd_ask_ark_milan\.pem: no VCEK or VLEK among them"),
    ("another chip than --chip-id", lambda d: [vector("snp_vcek_turin.der"), vector("amd_ask_ark_turin.pem")],
     ("--chip-id", "1e550a8ee5cf9f4d"), 2, r"snp_vcek_turin\.der: hwID: expected 1e550a8ee5cf9f4d \(--chip-id\), got "
     r"3b42092f69c656d3$"),
    ("another TCB than --tcb", lambda d: [vector("snp_vcek_turin.der"), vector("amd_ask_ark_turin.pem")],
     ("--tcb", "bl1-tee0-snp3-ucode71-fmc0"), 2, r"SPLs: expected bl1-tee0-snp3-ucode71-fmc0 \(--tcb\), got "
     r"bl1-tee0-snp2-ucode71-fmc0$"),
    ("a --tcb without the FMC for Turin", lambda d: [vector("snp_vcek_turin.der"), vector("amd_ask_ark_turin.pem")],
     ("--tcb", MILAN_TCB), 2, r"--tcb 'bl2-tee0-snp5-ucode68': expected a Turin TCB such as "
     r"bl0-tee0-snp0-ucode0-fmc0"),
    ("a missing file", lambda d: [str(SNP / "absent.der")], (), 2, r"import-vcek .*absent\.der: cannot read it"),
]


@pytest.mark.parametrize(("files", "options", "code", "error"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_a_refused_import_is_one_line_and_changes_nothing(site, files, options, code, error):
    assert site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))[0] == 0
    before = tree(site.cache)

    def write(name: str, data: bytes) -> str:
        (site.tmp_path / name).write_bytes(data)
        return str(site.tmp_path / name)

    refused, out, err = site.run("import-vcek", *files(write), *options)
    assert (refused, out) == (code, "") and err.count("\n") == 1, err
    assert err.startswith("enclave-ike: ") and re.search(error, err.removeprefix("enclave-ike: ").strip()), err
    assert tree(site.cache) == before  # nothing written, no temporary file left


# --- snp-id ---

def test_snp_id_prints_what_fetch_vcek_needs(site, tmp_path):
    turin = (0, f"Turin {TURIN_CHIP} {TURIN_TCB}\n")
    assert site.run("snp-id", "--report", vector("snp_report_turin.bin"))[:2] == turin
    code, out, err = site.run("snp-id", "--report", vector("snp_report_milan.bin"))
    assert (code, out) == (0, f"unknown {MILAN_CHIP} {MILAN_TCB}\n")  # version 2: no CPUID, a note says so
    assert "version 2 report does not name its CPU" in err
    code, out, err = site.run("snp-id", "--report", vector("snp_report_milan_vlek.bin"))
    assert (code, out) == (0, f"Milan VLEK {VLEK_TCB}\n") and "signed by a VLEK" in err
    envelope = tmp_path / "envelope.json"  # what `enclave-ike evidence` prints is read too
    envelope.write_bytes(Envelope(Evidence(EvidenceKind.SEV_SNP, (SNP / "snp_report_turin.bin").read_bytes()),
                                  spki(SoftwareEnclave()), NONCE).encode())
    assert site.run("snp-id", "--report", str(envelope))[:2] == (0, f"Turin {TURIN_CHIP} {TURIN_TCB}\n")
    (tmp_path / "short.bin").write_bytes((SNP / "snp_report_turin.bin").read_bytes()[:100])
    code, _, err = site.run("snp-id", "--report", str(tmp_path / "short.bin"))
    assert code == 2 and err.startswith(f"enclave-ike: {tmp_path / 'short.bin'}: snp_report") and err.count("\n") == 1
    quote = TDX / "tdx_quote_v4_spr_e4.dat"  # the other TEE's evidence is named for what it is
    for command in ("snp-id", "fetch-vcek"):
        code, out, err = site.run(command, "--report", str(quote))
        assert (code, out, err) == (2, "", f"enclave-ike: {quote}: a TDX quote, not an SEV-SNP report: use "
                                           f"`enclave-ike collateral fmspc --quote {quote}` (and fetch)\n")


# --- fetch-vcek, from a KDS on 127.0.0.1 ---

def kds_routes() -> dict[str, tuple[int, bytes, dict[str, str]]]:
    """What AMD's KDS serves for the two real reports: the VCEK as DER, the product's cert_chain as PEM."""
    return {MILAN_URL: (200, (SNP / "snp_vcek_milan.der").read_bytes(), {"Content-Type": "application/x-x509-ca-cert"}),
            "/vcek/v1/Milan/cert_chain": (200, (SNP / "amd_ask_ark_milan.pem").read_bytes(), {}),
            TURIN_URL: (200, (SNP / "snp_vcek_turin.der").read_bytes(), {}),
            "/vcek/v1/Turin/cert_chain": (200, (SNP / "amd_ask_ark_turin.pem").read_bytes(), {})}


def test_fetch_asks_kds_at_the_url_the_real_milan_report_implies_and_keeps_the_vcek(site):
    with fake_pcs(kds_routes()) as (url, seen):
        code, out, err = site.run("fetch-vcek", "--report", vector("snp_report_milan.bin"), "--product", "Milan",
                                  "--kds-url", url, "--timeout", "2")
    assert (code, err) == (0, ""), err
    assert seen == [MILAN_URL, "/vcek/v1/Milan/cert_chain"]
    kept = site.path("milan", MILAN_CHIP, MILAN_TCB)
    assert out == f"fetched the Milan VCEK for chip ID {MILAN_CHIP} at TCB {MILAN_TCB} into {kept}\n"
    assert (kept / "vcek.der").read_bytes() == (SNP / "snp_vcek_milan.der").read_bytes()


def test_fetch_for_turin_asks_with_the_8_byte_hwid_and_the_fmc_spl(site):
    with fake_pcs(kds_routes()) as (url, seen):
        code, _, err = site.run("fetch-vcek", "--report", vector("snp_report_turin.bin"), "--kds-url", url)
    assert (code, err) == (0, "") and seen == [TURIN_URL, "/vcek/v1/Turin/cert_chain"]
    with fake_pcs(kds_routes()) as (url, seen):  # the same from what snp-id prints
        code, _, err = site.run("fetch-vcek", "--product", "turin", "--chip-id", TURIN_CHIP, "--tcb", TURIN_TCB,
                                "--kds-url", url)
    assert (code, err) == (0, "") and seen == [TURIN_URL, "/vcek/v1/Turin/cert_chain"]


def test_fetch_out_writes_what_kds_served_for_an_import_elsewhere(site, tmp_path):
    out_dir = tmp_path / "carry"
    with fake_pcs(kds_routes()) as (url, _):
        code, out, err = site.run("fetch-vcek", "--product", "Milan", "--chip-id", MILAN_CHIP, "--tcb", MILAN_TCB,
                                  "--kds-url", url, "--out", str(out_dir))
    assert (code, err) == (0, ""), err
    assert out.endswith(f"(import it with `enclave-ike collateral import-vcek {out_dir / 'vcek.der'} "
                        f"{out_dir / 'cert_chain.pem'}`)\n")
    assert read_dir(out_dir) == {"vcek.der": (SNP / "snp_vcek_milan.der").read_bytes(),
                                 "cert_chain.pem": (SNP / "amd_ask_ark_milan.pem").read_bytes()}
    assert not site.cache.exists()
    code, _, err = site.run("import-vcek", str(out_dir / "vcek.der"), str(out_dir / "cert_chain.pem"))
    assert (code, err) == (0, "") and (site.path("milan", MILAN_CHIP, MILAN_TCB) / "vcek.der").exists()


FETCH_ERRORS = [
    ("404", lambda routes: {p: r for p, r in routes.items() if "cert_chain" not in p},
     r"/vcek/v1/Milan/cert_chain: 404 Not Found"),
    ("another chip's VCEK", lambda routes: {**routes, MILAN_URL: routes[TURIN_URL]},
     r"vcek\.issuer: expected CN=SEV-Milan"),
    ("not a certificate", lambda routes: {**routes, MILAN_URL: (200, b"<html>maintenance</html>", {})},
     r"ucodeSPL=68: certificate: not a DER certificate"),
]


@pytest.mark.parametrize(("change", "error"), [case[1:] for case in FETCH_ERRORS], ids=[c[0] for c in FETCH_ERRORS])
def test_a_failed_fetch_is_one_line_exit_1_and_changes_nothing(site, change, error):
    with fake_pcs(change(kds_routes())) as (url, _):
        code, out, err = site.run("fetch-vcek", "--report", vector("snp_report_milan.bin"), "--product", "Milan",
                                  "--kds-url", url)
    assert (code, out) == (1, "") and err.count("\n") == 1 and re.search(error, err.strip()), err
    assert tree(site.cache) == {}


def test_a_vcek_of_another_tcb_than_asked_is_refused(site):
    virtee = (SNP / "snp_vcek_turin_virtee.der").read_bytes()  # another real Turin chip, another TCB
    with fake_pcs({**kds_routes(), TURIN_URL: (200, virtee, {})}) as (url, _):
        code, _, err = site.run("fetch-vcek", "--report", vector("snp_report_turin.bin"), "--kds-url", url)
    assert code == 1 and err.strip().endswith(f"a Turin VCEK for chip ID 1e550a8ee5cf9f4d at TCB bl0-tee0-snp0-ucode9-"
                                              f"fmc0, not the Turin VCEK for chip ID {TURIN_CHIP} at TCB {TURIN_TCB}")


def test_a_silent_kds_and_bad_arguments_are_one_line(site):
    with fake_pcs(kds_routes(), delay=3.0) as (url, _):
        started = time.monotonic()
        code, _, err = site.run("fetch-vcek", "--report", vector("snp_report_turin.bin"), "--kds-url", url,
                                "--timeout", "0.5")
        assert time.monotonic() - started < 2.5
    assert code == 1 and err.strip().endswith(f"{TURIN_URL}: no answer within 0.5 s")
    dripping = {**kds_routes(), "/vcek/v1/Turin/cert_chain": (200, (SNP / "amd_ask_ark_turin.pem").read_bytes(),
                                                              {DRIP: "0.2"})}
    with fake_pcs(dripping) as (url, _):  # a byte every 0.2 s: the timeout bounds the whole request all the same
        started = time.monotonic()
        code, _, err = site.run("fetch-vcek", "--report", vector("snp_report_turin.bin"), "--kds-url", url,
                                "--timeout", "1")
        assert time.monotonic() - started < 2.0
    assert code == 1 and re.search(r"/vcek/v1/Turin/cert_chain: no complete answer within 1 s \(\d of the \d+ bytes\)$",
                                   err.strip()), err
    for argv, words in ((("--report", vector("snp_report_milan.bin")), "does not name its CPU: give --product"),
                        (("--report", vector("snp_report_turin.bin"), "--product", "Milan"), "from a Turin CPU"),
                        (("--chip-id", MILAN_CHIP, "--tcb", MILAN_TCB), "--chip-id: give --product too"),
                        (("--chip-id", MILAN_CHIP, "--product", "Milan"), "--chip-id and --tcb go together"),
                        (("--chip-id", "abcd", "--tcb", MILAN_TCB, "--product", "Milan"), "expected a chip ID"),
                        (("--chip-id", MILAN_CHIP, "--tcb", MILAN_TCB, "--product", "Rome"),
                         "--product 'Rome': expected Milan, Genoa and Turin"),
                        (("--chip-id", MILAN_CHIP, "--tcb", TURIN_TCB, "--product", "Turin"), "not a Turin chip ID")):
        code, out, err = site.run("fetch-vcek", *argv)
        assert (code, out) == (2, "") and words in err and err.count("\n") == 1, err


# --- the endpoint: a report the host gave no certificates for ---

def spki(enclave: SoftwareEnclave) -> bytes:
    return enclave.signer().public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


class FakeSnpEnclave(SoftwareEnclave):
    """Evidence: a real SEV-SNP report, whatever the report data asked for (a real report cannot bind a fresh nonce),
    with the certificates a host would hand out (none, by default)."""

    def __init__(self, report: str, certificates: tuple[bytes, ...] = ()) -> None:
        super().__init__()
        self.report, self.certificates = (SNP / report).read_bytes(), certificates

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.SEV_SNP

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence(EvidenceKind.SEV_SNP, self.report, self.certificates)


def envelopes(enclave: FakeSnpEnclave, cache: Path, count: int = 1) -> list[Envelope]:
    loop = BackgroundLoop()
    endpoint = EvidenceEndpoint(enclave, "@resolver.example", [ip_address("127.0.0.1")], 0,
                                snp_certificates=ServedCertificates(cache))
    try:
        loop.run(endpoint.start())
        return [Envelope.decode(fetch_evidence("127.0.0.1", port_of(endpoint), NONCE)) for _ in range(count)]
    finally:
        loop.run(endpoint.stop())
        loop.close()


def said(caplog: pytest.LogCaptureFixture, level: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "enclave_ike.evidence" and r.levelname == level]


def evidence_checks(envelope: Envelope, report: str, at: datetime, policy: SnpPolicy) -> dict[str, bool]:
    """Each check of the client's appraisal under the shipped ARKs. The report is a real one: its REPORT_DATA cannot
    bind this test's nonce and key, so the key and nonce binding fails, as it must; the evidence checks (signature,
    chain, the key's binding to chip and TCB, guest policy) and the measurement are what the cached VCEK decides."""
    measurement = SnpReport.parse((SNP / report).read_bytes()).measurement
    spec = MeasurementSpec((MeasurementEntry("snp-a", "sev-snp", ((0, measurement),)),))
    appraisal = appraise(envelope, NONCE, spec, TrustAnchors(amd_arks=roots.amd_arks()), at, snp_policy=policy)
    assert not appraisal.binding.passed  # see above
    return {check.name: check.passed for check in (*appraisal.evidence.checks, appraisal.measurements)}


def test_the_endpoint_attaches_the_cached_vcek_and_the_envelope_verifies(site, caplog):
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    enclave = FakeSnpEnclave("snp_report_milan.bin")
    bare = envelopes(enclave, site.cache, 3)
    assert all(e.evidence.certificates == () for e in bare)
    assert said(caplog, "WARNING") == [  # once for three requests, naming chip ID, TCB and the command
        f"no VCEK for chip ID {MILAN_CHIP} at TCB {MILAN_TCB} in {site.cache / 'snp'}: serving SEV-SNP reports without "
        f"certificates, which clients refuse; run `enclave-ike collateral fetch-vcek --product Milan|Genoa --chip-id "
        f"{MILAN_CHIP} --tcb {MILAN_TCB}` (or fetch elsewhere with --out DIR and `enclave-ike collateral import-vcek "
        "DIR/vcek.der DIR/cert_chain.pem` here)"]
    at = datetime(2023, 7, 1, tzinfo=UTC)  # inside the VCEK's validity (2022-09-24 to 2029-09-24)
    refused = appraise(bare[0], NONCE, MeasurementSpec(()), TrustAnchors(amd_arks=roots.amd_arks()), at)
    assert "certificates" in {m.field for m in refused.mismatches}
    assert site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))[0] == 0
    caplog.clear()
    (served,) = envelopes(enclave, site.cache)
    assert served.evidence.certificates == ((SNP / "snp_vcek_milan.der").read_bytes(),
                                            *pem_to_der("amd_ask_ark_milan.pem"))
    checks = evidence_checks(served, "snp_report_milan.bin", at, SnpPolicy(allow_debug=True))  # launched with DEBUG
    assert checks == {"report signature": True, "VCEK certificate chain": True, "VCEK binding": True,
                      "guest policy": True, "measurements": True}
    assert said(caplog, "WARNING") == []
    assert said(caplog, "INFO")[-1] == "SEV-SNP reports go out with the cached certificates (the host gives none)"


def test_turin_and_vlek_reports_get_theirs(site):
    for key, chain in (("snp_vcek_turin.der", "amd_ask_ark_turin.pem"), ("snp_vlek_milan.der",
                                                                        "amd_asvk_ark_milan.pem")):
        assert site.run("import-vcek", vector(key), vector(chain))[0] == 0
    (turin,) = envelopes(FakeSnpEnclave("snp_report_turin.bin"), site.cache)
    assert turin.evidence.certificates[0] == (SNP / "snp_vcek_turin.der").read_bytes()
    assert all(evidence_checks(turin, "snp_report_turin.bin", datetime(2025, 10, 1, tzinfo=UTC), SnpPolicy()).values())
    (vlek,) = envelopes(FakeSnpEnclave("snp_report_milan_vlek.bin"), site.cache)
    assert vlek.evidence.certificates[0] == (SNP / "snp_vlek_milan.der").read_bytes()  # the VLEK that signed it
    assert all(evidence_checks(vlek, "snp_report_milan_vlek.bin", datetime(2025, 6, 1, tzinfo=UTC),
                               SnpPolicy()).values())


def test_the_hosts_certificates_win_and_nothing_is_said(site, caplog):
    caplog.set_level(logging.INFO, "enclave_ike.evidence")
    host = ((SNP / "snp_vcek_milan.der").read_bytes(), pem_to_der("amd_ask_ark_milan.pem")[0])
    (served,) = envelopes(FakeSnpEnclave("snp_report_milan.bin", host), site.cache)  # an empty cache
    assert served.evidence.certificates == host
    assert said(caplog, "WARNING") == [] and said(caplog, "INFO")[1:] == []  # only the endpoint's start line


def test_a_sev_snp_server_serves_the_cache_of_its_config(site):
    config = cfg.load(site.config)
    endpoint = for_config(config, FakeSnpEnclave("snp_report_milan.bin"))
    assert endpoint is not None and endpoint.snp_certificates == ServedCertificates(site.cache)
    assert endpoint.tdx_collateral is None
    assert for_config(config, SoftwareEnclave()).snp_certificates is None  # sim: nothing to look up


def test_a_cache_without_the_chain_is_said_and_the_report_goes_out_alone(site, caplog):
    assert site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))[0] == 0
    site.path("milan", "ask.pem").unlink()  # by hand
    (served,) = envelopes(FakeSnpEnclave("snp_report_milan.bin"), site.cache)
    assert served.evidence.certificates == ()
    (line,) = said(caplog, "WARNING")
    assert line.startswith(f"SEV-SNP certificates in {site.cache / 'snp'} unusable (") and "ask.pem: missing" in line




@pytest.mark.parametrize("name", ["vcek.der", "ask.pem", "ark.pem"])
def test_a_directory_where_a_cached_certificate_should_be_is_said_and_the_report_goes_out_alone(site, caplog, name):
    assert site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))[0] == 0
    planted = site.path("milan", MILAN_CHIP, MILAN_TCB, name) if name == "vcek.der" else site.path("milan", name)
    planted.unlink()
    planted.mkdir()  # by hand
    (served,) = envelopes(FakeSnpEnclave("snp_report_milan.bin"), site.cache)
    assert served.evidence.certificates == ()
    (line,) = said(caplog, "WARNING")
    assert line.startswith(f"SEV-SNP certificates in {site.cache / 'snp'} unusable ({planted}: not a regular file)")
    code, out, _ = site.run("show")
    assert code == 1 and f"unusable: {planted}: not a regular file" in out
    if name != "vcek.der":  # an import that needs the chain file says which one, exit 2, and changes nothing
        before = tree(site.cache)
        code, out, err = site.run("import-vcek", vector("snp_vcek_milan.der"), vector("amd_ask_ark_milan.pem"))
        assert (code, out, err) == (2, "", f"enclave-ike: {planted}: not a regular file\n")
        assert tree(site.cache) == before and planted.is_dir()


def test_a_directory_or_a_fifo_given_as_a_certificate_file_is_one_line(site):
    fifo = site.tmp_path / "vcek.der"
    os.mkfifo(fifo)  # not waited on
    for given in (site.tmp_path, fifo):
        code, out, err = site.run("import-vcek", str(given))
        assert (code, out, err) == (2, "", f"enclave-ike: import-vcek {given}: not a regular file\n")
