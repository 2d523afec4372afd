"""Offline verification of a SEV-SNP attestation report with its VCEK and AMD's ASK/ARK, or its VLEK and AMD's
ASVK/ARK.

Checked, each as its own Check (see docs/attestation.md, "Verifiers"):

- the report signature: ECDSA P-384 with SHA-384 by the VCEK (or VLEK) over bytes 0x000-0x29F;
- the chain VCEK <- ASK <- ARK, or VLEK <- ASVK <- ARK (RSASSA-PSS with SHA-384), the ARK being the root the caller
  trusts, at the caller's time, and against the ARK's CRL when the caller passes one;
- the binding of report and key: the report's SIGNING_KEY names the kind of key given (a VCEK has a hwID, a VLEK a
  CSP ID), the CPU the report names (version 3 and later) is the key's product, its REPORTED_TCB is the TCB the key
  was issued for, and for a VCEK its CHIP_ID is the VCEK's hwID (a VLEK belongs to a cloud provider, not to a chip);
- the guest policy and VMPL against the caller's SnpPolicy.

The product (Milan, Genoa, Turin: see `products`) decides how the TCB_VERSIONs are read and how long the chip ID is.
It is the one the report's CPUID fields name; a report that names none (version 2) is read as its key's
productName says.

A report this verifier cannot judge raises UnsupportedEvidence: signed with another algorithm than ECDSA P-384, by
no key (SIGNING_KEY 7) or a reserved one, from a CPU of no known product, or with a key whose productName names none.
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
from .products import CHIP_ID_SIZE, Product, names
from .report import SnpReport
from .vcek import VcekExtensions, VlekExtensions, key_extensions

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK, SIGNING_KEY_VLEK = 0, 1
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}
SIGNATURE_ALGO_OFFSET, SIGNER_INFO_OFFSET = 0x34, 0x48


def load_vcek(der: bytes) -> x509.Certificate:
    return der_certificate(der, "vcek")


def load_vlek(der: bytes) -> x509.Certificate:
    return der_certificate(der, "vlek")


def load_ask_ark(pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """AMD KDS `cert_chain`: the ASK, then the ARK (for a VLEK, KDS's `vlek/v1/<product>/cert_chain`: the ASVK, then
    the ARK)."""
    certs = pem_chain(pem, "ask_ark")
    if len(certs) != 2:
        raise EvidenceFormatError("ask_ark", None, f"expected 2 certificates (ASK, ARK), found {len(certs)}")
    return certs[0], certs[1]


@dataclass(frozen=True)
class SnpVerification(Verification):
    report: SnpReport = field(repr=False)  # its TCB_VERSIONs in the product's layout
    key: VcekExtensions | VlekExtensions  # the AMD extensions of the key certificate given
    product: Product                      # the report's CPU's, or (a report that names none) the key's

    @property
    def signing_key(self) -> str:
        """The kind of key the report says signed it: "VCEK" or "VLEK"."""
        return SIGNING_KEYS[self.report.signing_key]

    @property
    def vcek(self) -> VcekExtensions | None:
        return self.key if isinstance(self.key, VcekExtensions) else None

    @property
    def vlek(self) -> VlekExtensions | None:
        return self.key if isinstance(self.key, VlekExtensions) else None

    @property
    def measurement(self) -> bytes:
        return self.report.measurement

    @property
    def report_data(self) -> bytes:
        return self.report.report_data

    @property
    def chip_id(self) -> bytes:
        return self.report.chip_id


def verify_report(evidence: bytes | SnpReport, *, vcek: x509.Certificate | None = None,
                  vlek: x509.Certificate | None = None, ask: x509.Certificate, ark: x509.Certificate, at: datetime,
                  policy: SnpPolicy | None = None,
                  crls: Sequence[x509.CertificateRevocationList] = ()) -> SnpVerification:
    """Every check on a SEV-SNP report; raises only EvidenceFormatError (the report or the key certificate does not
    parse) and UnsupportedEvidence (see above).

    The key certificate is given as `vcek` or `vlek` (one of them); which kind it is, is read from the certificate
    itself (hwID or CSP ID), so a key of the other kind than the report's SIGNING_KEY is a `signer_info.signing_key`
    mismatch, not a different path. `ask` is its issuer: the ASK for a VCEK, the ASVK for a VLEK."""
    if (vcek is None) == (vlek is None):
        raise TypeError("verify_report needs one key certificate: vcek= or vlek=")
    key = vcek if vcek is not None else vlek
    assert key is not None
    policy = policy or SnpPolicy()
    at = aware(at)
    report = evidence if isinstance(evidence, SnpReport) else SnpReport.parse(evidence)
    _require_supported(report)
    extensions = key_extensions(key, SIGNING_KEYS[report.signing_key])
    key_product = _key_product(extensions)
    product = report.product or key_product
    report = report.in_layout(product.tcb)
    name = extensions.kind.lower()
    chain = [Named(name, key), Named("ask" if name == "vcek" else "asvk", ask)]
    checks = (
        Check.of("report signature", CheckKind.SIGNATURE, _report_signature(report, key, extensions.kind)),
        Check.of(f"{extensions.kind} certificate chain", CheckKind.CERTIFICATES,
                 _pss_sha384([*chain, Named("ark", ark)]) + verify_chain(chain, Named("ark", ark), at, crls)),
        Check.of(f"{extensions.kind} binding", CheckKind.BINDING, _key_binding(report, extensions)),
        Check.of("guest policy", CheckKind.POLICY, policy_mismatches(report, policy)),
    )
    return SnpVerification(checks, report, extensions, product)


def _require_supported(report: SnpReport) -> None:
    """What this verifier cannot judge at all: another signature algorithm, a report signed by no key (or a reserved
    one)."""
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedEvidence("snp_report.signature_algo", SIGNATURE_ALGO_OFFSET,
                                  f"SEV-SNP signature algorithm {report.signature_algo}",
                                  f"{SIGNATURE_ALGO_ECDSA_P384_SHA384}, ECDSA P-384 with SHA-384")
    if report.signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK):
        name = SIGNING_KEYS.get(report.signing_key)
        raise UnsupportedEvidence("snp_report.signer_info.signing_key", SIGNER_INFO_OFFSET,
                                  f"SEV-SNP report signed by signing key {report.signing_key}"
                                  + (f" ({name})" if name else ""),
                                  f"{SIGNING_KEY_VCEK}, a VCEK, and {SIGNING_KEY_VLEK}, a VLEK")


def _key_product(key: VcekExtensions | VlekExtensions) -> Product:
    """The product the key's productName names; a product this verifier does not know is unsupported."""
    if key.product is None:
        raise UnsupportedEvidence(f"{key.kind.lower()}.productName", None, f"SEV-SNP product {key.product_name!r}",
                                  names())
    return key.product


