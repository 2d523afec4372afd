"""`ikectl trust check FILE`: verify attestation evidence a user already has, offline, and say what it holds.

    ikectl trust check FILE [--spec FILE|INLINE] [--collateral DIR] [--certs DIR] [--anchors vendor|sim]
                            [--at TIME] [--strict] [--json]

FILE (or - for stdin) is a raw TDX quote, a raw SEV-SNP report, Azure's HCL report (the vTPM's, wrapping an SEV-SNP
report), a sim report, or enclave-ike's evidence envelope; which one is told from its first bytes (`detect`). Every
field a spec can pin or a reader wants (MRTD, RTMR0-3, MEASUREMENT, the report data, SVNs and TCB values, the chip
ID, ...) is printed under the names the vendors give them, then every check the verifier ran, whether the evidence
is authentic, the TCB status when the verifier computes one, and whether a measurement spec matches. Nothing is
fetched and nothing is pinned.

What the verifiers need beside the evidence: the vendors' roots, those that ship with the package or those [trust]
intel_root / amd_arks name instead (`--anchors sim`: the simulated root, NOT SECURE); for a raw TDX quote, Intel's
collateral (`--collateral DIR`: the TCB info, the QE identity, the TCB signing certificate and the PCK CA's and
root's CRLs, as Intel's PCS serves them); for a raw SEV-SNP report, the VCEK and the ASK (`--certs DIR`: the VCEK
and AMD KDS's cert_chain, optionally the ARK's CRL), or for a VLEK-signed report the VLEK and the ASVK (KDS's vlek
cert_chain); the key that signed and a VLEK's CSP ID are shown (KEY_CERTIFICATE, CSP_ID). An Azure HCL report is
judged as the SEV-SNP report it wraps (its VCEK and chain as Azure's IMDS serves them also do), and its runtime data
must be what that report's REPORT_DATA binds; the vTPM's attestation key and user data are shown (HCL_*).
An envelope carries both; the options replace what it carries. Files in a DIR are told apart by their contents.

Exit codes (docs/attestation.md, "Checking evidence: trust check"): 0 the evidence is authentic (every signature,
certificate chain and binding verifies) and, with --spec, an entry matches; 1 it is not authentic, or no entry
matches, or with --strict any other check (TCB level, collateral, policy) fails; 2 the input is unusable: an
unreadable file, evidence that is malformed, unsupported or none of the kinds above, a bad spec, option or DIR, or
nothing to verify it with (no root, no collateral, no VCEK). The report is printed whenever the evidence parses,
before the error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ikecommon.attestation import sim as sim_evidence
from ikecommon.attestation.binding import binding_mismatches
from ikecommon.attestation.certs import der_certificate, der_crl, pem_chain
from ikecommon.attestation.envelope import Envelope, EvidenceKind
from ikecommon.attestation.errors import EvidenceFormatError, Mismatch, UnsupportedEvidence
from ikecommon.attestation.outcome import AUTHENTICITY, Check, CheckKind
from ikecommon.attestation.snp import SnpPolicy, SnpReport, TcbVersion, hcl, verify_report
from ikecommon.attestation.snp.vcek import AMD, CSP_ID, vlek_extensions
from ikecommon.attestation.spec import MeasurementSpec, SpecFormatError
from ikecommon.attestation.tdx import (
    QeIdentity,
    TcbInfo,
    TdReportBody15,
    TdxCollateral,
    TdxPolicy,
    TdxQuote,
    sgx_extensions,
    verify_quote,
)
from ikecommon.attestation.tdx.verify import TdxVerification
from ikecommon.attestation.times import iso

from .anchors import snp_policy, tdx_policy, trust_anchors
from .config import TrustSettings
from .errors import IkectlError, UsageError
from .truststore import Anchors

JSON_VERSION = 1
MAX_FILE = 1 << 20       # evidence is at most a few dozen KiB, an envelope 256 KiB
MAX_DIR_FILES = 64
VCEK_HW_ID = f"{AMD}.4"  # the chip ID: only a VCEK has it
TCB_SIGNING_CN = "TCB Signing"  # finds the file; verify_quote requires the exact name
NOT_EVIDENCE = ("not attestation evidence: none of a TDX quote (attestation key type 2 or 3 and TEE type 0x81 or "
                "0x00 at bytes 2 and 4), an SEV-SNP report (a version below 256, then guest policy bit 17 set), an "
                "Azure HCL report (HCLA), a sim report (EIKE-SIM) or an evidence envelope (a JSON object)")


class Format(StrEnum):
    TDX_QUOTE = "tdx-quote"
    SNP_REPORT = "sev-snp-report"
    AZURE_HCL_REPORT = "azure-hcl-report"
    SIM_REPORT = "sim-report"
    ENVELOPE = "envelope"


class NotEvidence(EvidenceFormatError):
    """A file that is none of the kinds of evidence `check` reads."""


class CheckFailed(IkectlError):
    """The evidence is not authentic, no spec entry matches, or (--strict) another check failed: exit 1."""


@dataclass(frozen=True)
class Field:
    name: str
    value: Any   # as JSON has it
    text: str    # as the text output shows it


@dataclass(frozen=True)
class SpecResult:
    measurement_id: str | None
    mismatches: tuple[Mismatch, ...]


@dataclass(frozen=True)
class Inputs:
    """What the verifiers are given beside the evidence (None: not given)."""

    anchors: Anchors
    intel_root: x509.Certificate | None
    amd_arks: tuple[x509.Certificate, ...]
    at: datetime
    collateral_dir: Path | None = None  # --collateral, read once the evidence is known to be TDX
    certs_dir: Path | None = None       # --certs, read once it is known to be SEV-SNP
    tdx_policy: TdxPolicy = field(default_factory=TdxPolicy)  # [trust] collateral_grace_days, tdx_tcb_statuses
    snp_policy: SnpPolicy = field(default_factory=SnpPolicy)  # [trust] snp_minimum_tcb, snp_vmpl


@dataclass(frozen=True)
class SnpCerts:
    vcek: x509.Certificate  # or the VLEK
    ask: x509.Certificate   # or the ASVK
    crls: tuple[x509.CertificateRevocationList, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    file: str
    format: Format
    kind: EvidenceKind
    description: str
    fields: tuple[Field, ...]
    at: datetime
    checks: tuple[Check, ...] = ()
    not_verified: str = ""          # why no check ran ("" when they did)
    tcb_status: str | None = None
    tcb_note: str = ""              # what the text says beside (or instead of) the status
    spec: SpecResult | None = None
    strict: bool = False

    @property
    def authentic(self) -> bool | None:
        if self.not_verified:
            return None
        return all(check.passed for check in self.checks if check.kind in AUTHENTICITY)

    @property
    def accepted(self) -> bool | None:
        """Every check passed: TCB level, collateral and policy too, as `trust add` requires."""
        if self.not_verified:
            return None
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        """Why the exit code is not 0 (empty when it is)."""
        if self.not_verified:
            return [f"not verified: {self.not_verified}"]
        failed = []
        if not self.authentic:
            failed.append(f"not authentic ({', '.join(self.authenticity_failures())} failed)")
        if self.spec is not None and self.spec.measurement_id is None:
            failed.append("no entry of the spec matches")
        if self.strict and self.authentic and not self.accepted:
            failed.append(f"not accepted with --strict ({', '.join(self.other_failures())} failed)")
        return failed

    def other_failures(self) -> list[str]:
        """The TCB, collateral and policy checks that failed."""
        return [c.name for c in self.checks if c.kind not in AUTHENTICITY and not c.passed]

    def authenticity_failures(self) -> list[str]:
        """The signature, certificate chain and binding checks that failed."""
        return [c.name for c in self.checks if c.kind in AUTHENTICITY and not c.passed]

    @property
    def result(self) -> str:
        return "not verified" if self.not_verified else ("failed" if self.failures else "ok")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "file": self.file,
            "format": self.format.value,
            "evidence": self.kind.value,
            "description": self.description,
            "fields": {f.name: f.value for f in self.fields},
            "at": iso(self.at),
            "checks": [{"name": c.name, "kind": c.kind.value, "passed": c.passed,
                        "mismatches": [_mismatch_json(m) for m in c.mismatches], "notes": list(c.notes)}
                       for c in self.checks],
            "authentic": self.authentic,
            "accepted": self.accepted,
            "tcb_status": self.tcb_status,
            "spec": None if self.spec is None else {
                "matched": self.spec.measurement_id,
                "mismatches": [_mismatch_json(m) for m in self.spec.mismatches]},
            "result": self.result,
            "reason": "; ".join(self.failures),
        }

    def text(self) -> str:
        width = max(len(f.name) for f in self.fields)
        sim = " (NOT SECURE: anyone can make sim evidence)" if self.kind == EvidenceKind.SIM else ""
        lines = [f"file:        {self.file}",
                 f"format:      {self.format.value} ({self.description})",
                 f"evidence:    {self.kind.value}{sim}",
                 "fields:"]
        lines += [f"  {f.name.ljust(width)}  {f.text}" for f in self.fields]
        lines.append(f"at:          {iso(self.at)}")
        if self.not_verified:
            lines.append(f"checks:      none ran: {self.not_verified}")
        else:
            lines.append("checks:")
            for check in self.checks:
                lines.append(f"  {'ok  ' if check.passed else 'FAIL'}  {check.name} ({check.kind.value})")
                lines += [f"          {m}" for m in check.mismatches]
                lines += [f"          note: {note}" for note in check.notes]
        lines.append(f"authentic:   {_authentic_text(self)}")
        lines.append(f"accepted:    {_accepted_text(self)}")
        status = (f"{self.tcb_status} ({self.tcb_note})" if self.tcb_note else self.tcb_status) if self.tcb_status \
            else self.tcb_note or "-"
        lines.append(f"tcb_status:  {status}")
        if self.spec is None:
            lines.append("spec:        - (none given)")
        elif self.spec.measurement_id is not None:
            lines.append(f"spec:        entry {self.spec.measurement_id!r} matches")
        else:
            lines.append("spec:        no entry matches")
            lines += [f"  {m}" for m in self.spec.mismatches]
        lines.append(f"result:      {self.result}" + (f": {'; '.join(self.failures)}" if self.failures else ""))
        return "\n".join(lines)


def _mismatch_json(m: Mismatch) -> dict[str, str]:
    return {"field": m.field, "expected": m.expected, "actual": m.actual}


def _authentic_text(report: CheckReport) -> str:
    if report.authentic is None:
        return "unknown (not verified)"
    if report.authentic:
        return "yes: every signature, certificate chain and binding verifies"
    return f"NO: {', '.join(report.authenticity_failures())} failed"


def _accepted_text(report: CheckReport) -> str:
    if report.accepted is None:
        return "unknown (not verified)"
    if report.accepted:
        return "yes: the TCB, collateral and policy checks pass too"
    others = report.other_failures()
    if not report.authentic or not others:
        return "no"
    strict = "" if report.strict else "; --strict makes that exit 1"
    return f"no: {', '.join(others)} failed (`trust add` would refuse it{strict})"


# --- the command ---

def run(settings: TrustSettings, file: str, *, spec: str | None, collateral: Path | None, certs: Path | None,
        anchors: Anchors, at: str | None, strict: bool, as_json: bool, out: Callable[[str], None] = print) -> int:
    """Check FILE and print the report; 0, or CheckFailed (exit 1), or UsageError (exit 2, after the report when
    the evidence parsed but could not be verified)."""
    when = parse_time(at) if at is not None else datetime.now(UTC)
    measurement_spec = load_spec(spec) if spec is not None else None
    data = read_file(file)
    inputs = Inputs(anchors, *_roots(settings, anchors), when, collateral, certs, tdx_policy(settings),
                    snp_policy(settings))
    try:
        report = check(file, data, inputs, measurement_spec, strict=strict)
    except UnsupportedEvidence as exc:
        raise UsageError(f"{file}: unsupported evidence: {exc}") from None
    except NotEvidence as exc:
        raise UsageError(f"{file}: {exc.detail}") from None
    except EvidenceFormatError as exc:
        raise UsageError(f"{file}: malformed evidence: {exc}") from None
    out(json.dumps(report.to_json(), indent=1) if as_json else report.text())
    if report.not_verified:
        raise UsageError(f"{file}: not verified: {report.not_verified}")
    if report.failures:
        raise CheckFailed(f"{file}: {'; '.join(report.failures)}")
    return 0


def detect(data: bytes) -> Format:
    """Which kind of evidence `data` is, from its first bytes; NotEvidence when it is none."""
    if data.startswith(sim_evidence.MAGIC):
        return Format.SIM_REPORT
    if data.startswith(hcl.SIGNATURE):
        return Format.AZURE_HCL_REPORT
    if data.lstrip()[:1] in (b"{", b"["):
        return Format.ENVELOPE
    if len(data) >= 8 and _le(data, 2, 2) in (2, 3) and _le(data, 4, 4) in (0x00, 0x81):
        return Format.TDX_QUOTE  # ECDSA P-256 or P-384 attestation key, TDX or SGX: a v4 or v5 header
    if len(data) >= 16 and 0 < _le(data, 0, 4) < 0x100 and _le(data, 8, 8) >> 17 & 1:
        return Format.SNP_REPORT  # a version, then the guest policy, whose bit 17 is reserved and must be one
    raise NotEvidence("evidence", None, NOT_EVIDENCE)


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def check(file: str, data: bytes, inputs: Inputs, spec: MeasurementSpec | None, *,
          strict: bool = False) -> CheckReport:
    """The report on `data`; raises EvidenceFormatError or UnsupportedEvidence when it cannot be read (or, like an
    SEV-SNP report signed by no key, cannot be judged), UsageError for an option or DIR that does not fit."""
    kind_format = detect(data)
    envelope = Envelope.decode(data) if kind_format == Format.ENVELOPE else None
    kind = envelope.evidence.kind if envelope else {Format.TDX_QUOTE: EvidenceKind.TDX,
                                                    Format.SNP_REPORT: EvidenceKind.SEV_SNP,
                                                    Format.AZURE_HCL_REPORT: EvidenceKind.SEV_SNP,
                                                    Format.SIM_REPORT: EvidenceKind.SIM}[kind_format]
    for option, given, used_by in (("--collateral", inputs.collateral_dir, EvidenceKind.TDX),
                                   ("--certs", inputs.certs_dir, EvidenceKind.SEV_SNP)):
        if given is not None and kind != used_by:
            raise UsageError(f"{option} is for {used_by} evidence; {file} is {kind} evidence")
    evidence = envelope.evidence.data if envelope else data
    if kind_format == Format.AZURE_HCL_REPORT:
        judged = _azure_hcl(data, inputs)
    elif kind == EvidenceKind.TDX:
        judged = _tdx(evidence, envelope, inputs)
    elif kind == EvidenceKind.SEV_SNP:
        judged = _snp(evidence, envelope, inputs)
    else:
        judged = _sim(evidence, inputs)
    checks = judged.checks
    fields = judged.fields
    description = judged.description
    if envelope is not None:
        fields += (Field("NONCE", envelope.nonce.hex(), envelope.nonce.hex()),
                   Field("IKE_KEY_SHA256", hashlib.sha256(envelope.ike_key).hexdigest(),
                         hashlib.sha256(envelope.ike_key).hexdigest()))
        description = f"an evidence envelope of {len(data)} bytes holding {description}"
        if not judged.not_verified:
            checks += (Check.of("key and nonce binding", CheckKind.BINDING,
                                binding_mismatches(judged.report_data, envelope.nonce, envelope.ike_key)),)
    matched = None
    if spec is not None:
        match = spec.match(kind, judged.registers)
        matched = SpecResult(match.measurement_id, match.mismatches)
    return CheckReport(file=file, format=kind_format, kind=kind, description=description, fields=fields,
                       at=inputs.at, checks=checks, not_verified=judged.not_verified, tcb_status=judged.tcb_status,
                       tcb_note=judged.tcb_note, spec=matched, strict=strict)


@dataclass(frozen=True)
class _Judged:
    description: str
    fields: tuple[Field, ...]
    registers: dict[int, bytes]
    report_data: bytes
    checks: tuple[Check, ...] = ()
    not_verified: str = ""
    tcb_status: str | None = None
    tcb_note: str = ""


# --- TDX ---

def _tdx(data: bytes, envelope: Envelope | None, inputs: Inputs) -> _Judged:
    quote = TdxQuote.parse(data)
    chain = pem_chain(quote.signature_data.certification.pck_chain_pem, "tdx_quote.pck_chain")
    pck = sgx_extensions(chain[0])
    header, body, qe = quote.header, quote.body, quote.signature_data.certification.qe_report
    fields = (
        _int("VERSION", header.version), _int("ATT_KEY_TYPE", header.attestation_key_type),
        _int("TEE_TYPE", header.tee_type, f"0x{header.tee_type:x} (TDX)"), _int("QE_SVN", header.qe_svn),
        _int("PCE_SVN", header.pce_svn), _hex("QE_VENDOR_ID", header.qe_vendor_id),
        _hex("TEE_TCB_SVN", body.tee_tcb_svn), _hex("MRSEAM", body.mr_seam),
        _hex("MRSIGNERSEAM", body.mr_signer_seam), _hex("SEAM_ATTRIBUTES", body.seam_attributes),
        _hex("TD_ATTRIBUTES", body.td_attributes,
             f"{body.td_attributes.hex()}{' (DEBUG)' if body.td_attributes[0] & 1 else ''}"),
        _hex("XFAM", body.xfam), _hex("MRTD", body.mr_td), _hex("MRCONFIGID", body.mr_config_id),
        _hex("MROWNER", body.mr_owner), _hex("MROWNERCONFIG", body.mr_owner_config),
        *(_hex(f"RTMR{i}", rtmr) for i, rtmr in enumerate(body.rtmrs)),
        _hex("REPORTDATA", body.report_data),
        *((_hex("TEE_TCB_SVN2", body.tee_tcb_svn2), _hex("MRSERVICETD", body.mr_service_td))
          if isinstance(body, TdReportBody15) else ()),
        _int("QE_ISVPRODID", qe.isv_prod_id), _int("QE_ISVSVN", qe.isv_svn),
        _hex("PCK_FMSPC", pck.fmspc), _hex("PCK_PCEID", pck.pce_id), _hex("PCK_CPUSVN", pck.tcb.cpu_svn),
        _int("PCK_PCESVN", pck.tcb.pce_svn),
    )
    trailing = f"; {len(quote.trailing)} bytes after the signature data, not signed" if quote.trailing else ""
    td_report = {2: ", TD report 1.0", 3: ", TD report 1.5"}.get(quote.body_type or 0, "")
    description = f"TDX quote v{header.version}{td_report}, {len(data)} bytes{trailing}"
    registers = {0: body.mr_td, **{i + 1: rtmr for i, rtmr in enumerate(body.rtmrs)}}
    base = _Judged(description, fields, registers, body.report_data)
    collateral = _tdx_collateral(inputs.collateral_dir) if inputs.collateral_dir else _envelope_collateral(envelope)
    missing = []
    if inputs.anchors == Anchors.SIM:
        missing.append("--anchors sim trusts only the simulated root; TDX evidence needs --anchors vendor")
    elif inputs.intel_root is None:
        missing.append("TDX evidence needs the Intel SGX Root CA")
    if collateral is None:
        missing.append("a TDX quote needs Intel's collateral: --collateral DIR (TCB info, QE identity, TCB signing "
                       "certificate, the PCK CA's and root CA's CRLs)")
    if missing or inputs.intel_root is None or collateral is None:
        return replace(base, not_verified="; ".join(missing))
    verification = verify_quote(quote, root=inputs.intel_root, collateral=collateral, at=inputs.at,
                                policy=inputs.tdx_policy)
    status, note = _tdx_status(verification)
    return replace(base, checks=verification.checks, tcb_status=status, tcb_note=note)


def _tdx_status(verification: TdxVerification) -> tuple[str | None, str]:
    tcb = verification.tcb
    if tcb.status is None:
        return None, "none: no TCB level of the TCB info applies (the check 'TCB level' says why)"
    parts = [f"platform and module folded with the QE's {tcb.qe_status}"]
    if tcb.advisory_ids:
        parts.append(f"advisories {', '.join(tcb.advisory_ids)}")
    return tcb.status, "; ".join(parts)


def _envelope_collateral(envelope: Envelope | None) -> TdxCollateral | None:
    if envelope is None:
        return None
    shipped = envelope.collateral
    if shipped.tdx_tcb_info is None or shipped.tdx_qe_identity is None or shipped.tdx_tcb_signing_chain is None:
        return None
    return TdxCollateral.load(tcb_info=shipped.tdx_tcb_info, qe_identity=shipped.tdx_qe_identity,
                              tcb_signing_chain=shipped.tdx_tcb_signing_chain, crls=shipped.crls)


# --- SEV-SNP ---

def _snp(data: bytes, envelope: Envelope | None, inputs: Inputs) -> _Judged:
    report = SnpReport.parse(data)
    signing_key = {0: "VCEK", 1: "VLEK", 7: "none"}.get(report.signing_key, "reserved")
    key = "VLEK" if report.signing_key == 1 else "VCEK"
    policy = report.policy
    flags = [name for bit, name in ((16, "SMT"), (18, "MIGRATE_MA"), (19, "DEBUG"), (20, "SINGLE_SOCKET"))
             if policy >> bit & 1]
    fields = [
        _int("VERSION", report.version), _int("GUEST_SVN", report.guest_svn),
        _int("POLICY", policy, f"0x{policy:x} (ABI {policy >> 8 & 0xFF}.{policy & 0xFF}"
                               f"{''.join(', ' + flag for flag in flags)})"),
        _hex("FAMILY_ID", report.family_id), _hex("IMAGE_ID", report.image_id), _int("VMPL", report.vmpl),
        _int("SIGNATURE_ALGO", report.signature_algo), _tcb("CURRENT_TCB", report.current_tcb),
        _int("PLATFORM_INFO", report.platform_info, f"0x{report.platform_info:x}"),
        _int("AUTHOR_KEY_EN", report.signer_info & 1), _int("MASK_CHIP_ID", int(report.mask_chip_id)),
        _int("SIGNING_KEY", report.signing_key, f"{report.signing_key} ({signing_key})"),
        _hex("REPORT_DATA", report.report_data), _hex("MEASUREMENT", report.measurement),
        _hex("HOST_DATA", report.host_data), _hex("ID_KEY_DIGEST", report.id_key_digest),
        _hex("AUTHOR_KEY_DIGEST", report.author_key_digest), _hex("REPORT_ID", report.report_id),
        _hex("REPORT_ID_MA", report.report_id_ma), _tcb("REPORTED_TCB", report.reported_tcb),
    ]
    if report.version >= 3:
        fields += [_int("CPUID_FAM_ID", report.cpuid_fam_id, f"0x{report.cpuid_fam_id:x}"),
                   _int("CPUID_MOD_ID", report.cpuid_mod_id, f"0x{report.cpuid_mod_id:x}"),
                   _int("CPUID_STEP", report.cpuid_step, f"0x{report.cpuid_step:x}")]
    fields += [
        _hex("CHIP_ID", report.chip_id), _tcb("COMMITTED_TCB", report.committed_tcb),
        _text("CURRENT_VERSION", f"{report.current_major}.{report.current_minor}.{report.current_build}"),
        _text("COMMITTED_VERSION", f"{report.committed_major}.{report.committed_minor}.{report.committed_build}"),
        _tcb("LAUNCH_TCB", report.launch_tcb),
    ]
    base = _Judged(f"SEV-SNP report v{report.version}, {len(data)} bytes", tuple(fields), {0: report.measurement},
                   report.report_data, tcb_note=f"SEV-SNP has no TCB status here: REPORTED_TCB must equal the "
                                                f"{key}'s TCB (check '{key} binding')")
    certs = _snp_certs(inputs.certs_dir, report.signing_key) if inputs.certs_dir else _envelope_certs(envelope)
    if certs is not None:
        base = replace(base, fields=base.fields + _snp_key_fields(certs.vcek))
    missing = []
    if inputs.anchors == Anchors.SIM:
        missing.append("--anchors sim trusts only the simulated root; SEV-SNP evidence needs --anchors vendor")
    elif not inputs.amd_arks:
        missing.append("SEV-SNP evidence needs AMD's root keys: [trust] amd_arks names none (without the key, the "
                       "ARKs shipped with ikectl are trusted)")
    if certs is None:
        missing.append("an SEV-SNP report needs its VCEK and the ASK: --certs DIR (the VCEK, AMD KDS's cert_chain)"
                       if key == "VCEK" else "a VLEK-signed SEV-SNP report needs its VLEK and the ASVK: --certs DIR "
                       "(the VLEK, AMD KDS's vlek cert_chain)")
    if missing or certs is None:
        return replace(base, not_verified="; ".join(missing))
    # The ARK that issued this ASK; with none, the first one, and the chain check names both issuers.
    ark = next((ark for ark in inputs.amd_arks if ark.subject == certs.ask.issuer), inputs.amd_arks[0])
    verification = verify_report(report, vcek=certs.vcek, ask=certs.ask, ark=ark, at=inputs.at, crls=certs.crls,
                                 policy=inputs.snp_policy)
    return replace(base, checks=verification.checks)


def _snp_key_fields(cert: x509.Certificate) -> tuple[Field, ...]:
    """Which key the certificate given is (a VLEK has AMD's CSP ID extension, a VCEK its hwID), and a VLEK's CSP ID:
    the cloud provider AMD issued it to."""
    if not _has_extension(cert, CSP_ID):
        return (_text("KEY_CERTIFICATE", "VCEK" if _has_extension(cert, VCEK_HW_ID) else "unknown"),)
    try:
        csp_id = vlek_extensions(cert).csp_id
    except EvidenceFormatError as exc:
        csp_id = f"malformed: {exc}"
    return _text("KEY_CERTIFICATE", "VLEK"), _text("CSP_ID", csp_id)


def _envelope_certs(envelope: Envelope | None) -> SnpCerts | None:
    if envelope is None or len(envelope.evidence.certificates) < 2:
        return None
    vcek, ask = (der_certificate(der, f"envelope.certificates[{i}]")
                 for i, der in enumerate(envelope.evidence.certificates[:2]))
    return SnpCerts(vcek, ask, tuple(der_crl(crl, f"envelope.crl-{n}")
                                     for n, crl in enumerate(envelope.collateral.crls, start=1)))


# --- Azure HCL ---

def _azure_hcl(data: bytes, inputs: Inputs) -> _Judged:
    """The SEV-SNP report inside, judged as a raw one, and the runtime data it binds (the vTPM's keys, user data)."""
    report = hcl.HclReport.parse(data)
    inner = _snp(report.hw_report, None, inputs)
    runtime = report.runtime_data
    mismatches = report.binding_mismatches()
    ak = runtime.attestation_key
    config = dict(runtime.vm_configuration)
    report_type, request_type = report.request_data.report_type, report.header.request_type
    fields = (
        _int("HCL_VERSION", report.header.version),
        _int("HCL_REQUEST_TYPE", request_type, f"{request_type} ({hcl.REQUEST_TYPES.get(request_type, 'unknown')})"),
        _int("HCL_REPORT_TYPE", report_type, f"{report_type} ({hcl.REPORT_TYPES[report_type]})"),
        _hex("HCL_RUNTIME_DATA_SHA256", hashlib.sha256(runtime.raw).digest()),
        Field("HCL_RUNTIME_DATA_BOUND", not mismatches, "yes: REPORT_DATA is its SHA-256, then 32 zero bytes"
              if not mismatches else "NO: REPORT_DATA is not its SHA-256 followed by 32 zero bytes"),
        Field("HCL_KEYS", [{"kid": k.kid, "kty": k.kty, "key_ops": list(k.key_ops), "bits": k.bits,
                            "sha256": None if k.sha256 is None else k.sha256.hex()} for k in runtime.keys],
              ", ".join(f"{k.kid} ({k.kty}{f' {k.bits}' if k.bits else ''}{''.join(', ' + op for op in k.key_ops)})"
                        for k in runtime.keys)),
        _hex("HCL_AK_SHA256", ak.sha256) if ak is not None and ak.sha256 is not None
        else Field("HCL_AK_SHA256", None, f"none (no RSA key {hcl.AK_KID})"),
        _hex("HCL_USER_DATA", runtime.user_data) if runtime.user_data is not None
        else Field("HCL_USER_DATA", None, "none"),
        Field("HCL_VM_CONFIGURATION", config, " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())),
    )
    padding = "" if not report.padding else f" ({len(report.padding)} of them zeros after the report)" \
        if not any(report.padding) else f" ({len(report.padding)} of them after the report, not signed)"
    description = f"Azure HCL report v{report.header.version}, {len(data)} bytes{padding}, holding an " \
        f"{inner.description}"
    not_verified = inner.not_verified
    if not_verified and inputs.certs_dir is None:  # then the VCEK is among what is missing
        not_verified += ("; an Azure VM's IMDS serves both as one JSON document (THIM: vcekCert, certificateChain), "
                         "which --certs DIR reads")
    checks = inner.checks + (Check.of("HCL runtime data binding", CheckKind.BINDING, mismatches),) \
        if not not_verified else ()
    return replace(inner, description=description, fields=fields + inner.fields, checks=checks,
                   not_verified=not_verified)


# --- sim ---

def _sim(data: bytes, inputs: Inputs) -> _Judged:
    report = sim_evidence.SimReport.decode(data)
    fields = (_int("VERSION", report.version), _hex("REPORT_DATA", report.report_data),
              *(_hex(f"SIM{i}", register) for i, register in enumerate(report.registers)))
    base = _Judged(f"sim report v{report.version} (NOT SECURE), {len(data)} bytes", fields,
                   dict(enumerate(report.registers)), report.report_data, tcb_note="sim evidence has no TCB")
    if inputs.anchors != Anchors.SIM:
        return replace(base, not_verified="sim evidence is verified only with --anchors sim (NOT SECURE: its "
                                           "root's private key is public)")
    verification = sim_evidence.verify_sim_report(report, root=sim_evidence.sim_root_certificate(), at=inputs.at)
    return replace(base, checks=verification.checks)


# --- fields ---

def _hex(name: str, value: bytes, text: str | None = None) -> Field:
    return Field(name, value.hex(), value.hex() if text is None else text)


def _int(name: str, value: int, text: str | None = None) -> Field:
    return Field(name, value, str(value) if text is None else text)


def _text(name: str, value: str) -> Field:
    return Field(name, value, value)


def _tcb(name: str, tcb: TcbVersion) -> Field:
    return Field(name, {"raw": f"0x{tcb.raw:016x}", **tcb.components()}, str(tcb))


# --- inputs: the file, the spec, the time, the roots, the DIRs ---

def read_file(file: str) -> bytes:
    """The evidence: FILE, or stdin for "-"; at most MAX_FILE bytes."""
    data = sys.stdin.buffer.read(MAX_FILE + 1) if file == "-" else _read(Path(file), file)
    if len(data) > MAX_FILE:
        raise UsageError(f"{file}: over {MAX_FILE} bytes, not evidence")
    if not data:
        raise UsageError(f"{file}: empty, not evidence")
    return data


def _read(path: Path, name: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{name}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read(MAX_FILE + 1)
        except OSError as exc:
            raise UsageError(f"{name}: cannot read it ({exc.strerror})") from None


def load_spec(text: str) -> MeasurementSpec:
    """--spec: a JSON file or an inline spec; a governance feed is not fetched (check is offline)."""
    if "://" in text:
        raise UsageError(f"--spec {text[:80]}: trust check is offline; give the spec as a file or inline")
    path = Path(text)
    try:
        if path.is_file():
            return MeasurementSpec.load(path)
        if text.startswith(("/", ".", "~")) or text.endswith(".json"):
            raise UsageError(f"--spec {text}: no such file")
        return MeasurementSpec.from_inline(text)
    except SpecFormatError as exc:
        raise UsageError(f"--spec: {exc}") from None


def parse_time(text: str) -> datetime:
    """--at: ISO 8601, UTC unless it says otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at {text}: expected an ISO 8601 time such as 2023-07-01T00:00:00Z") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _roots(settings: TrustSettings, anchors: Anchors) -> tuple[x509.Certificate | None, tuple[x509.Certificate, ...]]:
    if anchors == Anchors.SIM:
        return None, ()
    vendor = trust_anchors(anchors, settings)  # the roots `trust add` would use
    return vendor.intel_root, vendor.amd_arks


@dataclass
class _Contents:
    """What the files of a DIR hold, told apart by their contents: JSON documents, certificates, CRLs."""

    json: list[tuple[Path, dict[str, Any], bytes]] = field(default_factory=list)
    certs: list[tuple[Path, x509.Certificate]] = field(default_factory=list)
    crls: list[tuple[Path, x509.CertificateRevocationList]] = field(default_factory=list)


def _contents(directory: Path, option: str) -> _Contents:
    if not directory.is_dir():
        raise UsageError(f"{option} {directory}: not a directory")
    found = _Contents()
    files = sorted(directory.iterdir())  # each read by _read, which names one that is not a regular file
    if len(files) > MAX_DIR_FILES:
        raise UsageError(f"{option} {directory}: more than {MAX_DIR_FILES} files")
    for path in files:
        data = _read(path, f"{option} {path}")
        if len(data) > MAX_FILE:
            raise UsageError(f"{option} {path}: over {MAX_FILE} bytes")
        try:
            _classify(path, data, found)
        except EvidenceFormatError as exc:
            raise UsageError(f"{option} {path}: malformed: {exc}") from None
    return found


def _classify(path: Path, data: bytes, found: _Contents) -> None:
    if data.lstrip()[:1] == b"{":
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            return  # not a document we use
        if isinstance(document, dict):
            found.json.append((path, document, data))
            found.certs += [(path, cert) for cert in _thim_certs(document, path.name)]
        return
    if b"-----BEGIN CERTIFICATE-----" in data:
        found.certs += [(path, cert) for cert in pem_chain(data, path.name)]
    if b"-----BEGIN X509 CRL-----" in data:
        try:
            found.crls += [(path, crl) for crl in _pem_crls(data, path.name)]
        except ValueError as exc:
            raise EvidenceFormatError(path.name, None, f"not a PEM CRL: {exc}") from None
    if b"-----BEGIN" in data:
        return
    try:
        found.certs.append((path, der_certificate(data, path.name)))
        return
    except EvidenceFormatError:
        pass
    with contextlib.suppress(EvidenceFormatError):  # neither: a file the verifiers do not use (a README, ...)
        found.crls.append((path, der_crl(data, path.name)))


def _thim_certs(document: dict[str, Any], name: str) -> list[x509.Certificate]:
    """Azure IMDS's THIM document (metadata/THIM/amd/certification): the VCEK ("vcekCert") and the ASK and ARK
    ("certificateChain"), PEM; none from another document."""
    vcek, chain = document.get("vcekCert"), document.get("certificateChain")
    if not isinstance(vcek, str) or not isinstance(chain, str):
        return []
    return list(pem_chain(f"{vcek}\n{chain}".encode(), f"{name} (THIM)"))


def _pem_crls(data: bytes, name: str) -> list[x509.CertificateRevocationList]:
    crls, marker = [], b"-----BEGIN X509 CRL-----"
    for block in data.split(marker)[1:]:
        crl = x509.load_pem_x509_crl(marker + block.split(b"-----END X509 CRL-----")[0]
                                     + b"-----END X509 CRL-----\n")
        crls.append(der_crl(crl.public_bytes(Encoding.DER), name))
    return crls


def _one(option: str, directory: Path, what: str, found: Sequence[tuple[Path, Any]]) -> tuple[Path, Any]:
    if not found:
        raise UsageError(f"{option} {directory}: no {what}")
    if len(found) > 1:
        raise UsageError(f"{option} {directory}: more than one {what} ({', '.join(p.name for p, _ in found)})")
    return found[0]


def _tdx_collateral(directory: Path) -> TdxCollateral:
    """--collateral DIR: Intel's TCB info and QE identity (JSON as the PCS serves them), the TCB signing certificate
    (PEM or DER, alone or in a chain; the root in a chain is not used: ikectl's own is), and CRLs (DER or
    PEM) for the PCK CA and the root CA."""
    option = "--collateral"
    found = _contents(directory, option)
    tcb_info_path, tcb_info = _one(option, directory, "TCB info (a JSON document with \"tcbInfo\")",
                                   [(p, raw) for p, doc, raw in found.json if "tcbInfo" in doc])
    qe_path, qe_identity = _one(option, directory, "QE identity (a JSON document with \"enclaveIdentity\")",
                                [(p, raw) for p, doc, raw in found.json if "enclaveIdentity" in doc])
    signers = _unique((p, cert) for p, cert in found.certs if TCB_SIGNING_CN in _cn(cert))
    _, signer = _one(option, directory, f"TCB signing certificate (a common name with {TCB_SIGNING_CN!r})", signers)
    try:
        return TdxCollateral(TcbInfo.parse(tcb_info), QeIdentity.parse(qe_identity), (signer,),
                             tuple(crl for _, crl in found.crls))
    except EvidenceFormatError as exc:
        where = tcb_info_path if exc.field.startswith("tcb_info") else qe_path
        raise UsageError(f"{option} {where}: malformed: {exc}") from None


def _snp_certs(directory: Path, signing_key: int = 0) -> SnpCerts:
    """--certs DIR: the VCEK (DER as AMD's KDS serves it, or PEM) and the ASK (KDS's cert_chain: ASK then ARK; the
    ARK there is not used: ikectl's own are the roots), and optionally the ARK's CRL. For a report whose
    SIGNING_KEY is 1, the VLEK (AMD's CSP ID extension) and its ASVK instead; with none of the report's kind, the
    other kind, which the verifier then refuses by name (signer_info.signing_key)."""
    option = "--certs"
    found = _contents(directory, option)
    vceks = _unique((p, cert) for p, cert in found.certs if _has_extension(cert, VCEK_HW_ID))
    vleks = _unique((p, cert) for p, cert in found.certs if _has_extension(cert, CSP_ID))
    wanted = ("VLEK", "CSP ID", vleks) if signing_key == 1 else ("VCEK", "hwID", vceks)
    other = ("VCEK", "hwID", vceks) if signing_key == 1 else ("VLEK", "CSP ID", vleks)
    name, extension, keys = wanted if wanted[2] or not other[2] else other
    _, vcek = _one(option, directory, f"{name} (a certificate with AMD's {extension} extension)", keys)
    issuer_name = "ASVK" if name == "VLEK" else "ASK"
    asks = _unique((p, cert) for p, cert in found.certs if cert.subject == vcek.issuer and cert.subject != cert.issuer)
    _, ask = _one(option, directory, f"{issuer_name} (the {name}'s issuer, {vcek.issuer.rfc4514_string()})", asks)
    return SnpCerts(vcek, ask, tuple(crl for _, crl in found.crls))


def _unique(items: Iterable[tuple[Path, x509.Certificate]]) -> list[tuple[Path, x509.Certificate]]:
    """Certificates once each (a chain file and a single file may hold the same one)."""
    seen: dict[bytes, tuple[Path, x509.Certificate]] = {}
    for path, cert in items:
        seen.setdefault(cert.fingerprint(hashes.SHA256()), (path, cert))
    return list(seen.values())


def _cn(cert: x509.Certificate) -> str:
    return " ".join(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def _has_extension(cert: x509.Certificate, oid: str) -> bool:
    try:
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return False
    return True
