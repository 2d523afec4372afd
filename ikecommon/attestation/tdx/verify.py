"""Offline verification of a TDX quote (v4, or v5 with a TD report 1.0 or 1.5 body) against Intel's root and collateral.

What is checked, each as its own Check (see docs/attestation.md, "Verifiers"):

- the quote signature, by the attestation key, over header and TD report body (v5: header, body descriptor
  and body);
- the QE report signature, by the PCK certificate's key;
- the attestation key binding: QE report data = SHA-256(attestation key || QE auth data), then 32 zero bytes;
- the PCK chain to the caller's Intel SGX Root CA, at the caller's time, against the PCK and root CRLs;
- the TCB signing chain, and the signatures of the TCB info and QE identity made with it;
- that the collateral applies (FMSPC, PCE ID, TDX module signer and attributes, QE identity);
- that it is current: issued before the caller's time and, with the CRLs, not past its nextUpdate by more than the
  caller's grace (TdxPolicy.collateral_grace, none by default); one used inside the grace passes with a note;
- the TCB level of the platform, the TDX module and the QE, against the statuses the caller accepts (a status other
  than UpToDate that the caller accepts passes with a note naming it and its advisories);
- the TD's own policy (no debug and no migratable TD unless allowed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .. import ecdsa
from ..certs import der_crl, pem_chain
from ..chain import Named, subject, verify_chain
from ..errors import Mismatch
from ..outcome import Check, CheckKind, Verification
from ..times import aware, iso
from .collateral import QeIdentity, TcbInfo
from .pck import SgxExtensions, sgx_extensions
from .quote import INTEL_QE_VENDOR_ID, TdxQuote
from .tcb import UP_TO_DATE, TcbAssessment, assess, module_identity

TCB_INFO_ID, TCB_INFO_VERSION = "TDX", 3
QE_IDENTITY_ID, QE_IDENTITY_VERSION = "TD_QE", 2
PCK_CN = "SGX PCK Certificate"
TCB_SIGNER_CN = "Intel SGX TCB Signing"


@dataclass(frozen=True)
class TdxCollateral:
    """Intel's collateral for one platform, as fetched from the PCS (or a cache of it)."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    tcb_signing_chain: tuple[x509.Certificate, ...]  # the TCB signing certificate first
    crls: tuple[x509.CertificateRevocationList, ...]  # the PCK CA's and the root CA's

    @classmethod
    def load(cls, *, tcb_info: bytes, qe_identity: bytes, tcb_signing_chain: bytes,
             crls: Sequence[bytes]) -> TdxCollateral:
        """From the documents as served: two JSON documents, a PEM chain, DER CRLs."""
        return cls(TcbInfo.parse(tcb_info), QeIdentity.parse(qe_identity),
                   pem_chain(tcb_signing_chain, "tcb_signing_chain"),
                   tuple(der_crl(crl, f"crls[{i}]") for i, crl in enumerate(crls)))


@dataclass(frozen=True)
class TdxPolicy:
    accepted_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allow_debug: bool = False
    allow_migratable: bool = False  # a migratable TD's state may leave this platform through a migration TD
    # How long past its nextUpdate collateral (TCB info, QE identity, CRLs) is still accepted, with a note. Intel
    # publishes before nextUpdate; a grace covers a resolver whose operator refreshes its cache late.
    collateral_grace: timedelta = timedelta(0)


@dataclass(frozen=True)
class TdxVerification(Verification):
    quote: TdxQuote = field(repr=False)
    pck: SgxExtensions
    tcb: TcbAssessment

    @property
    def mrtd(self) -> bytes:
        return self.quote.body.mr_td

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.quote.body.rtmrs

    @property
    def report_data(self) -> bytes:
        return self.quote.body.report_data


