"""The AMD extensions of a VCEK or VLEK certificate: which TCB (the SPLs) the key was derived for, and which chip
(a VCEK's hwID) or which cloud provider (a VLEK's CSP ID) it belongs to.

    1.3.6.1.4.1.3704.1.1  structVersion INTEGER       1.3.6.1.4.1.3704.1.2  productName IA5String ("Milan-B0")
    1.3.6.1.4.1.3704.1.3.1 bootloader SPL, .3.2 TEE SPL, .3.3 SNP SPL, .3.8 microcode SPL: INTEGERs
    1.3.6.1.4.1.3704.1.3.9 FMC SPL: INTEGER; Turin (whose TCB_VERSION has an FMC SVN) only
    1.3.6.1.4.1.3704.1.4  hwID: the chip ID, raw bytes (not DER-wrapped): 64 on Milan and Genoa, 8 on Turin; a VCEK only
    1.3.6.1.4.1.3704.1.5  CSP ID: IA5String naming the cloud provider ("CN=cc-us-east-2.amazonaws.com"); a VLEK only

A VCEK is derived per chip and TCB, signed by the ASK; a VLEK is issued by AMD to a cloud provider per TCB (hashed
with the provider's key, so no chip ID) and signed by the ASVK ("SEV-VLEK-Milan"); both chains end at the ARK.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .. import der
from ..errors import EvidenceFormatError
from .products import MILAN_GENOA_TCB, Product, by_name
from .report import TcbVersion

AMD = "1.3.6.1.4.1.3704.1"
HW_ID, CSP_ID = f"{AMD}.4", f"{AMD}.5"
SPL_ARCS = {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 8, "fmc": 9}  # the SPL of each is {AMD}.3.<arc>
HW_ID_SIZES = (8, 64)


@dataclass(frozen=True)
class VcekExtensions:
    product_name: str
    tcb: TcbVersion
    hw_id: bytes

    kind = "VCEK"

    @property
    def product(self) -> Product | None:
        return by_name(self.product_name)


@dataclass(frozen=True)
class VlekExtensions:
    product_name: str
    tcb: TcbVersion
    csp_id: str

    kind = "VLEK"

    @property
    def product(self) -> Product | None:
        return by_name(self.product_name)


def vcek_extensions(cert: x509.Certificate) -> VcekExtensions:
    name, tcb = _common(cert, "vcek")
    return VcekExtensions(name, tcb, _hw_id(cert, by_name(name)))


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
    """The productName, and the SPLs as a TCB_VERSION in that product's layout (an unknown product's in Milan's, for
    the verifier to refuse by name)."""
    spl = {component: _spl(cert, component, what) for component in MILAN_GENOA_TCB.components}  # every product's
    name = der.single(_raw(cert, f"{AMD}.2", what), der.IA5_STRING, f"{what}.extensions.productName").value
    product_name = name.decode("ascii", "replace")
    product = by_name(product_name)
    layout = product.tcb if product else MILAN_GENOA_TCB
    spl |= {component: _spl(cert, component, what) for component in layout.components if component not in spl}
    return product_name, TcbVersion.of(layout, **spl)


def _spl(cert: x509.Certificate, component: str, what: str) -> int:
    field = f"{what}.extensions.{component}"
    value = der.integer(der.single(_raw(cert, f"{AMD}.3.{SPL_ARCS[component]}", what), der.INTEGER, field), field)
    if not 0 <= value <= 0xFF:
        raise EvidenceFormatError(field, None, f"SPL {value} does not fit a byte")
    return value


def _hw_id(cert: x509.Certificate, product: Product | None) -> bytes:
    """The raw chip ID (the DER-wrapped form is tolerated too), as long as the product's: 8 bytes on Turin, 64
    before."""
    hw_id = _raw(cert, HW_ID, "vcek")
    if len(hw_id) - 2 in HW_ID_SIZES and hw_id[:2] == bytes((der.OCTET_STRING, len(hw_id) - 2)):
        hw_id = hw_id[2:]
    sizes = (product.hw_id_size,) if product else HW_ID_SIZES
    if len(hw_id) not in sizes:
        expected = " or ".join(map(str, sizes)) + (f" ({product.name})" if product else "")
        raise EvidenceFormatError("vcek.extensions.hwID", None, f"expected {expected} bytes, got {len(hw_id)}")
    return hw_id


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
