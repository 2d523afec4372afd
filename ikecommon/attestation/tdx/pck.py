"""The Intel SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1): which platform the key belongs to
(FMSPC, PCE ID) and at which patch level it was issued (16 CPU SVN components and the PCE SVN).

    SEQUENCE OF SEQUENCE { OID, value }:
      .1 PPID OCTET STRING   .2 TCB SEQUENCE OF SEQUENCE { OID .2.n, INTEGER or (.2.18) OCTET STRING }
      .3 PCE-ID OCTET STRING  .4 FMSPC OCTET STRING  .5 SGX type ENUMERATED  (.6, .7 on multi-package platforms)
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from .. import der
from ..errors import EvidenceFormatError

SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
_PPID, _TCB, _PCE_ID, _FMSPC, _SGX_TYPE = (f"{SGX_EXTENSIONS}.{n}" for n in range(1, 6))
_PCE_SVN, _CPU_SVN = f"{_TCB}.17", f"{_TCB}.18"
_WHAT = "pck_leaf.sgx_extensions"


@dataclass(frozen=True)
class PckTcb:
    sgx_components: tuple[int, ...]  # 16 SVNs: the CPU SVN, component by component
    pce_svn: int
    cpu_svn: bytes


@dataclass(frozen=True)
class SgxExtensions:
    ppid: bytes
    tcb: PckTcb
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


def sgx_extensions(cert: x509.Certificate) -> SgxExtensions:
    try:
        extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS)).value
    except x509.ExtensionNotFound:
        raise EvidenceFormatError(_WHAT, None, f"the PCK certificate has no extension {SGX_EXTENSIONS}") from None
    if not isinstance(extension, x509.UnrecognizedExtension):
        raise EvidenceFormatError(_WHAT, None, "unexpected extension type")
    return parse_sgx_extensions(extension.value)


def parse_sgx_extensions(value: bytes) -> SgxExtensions:
    """The extension's DER value."""
    fields = _pairs(der.single(value, der.SEQUENCE, _WHAT).value, _WHAT)
    tcb = _pairs(_field(fields, _TCB, der.SEQUENCE).value, f"{_WHAT}.tcb")
    components = tuple(der.integer(_field(tcb, f"{_TCB}.{n}", der.INTEGER), f"{_WHAT}.tcb.comp{n:02}")
                       for n in range(1, 17))
    return SgxExtensions(
        ppid=_field(fields, _PPID, der.OCTET_STRING).value,
        tcb=PckTcb(components, der.integer(_field(tcb, _PCE_SVN, der.INTEGER), f"{_WHAT}.tcb.pcesvn"),
                   _field(tcb, _CPU_SVN, der.OCTET_STRING).value),
        pce_id=_field(fields, _PCE_ID, der.OCTET_STRING).value,
        fmspc=_field(fields, _FMSPC, der.OCTET_STRING).value,
        sgx_type=der.integer(_field(fields, _SGX_TYPE, der.ENUMERATED), f"{_WHAT}.sgx_type"))


def _pairs(data: bytes, what: str) -> dict[str, der.Tlv]:
    pairs: dict[str, der.Tlv] = {}
    for item in der.items(data, what):
        if item.tag != der.SEQUENCE:
            raise EvidenceFormatError(what, item.offset, "expected SEQUENCE { OID, value }")
        parts = der.items(item.value, what)
        if len(parts) != 2:
            raise EvidenceFormatError(what, item.offset, f"expected OID and value, found {len(parts)} items")
        name = der.oid(parts[0], what)
        if name in pairs:
            raise EvidenceFormatError(what, item.offset, f"{name} appears twice")
        pairs[name] = parts[1]
    return pairs


def _field(pairs: dict[str, der.Tlv], name: str, tag: int) -> der.Tlv:
    item = pairs.get(name)
    if item is None or item.tag != tag:
        found = "missing" if item is None else f"tag 0x{item.tag:02x}"
        raise EvidenceFormatError(f"{_WHAT}.{name}", None, f"expected tag 0x{tag:02x}, {found}")
    return item
