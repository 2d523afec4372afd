"""The AMD extensions of a VCEK certificate: which chip (hwID) and which TCB (the SPLs) the key was derived for.

    1.3.6.1.4.1.3704.1.1  structVersion INTEGER       1.3.6.1.4.1.3704.1.2  productName IA5String ("Milan-B0")
    1.3.6.1.4.1.3704.1.3.1 bootloader SPL, .3.2 TEE SPL, .3.3 SNP SPL, .3.8 microcode SPL: INTEGERs
    1.3.6.1.4.1.3704.1.4  hwID: the chip ID, 64 raw bytes (not DER-wrapped)
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .. import der
from ..errors import EvidenceFormatError
from .report import TcbVersion

AMD = "1.3.6.1.4.1.3704.1"
_WHAT = "vcek.extensions"


@dataclass(frozen=True)
class VcekExtensions:
    product_name: str
    tcb: TcbVersion
    hw_id: bytes


def vcek_extensions(cert: x509.Certificate) -> VcekExtensions:
    spl = {name: der.integer(der.single(_raw(cert, f"{AMD}.3.{n}"), der.INTEGER, f"{_WHAT}.{name}"),
                             f"{_WHAT}.{name}")
           for name, n in (("bootloader", 1), ("tee", 2), ("snp", 3), ("microcode", 8))}
    for name, value in spl.items():
        if not 0 <= value <= 0xFF:
            raise EvidenceFormatError(f"{_WHAT}.{name}", None, f"SPL {value} does not fit a byte")
    product = der.single(_raw(cert, f"{AMD}.2"), der.IA5_STRING, f"{_WHAT}.productName").value
    hw_id = _raw(cert, f"{AMD}.4")
    if len(hw_id) == 66 and hw_id[:2] == b"\x04\x40":  # tolerate the DER-wrapped form too
        hw_id = hw_id[2:]
    if len(hw_id) != 64:
        raise EvidenceFormatError(f"{_WHAT}.hwID", None, f"expected 64 bytes, got {len(hw_id)}")
    return VcekExtensions(product.decode("ascii", "replace"), TcbVersion.of(**spl), hw_id)


def _raw(cert: x509.Certificate, oid: str) -> bytes:
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        raise EvidenceFormatError(f"{_WHAT}.{oid}", None, "missing from the VCEK") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError(f"{_WHAT}.{oid}", None, "unexpected extension type")
    return value.value
