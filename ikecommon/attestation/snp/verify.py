"""Offline verification of a SEV-SNP attestation report with its VCEK and AMD's ASK/ARK.

Checked, each as its own Check (see docs/attestation.md, "Verifiers"):

- the report signature: ECDSA P-384 with SHA-384 by the VCEK over bytes 0x000-0x29F;
- the chain VCEK <- ASK <- ARK (RSASSA-PSS with SHA-384), the ARK being the root the caller trusts, at the
  caller's time, and against the ARK's CRL when the caller passes one;
- the binding of report and VCEK: its CHIP_ID is the VCEK's hwID and its REPORTED_TCB is the TCB the VCEK was
  issued for;
- the guest policy and VMPL against the caller's SnpPolicy.

A report this verifier cannot judge raises UnsupportedEvidence: signed with another algorithm than ECDSA P-384, by a
VLEK (or no key) rather than a VCEK, or for a product other than Milan and Genoa (the VCEK's productName).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID

from .. import ecdsa
from ..certs import der_certificate, pem_chain
from ..chain import Named, verify_chain
from ..errors import EvidenceFormatError, Mismatch, UnsupportedEvidence
from ..outcome import Check, CheckKind, Verification
from ..times import aware
from .policy import SnpPolicy, policy_mismatches
from .report import SnpReport
from .vcek import VcekExtensions, vcek_extensions

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK = 0
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}
SIGNATURE_ALGO_OFFSET, SIGNER_INFO_OFFSET = 0x34, 0x48
PRODUCTS = ("Milan", "Genoa")  # whose TCB_VERSION layout report.TcbVersion reads


def load_vcek(der: bytes) -> x509.Certificate:
    return der_certificate(der, "vcek")


def load_ask_ark(pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """AMD KDS `cert_chain`: the ASK, then the ARK."""
    certs = pem_chain(pem, "ask_ark")
    if len(certs) != 2:
        raise EvidenceFormatError("ask_ark", None, f"expected 2 certificates (ASK, ARK), found {len(certs)}")
    return certs[0], certs[1]


@dataclass(frozen=True)
class SnpVerification(Verification):
    report: SnpReport = field(repr=False)
    vcek: VcekExtensions

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def chip_id(self) -> bytes:
        return self.report.chip_id


def verify_report(evidence: bytes | SnpReport, *, vcek: x509.Certificate, ask: x509.Certificate,
                  ark: x509.Certificate, at: datetime, policy: SnpPolicy | None = None,
                  crls: Sequence[x509.CertificateRevocationList] = ()) -> SnpVerification:
    """Every check on a SEV-SNP report; raises only EvidenceFormatError (the report or the VCEK does not parse) and
    UnsupportedEvidence (see above)."""
    policy = policy or SnpPolicy()
    at = aware(at)
    report = evidence if isinstance(evidence, SnpReport) else SnpReport.parse(evidence)
    extensions = vcek_extensions(vcek)
    _require_supported(report, extensions)
    chain = [Named("vcek", vcek), Named("ask", ask)]
    checks = (
        Check.of("report signature", CheckKind.SIGNATURE, _report_signature(report, vcek)),
        Check.of("VCEK certificate chain", CheckKind.CERTIFICATES,
              _pss_sha384([*chain, Named("ark", ark)]) + verify_chain(chain, Named("ark", ark), at, crls)),
        Check.of("VCEK binding", CheckKind.BINDING, _vcek_binding(report, extensions)),
        Check.of("guest policy", CheckKind.POLICY, policy_mismatches(report, policy)),
    )
    return SnpVerification(checks, report, extensions)


def _require_supported(report: SnpReport, vcek: VcekExtensions) -> None:
    """What this verifier cannot judge at all: another signature algorithm, a report signed by a VLEK (or by no
    key), a product whose TCB_VERSION it does not read."""
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedEvidence("snp_report.signature_algo", SIGNATURE_ALGO_OFFSET,
                                  f"SEV-SNP signature algorithm {report.signature_algo}",
                                  f"{SIGNATURE_ALGO_ECDSA_P384_SHA384}, ECDSA P-384 with SHA-384")
    if report.signing_key != SIGNING_KEY_VCEK:
        name = SIGNING_KEYS.get(report.signing_key)
        raise UnsupportedEvidence("snp_report.signer_info.signing_key", SIGNER_INFO_OFFSET,
                                  f"SEV-SNP report signed by signing key {report.signing_key}"
                                  + (f" ({name})" if name else ""), f"{SIGNING_KEY_VCEK}, a VCEK")
    if not vcek.product_name.startswith(PRODUCTS):
        raise UnsupportedEvidence("vcek.productName", None, f"SEV-SNP product {vcek.product_name!r}",
                                  " and ".join(PRODUCTS))


def _report_signature(report: SnpReport, vcek: x509.Certificate) -> list[Mismatch]:
    r, s = report.signature
    if not ecdsa.verify(vcek.public_key(), ec.SECP384R1, r, s, report.signed_bytes, hashes.SHA384()):
        return [Mismatch("signature", "a valid ECDSA P-384 signature by the VCEK over bytes 0x000-0x29F",
                         "invalid")]
    return []


def _pss_sha384(certs: Sequence[Named]) -> list[Mismatch]:
    """AMD signs VCEK, ASK and ARK with RSASSA-PSS and SHA-384; anything else was not made by AMD's KDS."""
    return [Mismatch(f"{named.name}.signature_algorithm", "RSASSA-PSS with SHA-384",
                     f"{named.cert.signature_algorithm_oid.dotted_string} with "
                     f"{getattr(named.cert.signature_hash_algorithm, 'name', 'none')}")
            for named in certs
            if named.cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS
            or not isinstance(named.cert.signature_hash_algorithm, hashes.SHA384)]


def _vcek_binding(report: SnpReport, vcek: VcekExtensions) -> list[Mismatch]:
    found = []
    if report.mask_chip_id:
        found.append(Mismatch("signer_info.mask_chip_id", "0 (chip ID present)", "1"))
    elif report.chip_id != vcek.hw_id:
        found.append(Mismatch("chip_id", f"{vcek.hw_id.hex()} (the VCEK's hwID)", report.chip_id.hex()))
    for name, expected in vcek.tcb.components().items():
        actual = report.reported_tcb.components()[name]
        if actual != expected:
            found.append(Mismatch(f"reported_tcb.{name}", f"{expected} (the VCEK's SPL)", str(actual)))
    return found
