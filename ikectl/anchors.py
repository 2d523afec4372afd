"""The roots a pin's anchors name (`--anchors vendor|sim`), and the evidence policy of [trust], for `trust add`,
`trust verify` and `trust check` alike.

`vendor` is Intel's and AMD's roots as they ship with the package (ikecommon/attestation/roots.py); a [trust] key
replaces its vendor's shipped roots with the files it names (intel_root: that root instead; amd_arks: those ARKs
only, none for an empty list). `sim` is the simulated root alone, NOT SECURE. Kept apart from trust.py so that the
offline `trust check` does not load what pins.
"""

from __future__ import annotations

from datetime import timedelta

from ikecommon.attestation import roots
from ikecommon.attestation.snp import MILAN_GENOA_TCB, TURIN_TCB, SnpPolicy, TcbVersion
from ikecommon.attestation.tdx import TdxPolicy
from ikecommon.attestation.verify import TrustAnchors

from .config import TrustSettings
from .truststore import Anchors, read_root_certificate


def trust_anchors(kind: Anchors, settings: TrustSettings) -> TrustAnchors:
    if kind == Anchors.SIM:
        return TrustAnchors.simulated()
    intel = (read_root_certificate(settings.intel_root, "trust.intel_root") if settings.intel_root
             else roots.intel_sgx_root())
    arks = (roots.amd_arks() if settings.amd_arks is None
            else tuple(read_root_certificate(path, f"trust.amd_arks[{i}]") for i, path in enumerate(settings.amd_arks)))
    return TrustAnchors(intel_root=intel, amd_arks=arks)


def tdx_policy(settings: TrustSettings) -> TdxPolicy:
    """[trust] collateral_grace_days and tdx_tcb_statuses (docs/attestation.md, "Collateral policy")."""
    return TdxPolicy(accepted_tcb_statuses=frozenset(settings.tdx_tcb_statuses),
                     collateral_grace=timedelta(days=settings.collateral_grace_days))


def snp_policy(settings: TrustSettings) -> SnpPolicy:
    """[trust] snp_minimum_tcb and snp_vmpl; the rest is SnpPolicy's defaults (no debug, no migration agent). One
    minimum applies to every product, compared by component: a Turin FMC minimum refuses Milan and Genoa."""
    minimum = None
    if settings.snp_minimum_tcb is not None:
        svns = dict(settings.snp_minimum_tcb)
        minimum = TcbVersion.of(TURIN_TCB if "fmc" in svns else MILAN_GENOA_TCB, **svns)
    return SnpPolicy(minimum_tcb=minimum, vmpl=settings.snp_vmpl)
