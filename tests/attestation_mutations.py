"""The negative corpus of the attestation verifiers, one table for every kind of real evidence, and the layout and
mutation helpers the attestation tests share.

The kinds (tests/vectors/attestation; provenance in its SOURCES.md), each judged at a time inside its validity:

    tdx-v4    tdx_quote_v4_spr_e4.dat, Intel's root and collateral (FMSPC 50806f000000)       at 2023-07-01
    tdx-v5    tdx_quote_v5_td15.dat, the same root and collateral (for another platform)        at 2026-02-03
    snp-vcek  snp_report_milan.bin, snp_vcek_milan.der, amd_ask_ark_milan.pem                   at 2023-07-01
    snp-vlek  snp_report_milan_vlek.bin, snp_vlek_milan.der, amd_asvk_ark_milan.pem             at 2025-06-01
    snp-turin snp_report_turin.bin, snp_vcek_turin.der, amd_ask_ark_turin.pem                   at 2025-10-01
    snp-genoa snp_report_genoa.bin, snp_vcek_genoa.pem, amd_ask_ark_genoa.pem                   at 2026-02-20

"SNP" below is all four SNP kinds; where they differ, the row says so (Turin reads TCB_VERSION FMC first and its
VCEK's hwID is 8 bytes, so the same bit of REPORTED_TCB is its FMC SVN, not its bootloader's).

Every class applied to every kind (tests/test_attestation_corpus.py; its ids read `kind/class/variant`). What a
mutation is expected to do, one of:
- Format(field): EvidenceFormatError naming `field` (malformed: truncated, a length past its span, undecodable);
- Unsupported(field): UnsupportedEvidence naming `field` (well-formed, of a version or type not handled);
- Fails{field: check}: a Verification in which the named check fails with a Mismatch of that field, and exactly
  these fields are added to what the unmutated evidence gives (authentic-but-wrong);
- Accepted: the same result as the unmutated evidence (the verifier deliberately ignores what was changed).
Each case also runs its control, the unmutated evidence through the same call, which must not show what the case
expects (no error; none of the fields), so every case can fail. "n/a" says why a class does not apply to a kind.

class                            TDX v4 / v5 quote  |  SNP VCEK / VLEK report
bitflip/header                   TDX: header user data, QE vendor ID: Fails{signature_data.signature: quote signature}
                                      (+ header.qe_vendor_id: QE identity)
                                 SNP: version, guest SVN, policy, family ID, VMPL: Fails{signature: report signature}
bitflip/body                     TDX: TEE_TCB_SVN, MRTD, RTMR3, REPORTDATA (v5 also TEE_TCB_SVN2, MRSERVICETD):
                                      Fails{signature_data.signature}; v5's body descriptor: its type 3 to 2 or a
                                      size bit Format(body_descriptor.size), to 7 or 259 Unsupported(.type)
                                 SNP: REPORT_DATA, MEASUREMENT, HOST_DATA, LAUNCH_TCB, the last signed byte:
                                      Fails{signature}; CHIP_ID (VCEK + chip_id: VCEK binding; a VLEK has none),
                                      REPORTED_TCB (+ reported_tcb.bootloader; Turin: .fmc), SIGNING_KEY
                                      (+ signer_info.signing_key)
bitflip/signature                TDX: quote signature r, s: Fails{signature_data.signature}
                                 SNP: signature r, s: Fails{signature}
bitflip/signature-data-size      TDX: Format(signature_data or its certification data: the span is off by one)
                                 SNP: n/a, no declared sizes
bitflip/attestation-key          TDX: Fails{signature_data.attestation_key: quote signature,
                                      qe_report.report_data: attestation key binding}
                                 SNP: n/a, the key is the VCEK/VLEK's (bitflip/key-certificate-key)
bitflip/qe-report                TDX: MRENCLAVE, MRSIGNER (+ qe_report.mr_signer: QE identity), REPORTDATA
                                      (+ qe_report.report_data: binding): Fails{qe_report_signature}
                                 SNP: n/a, no quoting enclave (nor for qe-report-signature and qe-auth-data)
bitflip/qe-report-signature      TDX: Fails{qe_report_signature: QE report signature}
bitflip/qe-auth-data             TDX: Fails{qe_report.report_data: attestation key binding}
bitflip/reserved                 TDX: QE report reserved1 and reserved4 (signed by the PCK): Fails{qe_report_signature};
                                      the quote has no other reserved bytes
                                 SNP: reserved0, reserved4 (signed): Fails{signature}; signature_reserved (not
                                      signed): Accepted
bitflip/key-certificate-signature  TDX: PCK leaf: Fails{pck_leaf.signature: PCK certificate chain}
                                 SNP: Fails{vcek.signature / vlek.signature: VCEK / VLEK certificate chain}
bitflip/key-certificate-key      TDX: the PCK leaf's point off the curve: Format(pck_chain[0])
                                 SNP: the VCEK's / VLEK's point off the curve: Format(vcek / vlek)
bitflip/intermediate-signature   TDX: PCK platform CA: Fails{pck_ca.signature}
                                 SNP: ASK / ASVK: Fails{ask.signature / asvk.signature}
bitflip/root-signature           TDX: the caller's Intel root: Fails{intel_root.signature, pck_chain.root,
                                      tcb_signing_chain.root}
                                 SNP: the caller's ARK: Fails{ark.signature}
bitflip/collateral               TDX: TCB info body and signature, QE identity body: Fails{tcb_info.signature /
                                      qe_identity.signature}
                                 SNP: n/a, no collateral beyond the chain
truncate/<offset>                TDX: in the header; at body, descriptor (v5), signature data size, signature data,
                                      QE report, PCK chain, last byte: Format(the field at the cut)
                                 SNP: at version, guest SVN, REPORT_DATA, MEASUREMENT, CHIP_ID, signature, last byte:
                                      Format(field, offset)
length/<field>                   TDX: signature data, certification data, QE auth data, PCK chain sizes past their
                                      span: Format; v5 body sizes other than 648: Format(body_descriptor.size)
                                 SNP: n/a, 1184 bytes with no declared lengths (trailing covers the size)
trailing                         TDX: bytes after the signature data (changed, absent) are not signed: Accepted
                                 SNP: a byte after the 1184: Format(snp_report)
unsupported/version              TDX: 6: Unsupported(header.version)
                                 SNP: 0, 1, 6, 0xffffffff: Unsupported(version)
unsupported/tee-type             TDX: 0x00 (SGX, named before the version), 0x7f: Unsupported(header.tee_type)
                                 SNP: the CPU of a version 3 report: family 0x17 Unsupported(cpuid_fam_id), family 0x19
                                      model 0x21 (no SEV-SNP) Unsupported(cpuid_mod_id)
unsupported/key-type             TDX: attestation key type 3 (P-384): Unsupported(header.attestation_key_type)
                                 SNP: signature algorithm 3: Unsupported(signature_algo)
unsupported/signing-key          TDX: certification data type 5 outside, 4 inside: Unsupported(...certification.type)
                                 SNP: SIGNING_KEY 7 (none), 2, 3 (reserved): Unsupported(signer_info.signing_key)
unsupported/body-type            TDX v5: 1 (SGX), 0, 4, 0xffff: Unsupported(body_descriptor.type); v4: n/a
                                 SNP: n/a, one report layout
unsupported/product              TDX: n/a, a PCK names no product (its platform is the FMSPC: collateral/other-platform)
                                 SNP: a key certificate saying Venice-A0: Unsupported(vcek.productName / vlek...)
chain/other-vendor               TDX: AMD's Milan ARK as the root: Fails{pck_chain.root, pck_ca.issuer, ...}
                                 SNP: Intel's root as the ARK: Fails{ask.issuer / asvk.issuer, ark.signature_algorithm}
chain/impostor-root              TDX: a root named "Intel SGX Root CA" with another key: Fails{pck_chain.root,
                                      pck_ca.signature, ...}
                                 SNP: an ARK named "ARK-Milan" with another key: Fails{ask.signature / asvk.signature}
chain/other-product              TDX: n/a, one Intel root for every platform
                                 SNP: Genoa's chain (Turin, Genoa: Milan's): Fails{vcek.issuer / vlek.issuer}; the
                                      ASK/ASVK under the other product's ARK: Fails{ask.issuer / asvk.issuer}
chain/other-key-kind             TDX: n/a, one kind of PCK
                                 SNP: the other kind's key and chain (a VLEK for a VCEK report and back):
                                      Fails{signer_info.signing_key: binding, signature, ...}; this kind's key under
                                      the other kind's issuer: Fails{vcek.issuer / vlek.issuer}
chain/no-vendor-extensions       TDX: the PCK CA in the leaf's place: Format(pck_leaf.sgx_extensions)
                                 SNP: the ASK / ASVK in the key's place: Format(vcek.extensions.... / vlek....)
time/expired                     TDX: 2053 (v4), 2034 (v5): Fails{pck_leaf.not_after, pck_ca.not_after, ...}
                                 SNP: 2030 (VCEK), 2026 (VLEK), 2033 (Turin), 2032-06 (Genoa):
                                      Fails{vcek.not_after / vlek.not_after}
time/not-yet-valid               TDX: 2018 (v4), 2023 (v5): Fails{pck_leaf.not_before, ...}
                                 SNP: 2021, 2024-12-01, 2025-07-01, 2025-01-01 (Genoa):
                                      Fails{vcek.not_before / vlek.not_before}
crl/missing                      TDX: no CRLs: Fails{pck_leaf.revocation, pck_ca.revocation, tcb_signer.revocation}
                                 SNP: no CRL: Accepted (the ARK's CRL is checked only when the caller passes one)
crl/forged                       TDX: the real PCK CRL with a bit of its signature flipped: Fails{pck_ca_crl.signature}
                                 SNP: a CRL in the ARK's name signed by another key: Fails{ark_crl.signature}
crl/stale                        TDX: the test PKI's PCK CRL past its nextUpdate: Fails{pck_ca_crl.next_update}; v4
                                      also the real one at 2023-07-10
                                 SNP: the test PKI's ARK CRL past its nextUpdate: Fails{ark_crl.next_update}
crl/revoked                      TDX: the test PKI: Fails{pck_leaf.revocation}, Fails{pck_ca.revocation}
                                 SNP: the test PKI: Fails{ask.revocation / asvk.revocation}
collateral/other-platform        TDX: a TCB info of another FMSPC (the test PKI): Fails{tcb_info.fmspc: TCB info}
                                 SNP: n/a, no collateral

What needs a key nobody publishes (a revoked certificate, a stale but validly signed CRL, collateral for another
platform) uses the test PKIs: FakeIntel (netns_tests/harness/fake_intel.py) and FakeAmd (below), which re-sign the
kind's own evidence under roots of their own; the verifier's code path is the one real evidence takes.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any, ClassVar

from attestation_vectors import SNP, TDX
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from ikecommon.attestation.certs import der_certificate, pem_chain
from ikecommon.attestation.outcome import Verification
from ikecommon.attestation.snp import SnpPolicy, SnpReport, SnpVerification, load_ask_ark, verify_report
from ikecommon.attestation.snp.report import LAYOUT
from ikecommon.attestation.snp.verify import load_vcek, load_vlek
from ikecommon.attestation.tdx import TdxCollateral, TdxPolicy, TdxQuote, TdxVerification, verify_quote
from ikectl import cli

# -- bytes ------------------------------------------------------------------------------------------------------------


def flipped(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def with_uint(data: bytes, offset: int, value: int, size: int = 2) -> bytes:
    """`data` with a little-endian integer of `size` bytes written at `offset`."""
    return data[:offset] + value.to_bytes(size, "little") + data[offset + size:]


def fields(result: Verification) -> set[str]:
    return {m.field for m in result.mismatches}


# -- layouts ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TdxLayout:
    """Where a TDX quote's structures start (v4: header, body; v5: header, body descriptor, body; then the
    signature data)."""

    descriptor: int | None  # v5 only
    body: int
    body_size: int
    signed_end: int         # where the quote ends, before an unsigned trailer
    auth_data_size: int

    @property
    def sig_data_size(self) -> int:
        return self.body + self.body_size

    @property
    def sig_data(self) -> int:
        return self.sig_data_size + 4

    @property
    def certification(self) -> int:  # type (2) and size (4) of the QE report certification data
        return self.sig_data + 128

    @property
    def qe_report(self) -> int:
        return self.certification + 6

    @property
    def qe_report_signature(self) -> int:
        return self.qe_report + 384

    @property
    def qe_auth_data(self) -> int:  # after its 2-byte size
        return self.qe_report_signature + 64 + 2

    @property
    def pck_certification(self) -> int:  # type (2) and size (4) of the PCK chain
        return self.qe_auth_data + self.auth_data_size

    @property
    def pck_chain(self) -> int:
        return self.pck_certification + 6


def tdx_layout(quote: bytes) -> TdxLayout:
    parsed = TdxQuote.parse(quote)
    body = 48 if parsed.body_type is None else 54
    return TdxLayout(None if parsed.body_type is None else 48, body, len(parsed.body.to_bytes()),
                     len(quote) - len(parsed.trailing), len(parsed.signature_data.certification.qe_auth_data))


def _snp_offsets() -> dict[str, int]:
    offsets, at = {}, 0
    for name, size, _ in LAYOUT:
        offsets[name] = at
        at += size
    return offsets


SNP_OFFSETS = _snp_offsets()  # every report field's offset, by its name in report.LAYOUT


# -- certificates -----------------------------------------------------------------------------------------------------


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(ders: Sequence[bytes]) -> bytes:
    """DER certificates as one PEM chain (a DER that does not decode stays as it is)."""
    return b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
                    for d in ders)


def pck_chain(quote: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(TdxQuote.parse(quote).signature_data.certification.pck_chain_pem)


def with_pck_chain(quote: bytes, chain: bytes | Sequence[x509.Certificate | bytes]) -> bytes:
    """The quote with another PCK chain: PEM bytes, or certificates (or DERs) in order."""
    if not isinstance(chain, bytes):
        chain = pem([c if isinstance(c, bytes) else der(c) for c in chain])
    parsed = TdxQuote.parse(quote)
    certification = replace(parsed.signature_data.certification, pck_chain_pem=chain)
    return replace(parsed, signature_data=replace(parsed.signature_data, certification=certification)).to_bytes()


def signature_flipped(cert: x509.Certificate) -> x509.Certificate:
    """The certificate with one bit of its signature (the end of its DER) flipped."""
    data = der(cert)
    return der_certificate(flipped(data, len(data) - 1), "flipped")  # quiet about AMD's serial 0


def key_flipped(cert: x509.Certificate) -> bytes:
    """The certificate's DER with one bit of its EC public point flipped: the point is off the curve."""
    data = der(cert)
    point = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return flipped(data, data.index(point) + 10)


