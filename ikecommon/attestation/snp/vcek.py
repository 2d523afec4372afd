"""The AMD extensions of a VCEK or VLEK certificate: which TCB (the SPLs) the key was derived for, and which chip
(a VCEK's hwID) or which cloud provider (a VLEK's CSP ID) it belongs to.

    1.3.6.1.4.1.3704.1.1  structVersion INTEGER       1.3.6.1.4.1.3704.1.2  productName IA5String ("Milan-B0")
    1.3.6.1.4.1.3704.1.3.1 bootloader SPL, .3.2 TEE SPL, .3.3 SNP SPL, .3.8 microcode SPL: INTEGERs
    1.3.6.1.4.1.3704.1.4  hwID: the chip ID, 64 raw bytes (not DER-wrapped); a VCEK only
    1.3.6.1.4.1.3704.1.5  CSP ID: IA5String naming the cloud provider ("CN=cc-us-east-2.amazonaws.com"); a VLEK only

A VCEK is derived per chip and TCB, signed by the ASK; a VLEK is issued by AMD to a cloud provider per TCB (hashed
with the provider's key, so no chip ID) and signed by the ASVK ("SEV-VLEK-Milan"); both chains end at the ARK.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .. import der
from ..errors import EvidenceFormatError
from .report import TcbVersion

AMD = "1.3.6.1.4.1.3704.1"
HW_ID, CSP_ID = f"{AMD}.4", f"{AMD}.5"


@dataclass(frozen=True)
class VcekExtensions:
    product_name: str
    tcb: TcbVersion
    hw_id: bytes

    kind = "VCEK"


@dataclass(frozen=True)
class VlekExtensions:
    product_name: str
    tcb: TcbVersion
    csp_id: str

    kind = "VLEK"


def vcek_extensions(cert: x509.Certificate) -> VcekExtensions:
    product, tcb = _common(cert, "vcek")
    hw_id = _raw(cert, HW_ID, "vcek")
    if len(hw_id) == 66 and hw_id[:2] == b"\x04\x40":  # tolerate the DER-wrapped form too
        hw_id = hw_id[2:]
    if len(hw_id) != 64:
        raise EvidenceFormatError("vcek.extensions.hwID", None, f"expected 64 bytes, got {len(hw_id)}")
    return VcekExtensions(product, tcb, hw_id)


def vlek_extensions(cert: x509.Certificate) -> VlekExtensions:
    product, tcb = _common(cert, "vlek")
    csp_id = der.single(_raw(cert, CSP_ID, "vlek"), der.IA5_STRING, "vlek.extensions.cspId").value
    return VlekExtensions(product, tcb, csp_id.decode("ascii", "replace"))


def key_extensions(cert: x509.Certificate, expected: str = "VCEK") -> VcekExtensions | VlekExtensions:
    """A VCEK's extensions if the certificate has a hwID, a VLEK's if it has a CSP ID; with neither, read as the
    `expected` kind ("VCEK" or "VLEK"), whose missing extension is the EvidenceFormatError."""
    if _has(cert, HW_ID):
        return vcek_extensions(cert)
    if _has(cert, CSP_ID) or expected == "VLEK":
        return vlek_extensions(cert)
    return vcek_extensions(cert)


def _common(cert: x509.Certificate, what: str) -> tuple[str, TcbVersion]:
    where = f"{what}.extensions"
    spl = {name: der.integer(der.single(_raw(cert, f"{AMD}.3.{n}", what), der.INTEGER, f"{where}.{name}"),
                             f"{where}.{name}")
           for name, n in (("bootloader", 1), ("tee", 2), ("snp", 3), ("microcode", 8))}
    for name, value in spl.items():
        if not 0 <= value <= 0xFF:
            raise EvidenceFormatError(f"{where}.{name}", None, f"SPL {value} does not fit a byte")
    product = der.single(_raw(cert, f"{AMD}.2", what), der.IA5_STRING, f"{where}.productName").value
    return product.decode("ascii", "replace"), TcbVersion.of(**spl)


def _has(cert: x509.Certificate, oid: str) -> bool:
    try:
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return False
    return True


def _raw(cert: x509.Certificate, oid: str, what: str) -> bytes:
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        raise EvidenceFormatError(f"{what}.extensions.{oid}", None, f"missing from the {what.upper()}") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError(f"{what}.extensions.{oid}", None, "unexpected extension type")
    return value.value