def verify_quote(evidence: bytes | TdxQuote, *, root: x509.Certificate, collateral: TdxCollateral, at: datetime,
                 policy: TdxPolicy | None = None) -> TdxVerification:
    """Every check on a TDX quote; raises only EvidenceFormatError (the quote or its PCK chain does not parse) and
    UnsupportedEvidence (a quote of another version, TEE type, key type or certification data type)."""
    policy = policy or TdxPolicy()
    at = aware(at)
    quote = evidence if isinstance(evidence, TdxQuote) else TdxQuote.parse(evidence)
    certification = quote.signature_data.certification
    pck_chain = pem_chain(certification.pck_chain_pem, "pck_chain")
    pck = sgx_extensions(pck_chain[0])
    tcb_info, qe_identity = collateral.tcb_info, collateral.qe_identity
    tcb = assess(tcb_info, qe_identity, pck.tcb, quote.body.tee_tcb_svn, certification.qe_report.isv_svn)
    signer = collateral.tcb_signing_chain[0] if collateral.tcb_signing_chain else None
    checks = (
        Check.of("quote signature", CheckKind.SIGNATURE, _quote_signature(quote)),
        Check.of("QE report signature", CheckKind.SIGNATURE, _qe_report_signature(quote, pck_chain[0])),
        Check.of("attestation key binding", CheckKind.BINDING, _attestation_key_binding(quote)),
        Check.of("PCK certificate chain", CheckKind.CERTIFICATES,
              _pck_leaf_name(pck_chain[0])
              + _chain_to_root("pck_chain", pck_chain, ("pck_leaf", "pck_ca"), root, at, collateral.crls,
                               policy.collateral_grace)),
        Check.of("TCB signing chain", CheckKind.CERTIFICATES,
              tcb_signer_mismatches(collateral.tcb_signing_chain, root)
              + _chain_to_root("tcb_signing_chain", collateral.tcb_signing_chain, ("tcb_signer",), root, at,
                               collateral.crls, policy.collateral_grace)),
        Check.of("TCB info signature", CheckKind.SIGNATURE,
              _collateral_signature("tcb_info", tcb_info.signed, tcb_info.signature, signer)),
        Check.of("QE identity signature", CheckKind.SIGNATURE,
              _collateral_signature("qe_identity", qe_identity.signed, qe_identity.signature, signer)),
        Check.of("TCB info", CheckKind.COLLATERAL, _tcb_info_applies(tcb_info, quote, pck)),
        Check.of("QE identity", CheckKind.COLLATERAL, _qe_identity_applies(qe_identity, quote)),
        Check.of("collateral freshness", CheckKind.COLLATERAL, *_freshness(collateral, at, policy.collateral_grace)),
        Check.of("TCB level", CheckKind.TCB, *_tcb_status(tcb, policy)),
        Check.of("TD policy", CheckKind.POLICY, _td_policy(quote, policy)),
    )
    return TdxVerification(checks, quote, pck, tcb)


def _quote_signature(quote: TdxQuote) -> list[Mismatch]:
    data = quote.signature_data
    key = ecdsa.p256_point(data.attestation_key)
    if key is None:
        return [Mismatch("signature_data.attestation_key", "a P-256 point", "not on the curve")]
    if not ecdsa.verify_p256_raw(key, data.signature, quote.signed_bytes):
        return [Mismatch("signature_data.signature", "a valid ECDSA P-256 signature by the attestation key over "
                         "header and body", "invalid")]
    return []


def _qe_report_signature(quote: TdxQuote, pck_leaf: x509.Certificate) -> list[Mismatch]:
    certification = quote.signature_data.certification
    if not ecdsa.verify_p256_raw(pck_leaf.public_key(), certification.qe_report_signature,
                                 certification.qe_report.to_bytes()):
        return [Mismatch("qe_report_signature", "a valid ECDSA P-256 signature by the PCK key over the QE report",
                         "invalid")]
    return []


def _attestation_key_binding(quote: TdxQuote) -> list[Mismatch]:
    data = quote.signature_data
    expected = hashlib.sha256(data.attestation_key + data.certification.qe_auth_data).digest() + bytes(32)
    actual = data.certification.qe_report.report_data
    if actual != expected:
        return [Mismatch("qe_report.report_data", f"{expected.hex()} (SHA-256 of attestation key and QE auth data)",
                         actual.hex())]
    return []


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _chain_to_root(what: str, certs: Sequence[x509.Certificate], names: Sequence[str], root: x509.Certificate,
                   at: datetime, crls: Sequence[x509.CertificateRevocationList],
                   crl_grace: timedelta) -> list[Mismatch]:
    """A chain as shipped (leaf first, the root possibly included) checked up to the caller's root; CRLs are
    required for every issuer, so a missing CRL fails closed."""
    found, certs = [], list(certs)
    if certs and certs[-1].subject == certs[-1].issuer:
        shipped = certs.pop()
        if _fingerprint(shipped) != _fingerprint(root):
            found.append(Mismatch(f"{what}.root", f"the trusted root {subject(root)} (sha256 {_fingerprint(root)})",
                                  f"{subject(shipped)} (sha256 {_fingerprint(shipped)})"))
    if not certs:
        return [*found, Mismatch(what, "a certificate issued under the root", "none")]
    labels = [names[i] if i < len(names) else f"{names[-1]}{i}" for i in range(len(certs))]
    return found + verify_chain([Named(label, cert) for label, cert in zip(labels, certs, strict=True)],
                                Named("intel_root", root), at, crls, require_crls=True, crl_grace=crl_grace)