def name_of(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "enclave-ike tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


RSA_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def impostor(root: x509.Certificate) -> x509.Certificate:
    """A self-signed root with the name of `root` and a key of its own, signed the way its vendor signs (ECDSA
    P-256 for Intel, RSASSA-PSS SHA-384 for AMD), valid 2000 to 2100."""
    builder = (x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
               .serial_number(x509.random_serial_number())
               .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2100, 1, 1, tzinfo=UTC))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if isinstance(root.public_key(), ec.EllipticCurvePublicKey):
        ec_key = ec.generate_private_key(ec.SECP256R1())
        return builder.public_key(ec_key.public_key()).sign(ec_key, hashes.SHA256())
    rsa_key = rsa.generate_private_key(65537, 2048)
    return builder.public_key(rsa_key.public_key()).sign(rsa_key, hashes.SHA384(), rsa_padding=RSA_PSS)


# -- the kinds --------------------------------------------------------------------------------------------------------


def tdx_file(name: str) -> bytes:
    return (TDX / name).read_bytes()


@cache
def intel_root() -> x509.Certificate:
    return x509.load_pem_x509_certificate(tdx_file("intel_sgx_root_ca.pem"))


TDX_CRLS = ("intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der")


def intel_collateral(*, crls: Sequence[bytes] | None = None, tcb_info: bytes | None = None,
                     qe_identity: bytes | None = None) -> TdxCollateral:
    """The shipped collateral (FMSPC 50806f000000), with any document replaced."""
    return TdxCollateral.load(tcb_info=tcb_info or tdx_file("tdx_tcbinfo_v3_fmspc_50806f000000.json"),
                              qe_identity=qe_identity or tdx_file("tdx_qe_identity_v2.json"),
                              tcb_signing_chain=tdx_file("intel_tcb_signing_chain.pem"),
                              crls=[tdx_file(c) for c in TDX_CRLS] if crls is None else crls)


