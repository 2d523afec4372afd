"""The SEV-SNP products this verifier knows, and what differs between them for it: which CPUs a report's CPUID
fields name, how a TCB_VERSION lays out its security version numbers (SVNs), and how long the chip ID in a VCEK's
hwID is. This is the one place that knows them.

    product  CPUID family  models                TCB_VERSION byte (0 is the lowest)                    hwID
    Milan    0x19          0x00-0x0F             0 bootloader, 1 TEE, 6 SNP, 7 microcode               64 bytes
    Genoa    0x19          0x10-0x1F, 0xA0-0xAF  as Milan                                              64 bytes
    Turin    0x1A          0x00-0x11             0 FMC, 1 bootloader, 2 TEE, 3 SNP, 7 microcode        8 bytes

The bytes not named are reserved. A Turin report's CHIP_ID is the 8-byte hwID followed by 56 zero bytes. A report
of version 3 or later names its CPU (CPUID_FAM_ID and CPUID_MOD_ID at 0x188); a version 2 report does not, and its
product is the one its key certificate names (productName: "Milan-B0", "Genoa", "Turin").
"""

from __future__ import annotations

from dataclasses import dataclass

CHIP_ID_SIZE = 64  # the report's CHIP_ID field


@dataclass(frozen=True)
class TcbLayout:
    """Where a TCB_VERSION keeps each SVN: (component, byte index), lowest byte first."""

    name: str
    svns: tuple[tuple[str, int], ...]

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.svns)


MILAN_GENOA_TCB = TcbLayout("Milan/Genoa", (("bootloader", 0), ("tee", 1), ("snp", 6), ("microcode", 7)))
TURIN_TCB = TcbLayout("Turin", (("fmc", 0), ("bootloader", 1), ("tee", 2), ("snp", 3), ("microcode", 7)))


@dataclass(frozen=True)
class Product:
    name: str
    cpu_family: int
    cpu_models: tuple[range, ...]
    tcb: TcbLayout
    hw_id_size: int  # bytes of chip ID in a VCEK's hwID extension; the rest of CHIP_ID is zero

    def has_model(self, family: int, model: int) -> bool:
        return family == self.cpu_family and any(model in models for models in self.cpu_models)

    def describe_cpu(self) -> str:
        models = ", ".join(f"0x{m.start:02x}-0x{m.stop - 1:02x}" for m in self.cpu_models)
        return f"{self.name} (family 0x{self.cpu_family:x} model {models})"


MILAN = Product("Milan", 0x19, (range(0x00, 0x10),), MILAN_GENOA_TCB, 64)
GENOA = Product("Genoa", 0x19, (range(0x10, 0x20), range(0xA0, 0xB0)), MILAN_GENOA_TCB, 64)
TURIN = Product("Turin", 0x1A, (range(0x00, 0x12),), TURIN_TCB, 8)
PRODUCTS = (MILAN, GENOA, TURIN)


def by_cpuid(family: int, model: int) -> Product | None:
    return next((p for p in PRODUCTS if p.has_model(family, model)), None)


def by_name(product_name: str) -> Product | None:
    """The product a key certificate's productName names: the part before a stepping ("Milan-B0" is Milan)."""
    return next((p for p in PRODUCTS if p.name == product_name.split("-", 1)[0]), None)


def names() -> str:
    """"Milan, Genoa and Turin"."""
    *first, last = (p.name for p in PRODUCTS)
    return f"{', '.join(first)} and {last}"