def tcb_signer_mismatches(chain: Sequence[x509.Certificate], root: x509.Certificate) -> list[Mismatch]:
    """Only Intel's TCB Signing certificate speaks for collateral: an end-entity certificate the root issued
    directly, named "Intel SGX TCB Signing". Any other certificate under the root (a PCK CA, one platform's PCK
    certificate) must not: with it, one platform's key could sign a TCB info that clears that platform's TCB."""
    below_root = [cert for cert in chain if cert.subject != cert.issuer]
    if not below_root:
        return []  # the chain check says there is no certificate under the root
    signer, found = below_root[0], []
    if len(below_root) != 1:
        found.append(Mismatch("tcb_signing_chain", "the TCB signing certificate, issued by the root itself",
                              f"{len(below_root)} certificates under the root"))
    names = [a.value for a in signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [TCB_SIGNER_CN]:
        found.append(Mismatch("tcb_signer.subject", f"the common name {TCB_SIGNER_CN!r}", subject(signer)))
    if signer.issuer != root.subject:
        found.append(Mismatch("tcb_signer.issuer", subject(root), signer.issuer.rfc4514_string()))
    try:
        constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        found.append(Mismatch("tcb_signer.basic_constraints", "CA:FALSE (an end-entity certificate)", "CA:TRUE"))
    return found


def _pck_leaf_name(leaf: x509.Certificate) -> list[Mismatch]:
    """Intel's PCK CAs also issue other certificates; only a PCK certificate speaks for a platform's QE."""
    names = [attribute.value for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not any(isinstance(name, str) and PCK_CN in name for name in names):
        return [Mismatch("pck_leaf.subject", f"a common name containing {PCK_CN!r}", subject(leaf))]
    return []


def _collateral_signature(what: str, signed: bytes, signature: bytes,
                          signer: x509.Certificate | None) -> list[Mismatch]:
    if signer is None or not ecdsa.verify_p256_raw(signer.public_key(), signature, signed):
        return [Mismatch(f"{what}.signature", "a valid ECDSA P-256 signature by the TCB signing key", "invalid")]
    return []


def _freshness(collateral: TdxCollateral, at: datetime, grace: timedelta) -> tuple[list[Mismatch], list[str]]:
    """The documents' dates against the caller's time, and a note for each CRL used inside the grace (past it, a CRL
    is the chain check's mismatch, `pck_ca_crl.next_update`)."""
    found: list[Mismatch] = []
    notes: list[str] = []
    for what, document in (("tcb_info", collateral.tcb_info), ("qe_identity", collateral.qe_identity)):
        if document.issue_date > at:
            found.append(Mismatch(f"{what}.issueDate", f"at or before {iso(at)}", iso(document.issue_date)))
        late = at - document.next_update
        if late > grace:
            within = f" (nextUpdate plus the {_span(grace)} grace)" if grace else ""
            found.append(Mismatch(f"{what}.nextUpdate", f"at or after {iso(at - grace)}{within}",
                                  iso(document.next_update)))
        elif late > timedelta(0):
            notes.append(_late(what, document.next_update, late, grace))
    for crl in collateral.crls:
        if crl.next_update_utc is not None and timedelta(0) < at - crl.next_update_utc <= grace:
            notes.append(_late(f"CRL of {crl.issuer.rfc4514_string()}", crl.next_update_utc,
                               at - crl.next_update_utc, grace))
    return found, notes


def _late(what: str, next_update: datetime, late: timedelta, grace: timedelta) -> str:
    return (f"{what} is past its nextUpdate {iso(next_update)} by {_span(late)}: accepted inside the {_span(grace)} "
            "grace; the resolver's collateral needs refreshing")


def _span(delta: timedelta) -> str:
    """A span as a person says it: "1 day", "2.5 days", "16.6 hours", "40 s"."""
    for unit, size in (("day", timedelta(days=1)), ("hour", timedelta(hours=1))):
        if delta >= size:
            value = round(delta / size, 1)
            return f"{value:g} {unit}{'' if value == 1 else 's'}"
    return f"{delta.total_seconds():.0f} s"


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))


