"""The platform's TCB status: where the PCK certificate's SGX SVNs, the quote's TEE_TCB_SVN and the TDX module
stand among the TCB levels of Intel's TCB info, folded with the QE's own status from the QE identity.

The selection follows Intel's quote verification library (TcbLevelCheck, TdxModuleCheck): levels are tried
highest first; a level applies when every SGX component and the PCE SVN are at or above it, and then every TDX
component too (the first two, the module's own SVN and version, are skipped for TDX modules 1.5 and later, whose
status comes from `tdxModuleIdentities`). No level applying is reported with the components that fall short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Mismatch
from .collateral import ModuleTcbLevel, QeIdentity, TcbInfo, TcbLevel, TdxModule
from .pck import PckTcb

UP_TO_DATE, OUT_OF_DATE, REVOKED = "UpToDate", "OutOfDate", "Revoked"
_HARDENING = ("UpToDate", "SWHardeningNeeded")
_CONFIGURATION = ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded")


@dataclass(frozen=True)
class TcbAssessment:
    status: str | None                # None: no TCB level applies (Intel: "TCB not supported")
    qe_status: str | None             # None: no QE identity level applies
    module_status: str | None
    advisory_ids: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]  # why a status could not be found


def assess(tcb_info: TcbInfo, qe_identity: QeIdentity, pck: PckTcb, tee_tcb_svn: bytes,
           qe_isv_svn: int) -> TcbAssessment:
    found: list[Mismatch] = []
    qe_level = _isv_level(qe_identity.tcb_levels, qe_isv_svn)
    if qe_level is None:
        lowest = min((level.isv_svn for level in qe_identity.tcb_levels), default=None)
        found.append(Mismatch("qe_report.isv_svn", f"at least {lowest} (lowest QE identity TCB level)"
                              if lowest is not None else "a QE identity with TCB levels", str(qe_isv_svn)))

    level = _platform_level(tcb_info.tcb_levels, pck, tee_tcb_svn)
    if level is None:
        found.append(_no_level(tcb_info, pck, tee_tcb_svn))
    module_status, module_advisories = _module_status(tcb_info, tee_tcb_svn, found)

    status = None
    if level is not None and module_status is not None and qe_level is not None:
        status = _converge(_converge(level.status, module_status), qe_level.status)
    advisories = (level.advisory_ids if level else ()) + module_advisories + (qe_level.advisory_ids if qe_level else ())
    return TcbAssessment(status, qe_level.status if qe_level else None, module_status,
                         tuple(dict.fromkeys(advisories)), tuple(found))


def module_identity(tcb_info: TcbInfo, tee_tcb_svn: bytes) -> TdxModule | None:
    """The module signer and attributes to compare the quote with: `tdxModule` for TDX 1.0 (version byte 0), the
    matching `tdxModuleIdentities` entry ("TDX_01", ...) for later modules."""
    version = tee_tcb_svn[1]
    if version == 0:
        return tcb_info.tdx_module
    wanted = f"TDX_{version:02X}"
    return next((m for m in tcb_info.tdx_module_identities if m.identity_id.upper() == wanted), None)


def _module_status(tcb_info: TcbInfo, tee_tcb_svn: bytes, found: list[Mismatch]) -> tuple[str | None, tuple[str, ...]]:
    if tee_tcb_svn[1] == 0:
        return UP_TO_DATE, ()
    module = module_identity(tcb_info, tee_tcb_svn)
    if module is None:
        found.append(Mismatch("tdx_module.identity", f"TDX_{tee_tcb_svn[1]:02X} among tcbInfo.tdxModuleIdentities",
                              "absent"))
        return None, ()
    level = _isv_level(module.tcb_levels, tee_tcb_svn[0])
    if level is None:
        found.append(Mismatch("tdx_module.isv_svn", f"a TCB level of {module.identity_id}", str(tee_tcb_svn[0])))
        return None, ()
    return level.status, level.advisory_ids


def _isv_level(levels: Sequence[ModuleTcbLevel], isv_svn: int) -> ModuleTcbLevel | None:
    return next((level for level in levels if isv_svn >= level.isv_svn), None)


def _sgx_ok(level: TcbLevel, pck: PckTcb) -> bool:
    return all(have >= need for have, need in zip(pck.sgx_components, level.sgx_components, strict=True)) \
        and pck.pce_svn >= level.pce_svn


def _tdx_shortfall(level: TcbLevel, tee_tcb_svn: bytes) -> list[str]:
    if len(level.tdx_components) != 16:
        return ["no TDX components in this level"]
    first = 2 if tee_tcb_svn[1] > 0 else 0
    return [f"tdx[{i}] {tee_tcb_svn[i]} < {level.tdx_components[i]}" for i in range(first, 16)
            if tee_tcb_svn[i] < level.tdx_components[i]]


def _platform_level(levels: Sequence[TcbLevel], pck: PckTcb, tee_tcb_svn: bytes) -> TcbLevel | None:
    return next((level for level in levels if _sgx_ok(level, pck) and not _tdx_shortfall(level, tee_tcb_svn)), None)


def _no_level(tcb_info: TcbInfo, pck: PckTcb, tee_tcb_svn: bytes) -> Mismatch:
    def svns(values: Sequence[int]) -> str:
        return ",".join(str(v) for v in values)

    platform = f"sgx {svns(pck.sgx_components)} pcesvn {pck.pce_svn} tdx {svns(tee_tcb_svn)}"
    if not tcb_info.tcb_levels:
        return Mismatch("tcb.level", "a TCB level in tcbInfo", f"{platform}; tcbInfo has no levels")
    lowest = tcb_info.tcb_levels[-1]
    short = [f"sgx[{i}] {have} < {need}" for i, (have, need)
             in enumerate(zip(pck.sgx_components, lowest.sgx_components, strict=True)) if have < need]
    if pck.pce_svn < lowest.pce_svn:
        short.append(f"pcesvn {pck.pce_svn} < {lowest.pce_svn}")
    short += _tdx_shortfall(lowest, tee_tcb_svn)
    return Mismatch(
        "tcb.level",
        f"at or above one of the {len(tcb_info.tcb_levels)} TCB levels of tcbInfo (fmspc {tcb_info.fmspc.hex()}); "
        f"the lowest is sgx {svns(lowest.sgx_components)} pcesvn {lowest.pce_svn} tdx {svns(lowest.tdx_components)}",
        f"{platform}: below every level ({', '.join(short) or 'no single level covers both SGX and TDX'})")


def _converge(level_status: str, other: str) -> str:
    """A level's status made worse by the TDX module's or the QE's own status, as Intel's library does."""
    if other == REVOKED:
        return REVOKED
    if other == OUT_OF_DATE:
        if level_status in _HARDENING:
            return OUT_OF_DATE
        if level_status in _CONFIGURATION:
            return "OutOfDateConfigurationNeeded"
    return level_status
