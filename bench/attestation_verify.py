"""Benchmark: offline verification time of each real attestation vector (target: under 50 ms each).

    .venv/bin/python bench/attestation_verify.py [--runs 200]

Reports the median and p95 of each verification, and each as a ratio against a baseline measured in
the same run: one ECDSA P-256 signature verification with `cryptography` (the primitive every
verification repeats several times), so the ratio says how many such operations a verification costs.
Results and how to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ikecommon.attestation.certs import pem_chain
from ikecommon.attestation.snp import SnpPolicy, hcl, load_ask_ark, load_vcek, load_vlek, verify_report
from ikecommon.attestation.tdx import TdxCollateral, verify_quote

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "attestation"
AT = datetime(2023, 7, 1, tzinfo=UTC)  # inside every validity period of the vectors
AT_V5 = datetime(2026, 2, 3, 1, tzinfo=UTC)  # the TDX 1.5 quote's PCK certificate is from 2026
AT_VLEK = datetime(2025, 6, 1, tzinfo=UTC)  # the VLEK is valid 2024-12-10 to 2025-12-10
AT_TURIN = datetime(2025, 10, 1, tzinfo=UTC)  # the Turin VCEK is valid 2025-07-17 to 2032-07-17
AT_GENOA = datetime(2026, 2, 20, tzinfo=UTC)  # the Genoa VCEK is valid 2025-01-24 to 2032-01-24
AT_AZURE = datetime(2024, 2, 16, tzinfo=UTC)  # trustee's Azure VCEK is valid 2023-05-02 to 2030-05-02


def measure(work: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    runs = parser.parse_args().runs
    tdx, snp = VECTORS / "tdx", VECTORS / "sev-snp"
    quote = (tdx / "tdx_quote_v4_spr_e4.dat").read_bytes()
    root = x509.load_pem_x509_certificate((tdx / "intel_sgx_root_ca.pem").read_bytes())

    def tdx_with_collateral() -> object:
        collateral = TdxCollateral.load(
            tcb_info=(tdx / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes(),
            qe_identity=(tdx / "tdx_qe_identity_v2.json").read_bytes(),
            tcb_signing_chain=(tdx / "intel_tcb_signing_chain.pem").read_bytes(),
            crls=[(tdx / c).read_bytes() for c in ("intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der")])
        return verify_quote(quote, root=root, collateral=collateral, at=AT)

    quote_v5 = (tdx / "tdx_quote_v5_td15.dat").read_bytes()

    def tdx_v5_with_collateral() -> object:
        # The only collateral shipped is the v4 quote's (another FMSPC): every check still runs.
        collateral = TdxCollateral.load(
            tcb_info=(tdx / "tdx_tcbinfo_v3_fmspc_50806f000000.json").read_bytes(),
            qe_identity=(tdx / "tdx_qe_identity_v2.json").read_bytes(),
            tcb_signing_chain=(tdx / "intel_tcb_signing_chain.pem").read_bytes(),
            crls=[(tdx / c).read_bytes() for c in ("intel_pck_platform_crl.der", "intel_sgx_root_ca_crl.der")])
        return verify_quote(quote_v5, root=root, collateral=collateral, at=AT_V5)

    report = (snp / "snp_report_milan.bin").read_bytes()

    def snp_with_chain() -> object:
        ask, ark = load_ask_ark((snp / "amd_ask_ark_milan.pem").read_bytes())
        return verify_report(report, vcek=load_vcek((snp / "snp_vcek_milan.der").read_bytes()), ask=ask, ark=ark,
                             at=AT, policy=SnpPolicy(allow_debug=True))

    vlek_report = (snp / "snp_report_milan_vlek.bin").read_bytes()

    def snp_vlek_with_chain() -> object:
        asvk, ark = load_ask_ark((snp / "amd_asvk_ark_milan.pem").read_bytes())
        return verify_report(vlek_report, vlek=load_vlek((snp / "snp_vlek_milan.der").read_bytes()), ask=asvk,
                             ark=ark, at=AT_VLEK)

    def snp_vcek_with_chain(report_file: str, vcek_file: str, chain_file: str, at: datetime) -> Callable[[], object]:
        """A raw report verified with its VCEK (DER as KDS serves it, or PEM) and its product's ASK/ARK."""
        data = (snp / report_file).read_bytes()

        def work() -> object:
            key = (snp / vcek_file).read_bytes()
            vcek = pem_chain(key, vcek_file)[0] if key.startswith(b"-----BEGIN") else load_vcek(key)
            ask, ark = load_ask_ark((snp / chain_file).read_bytes())
            return verify_report(data, vcek=vcek, ask=ask, ark=ark, at=at)
        return work

    azure = snp / "azure"
    hcl_report = (azure / "trustee_hcl_report.bin").read_bytes()

    def azure_hcl_with_chain() -> object:
        """The wrapper parsed (runtime data JSON, its keys) and its binding checked, then the SEV-SNP report inside
        verified as a raw one with the VCEK, ASK and ARK of trustee's vcek.pem."""
        wrapper = hcl.HclReport.parse(hcl_report)
        vcek, ask, ark = pem_chain((azure / "trustee_vcek.pem").read_bytes(), "trustee_vcek.pem")
        verification = verify_report(wrapper.hw_report, vcek=vcek, ask=ask, ark=ark, at=AT_AZURE)
        return verification, wrapper.binding_mismatches()

    key = ec.generate_private_key(ec.SECP256R1())
    signature = key.sign(b"baseline", ec.ECDSA(hashes.SHA256()))

    def baseline() -> object:
        key.public_key().verify(signature, b"baseline", ec.ECDSA(hashes.SHA256()))
        return None

    base, _ = measure(baseline, runs)
    print(f"baseline: one ECDSA P-256 verify, median {base * 1e3:.3f} ms ({runs} runs)")
    for name, work in (("TDX quote v4 + collateral + CRLs", tdx_with_collateral),
                       ("TDX quote v5 (TD report 1.5) + collateral + CRLs", tdx_v5_with_collateral),
                       ("SEV-SNP report + VCEK/ASK/ARK", snp_with_chain),
                       ("SEV-SNP report (VLEK-signed, AWS) + VLEK/ASVK/ARK", snp_vlek_with_chain),
                       ("SEV-SNP report (Turin, v5) + VCEK/ASK/ARK",
                        snp_vcek_with_chain("snp_report_turin.bin", "snp_vcek_turin.der", "amd_ask_ark_turin.pem",
                                            AT_TURIN)),
                       ("SEV-SNP report (Genoa, v3) + VCEK/ASK/ARK",
                        snp_vcek_with_chain("snp_report_genoa.bin", "snp_vcek_genoa.pem", "amd_ask_ark_genoa.pem",
                                            AT_GENOA)),
                       ("Azure HCL report: wrapper + binding, SEV-SNP report + VCEK/ASK/ARK", azure_hcl_with_chain)):
        median, p95 = measure(work, runs)
        verdict = "under" if median < 0.050 else "OVER"
        print(f"{name}: median {median * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, {median / base:.1f}x baseline "
              f"({verdict} the 50 ms target)")


if __name__ == "__main__":
    main()
