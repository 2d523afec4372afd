"""The AMD SEV-SNP attestation report (SEV-SNP firmware ABI, table "ATTESTATION_REPORT Structure"), as a frozen
dataclass that decodes from and encodes to the exact 1184 bytes.

The layout is one declaration, `LAYOUT`, read and written in order; integers are little-endian. Reserved ranges
are kept, so the encoding of a parsed report is the report. Bytes 0x000-0x29F are signed; the signature (r and s,
72 bytes each, little-endian) fills the rest. Versions 2 to 5 share this layout; later versions only give
meaning to bytes that are reserved here. Another version is an UnsupportedEvidence, and so is a report of version 3
or later from a CPU that is none of the products in `products` (Milan, Genoa, Turin). The four TCB_VERSION fields
are read in their product's layout (Turin's differs); a report that does not say its CPU (version 2) is read in
Milan's and Genoa's until its key names the product (`in_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ..errors import EvidenceFormatError
from ..wire import Reader, check_sizes, le
from .products import MILAN_GENOA_TCB, PRODUCTS, Product, TcbLayout, by_cpuid

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = range(2, 6)
CPUID_FAM_ID_OFFSET, CPUID_MOD_ID_OFFSET = 0x188, 0x189
SHORT_NAMES = {"fmc": "fmc", "bootloader": "bl", "tee": "tee", "snp": "snp", "microcode": "ucode"}


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION: the SVNs of the firmware and microcode, one byte each, where its product's layout puts them
    (Milan and Genoa: bootloader, the PSP OS "TEE", SNP firmware, microcode; Turin adds the FMC)."""

    raw: int
    layout: TcbLayout = MILAN_GENOA_TCB

    @classmethod
    def of(cls, layout: TcbLayout = MILAN_GENOA_TCB, **svns: int) -> TcbVersion:
        """`TcbVersion.of(bootloader=2, tee=0, snp=5, microcode=68)`; with `layout=TURIN_TCB`, `fmc=` too."""
        if set(svns) != set(layout.components):
            raise TypeError(f"a {layout.name} TCB_VERSION has {', '.join(layout.components)}; got {', '.join(svns)}")
        for name, value in svns.items():
            if not 0 <= value <= 0xFF:
                raise ValueError(f"{name} SVN {value} does not fit a byte")
        return cls(sum(svns[name] << 8 * byte for name, byte in layout.svns), layout)

    def with_layout(self, layout: TcbLayout) -> TcbVersion:
        return replace(self, layout=layout)

    def components(self) -> dict[str, int]:
        """Each SVN by component name, in byte order."""
        return {name: self.raw >> 8 * byte & 0xFF for name, byte in self.layout.svns}

    @property
    def bootloader(self) -> int:
        return self.components()["bootloader"]  # every layout has bootloader, TEE, SNP and microcode

    @property
    def tee(self) -> int:
        return self.components()["tee"]

    @property
    def snp(self) -> int:
        return self.components()["snp"]

    @property
    def microcode(self) -> int:
        return self.components()["microcode"]

    @property
    def fmc(self) -> int | None:
        """Turin's FMC SVN; None in a layout without one (Milan and Genoa)."""
        return self.components().get("fmc")

    def __str__(self) -> str:
        svns = " ".join(f"{SHORT_NAMES.get(name, name)} {value}" for name, value in self.components().items())
        return f"0x{self.raw:016x} ({svns})"


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
            values[name] = r.take(size, name) if kind is bytes else r.uint(size, name)
            if name == "version" and values[name] not in SUPPORTED_VERSIONS:
                raise r.unsupported("version", f"SEV-SNP report version {values[name]}",
                                    f"{SUPPORTED_VERSIONS.start} to {SUPPORTED_VERSIONS.stop - 1}", 0)
        product = _cpuid_product(r, values)
        if r.remaining:
            raise EvidenceFormatError("snp_report", REPORT_SIZE, f"{r.remaining} bytes after the {REPORT_SIZE}-byte "
                                      "report")
        layout = product.tcb if product else MILAN_GENOA_TCB
        fields: dict[str, Any] = {name: TcbVersion(values[name], layout) if kind is TcbVersion else values[name]
                                  for name, _, kind in LAYOUT}
        return cls(**fields)

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

    @property
    def product(self) -> Product | None:
        """The product the report's CPUID fields name; None where it names none (version 2, or family 0)."""
        return by_cpuid(self.cpuid_fam_id, self.cpuid_mod_id) if _says_cpu(self.version, self.cpuid_fam_id) else None

    def in_layout(self, layout: TcbLayout) -> SnpReport:
        """The report with its four TCB_VERSIONs read in `layout` (the key's product's, for a report that does not say
        its CPU)."""
        return replace(self, **{name: getattr(self, name).with_layout(layout)
                                for name, _, kind in LAYOUT if kind is TcbVersion})


def _says_cpu(version: int, family: int) -> bool:
    return version >= 3 and family != 0  # version 2 leaves the CPUID bytes reserved (zero)


def _cpuid_product(r: Reader, values: dict[str, Any]) -> Product | None:
    """The product of a report that says its CPU; a CPU of no known product is an UnsupportedEvidence."""
    family, model = values["cpuid_fam_id"], values["cpuid_mod_id"]
    if not _says_cpu(values["version"], family):
        return None
    product = by_cpuid(family, model)
    if product is None:
        known = any(p.cpu_family == family for p in PRODUCTS)
        raise r.unsupported("cpuid_mod_id" if known else "cpuid_fam_id",
                            f"SEV-SNP report from CPU family 0x{family:x} model 0x{model:02x}",
                            ", ".join(p.describe_cpu() for p in PRODUCTS),
                            CPUID_MOD_ID_OFFSET if known else CPUID_FAM_ID_OFFSET)
    return product