def _report_signature(report: SnpReport, key: x509.Certificate, kind: str) -> list[Mismatch]:
    r, s = report.signature
    if not ecdsa.verify(key.public_key(), ec.SECP384R1, r, s, report.signed_bytes, hashes.SHA384()):
        return [Mismatch("signature", f"a valid ECDSA P-384 signature by the {kind} over bytes 0x000-0x29F",
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


def _key_binding(report: SnpReport, key: VcekExtensions | VlekExtensions) -> list[Mismatch]:
    found = []
    signed_by = SIGNING_KEYS[report.signing_key]
    if signed_by != key.kind:
        other = SIGNING_KEY_VLEK if key.kind == "VLEK" else SIGNING_KEY_VCEK
        found.append(Mismatch("signer_info.signing_key", f"{other} ({key.kind}): the key certificate given is a "
                              f"{key.kind}", f"{report.signing_key} ({signed_by})"))
    found += _product_binding(report, key)
    if isinstance(key, VcekExtensions) and signed_by == "VCEK":  # a VLEK is no chip's: nothing to compare
        found += _chip_binding(report, key)
    return found + _tcb_binding(report, key)


def _product_binding(report: SnpReport, key: VcekExtensions | VlekExtensions) -> list[Mismatch]:
    """The CPU a report of version 3 or later names is the product its key was issued for."""
    if report.product is None or report.product == key.product:
        return []
    return [Mismatch("product", f"{key.product_name!r} (the {key.kind}'s productName)",
                     f"{report.product.name} (CPUID family 0x{report.cpuid_fam_id:x} model "
                     f"0x{report.cpuid_mod_id:02x})")]


def _chip_binding(report: SnpReport, key: VcekExtensions) -> list[Mismatch]:
    """CHIP_ID is the VCEK's hwID, zero-padded to 64 bytes (Turin's hwID is 8 bytes)."""
    if report.mask_chip_id:
        return [Mismatch("signer_info.mask_chip_id", "0 (chip ID present)", "1")]
    expected = key.hw_id.ljust(CHIP_ID_SIZE, b"\0")
    if report.chip_id == expected:
        return []
    padded = "" if len(key.hw_id) == CHIP_ID_SIZE else f", {CHIP_ID_SIZE - len(key.hw_id)} zero bytes after it"
    return [Mismatch("chip_id", f"{expected.hex()} (the VCEK's hwID{padded})", report.chip_id.hex())]


def _tcb_binding(report: SnpReport, key: VcekExtensions | VlekExtensions) -> list[Mismatch]:
    """REPORTED_TCB, read in the key's product's layout, holds the SPLs the key was issued for."""
    reported = report.reported_tcb.with_layout(key.tcb.layout).components()
    return [Mismatch(f"reported_tcb.{name}", f"{expected} (the {key.kind}'s SPL)", str(reported[name]))
            for name, expected in key.tcb.components().items() if reported[name] != expected]
