"""The SEV-SNP certificate table that configfs-tsm returns in `auxblob` for the `sev_guest` provider.

The table is the one the host hands the guest with an extended report request (GHCB specification, "SNP Extended
Guest Request"): entries of a 16-byte GUID, a 32-bit offset and a 32-bit length (little-endian), ended by an
all-zero entry; each offset counts from the start of the table and points at one DER certificate after it. GUIDs
are read in RFC 4122 byte order, as AMD's own guest tools write them. Not checked against a real host's table:
no SEV-SNP machine was available.
"""

from __future__ import annotations

import struct
import uuid

from .errors import EnclaveError

VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ENTRY = struct.Struct("<16sII")
MAX_ENTRIES = 64


def parse_cert_table(blob: bytes) -> dict[uuid.UUID, bytes]:
    """Every certificate in the table by GUID. An empty or all-zero blob is an empty table."""
    entries: list[tuple[uuid.UUID, int, int]] = []
    at = 0
    while True:
        if at + ENTRY.size > len(blob):
            if not blob.strip(b"\0"):
                return {}
            raise EnclaveError(f"auxblob: certificate table without its terminating entry (at offset {at})")
        guid, offset, length = ENTRY.unpack_from(blob, at)
        at += ENTRY.size
        if guid == bytes(16):
            break
        if len(entries) == MAX_ENTRIES:
            raise EnclaveError(f"auxblob: more than {MAX_ENTRIES} certificate table entries")
        entries.append((uuid.UUID(bytes=guid), offset, length))
    table: dict[uuid.UUID, bytes] = {}
    for guid, offset, length in entries:
        if guid in table:
            raise EnclaveError(f"auxblob: certificate {guid} listed twice")
        if length == 0 or offset < at or offset + length > len(blob):
            raise EnclaveError(f"auxblob: certificate {guid} at offset {offset}, length {length} lies outside the "
                               f"{len(blob)}-byte blob after the table")
        table[guid] = blob[offset:offset + length]
    return table


def snp_certificates(blob: bytes) -> tuple[bytes, ...]:
    """The chain a verifier wants, leaf first: the VCEK (or VLEK), the ASK, the ARK, those that are present."""
    table = parse_cert_table(blob)
    leaf = table.get(VCEK) or table.get(VLEK)
    return tuple(cert for cert in (leaf, table.get(ASK), table.get(ARK)) if cert is not None)


def build_cert_table(certificates: dict[uuid.UUID, bytes]) -> bytes:
    """A table as a host would hand it out; for tests and fakes."""
    start = ENTRY.size * (len(certificates) + 1)
    entries, payload = b"", b""
    for guid, der in certificates.items():
        entries += ENTRY.pack(guid.bytes, start + len(payload), len(der))
        payload += der
    return entries + ENTRY.pack(bytes(16), 0, 0) + payload
