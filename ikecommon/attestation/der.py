"""Just enough DER to read the vendor extensions of PCK and VCEK certificates (cryptography hands them over as
opaque bytes): tag-length-value items, OBJECT IDENTIFIERs and INTEGERs, every read bounded by its length."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EvidenceFormatError

SEQUENCE, INTEGER, OCTET_STRING, OID, ENUMERATED, IA5_STRING = 0x30, 0x02, 0x04, 0x06, 0x0A, 0x16


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    offset: int  # of the tag, inside the buffer it was read from


def items(data: bytes, what: str) -> list[Tlv]:
    """Every TLV in `data`, which must be exactly a concatenation of them."""
    found, offset = [], 0
    while offset < len(data):
        item, offset = _one(data, offset, what)
        found.append(item)
    return found


def single(data: bytes, tag: int, what: str) -> Tlv:
    found = items(data, what)
    if len(found) != 1 or found[0].tag != tag:
        tags = ", ".join(f"0x{t.tag:02x}" for t in found) or "nothing"
        raise EvidenceFormatError(what, 0, f"expected one item with tag 0x{tag:02x}, found {tags}")
    return found[0]


def _one(data: bytes, offset: int, what: str) -> tuple[Tlv, int]:
    if len(data) - offset < 2:
        raise EvidenceFormatError(what, offset, "truncated tag and length")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise EvidenceFormatError(what, offset, "multi-byte tags are not used here")
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise EvidenceFormatError(what, offset, f"unsupported or truncated length (0x{first:02x})")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > len(data):
        raise EvidenceFormatError(what, offset, f"length {length} runs past the {len(data) - start} bytes left")
    return Tlv(tag, data[start:start + length], offset), start + length


def oid(item: Tlv, what: str) -> str:
    if item.tag != OID or not item.value or item.value[-1] & 0x80:
        raise EvidenceFormatError(what, item.offset, "not a well-formed OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in item.value:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def integer(item: Tlv, what: str) -> int:
    if item.tag not in (INTEGER, ENUMERATED) or not item.value:
        raise EvidenceFormatError(what, item.offset, "not an INTEGER")
    return int.from_bytes(item.value, "big", signed=True)