@cache
def real_collateral() -> TdxCollateral:
    return intel_collateral()


@dataclass(frozen=True)
class Kind:
    """A kind of real evidence: its name in the corpus ids, its file, and a time inside its validity."""

    name: str
    file: str
    at: datetime

    DIRECTORY: ClassVar[Path]

    @cached_property
    def evidence(self) -> bytes:
        return (self.DIRECTORY / self.file).read_bytes()


@dataclass(frozen=True)
class TdxKind(Kind):
    DIRECTORY: ClassVar[Path] = TDX

    @cached_property
    def layout(self) -> TdxLayout:
        return tdx_layout(self.evidence)

    @property
    def version(self) -> int:
        return TdxQuote.parse(self.evidence).header.version

    def verify(self, evidence: bytes | None = None, *, at: datetime | None = None,
               root: x509.Certificate | None = None, collateral: TdxCollateral | None = None,
               policy: TdxPolicy | None = None) -> TdxVerification:
        return verify_quote(self.evidence if evidence is None else evidence, root=root or intel_root(),
                            collateral=collateral or real_collateral(), at=at or self.at, policy=policy)


def snp_file(name: str) -> bytes:
    return (SNP / name).read_bytes()


@cache
def amd_chain(name: str) -> tuple[x509.Certificate, x509.Certificate]:
    """An AMD KDS cert_chain (`amd_ask_ark_milan.pem`, ...): the ASK or ASVK, then the ARK."""
    return load_ask_ark(snp_file(name))


