"""The vendors' roots that ship with the package (ikecommon/attestation/roots.py): each loads, is a self-signed CA and
is the certificate its pinned fingerprint names; they are the roots of the real evidence vectors, so the real Milan
and Turin reports verify with them alone, and `ikectl trust check` does with a config that names no roots; the
fingerprints docs/attestation.md and SOURCES.md print are the files'; a file that was altered is refused, loudly."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from attestation_vectors import SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ikecommon.attestation import roots
from ikecommon.attestation.roots import SHIPPED, ShippedRoot, ShippedRootError, Vendor
from ikecommon.attestation.sim import sim_root_certificate
from ikecommon.attestation.snp import SnpPolicy, load_ask_ark, load_vcek, verify_report
from ikecommon.attestation.verify import TrustAnchors
from ikectl import anchors, cli, config
from ikectl.truststore import Anchors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "ikecommon/attestation/data/roots"
DOCS = ROOT / "docs/attestation.md"
MILAN_REPORT = SNP / "snp_report_milan.bin"
AT = datetime(2023, 7, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Every test loads the files itself, and leaves no tampered root cached for the next."""
    roots.certificate.cache_clear()
    yield
    roots.certificate.cache_clear()


def vector_ark(product: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates((SNP / f"amd_ask_ark_{product}.pem").read_bytes())[1]


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the files ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("root", SHIPPED, ids=lambda root: root.name)
def test_each_root_loads_is_a_self_signed_ca_and_matches_its_fingerprint(root: ShippedRoot):
    cert = roots.certificate(root)
    assert roots.fingerprint(cert) == root.sha256
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == root.name
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (DATA / root.file).is_file() and root.path == str((DATA / root.file).relative_to(ROOT))


def test_only_roots_ship_and_every_file_is_declared():
    assert {path.name for path in DATA.iterdir()} == {root.file for root in SHIPPED} | {"SOURCES.md"}
    for path in DATA.glob("*.pem"):
        (cert,) = x509.load_pem_x509_certificates(path.read_bytes())  # one certificate: no ASK beside an ARK
        assert cert.issuer == cert.subject, path.name
    assert len({root.sha256 for root in SHIPPED}) == len(SHIPPED)


def test_the_intel_root_and_the_arks_are_the_vectors_roots():
    assert roots.intel_sgx_root() == x509.load_pem_x509_certificate((TDX / "intel_sgx_root_ca.pem").read_bytes())
    assert roots.amd_arks() == (vector_ark("milan"), vector_ark("genoa"), vector_ark("turin"))
    assert [root.name for root in SHIPPED if root.vendor == Vendor.AMD] == ["ARK-Milan", "ARK-Genoa", "ARK-Turin"]
    assert TrustAnchors.shipped() == TrustAnchors(intel_root=roots.intel_sgx_root(), amd_arks=roots.amd_arks())


@pytest.mark.parametrize(("product", "at", "policy"), [
    ("milan", AT, SnpPolicy(allow_debug=True)),  # launched with DEBUG allowed
    ("turin", datetime(2025, 10, 1, tzinfo=UTC), None),  # its VCEK is valid from 2025-07-17
])
def test_the_real_reports_verify_with_the_shipped_arks_alone(product, at, policy):
    ask, _ = load_ask_ark((SNP / f"amd_ask_ark_{product}.pem").read_bytes())  # the ARK of the vector is not used
    ark = next(ark for ark in roots.amd_arks() if ark.subject == ask.issuer)
    result = verify_report((SNP / f"snp_report_{product}.bin").read_bytes(),
                           vcek=load_vcek((SNP / f"snp_vcek_{product}.der").read_bytes()), ask=ask, ark=ark, at=at,
                           policy=policy)
    assert result.ok, result.mismatches


# --- the fingerprints printed for readers -------------------------------------------------------------------------

def docs_table() -> list[list[str]]:
    section = DOCS.read_text().split("\n## Roots shipped with the package\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| vendor ")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_docs_print_each_roots_fingerprint_and_expiry():
    table = docs_table()
    assert [row[3] for row in table] == [root.path for root in SHIPPED]
    for (vendor, subject, product, file, sha256, valid_until), root in zip(table, SHIPPED, strict=True):
        cert = x509.load_pem_x509_certificate((ROOT / file).read_bytes())
        assert sha256 == roots.fingerprint(cert) == root.sha256, file
        assert (vendor, product) == (root.vendor, root.product)
        assert subject == cert.subject.rfc4514_string(), file
        assert valid_until == cert.not_valid_after_utc.date().isoformat(), file


def test_sources_md_records_each_fingerprint():
    sources = (DATA / "SOURCES.md").read_text()
    for root in SHIPPED:
        assert root.file in sources, root.file
        assert f"sha256 (DER) {root.sha256}" in sources, root.file


# --- a file that was altered ------------------------------------------------------------------------------------

def serving(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    """The package's data as if these files had been changed after installation."""
    real = roots._read
    monkeypatch.setattr(roots, "_read", lambda root: files.get(root.file) or real(root))


def test_another_self_signed_ca_in_a_roots_file_is_refused(monkeypatch):
    serving(monkeypatch, {"amd-ark-milan.pem": pem(sim_root_certificate())})
    with pytest.raises(ShippedRootError) as info:
        roots.amd_arks()
    message = str(info.value)
    assert message.startswith("ikecommon/attestation/data/roots/amd-ark-milan.pem: not the ARK-Milan this release "
                              "ships (SHA-256 fingerprint ")
    assert f"expected {roots.ARK_MILAN.sha256}" in message and message.endswith("reinstall the package")
    assert info.value.exit_code == 1
    assert roots.intel_sgx_root()  # the other roots still load


def test_a_changed_byte_fails_the_fingerprint_and_the_self_signature():
    data = bytearray(x509.load_pem_x509_certificate((DATA / "amd-ark-genoa.pem").read_bytes())
                     .public_bytes(serialization.Encoding.DER))
    data[-10] ^= 1  # in the signature
    tampered = pem(x509.load_der_x509_certificate(bytes(data)))
    with pytest.raises(ShippedRootError, match=r"amd-ark-genoa\.pem: .*SHA-256 fingerprint [0-9a-f]{64}, expected "
                                               r"4c6598d1.*; not self-signed\)"):
        roots.checked(roots.ARK_GENOA, tampered)


@pytest.mark.parametrize(("content", "problem"), [
    ((SNP / "amd_ask_ark_milan.pem").read_bytes(), "holds 2 certificates, expected 1"),
    (pem(load_ask_ark((SNP / "amd_ask_ark_milan.pem").read_bytes())[0]), "not self-signed"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate: not a PEM certificate chain"),
], ids=["the-whole-chain", "the-ask", "garbage"])
def test_a_chain_an_intermediate_or_garbage_is_refused(content, problem):
    with pytest.raises(ShippedRootError, match=re.escape(problem)):
        roots.checked(roots.ARK_MILAN, content)


def test_a_copy_elsewhere_is_checked_the_same(tmp_path):
    copy = tmp_path / "amd-ark-turin.pem"
    shutil.copy(DATA / "amd-ark-turin.pem", copy)
    assert roots.checked(roots.ARK_TURIN, copy.read_bytes()) == roots.certificate(roots.ARK_TURIN)
    with pytest.raises(ShippedRootError, match="not the Intel SGX Root CA"):
        roots.checked(roots.INTEL_SGX_ROOT, copy.read_bytes())


# --- ikectl: the shipped roots unless the config names others ---------------------------------------------------

def write_config(tmp_path: Path, trust_table: str = "") -> Path:
    path = tmp_path / "ikectl.toml"
    path.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\ntrust_dir = "{tmp_path / "trust"}"\n{trust_table}')
    return path


def milan_certs(tmp_path: Path) -> Path:
    """The VCEK and the ASK alone: the ARK can only be ikectl's."""
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(SNP / "snp_vcek_milan.der", directory / "vcek.der")
    ask, _ = load_ask_ark((SNP / "amd_ask_ark_milan.pem").read_bytes())
    (directory / "ask.pem").write_bytes(pem(ask))
    return directory


def test_trust_check_verifies_the_real_milan_report_with_the_default_config(tmp_path, capsys):
    bare = write_config(tmp_path)
    assert config.load(bare).trust == config.TrustSettings()
    code = cli.main(["--config", str(bare), "trust", "check", str(MILAN_REPORT), "--certs", str(milan_certs(tmp_path))])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "ok    VCEK certificate chain" in out and "authentic:   yes" in out


def test_trust_check_refuses_a_tampered_shipped_root_in_one_line(tmp_path, monkeypatch, capsys):
    serving(monkeypatch, {"amd-ark-milan.pem": pem(vector_ark("genoa"))})
    bare = write_config(tmp_path)
    code = cli.main(["--config", str(bare), "trust", "check", str(MILAN_REPORT), "--certs", str(milan_certs(tmp_path))])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("ikectl: error: ikecommon/attestation/data/roots/amd-ark-milan.pem: not the ARK-Milan")
    assert err.count("\n") == 1


def test_vendor_anchors_are_the_shipped_roots_unless_the_config_names_others(tmp_path):
    assert anchors.trust_anchors(Anchors.VENDOR, config.TrustSettings()) == TrustAnchors.shipped()
    genoa = tmp_path / "ark-genoa.pem"
    genoa.write_bytes(pem(vector_ark("genoa")))
    named = config.load(write_config(tmp_path, f'[trust]\namd_arks = ["{genoa}"]\n')).trust
    assert named.amd_arks == (genoa,) and named.intel_root is None
    named_anchors = anchors.trust_anchors(Anchors.VENDOR, named)
    assert named_anchors.amd_arks == (vector_ark("genoa"),)  # those files only
    assert named_anchors.intel_root == roots.intel_sgx_root()  # the key not given keeps the shipped root
    none = config.load(write_config(tmp_path, "[trust]\namd_arks = []\n")).trust
    assert anchors.trust_anchors(Anchors.VENDOR, none).amd_arks == ()  # an empty list trusts no ARK
