"""Where the tests find the real attestation evidence: tests/vectors/attestation, copied into the repository from
google/go-tdx-guest and google/go-sev-guest (provenance and the values asserted upstream: SOURCES.md there)."""

from pathlib import Path

VECTORS = Path(__file__).parent / "vectors" / "attestation"
TDX = VECTORS / "tdx"
SNP = VECTORS / "sev-snp"
AZURE = SNP / "azure"  # Azure HCL reports, from confidential-containers/trustee and kinvolk/azure-cvm-tooling