@dataclass(frozen=True)
class SnpKind(Kind):
    """A report with its key (VCEK or VLEK) and its product's chain. The key is given as DER, as an envelope
    carries it: loading it is part of what is judged."""

    key_file: str
    chain_file: str
    policy: SnpPolicy
    other_product: str  # the same kind of chain of another product

    DIRECTORY: ClassVar[Path] = SNP

    @property
    def key_kind(self) -> str:  # "vcek" or "vlek": how the verifier names the key and its issuer
        return "vlek" if "vlek" in self.key_file else "vcek"

    @property
    def issuer(self) -> str:
        return "asvk" if self.key_kind == "vlek" else "ask"

    @cached_property
    def key_der(self) -> bytes:
        data = snp_file(self.key_file)  # DER as AMD's KDS serves it, or PEM (Genoa's, as trustee ships it)
        return der(pem_chain(data, self.key_file)[0]) if data.startswith(b"-----BEGIN") else data

    @property
    def key(self) -> x509.Certificate:
        return (load_vlek if self.key_kind == "vlek" else load_vcek)(self.key_der)

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        return amd_chain(self.chain_file)

    def verify(self, evidence: bytes | None = None, *, at: datetime | None = None, key_der: bytes | None = None,
               key: x509.Certificate | None = None, chain: tuple[x509.Certificate, x509.Certificate] | None = None,
               crls: Sequence[x509.CertificateRevocationList] = (),
               policy: SnpPolicy | None = None) -> SnpVerification:
        if key is None:
            key = (load_vlek if self.key_kind == "vlek" else load_vcek)(key_der or self.key_der)
        ask, ark = chain or self.chain
        return verify_report(self.evidence if evidence is None else evidence, vcek=key, ask=ask, ark=ark,
                             at=at or self.at, policy=policy or self.policy, crls=crls)


