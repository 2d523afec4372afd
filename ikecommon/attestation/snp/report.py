"""The AMD SEV-SNP attestation report (SEV-SNP firmware ABI, table "ATTESTATION_REPORT Structure"), as a frozen
dataclass that decodes from and encodes to the exact 1184 bytes.

The layout is one declaration, `LAYOUT`, read and written in order; integers are little-endian. Reserved ranges
are kept, so the encoding of a parsed report is the report. Bytes 0x000-0x29F are signed; the signature (r and s,
72 bytes each, little-endian) fills the rest. Versions 2 to 5 share this layout; later versions only give
meaning to bytes that are reserved here. Another version, or a report (version 3 and later say the CPU family) from a
CPU other than family 0x19 (Milan, Genoa; Turin's TCB_VERSION is laid out differently), is an UnsupportedEvidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import EvidenceFormatError
from ..wire import Reader, check_sizes, le

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = range(2, 6)
CPU_FAMILY_MILAN_GENOA, CPU_FAMILY_TURIN = 0x19, 0x1A
CPUID_FAM_ID_OFFSET = 0x188


@dataclass(frozen=True)
class TcbVersion:
    """TCB_VERSION as Milan and Genoa lay it out: SVNs of the bootloader (byte 0), the PSP OS "TEE" (byte 1),
    the SNP firmware (byte 6) and the microcode (byte 7)."""

    raw: int

    @classmethod
    def of(cls, *, bootloader: int, tee: int, snp: int, microcode: int) -> TcbVersion:
        return cls(bootloader | tee << 8 | snp << 48 | microcode << 56)

    @property
    def bootloader(self) -> int:
        return self.raw & 0xFF

    @property
    def tee(self) -> int:
        return self.raw >> 8 & 0xFF

    @property
    def snp(self) -> int:
        return self.raw >> 48 & 0xFF

    @property
    def microcode(self) -> int:
        return self.raw >> 56 & 0xFF

    def components(self) -> dict[str, int]:
        return {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}

    def __str__(self) -> str:
        return f"0x{self.raw:016x} (bl {self.bootloader} tee {self.tee} snp {self.snp} ucode {self.microcode})"


# (field, size in bytes, type): the report, in order.
LAYOUT: tuple[tuple[str, int, type], ...] = (
    ("version", 4, int), ("guest_svn", 4, int), ("policy", 8, int),
    ("family_id", 16, bytes), ("image_id", 16, bytes), ("vmpl", 4, int), ("signature_algo", 4, int),
    ("current_tcb", 8, TcbVersion), ("platform_info", 8, int), ("signer_info", 4, int), ("reserved0", 4, bytes),
    ("report_data", 64, bytes), ("measurement", 48, bytes), ("host_data", 32, bytes),
    ("id_key_digest", 48, bytes), ("author_key_digest", 48, bytes), ("report_id", 32, bytes),
    ("report_id_ma", 32, bytes), ("reported_tcb", 8, TcbVersion),
    ("cpuid_fam_id", 1, int), ("cpuid_mod_id", 1, int), ("cpuid_step", 1, int), ("reserved1", 21, bytes),
    ("chip_id", 64, bytes), ("committed_tcb", 8, TcbVersion),
    ("current_build", 1, int), ("current_minor", 1, int), ("current_major", 1, int), ("reserved2", 1, bytes),
    ("committed_build", 1, int), ("committed_minor", 1, int), ("committed_major", 1, int), ("reserved3", 1, bytes),
    ("launch_tcb", 8, TcbVersion), ("reserved4", 168, bytes),
    ("signature_r", 72, bytes), ("signature_s", 72, bytes), ("signature_reserved", 368, bytes),
)


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    signer_info: int       # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_ID, bits 2-4 SIGNING_KEY (0 VCEK, 1 VLEK)
    reserved0: bytes
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    reserved1: bytes
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    reserved2: bytes
    committed_build: int
    committed_minor: int
    committed_major: int
    reserved3: bytes
    launch_tcb: TcbVersion
    reserved4: bytes
    signature_r: bytes
    signature_s: bytes
    signature_reserved: bytes

    SIZE: ClassVar[int] = REPORT_SIZE

    def __post_init__(self) -> None:
        check_sizes("snp_report", {name: (getattr(self, name), size) for name, size, kind in LAYOUT if kind is bytes})

    @classmethod
    def parse(cls, data: bytes) -> SnpReport:
        r = Reader(data, "snp_report")
        values: dict[str, Any] = {}
        for name, size, kind in LAYOUT:
            if kind is bytes:
                values[name] = r.take(size, name)
            else:
                value = r.uint(size, name)
                values[name] = TcbVersion(value) if kind is TcbVersion else value
            if name == "version" and values[name] not in SUPPORTED_VERSIONS:
                raise r.unsupported("version", f"SEV-SNP report version {values[name]}",
                                    f"{SUPPORTED_VERSIONS.start} to {SUPPORTED_VERSIONS.stop - 1}", 0)
        family = values["cpuid_fam_id"]
        if values["version"] >= 3 and family not in (0, CPU_FAMILY_MILAN_GENOA):  # v2 leaves CPUID reserved
            later = " (Turin or later, whose TCB_VERSION differs)" if family >= CPU_FAMILY_TURIN else ""
            raise r.unsupported("cpuid_fam_id", f"SEV-SNP report from CPU family 0x{family:x}{later}",
                                f"family 0x{CPU_FAMILY_MILAN_GENOA:x}: Milan and Genoa", CPUID_FAM_ID_OFFSET)
        if r.remaining:
            raise EvidenceFormatError("snp_report", REPORT_SIZE, f"{r.remaining} bytes after the {REPORT_SIZE}-byte "
                                      "report")
        return cls(**values)

    def to_bytes(self) -> bytes:
        out = []
        for name, size, kind in LAYOUT:
            value = getattr(self, name)
            out.append(value if kind is bytes else le(value.raw if kind is TcbVersion else value, size))
        return b"".join(out)

    @property
    def signed_bytes(self) -> bytes:
        return self.to_bytes()[:SIGNED_SIZE]

    @property
    def signature(self) -> tuple[int, int]:
        return int.from_bytes(self.signature_r, "little"), int.from_bytes(self.signature_s, "little")

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 0b10)

    @property
    def signing_key(self) -> int:
        return self.signer_info >> 2 & 0b111

