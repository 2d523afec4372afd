"""Intel's TDX collateral as typed values: the TCB info for one FMSPC (which patch levels exist and their status)
and the TD Quoting Enclave's identity. Both are JSON documents signed by the Intel SGX TCB Signing key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import signed_json as sj
from ..errors import EvidenceFormatError


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]  # 16 SVNs, compared with the PCK certificate's CPU SVN
    pce_svn: int
    tdx_components: tuple[int, ...]  # 16 SVNs, compared with the quote's TEE_TCB_SVN; empty in SGX TCB info
    tcb_date: datetime
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    isv_svn: int
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """Who may sign the TDX module (MRSIGNERSEAM) and which SEAM attributes it may have."""

    identity_id: str  # "" for the tcbInfo's `tdxModule`, "TDX_01", ... for `tdxModuleIdentities`
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: TdxModule | None
    tdx_module_identities: tuple[TdxModule, ...]
    tcb_levels: tuple[TcbLevel, ...]   # highest first, as Intel orders them
    signed: bytes
    signature: bytes

    @classmethod
    def parse(cls, document: bytes) -> TcbInfo:
        doc = sj.parse_signed(document, "tcbInfo", "tcb_info")
        body, path = doc.body, "tcb_info"
        module = body.get("tdxModule")
        identities = body.get("tdxModuleIdentities", [])
        if not isinstance(identities, list):
            raise EvidenceFormatError(f"{path}.tdxModuleIdentities", None, "expected an array")
        return cls(
            id=sj.string(body, "id", path), version=sj.integer(body, "version", path),
            issue_date=sj.time(body, "issueDate", path), next_update=sj.time(body, "nextUpdate", path),
            fmspc=sj.hex_member(body, "fmspc", path, 6), pce_id=sj.hex_member(body, "pceId", path, 2),
            tcb_evaluation_data_number=sj.integer(body, "tcbEvaluationDataNumber", path),
            tdx_module=None if module is None else _module(module, f"{path}.tdxModule", with_levels=False),
            tdx_module_identities=tuple(_module(m, f"{path}.tdxModuleIdentities[{i}]", with_levels=True)
                                        for i, m in enumerate(identities)),
            tcb_levels=tuple(_tcb_level(level, f"{path}.tcbLevels[{i}]")
                             for i, level in enumerate(sj.array(body, "tcbLevels", path))),
            signed=doc.signed, signature=doc.signature)


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    misc_select: bytes
    misc_select_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[ModuleTcbLevel, ...]  # highest first
    signed: bytes
    signature: bytes

    @classmethod
    def parse(cls, document: bytes) -> QeIdentity:
        doc = sj.parse_signed(document, "enclaveIdentity", "qe_identity")
        body, path = doc.body, "qe_identity"
        return cls(
            id=sj.string(body, "id", path), version=sj.integer(body, "version", path),
            issue_date=sj.time(body, "issueDate", path), next_update=sj.time(body, "nextUpdate", path),
            misc_select=sj.hex_member(body, "miscselect", path, 4),
            misc_select_mask=sj.hex_member(body, "miscselectMask", path, 4),
            attributes=sj.hex_member(body, "attributes", path, 16),
            attributes_mask=sj.hex_member(body, "attributesMask", path, 16),
            mr_signer=sj.hex_member(body, "mrsigner", path, 32), isv_prod_id=sj.integer(body, "isvprodid", path),
            tcb_levels=tuple(_isv_level(level, f"{path}.tcbLevels[{i}]")
                             for i, level in enumerate(sj.array(body, "tcbLevels", path))),
            signed=doc.signed, signature=doc.signature)


def _components(tcb: Mapping[str, Any], key: str, path: str) -> tuple[int, ...]:
    values = sj.array(tcb, key, path)
    if len(values) != 16:
        raise EvidenceFormatError(f"{path}.{key}", None, f"expected 16 components, got {len(values)}")
    return tuple(sj.integer(sj.obj(c, f"{path}.{key}[{i}]"), "svn", f"{path}.{key}[{i}]")
                 for i, c in enumerate(values))


def _tcb_level(value: Any, path: str) -> TcbLevel:
    level = sj.obj(value, path)
    tcb = sj.obj(sj.member(level, "tcb", path), f"{path}.tcb")
    tdx = _components(tcb, "tdxtcbcomponents", f"{path}.tcb") if "tdxtcbcomponents" in tcb else ()
    return TcbLevel(_components(tcb, "sgxtcbcomponents", f"{path}.tcb"), sj.integer(tcb, "pcesvn", f"{path}.tcb"),
                    tdx, sj.time(level, "tcbDate", path), sj.string(level, "tcbStatus", path),
                    sj.strings(level, "advisoryIDs", path))


def _isv_level(value: Any, path: str) -> ModuleTcbLevel:
    level = sj.obj(value, path)
    tcb = sj.obj(sj.member(level, "tcb", path), f"{path}.tcb")
    return ModuleTcbLevel(sj.integer(tcb, "isvsvn", f"{path}.tcb"), sj.string(level, "tcbStatus", path),
                          sj.strings(level, "advisoryIDs", path))


def _module(value: Any, path: str, with_levels: bool) -> TdxModule:
    module = sj.obj(value, path)
    levels: Sequence[Any] = sj.array(module, "tcbLevels", path) if with_levels else ()
    return TdxModule(sj.string(module, "id", path) if with_levels else "",
                     sj.hex_member(module, "mrsigner", path, 48), sj.hex_member(module, "attributes", path, 8),
                     sj.hex_member(module, "attributesMask", path, 8),
                     tuple(_isv_level(level, f"{path}.tcbLevels[{i}]") for i, level in enumerate(levels)))