TDX_V4 = TdxKind("tdx-v4", "tdx_quote_v4_spr_e4.dat", datetime(2023, 7, 1, tzinfo=UTC))
TDX_V5 = TdxKind("tdx-v5", "tdx_quote_v5_td15.dat", datetime(2026, 2, 3, 1, tzinfo=UTC))
# The Milan VCEK report was launched with DEBUG set: its kind allows it, so the unmutated report verifies.
SNP_VCEK = SnpKind("snp-vcek", "snp_report_milan.bin", datetime(2023, 7, 1, tzinfo=UTC), "snp_vcek_milan.der",
                   "amd_ask_ark_milan.pem", SnpPolicy(allow_debug=True), "amd_ask_ark_genoa.pem")
SNP_VLEK = SnpKind("snp-vlek", "snp_report_milan_vlek.bin", datetime(2025, 6, 1, tzinfo=UTC), "snp_vlek_milan.der",
                   "amd_asvk_ark_milan.pem", SnpPolicy(), "amd_asvk_ark_genoa.pem")
# Turin (Oak Containers, version 5): its TCB_VERSION puts the FMC first, its VCEK's hwID is 8 bytes.
SNP_TURIN = SnpKind("snp-turin", "snp_report_turin.bin", datetime(2025, 10, 1, tzinfo=UTC), "snp_vcek_turin.der",
                    "amd_ask_ark_turin.pem", SnpPolicy(), "amd_ask_ark_milan.pem")
# Genoa (an Azure VM's report, version 3, family 0x19 model 0x11): Milan's TCB layout and 64-byte hwID.
SNP_GENOA = SnpKind("snp-genoa", "snp_report_genoa.bin", datetime(2026, 2, 20, tzinfo=UTC), "snp_vcek_genoa.pem",
                    "amd_ask_ark_genoa.pem", SnpPolicy(), "amd_ask_ark_milan.pem")
KINDS: tuple[TdxKind | SnpKind, ...] = (TDX_V4, TDX_V5, SNP_VCEK, SNP_VLEK, SNP_TURIN, SNP_GENOA)


