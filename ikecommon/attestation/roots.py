"""The vendors' root certificates that ship with the package: the Intel SGX Root CA (for TDX) and AMD's ARKs (for
SEV-SNP), what `TrustAnchors.shipped()` and ikectl's `--anchors vendor` trust when the config names no others.

Only roots ship. Intermediates (Intel's PCK CA and TCB signing certificate, AMD's ASKs and ASVKs) come with the
evidence or its collateral: they are reissued while the roots stay (Intel's TCB signing certificate expired
2025-05-21 and was renewed with the same key), so a copy here would go stale and fail good evidence.

Each file is checked when it is first loaded: its SHA-256 fingerprint (of the DER) must be the one pinned below, and
it must be a self-signed CA. A file that is not is a ShippedRootError: the installed package was altered, and
nothing falls back to trusting it. Where the files come from: data/roots/SOURCES.md; their fingerprints for
readers: docs/attestation.md, "Roots shipped with the package".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from .certs import pem_chain
from .errors import AttestationError, EvidenceFormatError

DATA_DIR = "data/roots"


class Vendor(StrEnum):
    INTEL = "Intel"
    AMD = "AMD"


@dataclass(frozen=True)
class ShippedRoot:
    name: str      # the certificate's common name
    vendor: Vendor
    product: str   # the evidence it anchors
    file: str      # under data/roots/
    sha256: str    # of the DER certificate, lower-case hex: what the file must hold

    @property
    def path(self) -> str:
        return f"ikecommon/attestation/{DATA_DIR}/{self.file}"


INTEL_SGX_ROOT = ShippedRoot("Intel SGX Root CA", Vendor.INTEL, "TDX (and SGX)", "intel-sgx-root-ca.pem",
                             "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3")
ARK_MILAN = ShippedRoot("ARK-Milan", Vendor.AMD, "SEV-SNP on EPYC 7003 (Milan)", "amd-ark-milan.pem",
                        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd")
ARK_GENOA = ShippedRoot("ARK-Genoa", Vendor.AMD, "SEV-SNP on EPYC 9004 (Genoa)", "amd-ark-genoa.pem",
                        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1")
ARK_TURIN = ShippedRoot("ARK-Turin", Vendor.AMD, "SEV-SNP on EPYC 9005 (Turin)", "amd-ark-turin.pem",
                        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a")
SHIPPED = (INTEL_SGX_ROOT, ARK_MILAN, ARK_GENOA, ARK_TURIN)


class ShippedRootError(AttestationError):
    """A root file of the installed package is not the certificate this release ships: reinstall the package."""


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def checked(root: ShippedRoot, pem: bytes) -> x509.Certificate:
    """The certificate in `pem` if it is `root`: its fingerprint, a self-signature and CA rights; otherwise a
    ShippedRootError naming the file and every problem found."""
    try:
        certs = pem_chain(pem, "certificate")
    except EvidenceFormatError as exc:
        raise ShippedRootError(f"{root.path}: {exc}; reinstall the package") from None
    problems = []
    if len(certs) != 1:
        problems.append(f"holds {len(certs)} certificates, expected 1")
    cert = certs[0]
    if (found := fingerprint(cert)) != root.sha256:
        problems.append(f"SHA-256 fingerprint {found}, expected {root.sha256}")
    if cert.issuer != cert.subject or not _self_signed(cert):
        problems.append("not self-signed")
    if not _is_ca(cert):
        problems.append("not a CA that may sign certificates")
    if problems:
        raise ShippedRootError(f"{root.path}: not the {root.name} this release ships ({'; '.join(problems)}): the "
                               "installation was altered; reinstall the package")
    return cert


@cache
def certificate(root: ShippedRoot) -> x509.Certificate:
    return checked(root, _read(root))


def intel_sgx_root() -> x509.Certificate:
    return certificate(INTEL_SGX_ROOT)


def amd_arks() -> tuple[x509.Certificate, ...]:
    """Every ARK shipped (Milan, Genoa, Turin); a verifier picks the one that issued the evidence's ASK."""
    return tuple(certificate(root) for root in SHIPPED if root.vendor == Vendor.AMD)


def _read(root: ShippedRoot) -> bytes:
    # importlib.resources, so that the files are found inside a wheel or a zip as well as in the source tree
    try:
        return resources.files(__package__).joinpath(f"{DATA_DIR}/{root.file}").read_bytes()
    except OSError as exc:
        raise ShippedRootError(f"{root.path}: cannot read it ({exc.strerror or exc}); reinstall the package") from None


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and usage.key_cert_sign
