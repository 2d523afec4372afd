"""Attestation evidence: parsers and offline verifiers, one per evidence type (`tdx`, `snp`, `sim`), the envelope
that carries evidence to a client, the binding of a nonce and the IKE key into report data, and measurement specs.

A verifier returns a Verification: every check it ran and the mismatches each found, so a caller can tell
"authentic but out of date" from "forged". `require_ok()` turns any mismatch into VerificationFailed. Evidence that
does not parse raises EvidenceFormatError (malformed) or UnsupportedEvidence (well-formed, but of a version, type or
signing key not handled).
`verify_envelope` is the client's single entry point; `TrustAnchors.shipped()` trusts the vendors' roots that ship
with the package (`roots`). See docs/attestation.md.
"""

from .binding import LABEL, report_data
from .envelope import Collateral, Envelope, EnvelopeFormatError, Evidence, EvidenceKind
from .errors import AttestationError, EvidenceFormatError, Mismatch, UnsupportedEvidence, VerificationFailed
from .outcome import Check, CheckKind, Verification
from .roots import ShippedRootError
from .sim import SimReport, SimVerification, sim_root_certificate, verify_sim_report
from .spec import MeasurementEntry, MeasurementSpec, SpecFormatError
from .verify import Appraisal, TrustAnchors, Verified, appraise, verify_envelope

__all__ = [
    "LABEL",
    "Appraisal",
    "AttestationError",
    "Check",
    "CheckKind",
    "Collateral",
    "Envelope",
    "EnvelopeFormatError",
    "Evidence",
    "EvidenceFormatError",
    "EvidenceKind",
    "MeasurementEntry",
    "MeasurementSpec",
    "Mismatch",
    "ShippedRootError",
    "SimReport",
    "SimVerification",
    "SpecFormatError",
    "TrustAnchors",
    "UnsupportedEvidence",
    "Verification",
    "VerificationFailed",
    "Verified",
    "appraise",
    "report_data",
    "sim_root_certificate",
    "verify_envelope",
    "verify_sim_report",
]