# -- a test PKI in AMD's place ----------------------------------------------------------------------------------------


class FakeAmd:
    """ARK and ASK (RSA, signing with RSASSA-PSS SHA-384 as AMD does) and a P-384 key certificate carrying the AMD
    extensions of the kind's real VCEK or VLEK (`vcek`, whichever kind it is, and `vcek_key`); it re-signs the kind's
    real report, or another, with that key."""

    _instances: dict[tuple[type, str], FakeAmd] = {}  # noqa: RUF012 (one per kind, made once: RSA keys are slow)

    def __init__(self, kind: SnpKind | None = None) -> None:
        self.kind = kind = kind or SNP_VCEK
        self.ark_key = rsa.generate_private_key(65537, 2048)
        self.ask_key = rsa.generate_private_key(65537, 2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = self._cert("ARK-Test", self.ark_key, None, ca=True)
        self.ask = self._cert("SEV-Test", self.ask_key, (self.ark, self.ark_key), ca=True)
        self.vcek = self._cert(f"SEV-{kind.key_kind.upper()}", self.vcek_key, (self.ask, self.ask_key), ca=False,
                               extra=self.amd_extensions())

    @classmethod
    def instance(cls, kind: SnpKind | None = None) -> FakeAmd:
        kind = kind or SNP_VCEK
        if (cls, kind.name) not in cls._instances:
            cls._instances[cls, kind.name] = cls(kind)
        return cls._instances[cls, kind.name]

    def amd_extensions(self, **values: bytes) -> list[x509.Extension[x509.ExtensionType]]:
        """The real key's AMD extensions, with some values (by OID, DER) replaced."""
        return [x509.Extension(e.oid, e.critical, x509.UnrecognizedExtension(e.oid, values[e.oid.dotted_string]))
                if e.oid.dotted_string in values else e
                for e in self.kind.key.extensions if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704.")]

    @staticmethod
    def _cert(common_name: str, key: Any, issuer: tuple[x509.Certificate, Any] | None, *, ca: bool,
             extra: Sequence[x509.Extension[x509.ExtensionType]] = ()) -> x509.Certificate:
        issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name_of(common_name), key)
        builder = (x509.CertificateBuilder().subject_name(name_of(common_name)).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(datetime(2023, 1, 1, tzinfo=UTC))
                   .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for extension in extra:
            builder = builder.add_extension(extension.value, critical=False)
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=RSA_PSS)

    def report(self, base: bytes | None = None, **changes: Any) -> bytes:
        """`base` (the kind's report by default) with fields changed, signed by `vcek_key`."""
        unsigned = replace(SnpReport.parse(base or self.kind.evidence), **changes)
        r, s = decode_dss_signature(self.vcek_key.sign(unsigned.signed_bytes, ec.ECDSA(hashes.SHA384())))
        return replace(unsigned, signature_r=r.to_bytes(72, "little"), signature_s=s.to_bytes(72, "little")).to_bytes()

    def crl(self, revoked: tuple[x509.Certificate, ...] = (), key: rsa.RSAPrivateKey | None = None, *,
            next_update: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> x509.CertificateRevocationList:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
                   .last_update(datetime(2023, 6, 1, tzinfo=UTC)).next_update(next_update))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(datetime(2023, 6, 1, tzinfo=UTC)).build())
        return builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=RSA_PSS)

    def verify(self, report: bytes | None = None, **kwargs: Any) -> SnpVerification:
        kwargs.setdefault("chain", (self.ask, self.ark))
        kwargs.setdefault("key", self.vcek)
        return self.kind.verify(report or self.report(), **kwargs)


def snp_trust_check(tmp_path: Path, report: str, ark: x509.Certificate, names: Sequence[str], *extra: str) -> int:
    """`ikectl trust check` on the report `report` of sev-snp/, with `ark` the only AMD root trusted and the named files
    of sev-snp/ in its --certs directory; its exit status."""
    ark_file = tmp_path / "ark.pem"
    ark_file.write_bytes(ark.public_bytes(serialization.Encoding.PEM))
    config = tmp_path / "ikectl.toml"
    config.write_text(f'[paths]\nrun_dir = "{tmp_path / "run"}"\ntrust_dir = "{tmp_path / "trust"}"\n[trust]\n'
                      f'amd_arks = ["{ark_file}"]\n')
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in names:
        (certs / name).write_bytes(snp_file(name))
    return cli.main(["--config", str(config), "trust", "check", str(SNP / report), "--certs", str(certs), *extra])