def _tcb_info_applies(info: TcbInfo, quote: TdxQuote, pck: SgxExtensions) -> list[Mismatch]:
    found = []
    if info.id != TCB_INFO_ID:
        found.append(Mismatch("tcb_info.id", TCB_INFO_ID, info.id))
    if info.version != TCB_INFO_VERSION:
        found.append(Mismatch("tcb_info.version", str(TCB_INFO_VERSION), str(info.version)))
    if info.fmspc != pck.fmspc:
        found.append(Mismatch("tcb_info.fmspc", f"{pck.fmspc.hex()} (the PCK certificate's)", info.fmspc.hex()))
    if info.pce_id != pck.pce_id:
        found.append(Mismatch("tcb_info.pceId", f"{pck.pce_id.hex()} (the PCK certificate's)", info.pce_id.hex()))
    module = module_identity(info, quote.body.tee_tcb_svn)
    if module is None:
        if quote.body.tee_tcb_svn[1] == 0:
            found.append(Mismatch("tcb_info.tdxModule", "the TDX module's signer and attributes", "absent"))
        return found  # for later modules the TCB level check names the missing identity
    if quote.body.mr_signer_seam != module.mr_signer:
        found.append(Mismatch("body.mr_signer_seam", module.mr_signer.hex(), quote.body.mr_signer_seam.hex()))
    if _masked(quote.body.seam_attributes, module.attributes_mask) != module.attributes:
        found.append(Mismatch("body.seam_attributes", f"{module.attributes.hex()} under mask "
                              f"{module.attributes_mask.hex()}", quote.body.seam_attributes.hex()))
    return found


def _qe_identity_applies(identity: QeIdentity, quote: TdxQuote) -> list[Mismatch]:
    found, report = [], quote.signature_data.certification.qe_report
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        found.append(Mismatch("header.qe_vendor_id", INTEL_QE_VENDOR_ID.hex(), quote.header.qe_vendor_id.hex()))
    if identity.id != QE_IDENTITY_ID:
        found.append(Mismatch("qe_identity.id", QE_IDENTITY_ID, identity.id))
    if identity.version != QE_IDENTITY_VERSION:
        found.append(Mismatch("qe_identity.version", str(QE_IDENTITY_VERSION), str(identity.version)))
    if report.mr_signer != identity.mr_signer:
        found.append(Mismatch("qe_report.mr_signer", identity.mr_signer.hex(), report.mr_signer.hex()))
    if report.isv_prod_id != identity.isv_prod_id:
        found.append(Mismatch("qe_report.isv_prod_id", str(identity.isv_prod_id), str(report.isv_prod_id)))
    misc_select = report.misc_select.to_bytes(4, "little")
    if _masked(misc_select, identity.misc_select_mask) != identity.misc_select:
        found.append(Mismatch("qe_report.misc_select", f"{identity.misc_select.hex()} under mask "
                              f"{identity.misc_select_mask.hex()}", misc_select.hex()))
    if _masked(report.attributes, identity.attributes_mask) != identity.attributes:
        found.append(Mismatch("qe_report.attributes", f"{identity.attributes.hex()} under mask "
                              f"{identity.attributes_mask.hex()}", report.attributes.hex()))
    return found


def _tcb_status(tcb: TcbAssessment, policy: TdxPolicy) -> tuple[list[Mismatch], list[str]]:
    found, notes = list(tcb.mismatches), []
    advisories = f" ({', '.join(tcb.advisory_ids)})" if tcb.advisory_ids else ""
    if tcb.status is not None and tcb.status not in policy.accepted_tcb_statuses:
        found.append(Mismatch("tcb.status", f"one of {', '.join(sorted(policy.accepted_tcb_statuses))}",
                              tcb.status + advisories))
    elif tcb.status is not None and tcb.status != UP_TO_DATE:
        notes.append(f"TCB status {tcb.status}{advisories}: accepted by the policy")
    return found, notes


def _td_policy(quote: TdxQuote, policy: TdxPolicy) -> list[Mismatch]:
    """TD_ATTRIBUTES (little-endian): DEBUG is bit 0, MIGRATABLE bit 29. The host sets them at launch, outside MRTD,
    so only this check (not the measurement spec) can refuse them."""
    attributes, found = int.from_bytes(quote.body.td_attributes, "little"), []
    if attributes & 1 and not policy.allow_debug:
        found.append(Mismatch("body.td_attributes.debug", "0 (a debug TD's memory is readable by the host)", "1"))
    if attributes >> 29 & 1 and not policy.allow_migratable:
        found.append(Mismatch("body.td_attributes.migratable", "0 (a migratable TD's state can be moved to another "
                              "platform by a migration TD this verifier has not seen)", "1"))
    return found
